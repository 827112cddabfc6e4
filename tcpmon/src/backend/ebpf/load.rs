//! Loading the embedded kernel object: the programs' names, the options
//! that become the programs' read-only globals and map sizes, and the
//! program arrays and the filter's programs in place before anything is
//! attached.

use std::io;

use anyhow::{Context, Result, anyhow, bail};
use aya::maps::ProgramArray;
use aya::programs::{ProgramError, SchedClassifier, Xdp};
use aya::util::KernelVersion;
use aya::{Ebpf, EbpfLoader};

use tcpmon_common::StatSlot;
use tcpmon_common::cbpf::{self, Insn};

use super::explain::{explain_load, explain_program};
use super::filter::set_filter;
use super::kernel_log::aya_level;

/// The kernel object, built by `cargo xtask build-ebpf` and committed, so
/// that a stable toolchain alone builds tcpmon.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!("../../../bpf/tcpmon.bpf.o");

/// TC classifier: egress, and ingress unless XDP takes ingress over.
pub const PROG_TC: &str = "tcpmon_tc";
/// XDP program for ingress, when asked for.
pub const PROG_XDP: &str = "tcpmon_xdp";
/// With a filter, the two above go on with the packets it keeps in these
/// (tail calls; see tcpmon-ebpf's filter.rs). Loaded only then.
const PROG_TC_REST: &str = "tcpmon_tc_rest";
const PROG_XDP_REST: &str = "tcpmon_xdp_rest";
/// With a filter and `--kernel-log debug` or above, the filter hands the
/// packets it rejects to these, which count and log them. Loaded only then.
pub(super) const PROG_TC_REJECTED: &str = "tcpmon_tc_rejected";
pub(super) const PROG_XDP_REJECTED: &str = "tcpmon_xdp_rejected";
/// Empty programs: the hooks' own cost, for benchmarks.
pub const PROG_BENCH_EMPTY_TC: &str = "bench_empty_tc";
pub const PROG_BENCH_EMPTY_XDP: &str = "bench_empty_xdp";
/// Parsing alone, and parsing plus the flow-map lookup: the benchmark's
/// cost breakdown. Not loaded by `load`; the benchmark loads them.
pub const PROG_BENCH_PARSE_TC: &str = "bench_parse_tc";
pub const PROG_BENCH_LOOKUP_TC: &str = "bench_lookup_tc";

const TC_PROGRAMS: [&str; 2] = [PROG_TC, PROG_BENCH_EMPTY_TC];
const XDP_PROGRAMS: [&str; 2] = [PROG_XDP, PROG_BENCH_EMPTY_XDP];

/// How to load the object (`attach` uses the defaults, `attach_with` these).
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Entries of `FLOWS4` (IPv4 flows) and of `FLOWS` (IPv6), each. An
    /// LRU hash allocates all of them up front
    /// (about 230 bytes each with the kernel's overhead), so tests use
    /// small maps.
    pub flow_capacity: u32,
    /// Key flows by VLAN as well (`FlowKey::vlan`, `--split-vlans`), for
    /// overlapping address spaces on different VLANs.
    pub split_vlans: bool,
    /// Time steady segments (data and pure ACKs on an established flow,
    /// `tcpmon_common::is_steady`) with the kernel's coarse monotonic clock
    /// where it has one (Linux >= 5.11). They only set `last_ns`, which
    /// then lags the precise clock by a tick (1-10 ms; rarely two) at most
    /// and never goes back; handshake, teardown and first-packet times stay
    /// precise.
    pub coarse_clock: bool,
    /// Emit `Unreach` events for ICMP/ICMPv6 destination-unreachables that
    /// quote a pending handshake (`peek --icmp`).
    pub icmp: bool,
    /// A classic-BPF program the kernel runs on every packet before
    /// anything else (`crate::filter::Filter::insns`, compiled for
    /// Ethernet), translated to eBPF; packets it rejects are only counted
    /// (`Counter::Filtered`). Without one the filter path is pruned from
    /// the programs at load time and costs nothing.
    pub filter: Option<Vec<Insn>>,
    /// Count every packet into the `stat` view's interval slots (see
    /// `StatLoad`); without it that path is pruned at load time.
    pub stat: Option<StatLoad>,
    /// Parse TCP and keep flow records and events. `stat` alone turns it
    /// off, which prunes the whole tracking path at load time.
    pub track_tcp: bool,
    /// Count established flows' steady segments in per-CPU cache slots
    /// (`tcpmon_common::cache`), which `snapshot` and `lookup` fold into
    /// the records they read. Off: every segment goes to its record in the
    /// map (tests and benchmarks compare the two).
    pub flow_cache: bool,
    /// Compare-and-exchange and atomic OR in the update rule where the
    /// kernel has them (5.12); off, plain stores (benchmarks compare).
    pub full_atomics: bool,
    /// The kernel programs' diagnostics down to this level (`--kernel-log`,
    /// see `kernel_log`); `Off` prunes them all at load time.
    pub kernel_log: log::LevelFilter,
}

/// How the kernel fills `STAT` (tcpmon-ebpf's stat.rs): interval `epoch`
/// covers CLOCK_MONOTONIC `[base_ns + epoch * interval_ns, + interval_ns)`,
/// and lives in slot `StatSlot::index(epoch)` of each CPU.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatLoad {
    /// Above 0.
    pub interval_ns: u64,
    pub base_ns: u64,
    /// Link-header bytes every size includes: 0, or 14 with `-l`.
    pub link_bytes: u32,
}

impl StatLoad {
    /// The interval CLOCK_MONOTONIC time `mono_ns` falls in.
    pub fn epoch(&self, mono_ns: u64) -> u64 {
        StatSlot::epoch(mono_ns, self.base_ns, self.interval_ns)
    }

    /// Where interval `epoch` starts.
    pub fn start(&self, epoch: u64) -> u64 {
        self.base_ns + epoch * self.interval_ns
    }
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            flow_capacity: tcpmon_common::FLOW_CAPACITY,
            split_vlans: false,
            coarse_clock: true,
            icmp: false,
            filter: None,
            stat: None,
            track_tcp: true,
            flow_cache: true,
            full_atomics: true,
            kernel_log: log::LevelFilter::Off,
        }
    }
}

/// Name of the kernel programs' read-only switch for `split_vlans`.
const GLOBAL_SPLIT_VLANS: &str = "SPLIT_VLANS";
/// And for `coarse_clock` (`bpf_ktime_get_coarse_ns`, Linux >= 5.11).
const GLOBAL_COARSE_CLOCK: &str = "COARSE_CLOCK";
/// ... and for `icmp`.
const GLOBAL_ICMP_UNREACH: &str = "ICMP_UNREACH";
/// ... for whether a filter is given (see tcpmon-ebpf's filter.rs).
const GLOBAL_FILTER_ON: &str = "FILTER_ON";
/// ... for TCP tracking (`track_tcp`).
const GLOBAL_TRACK_TCP: &str = "TRACK_TCP";
/// ... for the per-CPU flow cache (`flow_cache`).
const GLOBAL_FLOW_CACHE: &str = "FLOW_CACHE";
/// ... for compare-and-exchange and atomic OR in the update rule (Linux >=
/// 5.12; see `tcpmon_common::update::Shared`).
const GLOBAL_FULL_ATOMICS: &str = "FULL_ATOMICS";
/// The `stat` counters' settings (`StatLoad`); an interval of 0 is off.
const GLOBAL_STAT_INTERVAL_NS: &str = "STAT_INTERVAL_NS";
const GLOBAL_STAT_BASE_NS: &str = "STAT_BASE_NS";
const GLOBAL_STAT_LINK_BYTES: &str = "STAT_LINK_BYTES";
/// aya-log-ebpf's level (`kernel_log`; 0 is off).
const GLOBAL_AYA_LOG_LEVEL: &str = "AYA_LOG_LEVEL";

/// aya-log's ring buffer.
const MAP_AYA_LOGS: &str = "AYA_LOGS";
/// aya-log-ebpf's size of it.
const AYA_LOGS_BYTES: u32 = 1 << 17;

fn log_buffer_bytes(log_level: u8) -> u32 {
    if log_level != 0 {
        return AYA_LOGS_BYTES;
    }
    // SAFETY: a plain query.
    match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
        page @ 4096.. => page as u32,
        _ => 4096,
    }
}

/// Loads the embedded object and all its programs into the kernel (the
/// verifier runs here), attaching nothing.
pub fn load() -> Result<Ebpf> {
    load_with(&LoadOptions::default())
}

/// `load` with options; the one way tcpmon loads its programs.
pub fn load_with(opts: &LoadOptions) -> Result<Ebpf> {
    load_object(OBJECT, opts)
}

/// `load_with` for another build of the kernel object (`kernel_cost
/// --baseline` times one against the embedded one). An object built
/// before the kernel log loads as long as `kernel_log` is off.
pub fn load_object(object: &[u8], opts: &LoadOptions) -> Result<Ebpf> {
    raise_memlock_limit();
    // Checked before anything is loaded.
    if let Some(insns) = &opts.filter {
        cbpf::validate(insns)
            .map_err(|e| anyhow!("the filter program cannot run in the kernel: {e:?}"))?;
    }
    // The coarse clock is probed: the verifier refuses its helper where the
    // kernel lacks it (before 5.11), and with the switch off it prunes the
    // call, so a second load works there.
    let mut ebpf = match load_once(object, opts, opts.coarse_clock) {
        Err(e) if opts.coarse_clock => {
            log::info!("loading with the coarse clock failed ({e:#}); using the precise clock");
            load_once(object, opts, false)
        }
        loaded => loaded,
    }?;
    // In its arrays before any program is attached, so no packet ever
    // meets an empty one.
    if let Some(insns) = &opts.filter {
        set_filter(&mut ebpf, insns)?;
    }
    Ok(ebpf)
}

fn load_once(object: &[u8], opts: &LoadOptions, coarse_clock: bool) -> Result<Ebpf> {
    let split = u8::from(opts.split_vlans);
    let coarse = u8::from(coarse_clock);
    let icmp = u8::from(opts.icmp);
    let track = u8::from(opts.track_tcp);
    // Linux 6.1's verifier walks the cache's paths after the whole rule
    // for minutes under QEMU (6.18 verifies 367k instructions with it, 27k
    // without); 6.12 is the oldest kernel tested with it.
    let flow_cache = u8::from(opts.flow_cache && kernel_at_least(6, 12));
    if opts.flow_cache && flow_cache == 0 {
        log::info!("Linux before 6.12: no per-CPU flow cache, every segment goes to the flow map");
    }
    let full_atomics = u8::from(opts.full_atomics && kernel_at_least(5, 12));
    if opts.full_atomics && full_atomics == 0 {
        log::warn!(
            "Linux before 5.12: sequence marks without compare-and-exchange, two CPUs sending one \
             direction's data at once can hide a retransmission"
        );
    }
    let stat = opts.stat.unwrap_or_default();
    if opts.stat.is_some() && stat.interval_ns == 0 {
        bail!("the stat interval must be above 0 ns");
    }
    let filter = opts.filter.is_some();
    let filter_on = u8::from(filter);
    let log_level = aya_level(opts.kernel_log);
    let mut ebpf = EbpfLoader::new()
        .map_max_entries(tcpmon_common::MAP_FLOWS, opts.flow_capacity)
        .map_max_entries(tcpmon_common::MAP_FLOWS4, opts.flow_capacity)
        .override_global(GLOBAL_SPLIT_VLANS, &split, true)
        .override_global(GLOBAL_COARSE_CLOCK, &coarse, true)
        .override_global(GLOBAL_ICMP_UNREACH, &icmp, true)
        .override_global(GLOBAL_FILTER_ON, &filter_on, true)
        .override_global(GLOBAL_TRACK_TCP, &track, true)
        .override_global(GLOBAL_FLOW_CACHE, &flow_cache, true)
        .override_global(GLOBAL_FULL_ATOMICS, &full_atomics, true)
        .override_global(GLOBAL_STAT_INTERVAL_NS, &stat.interval_ns, true)
        .override_global(GLOBAL_STAT_BASE_NS, &stat.base_ns, true)
        .override_global(GLOBAL_STAT_LINK_BYTES, &stat.link_bytes, true)
        .override_global(GLOBAL_AYA_LOG_LEVEL, &log_level, log_level != 0)
        // Nothing writes to aya-log's ring buffer when the log is off: its
        // smallest size then (one page) instead of 128 KiB.
        .map_max_entries(MAP_AYA_LOGS, log_buffer_bytes(log_level))
        .load(object)
        .map_err(explain_load)?;
    for name in TC_PROGRAMS {
        load_tc(&mut ebpf, name)?;
    }
    for name in XDP_PROGRAMS {
        load_xdp(&mut ebpf, name)?;
    }
    if filter {
        // In their arrays before any program is attached, so no packet the
        // filter keeps misses them.
        load_tc(&mut ebpf, PROG_TC_REST)?;
        load_xdp(&mut ebpf, PROG_XDP_REST)?;
        set_rest(&mut ebpf, tcpmon_common::MAP_REST_TC, PROG_TC_REST)?;
        set_rest(&mut ebpf, tcpmon_common::MAP_REST_XDP, PROG_XDP_REST)?;
        if opts.kernel_log >= log::LevelFilter::Debug {
            load_tc(&mut ebpf, PROG_TC_REJECTED)?;
            load_xdp(&mut ebpf, PROG_XDP_REJECTED)?;
            set_rest(&mut ebpf, tcpmon_common::MAP_REJECTED_TC, PROG_TC_REJECTED)?;
            set_rest(
                &mut ebpf,
                tcpmon_common::MAP_REJECTED_XDP,
                PROG_XDP_REJECTED,
            )?;
        }
    }
    Ok(ebpf)
}

fn load_tc(ebpf: &mut Ebpf, name: &str) -> Result<()> {
    let prog: &mut SchedClassifier = program(ebpf, name)?
        .try_into()
        .with_context(|| format!("{name} in the embedded object is not a TC classifier"))?;
    prog.load().map_err(|e| explain_program(name, e))
}

fn load_xdp(ebpf: &mut Ebpf, name: &str) -> Result<()> {
    let prog: &mut Xdp = program(ebpf, name)?
        .try_into()
        .with_context(|| format!("{name} in the embedded object is not an XDP program"))?;
    prog.load().map_err(|e| explain_program(name, e))
}

/// Puts the loaded program `name` at entry 0 of the program array `map`.
fn set_rest(ebpf: &mut Ebpf, map: &str, name: &str) -> Result<()> {
    let fd = program(ebpf, name)?
        .fd()
        .and_then(|fd| fd.try_clone().map_err(ProgramError::from))
        .with_context(|| format!("{name} has no file descriptor"))?;
    let map = ebpf
        .map_mut(map)
        .ok_or_else(|| anyhow!("the embedded eBPF object has no {map} map"))?;
    ProgramArray::try_from(map)
        .and_then(|mut array| array.set(0, &fd, 0))
        .with_context(|| format!("putting {name} into its program array"))
}

pub(super) fn program<'a>(
    ebpf: &'a mut Ebpf,
    name: &str,
) -> Result<&'a mut aya::programs::Program> {
    ebpf.program_mut(name).ok_or_else(|| {
        anyhow!(
            "the embedded eBPF object has no program {name}: tcpmon/bpf/tcpmon.bpf.o is stale; \
             run `cargo xtask build-ebpf`"
        )
    })
}

/// Before 5.11 BPF memory counted against RLIMIT_MEMLOCK, whose default is
/// far below the flow map's size. Best effort: without the right to raise it
/// the load fails anyway, with the permission message.
fn raise_memlock_limit() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: a plain syscall on a stack value.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        log::debug!(
            "could not raise RLIMIT_MEMLOCK: {}",
            io::Error::last_os_error()
        );
    }
}

pub(super) fn kernel_at_least(major: u8, minor: u8) -> bool {
    KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(major, minor, 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_intervals_on_the_grid() {
        let g = StatLoad {
            base_ns: 1_000,
            interval_ns: 100,
            link_bytes: 0,
        };
        assert_eq!((g.epoch(999), g.epoch(1_000), g.epoch(1_199)), (0, 0, 1));
        assert_eq!(g.start(2), 1_200);
    }
}
