//! One flow table fed by either backend. The pcap backend applies segments
//! to it with the shared update rule; the eBPF backend, whose kernel already
//! applied them, feeds it ring-buffer events and map snapshots. Views read
//! the table and never know which backend filled it.

mod evictions;
mod flows;
pub mod handshake;
pub mod ledger;
mod rates;
pub mod stat;
mod table;

pub use handshake::{HandshakeTracker, Outcome, Session};
pub use rates::Rates;
pub use table::{Change, Connection, FlowTable, Retired};

use tcpmon_common::Counter;

/// Skipped and lost packets, indexed by `Counter`, the same in both backends.
pub type Counters = [u64; Counter::COUNT as usize];
