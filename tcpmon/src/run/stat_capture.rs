//! A capture as a `stat` source: every frame counted into the interval
//! statistics on packet time (tcpstat's `-r`), intervals closing as packet
//! time passes them.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use anyhow::Result;

use super::{Input, Probe, Source, Stop};
use crate::backend::pcap::file::{CaptureError, CaptureReader};
use crate::engine::Counters;
use crate::filter::Filters;
use crate::view::stat::view::{Lines, StatState};
use crate::wire::{Skip, frame_class, link_header_len};

/// Frames read between chances for signals to be heard.
const BUDGET: usize = 4096;

pub struct StatCapture<'a, R: Read> {
    reader: &'a mut CaptureReader<R>,
    /// tcpstat's -f: the frames `tcpdump -r FILE EXPR` keeps, before any
    /// counting.
    filters: Option<&'a mut Filters>,
    /// `-l`: sizes include the link-layer header.
    link_size: bool,
    /// Named in a filter's error.
    path: &'a Path,
    /// Frames per link type tcpmon cannot parse, counted whole.
    pub unsupported: BTreeMap<u32, u64>,
    pub frames: u64,
    /// What stopped the reading early.
    pub error: Option<CaptureError>,
    first_ns: Option<u64>,
    last_ns: u64,
    ended: bool,
}

impl<'a, R: Read> StatCapture<'a, R> {
    pub fn new(
        reader: &'a mut CaptureReader<R>,
        filters: Option<&'a mut Filters>,
        link_size: bool,
        path: &'a Path,
    ) -> Self {
        StatCapture {
            reader,
            filters,
            link_size,
            path,
            unsupported: BTreeMap::new(),
            frames: 0,
            error: None,
            first_ns: None,
            last_ns: 0,
            ended: false,
        }
    }

    fn end<K: Lines>(&mut self, state: &mut StatState<K>) {
        if !self.ended {
            self.ended = true;
            state.totals = Some(state.stats.finish(&mut state.sink));
        }
    }
}

/// A capture timestamp as tcpstat sees it through libpcap: whole
/// microseconds (nanosecond captures are truncated), summed in f64.
pub(crate) fn pcap_seconds(ts_ns: u64) -> f64 {
    let secs = ts_ns / 1_000_000_000;
    let usecs = ts_ns % 1_000_000_000 / 1_000;
    secs as f64 + usecs as f64 / 1.0e6
}

impl<R: Read> Probe for StatCapture<'_, R> {
    /// tcpstat counts by class, not by these counters.
    fn counters(&self) -> Result<Counters> {
        Ok(Counters::default())
    }

    fn span_ns(&self) -> (i128, i128) {
        (self.first_ns.unwrap_or(0) as i128, self.last_ns as i128)
    }

    fn name(&self) -> &'static str {
        "capture"
    }
}

impl<R: Read, K: Lines> Source<StatState<K>> for StatCapture<'_, R> {
    async fn next(&mut self, state: &mut StatState<K>) -> Result<Input> {
        loop {
            for _ in 0..BUDGET {
                if self.ended || state.sink.broken() {
                    self.end(state);
                    return Ok(Input::Stop {
                        why: Stop::End,
                        now_ns: self.last_ns,
                    });
                }
                let frame = match self.reader.next_frame() {
                    Ok(Some(f)) => f,
                    Ok(None) => {
                        self.end(state);
                        continue;
                    }
                    Err(e) => {
                        self.error = Some(e);
                        self.end(state);
                        continue;
                    }
                };
                self.frames += 1;
                self.first_ns.get_or_insert(frame.ts_ns);
                self.last_ns = frame.ts_ns;
                if let Some(f) = self.filters.as_deref_mut() {
                    // An expression that cannot apply to a frame's link type
                    // stops the run, as tcpdump would not have started, and
                    // makes the statistics meaningless: no summary, just the
                    // error.
                    match f.matches(frame.linktype, frame.data, frame.orig_len) {
                        Ok(true) => {}
                        Ok(false) => continue,
                        Err(e) => {
                            return Err(
                                anyhow::Error::from(e).context(self.path.display().to_string())
                            );
                        }
                    }
                }
                let class = match frame_class(frame.linktype, frame.data) {
                    Ok(c) => c,
                    Err(Skip::UnsupportedLink(lt)) => {
                        *self.unsupported.entry(lt).or_default() += 1;
                        0
                    }
                    Err(_) => 0,
                };
                let size = match self.link_size {
                    true => frame.orig_len,
                    false => frame
                        .orig_len
                        .saturating_sub(link_header_len(frame.linktype)),
                };
                let secs = pcap_seconds(frame.ts_ns);
                if state
                    .stats
                    .packet(secs, size, class, state.print_now, &mut state.sink)
                {
                    state.print_now = false;
                }
            }
            tokio::task::yield_now().await;
        }
    }

    fn finish(&mut self, state: &mut StatState<K>, _owed: &mut Vec<Input>) -> Result<()> {
        self.end(state);
        Ok(())
    }

    /// Answered at the next frame, on packet time.
    fn report(&mut self, state: &mut StatState<K>) -> Result<()> {
        state.print_now = true;
        Ok(())
    }

    fn now_ns(&self) -> u64 {
        self.last_ns
    }
}

#[cfg(test)]
mod tests {
    use super::pcap_seconds;

    #[test]
    fn timestamps_are_whole_microseconds() {
        assert_eq!(pcap_seconds(1_500_000_999), 1.5);
        assert_eq!(
            pcap_seconds(1_418_145_370_123_456_789),
            1418145370.0 + 123456.0 / 1e6
        );
    }
}
