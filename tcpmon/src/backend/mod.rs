//! Where flow data comes from.
pub mod ebpf;
pub mod pcap;
pub mod promisc;
