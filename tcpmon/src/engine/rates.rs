//! Per-connection speeds on the backend's clock (packet time for captures,
//! so a replay always shows the same speeds): TCP payload bytes per second
//! over the last completed second, as tcptrack shows them, or over a
//! sliding one-second window moved every 100 ms (tcptrack's `-f`).

use std::collections::VecDeque;

use rustc_hash::FxHashMap;
use tcpmon_common::FlowKey;

use super::{Connection, FlowTable};

/// A connection outlives its 4-tuple's reuse only through its start time.
type ConnId = (FlowKey, u64);

pub struct Rates {
    step_ns: u64,
    /// Steps in the averaging window.
    window: usize,
    /// Payload byte totals at the last `window + 1` step boundaries.
    history: FxHashMap<ConnId, VecDeque<u64>>,
}

impl Rates {
    pub const SECOND_NS: u64 = 1_000_000_000;

    /// `fast`: a sliding window of ten 100 ms steps instead of whole seconds.
    pub fn new(fast: bool) -> Rates {
        let (step_ns, window) = if fast {
            (Rates::SECOND_NS / 10, 10)
        } else {
            (Rates::SECOND_NS, 1)
        };
        Rates {
            step_ns,
            window,
            history: FxHashMap::default(),
        }
    }

    /// How often `sample` must be called, in backend nanoseconds.
    pub fn step_ns(&self) -> u64 {
        self.step_ns
    }

    /// Records every connection's byte total at a step boundary; forgets
    /// connections the table no longer has.
    pub fn sample(&mut self, table: &FlowTable) {
        let mut next = FxHashMap::default();
        for c in table.connections() {
            let id = (c.key, c.rec.first_ns);
            let mut h = self.history.remove(&id).unwrap_or_default();
            h.push_back(total_bytes(&c));
            if h.len() > self.window + 1 {
                h.pop_front();
            }
            next.insert(id, h);
        }
        self.history = next;
    }

    /// Bytes per second over the window; 0 until a whole window was seen,
    /// except that a connection younger than the window counts from zero.
    pub fn speed(&self, c: &Connection) -> f64 {
        let Some(h) = self.history.get(&(c.key, c.rec.first_ns)) else {
            return 0.0;
        };
        let (first, last) = match (h.front(), h.back()) {
            (Some(f), Some(l)) if h.len() > self.window => (*f, *l),
            // Born inside the window: everything it sent is in the window.
            (Some(_), Some(l)) => (0, *l),
            _ => return 0.0,
        };
        let secs = (self.window as u64 * self.step_ns) as f64 / 1e9;
        last.saturating_sub(first) as f64 / secs
    }
}

fn total_bytes(c: &Connection) -> u64 {
    c.rec.bytes[0] + c.rec.bytes[1]
}

#[cfg(test)]
mod tests {
    use super::*;
    use tcpmon_common::{Segment, tcp::flags::ACK};

    fn data(t: &mut FlowTable, ts: u64, len: u32) {
        let key = FlowKey {
            port: [80, 5000],
            family: 4,
            ..FlowKey::default()
        };
        let seg = Segment {
            ts_ns: ts,
            flags: ACK,
            payload_len: len,
            wire_packets: 1,
            ..Segment::default()
        };
        t.apply(key, &seg, |_| {});
    }

    fn only(t: &FlowTable) -> Connection {
        t.connections()[0]
    }

    #[test]
    fn normal_mode_shows_the_last_completed_second() {
        let mut t = FlowTable::new(0);
        let mut r = Rates::new(false);
        data(&mut t, 100, 1_000);
        r.sample(&t); // boundary 1
        assert_eq!(
            r.speed(&only(&t)),
            1_000.0,
            "young connection counts from zero"
        );
        data(&mut t, 1_100, 3_000);
        data(&mut t, 1_200, 2_000);
        r.sample(&t); // boundary 2
        assert_eq!(r.speed(&only(&t)), 5_000.0);
        r.sample(&t); // a silent second
        assert_eq!(r.speed(&only(&t)), 0.0);
    }

    #[test]
    fn fast_mode_slides_over_ten_steps() {
        let mut t = FlowTable::new(0);
        let mut r = Rates::new(true);
        for step in 0..20u64 {
            data(&mut t, step * 100_000_000 + 1, 100);
            r.sample(&t);
        }
        // 100 bytes per 100 ms step, over 1 s.
        assert_eq!(r.speed(&only(&t)), 1_000.0);
    }

    #[test]
    fn forgotten_connections_leave_the_history() {
        let mut t = FlowTable::new(0);
        let mut r = Rates::new(false);
        data(&mut t, 1, 10);
        r.sample(&t);
        let gone = only(&t);
        let empty = FlowTable::new(0);
        r.sample(&empty);
        assert_eq!(r.speed(&gone), 0.0);
        assert!(r.history.is_empty());
    }
}
