//! tcpeek's view: one line per finished handshake on stderr, per-filter
//! counts, the summary at the end, and the JSON document its UNIX socket
//! serves. Formats are tcpeek's, byte for byte where tcpeek has one.
//!
//! Addresses: IPv4 as tcpeek prints them (`%15s:%-5u`); IPv6 in RFC 5952
//! form inside brackets, `[2001:db8::1]:443`, in the same right-aligned
//! field, which grows for addresses longer than 15 characters rather than
//! cutting them: IPv4 lines keep tcpeek's columns exactly, and an IPv6 line
//! shifts its later columns by the extra width.

pub mod filter;
pub mod view;

use std::collections::HashSet;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use tcpmon_common::{Counter, Event, EventKind};

use crate::engine::handshake::endpoint;
use crate::engine::{Counters, Outcome, Session};
use filter::{Filters, Seen};

/// The column header and its rule, as tcpeek prints them first.
pub const HEADER: &str = " TIME(s) |       TIMESTAMP       |      SRC IP:PORT            DST IP:PORT     |      RESULTS      | DUP SYN  DUP S/A\n----------------------------------------------------------------------------------------------------------------------";

/// Broken-down local time, as `localtime_r` gives it.
pub(crate) fn local_time(unix_secs: i64) -> libc::tm {
    // SAFETY: an all-zero tm is a valid value to be overwritten.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    let t = unix_secs as libc::time_t;
    // SAFETY: both pointers are valid for the call; localtime_r is the
    // thread-safe form.
    unsafe { libc::localtime_r(&t, &mut tm) };
    tm
}

/// `%Y-%m-%d %T` (`full`) or `%y-%m-%d %T` in local time.
fn date_time(unix_ns: i128, full: bool) -> String {
    let tm = local_time(unix_ns.div_euclid(1_000_000_000) as i64);
    let year = tm.tm_year as i64 + 1900;
    let year = if full { year } else { year.rem_euclid(100) };
    let width = if full { 4 } else { 2 };
    format!(
        "{year:0width$}-{:02}-{:02} {:02}:{:02}:{:02}",
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
}

fn millis(unix_ns: i128) -> i128 {
    unix_ns.rem_euclid(1_000_000_000) / 1_000_000
}

/// `addr:port` for tcpeek's `%15s:%-5u`; IPv6 bracketed (see the module).
fn address_field(a: SocketAddr) -> String {
    let host = match a.ip() {
        IpAddr::V4(ip) => ip.to_string(),
        IpAddr::V6(ip) => format!("[{ip}]"),
    };
    format!("{host:>15}:{:<5}", a.port())
}

fn result_field(o: Outcome) -> &'static str {
    match o {
        Outcome::Success => "     success     ",
        Outcome::Timeout => "failure (timeout)",
        Outcome::Reject => "failure (reject) ",
        Outcome::Unreach => "failure (unreach)",
    }
}

/// tcpeek's per-session line (`"%4d.%03d | %s.%03d | %15s:%-5u %15s:%-5u |
/// %s | %7u  %7u "`); `clock_offset_ns` turns the backend's clock into Unix
/// time (0 for captures).
pub fn session_line(s: &Session, clock_offset_ns: i64) -> String {
    let d = s.duration_ns();
    let start = s.start_ns as i128 + clock_offset_ns as i128;
    format!(
        "{:4}.{:03} | {}.{:03} | {} {} | {} | {:7}  {:7} ",
        d / 1_000_000_000,
        d % 1_000_000_000 / 1_000_000,
        date_time(start, false),
        millis(start),
        address_field(s.client()),
        address_field(s.server()),
        result_field(s.outcome),
        s.dup_syn,
        s.dup_synack
    )
}

/// One filter's counts. Duplicates count sessions that saw at least one
/// retransmission, as tcpeek's summary describes them; tcpeek kept them for
/// successful sessions only, tcpmon for failed ones too.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub success: u64,
    pub success_dupsyn: u64,
    pub success_dupsynack: u64,
    pub failure: u64,
    pub timeout: u64,
    pub reject: u64,
    pub unreach: u64,
    pub failure_dupsyn: u64,
    pub failure_dupsynack: u64,
}

impl Counts {
    fn add(&mut self, s: &Session) {
        let (dupsyn, dupsynack) = ((s.dup_syn > 0) as u64, (s.dup_synack > 0) as u64);
        if s.outcome == Outcome::Success {
            self.success += 1;
            self.success_dupsyn += dupsyn;
            self.success_dupsynack += dupsynack;
            return;
        }
        self.failure += 1;
        self.failure_dupsyn += dupsyn;
        self.failure_dupsynack += dupsynack;
        match s.outcome {
            Outcome::Timeout => self.timeout += 1,
            Outcome::Reject => self.reject += 1,
            Outcome::Unreach => self.unreach += 1,
            Outcome::Success => {}
        }
    }

    fn minus(&self, o: &Counts) -> Counts {
        Counts {
            success: self.success - o.success,
            success_dupsyn: self.success_dupsyn - o.success_dupsyn,
            success_dupsynack: self.success_dupsynack - o.success_dupsynack,
            failure: self.failure - o.failure,
            timeout: self.timeout - o.timeout,
            reject: self.reject - o.reject,
            unreach: self.unreach - o.unreach,
            failure_dupsyn: self.failure_dupsyn - o.failure_dupsyn,
            failure_dupsynack: self.failure_dupsynack - o.failure_dupsynack,
        }
    }
}

/// Which addresses are this host's, to tell RX from TX.
#[derive(Clone, Debug)]
pub enum Locality {
    /// The interface's addresses, or `--local`.
    Fixed(HashSet<IpAddr>),
    /// A capture without `--local`: the addresses seen answering a SYN
    /// (with a SYN+ACK or an RST) are local. A session whose client is one
    /// of them is TX, any other RX.
    Answering(HashSet<IpAddr>),
}

impl Locality {
    /// Learns from an event which addresses answer SYNs (`Answering` only).
    pub fn learn(&mut self, ev: &Event) {
        let Locality::Answering(set) = self else {
            return;
        };
        let rec = &ev.rec;
        let server = rec.server();
        let answered = match ev.kind {
            EventKind::SynAck => true,
            EventKind::Reset => rec.flags_seen[server] & tcpmon_common::tcp::flags::RST != 0,
            _ => false,
        };
        if answered && rec.syn_count > 0 {
            set.insert(endpoint(&ev.key, server).ip());
        }
    }

    pub(crate) fn seen(&self, s: &Session) -> Seen {
        let (client, server) = (s.client(), s.server());
        let (rx, tx) = match self {
            Locality::Fixed(set) => (set.contains(&server.ip()), set.contains(&client.ip())),
            Locality::Answering(set) => {
                let tx = set.contains(&client.ip());
                (!tx || set.contains(&server.ip()), tx)
            }
        };
        Seen {
            client: client.ip(),
            server: server.ip(),
            server_port: server.port(),
            rx,
            tx,
        }
    }
}

/// What the backend counted besides sessions, for the summary and the
/// socket (in place of tcpeek's pcap statistics).
#[derive(Clone, Copy, Debug, Default)]
pub struct BackendStats {
    pub counters: Counters,
    /// SYNs not tracked because the pending table was full.
    pub sessions_dropped: u64,
    /// Handshakes still pending.
    pub pending: u64,
    /// Flows the kernel's full flow maps evicted (live only).
    pub flows_evicted: u64,
}

impl BackendStats {
    /// Packets whose TCP the kernel never read: malformed, non-first
    /// fragments, too deep to follow, and `Untracked` (a failed tail call
    /// after the filter, which should not happen, but must not vanish).
    fn unparsed(&self) -> u64 {
        [
            Counter::Malformed,
            Counter::Fragment,
            Counter::TooDeep,
            Counter::Untracked,
        ]
        .iter()
        .map(|c| self.counters[*c as usize])
        .sum()
    }

    fn not_tcp(&self) -> u64 {
        self.counters[Counter::NotIp as usize] + self.counters[Counter::NotTcp as usize]
    }
}

/// Per-filter counts since the start and at the last REFRESH.
#[derive(Debug)]
pub struct PeekStats {
    filters: Filters,
    pub locality: Locality,
    total: Vec<Counts>,
    at_refresh: Vec<Counts>,
    /// Unreach lines in the summary (`--icmp`).
    icmp: bool,
}

impl PeekStats {
    pub fn new(filters: Filters, locality: Locality, icmp: bool) -> PeekStats {
        let n = filters.names().count();
        PeekStats {
            filters,
            locality,
            total: vec![Counts::default(); n],
            at_refresh: vec![Counts::default(); n],
            icmp,
        }
    }

    /// Counts a finished session in every filter that takes it; false when
    /// none does (then tcpeek prints no line for it either).
    pub fn record(&mut self, s: &Session) -> bool {
        let hits = self.filters.matching(&self.locality.seen(s));
        for &i in &hits {
            self.total[i].add(s);
        }
        !hits.is_empty()
    }

    pub fn counts(&self) -> impl Iterator<Item = (&str, &Counts)> {
        self.filters.names().zip(self.total.iter())
    }

    /// The socket's document. `GET`: totals, then the backend statistics
    /// under tcpeek's `pcap` key (`recv`: TCP segments seen, `drop`: events
    /// lost plus sessions dropped, `ifdrop`: 0, and tcpmon's own counters
    /// beside them). `REFRESH`: the change since the previous REFRESH,
    /// without the statistics, as tcpeek answers it.
    pub fn json(&mut self, refresh: bool, backend: &BackendStats) -> String {
        let mut out = String::from("[");
        let names: Vec<&str> = self.filters.names().collect();
        for (i, name) in names.iter().enumerate() {
            let c = if refresh {
                self.total[i].minus(&self.at_refresh[i])
            } else {
                self.total[i]
            };
            if i > 0 {
                out.push(',');
            }
            let _ = write!(
                out,
                "{{{}:{{\"success\":{{\"total\":{},\"dupsyn\":{},\"dupsynack\":{}}},\"failure\":{{\"total\":{},\"timeout\":{},\"reject\":{},\"unreach\":{},\"dupsyn\":{},\"dupsynack\":{}}}}}}}",
                serde_json::Value::String(name.to_string()),
                c.success,
                c.success_dupsyn,
                c.success_dupsynack,
                c.failure,
                c.timeout,
                c.reject,
                c.unreach,
                c.failure_dupsyn,
                c.failure_dupsynack
            );
        }
        if refresh {
            self.at_refresh.clone_from(&self.total);
        } else {
            let b = backend;
            let _ = write!(
                out,
                "{}{{\"pcap\":{{\"stats\":{{\"recv\":{},\"drop\":{},\"ifdrop\":0,\"events_lost\":{},\"sessions_dropped\":{},\"unparsed\":{},\"not_tcp\":{},\"pending\":{}}}}}}}",
                if names.is_empty() { "" } else { "," },
                b.counters[Counter::Tcp as usize],
                b.counters[Counter::EventsLost as usize] + b.sessions_dropped,
                b.counters[Counter::EventsLost as usize],
                b.sessions_dropped,
                b.unparsed(),
                b.not_tcp(),
                b.pending
            );
        }
        out.push(']');
        out
    }

    /// tcpeek's summary; `label` names the statistics section ("kernel" or
    /// "capture"), times are Unix nanoseconds.
    pub fn summary(&self, from_ns: i128, to_ns: i128, label: &str, b: &BackendStats) -> String {
        let mut s = String::new();
        let span = (to_ns - from_ns).max(0);
        let _ = writeln!(s);
        let _ = writeln!(s, "========== TCPEEK SUMMARY ==========");
        let _ = writeln!(s, "     from : {}", date_time(from_ns, true));
        let _ = writeln!(s, "       to : {}", date_time(to_ns, true));
        let _ = writeln!(
            s,
            "     time : {:9}.{:03} (sec)",
            span / 1_000_000_000,
            span % 1_000_000_000 / 1_000_000
        );
        for (name, c) in self.counts() {
            let _ = writeln!(s, "------------------------------------");
            let _ = writeln!(s, " {name}");
            let _ = writeln!(s, "   Success: {} session", c.success);
            let _ = writeln!(s, "     SYN Segment Duplicate : {:6}", c.success_dupsyn);
            let _ = writeln!(s, "     S/A Segment Duplicate : {:6}", c.success_dupsynack);
            let _ = writeln!(s, "   Failure: {} session", c.failure);
            let _ = writeln!(s, "     Connection Timed Out  : {:6}", c.timeout);
            let _ = writeln!(s, "     Connection Rejected   : {:6}", c.reject);
            if self.icmp {
                let _ = writeln!(s, "     ICMP Unreachable      : {:6}", c.unreach);
            }
            let _ = writeln!(s, "     SYN Segment Duplicate : {:6}", c.failure_dupsyn);
            let _ = writeln!(s, "     S/A Segment Duplicate : {:6}", c.failure_dupsynack);
        }
        let _ = writeln!(s, "------------------------------------");
        let _ = writeln!(s, " {label} stats");
        let _ = writeln!(
            s,
            "   tcp segments     : {}",
            b.counters[Counter::Tcp as usize]
        );
        let _ = writeln!(s, "   not tcp          : {}", b.not_tcp());
        let _ = writeln!(s, "   unparsed         : {}", b.unparsed());
        let _ = writeln!(
            s,
            "   events lost      : {}",
            b.counters[Counter::EventsLost as usize]
        );
        let _ = writeln!(s, "   sessions dropped : {}", b.sessions_dropped);
        if b.flows_evicted > 0 {
            let _ = writeln!(s, "   flows evicted    : {}", b.flows_evicted);
        }
        let _ = writeln!(s, "   still pending    : {}", b.pending);
        let _ = writeln!(s, "====================================");
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tcpmon_common::FlowKey;

    fn session(outcome: Outcome, v6: bool) -> Session {
        let mut key = FlowKey {
            port: [80, 48967],
            family: if v6 { 6 } else { 4 },
            ..FlowKey::default()
        };
        if v6 {
            key.addr[0] = "2001:db8::ca"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets();
            key.addr[1] = "2001:db8::e3"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets();
        } else {
            key.addr[0][..4].copy_from_slice(&[192, 168, 2, 202]);
            key.addr[1][..4].copy_from_slice(&[192, 168, 2, 227]);
        }
        Session {
            key,
            client: 1,
            start_ns: 1_341_560_342_552_000_000,
            last_ns: 1_341_560_342_554_000_000,
            dup_syn: 0,
            dup_synack: 0,
            outcome,
        }
    }

    #[test]
    fn lines_are_tcpeeks() {
        // SAFETY: tests in this module read the time zone only through
        // localtime_r, after this; UTC makes the expected text fixed.
        unsafe { std::env::set_var("TZ", "UTC") };
        let line = session_line(&session(Outcome::Success, false), 0);
        assert_eq!(
            line,
            "   0.002 | 12-07-06 07:39:02.552 |   192.168.2.227:48967   192.168.2.202:80    |      success      |       0        0 "
        );
        assert_eq!(line.len(), HEADER.lines().next().unwrap().len() + 1);
        assert_eq!(HEADER.lines().nth(1).unwrap().len(), line.len());
        let mut t = session(Outcome::Timeout, false);
        t.last_ns += 39_945_000_000;
        t.dup_syn = 2;
        assert!(session_line(&t, 0).starts_with("  39.947 | "));
        assert!(session_line(&t, 0).ends_with("| failure (timeout) |       2        0 "));
        let v6 = session_line(&session(Outcome::Reject, true), 0);
        assert!(
            v6.contains("|  [2001:db8::e3]:48967  [2001:db8::ca]:80    | failure (reject)  |"),
            "{v6}"
        );
        // Longer than the field: it grows, nothing is cut.
        let mut long = session(Outcome::Success, true);
        long.key.addr[1] = "2001:db8:1234:5678:9abc:def0:1234:5678"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets();
        assert!(
            session_line(&long, 0).contains(
                "| [2001:db8:1234:5678:9abc:def0:1234:5678]:48967  [2001:db8::ca]:80    |"
            )
        );
    }

    #[test]
    fn summary_and_json_shapes() {
        let filters = Filters::parse(&["RX:RX@*:*", "web:RX@*:80"]).unwrap();
        let mut set = HashSet::new();
        set.insert("192.168.2.202".parse().unwrap());
        let mut st = PeekStats::new(filters, Locality::Fixed(set), true);
        assert!(st.record(&session(Outcome::Success, false)));
        let mut rej = session(Outcome::Reject, false);
        rej.dup_syn = 1;
        assert!(st.record(&rej));
        assert!(!st.record(&session(Outcome::Success, true)), "not local");
        let b = BackendStats::default();
        let get = st.json(false, &b);
        assert_eq!(
            get,
            "[{\"RX\":{\"success\":{\"total\":1,\"dupsyn\":0,\"dupsynack\":0},\"failure\":{\"total\":1,\"timeout\":0,\"reject\":1,\"unreach\":0,\"dupsyn\":1,\"dupsynack\":0}}},\
             {\"web\":{\"success\":{\"total\":1,\"dupsyn\":0,\"dupsynack\":0},\"failure\":{\"total\":1,\"timeout\":0,\"reject\":1,\"unreach\":0,\"dupsyn\":1,\"dupsynack\":0}}},\
             {\"pcap\":{\"stats\":{\"recv\":0,\"drop\":0,\"ifdrop\":0,\"events_lost\":0,\"sessions_dropped\":0,\"unparsed\":0,\"not_tcp\":0,\"pending\":0}}}]"
        );
        serde_json::from_str::<serde_json::Value>(&get).unwrap();
        let first = st.json(true, &b);
        assert!(
            first.starts_with("[{\"RX\":{\"success\":{\"total\":1,"),
            "{first}"
        );
        assert!(!first.contains("pcap"));
        st.record(&session(Outcome::Timeout, false));
        let delta: serde_json::Value = serde_json::from_str(&st.json(true, &b)).unwrap();
        assert_eq!(delta[0]["RX"]["success"]["total"], 0);
        assert_eq!(delta[0]["RX"]["failure"]["timeout"], 1);
        assert_eq!(delta[0]["RX"]["failure"]["total"], 1);
        let sum = st.summary(0, 86_106_000_000, "capture", &b);
        let lines: Vec<&str> = sum.lines().collect();
        assert_eq!(lines[0], "");
        assert_eq!(lines[1], "========== TCPEEK SUMMARY ==========");
        assert_eq!(lines[4], "     time :        86.106 (sec)");
        assert_eq!(lines[5], "------------------------------------");
        assert_eq!(lines[6], " RX");
        assert_eq!(lines[7], "   Success: 1 session");
        assert_eq!(lines[10], "   Failure: 2 session");
        assert_eq!(lines[11], "     Connection Timed Out  :      1");
        assert_eq!(lines[13], "     ICMP Unreachable      :      0");
        assert_eq!(
            sum.lines().last(),
            Some("====================================")
        );
    }
}
