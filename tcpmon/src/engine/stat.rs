//! tcpstat's interval arithmetic: when an interval ends, how empty ones are
//! padded, the load average, and the bandwidth and accounting totals.
//!
//! It follows tcpstat 1.5 operation for operation (same f64 sums in the same
//! order), because boundaries are compared in floating point and users'
//! scripts depend on which interval a packet lands in. Where tcpstat is
//! wrong (see SEMANTICS.md and the README), the fix is marked here.

use tcpmon_common::StatCounters;

/// What a run prints besides interval lines.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Mode {
    /// One line per interval.
    Intervals,
    /// `-a`: bytes per second, minute, hour, day and month.
    Accounting,
    /// `-b` (`smart`: bytes above the limit carry over) or `-B`.
    Bandwidth { bps: f64, smart: bool },
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StatConfig {
    /// Interval length in seconds; `None` is tcpstat's `-1`: one interval
    /// over everything.
    pub interval: Option<f64>,
    /// `-s`: ignore packets later than this after the first, and pad with
    /// empty intervals up to it.
    pub capture_secs: Option<f64>,
    /// Without `-e`, empty intervals are printed too.
    pub show_empty: bool,
    pub mode: Mode,
}

/// One interval to print.
#[derive(Clone, Copy, Debug)]
pub struct Line<'a> {
    pub counters: &'a StatCounters,
    /// Bytes, plus any carried over in `-b` mode, as tcpstat sums them.
    pub bytes: f64,
    pub begin: f64,
    /// Its length in seconds, which rates are divided by.
    pub dt: f64,
    /// The load average after this interval, and the peak bit rate so far.
    pub load: f64,
    pub peak: f64,
    /// Timestamp of the first packet (or of the start, live).
    pub first: f64,
}

/// What `-a`, `-b` and `-B` print at the end.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Totals {
    pub time: f64,
    pub time_over: f64,
    pub bytes: f64,
    pub peak: f64,
}

pub struct IntervalStats {
    cfg: StatConfig,
    first: Option<f64>,
    begin: f64,
    /// Timestamp of the last packet counted.
    now: f64,
    cur: StatCounters,
    /// `-b`: bytes above the limit moved into the next interval.
    carry: f64,
    load: Option<f64>,
    totals: Totals,
}

/// A sink for printed lines.
pub trait LineSink {
    fn line(&mut self, line: &Line);
    /// Whether to give up padding (a gap of years at a short interval is
    /// billions of lines; SIGINT must still end it).
    fn stopped(&self) -> bool {
        false
    }
}

impl<F: FnMut(&Line)> LineSink for F {
    fn line(&mut self, line: &Line) {
        self(line)
    }
}

impl IntervalStats {
    pub fn new(cfg: StatConfig) -> Self {
        IntervalStats {
            cfg,
            first: None,
            begin: 0.0,
            now: 0.0,
            cur: StatCounters::default(),
            carry: 0.0,
            load: None,
            totals: Totals::default(),
        }
    }

    /// Live mode: intervals start now, not at the first packet.
    pub fn start(&mut self, ts: f64) {
        self.first = Some(ts);
        self.begin = ts;
        self.now = ts;
    }

    pub fn first(&self) -> Option<f64> {
        self.first
    }

    /// Where the current interval began.
    pub fn begin(&self) -> f64 {
        self.begin
    }

    pub fn interval(&self) -> Option<f64> {
        self.cfg.interval
    }

    /// Counts one packet at `ts` (seconds). With `print_now` (SIGUSR1) the
    /// interval so far is printed first, and intervals realign there.
    /// Returns whether an interval ended (which answers a pending `print_now`).
    #[inline]
    pub fn packet(
        &mut self,
        ts: f64,
        size: u32,
        class: u8,
        print_now: bool,
        out: &mut impl LineSink,
    ) -> bool {
        let first = match self.first {
            Some(f) => f,
            None => {
                self.start(ts);
                ts
            }
        };
        if self.cfg.capture_secs.is_some_and(|cap| ts - first > cap) {
            return false;
        }
        let elapsed = ts - self.begin;
        let closed =
            self.cfg.interval.is_some_and(|iv| elapsed > iv) || (print_now && elapsed > 0.0);
        if closed {
            self.close(elapsed, print_now, ts, out);
        }
        self.now = ts;
        self.cur.add(size, class);
        self.totals.bytes += size as f64;
        closed
    }

    /// Adds what the kernel counted in one slot (live mode).
    pub fn add_counters(&mut self, c: &StatCounters) {
        self.cur.merge(c);
        self.totals.bytes += c.bytes as f64;
    }

    /// Live mode: ends the current interval at `ts` (on the clock): at its
    /// end on the grid, or `early` (SIGUSR1, or an interval that began off
    /// the grid) over the time it really lasted.
    pub fn close_at(&mut self, ts: f64, early: bool, out: &mut impl LineSink) {
        self.now = ts;
        self.close(ts - self.begin, early, ts, out);
    }

    /// Live mode: the run ends at `ts` (SIGINT, SIGTERM, `-s`). As `finish`,
    /// except that nothing is printed for an interval that has not begun
    /// (the run ended right on a boundary).
    pub fn finish_at(&mut self, ts: f64, out: &mut impl LineSink) -> Totals {
        self.now = ts;
        if self.cfg.interval.is_some() && ts <= self.begin {
            return self.totals;
        }
        self.finish(out)
    }

    /// Ends the current interval `elapsed` seconds after it began (the
    /// configured interval unless `forced` by SIGUSR1 or the end of a `-1`
    /// run), prints it, and pads with empty intervals up to `ts`.
    pub fn close(&mut self, elapsed: f64, forced: bool, ts: f64, out: &mut impl LineSink) {
        let elapsed = match self.cfg.interval {
            Some(iv) if !forced => iv,
            _ => elapsed,
        };
        // A zero-length interval (one packet with -1) has no rate; tcpstat
        // printed inf and nan.
        let rate = |bytes: f64| {
            if elapsed > 0.0 {
                bytes / elapsed * 8.0
            } else {
                0.0
            }
        };
        let bps = rate(self.cur.bytes as f64);
        if bps > self.totals.peak {
            self.totals.peak = bps;
        }
        let mut load = self.load.unwrap_or(bps);
        load += (bps - load) * (1.0 - (-elapsed / 60.0).exp());
        let bytes = self.cur.bytes as f64 + self.carry;
        let bps = rate(bytes);
        let limit = match self.cfg.mode {
            Mode::Bandwidth { bps, .. } => bps,
            _ => 0.0,
        };
        if bps > limit {
            self.totals.time_over += elapsed;
        }
        let lines = self.cfg.mode == Mode::Intervals;
        let first = self.first.unwrap_or(self.begin);
        if lines && (self.cfg.show_empty || self.cur.packets > 0) {
            out.line(&Line {
                counters: &self.cur,
                bytes,
                begin: self.begin,
                dt: elapsed,
                load,
                peak: self.totals.peak,
                first,
            });
        }
        self.begin += elapsed;
        self.totals.time += elapsed;
        if let Some(iv) = self.cfg.interval {
            let zero = StatCounters::default();
            let decay = 1.0 - (-iv / 60.0).exp();
            // tcpstat steps its own variable alongside `begin`; the padded
            // line's start is that variable minus the interval, which is
            // not always `begin` to the last bit.
            let mut x = self.begin + iv;
            while x < ts && !out.stopped() {
                self.begin += iv;
                self.totals.time += iv;
                load -= load * decay;
                if lines && self.cfg.show_empty {
                    out.line(&Line {
                        counters: &zero,
                        bytes: 0.0,
                        begin: x - iv,
                        dt: iv,
                        load,
                        peak: self.totals.peak,
                        first,
                    });
                }
                x += iv;
            }
        }
        self.load = Some(load);
        self.cur = StatCounters::default();
        self.carry = 0.0;
        if let Mode::Bandwidth {
            bps: limit,
            smart: true,
        } = self.cfg.mode
        {
            if bps > limit {
                self.carry = (bps - limit) * elapsed / 8.0;
            }
        }
    }

    /// End of input: prints the last (partial) interval over its full
    /// length, then pads up to `-s`. Returns the totals for `-a`/`-b`/`-B`.
    pub fn finish(&mut self, out: &mut impl LineSink) -> Totals {
        // An empty capture has no interval at all (tcpstat printed one at
        // the epoch).
        let Some(first) = self.first else {
            return self.totals;
        };
        // tcpstat also added this interval to the total time a second time.
        // With -1 it runs from where the last SIGUSR1 line ended (without
        // one, from the first packet).
        let x = self.cfg.interval.unwrap_or(self.now - self.begin);
        self.close(x, self.cfg.interval.is_none(), self.now, out);
        // With -1 there is one interval by definition: no padding (tcpstat
        // padded with zero-length intervals, forever when x was 0).
        if let (Some(cap), Some(iv), Mode::Intervals) =
            (self.cfg.capture_secs, self.cfg.interval, self.cfg.mode)
        {
            while self.now + iv - first < cap && !out.stopped() {
                self.close(iv, false, self.now, out);
                self.now += iv;
            }
        }
        self.totals
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(interval: Option<f64>) -> StatConfig {
        StatConfig {
            interval,
            capture_secs: None,
            show_empty: true,
            mode: Mode::Intervals,
        }
    }

    /// (begin, dt, packets, bytes, load) of a printed line.
    type Printed = (f64, f64, u64, u64, f64);

    fn run(c: StatConfig, packets: &[(f64, u32)]) -> (Vec<Printed>, Totals) {
        let mut lines = Vec::new();
        let mut sink =
            |l: &Line| lines.push((l.begin, l.dt, l.counters.packets, l.counters.bytes, l.load));
        let mut s = IntervalStats::new(c);
        for &(ts, size) in packets {
            s.packet(ts, size, 0, false, &mut sink);
        }
        let totals = s.finish(&mut sink);
        (lines, totals)
    }

    #[test]
    fn end_is_inclusive_and_empty_intervals_are_padded() {
        let (lines, totals) = run(
            cfg(Some(1.0)),
            &[(10.0, 40), (11.0, 60), (11.5, 40), (14.2, 60)],
        );
        let short: Vec<_> = lines.iter().map(|l| (l.0, l.2, l.3)).collect();
        // 11.0 is still in [10, 11]; 14.2 skips two whole empty intervals.
        assert_eq!(
            short,
            [
                (10.0, 2, 100),
                (11.0, 1, 40),
                (12.0, 0, 0),
                (13.0, 0, 0),
                (14.0, 1, 60)
            ]
        );
        // Each interval's time counts once, the last one too.
        assert_eq!(totals.time, 5.0);
        assert_eq!(totals.bytes, 200.0);
    }

    #[test]
    fn load_average_and_its_decay() {
        let (lines, _) = run(cfg(Some(1.0)), &[(0.5, 100), (1.6, 0), (3.7, 0)]);
        let k = 1.0 - (-1.0f64 / 60.0).exp();
        assert_eq!(lines[0].4, 800.0);
        let second = 800.0 + (0.0 - 800.0) * k;
        assert_eq!(lines[1].4, second);
        assert_eq!(lines[2].4, second - second * k);
    }

    #[test]
    fn whole_capture_interval() {
        let (lines, totals) = run(cfg(None), &[(1.0, 10), (2.0, 10), (4.0, 10)]);
        assert_eq!(lines.len(), 1);
        assert_eq!((lines[0].0, lines[0].1, lines[0].2), (1.0, 3.0, 3));
        assert_eq!(totals.time, 3.0);
        // One packet: a zero-length interval with no rate, not inf/nan.
        let (lines, _) = run(cfg(None), &[(1.0, 10)]);
        assert_eq!((lines[0].1, lines[0].4), (0.0, 0.0));
        assert!(run(cfg(None), &[]).0.is_empty());
    }

    #[test]
    fn live_intervals_on_the_clock() {
        let mut lines = Vec::new();
        let mut sink = |l: &Line| lines.push((l.begin, l.dt, l.counters.packets));
        let mut s = IntervalStats::new(cfg(Some(1.0)));
        // Started 0.25 s into the grid's first interval: it is short.
        s.start(100.25);
        let mut one = StatCounters::default();
        one.add(10, 0);
        s.add_counters(&one);
        s.close_at(101.0, true, &mut sink);
        // A whole one, idle; then SIGUSR1 half-way, and the rest of that
        // interval up to the grid.
        s.close_at(102.0, false, &mut sink);
        s.add_counters(&one);
        s.close_at(102.5, true, &mut sink);
        s.add_counters(&one);
        s.close_at(103.0, true, &mut sink);
        // Ending right on a boundary prints nothing more.
        let totals = s.finish_at(103.0, &mut sink);
        assert_eq!(
            lines,
            [
                (100.25, 0.75, 1),
                (101.0, 1.0, 0),
                (102.0, 0.5, 1),
                (102.5, 0.5, 1)
            ]
        );
        assert_eq!((totals.time, totals.bytes), (2.75, 30.0));
        // Ending inside an interval prints it, over the whole interval.
        let mut last = None;
        s.add_counters(&one);
        s.finish_at(103.4, &mut |l: &Line| last = Some((l.begin, l.dt)));
        assert_eq!(last, Some((103.0, 1.0)));
    }

    #[test]
    fn whole_run_after_a_sigusr1_line() {
        let mut lines = Vec::new();
        let mut sink = |l: &Line| lines.push((l.begin, l.dt, l.counters.packets));
        let mut s = IntervalStats::new(cfg(None));
        s.packet(1.0, 10, 0, false, &mut sink);
        s.packet(3.0, 10, 0, true, &mut sink);
        s.packet(4.0, 10, 0, false, &mut sink);
        let totals = s.finish(&mut sink);
        assert_eq!(lines, [(1.0, 2.0, 1), (3.0, 1.0, 2)]);
        assert_eq!(totals.time, 3.0);
    }

    #[test]
    fn capture_seconds_cut_and_pad() {
        let mut c = cfg(Some(0.5));
        c.capture_secs = Some(2.0);
        let (lines, _) = run(c, &[(0.0, 1), (0.9, 1), (2.5, 1)]);
        let begins: Vec<f64> = lines.iter().map(|l| l.0).collect();
        assert_eq!(begins, [0.0, 0.5, 1.0, 1.5]);
        assert_eq!(lines.iter().map(|l| l.2).sum::<u64>(), 2);
    }

    #[test]
    fn smart_bandwidth_carries_the_excess() {
        let c = StatConfig {
            mode: Mode::Bandwidth {
                bps: 800.0,
                smart: true,
            },
            ..cfg(Some(1.0))
        };
        // 200 bytes in the first second: 1600 bps, 100 bytes over, carried
        // into the second, which then exceeds too (100 + 50 bytes).
        let (lines, totals) = run(c, &[(0.0, 200), (1.5, 50)]);
        assert!(lines.is_empty());
        assert_eq!(
            (totals.time_over, totals.time, totals.peak),
            (2.0, 2.0, 1600.0)
        );
        let c = StatConfig {
            mode: Mode::Bandwidth {
                bps: 800.0,
                smart: false,
            },
            ..c
        };
        assert_eq!(run(c, &[(0.0, 200), (1.5, 50)]).1.time_over, 1.0);
    }
}
