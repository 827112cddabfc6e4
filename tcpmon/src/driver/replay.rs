//! `top` from a capture, as fast as the file reads or at capture speed;
//! what every replay shares (opening, filters, the final report).

use std::process::ExitCode;

use anyhow::Result;

use super::{Output, output, runtime, top_view};
use crate::backend::pcap::{self, Replayer, file};
use crate::cli::TopArgs;
use crate::engine::FlowTable;
use crate::filter::{self, Filters, Source};
use crate::run::{self, Signals, capture::Capture};

pub(super) fn top(path: &std::path::Path, args: &TopArgs) -> Result<ExitCode> {
    let mut reader = open(path)?;
    let mut filters = pcap_filters(&reader, filter::expression(&args.filter))?;
    let tui = output(args) == Output::Tui;
    runtime()?.block_on(async {
        let mut signals = Signals::new()?;
        let realtime = tui && args.realtime;
        let mut view = top_view(args, realtime, false)?;
        // Speeds are sampled on packet time, so the screen is the same each
        // time; only the screen needs them.
        let step = tui.then_some(view.step_ns());
        let replayer = Replayer::new(&mut reader, args.source.split_vlans, filters.as_mut(), step);
        let mut source = Capture::new(replayer, false, realtime);
        let mut table = FlowTable::new(0);
        if tui {
            // Only the screen shows speeds.
            table = table.track_changes();
        }
        let run_opts = run::Options {
            keys: run::Keys::Terminal,
            queries: None,
            deadline: None,
        };
        let stopped = run::run(&mut source, &mut view, &mut table, &mut signals, run_opts).await;
        // The screen is back before any error.
        drop(view);
        stopped?;
        let replay = source.into_replay();
        // What was read was shown even when the capture is damaged; the
        // errors follow. A filter that cannot apply showed nothing.
        if let Some(e) = replay.filter_error {
            return Err(anyhow::Error::from(e).context(path.display().to_string()));
        }
        Ok(report(path, replay))
    })
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
