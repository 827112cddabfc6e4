//! Command line: tcptrack's flags where tcptrack has one; tcpstat's for
//! `stat` (parsed in `stat`).

pub mod stat;

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "tcpmon",
    version,
    about = "TCP connection monitor: live from eBPF, or replayed from a capture",
    args_conflicts_with_subcommands = true,
    disable_version_flag = true
)]
pub struct Cli {
    /// Print the version (tcptrack's -v).
    #[arg(short = 'v', short_alias = 'V', long = "version", action = clap::ArgAction::Version)]
    version: Option<bool>,
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
    /// Interval statistics (like tcpstat, with its options: see -h).
    Stat(StatCommand),
}

/// tcpstat's command line, passed whole to `stat::parse`: its getopt-style
/// options do not fit clap (`-1`, `-?`, a negative `-s`).
#[derive(Args, Debug, Clone)]
#[command(disable_help_flag = true)]
pub struct StatCommand {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 0..)]
    pub args: Vec<OsString>,
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
    /// Only connections that start after launch: no pickup of connections
    /// already open (whose client would be guessed).
    #[arg(short = 'd')]
    pub only_new: bool,
    /// Fast averages: speeds over a sliding one-second window, recomputed
    /// and redrawn ten times a second.
    #[arg(short = 'f')]
    pub fast: bool,
    /// Seconds a closed or reset connection stays on screen.
    #[arg(short = 'r', value_name = "SECONDS", default_value_t = 2.0)]
    pub linger: f64,
    /// Do not put the interface into promiscuous mode (by default it is, as
    /// long as tcpmon runs, so a mirror port's traffic is seen).
    #[arg(short = 'p')]
    pub no_promisc: bool,
    /// Replay a capture at the speed it was recorded (default: as fast as
    /// possible, then the final table stays on screen until q).
    #[arg(long)]
    pub realtime: bool,
    /// Extra columns after Speed: rtt, retrans, bytes, packets or all,
    /// comma-separated (key c toggles them).
    #[arg(long, value_name = "LIST", value_parser = crate::view::top::model::Extras::parse)]
    pub columns: Option<crate::view::top::model::Extras>,
    /// Drop ESTABLISHED connections idle this long from the screen
    /// (tcptrack keeps them forever).
    #[arg(long, value_name = "SECS")]
    pub idle_timeout: Option<f64>,
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
        "tcpstat" => Some("stat"),
        _ => None,
    }
}
