//! Command line: tcptrack's flags where tcptrack has one; tcpstat's for
//! `stat` (parsed in `stat`).

pub mod generate;
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

impl Cli {
    /// `--kernel-log`'s level, whichever command took it.
    pub fn kernel_log(&self) -> KernelLogLevel {
        match &self.command {
            None => self.top.source.kernel_log.level,
            Some(Command::Top(a)) => a.source.kernel_log.level,
            Some(Command::Peek(a)) => a.kernel_log.level,
            Some(Command::Export(a)) => a.source.kernel_log.level,
            Some(Command::Log(a)) => a.source.kernel_log.level,
            // tcpstat's parser reports its own usage errors later.
            Some(Command::Stat(s)) => {
                stat::parse(&s.args).map_or(KernelLogLevel::Off, |a| a.kernel_log)
            }
            Some(Command::Peekstat(_) | Command::Generate(_)) => KernelLogLevel::Off,
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Connections, their state and traffic (like tcptrack).
    Top(TopArgs),
    /// Three-way handshakes: successes, failures and retransmitted SYNs
    /// and SYN+ACKs, per filter (like tcpeek).
    Peek(PeekArgs),
    /// Statistics of a running `tcpmon peek`, from its socket (like tcpeekstat).
    Peekstat(PeekstatArgs),
    /// Interval statistics (like tcpstat, with its options: see -h).
    Stat(StatCommand),
    /// Serve Prometheus metrics (handshakes, retransmissions, traffic,
    /// connections) on /metrics; with -T, print them once at the end.
    #[command(after_help = crate::view::metrics::SERIES_HELP)]
    Export(ExportArgs),
    /// One JSON line per connection when it ends: top --json's fields plus
    /// "end" (closed, reset, timeout, idle, evicted, superseded, open).
    Log(LogArgs),
    /// Man pages and shell completions, for packagers.
    #[command(hide = true)]
    Generate(generate::GenerateArgs),
}

/// `export`'s default address: loopback only. 9465 is in Prometheus's
/// exporter range (9100-9999) and is not the port of any exporter we know
/// of (9464, next to it, is OpenTelemetry's Prometheus exporter's).
pub const EXPORT_LISTEN: &str = "127.0.0.1:9465";

/// When `export` and `log` take a connection as ended.
#[derive(Args, Debug, Clone)]
pub struct EndArgs {
    /// Seconds after its first SYN a handshake fails as timed out (as
    /// peek's -t); a connection whose handshake is quiet this long ends.
    #[arg(
        short = 't',
        long = "timeout",
        value_name = "SECONDS",
        default_value_t = 60.0
    )]
    pub timeout: f64,
    /// Seconds a closed or reset connection is kept for the segments that
    /// trail its end (the last ACK, a resent FIN) before it ends.
    #[arg(short = 'r', value_name = "SECONDS", default_value_t = 2.0)]
    pub linger: f64,
    /// An ESTABLISHED connection quiet this long ends as "idle" (default:
    /// never; a half-closed one after 60 s).
    #[arg(long, value_name = "SECS")]
    pub idle_timeout: Option<f64>,
    /// Put the interface into promiscuous mode while tcpmon runs.
    #[arg(long)]
    pub promisc: bool,
}

#[derive(Args, Debug, Clone)]
pub struct ExportArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    /// Serve /metrics on this address and port.
    #[arg(long, value_name = "ADDR:PORT", default_value = EXPORT_LISTEN)]
    pub listen: std::net::SocketAddr,
    /// Local server ports that get a `port` label of their own
    /// (comma-separated); every other port is `other`. Without it, no
    /// metric has a port label.
    #[arg(long, value_name = "PORT[,PORT...]", value_delimiter = ',')]
    pub port_label: Vec<u16>,
    /// Count ICMP and ICMPv6 destination-unreachables quoting a pending
    /// handshake as failures (outcome="unreach").
    #[arg(long)]
    pub icmp: bool,
    /// This host's addresses, for direction rx and tx (default live: the
    /// interface's addresses; for a capture: those seen answering SYNs).
    #[arg(long, value_name = "ADDR[,ADDR...]", value_delimiter = ',')]
    pub local: Vec<std::net::IpAddr>,
    #[command(flatten)]
    pub end: EndArgs,
    /// A pcap filter expression in tcpdump's language: only matching
    /// packets are counted.
    #[arg(trailing_var_arg = true, value_name = "FILTER")]
    pub filter: Vec<String>,
}

#[derive(Args, Debug, Clone)]
pub struct LogArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    /// Append the lines to FILE instead of standard output; SIGHUP reopens
    /// it (for logrotate).
    #[arg(short = 'w', long = "write", value_name = "FILE")]
    pub write: Option<PathBuf>,
    #[command(flatten)]
    pub end: EndArgs,
    /// A pcap filter expression in tcpdump's language: only matching
    /// packets are tracked.
    #[arg(trailing_var_arg = true, value_name = "FILTER")]
    pub filter: Vec<String>,
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
    #[arg(long, value_name = "N", default_value_t = tcpmon_common::FLOW_CAPACITY,
          value_parser = max_flows, help = MAX_FLOWS_HELP)]
    pub max_flows: u32,
    #[command(flatten)]
    pub kernel_log: KernelLogArgs,
}

/// `--kernel-log LEVEL`, for every live view (`stat` reads it in its own
/// parser, with `KernelLogLevel`'s values).
#[derive(Args, Debug, Clone, Copy, Default)]
pub struct KernelLogArgs {
    /// What the kernel programs did with packets they did not simply
    /// track (skipped and why, lost events, the filter's verdicts, the
    /// flow cache), on stderr down to this level (live only; at most 100
    /// lines a second per CPU). With top's screen, stderr must not be the
    /// terminal: redirect it (2>FILE) or use --json
    #[arg(long = "kernel-log", value_name = "LEVEL", value_enum, default_value_t)]
    pub level: KernelLogLevel,
}

#[derive(ValueEnum, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum KernelLogLevel {
    /// Nothing; the lines are pruned from the programs at load time.
    #[default]
    Off,
    Error,
    /// What was lost: ring buffers full, records not created.
    Warn,
    /// Also TCP-looking packets not tracked: malformed, fragments, too deep.
    Info,
    /// Also the filter's verdicts and the flow cache's folds.
    Debug,
    /// Also every frame that is not TCP.
    Trace,
}

impl KernelLogLevel {
    /// The `log` crate's level, for the loader and the logger.
    pub fn filter(self) -> log::LevelFilter {
        match self {
            KernelLogLevel::Off => log::LevelFilter::Off,
            KernelLogLevel::Error => log::LevelFilter::Error,
            KernelLogLevel::Warn => log::LevelFilter::Warn,
            KernelLogLevel::Info => log::LevelFilter::Info,
            KernelLogLevel::Debug => log::LevelFilter::Debug,
            KernelLogLevel::Trace => log::LevelFilter::Trace,
        }
    }
}

/// `--max-flows`, for `top` and `peek`.
const MAX_FLOWS_HELP: &str = "Connections the kernel keeps of each IP version \
    (live only; default 262144). The kernel allocates them all at start: each \
    1,000,000 cost about 217 MB of kernel memory for IPv4 plus 241 MB for \
    IPv6. When the map is full the least recently used connection is evicted \
    and counted (flows evicted)";

fn max_flows(s: &str) -> Result<u32, String> {
    const RANGE: std::ops::RangeInclusive<u32> = 1_024..=1 << 26;
    let n: u32 = s
        .parse()
        .map_err(|_| format!("'{s}' is not a number of flows"))?;
    if RANGE.contains(&n) {
        Ok(n)
    } else {
        Err(format!(
            "{n} flows: from {} to {}",
            RANGE.start(),
            RANGE.end()
        ))
    }
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

impl XdpArg {
    /// The backend's choice this flag stands for.
    pub fn choice(self) -> crate::backend::ebpf::XdpChoice {
        use crate::backend::ebpf::XdpChoice;
        match self {
            XdpArg::Off => XdpChoice::Off,
            XdpArg::Native => XdpChoice::Native,
            XdpArg::Skb => XdpChoice::Skb,
        }
    }
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
    /// A pcap filter expression in tcpdump's language (e.g. `port 80`),
    /// compiled by libpcap: only matching packets are tracked.
    #[arg(trailing_var_arg = true, value_name = "FILTER")]
    pub filter: Vec<String>,
}

/// tcpeek's socket, where `peek` serves its statistics.
pub const PEEK_SOCKET: &str = "/var/run/tcpeek/tcpeek.sock";

#[derive(Args, Debug, Clone)]
pub struct PeekArgs {
    /// Watch this network interface live (eBPF; needs root).
    #[arg(
        short = 'i',
        long = "interface",
        value_name = "IFACE",
        conflicts_with = "read"
    )]
    pub interface: Option<String>,
    /// Replay a pcap or pcapng capture ("-" for standard input); timeouts
    /// run on packet time, and handshakes still pending at its end time out.
    #[arg(short = 'r', long = "read", value_name = "FILE")]
    pub read: Option<PathBuf>,
    /// Seconds a handshake may take before it fails as timed out (tcpeek
    /// documents 60).
    #[arg(
        short = 't',
        long = "timeout",
        value_name = "SECONDS",
        default_value_t = 60.0
    )]
    pub timeout: f64,
    /// No line per session on stderr (the summary is still printed).
    #[arg(short = 'q', long = "quiet")]
    pub quiet: bool,
    /// UNIX socket answering GET and REFRESH with JSON statistics (live only).
    #[arg(short = 'U', long = "socket", value_name = "PATH", default_value = PEEK_SOCKET)]
    pub socket: PathBuf,
    /// Run as this user once the programs are attached and the socket is open.
    #[arg(short = 'u', long = "user", value_name = "USER")]
    pub user: Option<String>,
    /// Count ICMP and ICMPv6 destination-unreachable messages quoting a
    /// pending handshake as failures (unreach).
    #[arg(long)]
    pub icmp: bool,
    /// This host's addresses, for RX and TX (default live: the interface's
    /// addresses; for a capture: the addresses seen answering SYNs).
    #[arg(long, value_name = "ADDR[,ADDR...]", value_delimiter = ',')]
    pub local: Vec<std::net::IpAddr>,
    /// Handshakes tracked at once; SYNs beyond are counted as dropped
    /// (a SYN flood must not exhaust memory).
    #[arg(long, value_name = "N", default_value_t = crate::engine::handshake::DEFAULT_MAX_PENDING)]
    pub max_pending: usize,
    #[arg(long, value_name = "N", default_value_t = tcpmon_common::FLOW_CAPACITY,
          value_parser = max_flows, help = MAX_FLOWS_HELP)]
    pub max_flows: u32,
    /// Put the interface into promiscuous mode while tcpmon runs.
    #[arg(long)]
    pub promisc: bool,
    /// Also attach an XDP program on ingress (TC still sees egress).
    #[arg(long, value_enum, default_value_t = XdpArg::Off)]
    pub xdp: XdpArg,
    #[command(flatten)]
    pub kernel_log: KernelLogArgs,
    /// Only packets this pcap filter expression (tcpdump's language)
    /// selects; applied in the kernel live. Not a tcpeek filter: those are
    /// the trailing FILTER words.
    #[arg(short = 'f', long = "pcap-filter", value_name = "EXPRESSION")]
    pub pcap_filter: Option<String>,
    /// Filters `name:RX|TX@addr[/bits]:port[:port...][,...]`; an empty name
    /// excludes; default `RX:RX@*:*` and `TX:TX@*:*`. IPv6 addresses go in
    /// brackets: `v6:RX@[2001:db8::]/32:443`.
    #[arg(value_name = "FILTER")]
    pub filters: Vec<String>,
}

#[derive(Args, Debug, Clone)]
pub struct PeekstatArgs {
    /// The socket of the running `tcpmon peek`.
    #[arg(short = 'U', long = "socket", value_name = "PATH", default_value = PEEK_SOCKET)]
    pub socket: PathBuf,
    /// Print the JSON document as received.
    #[arg(short = 'j', long = "json")]
    pub json: bool,
    /// Ask for the change since the previous --refresh (REFRESH) instead of
    /// the totals (GET).
    #[arg(long)]
    pub refresh: bool,
}

/// The subcommand a program name stands for, so that links named after the
/// classic tools keep their users' habits working.
pub fn command_for_program_name(argv0: &str) -> Option<&'static str> {
    let name = std::path::Path::new(argv0).file_name()?.to_str()?;
    match name {
        "tcptrack" => Some("top"),
        "tcpeek" => Some("peek"),
        "tcpeekstat" => Some("peekstat"),
        "tcpstat" => Some("stat"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classic_tool_names_pick_their_subcommand() {
        assert_eq!(command_for_program_name("/usr/bin/tcptrack"), Some("top"));
        assert_eq!(command_for_program_name("tcpeek"), Some("peek"));
        assert_eq!(command_for_program_name("./tcpeekstat"), Some("peekstat"));
        assert_eq!(command_for_program_name("tcpmon"), None);
    }

    #[test]
    fn every_live_view_takes_kernel_log() {
        for args in [
            &["tcpmon", "-i", "lo", "--kernel-log", "info"][..],
            &["tcpmon", "top", "-i", "lo", "--kernel-log", "info"],
            &["tcpmon", "peek", "-i", "lo", "--kernel-log", "info"],
            &["tcpmon", "export", "-i", "lo", "--kernel-log", "info"],
            &["tcpmon", "log", "-i", "lo", "--kernel-log", "info"],
            &["tcpmon", "stat", "-i", "lo", "--kernel-log", "info"],
        ] {
            let cli = Cli::try_parse_from(args).unwrap();
            assert_eq!(cli.kernel_log(), KernelLogLevel::Info, "{args:?}");
            assert_eq!(cli.kernel_log().filter(), log::LevelFilter::Info);
        }
        let cli = Cli::try_parse_from(["tcpmon", "top", "-i", "lo"]).unwrap();
        assert_eq!(cli.kernel_log(), KernelLogLevel::Off);
    }

    #[test]
    fn peek_parses_tcpeeks_options() {
        let cli = Cli::try_parse_from([
            "tcpmon",
            "peek",
            "-i",
            "eth0",
            "-t",
            "5",
            "-q",
            "-U",
            "/tmp/s",
            "-u",
            "nobody",
            "--icmp",
            "--local",
            "10.0.0.1,fd00::1",
            "web:RX@*:80",
            ":TX@*:22",
        ])
        .unwrap();
        let Some(Command::Peek(p)) = cli.command else {
            panic!("not peek");
        };
        assert_eq!(p.interface.as_deref(), Some("eth0"));
        assert_eq!((p.timeout, p.quiet, p.icmp), (5.0, true, true));
        assert_eq!(p.socket, PathBuf::from("/tmp/s"));
        assert_eq!(p.local.len(), 2);
        assert_eq!(p.filters, ["web:RX@*:80", ":TX@*:22"]);
        let cli = Cli::try_parse_from(["tcpmon", "peek", "-r", "x.pcap"]).unwrap();
        let Some(Command::Peek(p)) = cli.command else {
            panic!("not peek");
        };
        assert_eq!(p.timeout, 60.0, "tcpeek's documented default");
        assert_eq!(p.socket, PathBuf::from(PEEK_SOCKET));
    }
}
