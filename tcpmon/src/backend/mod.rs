//! Where flow data comes from.
pub mod pcap;
