//! `tcpmon peek` (tcpeek): handshake sessions from a capture or live, a
//! line per finished session on stderr, the summary when the run ends.

pub(crate) mod live;
mod socket;

use std::collections::HashSet;
use std::io::Write;
use std::process::ExitCode;

use anyhow::{Result, anyhow, bail};

use super::replay::{open, pcap_filters, report};
use super::runtime;
use crate::backend::pcap::Replayer;
use crate::cli::{PeekArgs, PeekstatArgs};
use crate::engine::FlowTable;
use crate::run::{self, Signals, capture::Capture};
use crate::view::peek::filter::Filters;
use crate::view::peek::view::{AtEnd, PeekOptions, PeekView};
use crate::view::peek::{Locality, PeekStats};

pub fn run(args: &PeekArgs) -> Result<ExitCode> {
    let filters = Filters::parse(&args.filters).map_err(|e| anyhow!("{e}"))?;
    if !args.timeout.is_finite() || args.timeout <= 0.0 {
        bail!(
            "-t must be a positive number of seconds, not {}",
            args.timeout
        );
    }
    if args.max_pending == 0 {
        bail!("--max-pending must be at least 1");
    }
    match (&args.read, &args.interface) {
        (Some(path), _) => replay(path, args, filters),
        (None, Some(iface)) => live::run(iface, args, filters),
        (None, None) => bail!(
            "nothing to watch: give -i IFACE to watch an interface live, or -r FILE to replay a capture"
        ),
    }
}

/// `tcpmon peekstat`: asks a running `peek` for its statistics and prints
/// them as tcpeekstat does (`-j`: the JSON as received).
pub fn stat(args: &PeekstatArgs) -> Result<ExitCode> {
    let doc = socket::query(&args.socket, args.refresh)?;
    let text = if args.json {
        format!("{doc}\n")
    } else {
        socket::table(&doc)?
    };
    std::io::stdout().write_all(text.as_bytes())?;
    Ok(ExitCode::SUCCESS)
}

/// The view's options; `clock_offset_ns`: 0 on packet time.
fn peek_options(args: &PeekArgs, clock_offset_ns: i64, at_end: AtEnd) -> PeekOptions {
    PeekOptions {
        timeout_ns: (args.timeout * 1e9) as u64,
        max_pending: args.max_pending,
        icmp: args.icmp,
        quiet: args.quiet,
        clock_offset_ns,
        at_end,
    }
}

/// Packet time between expiries and table clean-ups during a replay.
const REPLAY_TICK_NS: u64 = 100_000_000;

fn replay(path: &std::path::Path, args: &PeekArgs, filters: Filters) -> Result<ExitCode> {
    let mut reader = open(path)?;
    let mut pcap_filter = pcap_filters(&reader, args.pcap_filter.clone())?;
    let locality = if args.local.is_empty() {
        Locality::Answering(HashSet::new())
    } else {
        Locality::Fixed(args.local.iter().copied().collect())
    };
    let stderr = std::io::stderr();
    let out = std::io::BufWriter::with_capacity(1 << 16, stderr.lock());
    let stats = PeekStats::new(filters, locality, args.icmp);
    let opts = peek_options(args, 0, AtEnd::ExpireAll);
    runtime()?.block_on(async {
        let mut signals = Signals::new()?;
        let mut view = PeekView::new(opts, stats, out)?;
        let replayer = Replayer::new(
            &mut reader,
            false,
            pcap_filter.as_mut(),
            Some(REPLAY_TICK_NS),
        );
        let mut source = Capture::new(replayer, true, false);
        let mut table = FlowTable::new(0);
        let run_opts = run::Options {
            keys: run::Keys::None,
            queries: None,
            deadline: None,
        };
        run::run(&mut source, &mut view, &mut table, &mut signals, run_opts).await?;
        drop(view);
        Ok(report(path, source.into_replay()))
    })
}
