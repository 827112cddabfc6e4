//! tcpmon: backends (eBPF live, pcap files) feed one engine; views read it.

pub mod backend;
pub mod cli;
pub mod driver;
pub mod engine;
pub mod filter;
mod prefetch;
pub mod run;
pub mod view;
pub mod wire;
