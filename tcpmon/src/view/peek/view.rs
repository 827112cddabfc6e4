//! The `peek` view as a consumer of the run loop's inputs, the same for
//! live and replay: handshake events into the tracker, timeouts on each
//! tick (the kernel's map asked first about due sessions, live), answers to
//! the statistics socket, and the summary when the run ends.

use std::io::Write;

use anyhow::Result;
use tcpmon_common::{Event, EventKind};

use super::{BackendStats, HEADER, PeekStats, session_line};
use crate::engine::{FlowTable, HandshakeTracker, Session};
use crate::run::{Control, Input, Probe, View};

/// What happens to sessions still pending when the run ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AtEnd {
    /// A capture: no answer can come after its end; all time out.
    ExpireAll,
    /// Live: those due time out; the rest are left out, as tcpeek leaves
    /// them (the statistics say how many).
    ExpireDue,
}

pub struct PeekOptions {
    pub timeout_ns: u64,
    pub max_pending: usize,
    /// Unreach events count only with --icmp.
    pub icmp: bool,
    pub quiet: bool,
    /// Add to a timestamp to get Unix time (0 for captures).
    pub clock_offset_ns: i64,
    pub at_end: AtEnd,
}

/// Flows a table keeps beyond `--max-pending` before it forgets those that
/// are no pending handshake.
const TABLE_SLACK: usize = 65_536;

pub struct PeekView<W: Write> {
    tracker: HandshakeTracker,
    report: Report<W>,
    icmp: bool,
    at_end: AtEnd,
    table_bound: usize,
    counters: LastCounters,
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

impl<W: Write> PeekView<W> {
    /// Writes the column header to `out` unless quiet.
    pub fn new(opts: PeekOptions, stats: PeekStats, mut out: W) -> Result<Self> {
        if !opts.quiet {
            writeln!(out, "{HEADER}")?;
        }
        Ok(PeekView {
            tracker: HandshakeTracker::new(opts.timeout_ns, opts.max_pending),
            report: Report {
                stats,
                out,
                quiet: opts.quiet,
                clock_offset_ns: opts.clock_offset_ns,
            },
            icmp: opts.icmp,
            at_end: opts.at_end,
            table_bound: opts.max_pending.saturating_add(TABLE_SLACK),
            counters: LastCounters::default(),
        })
    }

    /// Where lines went, for tests to read back.
    pub fn into_out(self) -> W {
        self.report.out
    }

    fn on_event(&mut self, ev: &Event) {
        if !self.icmp && ev.kind == EventKind::Unreach {
            return;
        }
        let PeekView {
            tracker, report, ..
        } = self;
        report.stats.locality.learn(ev);
        tracker.on_event(ev, &mut |s| report.finish(s));
    }

    /// Times out what is due; a handshake whose completion event was lost
    /// (a full ring buffer) is found complete in the kernel's map first.
    fn expire(&mut self, now_ns: u64, probe: &dyn Probe) {
        let PeekView {
            tracker, report, ..
        } = self;
        tracker.expire_checked(now_ns, |k| probe.lookup(k), &mut |s| report.finish(s));
    }

    fn on_tick(&mut self, now_ns: u64, table: &mut FlowTable, probe: &dyn Probe) {
        self.expire(now_ns, probe);
        // A flood's untracked SYNs must not pile up in a table either: past
        // a bound, every flow that is not a pending handshake is forgotten.
        // Below it nothing is, so that a SYN retransmitted after its
        // session timed out still finds its flow (and is no new session).
        if table.len() > self.table_bound {
            let tracker = &self.tracker;
            table.retain(|c| tracker.is_pending(&c.key));
        }
    }

    fn on_stop(&mut self, now_ns: u64, probe: &dyn Probe) -> Result<()> {
        match self.at_end {
            AtEnd::ExpireAll => {
                let PeekView {
                    tracker, report, ..
                } = self;
                tracker.expire_all(&mut |s| report.finish(s));
            }
            AtEnd::ExpireDue => self.expire(now_ns, probe),
        }
        let b = self.counters.read(probe, &self.tracker);
        let (from, to) = probe.span_ns();
        let r = &mut self.report;
        write!(r.out, "{}", r.stats.summary(from, to, probe.name(), &b))?;
        r.out.flush()?;
        Ok(())
    }
}

impl<W: Write> View for PeekView<W> {
    fn on(&mut self, input: Input, table: &mut FlowTable, probe: &dyn Probe) -> Result<Control> {
        match input {
            Input::Event(ev) => self.on_event(&ev),
            Input::Tick { now_ns } => self.on_tick(now_ns, table, probe),
            Input::Query { queries, now_ns } => {
                self.expire(now_ns, probe);
                let b = self.counters.read(probe, &self.tracker);
                // GETs asked together share one document; each REFRESH, in
                // turn, gets the change since the one before it.
                let mut get = None;
                for q in queries {
                    let doc = match q.refresh {
                        true => self.report.stats.json(true, &b),
                        false => get
                            .get_or_insert_with(|| self.report.stats.json(false, &b))
                            .clone(),
                    };
                    let _ = q.reply.send(doc);
                }
            }
            Input::Key(_) => {}
            // Also after a filter that could not apply (Stop::Invalid): the
            // summary of what was read, as peek always gave it.
            Input::Stop { now_ns, .. } => {
                self.on_stop(now_ns, probe)?;
                return Ok(Control::Quit);
            }
        }
        Ok(Control::Continue)
    }
}

/// The backend's counters, with the last good reading kept should a read
/// fail.
#[derive(Default)]
struct LastCounters {
    last: crate::engine::Counters,
    warned: bool,
}

impl LastCounters {
    fn read(&mut self, probe: &dyn Probe, tracker: &HandshakeTracker) -> BackendStats {
        match probe.counters() {
            Ok(c) => self.last = c,
            Err(e) if !self.warned => {
                self.warned = true;
                log::warn!("cannot read the kernel's counters ({e:#}); showing the last reading");
            }
            Err(_) => {}
        }
        BackendStats {
            counters: self.last,
            sessions_dropped: tracker.dropped(),
            pending: tracker.pending() as u64,
            flows_evicted: probe.flows_evicted().unwrap_or(0),
        }
    }
}
