//! The kernel's interval counters as a `stat` source, on the clock.
//!
//! The kernel counts every packet into the slot of its interval (see
//! tcpmon-ebpf's stat.rs); interval 0 begins when tcpmon starts loading.
//! A few clock ticks after each interval ends, its slot is read (summed
//! over CPUs) and the interval closed in the same `IntervalStats` as a
//! replay's, so a line comes on time whether or not packets arrive.
//! SIGUSR1 closes the interval so far at once; what follows it up to the
//! grid's next boundary is the next line (the grid stays). A stop closes
//! the interval so far, as a replay's last.

use std::time::Duration;

use anyhow::Result;
use tcpmon_common::StatCounters;

use super::{Input, Probe, Source, Stop};
use crate::backend::ebpf::{EbpfBackend, StatLoad, monotonic_now_ns, monotonic_to_unix_offset_ns};
use crate::engine::Counters;
use crate::view::stat::view::{Lines, StatState};

pub struct StatKernel<'b> {
    backend: &'b EbpfBackend,
    /// The kernel's intervals on CLOCK_MONOTONIC.
    grid: StatLoad,
    /// Unix time = CLOCK_MONOTONIC + this.
    offset_ns: i64,
    /// The first interval not yet read whole.
    next: u64,
    /// What partial reads (SIGUSR1) already took from interval `next`.
    taken: StatCounters,
    /// The interval being counted did not begin on the grid (the first, or
    /// the rest after a SIGUSR1 line): it closes over its real length.
    off_grid: bool,
    /// How long after an interval's end its slot is read.
    grace: u64,
    /// `-s`: when the run ends, on CLOCK_MONOTONIC.
    end: Option<u64>,
    started: u64,
    ended: bool,
}

impl<'b> StatKernel<'b> {
    /// Starts the statistics' first interval now; `capture_secs` is `-s`.
    pub fn new<K: Lines>(
        backend: &'b EbpfBackend,
        grid: StatLoad,
        capture_secs: Option<f64>,
        state: &mut StatState<K>,
    ) -> Self {
        let started = monotonic_now_ns();
        let k = StatKernel {
            backend,
            grid,
            offset_ns: monotonic_to_unix_offset_ns(),
            next: grid.epoch(started),
            taken: StatCounters::default(),
            off_grid: true,
            grace: grace_ns(),
            end: capture_secs.map(|s| started + (s * 1e9) as u64),
            started,
            ended: false,
        };
        state.stats.start(k.secs(started));
        k
    }

    fn secs(&self, mono_ns: u64) -> f64 {
        (mono_ns as i64 + self.offset_ns) as f64 / 1e9
    }

    /// Interval `epoch` so far; warns when a CPU's slot had been reused
    /// before it was read.
    fn read(&self, epoch: u64) -> Result<StatCounters> {
        let r = self.backend.stat_interval(epoch)?;
        if r.overwritten > 0 {
            eprintln!(
                "tcpmon: {} CPUs had counted into an interval's slot again before tcpmon read it \
                 (it fell {} intervals behind): those packets are missing",
                r.overwritten,
                tcpmon_common::stat::STAT_SLOTS
            );
        }
        Ok(r.counters)
    }

    /// Reads and closes every interval that ended by `mono_ns`.
    fn advance<K: Lines>(&mut self, mono_ns: u64, state: &mut StatState<K>) -> Result<()> {
        while self.grid.start(self.next + 1) <= mono_ns {
            let c = self.read(self.next)?.since(&self.taken);
            state.stats.add_counters(&c);
            self.taken = StatCounters::default();
            self.next += 1;
            // `-1` (no interval): only folded in, never closed on the grid.
            if state.stats.interval().is_some() {
                let end = self.secs(self.grid.start(self.next));
                state.stats.close_at(end, self.off_grid, &mut state.sink);
                self.off_grid = false;
            }
        }
        Ok(())
    }

    /// Takes what the current interval has counted so far (after
    /// `advance` to the same time).
    fn take_partial<K: Lines>(&mut self, state: &mut StatState<K>) -> Result<()> {
        let so_far = self.read(self.next)?;
        state.stats.add_counters(&so_far.since(&self.taken));
        self.taken = so_far;
        Ok(())
    }

    /// Closes the run at `stop_at`: the interval so far is its last.
    fn end_at<K: Lines>(&mut self, stop_at: u64, state: &mut StatState<K>) -> Result<()> {
        if self.ended {
            return Ok(());
        }
        self.ended = true;
        self.advance(stop_at, state)?;
        self.take_partial(state)?;
        let t = self.secs(stop_at);
        state.totals = Some(state.stats.finish_at(t, &mut state.sink));
        Ok(())
    }
}

impl Probe for StatKernel<'_> {
    fn counters(&self) -> Result<Counters> {
        self.backend.counters()
    }

    fn span_ns(&self) -> (i128, i128) {
        let unix = |mono: u64| mono as i128 + self.offset_ns as i128;
        (unix(self.started), unix(monotonic_now_ns()))
    }

    fn name(&self) -> &'static str {
        "kernel"
    }
}

impl<K: Lines> Source<StatState<K>> for StatKernel<'_> {
    async fn next(&mut self, state: &mut StatState<K>) -> Result<Input> {
        loop {
            if state.sink.broken() {
                return Ok(Input::Stop {
                    why: Stop::Invalid,
                    now_ns: monotonic_now_ns(),
                });
            }
            // Read an interval a few ticks after it ends: the kernel stamps
            // packets with the coarse clock, which may lag by that much.
            let mut wake = self.grid.start(self.next + 1) + self.grace;
            if let Some(end) = self.end {
                wake = wake.min(end + self.grace);
            }
            let sleep = Duration::from_nanos(wake.saturating_sub(monotonic_now_ns()));
            tokio::time::sleep(sleep).await;
            let now = monotonic_now_ns();
            if let Some(end) = self.end.filter(|&e| now >= e + self.grace) {
                self.end_at(end, state)?;
                return Ok(Input::Stop {
                    why: Stop::End,
                    now_ns: end,
                });
            }
            self.advance(now.saturating_sub(self.grace), state)?;
        }
    }

    fn finish(&mut self, state: &mut StatState<K>, _owed: &mut Vec<Input>) -> Result<()> {
        self.end_at(monotonic_now_ns(), state)
    }

    /// At once, on the clock: the interval so far is a line, and the rest
    /// of it up to the grid's next boundary the next.
    fn report(&mut self, state: &mut StatState<K>) -> Result<()> {
        let now = monotonic_now_ns();
        self.advance(now, state)?;
        self.take_partial(state)?;
        let t = self.secs(now);
        state.stats.close_at(t, true, &mut state.sink);
        self.off_grid = true;
        Ok(())
    }

    fn now_ns(&self) -> u64 {
        monotonic_now_ns()
    }
}

/// How long after an interval's end its slot is read: the coarse clock's
/// tick (its resolution) three times over, plus a margin, so packets it
/// stamped late and programs still running on other CPUs are counted.
fn grace_ns() -> u64 {
    let mut res = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: writes one timespec on our stack.
    let tick = match unsafe { libc::clock_getres(libc::CLOCK_MONOTONIC_COARSE, &mut res) } {
        0 => res.tv_sec as u64 * 1_000_000_000 + res.tv_nsec as u64,
        // The longest tick Linux has (HZ=100).
        _ => 10_000_000,
    };
    3 * tick + 5_000_000
}
