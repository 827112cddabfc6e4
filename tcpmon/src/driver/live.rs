//! `top` live: the kernel as the run loop's source, on the clock.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};

use super::{runtime, top_view};
use crate::backend::ebpf::{EbpfBackend, EbpfOptions, LoadOptions, monotonic_to_unix_offset_ns};
use crate::backend::promisc;
use crate::cli::TopArgs;
use crate::engine::FlowTable;
use crate::filter::{self, Filter};
use crate::run::{self, Signals, kernel::Kernel};

pub(super) fn top(iface: &str, args: &TopArgs) -> Result<ExitCode> {
    runtime()?.block_on(run_top(iface, args))?;
    Ok(ExitCode::SUCCESS)
}

async fn run_top(iface: &str, args: &TopArgs) -> Result<()> {
    let opts = EbpfOptions {
        iface: iface.to_string(),
        xdp: args.source.xdp.choice(),
    };
    // Compiled for Ethernet before anything is loaded, so an error in the
    // expression comes first, in tcpdump's words.
    let filter = filter::expression(&args.filter)
        .map(|e| Filter::compile(&e))
        .transpose()?;
    let load = LoadOptions {
        split_vlans: args.source.split_vlans,
        filter: filter.map(|f| f.insns().to_vec()),
        ..LoadOptions::default()
    };
    let mut backend = EbpfBackend::attach_with(&opts, &load)?;
    let _promisc = match args.no_promisc {
        true => None,
        false => Some(promisc::enable(iface)?),
    };
    // Scripts and tests wait for this line before sending traffic.
    eprintln!("tcpmon: watching {iface}");
    let mut signals = Signals::new()?;
    // The screen: entered after attaching, so attach errors print plainly.
    let mut view = top_view(args, true, true)?;
    let mut table = FlowTable::new(monotonic_to_unix_offset_ns());
    let step = Duration::from_nanos(view.step_ns());
    let mut source = Kernel::new(&mut backend, step, true, false);
    let run_opts = run::Options {
        keys: run::Keys::Terminal,
        queries: None,
        deadline: args.duration.map(Duration::from_secs_f64),
    };
    run::run(&mut source, &mut view, &mut table, &mut signals, run_opts).await?;
    drop(view);
    let counters = backend
        .counters()
        .context("cannot read the kernel's counters")?;
    log::info!("kernel counters: {counters:?}");
    Ok(())
}
