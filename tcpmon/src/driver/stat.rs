//! `tcpmon stat`: tcpstat's interval statistics, from a capture (packet
//! time) or live from the kernel's interval counters (on the clock).

use std::ffi::OsString;
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result};

use crate::backend::pcap::file;
use crate::cli::stat::{StatArgs, StatSource, Usage, parse};
use crate::engine::stat::{IntervalStats, Line, LineSink, Mode, Totals};
use crate::view::stat::{Format, Outputs, write_accounting, write_bandwidth};
use crate::wire::{Skip, frame_class, link_header_len};

/// SIGUSR1: print the current interval now.
static PRINT_NOW: AtomicBool = AtomicBool::new(false);
/// SIGINT/SIGTERM: print what remains and stop.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_usr1(_: libc::c_int) {
    PRINT_NOW.store(true, Ordering::Relaxed);
}

extern "C" fn on_stop(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

fn install_signal_handlers() {
    // SAFETY: the handlers only store to atomics, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGUSR1, on_usr1 as *const () as libc::sighandler_t);
        libc::signal(libc::SIGINT, on_stop as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_stop as *const () as libc::sighandler_t);
    }
}

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
        StatSource::File(path) => {
            install_signal_handlers();
            replay(path, &args)
        }
        // The live loop takes the signals through tokio.
        StatSource::Live(iface) => super::stat_live::run(iface, &args),
    }
}

/// Prints interval lines through the `-o` format.
pub(super) struct Printer {
    format: Format,
    relative: f64,
    flush_each: bool,
    pub(super) out: Outputs,
}

impl Printer {
    pub(super) fn new(args: &StatArgs, flush_each: bool) -> Self {
        Printer {
            format: Format::parse(&args.format),
            relative: args.relative,
            flush_each: flush_each || args.flush,
            out: Outputs::default(),
        }
    }
}

impl LineSink for Printer {
    fn line(&mut self, line: &Line) {
        self.format.render(line, self.relative, &mut self.out);
        if self.flush_each {
            self.out.flush();
        } else {
            self.out.flush_if_full();
        }
    }

    fn stopped(&self) -> bool {
        STOP.load(Ordering::Relaxed) || self.out.broken()
    }
}

/// After the last interval: the `-a`/`-b`/`-B` summary.
pub(super) fn write_summary(args: &StatArgs, totals: &Totals) -> Result<()> {
    let mut stdout = std::io::stdout().lock();
    match args.config.mode {
        Mode::Intervals => Ok(()),
        Mode::Accounting => write_accounting(&mut stdout, totals),
        Mode::Bandwidth { bps, smart } => write_bandwidth(&mut stdout, totals, bps, smart),
    }
    .and_then(|()| stdout.flush())
    .context("cannot write to standard output")
}

/// A capture timestamp as tcpstat sees it through libpcap: whole
/// microseconds (nanosecond captures are truncated), summed in f64.
fn pcap_seconds(ts_ns: u64) -> f64 {
    let secs = ts_ns / 1_000_000_000;
    let usecs = ts_ns % 1_000_000_000 / 1_000;
    secs as f64 + usecs as f64 / 1.0e6
}

fn replay(path: &Path, args: &StatArgs) -> Result<ExitCode> {
    let mut reader = super::replay::open(path)?;
    // tcpstat's -f: the frames `tcpdump -r FILE EXPR` keeps, before any
    // counting.
    let mut filters = super::replay::pcap_filters(&reader, args.filter.clone())?;
    let mut printer = Printer::new(args, false);
    let mut stats = IntervalStats::new(args.config);
    let mut unsupported = std::collections::BTreeMap::<u32, u64>::new();
    let mut frames = 0u64;
    let error = loop {
        if STOP.load(Ordering::Relaxed) || printer.out.broken() {
            break None;
        }
        let frame = match reader.next_frame() {
            Ok(Some(f)) => f,
            Ok(None) => break None,
            Err(e) => break Some(e),
        };
        frames += 1;
        if let Some(f) = filters.as_mut() {
            // An expression that cannot apply to a frame's link type stops
            // the run, as tcpdump would not have started, and makes the
            // statistics meaningless: no summary, just the error.
            match f.matches(frame.linktype, frame.data, frame.orig_len) {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => {
                    return Err(anyhow::Error::from(e).context(path.display().to_string()));
                }
            }
        }
        let class = match frame_class(frame.linktype, frame.data) {
            Ok(c) => c,
            Err(Skip::UnsupportedLink(lt)) => {
                *unsupported.entry(lt).or_default() += 1;
                0
            }
            Err(_) => 0,
        };
        let size = match args.link_size {
            true => frame.orig_len,
            false => frame
                .orig_len
                .saturating_sub(link_header_len(frame.linktype)),
        };
        let print_now = PRINT_NOW.load(Ordering::Relaxed);
        if stats.packet(
            pcap_seconds(frame.ts_ns),
            size,
            class,
            print_now,
            &mut printer,
        ) {
            PRINT_NOW.store(false, Ordering::Relaxed);
        }
    };
    let totals = stats.finish(&mut printer);
    printer.out.flush();
    write_summary(args, &totals)?;
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
