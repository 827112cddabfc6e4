//! A scripted source for whole-app tests: segments, kernel records and
//! events as a backend would bring them, ticks, keys and the end, in the
//! order written.

use std::collections::VecDeque;

use anyhow::Result;
use ratatui::crossterm::event::{Event as TermEvent, KeyCode, KeyEvent};
use tcpmon_common::{Event, FlowKey, FlowRecord, Segment};

use super::{Input, Probe, Source, Stop};
use crate::engine::{Counters, FlowTable};

/// One line of a script.
#[derive(Clone, Debug)]
pub enum Line {
    /// A segment through the shared update rule (the capture's path).
    Segment(FlowKey, Segment),
    /// A record read from the kernel's map (the live path).
    Update(FlowKey, FlowRecord),
    /// An event the kernel emitted.
    Event(Event),
    Tick(u64),
    Key(TermEvent),
    Stop(Stop),
}

/// Plays its lines, then ends as a capture does.
pub struct Script {
    lines: VecDeque<Line>,
    pending: VecDeque<Input>,
    /// The time of the last tick, or of the last segment.
    now_ns: u64,
    /// What the backend's counters say.
    pub counters: Counters,
    /// What views asked the backend to forget (`Probe::forget`).
    pub forgotten: std::cell::RefCell<Vec<FlowKey>>,
}

impl Script {
    pub fn new(lines: impl IntoIterator<Item = Line>) -> Script {
        Script {
            lines: lines.into_iter().collect(),
            pending: VecDeque::new(),
            now_ns: 0,
            counters: [0; tcpmon_common::Counter::COUNT as usize],
            forgotten: Default::default(),
        }
    }

    /// A key press, as the terminal reports it.
    pub fn key(c: char) -> Line {
        Line::Key(TermEvent::Key(KeyEvent::from(KeyCode::Char(c))))
    }
}

impl Probe for Script {
    fn forget(&self, key: &FlowKey, _rec: &FlowRecord) {
        self.forgotten.borrow_mut().push(*key);
    }

    fn counters(&self) -> Result<Counters> {
        Ok(self.counters)
    }

    /// Packet time, as a capture's: from 0 to the last tick.
    fn span_ns(&self) -> (i128, i128) {
        (0, self.now_ns as i128)
    }

    fn name(&self) -> &'static str {
        "script"
    }
}

impl Source for Script {
    async fn next(&mut self, table: &mut FlowTable) -> Result<Input> {
        loop {
            if let Some(input) = self.pending.pop_front() {
                return Ok(input);
            }
            let Some(line) = self.lines.pop_front() else {
                return Ok(Input::Stop {
                    why: Stop::End,
                    now_ns: self.now_ns,
                });
            };
            match line {
                Line::Segment(key, seg) => {
                    self.now_ns = self.now_ns.max(seg.ts_ns);
                    let pending = &mut self.pending;
                    table.apply(key, &seg, |ev| pending.push_back(Input::Event(*ev)));
                }
                Line::Update(key, rec) => table.merge(key, rec),
                Line::Event(ev) => {
                    table.on_event(&ev);
                    return Ok(Input::Event(ev));
                }
                Line::Tick(now_ns) => {
                    self.now_ns = now_ns;
                    return Ok(Input::Tick { now_ns });
                }
                Line::Key(k) => return Ok(Input::Key(k)),
                Line::Stop(why) => {
                    return Ok(Input::Stop {
                        why,
                        now_ns: self.now_ns,
                    });
                }
            }
        }
    }

    fn finish(&mut self, _table: &mut FlowTable, owed: &mut Vec<Input>) -> Result<()> {
        owed.extend(self.pending.drain(..));
        self.lines.clear();
        Ok(())
    }

    fn now_ns(&self) -> u64 {
        self.now_ns
    }
}
