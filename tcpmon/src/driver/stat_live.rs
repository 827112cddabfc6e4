//! `tcpmon stat -i IFACE`: the kernel's interval counters, on the clock
//! (see `run::stat_kernel`), through the same view as a replay.

use std::process::ExitCode;

use anyhow::{Context, Result, bail};

use crate::backend::ebpf::{EbpfBackend, EbpfOptions, LoadOptions, StatLoad, monotonic_now_ns};
use crate::backend::promisc;
use crate::cli::stat::StatArgs;
use crate::engine::stat::IntervalStats;
use crate::filter::Filter;
use crate::run::stat_kernel::StatKernel;
use crate::run::{self, Signals};
use crate::view::stat::view::{Printer, StatState, StatView};

/// Slot length with `-1` (one interval over the whole run): completed
/// slots are folded in as they end, so the kernel's ring never wraps.
const WHOLE_RUN_SLOT_NS: u64 = 1_000_000_000;
/// Link-header bytes `-l` adds: Ethernet's, as tcpstat adds them.
const ETHERNET_HEADER: u32 = 14;

pub(super) fn run(iface: &str, args: &StatArgs) -> Result<ExitCode> {
    let iface = match iface {
        "auto" => default_route_interface()?,
        name => name.to_string(),
    };
    // Compiled before anything is loaded, so an error in the expression
    // comes first, in tcpdump's words.
    let filter = args.filter.as_deref().map(Filter::compile).transpose()?;
    let interval_ns = match args.config.interval {
        Some(secs) => {
            let ns = (secs * 1e9).round();
            if !(1.0..=u64::MAX as f64).contains(&ns) {
                bail!("the interval {secs} s cannot be counted live: 1 ns at least");
            }
            ns as u64
        }
        None => WHOLE_RUN_SLOT_NS,
    };
    let grid = StatLoad {
        interval_ns,
        base_ns: monotonic_now_ns(),
        link_bytes: if args.link_size { ETHERNET_HEADER } else { 0 },
    };
    let load = LoadOptions {
        // Only the counters: no flows are tracked, so their maps stay small.
        flow_capacity: 1024,
        track_tcp: false,
        filter: filter.map(|f| f.insns().to_vec()),
        stat: Some(grid),
        kernel_log: args.kernel_log.filter(),
        ..LoadOptions::default()
    };
    let opts = EbpfOptions {
        iface: iface.clone(),
        ..EbpfOptions::default()
    };
    let backend = EbpfBackend::attach_with(&opts, &load)?;
    let _promisc = match args.promisc {
        true => Some(promisc::enable(&iface)?),
        false => None,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    runtime.block_on(live(&iface, args, &backend, grid))?;
    Ok(ExitCode::SUCCESS)
}

async fn live(iface: &str, args: &StatArgs, backend: &EbpfBackend, grid: StatLoad) -> Result<()> {
    let mut signals = Signals::with_report()?;
    // Lines are written as their interval ends: a monitor's output is
    // wanted when it happens, not when a buffer fills (tcpstat needed -F
    // for that when piped). Only SIGINT or SIGTERM ends a run here, so no
    // padding needs interrupting.
    let printer = Printer::new(args, true, None);
    let mut state = StatState::new(IntervalStats::new(args.config), printer);
    let mut source = StatKernel::new(backend, grid, args.config.capture_secs, &mut state);
    // Scripts and tests wait for this line.
    eprintln!("tcpmon: watching {iface}");
    let mut view = StatView::new(args.config.mode, std::io::stdout());
    run::run(
        &mut source,
        &mut view,
        &mut state,
        &mut signals,
        run::Options::default(),
    )
    .await?;
    Ok(())
}

/// `-i auto`: the interface of the default route, IPv4 first
/// (/proc/net/route), then IPv6 (/proc/net/ipv6_route), as tcpstat looked
/// for "an appropriate interface".
fn default_route_interface() -> Result<String> {
    let v4 = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
    let v6 = std::fs::read_to_string("/proc/net/ipv6_route").unwrap_or_default();
    default_v4(&v4).or_else(|| default_v6(&v6)).ok_or_else(|| {
        anyhow::anyhow!(
            "-i auto: no default route (in /proc/net/route or /proc/net/ipv6_route) names an \
             interface; give one with -i IFACE (`ip link` lists them)"
        )
    })
}

const RTF_UP: u32 = 0x1;
const RTF_REJECT: u32 = 0x200;

/// The usable default route with the lowest metric, from /proc/net/route:
/// `Iface Destination Gateway Flags RefCnt Use Metric Mask ...`, in hex.
fn default_v4(table: &str) -> Option<String> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let hex = |i: usize| f.get(i).and_then(|v| u32::from_str_radix(v, 16).ok());
            let (dest, flags, metric, mask) =
                (hex(1)?, hex(3)?, f.get(6)?.parse::<u32>().ok()?, hex(7)?);
            let usable = dest == 0 && mask == 0 && flags & RTF_UP != 0 && flags & RTF_REJECT == 0;
            (usable && f[0] != "lo").then(|| (metric, f[0].to_string()))
        })
        .min()
        .map(|(_, iface)| iface)
}

/// The same from /proc/net/ipv6_route: `dest plen src splen nexthop metric
/// refcnt use flags iface`, in hex. The kernel lists unreachable defaults
/// on `lo`; those are rejects, not routes.
fn default_v6(table: &str) -> Option<String> {
    table
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let hex = |i: usize| f.get(i).and_then(|v| u32::from_str_radix(v, 16).ok());
            let default = f.first()?.bytes().all(|b| b == b'0') && hex(1)? == 0;
            let (metric, flags, iface) = (hex(5)?, hex(8)?, *f.get(9)?);
            let usable = default && flags & RTF_UP != 0 && flags & RTF_REJECT == 0;
            (usable && iface != "lo").then(|| (metric, iface.to_string()))
        })
        .min()
        .map(|(_, iface)| iface)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_routes_from_proc() {
        let v4 = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                  wlan0\t00000000\t0102A8C0\t0003\t0\t0\t600\t00000000\t0\t0\t0\n\
                  eth0\t00000000\t0101A8C0\t0003\t0\t0\t100\t00000000\t0\t0\t0\n\
                  eth0\t0001A8C0\t00000000\t0001\t0\t0\t100\t00FFFFFF\t0\t0\t0\n";
        assert_eq!(default_v4(v4).as_deref(), Some("eth0"));
        // A network route alone is no default.
        let only_net = "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\n\
                        eth0\t0001A8C0\t00000000\t0001\t0\t0\t100\t00FFFFFF\n";
        assert_eq!(default_v4(only_net), None);
        let v6 = "00000000000000000000000000000000 00 00000000000000000000000000000000 00 \
                  fe800000000000000000000000000001 00000400 00000001 00000000 00450003 enp1s0\n\
                  00000000000000000000000000000000 00 00000000000000000000000000000000 00 \
                  00000000000000000000000000000000 ffffffff 00000001 00000000 00200200 lo\n\
                  fd000000000000000000000000000000 40 00000000000000000000000000000000 00 \
                  00000000000000000000000000000000 00000100 00000001 00000000 00000001 eth1\n";
        assert_eq!(default_v6(v6).as_deref(), Some("enp1s0"));
        assert_eq!(default_v6(""), None);
    }
}
