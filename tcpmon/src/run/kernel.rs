//! The kernel as a source: events from the ring buffer into the table as
//! they come, and on each clock tick the flow map merged in.

use std::collections::VecDeque;
use std::time::Duration;

use anyhow::Result;
use tcpmon_common::{Event, FlowKey, FlowRecord};

use super::{Input, Source};
use crate::backend::ebpf::{EbpfBackend, monotonic_now_ns};
use crate::engine::FlowTable;

pub struct Kernel<'b> {
    backend: &'b mut EbpfBackend,
    tick: tokio::time::Interval,
    /// Hand the kernel's events to the view as well.
    events: bool,
    read: Vec<Event>,
    pending: VecDeque<Input>,
    snapshot: Vec<(FlowKey, FlowRecord)>,
}

impl<'b> Kernel<'b> {
    /// Ticks every `step`, on the clock; the first at once.
    pub fn new(backend: &'b mut EbpfBackend, step: Duration, events: bool) -> Self {
        let mut tick = tokio::time::interval(step);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Kernel {
            backend,
            tick,
            events,
            read: Vec::new(),
            pending: VecDeque::new(),
            snapshot: Vec::new(),
        }
    }

    pub fn backend(&self) -> &EbpfBackend {
        self.backend
    }

    fn take_events(&mut self, table: &mut FlowTable, mut owe: impl FnMut(Input)) {
        for ev in self.read.drain(..) {
            table.on_event(&ev);
            if self.events {
                owe(Input::Event(ev));
            }
        }
    }
}

/// The one place the kernel's flows are read into the table: every flow in
/// the map, for now (to become "only the flows that changed").
fn read_flows(
    backend: &EbpfBackend,
    table: &mut FlowTable,
    snapshot: &mut Vec<(FlowKey, FlowRecord)>,
) -> Result<()> {
    backend.snapshot(snapshot)?;
    for (key, rec) in snapshot.drain(..) {
        table.merge(key, rec);
    }
    Ok(())
}

impl Source for Kernel<'_> {
    async fn next(&mut self, table: &mut FlowTable) -> Result<Input> {
        loop {
            if let Some(input) = self.pending.pop_front() {
                return Ok(input);
            }
            tokio::select! {
                r = self.backend.read_events(&mut self.read) => {
                    r?;
                    let mut owed = std::mem::take(&mut self.pending);
                    self.take_events(table, |i| owed.push_back(i));
                    self.pending = owed;
                }
                _ = self.tick.tick() => {
                    read_flows(self.backend, table, &mut self.snapshot)?;
                    return Ok(Input::Tick { now_ns: monotonic_now_ns() });
                }
            }
        }
    }

    fn finish(&mut self, table: &mut FlowTable, owed: &mut Vec<Input>) -> Result<()> {
        owed.extend(self.pending.drain(..));
        // Events still queued and the map's final state complete the
        // picture.
        while self.backend.try_read_events(&mut self.read) > 0 {
            self.take_events(table, |i| owed.push(i));
        }
        read_flows(self.backend, table, &mut self.snapshot)
    }

    fn now_ns(&self) -> u64 {
        monotonic_now_ns()
    }
}
