//! `tcpmon stat -i IFACE`: the kernel's interval counters, on the clock.
//!
//! The kernel counts every packet into the slot of its interval (see
//! tcpmon-ebpf's stat.rs); interval 0 begins when tcpmon starts loading.
//! A few clock ticks after each interval ends, its slot is read (summed
//! over CPUs) and the interval printed through the same `IntervalStats` and
//! `Printer` as a replay, so a line comes on time whether or not packets
//! arrive. SIGUSR1 prints the interval so far at once; what follows it up
//! to the grid's next boundary is the next line (the grid stays). SIGINT
//! and SIGTERM print the interval so far, as a replay's last, and end.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::signal::unix::{SignalKind, signal};

use super::stat::{Printer, write_summary};
use crate::backend::ebpf::{
    EbpfBackend, EbpfOptions, LoadOptions, StatLoad, monotonic_now_ns, monotonic_to_unix_offset_ns,
};
use crate::backend::promisc;
use crate::cli::stat::StatArgs;
use crate::engine::stat::IntervalStats;
use crate::filter::Filter;
use tcpmon_common::StatCounters;

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
    runtime.block_on(live_loop(&iface, args, &backend, grid))?;
    Ok(ExitCode::SUCCESS)
}

/// Reads intervals off the kernel's slots into `IntervalStats`, in order.
struct Reader<'a> {
    backend: &'a EbpfBackend,
    /// The kernel's intervals on CLOCK_MONOTONIC.
    grid: StatLoad,
    /// Unix time = CLOCK_MONOTONIC + this.
    offset_ns: i64,
    /// The first interval not yet read whole.
    next: u64,
    /// What partial reads (SIGUSR1) already took from interval `next`.
    taken: StatCounters,
    /// The interval being counted did not begin on the grid (the first, or
    /// the rest after a SIGUSR1 line): it closes over its real length.
    off_grid: bool,
    stats: IntervalStats,
}

impl Reader<'_> {
    fn secs(&self, mono_ns: u64) -> f64 {
        (mono_ns as i64 + self.offset_ns) as f64 / 1e9
    }

    /// Interval `epoch` so far; warns when a CPU's slot had been reused
    /// before it was read.
    fn read(&self, epoch: u64) -> Result<StatCounters> {
        let r = self.backend.stat_interval(epoch)?;
        if r.overwritten > 0 {
            eprintln!(
                "tcpmon: {} CPUs had counted into an interval's slot again before tcpmon read it \
                 (it fell {} intervals behind): those packets are missing",
                r.overwritten,
                tcpmon_common::stat::STAT_SLOTS
            );
        }
        Ok(r.counters)
    }

    /// Reads and closes every interval that ended by `mono_ns`.
    fn advance(&mut self, mono_ns: u64, out: &mut Printer) -> Result<()> {
        while self.grid.start(self.next + 1) <= mono_ns {
            let c = self.read(self.next)?.since(&self.taken);
            self.stats.add_counters(&c);
            self.taken = StatCounters::default();
            self.next += 1;
            // `-1` (no interval): only folded in, never closed on the grid.
            if self.stats.interval().is_some() {
                let end = self.secs(self.grid.start(self.next));
                self.stats.close_at(end, self.off_grid, out);
                self.off_grid = false;
            }
        }
        Ok(())
    }

    /// Takes what the current interval has counted so far (after
    /// `advance` to the same time).
    fn take_partial(&mut self) -> Result<()> {
        let so_far = self.read(self.next)?;
        self.stats.add_counters(&so_far.since(&self.taken));
        self.taken = so_far;
        Ok(())
    }
}

async fn live_loop(
    iface: &str,
    args: &StatArgs,
    backend: &EbpfBackend,
    grid: StatLoad,
) -> Result<()> {
    let mut usr1 = signal(SignalKind::user_defined1()).context("cannot handle SIGUSR1")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    // Lines are written as their interval ends: a monitor's output is
    // wanted when it happens, not when a buffer fills (tcpstat needed -F
    // for that when piped).
    let mut out = Printer::new(args, true);
    let started = monotonic_now_ns();
    let mut r = Reader {
        backend,
        grid,
        offset_ns: monotonic_to_unix_offset_ns(),
        next: grid.epoch(started),
        taken: StatCounters::default(),
        off_grid: true,
        stats: IntervalStats::new(args.config),
    };
    r.stats.start(r.secs(started));
    let grace = grace_ns();
    let end = args.config.capture_secs.map(|s| started + (s * 1e9) as u64);
    // Scripts and tests wait for this line.
    eprintln!("tcpmon: watching {iface}");
    let stop_at = loop {
        // Read an interval a few ticks after it ends: the kernel stamps
        // packets with the coarse clock, which may lag by that much.
        let mut wake = r.grid.start(r.next + 1) + grace;
        if let Some(end) = end {
            wake = wake.min(end + grace);
        }
        let sleep = Duration::from_nanos(wake.saturating_sub(monotonic_now_ns()));
        tokio::select! {
            _ = tokio::time::sleep(sleep) => {
                let now = monotonic_now_ns();
                if let Some(end) = end.filter(|&e| now >= e + grace) {
                    break end;
                }
                r.advance(now.saturating_sub(grace), &mut out)?;
            }
            _ = usr1.recv() => {
                let now = monotonic_now_ns();
                r.advance(now, &mut out)?;
                r.take_partial()?;
                let t = r.secs(now);
                r.stats.close_at(t, true, &mut out);
                r.off_grid = true;
            }
            _ = int.recv() => break monotonic_now_ns(),
            _ = term.recv() => break monotonic_now_ns(),
        }
        if out.out.broken() {
            return Ok(());
        }
    };
    r.advance(stop_at, &mut out)?;
    r.take_partial()?;
    let t = r.secs(stop_at);
    let totals = r.stats.finish_at(t, &mut out);
    out.out.flush();
    write_summary(args, &totals)
}

/// How long after an interval's end its slot is read: the coarse clock's
/// tick (its resolution) three times over, plus a margin, so packets it
/// stamped late and programs still running on other CPUs are counted.
fn grace_ns() -> u64 {
    let mut res = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: writes one timespec on our stack.
    let tick = match unsafe { libc::clock_getres(libc::CLOCK_MONOTONIC_COARSE, &mut res) } {
        0 => res.tv_sec as u64 * 1_000_000_000 + res.tv_nsec as u64,
        // The longest tick Linux has (HZ=100).
        _ => 10_000_000,
    };
    3 * tick + 5_000_000
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
