//! `tcpmon peek` (tcpeek): handshake sessions from a capture or live, a
//! line per finished session on stderr, the summary when the run ends.

mod live;
mod socket;

use std::cell::RefCell;
use std::collections::HashSet;
use std::io::Write;
use std::process::ExitCode;

use anyhow::{Result, anyhow, bail};

use super::replay::{STOP, open, pcap_filters, report, stop_on_signals};
use crate::backend::pcap::{self, Ticker};
use crate::cli::{PeekArgs, PeekstatArgs};
use crate::engine::{FlowTable, HandshakeTracker, Session};
use crate::view::peek::filter::Filters;
use crate::view::peek::{BackendStats, HEADER, Locality, PeekStats, session_line};
use tcpmon_common::{FlowKey, FlowRecord};

pub fn run(args: &PeekArgs) -> Result<ExitCode> {
    let filters = Filters::parse(&args.filters).map_err(|e| anyhow!("{e}"))?;
    if !args.timeout.is_finite() || args.timeout <= 0.0 {
        bail!(
            "-t must be a positive number of seconds, not {}",
            args.timeout
        );
    }
    if args.max_pending == 0 {
        bail!("--max-pending must be at least 1");
    }
    match (&args.read, &args.interface) {
        (Some(path), _) => replay(path, args, filters),
        (None, Some(iface)) => live::run(iface, args, filters),
        (None, None) => bail!(
            "nothing to watch: give -i IFACE to watch an interface live, or -r FILE to replay a capture"
        ),
    }
}

/// `tcpmon peekstat`: asks a running `peek` for its statistics and prints
/// them as tcpeekstat does (`-j`: the JSON as received).
pub fn stat(args: &PeekstatArgs) -> Result<ExitCode> {
    let doc = socket::query(&args.socket, args.refresh)?;
    let text = if args.json {
        format!("{doc}\n")
    } else {
        socket::table(&doc)?
    };
    std::io::stdout().write_all(text.as_bytes())?;
    Ok(ExitCode::SUCCESS)
}

fn timeout_ns(args: &PeekArgs) -> u64 {
    (args.timeout * 1e9) as u64
}

/// The tracker and where its finished sessions go, which both the event
/// callback and the ticker of a replay reach.
struct Peek<W: Write> {
    tracker: HandshakeTracker,
    report: Report<W>,
    /// Unreach events count only with --icmp.
    icmp: bool,
}

/// Counts finished sessions and prints their lines.
struct Report<W: Write> {
    stats: PeekStats,
    out: W,
    quiet: bool,
    clock_offset_ns: i64,
}

impl<W: Write> Report<W> {
    /// Counts a finished session and prints its line (when a filter counts
    /// it; tcpeek tracks nothing else). A failed write to stderr is not
    /// worth stopping the count for.
    fn finish(&mut self, s: Session) {
        if self.stats.record(&s) && !self.quiet {
            let _ = writeln!(self.out, "{}", session_line(&s, self.clock_offset_ns));
        }
    }
}

impl<W: Write> Peek<W> {
    fn on_event(&mut self, ev: &tcpmon_common::Event) {
        if !self.icmp && ev.kind == tcpmon_common::EventKind::Unreach {
            return;
        }
        let Peek {
            tracker, report, ..
        } = self;
        report.stats.locality.learn(ev);
        tracker.on_event(ev, &mut |s| report.finish(s));
    }

    fn expire(&mut self, now_ns: u64) {
        self.expire_checked(now_ns, |_| None);
    }

    /// `expire`, with the backend's copy of due sessions' records (see
    /// `HandshakeTracker::expire_checked`).
    fn expire_checked(&mut self, now_ns: u64, current: impl FnMut(&FlowKey) -> Option<FlowRecord>) {
        let Peek {
            tracker, report, ..
        } = self;
        tracker.expire_checked(now_ns, current, &mut |s| report.finish(s));
    }

    fn expire_all(&mut self) {
        let Peek {
            tracker, report, ..
        } = self;
        tracker.expire_all(&mut |s| report.finish(s));
    }
}

/// Packet time between expiries and table clean-ups during a replay.
const REPLAY_TICK_NS: u64 = 100_000_000;
/// Flows a replay keeps beyond `--max-pending` before it forgets those that
/// are no pending handshake.
const TABLE_SLACK: usize = 65_536;

fn replay(path: &std::path::Path, args: &PeekArgs, filters: Filters) -> Result<ExitCode> {
    let mut reader = open(path)?;
    let mut pcap_filter = pcap_filters(&reader, args.pcap_filter.clone())?;
    stop_on_signals();
    let locality = if args.local.is_empty() {
        Locality::Answering(HashSet::new())
    } else {
        Locality::Fixed(args.local.iter().copied().collect())
    };
    let stderr = std::io::stderr();
    let mut out = std::io::BufWriter::with_capacity(1 << 16, stderr.lock());
    if !args.quiet {
        writeln!(out, "{HEADER}")?;
    }
    let peek = RefCell::new(Peek {
        tracker: HandshakeTracker::new(timeout_ns(args), args.max_pending),
        report: Report {
            stats: PeekStats::new(filters, locality, args.icmp),
            out,
            quiet: args.quiet,
            clock_offset_ns: 0,
        },
        icmp: args.icmp,
    });
    let mut table = FlowTable::new(0);
    // Each tick times out what is due. A flood's untracked SYNs must not
    // pile up in the flow table either: past a bound, every flow that is not
    // a pending handshake is forgotten. Below it nothing is, so that a SYN
    // retransmitted after its session timed out still finds its flow (and
    // is no new session).
    let table_bound = args.max_pending.saturating_add(TABLE_SLACK);
    let mut tick = |now_ns: u64, table: &mut FlowTable| {
        let mut p = peek.borrow_mut();
        p.expire(now_ns);
        if table.len() > table_bound {
            table.retain(|c| p.tracker.is_pending(&c.key));
        }
    };
    let ticker = Ticker {
        step_ns: REPLAY_TICK_NS,
        sample: &mut tick,
    };
    let replay = pcap::replay(
        &mut reader,
        &mut table,
        &STOP,
        false,
        pcap_filter.as_mut(),
        |ev| peek.borrow_mut().on_event(ev),
        Some(ticker),
    );
    let mut p = peek.into_inner();
    let dropped = p.tracker.dropped();
    // No answer can come after the end of the capture.
    p.expire_all();
    let backend = BackendStats {
        counters: replay.stats.counters,
        sessions_dropped: dropped,
        pending: 0,
        // A replay's table has no capacity to overflow.
        flows_evicted: 0,
    };
    let first = replay.stats.first_ts_ns.unwrap_or(0) as i128;
    let last = replay.stats.last_ts_ns as i128;
    let r = &mut p.report;
    write!(
        r.out,
        "{}",
        r.stats.summary(first, last, "capture", &backend)
    )?;
    r.out.flush()?;
    drop(p);
    Ok(report(path, replay))
}
