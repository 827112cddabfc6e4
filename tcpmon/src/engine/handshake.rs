//! tcpeek's handshake sessions, followed from the events the update rule
//! emits (the kernel's ring buffer live, the pcap backend's callback for a
//! capture). A session starts on a client's SYN and ends once: success on
//! the ACK that completes the handshake, reject on an RST, unreach on an
//! ICMP destination-unreachable quoting it, timeout when none of these came
//! within the timeout. Timeouts run on the caller's clock: packet time for a
//! capture, the monotonic clock (the kernel's) live.
//!
//! Pending sessions are bounded: a SYN flood must not exhaust memory, so a
//! SYN that finds the table full is not tracked and is counted in `dropped`.

use std::collections::VecDeque;

use rustc_hash::FxHashMap;
use tcpmon_common::{ClientHow, Event, EventKind, FlowKey, FlowRecord, State};

/// tcpeek documents 60 seconds (its code says 30; the documentation wins).
pub const DEFAULT_TIMEOUT_NS: u64 = 60_000_000_000;
/// Pending handshakes kept by default: about 100 bytes each with the
/// deadline queue, so under 30 MiB even when a flood fills it.
pub const DEFAULT_MAX_PENDING: usize = 262_144;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    Success,
    Reject,
    Timeout,
    Unreach,
}

/// One finished handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Session {
    pub key: FlowKey,
    /// Which endpoint of the key sent the SYN.
    pub client: u8,
    /// The first SYN, on the backend's clock.
    pub start_ns: u64,
    /// The last segment of the handshake (the completing ACK, the RST, the
    /// last retransmission before a timeout).
    pub last_ns: u64,
    /// Retransmitted SYNs (same sequence number).
    pub dup_syn: u32,
    /// Retransmitted SYN+ACKs (same sequence number).
    pub dup_synack: u32,
    pub outcome: Outcome,
}

impl Session {
    pub fn client(&self) -> std::net::SocketAddr {
        endpoint(&self.key, self.client as usize & 1)
    }

    pub fn server(&self) -> std::net::SocketAddr {
        endpoint(&self.key, (self.client as usize & 1) ^ 1)
    }

    /// tcpeek's TIME(s): from the first SYN to the handshake's last segment.
    pub fn duration_ns(&self) -> u64 {
        self.last_ns.saturating_sub(self.start_ns)
    }
}

pub(crate) fn endpoint(key: &FlowKey, side: usize) -> std::net::SocketAddr {
    let a = key.addr[side];
    let ip: std::net::IpAddr = if key.family == 6 {
        std::net::Ipv6Addr::from(a).into()
    } else {
        std::net::Ipv4Addr::new(a[0], a[1], a[2], a[3]).into()
    };
    std::net::SocketAddr::new(ip, key.port[side])
}

#[derive(Clone, Copy, Debug)]
struct Pending {
    client: u8,
    start_ns: u64,
    last_ns: u64,
    syn_count: u32,
    synack_count: u32,
}

impl Pending {
    fn seen(&mut self, rec: &FlowRecord) {
        self.syn_count = rec.syn_count;
        self.synack_count = rec.synack_count;
        self.last_ns = self.last_ns.max(rec.last_ns);
    }

    /// How a handshake due at `deadline` really ended, by the flow's
    /// current record.
    fn settle(&mut self, rec: &FlowRecord, deadline: u64) -> Outcome {
        self.syn_count = rec.syn_count;
        self.synack_count = rec.synack_count;
        if rec.established_ns != 0 && rec.established_ns < deadline {
            self.last_ns = rec.established_ns;
            Outcome::Success
        } else if rec.state == State::Reset && rec.last_ns < deadline {
            self.last_ns = rec.last_ns;
            Outcome::Reject
        } else {
            // The last retransmitted SYN the record knows of, before the
            // deadline.
            if rec.syn_last_ns < deadline {
                self.last_ns = self.last_ns.max(rec.syn_last_ns);
            }
            Outcome::Timeout
        }
    }

    fn finish(&self, key: FlowKey, outcome: Outcome) -> Session {
        Session {
            key,
            client: self.client,
            start_ns: self.start_ns,
            last_ns: self.last_ns,
            dup_syn: self.syn_count.saturating_sub(1),
            dup_synack: self.synack_count.saturating_sub(1),
            outcome,
        }
    }
}

#[derive(Debug)]
pub struct HandshakeTracker {
    pending: FxHashMap<FlowKey, Pending>,
    /// (deadline, key, start) in the order sessions began, which is
    /// deadline order since the timeout is one constant. Entries of sessions
    /// that already ended stay until their turn or a compaction.
    deadlines: VecDeque<(u64, FlowKey, u64)>,
    timeout_ns: u64,
    max_pending: usize,
    /// SYNs not tracked because `max_pending` sessions were pending.
    dropped: u64,
}

impl HandshakeTracker {
    pub fn new(timeout_ns: u64, max_pending: usize) -> HandshakeTracker {
        HandshakeTracker {
            pending: FxHashMap::default(),
            deadlines: VecDeque::new(),
            timeout_ns,
            max_pending,
            dropped: 0,
        }
    }

    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    pub fn is_pending(&self, key: &FlowKey) -> bool {
        self.pending.contains_key(key)
    }

    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Takes in one event; sessions it ends go to `done`. Time moves on to
    /// the event's time first, so a handshake completed after its deadline
    /// is a timeout whether or not a clock tick came between.
    pub fn on_event(&mut self, ev: &Event, done: &mut impl FnMut(Session)) {
        let rec = &ev.rec;
        self.expire(rec.last_ns, done);
        let key = ev.key;
        match ev.kind {
            EventKind::Opened if rec.client_how == ClientHow::Syn => {
                self.open(key, rec);
            }
            // A SYN retransmitted after its session ended (timed out, or not
            // tracked while the table was full) is the same failed attempt,
            // not a new session: only the first SYN opens one.
            EventKind::SynDup | EventKind::SynAck | EventKind::SynAckDup => {
                if let Some(p) = self.pending.get_mut(&key) {
                    p.seen(rec);
                }
            }
            EventKind::Established => self.end(key, rec, Outcome::Success, done),
            EventKind::Reset => self.end(key, rec, Outcome::Reject, done),
            EventKind::Unreach => self.end(key, rec, Outcome::Unreach, done),
            // The client gave up and opened a new connection on the same
            // tuple (a new ISN) before any answer: the old attempt failed
            // without an answer, which is what a timeout reports.
            EventKind::Superseded => self.end(key, rec, Outcome::Timeout, done),
            // A FIN before the handshake completed (TCP Fast Open data that
            // got no answer) changes nothing: the timeout decides.
            EventKind::Opened | EventKind::Closing | EventKind::Closed => {}
        }
    }

    fn open(&mut self, key: FlowKey, rec: &FlowRecord) {
        let start_ns = rec.syn_first_ns;
        if self.pending.len() >= self.max_pending && !self.pending.contains_key(&key) {
            self.dropped += 1;
            return;
        }
        let p = Pending {
            client: rec.client,
            start_ns,
            last_ns: rec.last_ns,
            syn_count: rec.syn_count,
            synack_count: rec.synack_count,
        };
        self.pending.insert(key, p);
        self.deadlines
            .push_back((start_ns.saturating_add(self.timeout_ns), key, start_ns));
        // Ended sessions leave their entries behind; keep the queue within
        // a constant factor of what is pending.
        if self.deadlines.len() > 2 * self.pending.len() + 1024 {
            let pending = &self.pending;
            self.deadlines
                .retain(|(_, k, start)| pending.get(k).is_some_and(|p| p.start_ns == *start));
        }
    }

    fn end(
        &mut self,
        key: FlowKey,
        rec: &FlowRecord,
        outcome: Outcome,
        done: &mut impl FnMut(Session),
    ) {
        if let Some(mut p) = self.pending.remove(&key) {
            p.seen(rec);
            done(p.finish(key, outcome));
        }
    }

    /// Ends as timeouts the sessions whose deadline is `now_ns` or earlier.
    pub fn expire(&mut self, now_ns: u64, done: &mut impl FnMut(Session)) {
        self.expire_checked(now_ns, |_| None, done);
    }

    /// `expire`, asking `current` for the backend's own copy of a due
    /// session's flow record (the kernel's map, live): when it shows that
    /// the handshake completed or was reset before the deadline, the event
    /// saying so was lost (a full ring buffer), and the session ends as it
    /// really did instead of as a timeout.
    pub fn expire_checked(
        &mut self,
        now_ns: u64,
        mut current: impl FnMut(&FlowKey) -> Option<FlowRecord>,
        done: &mut impl FnMut(Session),
    ) {
        while let Some(&(deadline, key, start)) = self.deadlines.front() {
            if deadline > now_ns {
                break;
            }
            self.deadlines.pop_front();
            if let Some(p) = self.pending.get(&key)
                && p.start_ns == start
            {
                let mut p = self.pending.remove(&key).expect("present");
                let outcome = match current(&key) {
                    Some(rec) if rec.syn_first_ns == start => p.settle(&rec, deadline),
                    _ => Outcome::Timeout,
                };
                done(p.finish(key, outcome));
            }
        }
    }

    /// Ends every pending session as a timeout, oldest first: at the end of
    /// a capture no answer can come any more.
    pub fn expire_all(&mut self, done: &mut impl FnMut(Session)) {
        self.expire(u64::MAX, done);
        // Sessions whose deadline overflowed (none with sane timeouts).
        let mut rest: Vec<(FlowKey, Pending)> = self.pending.drain().collect();
        rest.sort_by_key(|(k, p)| (p.start_ns, *k));
        for (key, p) in rest {
            done(p.finish(key, Outcome::Timeout));
        }
        self.deadlines.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::FlowTable;
    use tcpmon_common::Segment;
    use tcpmon_common::tcp::flags::*;

    const S: u64 = 1_000_000_000;

    /// Client 10.0.0.2:40000 (endpoint 1) and server 10.0.0.1:80.
    fn key(port: u16) -> FlowKey {
        let mut k = FlowKey {
            port: [80, port],
            family: 4,
            ..FlowKey::default()
        };
        k.addr[0][..4].copy_from_slice(&[10, 0, 0, 1]);
        k.addr[1][..4].copy_from_slice(&[10, 0, 0, 2]);
        k
    }

    /// Applies segments with the shared rule and feeds the events to a
    /// tracker, as a replay does.
    struct Run {
        table: FlowTable,
        tracker: HandshakeTracker,
        done: Vec<Session>,
    }

    impl Run {
        fn new(timeout_s: u64, max: usize) -> Run {
            Run {
                table: FlowTable::new(0),
                tracker: HandshakeTracker::new(timeout_s * S, max),
                done: Vec::new(),
            }
        }

        /// `from_client`: sent by endpoint 1.
        fn seg(
            &mut self,
            port: u16,
            t_ms: u64,
            from_client: bool,
            flags: u8,
            seq: u32,
        ) -> &mut Run {
            let seg = Segment {
                ts_ns: t_ms * 1_000_000,
                seq,
                ack: 1,
                wire_packets: 1,
                flags,
                dir: from_client as u8,
                guess: 1,
                ..Segment::default()
            };
            let (tracker, done) = (&mut self.tracker, &mut self.done);
            self.table.apply(key(port), &seg, |ev| {
                tracker.on_event(ev, &mut |s| done.push(s));
            });
            self
        }

        fn outcomes(&self) -> Vec<(u16, Outcome, u32, u32)> {
            self.done
                .iter()
                .map(|s| (s.client().port(), s.outcome, s.dup_syn, s.dup_synack))
                .collect()
        }
    }

    #[test]
    fn success_reject_and_duplicates() {
        let mut r = Run::new(60, 100);
        r.seg(1, 0, true, SYN, 10)
            .seg(1, 1000, true, SYN, 10)
            .seg(1, 1001, false, SYN | ACK, 50)
            .seg(1, 2001, false, SYN | ACK, 50)
            .seg(1, 2002, true, ACK, 11);
        r.seg(2, 3000, true, SYN, 10)
            .seg(2, 3001, false, RST | ACK, 0);
        assert_eq!(
            r.outcomes(),
            [(1, Outcome::Success, 1, 1), (2, Outcome::Reject, 0, 0)]
        );
        assert_eq!(r.done[0].duration_ns(), 2_002_000_000);
        assert_eq!(r.done[1].duration_ns(), 1_000_000);
        assert_eq!(r.tracker.pending(), 0);
    }

    #[test]
    fn timeout_on_the_callers_clock_and_at_the_next_event() {
        let mut r = Run::new(3, 100);
        r.seg(1, 0, true, SYN, 10).seg(1, 1000, true, SYN, 10);
        r.tracker.expire(2_999 * 1_000_000, &mut |s| r.done.push(s));
        assert!(r.done.is_empty());
        r.tracker.expire(3 * S, &mut |s| r.done.push(s));
        assert_eq!(r.outcomes(), [(1, Outcome::Timeout, 1, 0)]);
        assert_eq!(r.done[0].duration_ns(), S, "up to the last SYN");
        // No tick: a late SYN+ACK after the deadline still finds it timed out.
        let mut r = Run::new(3, 100);
        r.seg(2, 0, true, SYN, 10)
            .seg(2, 3500, false, SYN | ACK, 50)
            .seg(2, 3501, true, ACK, 11);
        assert_eq!(r.outcomes(), [(2, Outcome::Timeout, 0, 0)]);
    }

    #[test]
    fn a_syn_retransmitted_after_the_timeout_is_the_same_failed_attempt() {
        let mut r = Run::new(3, 100);
        r.seg(1, 0, true, SYN, 10)
            .seg(1, 2000, true, SYN, 10)
            .seg(1, 4000, true, SYN, 10)
            .seg(1, 8000, true, SYN, 10)
            .seg(1, 8001, false, SYN | ACK, 50)
            .seg(1, 8002, true, ACK, 11);
        r.tracker.expire_all(&mut |s| r.done.push(s));
        assert_eq!(r.outcomes(), [(1, Outcome::Timeout, 1, 0)]);
        // A new ISN on the tuple is a new attempt.
        r.seg(1, 9000, true, SYN, 777)
            .seg(1, 9001, false, RST | ACK, 0);
        assert_eq!(r.outcomes()[1], (1, Outcome::Reject, 0, 0));
    }

    #[test]
    fn a_lost_completion_is_found_in_the_flows_record_at_the_deadline() {
        // Only the Opened events arrive; the table holds the true records.
        let mut table = FlowTable::new(0);
        let mut tracker = HandshakeTracker::new(3 * S, 100);
        let mut done = Vec::new();
        let mut segs = |port: u16, rest: &[(u64, bool, u8, u32)]| {
            let mut first = true;
            for &(t_ms, from_client, flags, seq) in rest {
                let seg = Segment {
                    ts_ns: t_ms * 1_000_000,
                    seq,
                    ack: 1,
                    wire_packets: 1,
                    flags,
                    dir: from_client as u8,
                    guess: 1,
                    ..Segment::default()
                };
                table.apply(key(port), &seg, |ev| {
                    if first {
                        tracker.on_event(ev, &mut |s| done.push(s));
                        first = false;
                    }
                });
            }
        };
        segs(
            1,
            &[
                (0, true, SYN, 1),
                (10, false, SYN | ACK, 9),
                (20, true, ACK, 2),
            ],
        );
        segs(
            2,
            &[
                (0, true, SYN, 1),
                (1000, true, SYN, 1),
                (1010, false, RST | ACK, 0),
            ],
        );
        segs(3, &[(0, true, SYN, 1), (1000, true, SYN, 1)]);
        // Completed, but after the deadline: still a timeout.
        segs(
            4,
            &[
                (0, true, SYN, 1),
                (3500, false, SYN | ACK, 9),
                (3510, true, ACK, 2),
            ],
        );
        let lookup = |k: &FlowKey| {
            table
                .connections()
                .into_iter()
                .find(|c| c.key == *k)
                .map(|c| c.rec)
        };
        tracker.expire_checked(4 * S, lookup, &mut |s| done.push(s));
        let got: Vec<(u16, Outcome, u32, u64)> = done
            .iter()
            .map(|s| (s.client().port(), s.outcome, s.dup_syn, s.duration_ns()))
            .collect();
        assert_eq!(
            got,
            [
                (1, Outcome::Success, 0, 20_000_000),
                (2, Outcome::Reject, 1, 1_010_000_000),
                (3, Outcome::Timeout, 1, 1_000_000_000),
                (4, Outcome::Timeout, 0, 0),
            ]
        );
    }

    #[test]
    fn pending_sessions_are_bounded_and_drops_counted() {
        let mut r = Run::new(60, 2);
        for port in 1..=5 {
            r.seg(port, port as u64, true, SYN, 10);
        }
        assert_eq!(r.tracker.pending(), 2);
        assert_eq!(r.tracker.dropped(), 3);
        // An untracked session's retransmission and completion are ignored.
        r.seg(4, 9, true, SYN, 10)
            .seg(4, 10, false, SYN | ACK, 50)
            .seg(4, 11, true, ACK, 11);
        assert_eq!(r.tracker.dropped(), 3);
        assert!(r.done.is_empty());
        r.seg(1, 12, false, RST, 0);
        r.tracker.expire_all(&mut |s| r.done.push(s));
        assert_eq!(
            r.outcomes(),
            [(1, Outcome::Reject, 0, 0), (2, Outcome::Timeout, 0, 0)]
        );
    }

    #[test]
    fn the_deadline_queue_stays_proportional_to_what_is_pending() {
        let mut r = Run::new(60, 10);
        for i in 0..50_000u32 {
            let port = (i % 60_000) as u16 + 1;
            r.seg(port, i as u64, true, SYN, i)
                .seg(port, i as u64, false, RST | ACK, 0);
        }
        assert_eq!(r.done.len(), 50_000);
        assert!(r.tracker.deadlines.len() <= 2 * 10 + 1025);
    }

    #[test]
    fn connections_seen_without_their_syn_are_no_sessions() {
        let mut r = Run::new(60, 10);
        r.seg(1, 0, false, SYN | ACK, 50).seg(1, 1, true, ACK, 11);
        r.seg(2, 0, true, ACK | PSH, 11).seg(2, 1, false, RST, 0);
        r.tracker.expire_all(&mut |s| r.done.push(s));
        assert!(r.done.is_empty());
    }
}
