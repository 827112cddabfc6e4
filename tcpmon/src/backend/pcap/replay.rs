//! Replays a capture through the shared update rule on packet time, so the
//! same file always gives the same table.

use std::collections::{BTreeMap, VecDeque};
use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};

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

/// Calls `sample` with each multiple of `step_ns` of packet time, before the
/// first frame past it is applied: how views sample rates, pace a real-time
/// replay, or expire and forget what they no longer need, on packet time.
pub struct Ticker<'a> {
    pub step_ns: u64,
    pub sample: &'a mut dyn FnMut(u64, &mut FlowTable),
}

/// Reads frames until the end of the capture, an error, or `stop`. With
/// `split_vlans` the VLAN id is part of the flow key. Frames `filter`
/// rejects are counted (`Counter::Filtered`) and go no further, as in the
/// kernel.
#[allow(clippy::too_many_arguments)]
pub fn replay<R: Read>(
    reader: &mut CaptureReader<R>,
    table: &mut FlowTable,
    stop: &AtomicBool,
    split_vlans: bool,
    mut filter: Option<&mut Filters>,
    mut on_event: impl FnMut(&Event),
    mut ticker: Option<Ticker>,
) -> Replay {
    let mut stats = ReplayStats::default();
    let mut queue: VecDeque<(FlowKey, Segment)> = VecDeque::with_capacity(PIPELINE + 1);
    let mut next_tick = None;
    let mut filter_error = None;
    let error = loop {
        if stop.load(Ordering::Relaxed) {
            break None;
        }
        let frame = match reader.next_frame() {
            Ok(Some(f)) => f,
            Ok(None) => break None,
            Err(e) => break Some(e),
        };
        stats.frames += 1;
        stats.first_ts_ns.get_or_insert(frame.ts_ns);
        stats.last_ts_ns = frame.ts_ns;
        if let Some(t) = ticker.as_mut() {
            let step = t.step_ns.max(1);
            let next = next_tick.get_or_insert((frame.ts_ns / step + 1) * step);
            if frame.ts_ns >= *next {
                // The sample must see every frame before the boundary.
                for (key, seg) in queue.drain(..) {
                    table.apply(key, &seg, &mut on_event);
                }
                // After a long silence a few samples describe it fully (rates
                // average at most a second); don't loop over a year of gap.
                let due = (frame.ts_ns - *next) / step + 1;
                let skipped = due - due.min(16);
                for i in 0..due.min(16) {
                    (t.sample)(*next + (skipped + i) * step, table);
                }
                *next += due * step;
            }
        }
        if let Some(f) = filter.as_deref_mut() {
            match f.matches(frame.linktype, frame.data, frame.orig_len) {
                Ok(true) => {}
                Ok(false) => {
                    stats.counters[Counter::Filtered as usize] += 1;
                    continue;
                }
                Err(e) => {
                    filter_error = Some(e);
                    break None;
                }
            }
        }
        match parse_frame(frame.linktype, frame.data) {
            Ok(pkt) => {
                let (key, seg) = pkt.to_segment(frame.ts_ns, 1, split_vlans);
                table.prefetch(&key);
                queue.push_back((key, seg));
                // Halfway along, the index slot has arrived: ask for the
                // record it points to.
                if let Some((k, _)) = queue.len().checked_sub(PIPELINE / 2 + 1).map(|i| &queue[i]) {
                    table.prefetch_record(k);
                }
                if queue.len() > PIPELINE {
                    let (key, seg) = queue.pop_front().expect("queue is not empty");
                    table.apply(key, &seg, &mut on_event);
                }
                stats.counters[Counter::Tcp as usize] += 1;
            }
            Err(Skip::UnsupportedLink(lt)) => *stats.unsupported.entry(lt).or_default() += 1,
            Err(skip) => {
                if let Some(c) = skip.counter() {
                    stats.counters[c as usize] += 1;
                }
                if let Skip::NotTcp(IPPROTO_ICMP | IPPROTO_ICMPV6) = skip
                    && let Some(q) = parse_unreachable(frame.linktype, frame.data)
                {
                    // The quoted handshake's segments come first.
                    for (key, seg) in queue.drain(..) {
                        table.apply(key, &seg, &mut on_event);
                    }
                    table.unreachable(q.key(), q.seq, &mut on_event);
                }
            }
        }
    };
    for (key, seg) in queue {
        table.apply(key, &seg, &mut on_event);
    }
    Replay {
        stats,
        error,
        filter_error,
    }
}
