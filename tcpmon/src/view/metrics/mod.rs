//! `tcpmon export`: Prometheus metrics kept up to date as the engine
//! reports changes, so that a scrape only encodes counters and never walks
//! the flow table. Labels are bounded: direction, outcome, state, a
//! skipped packet's reason, and `port` only for the local server ports the
//! operator names (`--port-label`), every other port being `other`. Never
//! an address.

pub mod http;

use std::sync::Arc;

use anyhow::Result;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tcpmon_common::{Counter as KernelCounter, Event, EventKind, FlowRecord, State};

use crate::engine::ledger::{self, EndRules, Happened};
use crate::engine::{Change, Connection, Counters, FlowTable, HandshakeTracker, Outcome, Session};
use crate::run::{Control, Input, Probe, Stop, View};
use crate::view::peek::Locality;
use crate::view::peek::view::AtEnd;

/// `--help`'s count of series; keep in step with `Metrics::new`.
pub const SERIES_HELP: &str = "Series: with P ports given to --port-label, at most 35 x (P + 1) + 23 \
    (35 per port value: 8 handshake outcomes, 3 retransmission counters, 4 packet and byte \
    counters, 20 for the RTT histogram; 23 others: 6 connection states, flows tracked, \
    handshakes pending, 8 skipped-packet reasons, TCP segments, events lost, changes lost, \
    flows evicted, sessions dropped, packets orphaned, build info). Without --port-label, 58.";

/// Handshake RTT buckets, in seconds: 50 µs to 10 s.
const RTT_BUCKETS: [f64; 17] = [
    50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 500e-3,
    1.0, 2.5, 5.0, 10.0,
];

const DIRECTIONS: [&str; 2] = ["rx", "tx"];
const OUTCOMES: [(Outcome, &str); 4] = [
    (Outcome::Success, "success"),
    (Outcome::Reject, "reject"),
    (Outcome::Timeout, "timeout"),
    (Outcome::Unreach, "unreach"),
];
/// Connection states, as the gauge labels them (tcptrack's names,
/// lowercased).
const STATES: [&str; 6] = [
    "syn_sent",
    "synack_ack",
    "established",
    "closing",
    "closed",
    "reset",
];
/// Kernel counters of packets not tracked, by reason.
const SKIPPED: [KernelCounter; 8] = [
    KernelCounter::NotIp,
    KernelCounter::NotTcp,
    KernelCounter::Malformed,
    KernelCounter::Fragment,
    KernelCounter::TooDeep,
    KernelCounter::Filtered,
    KernelCounter::Untracked,
    KernelCounter::FlowInsertFailed,
];

type Labels = Vec<(&'static str, String)>;

/// A handle to the series of `labels` in `family`. The family's lock guard
/// is gone when this returns (two guards alive in one expression would
/// deadlock when the second series is new).
fn series<M, C>(family: &Family<Labels, M, C>, labels: Labels) -> M
where
    M: Clone,
    C: prometheus_client::metrics::family::MetricConstructor<M>,
{
    family.get_or_create(&labels).clone()
}

fn rtt_histogram() -> Histogram {
    Histogram::new(RTT_BUCKETS)
}

/// The series of one `port` label value (or of all ports, without
/// `--port-label`).
struct PortSeries {
    /// [direction][outcome]
    handshakes: [[Counter; 4]; 2],
    syn_retransmits: Counter,
    synack_retransmits: Counter,
    retransmits: Counter,
    /// [to_server, to_client]
    packets: [Counter; 2],
    bytes: [Counter; 2],
    rtt: Histogram,
}

/// The metrics: the registry the server encodes, and handles to each
/// series, made up front (all label sets are known), so that counting is
/// an atomic add and every series exists from the start.
pub struct Metrics {
    registry: Arc<Registry>,
    /// `--port-label`'s ports; the last `per_port` entry is `other` (the
    /// only one without the option).
    ports: Vec<u16>,
    per_port: Vec<PortSeries>,
    states: [Gauge; 6],
    tracked: Gauge,
    pending: Gauge,
    skipped: [Counter; 8],
    segments: Counter,
    events_lost: Counter,
    changes_lost: Counter,
    orphaned: Counter,
    evicted: Counter,
    sessions_dropped: Counter,
}

impl Metrics {
    pub fn new(ports: &[u16]) -> Metrics {
        let mut r = Registry::default();
        let port_values: Vec<Option<String>> = match ports.is_empty() {
            true => vec![None],
            false => ports
                .iter()
                .map(|p| Some(p.to_string()))
                .chain([Some("other".to_string())])
                .collect(),
        };
        let with_port = |port: &Option<String>, mut l: Labels| {
            if let Some(p) = port {
                l.push(("port", p.clone()));
            }
            l
        };
        let handshakes = Family::<Labels, Counter>::default();
        let syn = Family::<Labels, Counter>::default();
        let synack = Family::<Labels, Counter>::default();
        let retx = Family::<Labels, Counter>::default();
        let packets = Family::<Labels, Counter>::default();
        let bytes = Family::<Labels, Counter>::default();
        let rtt =
            Family::<Labels, Histogram, fn() -> Histogram>::new_with_constructor(rtt_histogram);
        let per_port = port_values
            .iter()
            .map(|port| {
                let dir = |d: &'static str| with_port(port, vec![("direction", d.to_string())]);
                PortSeries {
                    handshakes: std::array::from_fn(|d| {
                        std::array::from_fn(|o| {
                            let mut l = vec![
                                ("direction", DIRECTIONS[d].to_string()),
                                ("outcome", OUTCOMES[o].1.to_string()),
                            ];
                            if let Some(p) = port {
                                l.push(("port", p.clone()));
                            }
                            series(&handshakes, l)
                        })
                    }),
                    syn_retransmits: series(&syn, with_port(port, vec![])),
                    synack_retransmits: series(&synack, with_port(port, vec![])),
                    retransmits: series(&retx, with_port(port, vec![])),
                    packets: [
                        series(&packets, dir("to_server")),
                        series(&packets, dir("to_client")),
                    ],
                    bytes: [
                        series(&bytes, dir("to_server")),
                        series(&bytes, dir("to_client")),
                    ],
                    rtt: series(&rtt, with_port(port, vec![])),
                }
            })
            .collect();
        r.register(
            "tcpmon_handshakes",
            "TCP handshakes that ended, by direction (rx: the SYN came to a local address; \
             tx: it left one) and outcome, as tcpmon peek counts them",
            handshakes,
        );
        r.register(
            "tcpmon_syn_retransmits",
            "SYNs sent again with the same sequence number",
            syn,
        );
        r.register(
            "tcpmon_synack_retransmits",
            "SYN+ACKs sent again with the same sequence number",
            synack,
        );
        r.register(
            "tcpmon_retransmits",
            "Data segments starting below the highest sequence number already seen in their \
             direction (resent or reordered)",
            retx,
        );
        r.register(
            "tcpmon_packets",
            "TCP packets on the wire, by direction",
            packets,
        );
        r.register(
            "tcpmon_payload_bytes",
            "TCP payload bytes, by direction",
            bytes,
        );
        r.register(
            "tcpmon_handshake_rtt_seconds",
            "From the last SYN to the ACK that completed the handshake",
            rtt,
        );
        let state_family = Family::<Labels, Gauge>::default();
        let states =
            std::array::from_fn(|i| series(&state_family, vec![("state", STATES[i].to_string())]));
        r.register(
            "tcpmon_connections",
            "Connections tracked, by state",
            state_family,
        );
        let tracked = Gauge::default();
        r.register(
            "tcpmon_flows_tracked",
            "Flows in tcpmon's table (connections not yet ended)",
            tracked.clone(),
        );
        let pending = Gauge::default();
        r.register(
            "tcpmon_handshakes_pending",
            "Handshakes begun and not yet ended",
            pending.clone(),
        );
        let skipped_family = Family::<Labels, Counter>::default();
        let skipped = std::array::from_fn(|i| {
            series(
                &skipped_family,
                vec![("reason", SKIPPED[i].name().to_string())],
            )
        });
        r.register(
            "tcpmon_packets_skipped",
            "Packets not tracked, by reason (not IP, not TCP, malformed, fragments, headers \
             nested too deep, rejected by the filter expression, untracked, no room for a flow)",
            skipped_family,
        );
        let counter = |r: &mut Registry, name: &str, help: &str| {
            let c = Counter::default();
            r.register(name, help, c.clone());
            c
        };
        let segments = counter(&mut r, "tcpmon_tcp_segments", "TCP segments tracked");
        let events_lost = counter(
            &mut r,
            "tcpmon_events_lost",
            "Events the kernel could not send (its ring buffer was full)",
        );
        let changes_lost = counter(
            &mut r,
            "tcpmon_changes_lost",
            "Changed flows the kernel could not report (all were read instead)",
        );
        let orphaned = counter(
            &mut r,
            "tcpmon_packets_orphaned",
            "Packets counted for a flow that was gone from the kernel's map",
        );
        let evicted = counter(
            &mut r,
            "tcpmon_flows_evicted",
            "Flows the kernel's full flow maps evicted (--max-flows raises their size)",
        );
        let sessions_dropped = counter(
            &mut r,
            "tcpmon_sessions_dropped",
            "SYNs not tracked as handshakes: too many were pending",
        );
        let info = Family::<Labels, Gauge>::default();
        info.get_or_create(&vec![("version", env!("CARGO_PKG_VERSION").to_string())])
            .set(1);
        r.register("tcpmon_build_info", "tcpmon's version", info);
        Metrics {
            registry: Arc::new(r),
            ports: ports.to_vec(),
            per_port,
            states,
            tracked,
            pending,
            skipped,
            segments,
            events_lost,
            changes_lost,
            orphaned,
            evicted,
            sessions_dropped,
        }
    }

    /// What the server encodes.
    pub fn registry(&self) -> Arc<Registry> {
        self.registry.clone()
    }

    fn port(&self, server_port: u16) -> &PortSeries {
        let i = self
            .ports
            .iter()
            .position(|p| *p == server_port)
            .unwrap_or(self.ports.len());
        &self.per_port[i]
    }
}

fn state_index(s: State) -> usize {
    match s {
        State::None | State::SynSent => 0,
        State::SynAckAck => 1,
        State::Established => 2,
        State::Closing => 3,
        State::Closed => 4,
        State::Reset => 5,
    }
}

fn server_port(c: &Connection) -> u16 {
    c.key.port[c.client_side() ^ 1]
}

/// What changed in a connection's counts since `before` (all it has when
/// new), per endpoint of the key.
fn delta(now: &FlowRecord, before: Option<&FlowRecord>, f: impl Fn(&FlowRecord) -> u64) -> u64 {
    f(now).saturating_sub(before.map_or(0, f))
}

pub struct MetricsOptions {
    pub ports: Vec<u16>,
    pub timeout_ns: u64,
    pub max_pending: usize,
    pub icmp: bool,
    pub rules: EndRules,
    pub locality: Locality,
    pub at_end: AtEnd,
}

/// The view: keeps the metrics up to date from the run loop's inputs; with
/// `print`, writes them once when the run ends (`export -T`).
pub struct MetricsView<W: std::io::Write> {
    metrics: Metrics,
    tracker: HandshakeTracker,
    locality: Locality,
    icmp: bool,
    rules: EndRules,
    sweep: ledger::Sweep,
    at_end: AtEnd,
    /// Kernel (or replay) counters as last read, and flows evicted.
    last: Counters,
    last_evicted: u64,
    last_dropped: u64,
    print: Option<W>,
}

impl<W: std::io::Write> MetricsView<W> {
    pub fn new(opts: MetricsOptions, print: Option<W>) -> Self {
        MetricsView {
            metrics: Metrics::new(&opts.ports),
            tracker: HandshakeTracker::new(opts.timeout_ns, opts.max_pending),
            locality: opts.locality,
            icmp: opts.icmp,
            rules: opts.rules,
            sweep: ledger::Sweep::default(),
            at_end: opts.at_end,
            last: [0; KernelCounter::COUNT as usize],
            last_evicted: 0,
            last_dropped: 0,
            print,
        }
    }

    pub fn registry(&self) -> Arc<Registry> {
        self.metrics.registry()
    }

    /// Where the metrics were printed, for tests.
    pub fn into_print(self) -> Option<W> {
        self.print
    }

    fn on_event(&mut self, ev: &Event) {
        if !self.icmp && ev.kind == EventKind::Unreach {
            return;
        }
        self.locality.learn(ev);
        let MetricsView {
            tracker,
            metrics,
            locality,
            ..
        } = self;
        tracker.on_event(ev, &mut |s| count_session(metrics, locality, &s));
    }

    fn expire(&mut self, now_ns: Option<u64>, probe: &dyn Probe) {
        let MetricsView {
            tracker,
            metrics,
            locality,
            ..
        } = self;
        let mut done = |s: Session| count_session(metrics, locality, &s);
        match now_ns {
            Some(now) => tracker.expire_checked(now, |k| probe.lookup(k), &mut done),
            None => tracker.expire_all(&mut done),
        }
    }

    fn on_change(&self, ch: &Change) {
        let (now, before) = (&ch.conn.rec, ch.before);
        let m = &self.metrics;
        let p = m.port(server_port(ch.conn));
        let cl = ch.conn.client_side();
        for (side, dir) in [(cl, 0), (cl ^ 1, 1)] {
            p.packets[dir].inc_by(delta(now, before, |r| r.packets[side]));
            p.bytes[dir].inc_by(delta(now, before, |r| r.bytes[side]));
        }
        p.syn_retransmits
            .inc_by(delta(now, before, |r| r.syn_count.saturating_sub(1) as u64));
        p.synack_retransmits.inc_by(delta(now, before, |r| {
            r.synack_count.saturating_sub(1) as u64
        }));
        p.retransmits.inc_by(delta(now, before, |r| {
            r.retransmits[0] as u64 + r.retransmits[1] as u64
        }));
        if let Some(rtt) = now.handshake_rtt_ns()
            && before.is_none_or(|b| b.handshake_rtt_ns().is_none())
        {
            p.rtt.observe(rtt as f64 / 1e9);
        }
        if let Some(b) = before {
            m.states[state_index(b.state)].dec();
        }
        m.states[state_index(now.state)].inc();
    }

    fn on_tick(&mut self, now_ns: u64, table: &mut FlowTable, probe: &dyn Probe) {
        self.expire(Some(now_ns), probe);
        let rules = self.rules;
        let mut sweep = self.sweep;
        ledger::tick(&rules, &mut sweep, table, now_ns, &mut |h| {
            if let Happened::Ended(c, end) = h
                && ledger::backend_keeps(end)
            {
                probe.forget(&c.key, &c.rec);
            }
            self.happened(h)
        });
        self.sweep = sweep;
        self.gauges(table, probe);
    }

    fn happened(&self, h: Happened) {
        match h {
            Happened::Changed(ch) => self.on_change(&ch),
            Happened::Ended(c, _) => {
                self.metrics.states[state_index(c.rec.state)].dec();
            }
        }
    }

    /// Gauges and the backend's counters, as of now.
    fn gauges(&mut self, table: &FlowTable, probe: &dyn Probe) {
        let m = &self.metrics;
        m.tracked.set(table.len() as i64);
        m.pending.set(self.tracker.pending() as i64);
        let dropped = self.tracker.dropped();
        m.sessions_dropped.inc_by(dropped - self.last_dropped);
        self.last_dropped = dropped;
        if let Ok(c) = probe.counters() {
            let add = |counter: &Counter, k: KernelCounter, last: &Counters| {
                let i = k as usize;
                counter.inc_by(c[i].saturating_sub(last[i]));
            };
            for (i, k) in SKIPPED.iter().enumerate() {
                add(&m.skipped[i], *k, &self.last);
            }
            add(&m.segments, KernelCounter::Tcp, &self.last);
            add(&m.events_lost, KernelCounter::EventsLost, &self.last);
            add(&m.changes_lost, KernelCounter::ChangesLost, &self.last);
            add(&m.orphaned, KernelCounter::Orphaned, &self.last);
            // Counters only grow; a lower reading changes nothing.
            for (l, v) in self.last.iter_mut().zip(c) {
                *l = (*l).max(v);
            }
        }
        if let Ok(e) = probe.flows_evicted() {
            m.evicted.inc_by(e.saturating_sub(self.last_evicted));
            self.last_evicted = self.last_evicted.max(e);
        }
    }

    fn on_stop(
        &mut self,
        why: Stop,
        now_ns: u64,
        table: &mut FlowTable,
        probe: &dyn Probe,
    ) -> Result<()> {
        match self.at_end {
            AtEnd::ExpireAll => self.expire(None, probe),
            AtEnd::ExpireDue => self.expire(Some(now_ns), probe),
        }
        ledger::take(table, &mut |h| self.happened(h));
        self.gauges(table, probe);
        if why == Stop::Invalid {
            return Ok(());
        }
        if let Some(out) = &mut self.print {
            let mut text = String::new();
            prometheus_client::encoding::prometheus_text::encode(&mut text, &self.metrics.registry)
                .map_err(|_| anyhow::anyhow!("cannot encode the metrics"))?;
            out.write_all(text.as_bytes())?;
            out.flush()?;
        }
        Ok(())
    }
}

/// Counts a finished handshake under each direction it has (a session
/// between two local addresses is both rx and tx, one between two other
/// hosts neither, as peek's default filters count them).
fn count_session(m: &Metrics, locality: &Locality, s: &Session) {
    let seen = locality.seen(s);
    let o = OUTCOMES
        .iter()
        .position(|(o, _)| *o == s.outcome)
        .expect("every outcome");
    let p = m.port(s.server().port());
    for (d, on) in [seen.rx, seen.tx].into_iter().enumerate() {
        if on {
            p.handshakes[d][o].inc();
        }
    }
}

impl<W: std::io::Write> View for MetricsView<W> {
    fn on(&mut self, input: Input, table: &mut FlowTable, probe: &dyn Probe) -> Result<Control> {
        match input {
            Input::Event(ev) => self.on_event(&ev),
            Input::Tick { now_ns } => self.on_tick(now_ns, table, probe),
            Input::Key(_) | Input::Query { .. } => {}
            Input::Stop { why, now_ns } => {
                self.on_stop(why, now_ns, table, probe)?;
                return Ok(Control::Quit);
            }
        }
        Ok(Control::Continue)
    }
}
