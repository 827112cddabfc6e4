//! Command line: tcptrack's flags where tcptrack has one.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "tcpmon",
    version,
    about = "TCP connection monitor: live from eBPF, or replayed from a capture",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// With no subcommand, tcpmon runs `top`.
    #[command(flatten)]
    pub top: TopArgs,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Connections, their state and traffic (like tcptrack).
    Top(TopArgs),
}

/// Where packets come from: exactly one of `-i` and `-T`.
#[derive(Args, Debug, Clone, Default)]
pub struct SourceArgs {
    /// Watch this network interface live (eBPF; needs root).
    #[arg(
        short = 'i',
        long = "interface",
        value_name = "IFACE",
        conflicts_with = "read"
    )]
    pub interface: Option<String>,
    /// Replay a pcap or pcapng capture ("-" for standard input).
    #[arg(short = 'T', long = "read", value_name = "FILE")]
    pub read: Option<PathBuf>,
    /// Also attach an XDP program on ingress (TC still sees egress).
    #[arg(long, value_enum, default_value_t = XdpArg::Off)]
    pub xdp: XdpArg,
    /// Tell flows apart by VLAN id too (for overlapping address spaces).
    /// Without it a connection is its 5-tuple and each direction's VLAN is
    /// reported, so a connection routed between VLANs stays one connection.
    #[arg(long)]
    pub split_vlans: bool,
}

#[derive(ValueEnum, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum XdpArg {
    #[default]
    Off,
    /// In the driver (fastest; the NIC driver must support it).
    Native,
    /// Generic XDP in the network stack (any device).
    Skb,
}

#[derive(Args, Debug, Clone, Default)]
pub struct TopArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    /// When the run ends, print one JSON object per connection per line.
    #[arg(long)]
    pub json: bool,
    /// Stop after this many seconds (live mode).
    #[arg(long, value_name = "SECS")]
    pub duration: Option<f64>,
    /// A pcap filter expression (not supported yet).
    #[arg(trailing_var_arg = true, value_name = "FILTER")]
    pub filter: Vec<String>,
}

/// The subcommand a program name stands for, so that links named after the
/// classic tools keep their users' habits working.
pub fn command_for_program_name(argv0: &str) -> Option<&'static str> {
    let name = std::path::Path::new(argv0).file_name()?.to_str()?;
    match name {
        "tcptrack" => Some("top"),
        _ => None,
    }
}
