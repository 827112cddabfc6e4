//! Replays a capture through the shared update rule on packet time, so the
//! same file always gives the same table.

use std::collections::{BTreeMap, VecDeque};
use std::io::Read;

use tcpmon_common::{Counter, Event, FlowKey, Segment};

use super::file::{CaptureError, CaptureReader};
use crate::engine::{Counters, FlowTable};
use crate::filter::{FilterError, Filters};
use crate::wire::{Skip, parse_frame, parse_unreachable};
use tcpmon_common::tcp::proto::{IPPROTO_ICMP, IPPROTO_ICMPV6};

/// What a replay read, including what it could not use.
#[derive(Debug, Default, Clone)]
pub struct ReplayStats {
    pub frames: u64,
    /// The same counters the kernel keeps.
    pub counters: Counters,
    /// Frames per link type tcpmon cannot parse (NFLOG, ...).
    pub unsupported: BTreeMap<u32, u64>,
    pub first_ts_ns: Option<u64>,
    pub last_ts_ns: u64,
}

/// The outcome of a replay: what was read, and the error that stopped it
/// early if any. Everything read before the error is in the table.
#[derive(Debug)]
pub struct Replay {
    pub stats: ReplayStats,
    pub error: Option<CaptureError>,
    /// The filter expression could not apply to a frame's link type; the
    /// replay stopped at that frame, as tcpdump would not start.
    pub filter_error: Option<FilterError>,
}

/// Parsed segments wait in line this long before they are applied: each
/// one's index slot is prefetched when it joins and its record halfway, so
/// each has the time of half this many packets to arrive from memory.
/// Order is kept.
const PIPELINE: usize = 8;

/// What [`Replayer::step`] stopped at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Packet time reached this multiple of the step: every frame before
    /// it is in the table, none after it.
    Tick(u64),
    /// The frame budget is spent; call again.
    Paused,
    /// The end of the capture, an error, or a filter that cannot apply:
    /// everything read is in the table.
    End,
}

/// A frame read past a tick boundary, kept until the ticks before it are
/// out (a copy: the reader reuses its buffer).
struct Held {
    linktype: u32,
    data: Vec<u8>,
    orig_len: u32,
    ts_ns: u64,
}

/// A replay taken a step at a time, so that whoever runs it (the run loop)
/// can wait, read keys or stop between ticks of packet time.
pub struct Replayer<'a, R: Read> {
    reader: &'a mut CaptureReader<R>,
    filter: Option<&'a mut Filters>,
    split_vlans: bool,
    step_ns: Option<u64>,
    stats: ReplayStats,
    queue: VecDeque<(FlowKey, Segment)>,
    next_tick: Option<u64>,
    ticks: VecDeque<u64>,
    held: Option<Held>,
    done: bool,
    error: Option<CaptureError>,
    filter_error: Option<FilterError>,
}

impl<'a, R: Read> Replayer<'a, R> {
    /// With `step_ns`, [`step`](Self::step) stops at each multiple of it of
    /// packet time. With `split_vlans` the VLAN id is part of the flow key.
    /// Frames `filter` rejects are counted (`Counter::Filtered`) and go no
    /// further, as in the kernel.
    pub fn new(
        reader: &'a mut CaptureReader<R>,
        split_vlans: bool,
        filter: Option<&'a mut Filters>,
        step_ns: Option<u64>,
    ) -> Self {
        Replayer {
            reader,
            filter,
            split_vlans,
            step_ns,
            stats: ReplayStats::default(),
            queue: VecDeque::with_capacity(PIPELINE + 1),
            next_tick: None,
            ticks: VecDeque::new(),
            held: None,
            done: false,
            error: None,
            filter_error: None,
        }
    }

    /// What was read so far.
    pub fn stats(&self) -> &ReplayStats {
        &self.stats
    }

    /// Reads up to `budget` frames into `table`, stopping early at a tick
    /// or the end. Events of the update rule go to `on_event`.
    pub fn step(
        &mut self,
        table: &mut FlowTable,
        mut budget: usize,
        mut on_event: impl FnMut(&Event),
    ) -> Step {
        loop {
            if let Some(t) = self.ticks.pop_front() {
                return Step::Tick(t);
            }
            if self.done {
                return Step::End;
            }
            if budget == 0 {
                return Step::Paused;
            }
            budget -= 1;
            if let Some(h) = self.held.take() {
                self.take(
                    table,
                    h.linktype,
                    &h.data,
                    h.orig_len,
                    h.ts_ns,
                    &mut on_event,
                );
                continue;
            }
            let frame = match self.reader.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => {
                    self.end(table, &mut on_event);
                    continue;
                }
                Err(e) => {
                    self.error = Some(e);
                    self.end(table, &mut on_event);
                    continue;
                }
            };
            self.stats.frames += 1;
            self.stats.first_ts_ns.get_or_insert(frame.ts_ns);
            self.stats.last_ts_ns = frame.ts_ns;
            if let Some(step) = self.step_ns.map(|s| s.max(1)) {
                let next = self
                    .next_tick
                    .get_or_insert((frame.ts_ns / step + 1) * step);
                if frame.ts_ns >= *next {
                    // The tick must see every frame before the boundary.
                    for (key, seg) in self.queue.drain(..) {
                        table.apply(key, &seg, &mut on_event);
                    }
                    // After a long silence a few ticks describe it fully
                    // (rates average at most a second); don't loop over a
                    // year of gap.
                    let due = (frame.ts_ns - *next) / step + 1;
                    let skipped = due - due.min(16);
                    for i in 0..due.min(16) {
                        self.ticks.push_back(*next + (skipped + i) * step);
                    }
                    *next += due * step;
                    self.held = Some(Held {
                        linktype: frame.linktype,
                        data: frame.data.to_vec(),
                        orig_len: frame.orig_len,
                        ts_ns: frame.ts_ns,
                    });
                    continue;
                }
            }
            let (linktype, orig_len, ts_ns) = (frame.linktype, frame.orig_len, frame.ts_ns);
            // The frame borrows the reader; the rest of `self` is free.
            let data = frame.data;
            Self::take_parts(
                &mut self.filter,
                &mut self.stats,
                &mut self.queue,
                &mut self.filter_error,
                self.split_vlans,
                table,
                (linktype, data, orig_len, ts_ns),
                &mut on_event,
            );
            if self.filter_error.is_some() {
                self.end(table, &mut on_event);
            }
        }
    }

    /// The run stops early: the frame in hand and the queued segments go
    /// into the table, as they would have before the next frame.
    pub fn finish(&mut self, table: &mut FlowTable, mut on_event: impl FnMut(&Event)) {
        self.end(table, &mut on_event);
    }

    // Events go through `dyn` on the rare paths that can recurse (a held
    // frame that fails the filter ends the replay).
    fn end(&mut self, table: &mut FlowTable, on_event: &mut dyn FnMut(&Event)) {
        self.done = true;
        if let Some(h) = self.held.take() {
            self.take(table, h.linktype, &h.data, h.orig_len, h.ts_ns, on_event);
        }
        for (key, seg) in self.queue.drain(..) {
            table.apply(key, &seg, &mut *on_event);
        }
    }

    /// The filter expression could not apply to a frame: the replay
    /// stopped there.
    pub fn filter_failed(&self) -> bool {
        self.filter_error.is_some()
    }

    /// What the replay read, and what stopped it.
    pub fn into_replay(self) -> Replay {
        Replay {
            stats: self.stats,
            error: self.error,
            filter_error: self.filter_error,
        }
    }

    fn take(
        &mut self,
        table: &mut FlowTable,
        linktype: u32,
        data: &[u8],
        orig_len: u32,
        ts_ns: u64,
        on_event: &mut dyn FnMut(&Event),
    ) {
        Self::take_parts(
            &mut self.filter,
            &mut self.stats,
            &mut self.queue,
            &mut self.filter_error,
            self.split_vlans,
            table,
            (linktype, data, orig_len, ts_ns),
            on_event,
        );
        if self.filter_error.is_some() {
            self.end(table, on_event);
        }
    }

    /// Filters, parses and queues one frame (`linktype`, bytes, length on
    /// the wire, time).
    #[allow(clippy::too_many_arguments)]
    fn take_parts<F: FnMut(&Event) + ?Sized>(
        filter: &mut Option<&'a mut Filters>,
        stats: &mut ReplayStats,
        queue: &mut VecDeque<(FlowKey, Segment)>,
        filter_error: &mut Option<FilterError>,
        split_vlans: bool,
        table: &mut FlowTable,
        (linktype, data, orig_len, ts_ns): (u32, &[u8], u32, u64),
        on_event: &mut F,
    ) {
        if let Some(f) = filter.as_deref_mut() {
            match f.matches(linktype, data, orig_len) {
                Ok(true) => {}
                Ok(false) => {
                    stats.counters[Counter::Filtered as usize] += 1;
                    return;
                }
                Err(e) => {
                    *filter_error = Some(e);
                    return;
                }
            }
        }
        match parse_frame(linktype, data) {
            Ok(pkt) => {
                let (key, seg) = pkt.to_segment(ts_ns, 1, split_vlans);
                table.prefetch(&key);
                queue.push_back((key, seg));
                // Halfway along, the index slot has arrived: ask for the
                // record it points to.
                if let Some((k, _)) = queue.len().checked_sub(PIPELINE / 2 + 1).map(|i| &queue[i]) {
                    table.prefetch_record(k);
                }
                if queue.len() > PIPELINE {
                    let (key, seg) = queue.pop_front().expect("queue is not empty");
                    table.apply(key, &seg, &mut *on_event);
                }
                stats.counters[Counter::Tcp as usize] += 1;
            }
            Err(Skip::UnsupportedLink(lt)) => *stats.unsupported.entry(lt).or_default() += 1,
            Err(skip) => {
                if let Some(c) = skip.counter() {
                    stats.counters[c as usize] += 1;
                }
                if let Skip::NotTcp(IPPROTO_ICMP | IPPROTO_ICMPV6) = skip
                    && let Some(q) = parse_unreachable(linktype, data)
                {
                    // The quoted handshake's segments come first.
                    for (key, seg) in queue.drain(..) {
                        table.apply(key, &seg, &mut *on_event);
                    }
                    table.unreachable(q.key(), q.seq, &mut *on_event);
                }
            }
        }
    }
}
