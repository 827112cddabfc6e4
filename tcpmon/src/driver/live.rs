//! `top` live: the kernel as the run loop's source, on the clock.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};

use super::{runtime, top_options, top_view};
use crate::backend::ebpf::{EbpfBackend, EbpfOptions, LoadOptions, monotonic_to_unix_offset_ns};
use crate::backend::promisc;
use crate::cli::{KernelLogLevel, TopArgs};
use crate::engine::FlowTable;
use crate::filter::{self, Filter};
use crate::run::{self, Signals, kernel::Kernel};

/// The kernel's lines go to stderr; on the terminal the table is drawn on
/// they would break the screen, so they must go elsewhere.
fn kernel_log_beside_screen(args: &TopArgs) -> Result<()> {
    use std::io::IsTerminal;
    if args.source.kernel_log.level != KernelLogLevel::Off
        && super::output(args) == super::Output::Tui
        && std::io::stderr().is_terminal()
    {
        anyhow::bail!(
            "--kernel-log writes to stderr, which is top's screen here: redirect it \
             (2>kernel.log) or use --json"
        );
    }
    Ok(())
}

pub(super) fn top(iface: &str, args: &TopArgs) -> Result<ExitCode> {
    runtime()?.block_on(run_top(iface, args))?;
    Ok(ExitCode::SUCCESS)
}

async fn run_top(iface: &str, args: &TopArgs) -> Result<()> {
    kernel_log_beside_screen(args)?;
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
        flow_capacity: args.source.max_flows,
        filter: filter.map(|f| f.insns().to_vec()),
        kernel_log: args.source.kernel_log.level.filter(),
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
    // Ended connections leave the kernel's maps once they leave the screen.
    backend.set_linger(top_options(args)?.purge.closed_ns);
    // The screen: entered after attaching, so attach errors print plainly.
    let mut view = top_view(args, true, true)?;
    let mut table = FlowTable::new(monotonic_to_unix_offset_ns()).track_changes();
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
    let evicted = backend.flows_evicted()?;
    if evicted > 0 || table.evicted > 0 {
        eprintln!(
            "tcpmon: the kernel's full flow maps evicted {evicted} flows; {} connections lost \
             counts to them (marked evicted; --max-flows raises the maps' size)",
            table.evicted
        );
    }
    if backend.late_packets() > 0 {
        log::info!(
            "{} late packets of connections already deleted",
            backend.late_packets()
        );
    }
    Ok(())
}
