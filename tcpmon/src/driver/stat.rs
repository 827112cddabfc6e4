//! `tcpmon stat`: tcpstat's interval statistics, from a capture (packet
//! time) or live from the kernel's interval counters (on the clock).

use std::ffi::OsString;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};

use crate::backend::pcap::file;
use crate::cli::stat::{StatArgs, StatSource, Usage, parse};
use crate::engine::stat::IntervalStats;
use crate::run::stat_capture::StatCapture;
use crate::run::{self, Signals, watch_interrupts};
use crate::view::stat::view::{Printer, StatState, StatView};

/// Runs `stat` with tcpstat's arguments; `prog` names the program in the
/// usage text (`tcpstat` when called by that name).
pub fn run_stat(args: &[OsString], prog: &str) -> Result<ExitCode> {
    let args = match parse(args) {
        Ok(a) => a,
        Err(usage) => {
            if let Some(e) = usage.error {
                eprintln!("{prog}: {e}");
            }
            eprint!("{}", Usage::text(prog));
            // tcpstat exits with 1 for -h as well.
            return Ok(ExitCode::from(1));
        }
    };
    match &args.source {
        StatSource::File(path) => replay(path, &args),
        StatSource::Live(iface) => super::stat_live::run(iface, &args),
    }
}

fn replay(path: &Path, args: &StatArgs) -> Result<ExitCode> {
    let mut reader = super::replay::open(path)?;
    // tcpstat's -f: the frames `tcpdump -r FILE EXPR` keeps, before any
    // counting.
    let mut filters = super::replay::pcap_filters(&reader, args.filter.clone())?;
    // A worker thread, so that SIGINT is heard while the engine pads a gap.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    let (unsupported, frames, error) = runtime.block_on(async {
        let mut signals = Signals::with_report()?;
        let printer = Printer::new(args, false, Some(watch_interrupts()?));
        let mut state = StatState::new(IntervalStats::new(args.config), printer);
        let mut source = StatCapture::new(&mut reader, filters.as_mut(), args.link_size, path);
        let mut view = StatView::new(args.config.mode, std::io::stdout());
        run::run(
            &mut source,
            &mut view,
            &mut state,
            &mut signals,
            run::Options::default(),
        )
        .await?;
        anyhow::Ok((source.unsupported, source.frames, source.error))
    })?;
    let mut code = ExitCode::SUCCESS;
    for (lt, n) in &unsupported {
        eprintln!(
            "tcpmon: {}: {n} frames of link type {} ({lt}) counted whole and unclassified: tcpmon does not parse that link type",
            path.display(),
            file::linktype_name(*lt),
        );
    }
    if let Some(err) = error {
        eprintln!(
            "tcpmon: {}: {:#} (after {frames} frames; the intervals above were read before it)",
            path.display(),
            anyhow::Error::from(err),
        );
        code = ExitCode::FAILURE;
    }
    Ok(code)
}
