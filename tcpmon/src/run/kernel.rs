//! The kernel as a source: events from the ring buffer as they come, clock
//! ticks, and for a view that keeps a table (`top`), the events and on each
//! tick the flow map merged into it.

use std::collections::VecDeque;
use std::time::Duration;

use anyhow::Result;
use tcpmon_common::{Event, FlowKey, FlowRecord};

use super::{Input, Probe, Source};
use crate::backend::ebpf::{EbpfBackend, monotonic_now_ns};
use crate::engine::{Counters, FlowTable};

pub struct Kernel<'b> {
    backend: &'b mut EbpfBackend,
    tick: tokio::time::Interval,
    /// Keep the table: events and the flow map go into it.
    flows: bool,
    /// Hand the kernel's events to the view.
    events: bool,
    read: Vec<Event>,
    pending: VecDeque<Input>,
    snapshot: Vec<(FlowKey, FlowRecord)>,
    /// A tick went to the view: ended connections' records are to be
    /// deleted from the kernel's maps (when `flows` is off; reading them
    /// does it otherwise).
    reap_owed: bool,
    /// Records views are done with (`Probe::forget`), to delete.
    forget: std::cell::RefCell<Vec<(FlowKey, FlowRecord)>>,
    /// The last read was large: trim the heap once the view is done with it.
    trim_owed: bool,
    started_unix_ns: i128,
}

impl<'b> Kernel<'b> {
    /// Ticks every `step`, on the clock; the first at once. `flows`: keep
    /// the table; `events`: hand events to the view.
    pub fn new(backend: &'b mut EbpfBackend, step: Duration, flows: bool, events: bool) -> Self {
        let mut tick = tokio::time::interval(step);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Kernel {
            backend,
            tick,
            flows,
            events,
            read: Vec::new(),
            pending: VecDeque::new(),
            snapshot: Vec::new(),
            reap_owed: false,
            forget: Default::default(),
            trim_owed: false,
            started_unix_ns: now_unix_ns(),
        }
    }

    fn take_events(&mut self, table: &mut FlowTable, mut owe: impl FnMut(Input)) {
        for ev in self.read.drain(..) {
            if self.flows {
                table.on_event(&ev);
            }
            if self.events {
                owe(Input::Event(ev));
            }
        }
    }
}

/// The one place the kernel's flows are read into the table: the records
/// that changed since the last read (every record on the first one, or
/// after the kernel had no room to report a change). The read also
/// deletes from the kernel's maps what ended and lingered long enough.
/// Returns whether the read was a large one, whose buffers the next tick
/// hands back to the system.
fn read_flows(
    backend: &mut EbpfBackend,
    table: &mut FlowTable,
    snapshot: &mut Vec<(FlowKey, FlowRecord)>,
) -> Result<bool> {
    backend.changed(snapshot)?;
    // Before the records read: a guessed record on a key that vanished is
    // the rest of the evicted connection.
    let now_ns = crate::backend::ebpf::monotonic_now_ns();
    for key in backend.take_vanished() {
        table.vanished(key, now_ns);
    }
    for (key, rec) in snapshot.drain(..) {
        table.merge(key, rec);
    }
    // A full read (the first, or after the kernel had no room to report
    // changes) holds every record once: 180 MB at a million flows, which
    // the incremental reads after it never need again.
    let large = snapshot.capacity() > KEEP_SNAPSHOT;
    if large {
        *snapshot = Vec::new();
    }
    Ok(large)
}

/// Gives the memory freed after a large read (a flood's records, the
/// table's change lists) back to the system: glibc keeps freed heap memory
/// otherwise, and the process would stay at its peak.
fn trim_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free memory of the allocator.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Records the read buffer keeps room for between reads.
const KEEP_SNAPSHOT: usize = 65_536;

impl Probe for Kernel<'_> {
    /// A failed read (or a flow the LRU evicted) is no record.
    fn lookup(&self, key: &FlowKey) -> Option<FlowRecord> {
        self.backend.lookup(key).ok().flatten()
    }

    fn forget(&self, key: &FlowKey, rec: &FlowRecord) {
        self.forget.borrow_mut().push((*key, *rec));
    }

    fn counters(&self) -> Result<Counters> {
        self.backend.counters()
    }

    fn flows_evicted(&self) -> Result<u64> {
        self.backend.flows_evicted()
    }

    fn span_ns(&self) -> (i128, i128) {
        (self.started_unix_ns, now_unix_ns())
    }

    fn name(&self) -> &'static str {
        "kernel"
    }
}

impl Source for Kernel<'_> {
    async fn next(&mut self, table: &mut FlowTable) -> Result<Input> {
        if std::mem::take(&mut self.reap_owed) {
            self.backend.reap()?;
        }
        if std::mem::take(&mut self.trim_owed) {
            trim_heap();
        }
        for (key, rec) in self.forget.get_mut().drain(..) {
            self.backend.drop_ended(&key, &rec)?;
        }
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
                    match self.flows {
                        true => {
                            self.trim_owed = read_flows(self.backend, table, &mut self.snapshot)?;
                        }
                        // Without reads, ended connections still leave the
                        // kernel's maps after their linger: once the view
                        // had the tick (and looked up what was due).
                        false => self.reap_owed = true,
                    }
                    return Ok(Input::Tick { now_ns: monotonic_now_ns() });
                }
            }
        }
    }

    fn finish(&mut self, table: &mut FlowTable, owed: &mut Vec<Input>) -> Result<()> {
        // Events still queued and the map's final state complete the
        // picture.
        self.catch_up(table, owed)?;
        match self.flows {
            true => read_flows(self.backend, table, &mut self.snapshot).map(drop),
            false => Ok(()),
        }
    }

    fn catch_up(&mut self, table: &mut FlowTable, owed: &mut Vec<Input>) -> Result<()> {
        owed.extend(self.pending.drain(..));
        while self.backend.try_read_events(&mut self.read) > 0 {
            self.take_events(table, |i| owed.push(i));
        }
        Ok(())
    }

    fn now_ns(&self) -> u64 {
        monotonic_now_ns()
    }
}

fn now_unix_ns() -> i128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0)
}
