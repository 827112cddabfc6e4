//! Reading the `EVENTS` ring buffer: waiting on it through tokio, draining
//! it, and decoding its entries.

use anyhow::{Context, Result, bail};
use aya::maps::{MapData, RingBuf};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use tcpmon_common::{Event, EventBits, decode};

use super::{EbpfBackend, Seen};

/// The ring buffer, registered with tokio on first use (registration needs
/// a running reactor, which `attach` may not have).
pub(super) enum Events {
    Plain(RingBuf<MapData>),
    Polled(AsyncFd<RingBuf<MapData>>),
    /// Only while moving from one to the other.
    Switching,
}

impl EbpfBackend {
    /// Waits (AsyncFd on the ring buffer fd) until events are readable,
    /// then drains all of them into `out` (appending). Cancel-safe: events
    /// are only taken after the last await, so a `select!` that drops this
    /// future loses none.
    pub async fn read_events(&mut self, out: &mut Vec<Event>) -> Result<()> {
        let start = out.len();
        let undecodable = &mut self.undecodable;
        let fd = polled(&mut self.events)?;
        loop {
            let mut guard = fd
                .readable_mut()
                .await
                .context("waiting on the EVENTS ring buffer")?;
            if drain(guard.get_inner_mut(), out, undecodable) > 0 {
                // Readiness stays set: the next call drains again before it
                // sleeps, so nothing that arrived meanwhile waits.
                break;
            }
            // Empty: sleep until the kernel signals the next event. tokio
            // keeps a signal that raced with this drain.
            guard.clear_ready();
        }
        self.screen_events(out, start);
        Ok(())
    }

    /// Drains the events already in the ring buffer without waiting.
    pub fn try_read_events(&mut self, out: &mut Vec<Event>) -> usize {
        let start = out.len();
        let undecodable = &mut self.undecodable;
        let n = match &mut self.events {
            Events::Plain(ring) => drain(ring, out, undecodable),
            Events::Polled(fd) => drain(fd.get_mut(), out, undecodable),
            Events::Switching => 0,
        };
        self.screen_events(out, start);
        n
    }

    /// Shows the reaper the events from `start` on, and leaves out those
    /// of late segments of a deleted connection (see `reaper`).
    fn screen_events(&mut self, out: &mut Vec<Event>, start: usize) {
        let now = super::monotonic_now_ns();
        let mut i = start;
        while i < out.len() {
            if self.reaper.saw(&out[i].key, &out[i].rec, now) == Seen::Late {
                out.remove(i);
            } else {
                i += 1;
            }
        }
    }

    /// Entries of the ring buffer that were no `Event` of this build
    /// (another size, or an enum field holding no known value), skipped
    /// by `read_events` and `try_read_events`; the first is logged as a
    /// warning with what was wrong. Only an object built from other types
    /// than this build writes them.
    pub fn undecodable_events(&self) -> u64 {
        self.undecodable
    }
}

/// Skipping an entry beats misreading it, and one bad entry should not end
/// a session that reads thousands of good ones: they are counted instead.
fn drain(ring: &mut RingBuf<MapData>, out: &mut Vec<Event>, undecodable: &mut u64) -> usize {
    const SIZE: usize = size_of::<Event>();
    let mut n = 0;
    while let Some(item) = ring.next() {
        let event = if item.len() == SIZE {
            decode::<Event>(bytemuck::pod_read_unaligned::<EventBits>(&item))
                .map_err(|e| e.to_string())
        } else {
            Err(format!(
                "an entry of {} bytes, where an event has {SIZE}",
                item.len()
            ))
        };
        match event {
            Ok(event) => {
                out.push(event);
                n += 1;
            }
            Err(e) => {
                if *undecodable == 0 {
                    log::warn!("skipping entries of the EVENTS ring buffer: {e}");
                }
                *undecodable += 1;
            }
        }
    }
    n
}

/// The polled ring buffer, registered with tokio first if it is not yet.
fn polled(events: &mut Events) -> Result<&mut AsyncFd<RingBuf<MapData>>> {
    if matches!(events, Events::Plain(_)) {
        if tokio::runtime::Handle::try_current().is_err() {
            bail!("EbpfBackend::read_events must run inside a tokio runtime");
        }
        *events = match std::mem::replace(events, Events::Switching) {
            // SAFETY: the RingBuf owns the map's fd, which stays open
            // and unchanged for as long as the AsyncFd owns the RingBuf.
            Events::Plain(ring) => {
                match unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) } {
                    Ok(fd) => Events::Polled(fd),
                    Err(e) => {
                        let (ring, io_error) = e.into_parts();
                        *events = Events::Plain(ring);
                        return Err(io_error)
                            .context("registering the EVENTS ring buffer with tokio");
                    }
                }
            }
            other => other,
        };
    }
    match events {
        Events::Polled(fd) => Ok(fd),
        _ => bail!("the EVENTS ring buffer is not registered with tokio"),
    }
}
