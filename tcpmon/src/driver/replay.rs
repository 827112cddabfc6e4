//! Capture replay: synchronous, as fast as the file reads.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Result;

use super::{Output, output, print_table, top_options};
use crate::backend::pcap::{self, Ticker, file};
use crate::cli::TopArgs;
use crate::engine::{FlowTable, Rates};
use crate::filter::{self, Filters, Source};
use crate::view::top;

/// Set by SIGINT/SIGTERM during a replay; the replay stops at the next frame.
pub(super) static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn request_stop(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

pub(super) fn top(path: &std::path::Path, args: &TopArgs) -> Result<ExitCode> {
    let mut reader = open(path)?;
    let mut filters = pcap_filters(&reader, filter::expression(&args.filter))?;
    stop_on_signals();
    let out = output(args);
    let opts = top_options(args)?;
    let mut table = FlowTable::new(0);
    if out == Output::Tui {
        // Only the screen shows speeds.
        table = table.track_changes();
    }
    let mut rates = Rates::new(opts.fast);
    let step_ns = rates.step_ns();
    let mut realtime = match (out, args.realtime) {
        (Output::Tui, true) => Some(top::Realtime::start(&opts)?),
        _ => None,
    };
    let mut sample = |now_ns: u64, t: &mut FlowTable| {
        rates.sample(t);
        if STOP.load(Ordering::Relaxed) {
            return;
        }
        if let Some(rt) = realtime.as_mut() {
            if rt.show(now_ns, t, &rates, &opts) {
                STOP.store(true, Ordering::Relaxed);
            }
        }
    };
    // Speeds are sampled on packet time, so the screen is the same each time.
    let ticker = (out == Output::Tui).then_some(Ticker {
        step_ns,
        sample: &mut sample,
    });
    let replay = pcap::replay(
        &mut reader,
        &mut table,
        &STOP,
        args.source.split_vlans,
        filters.as_mut(),
        |_| {},
        ticker,
    );
    // What was read is shown even when the capture is damaged; the errors
    // follow once the screen is back.
    let quit = STOP.load(Ordering::Relaxed);
    drop(realtime);
    // A filter that cannot apply to the capture makes the table meaningless,
    // as tcpdump would not have started.
    if let Some(e) = replay.filter_error {
        return Err(anyhow::Error::from(e).context(path.display().to_string()));
    }
    match out {
        // q during a real-time replay ends it; SIGINT still shows the table.
        Output::Tui if quit && args.realtime => {}
        Output::Tui => top::show_final(&table, &rates, replay.stats.last_ts_ns, &opts)?,
        Output::Json | Output::Text => print_table(&table, args)?,
    }
    Ok(report(path, replay))
}

/// Opens a capture, naming the file in errors except where the message
/// already does.
pub(super) fn open(path: &std::path::Path) -> Result<file::CaptureReader<Box<dyn std::io::Read>>> {
    file::open(path).map_err(|e| match e {
        file::CaptureError::Open { .. } => anyhow::Error::from(e),
        other => anyhow::Error::from(other).context(path.display().to_string()),
    })
}

/// The filter expression, if any, ready for `reader`'s link types. Called
/// before any frame is read, so a wrong expression is reported first.
pub(super) fn pcap_filters<R: std::io::Read>(
    reader: &file::CaptureReader<R>,
    expr: Option<String>,
) -> Result<Option<Filters>> {
    let source = Source::File {
        big_endian: matches!(
            reader.format(),
            file::Format::Pcap {
                big_endian: true,
                ..
            }
        ),
    };
    Ok(expr.map(|e| Filters::new(&e, source)).transpose()?)
}

/// SIGINT and SIGTERM set `STOP`; the replay stops at the next frame.
pub(super) fn stop_on_signals() {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(
            libc::SIGINT,
            request_stop as *const () as libc::sighandler_t,
        );
        libc::signal(
            libc::SIGTERM,
            request_stop as *const () as libc::sighandler_t,
        );
    }
}

/// Says on stderr what a replay could not read (unsupported link types, a
/// damaged file) and gives the exit status: 2 when no frame could be
/// parsed, 1 after damage.
pub(super) fn report(path: &std::path::Path, replay: pcap::Replay) -> ExitCode {
    let mut code = ExitCode::SUCCESS;
    for (lt, n) in &replay.stats.unsupported {
        eprintln!(
            "tcpmon: {}: skipped {n} frames of link type {} ({lt}), which tcpmon does not parse",
            path.display(),
            file::linktype_name(*lt),
        );
        if *n == replay.stats.frames {
            code = ExitCode::from(2);
        }
    }
    if let Some(err) = replay.error {
        eprintln!(
            "tcpmon: {}: {:#} (after {} frames; the connections above were read before it)",
            path.display(),
            anyhow::Error::from(err),
            replay.stats.frames
        );
        code = ExitCode::FAILURE;
    }
    code
}
