//! What happened to each connection since the last tick, for views that
//! count connections as they change (`export`'s metrics) or record them
//! when they end (`log`): the table's changes, then the connections that
//! ended, which leave the table. Work per tick follows what changed; the
//! pass over the live table that finds what ended runs only once the
//! earliest time something can end has come (a million quiet connections
//! cost nothing per tick).

use tcpmon_common::State;

use super::{Change, Connection, FlowTable, Retired};

/// Why a connection ended, as the connection log names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// Both FINs seen, and quiet for the linger time since.
    Closed,
    /// Reset, and quiet for the linger time since.
    Reset,
    /// The handshake never completed: no answer within the handshake
    /// timeout, or the client gave up and began anew on the same 4-tuple.
    Timeout,
    /// Half closed and quiet for 60 s, or established and quiet for
    /// `--idle-timeout`.
    Idle,
    /// The kernel's full flow map evicted it while it was open.
    Evicted,
    /// An open connection whose 4-tuple a new connection took.
    Superseded,
    /// Still open when tcpmon stopped.
    Open,
}

impl End {
    pub fn name(self) -> &'static str {
        match self {
            End::Closed => "closed",
            End::Reset => "reset",
            End::Timeout => "timeout",
            End::Idle => "idle",
            End::Evicted => "evicted",
            End::Superseded => "superseded",
            End::Open => "open",
        }
    }
}

const SECOND: u64 = 1_000_000_000;

/// When a connection in the table has ended.
#[derive(Clone, Copy, Debug)]
pub struct EndRules {
    /// A closed or reset connection stays this long for the segments that
    /// trail its end (the kernel keeps its record as long).
    pub linger_ns: u64,
    /// A handshake quiet this long (no SYN resent, no answer) has failed.
    pub handshake_timeout_ns: u64,
    /// An established connection quiet this long ends (`None`: never).
    pub idle_ns: Option<u64>,
}

impl Default for EndRules {
    fn default() -> Self {
        EndRules {
            linger_ns: 2 * SECOND,
            handshake_timeout_ns: crate::engine::handshake::DEFAULT_TIMEOUT_NS,
            idle_ns: None,
        }
    }
}

impl EndRules {
    /// Why the live connection `c` has ended at `now_ns`, if it has.
    pub fn ended(&self, c: &Connection, now_ns: u64) -> Option<End> {
        self.deadline(c)
            .filter(|&(at, _)| now_ns > at)
            .map(|(_, end)| end)
    }

    /// The time after which `c` has ended unless it changes, and how;
    /// `None` if quiet never ends it.
    pub fn deadline(&self, c: &Connection) -> Option<(u64, End)> {
        let quiet = |ns: u64| c.rec.last_ns.saturating_add(ns);
        match c.rec.state {
            State::Closed => Some((quiet(self.linger_ns), End::Closed)),
            State::Reset => Some((quiet(self.linger_ns), End::Reset)),
            // Quiet since its last SYN: a SYN resent later still finds it
            // (the same attempt, as peek counts it), not a new connection.
            State::SynSent | State::SynAckAck | State::None => {
                Some((quiet(self.handshake_timeout_ns), End::Timeout))
            }
            State::Closing => Some((quiet(60 * SECOND), End::Idle)),
            State::Established => self.idle_ns.map(|max| (quiet(max), End::Idle)),
        }
    }

    /// Why a connection that left the live table ended.
    pub fn retired(c: &Connection, why: Retired) -> End {
        match (c.rec.state, why) {
            (State::Closed, _) => End::Closed,
            (State::Reset, _) => End::Reset,
            (_, Retired::Evicted) => End::Evicted,
            (State::SynSent | State::SynAckAck | State::None, _) => End::Timeout,
            _ => End::Superseded,
        }
    }

    /// Why a connection still in the table when the run stops ended.
    pub fn at_stop(c: &Connection) -> End {
        match c.rec.state {
            State::Closed => End::Closed,
            State::Reset => End::Reset,
            _ => End::Open,
        }
    }
}

/// What a tick reports.
#[derive(Clone, Copy, Debug)]
pub enum Happened<'a> {
    /// A connection changed (or is new) since the last tick.
    Changed(Change<'a>),
    /// A connection ended; it leaves the table. Its last change came
    /// before.
    Ended(&'a Connection, End),
}

/// A connection that ended while the backend may still hold its record
/// (a handshake that timed out, an idle one): not closed or reset, which
/// the kernel deletes on its own, nor retired, whose 4-tuple holds a new
/// connection.
pub fn backend_keeps(end: End) -> bool {
    matches!(end, End::Timeout | End::Idle)
}

/// When the table next needs a pass to find what ended: the earliest
/// deadline among its connections, lowered by every change.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sweep {
    next_ns: u64,
}

/// Reports what changed and what ended at `now_ns`, and removes what ended
/// from `table` (which must track changes).
pub fn tick(
    rules: &EndRules,
    sweep: &mut Sweep,
    table: &mut FlowTable,
    now_ns: u64,
    f: &mut impl FnMut(Happened),
) {
    take(table, &mut |h| {
        if let Happened::Changed(ch) = h
            && let Some((at, _)) = rules.deadline(ch.conn)
        {
            sweep.next_ns = sweep.next_ns.min(at);
        }
        f(h)
    });
    // Nothing can have ended before the earliest deadline.
    if now_ns <= sweep.next_ns {
        return;
    }
    let mut next = u64::MAX;
    table.retain(|c| match rules.deadline(c) {
        Some((at, end)) if now_ns > at => {
            f(Happened::Ended(c, end));
            false
        }
        Some((at, _)) => {
            next = next.min(at);
            true
        }
        None => true,
    });
    sweep.next_ns = next;
}

/// The run stops: reports what changed, then every connection left as
/// ended, oldest first, and empties the table.
pub fn stop(table: &mut FlowTable, f: &mut impl FnMut(Happened)) {
    take(table, f);
    for c in table.in_order() {
        f(Happened::Ended(c, EndRules::at_stop(c)));
    }
    table.retain(|_| false);
}

/// Reports what changed since the last tick, including the connections
/// retired meanwhile, which end (and are forgotten).
pub fn take(table: &mut FlowTable, f: &mut impl FnMut(Happened)) {
    table.take_changes(|ch| {
        f(Happened::Changed(ch));
        if let Some(why) = ch.retired {
            f(Happened::Ended(ch.conn, EndRules::retired(ch.conn, why)));
        }
    });
    table.clear_finished();
}

#[cfg(test)]
mod tests {
    use super::*;
    use tcpmon_common::tcp::flags::*;
    use tcpmon_common::{FlowKey, Segment};

    fn key(port: u16) -> FlowKey {
        FlowKey {
            port: [80, port],
            family: 4,
            ..FlowKey::default()
        }
    }

    fn seg(ms: u64, dir: u8, flags: u8, seq: u32, payload: u32) -> Segment {
        Segment {
            ts_ns: ms * 1_000_000,
            seq,
            ack: 1,
            wire_packets: 1,
            flags,
            dir,
            guess: 1,
            payload_len: payload,
            ..Segment::default()
        }
    }

    /// (client port, packets it sent since) per change; (client port, end).
    type Ticked = (Vec<(u16, u64)>, Vec<(u16, End)>);

    /// One tick; `sweep` carries over between ticks as in the views, so
    /// the tests see that skipping passes before the earliest deadline
    /// misses no end.
    fn run(table: &mut FlowTable, rules: &EndRules, sweep: &mut Sweep, now_ms: u64) -> Ticked {
        let (mut changed, mut ended) = (Vec::new(), Vec::new());
        tick(rules, sweep, table, now_ms * 1_000_000, &mut |h| match h {
            Happened::Changed(ch) => changed.push((
                ch.conn.key.port[1],
                ch.conn.rec.packets[1] - ch.before.map_or(0, |b| b.packets[1]),
            )),
            Happened::Ended(c, end) => ended.push((c.key.port[1], end)),
        });
        (changed, ended)
    }

    #[test]
    fn changes_then_ends_each_once() {
        let rules = EndRules {
            linger_ns: SECOND,
            handshake_timeout_ns: 3 * SECOND,
            idle_ns: None,
        };
        let mut t = FlowTable::new(0).track_changes();
        // 1: handshake, data, FIN both ways. 2: a SYN nobody answers.
        // 3: reset. 4: a SYN superseded by a new ISN on its tuple.
        for (port, s) in [
            (1, seg(0, 1, SYN, 10, 0)),
            (1, seg(1, 0, SYN | ACK, 50, 0)),
            (1, seg(2, 1, ACK, 11, 0)),
            (1, seg(3, 1, ACK | PSH, 11, 100)),
            (2, seg(4, 1, SYN, 10, 0)),
            (3, seg(5, 1, SYN, 10, 0)),
            (3, seg(6, 0, RST | ACK, 0, 0)),
            (4, seg(7, 1, SYN, 10, 0)),
            (4, seg(8, 1, SYN, 999, 0)),
        ] {
            t.apply(key(port), &s, |_| {});
        }
        let mut sweep = Sweep::default();
        let (changed, ended) = run(&mut t, &rules, &mut sweep, 10);
        assert_eq!(changed, [(1, 3), (2, 1), (3, 1), (4, 1), (4, 1)]);
        assert_eq!(ended, [(4, End::Timeout)]);
        // Before the earliest deadline (the reset's, at 1,006 ms): no pass,
        // nothing ends.
        assert_eq!(run(&mut t, &rules, &mut sweep, 500), (vec![], vec![]));
        for s in [
            Segment {
                ack: 51,
                ..seg(1000, 1, FIN | ACK, 111, 0)
            },
            Segment {
                ack: 112,
                ..seg(1001, 0, FIN | ACK, 51, 0)
            },
            Segment {
                ack: 52,
                ..seg(1002, 1, ACK, 112, 0)
            },
        ] {
            t.apply(key(1), &s, |_| {});
        }
        let (changed, ended) = run(&mut t, &rules, &mut sweep, 1010);
        assert_eq!(changed, [(1, 2)], "only what changed, by its change");
        assert_eq!(ended, [(3, End::Reset)]);
        let (changed, ended) = run(&mut t, &rules, &mut sweep, 3500);
        assert!(changed.is_empty());
        assert_eq!(
            ended,
            [(1, End::Closed), (2, End::Timeout), (4, End::Timeout)]
        );
        // An established connection is open when the run stops.
        for s in [seg(3600, 1, SYN, 10, 0), seg(3601, 0, SYN | ACK, 50, 0)] {
            t.apply(key(5), &s, |_| {});
        }
        let mut ended = Vec::new();
        stop(&mut t, &mut |h| {
            if let Happened::Ended(c, end) = h {
                ended.push((c.key.port[1], end));
            }
        });
        assert_eq!(ended, [(5, End::Open)]);
        assert!(t.is_empty());
    }
}
