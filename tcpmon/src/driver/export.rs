//! `tcpmon export` (Prometheus metrics) and `tcpmon log` (a JSON line per
//! ended connection): both keep the flow table and follow its changes,
//! from the kernel live or from a capture on packet time.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use prometheus_client::registry::Registry;

use super::replay::{open, pcap_filters, report};
use super::runtime;
use crate::backend::ebpf::{EbpfBackend, EbpfOptions, LoadOptions, monotonic_to_unix_offset_ns};
use crate::backend::pcap::Replayer;
use crate::backend::promisc;
use crate::cli::{EndArgs, ExportArgs, LogArgs, SourceArgs};
use crate::engine::FlowTable;
use crate::engine::handshake::DEFAULT_MAX_PENDING;
use crate::engine::ledger::EndRules;
use crate::filter::{self, Filter};
use crate::run::{self, Signals, View, capture::Capture, kernel::Kernel};
use crate::view::log::{LogView, Sink};
use crate::view::metrics::{MetricsOptions, MetricsView, http};
use crate::view::peek::Locality;
use crate::view::peek::view::AtEnd;

/// Time between ticks (changes taken, ends found, timeouts): the clock
/// live, packet time in a replay.
const TICK: Duration = Duration::from_secs(1);

fn end_rules(args: &EndArgs) -> Result<EndRules> {
    let secs = |what: &str, v: f64| -> Result<u64> {
        if !v.is_finite() || v < 0.0 {
            bail!("{what} must be a number of seconds, not {v}");
        }
        Ok((v * 1e9) as u64)
    };
    let timeout = secs("-t", args.timeout)?;
    if timeout == 0 {
        bail!("-t must be a positive number of seconds");
    }
    Ok(EndRules {
        linger_ns: secs("-r", args.linger)?,
        handshake_timeout_ns: timeout,
        idle_ns: args
            .idle_timeout
            .map(|v| secs("--idle-timeout", v))
            .transpose()?,
    })
}

fn nothing_to_watch() -> anyhow::Error {
    anyhow::anyhow!(
        "nothing to watch: give -i IFACE to watch an interface live, or -T FILE to replay a capture"
    )
}

pub fn export(args: &ExportArgs) -> Result<ExitCode> {
    let rules = end_rules(&args.end)?;
    let mut ports = args.port_label.clone();
    ports.sort_unstable();
    ports.dedup();
    let opts = |locality, at_end| MetricsOptions {
        ports: ports.clone(),
        timeout_ns: rules.handshake_timeout_ns,
        max_pending: DEFAULT_MAX_PENDING,
        icmp: args.icmp,
        rules,
        locality,
        at_end,
    };
    let fixed = |set: std::collections::HashSet<std::net::IpAddr>| Locality::Fixed(set);
    match (&args.source.read, &args.source.interface) {
        (Some(path), _) => {
            let locality = match args.local.is_empty() {
                true => Locality::Answering(Default::default()),
                false => fixed(args.local.iter().copied().collect()),
            };
            let out = std::io::BufWriter::new(std::io::stdout());
            let view = MetricsView::new(opts(locality, AtEnd::ExpireAll), Some(out));
            replay(path, &args.source, &args.filter, true, view)
        }
        (None, Some(iface)) => {
            // Taken first: a port in use is the first thing to hear of.
            let listener = http::bind(args.listen)?;
            let local = match args.local.is_empty() {
                true => super::peek::live::interface_addresses(iface)?,
                false => args.local.iter().copied().collect(),
            };
            let view =
                MetricsView::<std::io::Sink>::new(opts(fixed(local), AtEnd::ExpireDue), None);
            let serve = Some((listener, view.registry()));
            let live = Live {
                iface,
                source: &args.source,
                filter: &args.filter,
                icmp: args.icmp,
                promisc: args.end.promisc,
                linger_ns: rules.linger_ns,
                events: true,
            };
            eprintln!("tcpmon: metrics on http://{}/metrics", args.listen);
            live.run(view, serve)
        }
        (None, None) => Err(nothing_to_watch()),
    }
}

pub fn log(args: &LogArgs) -> Result<ExitCode> {
    let rules = end_rules(&args.end)?;
    if args.source.read.is_none() && args.source.interface.is_none() {
        return Err(nothing_to_watch());
    }
    // Opened first: a path that cannot be written is the first error.
    let view = LogView::new(rules, Sink::open(args.write.as_deref())?);
    match (&args.source.read, &args.source.interface) {
        (Some(path), _) => replay(path, &args.source, &args.filter, false, view),
        (_, Some(iface)) => Live {
            iface,
            source: &args.source,
            filter: &args.filter,
            icmp: false,
            promisc: args.end.promisc,
            linger_ns: rules.linger_ns,
            events: false,
        }
        .run(view, None),
        (None, None) => Err(nothing_to_watch()),
    }
}

/// Runs `view` over a capture, on packet time.
fn replay<V: View>(
    path: &Path,
    source: &SourceArgs,
    filter: &[String],
    events: bool,
    mut view: V,
) -> Result<ExitCode> {
    let mut reader = open(path)?;
    let mut filters = pcap_filters(&reader, filter::expression(filter))?;
    runtime()?.block_on(async {
        let mut signals = Signals::with_reopen()?;
        let step = TICK.as_nanos() as u64;
        let replayer = Replayer::new(
            &mut reader,
            source.split_vlans,
            filters.as_mut(),
            Some(step),
        );
        let mut source = Capture::new(replayer, events, false);
        let mut table = FlowTable::new(0).track_changes();
        let stopped = run::run(
            &mut source,
            &mut view,
            &mut table,
            &mut signals,
            run::Options::default(),
        )
        .await;
        drop(view);
        stopped?;
        let replay = source.into_replay();
        if let Some(e) = replay.filter_error {
            return Err(anyhow::Error::from(e).context(path.display().to_string()));
        }
        Ok(report(path, replay))
    })
}

/// A live run's setup.
struct Live<'a> {
    iface: &'a str,
    source: &'a SourceArgs,
    filter: &'a [String],
    icmp: bool,
    promisc: bool,
    linger_ns: u64,
    /// Hand the kernel's events to the view (handshakes).
    events: bool,
}

impl Live<'_> {
    /// Attaches to the interface and runs `view` until SIGINT or SIGTERM,
    /// serving the metrics on the runtime meanwhile when `serve` is given.
    fn run<V: View>(
        self,
        mut view: V,
        serve: Option<(std::net::TcpListener, Arc<Registry>)>,
    ) -> Result<ExitCode> {
        let opts = EbpfOptions {
            iface: self.iface.to_string(),
            xdp: self.source.xdp.choice(),
        };
        // Compiled before anything is loaded, so an error in the expression
        // comes first, in tcpdump's words.
        let filter = filter::expression(self.filter)
            .map(|e| Filter::compile(&e))
            .transpose()?;
        let load = LoadOptions {
            icmp: self.icmp,
            split_vlans: self.source.split_vlans,
            flow_capacity: self.source.max_flows,
            filter: filter.map(|f| f.insns().to_vec()),
            kernel_log: self.source.kernel_log.level.filter(),
            ..LoadOptions::default()
        };
        let mut backend = EbpfBackend::attach_with(&opts, &load)?;
        let _promisc = match self.promisc {
            true => Some(promisc::enable(self.iface)?),
            false => None,
        };
        // Ended connections leave the kernel's maps once they ended here.
        backend.set_linger(self.linger_ns);
        runtime()?.block_on(async {
            let server = match serve {
                Some((listener, registry)) => Some(http::serve(listener, registry)?),
                None => None,
            };
            let mut signals = Signals::with_reopen()?;
            // Scripts and tests wait for this line before sending traffic.
            eprintln!("tcpmon: watching {}", self.iface);
            let mut table = FlowTable::new(monotonic_to_unix_offset_ns()).track_changes();
            let mut source = Kernel::new(&mut backend, TICK, true, self.events);
            let stopped = run::run(
                &mut source,
                &mut view,
                &mut table,
                &mut signals,
                run::Options::default(),
            )
            .await;
            if let Some(s) = server {
                s.abort();
            }
            stopped.context("the run stopped")?;
            Ok(ExitCode::SUCCESS)
        })
    }
}
