//! One run loop for every view: a backend is a [`Source`] of [`Input`]s
//! (flow updates and events, clock ticks, stop), the terminal, the
//! statistics socket and the process's signals add keys, queries and
//! stops, and a view is a [`View`] that reacts to each input. A view is
//! written once for live and replay: only the source differs (kernel or
//! capture, wall clock or packet time), and whole-app tests drive a view
//! from a [`script::Script`] (or any source of their own).
//!
//! Sources: [`kernel::Kernel`] and [`capture::Capture`] feed the flow
//! table (`top`, `peek`); [`stat_kernel::StatKernel`] and
//! [`stat_capture::StatCapture`] feed interval statistics (`stat`).

pub mod capture;
pub mod kernel;
mod keys;
pub mod script;
mod signals;
pub mod stat_capture;
pub mod stat_kernel;

use anyhow::Result;
use ratatui::crossterm::event::Event as TermEvent;
use tcpmon_common::{Event, FlowKey, FlowRecord};

use crate::engine::{Counters, FlowTable};
pub use signals::{Signal, Signals, watch_interrupts};

/// What a view reacts to. Flow updates (segments, kernel records, packet
/// counts) go into the engine state on the way, by the source: the state
/// is shared; a view sees only what happened to it.
#[derive(Debug)]
pub enum Input {
    /// A connection event; the table has already taken it in.
    Event(Event),
    /// A step of time: packet time in a replay, the clock live
    /// (CLOCK_MONOTONIC, the kernel's timestamps).
    Tick { now_ns: u64 },
    /// A terminal event (key, resize).
    Key(TermEvent),
    /// Clients of the statistics socket ask for the view's numbers, at
    /// the source's time `now_ns`, in the order they asked: all those
    /// waiting when the run loop got to them, answered from one reading.
    Query { queries: Vec<Query>, now_ns: u64 },
    /// The run is ending, and why, at the source's time `now_ns` (a
    /// replay's last frame; the clock live). The table holds everything
    /// read.
    Stop { why: Stop, now_ns: u64 },
}

/// A statistics request (tcpeek's socket): `REFRESH` or `GET`, and where
/// the JSON document goes.
#[derive(Debug)]
pub struct Query {
    pub refresh: bool,
    pub reply: tokio::sync::oneshot::Sender<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// The source has no more (the end of a capture, even a damaged one).
    End,
    /// The source cannot go on meaningfully (a filter that cannot apply to
    /// the capture): nothing is to be shown; the driver reports why.
    Invalid,
    /// SIGINT or SIGTERM.
    Signal,
    /// `--duration` ran out.
    Deadline,
    /// The view asked to stop (`q`).
    Quit,
}

/// A view's answer to an input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control {
    Continue,
    Quit,
}

/// What a view may ask the backend behind a source, between inputs.
pub trait Probe {
    /// The backend's own current record of `key`, where it keeps one apart
    /// from the table (the kernel's map).
    fn lookup(&self, _key: &FlowKey) -> Option<FlowRecord> {
        None
    }

    /// A view is done with a connection that ended without closing (a
    /// handshake timed out, an idle one): the backend may drop its own
    /// record (the kernel's map), so that what comes later on the 4-tuple
    /// counts as new. Done before the source's next input.
    fn forget(&self, _key: &FlowKey, _rec: &FlowRecord) {}

    /// The backend's counters so far (packets seen, parsed, filtered...).
    fn counters(&self) -> Result<Counters>;

    /// Flows the backend's full flow maps evicted (the kernel's; a
    /// replay's table has no capacity to overflow).
    fn flows_evicted(&self) -> Result<u64> {
        Ok(0)
    }

    /// The time the run covered so far, in Unix nanoseconds: first to last
    /// frame of a capture, start to now live.
    fn span_ns(&self) -> (i128, i128);

    /// The backend's name in statistics: "capture", "kernel".
    fn name(&self) -> &'static str;
}

/// Where inputs come from: the kernel, a capture, a script. `St` is the
/// engine state the source feeds and the view reads: the flow table for
/// `top` and `peek`, interval statistics for `stat`.
#[allow(async_fn_in_trait)] // used generically inside the crate, never boxed
pub trait Source<St = FlowTable>: Probe {
    /// The next input. Segments, flow records or counts read on the way go
    /// into `state` first. Must be cancel-safe: the run loop drops it when
    /// a key or a signal comes first.
    async fn next(&mut self, state: &mut St) -> Result<Input>;

    /// The run ends before the source did: takes in what is already read
    /// (queued segments, events still in the ring, the kernel map's final
    /// state) and appends to `owed` the inputs the view has yet to see.
    fn finish(&mut self, state: &mut St, owed: &mut Vec<Input>) -> Result<()>;

    /// Takes in what the backend already has without waiting (events in
    /// the ring), so that an answer to a query counts them; appends to
    /// `owed` what the view has yet to see.
    fn catch_up(&mut self, _state: &mut St, _owed: &mut Vec<Input>) -> Result<()> {
        Ok(())
    }

    /// SIGUSR1: what is counted so far is to be reported now. Sources own
    /// time, so they say when "now" is: live at once on the clock, a
    /// capture at its next frame, on packet time.
    fn report(&mut self, _state: &mut St) -> Result<()> {
        Ok(())
    }

    /// The source's time: packet time of the last frame read, or the clock.
    fn now_ns(&self) -> u64;
}

/// A consumer of inputs.
pub trait View<St = FlowTable> {
    fn on(&mut self, input: Input, state: &mut St, probe: &dyn Probe) -> Result<Control>;

    /// True while the view shows a screen and reads the keyboard. After the
    /// source ended, the run goes on as long as this holds (a replay's
    /// final table stays until `q`).
    fn wants_keys(&self) -> bool {
        false
    }

    /// SIGHUP: reopen what the view writes to (a log file logrotate moved).
    fn reopen(&mut self) -> Result<()> {
        Ok(())
    }
}

/// Where keys come from once the view wants them.
#[derive(Default)]
pub enum Keys {
    #[default]
    None,
    /// The real terminal, read on a thread of its own.
    Terminal,
    /// Keys a test queued, as if typed once the screen is up.
    Given(tokio::sync::mpsc::UnboundedReceiver<TermEvent>),
}

/// What else the run loop listens to besides the source (by default:
/// nothing, as for `stat`).
#[derive(Default)]
pub struct Options {
    pub keys: Keys,
    /// Statistics requests (`peek`'s socket).
    pub queries: Option<tokio::sync::mpsc::Receiver<Query>>,
    /// `--duration`.
    pub deadline: Option<std::time::Duration>,
}

/// Runs `view` on `source` until the view quits, the source ends (and the
/// view has no screen to linger on), a signal or the deadline. Returns why
/// the source stopped.
pub async fn run<St, S: Source<St>, V: View<St>>(
    source: &mut S,
    view: &mut V,
    table: &mut St,
    signals: &mut Signals,
    opts: Options,
) -> Result<Stop> {
    let mut keys_from = Some(opts.keys);
    let mut queries = opts.queries;
    let mut keys: Option<tokio::sync::mpsc::UnboundedReceiver<TermEvent>> = None;
    let deadline = async {
        match opts.deadline {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(deadline);
    let mut stopped: Option<Stop> = None;
    loop {
        if keys.is_none() && view.wants_keys() {
            keys = match keys_from.take() {
                Some(Keys::Terminal) => Some(keys::spawn_reader()),
                Some(Keys::Given(k)) => Some(k),
                Some(Keys::None) | None => None,
            };
        }
        // After the source, only keys remain: none wanted, or none to come
        // (the terminal is gone), ends the run.
        if stopped.is_some() && (!view.wants_keys() || keys_from.is_none() && keys.is_none()) {
            break;
        }
        let input = tokio::select! {
            i = source.next(table), if stopped.is_none() => i?,
            k = next_key(&mut keys) => match k {
                Some(k) => Input::Key(k),
                None => {
                    keys = None;
                    continue;
                }
            },
            Some(q) = next_query(&mut queries) => {
                let batch = drain_queries(q, &mut queries);
                let mut owed = Vec::new();
                source.catch_up(table, &mut owed)?;
                for input in owed {
                    view.on(input, table, source)?;
                }
                Input::Query {
                    queries: batch,
                    now_ns: source.now_ns(),
                }
            }
            sig = signals.recv() => match sig {
                Signal::Stop => stop_input(source, Stop::Signal),
                Signal::Report => {
                    source.report(table)?;
                    continue;
                }
                Signal::Reopen => {
                    view.reopen()?;
                    continue;
                }
            },
            () = &mut deadline, if stopped.is_none() => stop_input(source, Stop::Deadline),
        };
        let stop = match input {
            Input::Stop { why, .. } => Some(why),
            _ => None,
        };
        // Stops from outside the source: it takes in what it already read
        // first, so the view's last look is complete.
        let input = match input {
            Input::Stop { why, .. }
                if stopped.is_none() && matches!(why, Stop::Signal | Stop::Deadline) =>
            {
                deliver_owed(source, view, table)?;
                stop_input(source, why)
            }
            other => other,
        };
        if let Some(s) = stop {
            stopped.get_or_insert(s);
        }
        if view.on(input, table, source)? == Control::Quit {
            if stopped.is_none() {
                deliver_owed(source, view, table)?;
                stopped = Some(Stop::Quit);
                view.on(stop_input(source, Stop::Quit), table, source)?;
            }
            break;
        }
    }
    Ok(stopped.unwrap_or(Stop::Quit))
}

fn stop_input<St, S: Source<St>>(source: &S, why: Stop) -> Input {
    Input::Stop {
        why,
        now_ns: source.now_ns(),
    }
}

fn deliver_owed<St, S: Source<St>, V: View<St>>(
    source: &mut S,
    view: &mut V,
    table: &mut St,
) -> Result<()> {
    let mut owed = Vec::new();
    source.finish(table, &mut owed)?;
    for input in owed {
        view.on(input, table, source)?;
    }
    Ok(())
}

/// Most requests answered from one reading of the counters.
const QUERY_BATCH: usize = 1024;

/// `first` and the requests already waiting behind it: a thousand clients
/// asking at once then cost the run loop (and the counting it does between
/// inputs) a few readings rather than a thousand.
fn drain_queries(
    first: Query,
    queries: &mut Option<tokio::sync::mpsc::Receiver<Query>>,
) -> Vec<Query> {
    let mut batch = vec![first];
    if let Some(rx) = queries {
        while batch.len() < QUERY_BATCH {
            match rx.try_recv() {
                Ok(q) => batch.push(q),
                Err(_) => break,
            }
        }
    }
    batch
}

async fn next_query(queries: &mut Option<tokio::sync::mpsc::Receiver<Query>>) -> Option<Query> {
    match queries {
        Some(q) => q.recv().await,
        None => std::future::pending().await,
    }
}

async fn next_key(
    keys: &mut Option<tokio::sync::mpsc::UnboundedReceiver<TermEvent>>,
) -> Option<TermEvent> {
    match keys {
        Some(k) => k.recv().await,
        None => std::future::pending().await,
    }
}
