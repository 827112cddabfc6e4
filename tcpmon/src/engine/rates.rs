//! Per-connection speeds on the backend's clock (packet time for captures,
//! so a replay always shows the same speeds): TCP payload bytes per second
//! over the last completed second, as tcptrack shows them, or over a
//! sliding one-second window moved every 100 ms (tcptrack's `-f`).
//!
//! Work and memory follow what moves, not what is tracked: each step takes
//! only the connections the table saw change, and keeps only nonzero byte
//! deltas. A connection's speed is the sum of its deltas over the window's
//! steps (its first delta counting from zero), so one that stops sending
//! decays to 0 as its deltas leave the window, without being touched.

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
    /// The nonzero byte deltas of the last `window` steps, oldest first.
    steps: VecDeque<Vec<(ConnId, u64)>>,
    /// Per connection, the sum of its deltas in `steps`; absent when 0.
    sums: FxHashMap<ConnId, u64>,
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
            steps: VecDeque::with_capacity(window + 1),
            sums: FxHashMap::default(),
        }
    }

    /// How often `sample` must be called, in backend nanoseconds.
    pub fn step_ns(&self) -> u64 {
        self.step_ns
    }

    /// Closes a step: takes in the connections `table` saw change since the
    /// last call (it must have been made with
    /// [`FlowTable::track_changes`]) and lets the oldest step leave the
    /// window.
    pub fn sample(&mut self, table: &mut FlowTable) {
        let mut step = if self.steps.len() >= self.window {
            let old = self.steps.pop_front().unwrap_or_default();
            for (id, d) in &old {
                if let Some(sum) = self.sums.get_mut(id) {
                    *sum -= d;
                    if *sum == 0 {
                        self.sums.remove(id);
                    }
                }
            }
            old
        } else {
            Vec::new()
        };
        step.clear();
        table.take_changes(|ch| {
            let c = ch.conn;
            // A connection new since the last step counts from zero.
            let before = ch.before.map_or(0, |b| b.bytes[0] + b.bytes[1]);
            let d = c.payload_bytes().saturating_sub(before);
            if d > 0 {
                let id = (c.key, c.rec.first_ns);
                step.push((id, d));
                *self.sums.entry(id).or_default() += d;
            }
        });
        self.steps.push_back(step);
    }

    /// Bytes per second over the window; 0 until a whole window was seen,
    /// except that a connection younger than the window counts from zero.
    pub fn speed(&self, c: &Connection) -> f64 {
        // Most connections on a large table are idle: no hashing for them
        // when nothing moves at all.
        if self.sums.is_empty() {
            return 0.0;
        }
        let Some(sum) = self.sums.get(&(c.key, c.rec.first_ns)) else {
            return 0.0;
        };
        let secs = (self.window as u64 * self.step_ns) as f64 / 1e9;
        *sum as f64 / secs
    }
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
        let mut t = FlowTable::new(0).track_changes();
        let mut r = Rates::new(false);
        data(&mut t, 100, 1_000);
        r.sample(&mut t); // boundary 1
        assert_eq!(
            r.speed(&only(&t)),
            1_000.0,
            "young connection counts from zero"
        );
        data(&mut t, 1_100, 3_000);
        data(&mut t, 1_200, 2_000);
        r.sample(&mut t); // boundary 2
        assert_eq!(r.speed(&only(&t)), 5_000.0);
        r.sample(&mut t); // a silent second
        assert_eq!(r.speed(&only(&t)), 0.0);
    }

    #[test]
    fn fast_mode_slides_over_ten_steps() {
        let mut t = FlowTable::new(0).track_changes();
        let mut r = Rates::new(true);
        for step in 0..20u64 {
            data(&mut t, step * 100_000_000 + 1, 100);
            r.sample(&mut t);
        }
        // 100 bytes per 100 ms step, over 1 s.
        assert_eq!(r.speed(&only(&t)), 1_000.0);
    }

    #[test]
    fn forgotten_connections_leave_the_history() {
        let mut t = FlowTable::new(0).track_changes();
        let mut r = Rates::new(false);
        data(&mut t, 1, 10);
        r.sample(&mut t);
        let gone = only(&t);
        let mut empty = FlowTable::new(0).track_changes();
        r.sample(&mut empty);
        assert_eq!(r.speed(&gone), 0.0);
        assert!(r.sums.is_empty());
    }

    /// The rule before rates followed changes only: every connection's
    /// byte total at every step, speed from the ends of the window.
    struct Reference {
        window: usize,
        history: FxHashMap<ConnId, VecDeque<u64>>,
    }

    impl Reference {
        fn sample(&mut self, t: &FlowTable) {
            let mut next = FxHashMap::default();
            for c in t.connections() {
                let id = (c.key, c.rec.first_ns);
                let mut h = self.history.remove(&id).unwrap_or_default();
                h.push_back(c.payload_bytes());
                if h.len() > self.window + 1 {
                    h.pop_front();
                }
                next.insert(id, h);
            }
            self.history = next;
        }

        fn speed(&self, c: &Connection) -> f64 {
            let h = &self.history[&(c.key, c.rec.first_ns)];
            let first = if h.len() > self.window { h[0] } else { 0 };
            let secs = self.window as f64 * if self.window == 1 { 1.0 } else { 0.1 };
            (h.back().unwrap() - first) as f64 / secs
        }
    }

    /// Random traffic on a few tuples, with new connections superseding
    /// old ones, silences and bursts: the same speeds as the reference.
    #[test]
    fn the_same_speeds_as_sampling_every_connection() {
        use tcpmon_common::tcp::flags::{RST, SYN};
        for fast in [false, true] {
            let mut t = FlowTable::new(0).track_changes();
            let mut r = Rates::new(fast);
            let mut reference = Reference {
                window: r.window,
                history: FxHashMap::default(),
            };
            let mut seed = 0x2545_f491_4f6c_dd1du64;
            let mut rnd = move || {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed
            };
            let mut ts = 1;
            let mut moving = 0;
            for step in 0..300u64 {
                let quiet = (step / 20) % 3 == 2;
                for _ in 0..if quiet { 0 } else { rnd() % 12 } {
                    let n = rnd();
                    let key = FlowKey {
                        port: [80, 5000 + (n % 5) as u16],
                        family: 4,
                        ..FlowKey::default()
                    };
                    let flags = match (n >> 8) % 40 {
                        0 => SYN,
                        1 => RST,
                        _ => ACK,
                    };
                    ts += 1;
                    let seg = Segment {
                        ts_ns: ts,
                        seq: (n >> 20) as u32,
                        flags,
                        dir: ((n >> 16) & 1) as u8,
                        payload_len: if flags == ACK {
                            (n >> 32) as u32 % 3000
                        } else {
                            0
                        },
                        wire_packets: 1,
                        guess: 1,
                        ..Segment::default()
                    };
                    t.apply(key, &seg, |_| {});
                }
                r.sample(&mut t);
                reference.sample(&t);
                for c in t.connections() {
                    assert_eq!(
                        r.speed(&c),
                        reference.speed(&c),
                        "fast {fast}, step {step}, {c:?}"
                    );
                    moving += usize::from(r.speed(&c) > 0.0);
                }
            }
            assert!(t.len() > 5, "connections were superseded");
            assert!(moving > 100, "speeds were compared while nonzero");
        }
    }
}
