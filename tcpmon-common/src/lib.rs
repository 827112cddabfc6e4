//! What tcpmon's kernel programs and its user space agree on: the flow key,
//! the flow record, the ring-buffer event, the loss counters, and the one
//! update rule that turns a parsed TCP segment into a new record state.
//!
//! Everything here is `no_std`, allocation-free and loop-free so that the
//! eBPF verifier accepts it, and plain `repr(C)` data so that the same bytes
//! travel through BPF maps, the ring buffer and user-space hash maps.
#![no_std]
// Atomic adds for the kernel build (see `update::add`); nightly builds it.
#![cfg_attr(
    target_arch = "bpf",
    feature(core_intrinsics),
    allow(internal_features)
)]

pub mod cache;
pub mod cbpf;
pub mod change;
pub mod counters;
#[cfg(feature = "user")]
pub mod decode;
pub mod event;
pub mod flow;
pub mod icmp;
pub mod klog;
pub mod stat;
pub mod tcp;
pub mod update;

pub use cache::{CACHE_FLUSH_NS, CACHE_SLOTS, CacheIndex, CacheKey, CacheSlot, CacheTags, cached};
pub use change::Change;
pub use counters::Counter;
#[cfg(feature = "user")]
pub use decode::{Checked, UnknownValue, decode};
#[cfg(feature = "user")]
pub use event::EventBits;
pub use event::{Event, EventKind};
#[cfg(feature = "user")]
pub use flow::FlowRecordBits;
pub use flow::{ClientHow, FlowKey, FlowKey4, FlowRecord, State};
pub use stat::{StatCounters, StatSlot};
pub use tcp::Segment;
pub use update::{Own, Shared, Update, absorb, apply, is_steady, shadow, shadowed, update};

/// Name of the LRU hash map holding one `FlowRecord` per `FlowKey`, for
/// IPv6 flows.
pub const MAP_FLOWS: &str = "FLOWS";
/// Name of the LRU hash map holding one `FlowRecord` per `FlowKey4`, for
/// IPv4 flows: a 16-byte key is hashed and compared faster than 40 bytes.
pub const MAP_FLOWS4: &str = "FLOWS4";
/// Name of the ring buffer carrying `Event`s.
pub const MAP_EVENTS: &str = "EVENTS";
/// Name of the ring buffer carrying `Change`s: the keys of records that
/// changed in an epoch, and of the one-entry array holding that epoch.
pub const MAP_CHANGES: &str = "CHANGES";
pub const MAP_EPOCH: &str = "EPOCH";
/// Name of the per-CPU array of loss/skip counters, indexed by `Counter`.
pub const MAP_COUNTERS: &str = "COUNTERS";
/// Names of the one-entry program arrays holding the filter expression's
/// translation for each hook (filled only when the loader turns the filter
/// on).
pub const MAP_FILTER_TC: &str = "FILTER_TC";
pub const MAP_FILTER_XDP: &str = "FILTER_XDP";
/// Names of the program arrays through which the TC and XDP programs hand
/// a packet the filter kept to their `_rest` programs.
pub const MAP_REST_TC: &str = "REST_TC";
pub const MAP_REST_XDP: &str = "REST_XDP";
/// Names of the program arrays through which the filter's translation hands
/// a packet it rejected to `tcpmon_tc_rejected` / `tcpmon_xdp_rejected`,
/// which log it; filled only with `--kernel-log debug` or above.
pub const MAP_REJECTED_TC: &str = "REJECTED_TC";
pub const MAP_REJECTED_XDP: &str = "REJECTED_XDP";
/// Name of the per-CPU array of `stat::StatSlot`s, `stat::STAT_SLOTS` per
/// CPU, filled only while `tcpmon stat` runs.
pub const MAP_STAT: &str = "STAT";
/// Names of the per-CPU arrays of `CacheSlot`s (`CACHE_SLOTS` per CPU) of
/// IPv4 and IPv6 flows, and of the array of what all CPUs share about
/// each slot index (`CacheIndex`, see `cache`).
pub const MAP_CACHE4: &str = "CACHE4";
pub const MAP_CACHE6: &str = "CACHE6";
pub const MAP_CACHE_INDEX: &str = "CACHE_INDEX";
/// Name of the per-CPU array of the kernel log's rate limits
/// (`klog::Budget`, one per CPU).
pub const MAP_KLOG_BUDGET: &str = "KLOG_BUDGET";

/// Flows of each IP version the kernel keeps before its LRU map starts
/// evicting the least recently used one. 16- or 40-byte key + 136-byte
/// record: about 40 MB of kernel memory for IPv4 and 46 MB for IPv6, plus
/// the kernel's per-entry overhead.
pub const FLOW_CAPACITY: u32 = 262_144;
/// Ring buffer size in bytes (a power of two, a multiple of the page size).
pub const EVENTS_BYTES: u32 = 4 << 20;
/// The changes ring's size: 87,381 `Change`s (48 bytes with the ring's
/// header) between two reads. Past that the kernel counts
/// `Counter::ChangesLost` and user space reads every record once instead.
pub const CHANGES_BYTES: u32 = 4 << 20;
