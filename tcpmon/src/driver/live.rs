//! Live capture through the kernel programs, driven by tokio.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};

use super::{Output, output, print_table, top_options};
use crate::backend::ebpf::{
    EbpfBackend, EbpfOptions, LoadOptions, monotonic_now_ns, monotonic_to_unix_offset_ns,
};
use crate::backend::promisc;
use crate::cli::TopArgs;
use crate::engine::{FlowTable, Rates};
use crate::filter::{self, Filter};
use crate::view;
use crate::view::top::app::{Action, App};
use crate::view::top::model::At;
use crate::view::top::{Tui, spawn_event_reader};

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
        ..LoadOptions::default()
    };
    let mut backend = EbpfBackend::attach_with(&opts, &load)?;
    let _promisc = match args.no_promisc {
        true => None,
        false => Some(promisc::enable(iface)?),
    };
    // Scripts and tests wait for this line before sending traffic.
    eprintln!("tcpmon: watching {iface}");
    let out = output(args);
    let opts = top_options(args)?;
    // Ended connections leave the kernel's maps once they leave the screen.
    backend.set_linger(opts.purge.closed_ns);
    let mut table = FlowTable::new(monotonic_to_unix_offset_ns()).track_changes();
    let mut rates = Rates::new(opts.fast);
    let mut events = Vec::new();
    let mut snapshot = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_nanos(rates.step_ns()));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The screen: entered after attaching, so attach errors print plainly.
    let mut screen = match out {
        Output::Tui => Some((Tui::enter()?, spawn_event_reader(), App::new(opts.extras))),
        _ => None,
    };
    let mut last_redraw_ns = 0;
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
                merge_changed(&mut backend, &mut table, &mut snapshot)?;
                rates.sample(&mut table);
                match &mut screen {
                    Some((tui, _, app)) => {
                        let now = monotonic_now_ns();
                        // What the screen no longer shows leaves memory too.
                        table.retain(|c| opts.purge.keeps(c, now));
                        app.at = At { now_ns: now, since_ns: last_redraw_ns };
                        last_redraw_ns = now;
                        tui.draw(app, &opts.source(&table, &rates))?;
                    }
                    None if out == Output::Text => {
                        view::text::write_table(&table, &mut std::io::stdout().lock())?;
                    }
                    None => {}
                }
            }
            Some(ev) = next_key(&mut screen) => {
                if let Some((tui, _, app)) = &mut screen {
                    match app.on_event(&ev, tui.page()) {
                        Action::Quit => break,
                        Action::Redraw => tui.draw(app, &opts.source(&table, &rates))?,
                        Action::Nothing => {}
                    }
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
    merge_changed(&mut backend, &mut table, &mut snapshot)?;
    if screen.is_none() {
        print_table(&table, args)?;
    }
    let counters = backend.counters()?;
    log::info!("kernel counters: {counters:?}");
    let evicted = backend.flows_evicted()?;
    if evicted > 0 || table.evicted > 0 {
        eprintln!(
            "tcpmon: the kernel's full flow maps evicted {evicted} flows; {} open connections \
             went on as new ones (--max-flows raises the maps' size)",
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

type Screen = (
    Tui,
    tokio::sync::mpsc::UnboundedReceiver<ratatui::crossterm::event::Event>,
    App,
);

/// The next terminal event, or never when there is no screen.
async fn next_key(screen: &mut Option<Screen>) -> Option<ratatui::crossterm::event::Event> {
    match screen {
        Some((_, keys, _)) => keys.recv().await,
        None => std::future::pending().await,
    }
}

/// Takes in the records that changed since the last tick (every record on
/// the first one).
fn merge_changed(
    backend: &mut EbpfBackend,
    table: &mut FlowTable,
    snapshot: &mut Vec<(tcpmon_common::FlowKey, tcpmon_common::FlowRecord)>,
) -> Result<()> {
    backend.changed(snapshot)?;
    for (key, rec) in snapshot.drain(..) {
        table.merge(key, rec);
    }
    Ok(())
}
