//! A capture as a source: frames into the table on packet time, ticks at
//! each step of it, and with `--realtime` each tick held back until it is
//! due on the wall clock (here, outside the replay's frame loop, so keys
//! and signals are heard while waiting).

use std::collections::VecDeque;
use std::io::Read;

use anyhow::Result;

use super::{Input, Probe, Source, Stop};
use crate::backend::pcap::{Replay, Replayer, Step};
use crate::engine::{Counters, FlowTable};

/// Frames read between chances for keys and signals to be heard.
const BUDGET: usize = 4096;

pub struct Capture<'a, R: Read> {
    replayer: Replayer<'a, R>,
    /// Hand the update rule's events to the view (only `peek` wants them).
    events: bool,
    pending: VecDeque<Input>,
    /// `--realtime`: wall clock and packet time at the first tick.
    pace: Option<Option<(tokio::time::Instant, u64)>>,
    ended: bool,
}

impl<'a, R: Read> Capture<'a, R> {
    /// `realtime`: ticks come no faster than packet time went.
    pub fn new(replayer: Replayer<'a, R>, events: bool, realtime: bool) -> Self {
        Capture {
            replayer,
            events,
            pending: VecDeque::new(),
            pace: realtime.then_some(None),
            ended: false,
        }
    }

    /// What the replay read, and what stopped it.
    pub fn into_replay(self) -> Replay {
        self.replayer.into_replay()
    }

    /// Waits until packet time `now_ns` is due on the wall clock.
    /// Cancel-safe: the origin is kept, the tick stays queued.
    async fn pace(&mut self, now_ns: u64) {
        if let Some(origin) = &mut self.pace {
            let (wall0, pkt0) = *origin.get_or_insert((tokio::time::Instant::now(), now_ns));
            let due = wall0 + std::time::Duration::from_nanos(now_ns.saturating_sub(pkt0));
            tokio::time::sleep_until(due).await;
        }
    }
}

impl<R: Read> Probe for Capture<'_, R> {
    fn counters(&self) -> Result<Counters> {
        Ok(self.replayer.stats().counters)
    }

    fn span_ns(&self) -> (i128, i128) {
        let s = self.replayer.stats();
        (s.first_ts_ns.unwrap_or(0) as i128, s.last_ts_ns as i128)
    }

    fn name(&self) -> &'static str {
        "capture"
    }
}

impl<R: Read> Source for Capture<'_, R> {
    async fn next(&mut self, table: &mut FlowTable) -> Result<Input> {
        loop {
            if let Some(&Input::Tick { now_ns }) = self.pending.front() {
                self.pace(now_ns).await;
            }
            if let Some(input) = self.pending.pop_front() {
                return Ok(input);
            }
            if self.ended {
                // The run loop asks no more after a stop; be harmless if
                // something does.
                return Ok(self.stop(Stop::End));
            }
            let (events, pending) = (self.events, &mut self.pending);
            let step = self.replayer.step(table, BUDGET, |ev| {
                if events {
                    pending.push_back(Input::Event(*ev));
                }
            });
            match step {
                Step::Tick(now_ns) => self.pending.push_back(Input::Tick { now_ns }),
                // A long stretch without ticks (or none asked for): let
                // the run loop hear keys and signals.
                Step::Paused if self.pending.is_empty() => tokio::task::yield_now().await,
                Step::Paused => {}
                Step::End => {
                    self.ended = true;
                    let why = match self.replayer.filter_failed() {
                        true => Stop::Invalid,
                        false => Stop::End,
                    };
                    let stop = self.stop(why);
                    self.pending.push_back(stop);
                }
            }
        }
    }

    fn finish(&mut self, table: &mut FlowTable, owed: &mut Vec<Input>) -> Result<()> {
        // Ticks already due ran before the stop in a replay's own loop;
        // they still do, unpaced.
        owed.extend(self.pending.drain(..));
        let events = self.events;
        self.replayer.finish(table, |ev| {
            if events {
                owed.push(Input::Event(*ev));
            }
        });
        self.ended = true;
        Ok(())
    }

    fn now_ns(&self) -> u64 {
        self.replayer.stats().last_ts_ns
    }
}

impl<R: Read> Capture<'_, R> {
    fn stop(&self, why: Stop) -> Input {
        Input::Stop {
            why,
            now_ns: self.now_ns(),
        }
    }
}
