//! Live capture through the kernel programs, driven by tokio.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};

use super::print_table;
use crate::backend::ebpf::{
    EbpfBackend, EbpfOptions, LoadOptions, XdpChoice, monotonic_to_unix_offset_ns,
};
use crate::cli::{TopArgs, XdpArg};
use crate::engine::FlowTable;
use crate::view;

pub(super) fn top(iface: &str, args: &TopArgs) -> Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    runtime.block_on(live_loop(iface, args))?;
    Ok(ExitCode::SUCCESS)
}

async fn live_loop(iface: &str, args: &TopArgs) -> Result<()> {
    let opts = EbpfOptions {
        iface: iface.to_string(),
        xdp: match args.source.xdp {
            XdpArg::Off => XdpChoice::Off,
            XdpArg::Native => XdpChoice::Native,
            XdpArg::Skb => XdpChoice::Skb,
        },
    };
    let load = LoadOptions {
        split_vlans: args.source.split_vlans,
        ..LoadOptions::default()
    };
    let mut backend = EbpfBackend::attach_with(&opts, &load)?;
    // Scripts and tests wait for this line before sending traffic.
    eprintln!("tcpmon: watching {iface}");
    let mut table = FlowTable::new(monotonic_to_unix_offset_ns());
    let mut events = Vec::new();
    let mut snapshot = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let deadline = async {
        match args.duration {
            Some(secs) => tokio::time::sleep(Duration::from_secs_f64(secs)).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(deadline);
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot install the SIGTERM handler")?;
    loop {
        tokio::select! {
            r = backend.read_events(&mut events) => {
                r?;
                for ev in events.drain(..) {
                    table.on_event(&ev);
                }
            }
            _ = tick.tick() => {
                merge_snapshot(&backend, &mut table, &mut snapshot)?;
                if !args.json {
                    view::text::write_table(&table, &mut std::io::stdout().lock())?;
                }
            }
            _ = &mut deadline => break,
            _ = tokio::signal::ctrl_c() => break,
            _ = sigterm.recv() => break,
        }
    }
    // Events still queued and the map's final state complete the picture.
    while backend.try_read_events(&mut events) > 0 {
        for ev in events.drain(..) {
            table.on_event(&ev);
        }
    }
    merge_snapshot(&backend, &mut table, &mut snapshot)?;
    print_table(&table, args)?;
    let counters = backend.counters()?;
    log::info!("kernel counters: {counters:?}");
    Ok(())
}

fn merge_snapshot(
    backend: &EbpfBackend,
    table: &mut FlowTable,
    snapshot: &mut Vec<(tcpmon_common::FlowKey, tcpmon_common::FlowRecord)>,
) -> Result<()> {
    backend.snapshot(snapshot)?;
    for (key, rec) in snapshot.drain(..) {
        table.merge(key, rec);
    }
    Ok(())
}
