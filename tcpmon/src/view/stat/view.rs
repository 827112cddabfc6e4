//! The `stat` view as a consumer of the run loop's inputs, the same for
//! live and replay. Intervals close inside the engine as the source feeds
//! it (on packet time, or as the kernel's slots are read on the clock) and
//! go straight to the sink, so the view's part is the end: the lines
//! written out, then the `-a`/`-b`/`-B` summary.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result};

use super::{Format, Outputs, write_accounting, write_bandwidth};
use crate::cli::stat::StatArgs;
use crate::engine::stat::{IntervalStats, Line, LineSink, Mode, Totals};
use crate::run::{Control, Input, Probe, Stop, View};

/// Where intervals go: the `-o` format on standard output, or a test's
/// list.
pub trait Lines: LineSink {
    /// Writes out what is buffered.
    fn flush(&mut self) {}
    /// Standard output is gone: the run ends.
    fn broken(&self) -> bool {
        false
    }
}

/// The engine state a `stat` source feeds and the view ends.
pub struct StatState<K: Lines> {
    pub stats: IntervalStats,
    pub sink: K,
    /// SIGUSR1 during a replay, answered at the next frame.
    pub print_now: bool,
    /// Set by the source once it closed the run's last interval.
    pub totals: Option<Totals>,
}

impl<K: Lines> StatState<K> {
    pub fn new(stats: IntervalStats, sink: K) -> Self {
        StatState {
            stats,
            sink,
            print_now: false,
            totals: None,
        }
    }
}

/// Prints interval lines through the `-o` format.
pub struct Printer {
    format: Format,
    relative: f64,
    flush_each: bool,
    out: Outputs,
    /// Raised on SIGINT/SIGTERM while the engine pads a long gap.
    interrupted: Option<Arc<AtomicBool>>,
}

impl Printer {
    /// `flush_each`: write each line out as it comes (live, `-F`).
    pub fn new(args: &StatArgs, flush_each: bool, interrupted: Option<Arc<AtomicBool>>) -> Self {
        Printer {
            format: Format::parse(&args.format),
            relative: args.relative,
            flush_each: flush_each || args.flush,
            out: Outputs::default(),
            interrupted,
        }
    }
}

impl LineSink for Printer {
    fn line(&mut self, line: &Line) {
        self.format.render(line, self.relative, &mut self.out);
        if self.flush_each {
            self.out.flush();
        } else {
            self.out.flush_if_full();
        }
    }

    fn stopped(&self) -> bool {
        self.interrupted
            .as_ref()
            .is_some_and(|f| f.load(Ordering::Relaxed))
            || self.out.broken()
    }
}

impl Lines for Printer {
    fn flush(&mut self) {
        self.out.flush();
    }

    fn broken(&self) -> bool {
        self.out.broken()
    }
}

pub struct StatView<W: Write> {
    mode: Mode,
    out: W,
}

impl<W: Write> StatView<W> {
    /// `out`: where the summary goes.
    pub fn new(mode: Mode, out: W) -> Self {
        StatView { mode, out }
    }

    /// Where the summary went, for tests to read back.
    pub fn into_out(self) -> W {
        self.out
    }

    /// After the last interval: the `-a`/`-b`/`-B` summary.
    fn summary(&mut self, totals: &Totals) -> Result<()> {
        match self.mode {
            Mode::Intervals => Ok(()),
            Mode::Accounting => write_accounting(&mut self.out, totals),
            Mode::Bandwidth { bps, smart } => write_bandwidth(&mut self.out, totals, bps, smart),
        }
        .and_then(|()| self.out.flush())
        .context("cannot write to standard output")
    }
}

impl<W: Write, K: Lines> View<StatState<K>> for StatView<W> {
    fn on(&mut self, input: Input, state: &mut StatState<K>, _: &dyn Probe) -> Result<Control> {
        match input {
            // Standard output went away live: nothing more to say.
            Input::Stop {
                why: Stop::Invalid, ..
            } => Ok(Control::Quit),
            Input::Stop { .. } => {
                state.sink.flush();
                if let Some(totals) = state.totals {
                    self.summary(&totals)?;
                }
                Ok(Control::Quit)
            }
            _ => Ok(Control::Continue),
        }
    }
}
