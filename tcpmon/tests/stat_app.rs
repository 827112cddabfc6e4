//! `stat` as a whole app, driven by a scripted source: the same view, run
//! loop and interval engine as live and replay, with the intervals and the
//! summary read back.

use std::collections::VecDeque;

use anyhow::Result;
use tcpmon::engine::Counters;
use tcpmon::engine::stat::{IntervalStats, Line, LineSink, Mode, StatConfig};
use tcpmon::run::{self, Input, Keys, Probe, Signals, Source, Stop};
use tcpmon::view::stat::view::{Lines, StatState, StatView};

/// Intervals as (begin, length, packets, bytes).
#[derive(Default)]
struct Collected(Vec<Interval>);

impl LineSink for Collected {
    fn line(&mut self, l: &Line) {
        self.0
            .push((l.begin, l.dt, l.counters.packets, l.counters.bytes));
    }
}

impl Lines for Collected {}

enum Step {
    /// A frame of `size` bytes at `secs`, of no particular class.
    Packet(f64, u32),
    /// SIGUSR1, as the run loop passes it to the source.
    Report,
    Stop(Stop),
}

/// Plays packets on packet time, as a capture does.
struct StatScript(VecDeque<Step>);

impl Probe for StatScript {
    fn counters(&self) -> Result<Counters> {
        Ok(Counters::default())
    }
    fn span_ns(&self) -> (i128, i128) {
        (0, 0)
    }
    fn name(&self) -> &'static str {
        "script"
    }
}

impl Source<StatState<Collected>> for StatScript {
    async fn next(&mut self, state: &mut StatState<Collected>) -> Result<Input> {
        loop {
            match self.0.pop_front() {
                Some(Step::Packet(secs, size)) => {
                    if state
                        .stats
                        .packet(secs, size, 0, state.print_now, &mut state.sink)
                    {
                        state.print_now = false;
                    }
                }
                Some(Step::Report) => self.report(state)?,
                Some(Step::Stop(why)) => {
                    self.finish(state, &mut Vec::new())?;
                    return Ok(Input::Stop { why, now_ns: 0 });
                }
                None => {
                    self.finish(state, &mut Vec::new())?;
                    return Ok(Input::Stop {
                        why: Stop::End,
                        now_ns: 0,
                    });
                }
            }
        }
    }

    fn finish(&mut self, state: &mut StatState<Collected>, _: &mut Vec<Input>) -> Result<()> {
        if state.totals.is_none() {
            state.totals = Some(state.stats.finish(&mut state.sink));
        }
        Ok(())
    }

    fn report(&mut self, state: &mut StatState<Collected>) -> Result<()> {
        state.print_now = true;
        Ok(())
    }

    fn now_ns(&self) -> u64 {
        0
    }
}

type Interval = (f64, f64, u64, u64);

/// Runs `steps` at a 1 s interval: the intervals printed, the summary, the
/// bytes counted in all, and why the run stopped.
fn run(mode: Mode, steps: Vec<Step>) -> (Vec<Interval>, String, f64, Stop) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let config = StatConfig {
            interval: Some(1.0),
            capture_secs: None,
            show_empty: true,
            mode,
        };
        let mut state = StatState::new(IntervalStats::new(config), Collected::default());
        let mut view = StatView::new(mode, Vec::new());
        let mut signals = Signals::with_report().unwrap();
        let opts = run::Options {
            keys: Keys::None,
            queries: None,
            deadline: None,
        };
        let mut source = StatScript(steps.into());
        let stop = run::run(&mut source, &mut view, &mut state, &mut signals, opts)
            .await
            .unwrap();
        let summary = String::from_utf8(view.into_out()).unwrap();
        let bytes = state.totals.unwrap().bytes;
        (state.sink.0, summary, bytes, stop)
    })
}

#[test]
fn intervals_close_on_packet_time_a_report_splits_one_and_the_end_closes_the_last() {
    let steps = vec![
        Step::Packet(100.0, 60),
        Step::Packet(100.5, 40),
        // Into the next interval.
        Step::Packet(101.2, 100),
        Step::Report,
        // Answered at this frame: the interval so far is a line of its own.
        Step::Packet(101.4, 10),
        // Two seconds on: an empty interval between.
        Step::Packet(103.5, 1),
    ];
    let (lines, summary, _, stop) = run(Mode::Intervals, steps);
    assert_eq!(stop, Stop::End);
    let counts: Vec<(u64, u64)> = lines.iter().map(|l| (l.2, l.3)).collect();
    assert_eq!(
        counts,
        [(2, 100), (1, 100), (1, 10), (0, 0), (1, 1)],
        "{lines:?}"
    );
    assert_eq!(lines[0].0, 100.0);
    // SIGUSR1 in a replay is answered at the next frame, on packet time:
    // the split interval ends there, and the next ones start from it.
    assert!((lines[1].1 - 0.4).abs() < 1e-9, "{lines:?}");
    assert!((lines[2].0 - 101.4).abs() < 1e-9, "{lines:?}");
    assert!(summary.is_empty());
}

#[test]
fn a_stop_closes_the_interval_so_far_and_writes_the_summary() {
    let steps = vec![
        Step::Packet(100.0, 1000),
        Step::Packet(100.5, 1000),
        Step::Stop(Stop::Signal),
        Step::Packet(200.0, 1),
    ];
    let (lines, summary, bytes, stop) = run(Mode::Accounting, steps);
    assert_eq!(stop, Stop::Signal);
    assert!(lines.is_empty(), "-a prints no intervals: {lines:?}");
    assert_eq!(bytes, 2000.0, "nothing after the stop counts");
    assert!(!summary.is_empty(), "-a prints its summary");
}
