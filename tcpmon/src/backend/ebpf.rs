//! The live backend: loads the kernel programs built from `tcpmon-ebpf`,
//! hooks them to one interface, and reads what they record (the `FLOWS`
//! map, the `EVENTS` ring buffer, the `COUNTERS` array and, for `stat`,
//! the `STAT` interval slots).
//!
//! Everything is attached as a BPF link where the kernel has links (tcx on
//! Linux >= 6.6, XDP links on >= 5.9): a link lives as long as its file
//! descriptor, so even a SIGKILLed tcpmon leaves nothing behind.

use std::io;
use std::os::fd::{AsFd, AsRawFd};

use anyhow::{Context, Result, anyhow, bail};
use aya::maps::{Array, Map, MapData, MapError, PerCpuArray, ProgramArray, RingBuf};
use aya::programs::tc::{self, TcAttachOptions};
use aya::programs::{LinkOrder, ProgramError, SchedClassifier, TcAttachType, Xdp, XdpMode};
use aya::util::KernelVersion;
use aya::{Ebpf, EbpfError, EbpfLoader};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use tcpmon_common::cbpf::{self, Insn, Program};
use tcpmon_common::{
    CacheKey, CacheSlot, Checked, Counter, Event, EventBits, FlowKey, FlowKey4, FlowRecord,
    FlowRecordBits, StatCounters, StatSlot, UnknownValue, decode,
};

/// The kernel object, built by `cargo xtask build-ebpf` and committed, so
/// that a stable toolchain alone builds tcpmon.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!("../../bpf/tcpmon.bpf.o");

/// TC classifier: egress, and ingress unless XDP takes ingress over.
pub const PROG_TC: &str = "tcpmon_tc";
/// XDP program for ingress, when asked for.
pub const PROG_XDP: &str = "tcpmon_xdp";
/// With a filter, the two above go on with the packets it keeps in these
/// (tail calls; see tcpmon-ebpf's filter.rs). Loaded only then.
const PROG_TC_REST: &str = "tcpmon_tc_rest";
const PROG_XDP_REST: &str = "tcpmon_xdp_rest";
/// Empty programs: the hooks' own cost, for benchmarks.
pub const PROG_BENCH_EMPTY_TC: &str = "bench_empty_tc";
pub const PROG_BENCH_EMPTY_XDP: &str = "bench_empty_xdp";
/// Parsing alone, and parsing plus the flow-map lookup: the benchmark's
/// cost breakdown. Not loaded by `load`; the benchmark loads them.
pub const PROG_BENCH_PARSE_TC: &str = "bench_parse_tc";
pub const PROG_BENCH_LOOKUP_TC: &str = "bench_lookup_tc";

const TC_PROGRAMS: [&str; 2] = [PROG_TC, PROG_BENCH_EMPTY_TC];
const XDP_PROGRAMS: [&str; 2] = [PROG_XDP, PROG_BENCH_EMPTY_XDP];

/// Whether and how to attach the XDP program.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum XdpChoice {
    /// TC sees both directions.
    #[default]
    Off,
    /// XDP in the driver; the driver must support it.
    Native,
    /// Generic XDP in the network stack; works on any device.
    Skb,
}

#[derive(Clone, Debug, Default)]
pub struct EbpfOptions {
    pub iface: String,
    pub xdp: XdpChoice,
}

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
    /// Ethernet); packets it rejects are only counted
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

/// One interval's counters read from `STAT`, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatRead {
    pub counters: StatCounters,
    /// CPUs whose slot already held a later interval: what they counted in
    /// this one was overwritten before it was read.
    pub overwritten: u32,
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
        }
    }
}

/// Name of the kernel programs' read-only switch for `split_vlans`.
const GLOBAL_SPLIT_VLANS: &str = "SPLIT_VLANS";
/// And for `coarse_clock` (`bpf_ktime_get_coarse_ns`, Linux >= 5.11).
const GLOBAL_COARSE_CLOCK: &str = "COARSE_CLOCK";
/// ... and for `icmp`.
const GLOBAL_ICMP_UNREACH: &str = "ICMP_UNREACH";
/// Name of the kernel programs' read-only bound of the filter's loop: the
/// filter program's length, 0 without a filter (see tcpmon-ebpf's filter.rs).
const GLOBAL_FILTER_ROUNDS: &str = "FILTER_ROUNDS";
/// ... for TCP tracking (`track_tcp`).
const GLOBAL_TRACK_TCP: &str = "TRACK_TCP";
/// ... for the per-CPU flow cache (`flow_cache`).
const GLOBAL_FLOW_CACHE: &str = "FLOW_CACHE";
/// The `stat` counters' settings (`StatLoad`); an interval of 0 is off.
const GLOBAL_STAT_INTERVAL_NS: &str = "STAT_INTERVAL_NS";
const GLOBAL_STAT_BASE_NS: &str = "STAT_BASE_NS";
const GLOBAL_STAT_LINK_BYTES: &str = "STAT_LINK_BYTES";

pub struct EbpfBackend {
    /// Owns the programs, their links and the maps not taken below;
    /// dropping it detaches everything.
    ebpf: Ebpf,
    events: Events,
    /// Ring-buffer entries skipped because they were no `Event` of this
    /// build (see `undecodable_events`).
    undecodable: u64,
}

/// The ring buffer, registered with tokio on first use (registration needs
/// a running reactor, which `attach` may not have).
enum Events {
    Plain(RingBuf<MapData>),
    Polled(AsyncFd<RingBuf<MapData>>),
    /// Only while moving from one to the other.
    Switching,
}

/// Loads the embedded object and all its programs into the kernel (the
/// verifier runs here), attaching nothing.
pub fn load() -> Result<Ebpf> {
    load_with(&LoadOptions::default())
}

/// `load` with options; the one way tcpmon loads its programs.
pub fn load_with(opts: &LoadOptions) -> Result<Ebpf> {
    raise_memlock_limit();
    // The coarse clock is probed: the verifier refuses its helper where the
    // kernel lacks it (before 5.11), and with the switch off it prunes the
    // call, so a second load works there.
    match load_once(opts, opts.coarse_clock) {
        Err(e) if opts.coarse_clock && e.downcast_ref::<FilterTooLong>().is_none() => {
            log::info!("loading with the coarse clock failed ({e:#}); using the precise clock");
            load_once(opts, false)
        }
        loaded => loaded,
    }
}

fn load_once(opts: &LoadOptions, coarse_clock: bool) -> Result<Ebpf> {
    let split = u8::from(opts.split_vlans);
    let coarse = u8::from(coarse_clock);
    let icmp = u8::from(opts.icmp);
    let track = u8::from(opts.track_tcp);
    // Linux 6.1's verifier walks the cache's paths after the whole rule
    // for minutes under QEMU (6.18 verifies 200k instructions with it, 27k
    // without); 6.12 is the oldest kernel tested with it.
    let flow_cache = u8::from(opts.flow_cache && kernel_at_least(6, 12));
    if opts.flow_cache && flow_cache == 0 {
        log::info!("Linux before 6.12: no per-CPU flow cache, every segment goes to the flow map");
    }
    let stat = opts.stat.unwrap_or_default();
    if opts.stat.is_some() && stat.interval_ns == 0 {
        bail!("the stat interval must be above 0 ns");
    }
    // Checked before anything is loaded.
    let filter = opts
        .filter
        .as_deref()
        .map(cbpf::program)
        .transpose()
        .map_err(|e| anyhow!("the filter program cannot run in the kernel: {e:?}"))?;
    let filter_rounds = filter.map_or(0, |p| p.len);
    let mut ebpf = EbpfLoader::new()
        .map_max_entries(tcpmon_common::MAP_FLOWS, opts.flow_capacity)
        .map_max_entries(tcpmon_common::MAP_FLOWS4, opts.flow_capacity)
        .override_global(GLOBAL_SPLIT_VLANS, &split, true)
        .override_global(GLOBAL_COARSE_CLOCK, &coarse, true)
        .override_global(GLOBAL_ICMP_UNREACH, &icmp, true)
        .override_global(GLOBAL_FILTER_ROUNDS, &filter_rounds, true)
        .override_global(GLOBAL_TRACK_TCP, &track, true)
        .override_global(GLOBAL_FLOW_CACHE, &flow_cache, true)
        .override_global(GLOBAL_STAT_INTERVAL_NS, &stat.interval_ns, true)
        .override_global(GLOBAL_STAT_BASE_NS, &stat.base_ns, true)
        .override_global(GLOBAL_STAT_LINK_BYTES, &stat.link_bytes, true)
        .load(OBJECT)
        .map_err(explain_load)?;
    // In the map before any program is attached, so no packet ever meets
    // an empty program (which would reject it).
    if let Some(prog) = filter {
        set_filter(&mut ebpf, prog)?;
    }
    for name in TC_PROGRAMS {
        load_tc(&mut ebpf, name, filter_rounds)?;
    }
    for name in XDP_PROGRAMS {
        load_xdp(&mut ebpf, name, filter_rounds)?;
    }
    if filter.is_some() {
        // In their arrays before any program is attached, so no packet the
        // filter keeps misses them.
        load_tc(&mut ebpf, PROG_TC_REST, 0)?;
        load_xdp(&mut ebpf, PROG_XDP_REST, 0)?;
        set_rest(&mut ebpf, tcpmon_common::MAP_REST_TC, PROG_TC_REST)?;
        set_rest(&mut ebpf, tcpmon_common::MAP_REST_XDP, PROG_XDP_REST)?;
    }
    Ok(ebpf)
}

fn load_tc(ebpf: &mut Ebpf, name: &str, filter_rounds: u32) -> Result<()> {
    let prog: &mut SchedClassifier = program(ebpf, name)?
        .try_into()
        .with_context(|| format!("{name} in the embedded object is not a TC classifier"))?;
    prog.load()
        .map_err(|e| explain_program(name, e, filter_rounds))
}

fn load_xdp(ebpf: &mut Ebpf, name: &str, filter_rounds: u32) -> Result<()> {
    let prog: &mut Xdp = program(ebpf, name)?
        .try_into()
        .with_context(|| format!("{name} in the embedded object is not an XDP program"))?;
    prog.load()
        .map_err(|e| explain_program(name, e, filter_rounds))
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

/// Puts `prog` in the kernel's `FILTER` map: the programs run it from the
/// next packet on. Only effective when they were loaded with a filter
/// (`LoadOptions::filter`): without one they never look. They run at most as
/// many instructions as that filter had, so `prog` must be no longer.
pub fn set_filter(ebpf: &mut Ebpf, prog: Program) -> Result<()> {
    let map = ebpf
        .map_mut(tcpmon_common::MAP_FILTER)
        .ok_or_else(|| anyhow!("the embedded eBPF object has no FILTER map"))?;
    let mut array = Array::<_, Program>::try_from(map).context("opening the FILTER map")?;
    array
        .set(0, prog, 0)
        .context("writing the filter program into the FILTER map")
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut aya::programs::Program> {
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

impl EbpfBackend {
    /// Loads the embedded object (see `load`), attaches TC on egress, and on
    /// ingress either TC or, when asked, XDP (both on ingress would count
    /// every received packet twice).
    pub fn attach(opts: &EbpfOptions) -> Result<Self> {
        EbpfBackend::attach_with(opts, &LoadOptions::default())
    }

    /// `attach`, loading with `load` options (e.g. `split_vlans`).
    pub fn attach_with(opts: &EbpfOptions, load: &LoadOptions) -> Result<Self> {
        let iface = opts.iface.as_str();
        let ifindex = check_interface(iface)?;
        let mut backend = EbpfBackend::new(load_with(load)?)?;
        let ebpf = &mut backend.ebpf;
        // Every packet on loopback leaves and arrives through the same
        // device: one hook sees each once, two would count it twice.
        let loopback = ifindex == LOOPBACK_IFINDEX;
        if !loopback || opts.xdp == XdpChoice::Off {
            attach_tc(ebpf, iface, TcAttachType::Egress)?;
        }
        match opts.xdp {
            XdpChoice::Off if loopback => {}
            XdpChoice::Off => attach_tc(ebpf, iface, TcAttachType::Ingress)?,
            XdpChoice::Native => attach_xdp(ebpf, iface, XdpMode::Driver)?,
            XdpChoice::Skb => attach_xdp(ebpf, iface, XdpMode::Skb)?,
        }
        Ok(backend)
    }

    /// Wraps programs loaded by `load`/`load_with`, attached or not.
    pub fn new(mut ebpf: Ebpf) -> Result<Self> {
        let map = ebpf
            .take_map(tcpmon_common::MAP_EVENTS)
            .ok_or_else(|| anyhow!("the embedded eBPF object has no EVENTS ring buffer"))?;
        let ring = RingBuf::try_from(map).context("opening the EVENTS ring buffer")?;
        Ok(EbpfBackend {
            ebpf,
            events: Events::Plain(ring),
            undecodable: 0,
        })
    }

    /// The loaded object, for test runs and benchmarks of its programs.
    pub fn ebpf(&self) -> &Ebpf {
        &self.ebpf
    }

    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    /// Waits (AsyncFd on the ring buffer fd) until events are readable,
    /// then drains all of them into `out` (appending). Cancel-safe: events
    /// are only taken after the last await, so a `select!` that drops this
    /// future loses none.
    pub async fn read_events(&mut self, out: &mut Vec<Event>) -> Result<()> {
        let undecodable = &mut self.undecodable;
        let fd = polled(&mut self.events)?;
        loop {
            let mut guard = fd
                .readable_mut()
                .await
                .context("waiting on the EVENTS ring buffer")?;
            if drain(guard.get_inner_mut(), out, undecodable) > 0 {
                // Readiness stays set: the next call drains again before it
                // sleeps, so nothing that arrived meanwhile waits.
                return Ok(());
            }
            // Empty: sleep until the kernel signals the next event. tokio
            // keeps a signal that raced with this drain.
            guard.clear_ready();
        }
    }

    /// Drains the events already in the ring buffer without waiting.
    pub fn try_read_events(&mut self, out: &mut Vec<Event>) -> usize {
        let undecodable = &mut self.undecodable;
        match &mut self.events {
            Events::Plain(ring) => drain(ring, out, undecodable),
            Events::Polled(fd) => drain(fd.get_mut(), out, undecodable),
            Events::Switching => 0,
        }
    }

    /// Entries of the ring buffer that were no `Event` of this build
    /// (another size, or an enum field holding no known value), skipped
    /// by `read_events` and `try_read_events`; the first is logged as a
    /// warning with what was wrong. Only an object built from other types
    /// than this build writes them.
    pub fn undecodable_events(&self) -> u64 {
        self.undecodable
    }

    /// Copies every (key, record) in FLOWS4 (IPv4 flows, keys widened to
    /// `FlowKey`) and FLOWS (IPv6) into `out` (cleared first), with what the
    /// CPUs' cache slots hold for them folded in.
    pub fn snapshot(&self, out: &mut Vec<(FlowKey, FlowRecord)>) -> Result<()> {
        out.clear();
        let mut v4 = Vec::new();
        self.read_flows::<FlowKey4>(tcpmon_common::MAP_FLOWS4, &mut v4)?;
        out.extend(v4.iter().map(|(k, r)| (k.widen(), *r)));
        self.read_flows::<FlowKey>(tcpmon_common::MAP_FLOWS, out)?;
        // After the records: a slot the kernel folds in between is then
        // missed until the next read, never counted twice.
        let cached = self.read_caches()?;
        if !cached.is_empty() {
            for (key, rec) in out.iter_mut() {
                cached.fold_into(key, rec);
            }
        }
        Ok(())
    }

    /// Packets counted in the CPUs' cache slots that their records in the
    /// flow maps do not have yet (`snapshot` and `lookup` include them).
    pub fn cached_packets(&self) -> Result<u64> {
        Ok(self
            .read_caches()?
            .shadows
            .values()
            .flatten()
            .map(|s| s.packets[0] + s.packets[1])
            .sum())
    }

    /// Every CPU's cached flows, IPv4 and IPv6.
    fn read_caches(&self) -> Result<Cached> {
        let mut cached = Cached::default();
        self.read_cache::<FlowKey4>(tcpmon_common::MAP_CACHE4, None, &mut cached)?;
        self.read_cache::<FlowKey>(tcpmon_common::MAP_CACHE6, None, &mut cached)?;
        Ok(cached)
    }

    /// The shadows of the flows the CPUs' slots hold (all slots, or the one
    /// at `index`), by key.
    fn read_cache<K>(&self, name: &str, index: Option<u32>, out: &mut Cached) -> Result<()>
    where
        K: CacheKey,
        CacheSlot<K>: Checked,
        SlotBits<K>: aya::Pod + bytemuck::Pod,
    {
        let map = self
            .ebpf
            .map(name)
            .ok_or_else(|| anyhow!("the embedded eBPF object has no {name} map"))?;
        let mut unknown = None;
        let mut take = |slots: &[SlotBits<K>]| {
            for bits in slots {
                match decode::<CacheSlot<K>>(*bits) {
                    Ok(slot) if slot.is_empty() => {}
                    Ok(slot) => {
                        out.add(slot.key.full(), slot.shadow);
                        out.tcp += slot.tcp as u64;
                    }
                    Err(e) => {
                        unknown.get_or_insert(e);
                    }
                }
            }
        };
        // All slots: one syscall, where the kernel has batch lookups.
        if index.is_none()
            && let Map::PerCpuArray(data) = map
        {
            let cpus = aya::util::nr_cpus()
                .map_err(|(path, e)| anyhow!(e).context(format!("reading {path}")))?;
            match lookup_batch::<u32, SlotBits<K>>(data, cpus, |_, slots| take(slots)) {
                Ok(()) => return undecoded(unknown, name),
                Err(e) if batch_unsupported(&e) => {}
                Err(e) => {
                    return Err(e)
                        .with_context(|| format!("reading {name} (BPF_MAP_LOOKUP_BATCH)"));
                }
            }
        }
        let array = PerCpuArray::<_, SlotBits<K>>::try_from(map)
            .with_context(|| format!("opening {name}"))?;
        let indexes = match index {
            Some(i) => i..i + 1,
            None => 0..tcpmon_common::CACHE_SLOTS,
        };
        for i in indexes {
            let slots = array
                .get(&i, 0)
                .with_context(|| format!("reading slot {i} of {name}"))?;
            take(&slots);
        }
        undecoded(unknown, name)
    }

    fn read_flows<K: aya::Pod + bytemuck::Zeroable>(
        &self,
        name: &str,
        out: &mut Vec<(K, FlowRecord)>,
    ) -> Result<()> {
        let map = self
            .ebpf
            .map(name)
            .ok_or_else(|| anyhow!("the embedded eBPF object has no {name} map"))?;
        let Map::LruHashMap(data) = map else {
            bail!("{name} in the embedded eBPF object is not an LRU hash map");
        };
        let start = out.len();
        let mut unknown = None;
        let each = |k, v: &[FlowRecordBits]| match decode(v[0]) {
            Ok(rec) => out.push((k, rec)),
            Err(e) => {
                unknown.get_or_insert(e);
            }
        };
        match lookup_batch(data, 1, each) {
            Ok(()) => undecoded(unknown, name),
            Err(e) if batch_unsupported(&e) => {
                out.truncate(start);
                iterate(map, out).with_context(|| format!("reading the {name} map"))
            }
            Err(e) => {
                Err(e).with_context(|| format!("reading the {name} map (BPF_MAP_LOOKUP_BATCH)"))
            }
        }
    }

    /// The kernel's record for `key`, if it has one: IPv4 flows live in
    /// FLOWS4 under the narrow key, the others in FLOWS.
    pub fn lookup(&self, key: &FlowKey) -> Result<Option<FlowRecord>> {
        let mut cached = Cached::default();
        let found = match key.narrow() {
            Some(k4) => {
                let rec = self.lookup_in(tcpmon_common::MAP_FLOWS4, k4)?;
                let index = Some(k4.cache_index());
                self.read_cache::<FlowKey4>(tcpmon_common::MAP_CACHE4, index, &mut cached)?;
                rec
            }
            None => {
                let rec = self.lookup_in(tcpmon_common::MAP_FLOWS, *key)?;
                let index = Some(key.cache_index());
                self.read_cache::<FlowKey>(tcpmon_common::MAP_CACHE6, index, &mut cached)?;
                rec
            }
        };
        Ok(found.map(|mut rec| {
            cached.fold_into(key, &mut rec);
            rec
        }))
    }

    fn lookup_in<K: aya::Pod>(&self, name: &str, key: K) -> Result<Option<FlowRecord>> {
        let map = self
            .ebpf
            .map(name)
            .ok_or_else(|| anyhow!("the embedded eBPF object has no {name} map"))?;
        let flows = aya::maps::HashMap::<_, K, FlowRecordBits>::try_from(map)
            .with_context(|| format!("opening the {name} map"))?;
        match flows.get(&key, 0) {
            Ok(bits) => decode(bits)
                .map(Some)
                .with_context(|| format!("reading the {name} map")),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading the {name} map")),
        }
    }

    /// Interval `epoch` of the `stat` counters (see `StatLoad`), summed
    /// over the CPUs whose slot holds it. A CPU whose slot holds an earlier
    /// interval counted nothing in this one; a later one is `overwritten`.
    /// Read while the interval runs, the sums are what it has so far.
    pub fn stat_interval(&self, epoch: u64) -> Result<StatRead> {
        let map = self
            .ebpf
            .map(tcpmon_common::MAP_STAT)
            .ok_or_else(|| anyhow!("the embedded eBPF object has no STAT map"))?;
        let array = PerCpuArray::<_, StatSlot>::try_from(map).context("opening STAT")?;
        let slots = array
            .get(&StatSlot::index(epoch), 0)
            .with_context(|| format!("reading the STAT slot of interval {epoch}"))?;
        let mut read = StatRead::default();
        for slot in slots.iter() {
            match slot.epoch.cmp(&epoch) {
                std::cmp::Ordering::Equal => read.counters.merge(&slot.counters),
                std::cmp::Ordering::Greater => read.overwritten += 1,
                std::cmp::Ordering::Less => {}
            }
        }
        Ok(read)
    }

    /// Sums the per-CPU COUNTERS, indexed by `Counter`, with the TCP
    /// segments still counted in cache slots.
    pub fn counters(&self) -> Result<[u64; Counter::COUNT as usize]> {
        let map = self
            .ebpf
            .map(tcpmon_common::MAP_COUNTERS)
            .ok_or_else(|| anyhow!("the embedded eBPF object has no COUNTERS map"))?;
        let array = PerCpuArray::<_, u64>::try_from(map).context("opening COUNTERS")?;
        let mut sums = [0u64; Counter::COUNT as usize];
        for (i, sum) in sums.iter_mut().enumerate() {
            let values = array
                .get(&(i as u32), 0)
                .with_context(|| format!("reading counter {}", Counter::ALL[i].name()))?;
            *sum = values.iter().copied().fold(0u64, u64::wrapping_add);
        }
        // After the counters: a slot the kernel empties in between is then
        // missed until the next read, never counted twice.
        sums[Counter::Tcp as usize] += self.read_caches()?.tcp;
        Ok(sums)
    }
}

/// Shadows read from the CPUs' cache slots, to fold into records read from
/// the flow maps (`tcpmon_common::absorb`, as the kernel folds them).
#[derive(Default)]
struct Cached {
    shadows: rustc_hash::FxHashMap<FlowKey, Vec<FlowRecord>>,
    /// Segments the slots counted that `Counter::Tcp` does not have yet.
    tcp: u64,
}

impl Cached {
    fn add(&mut self, key: FlowKey, shadow: FlowRecord) {
        self.shadows.entry(key).or_default().push(shadow);
    }

    fn is_empty(&self) -> bool {
        self.shadows.is_empty()
    }

    /// Only shadows of this very connection: a slot may still hold one of
    /// an earlier connection on the 4-tuple, which the kernel will count
    /// as orphaned.
    fn fold_into(&self, key: &FlowKey, rec: &mut FlowRecord) {
        for shadow in self.shadows.get(key).into_iter().flatten() {
            if shadow.first_ns == rec.first_ns {
                tcpmon_common::absorb(rec, shadow);
            }
        }
    }
}

/// Skipping an entry beats misreading it, and one bad entry should not end
/// a session that reads thousands of good ones: they are counted instead.
fn drain(ring: &mut RingBuf<MapData>, out: &mut Vec<Event>, undecodable: &mut u64) -> usize {
    const SIZE: usize = size_of::<Event>();
    let mut n = 0;
    while let Some(item) = ring.next() {
        let event = if item.len() == SIZE {
            decode::<Event>(bytemuck::pod_read_unaligned::<EventBits>(&item))
                .map_err(|e| e.to_string())
        } else {
            Err(format!(
                "an entry of {} bytes, where an event has {SIZE}",
                item.len()
            ))
        };
        match event {
            Ok(event) => {
                out.push(event);
                n += 1;
            }
            Err(e) => {
                if *undecodable == 0 {
                    log::warn!("skipping entries of the EVENTS ring buffer: {e}");
                }
                *undecodable += 1;
            }
        }
    }
    n
}

/// The polled ring buffer, registered with tokio first if it is not yet.
fn polled(events: &mut Events) -> Result<&mut AsyncFd<RingBuf<MapData>>> {
    if matches!(events, Events::Plain(_)) {
        if tokio::runtime::Handle::try_current().is_err() {
            bail!("EbpfBackend::read_events must run inside a tokio runtime");
        }
        *events = match std::mem::replace(events, Events::Switching) {
            // SAFETY: the RingBuf owns the map's fd, which stays open
            // and unchanged for as long as the AsyncFd owns the RingBuf.
            Events::Plain(ring) => {
                match unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) } {
                    Ok(fd) => Events::Polled(fd),
                    Err(e) => {
                        let (ring, io_error) = e.into_parts();
                        *events = Events::Plain(ring);
                        return Err(io_error)
                            .context("registering the EVENTS ring buffer with tokio");
                    }
                }
            }
            other => other,
        };
    }
    match events {
        Events::Polled(fd) => Ok(fd),
        _ => bail!("the EVENTS ring buffer is not registered with tokio"),
    }
}

// --- Reading FLOWS ----------------------------------------------------------
//
// aya 0.14 iterates a hash map with two syscalls per entry; at 262,144 flows
// that is half a million syscalls per poll. BPF_MAP_LOOKUP_BATCH (Linux 5.6)
// copies thousands of entries per call.

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BATCH: usize = 4096;
/// The kernel's "not supported" for commands a map type lacks.
const ENOTSUPP: i32 = 524;

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Every entry of a map, `BATCH` a syscall, to `each`: its key and its
/// values, `per_key` of them (the CPUs' of a per-CPU map, else 1).
fn lookup_batch<K, V>(
    map: &MapData,
    per_key: usize,
    mut each: impl FnMut(K, &[V]),
) -> io::Result<()>
where
    K: Copy + bytemuck::Zeroable,
    V: Copy + bytemuck::Zeroable,
{
    // The kernel lays a key's values out 8-byte aligned.
    const { assert!(size_of::<V>().is_multiple_of(8)) };
    let fd = map.fd().as_fd().as_raw_fd();
    let mut keys = vec![K::zeroed(); BATCH];
    let mut values = vec![V::zeroed(); BATCH * per_key];
    // For hash maps the position is a bucket number, for arrays an index
    // (u32s); 8 bytes is room enough for any map type's token.
    let mut position = [0u64; 2];
    let mut first = true;
    loop {
        let (token_in, token_out) = position.split_at_mut(1);
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { token_in.as_ptr() as u64 },
            out_batch: token_out.as_mut_ptr() as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: BATCH as u32,
            map_fd: fd as u32,
            ..BatchAttr::default()
        };
        // SAFETY: attr points at buffers of `count` keys and values that
        // outlive the call; the kernel writes at most that many.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &mut attr as *mut BatchAttr,
                size_of::<BatchAttr>() as u32,
            )
        };
        // ENOENT: the end of the map. The kernel reports how many it copied
        // then too, where other errors leave `count` as it was.
        let last = ret < 0;
        if last {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::ENOENT) {
                return Err(e);
            }
        }
        let n = (attr.count as usize).min(BATCH);
        for (key, vals) in keys[..n].iter().zip(values.chunks_exact(per_key)) {
            each(*key, vals);
        }
        if last {
            return Ok(());
        }
        position[0] = position[1];
        first = false;
    }
}

fn batch_unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL | libc::EOPNOTSUPP | ENOTSUPP)
    )
}

/// The bytes of one of `K`'s cache slots, before they are checked.
type SlotBits<K> = <CacheSlot<K> as bytemuck::CheckedBitPattern>::Bits;

/// A value that failed to decode while a map was read (the readers keep
/// the first and go on, as the batch callbacks cannot fail) as the map's
/// error.
fn undecoded(unknown: Option<UnknownValue>, name: &str) -> Result<()> {
    match unknown {
        Some(e) => Err(e).with_context(|| format!("reading the {name} map")),
        None => Ok(()),
    }
}

/// The slow path, for kernels before 5.6.
fn iterate<K: aya::Pod>(map: &Map, out: &mut Vec<(K, FlowRecord)>) -> Result<()> {
    let flows = aya::maps::HashMap::<_, K, FlowRecordBits>::try_from(map)?;
    for entry in flows.iter() {
        match entry {
            Ok((k, v)) => out.push((k, decode(v)?)),
            // The LRU evicted it between the two syscalls.
            Err(MapError::KeyNotFound) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

// --- Attaching ----------------------------------------------------------------

/// The kernel gives each network namespace's loopback device index 1.
const LOOPBACK_IFINDEX: u32 = 1;

/// The interface's index, or a clear error if there is no such interface.
fn check_interface(iface: &str) -> Result<u32> {
    let name = std::ffi::CString::new(iface)
        .map_err(|_| anyhow!("the interface name {iface:?} contains a NUL byte"))?;
    // SAFETY: a NUL-terminated string that outlives the call.
    match unsafe { libc::if_nametoindex(name.as_ptr()) } {
        0 => bail!("no network interface named {iface}; `ip link` lists them"),
        index => Ok(index),
    }
}

fn kernel_at_least(major: u8, minor: u8) -> bool {
    KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(major, minor, 0))
}

fn attach_tc(ebpf: &mut Ebpf, iface: &str, dir: TcAttachType) -> Result<()> {
    let prog: &mut SchedClassifier = program(ebpf, PROG_TC)?.try_into()?;
    let side = if dir == TcAttachType::Ingress {
        "ingress"
    } else {
        "egress"
    };
    // tcx is probed, not assumed from the kernel version: the link is simply
    // tried, and kernels without tcx (before 6.6) refuse it.
    // Ingress first and egress last, so tcpmon sees what a packet
    // capture sees: every received packet before any filter drops it,
    // and sent packets after other programs have had their say.
    let order = if dir == TcAttachType::Ingress {
        LinkOrder::first()
    } else {
        LinkOrder::last()
    };
    match prog.attach_with_options(iface, dir, TcAttachOptions::TcxOrder(order)) {
        Ok(_) => {
            // Which path was taken matters on older kernels (and to the
            // VM tests, which check it per kernel).
            eprintln!("tcpmon: attached TC {side} on {iface} with tcx");
            return Ok(());
        }
        Err(e) if is_permission(&e) => return Err(permission_error(e)),
        Err(e) => log::info!("no tcx link on {iface} {side} ({e}); using a clsact filter"),
    }
    // Before tcx, TC programs hang off a clsact qdisc as netlink filters.
    // Those are not links: a filter outlives the process that added it, so a
    // SIGKILLed tcpmon leaves its filter running (aya removes it on a normal
    // exit). Remove what an earlier killed run left before adding ours;
    // this also removes the filter of a tcpmon still running on this
    // interface, which tcx would have let coexist.
    if let Err(e) = tc::qdisc_add_clsact(iface) {
        log::debug!("adding clsact to {iface}: {e} (usually: it is already there)");
    }
    match tc::qdisc_detach_program(iface, dir, PROG_TC) {
        Ok(()) => log::warn!("removed a {PROG_TC} filter left on {iface} {side} by an earlier run"),
        Err(e) => log::debug!("no stale {PROG_TC} filter on {iface} {side}: {e}"),
    }
    prog.attach_with_options(iface, dir, TcAttachOptions::Netlink(Default::default()))
        .map_err(|e| {
            if is_permission(&e) {
                return permission_error(e);
            }
            anyhow::Error::new(e).context(format!(
                "attaching {PROG_TC} to {iface} {side} through a clsact qdisc failed; on \
                 distribution kernels before 6.6 load the sch_ingress and cls_bpf modules \
                 (modprobe sch_ingress cls_bpf)"
            ))
        })?;
    eprintln!("tcpmon: attached TC {side} on {iface} with netlink clsact");
    Ok(())
}

fn attach_xdp(ebpf: &mut Ebpf, iface: &str, mode: XdpMode) -> Result<()> {
    let prog: &mut Xdp = program(ebpf, PROG_XDP)?.try_into()?;
    // aya uses an XDP link (gone with the fd) and falls back to a netlink
    // attachment only on kernels before 5.9, where a killed tcpmon would
    // leave the program on the interface until `ip link set dev X xdp off`.
    prog.attach(iface, mode).map_err(|e| {
        if is_permission(&e) {
            return permission_error(e);
        }
        let e = anyhow::Error::new(e);
        match mode {
            XdpMode::Driver => e.context(format!(
                "attaching XDP in native (driver) mode to {iface} failed: its driver may not \
                 support native XDP, or another XDP program is attached; try `--xdp skb` \
                 (generic XDP) or leave XDP off (TC alone sees both directions)"
            )),
            _ => e.context(format!(
                "attaching XDP in skb (generic) mode to {iface} failed; is another XDP program \
                 attached? (`ip link show dev {iface}`)"
            )),
        }
    })?;
    Ok(())
}

// --- Explaining failures -----------------------------------------------------

const PERMISSION_HINT: &str =
    "loading eBPF programs needs root or CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON: run with sudo";

fn errno_in_chain(e: &(dyn std::error::Error + 'static), errno: i32) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<io::Error>()
            && io.raw_os_error() == Some(errno)
        {
            return true;
        }
        cur = err.source();
    }
    false
}

fn is_permission(e: &(dyn std::error::Error + 'static)) -> bool {
    errno_in_chain(e, libc::EPERM)
}

/// The hint, then what failed and the errno, once each (aya's errors
/// repeat their message down the source chain).
fn permission_error(e: impl std::error::Error + Send + Sync + 'static) -> anyhow::Error {
    let mut root: &dyn std::error::Error = &e;
    while let Some(next) = root.source() {
        root = next;
    }
    anyhow!("{PERMISSION_HINT} ({e}: {root})")
}

fn explain_load(e: EbpfError) -> anyhow::Error {
    if is_permission(&e) {
        return permission_error(e);
    }
    if let EbpfError::MapError(MapError::CreateError { name, io_error }) = &e
        && name == tcpmon_common::MAP_EVENTS
        && io_error.raw_os_error() == Some(libc::EINVAL)
        && !kernel_at_least(5, 8)
    {
        let running = KernelVersion::current()
            .map(|v| v.to_string())
            .unwrap_or_else(|_| "unknown".into());
        return anyhow::Error::new(e).context(format!(
            "this kernel ({running}) has no BPF ring buffers: tcpmon's eBPF backend needs \
             Linux >= 5.8 (replay captures with -T instead)"
        ));
    }
    if let EbpfError::ProgramError(pe) = e {
        return explain_program("the eBPF object", pe, 0);
    }
    anyhow::Error::new(e).context("loading tcpmon's eBPF object into the kernel")
}

/// Lines of the verifier log kept in the error; the whole log is logged at
/// debug level.
const LOG_HEAD: usize = 20;
const LOG_TAIL: usize = 5;

/// The first `LOG_HEAD` lines of a verifier log and, when it is longer, its
/// last `LOG_TAIL`, where the verifier says why it gave up.
fn verifier_excerpt(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    let mut excerpt = lines[..lines.len().min(LOG_HEAD)].join("\n");
    if lines.len() > LOG_HEAD {
        let tail = lines.len().saturating_sub(LOG_TAIL).max(LOG_HEAD);
        if tail > LOG_HEAD {
            excerpt.push_str(&format!("\n... ({} lines omitted)", tail - LOG_HEAD));
        }
        excerpt.push('\n');
        excerpt.push_str(&lines[tail..].join("\n"));
    }
    excerpt
}

fn explain_program(name: &str, e: ProgramError, filter_rounds: u32) -> anyhow::Error {
    if is_permission(&e) {
        return permission_error(e);
    }
    if let ProgramError::LoadError {
        io_error,
        verifier_log,
    } = &e
    {
        let log = verifier_log.to_string();
        log::debug!("verifier log for {name}:\n{log}");
        if filter_rounds > 0 && io_error.raw_os_error() == Some(libc::E2BIG) {
            return FilterTooLong(filter_rounds).into();
        }
        let excerpt = verifier_excerpt(&log);
        return anyhow!(
            "the kernel's verifier rejected {name} ({io_error}); this kernel cannot run \
             tcpmon's programs as built, please report it with `uname -r`. Verifier log:\n{excerpt}"
        );
    }
    anyhow::Error::new(e).context(format!("loading {name} into the kernel"))
}

/// The verifier gave up on the filter interpreter: it walks one round per
/// instruction of the filter program, and the older a kernel, the worse it
/// prunes those rounds' paths (6.1 refused 20 rounds until the rest of the
/// program moved behind a tail call).
#[derive(Debug, thiserror::Error)]
#[error(
    "this kernel's verifier cannot accept the filter: its program has {0} classic-BPF \
     instructions, and the verifier ran out of its budget of a million steps walking \
     tcpmon's interpreter through them (Linux 6.1, 6.12 and 6.18 take all 128); \
     use a shorter expression (`tcpdump -d EXPR` shows the program) or a newer kernel"
)]
pub struct FilterTooLong(u32);

/// Nanoseconds to add to a `bpf_ktime_get_ns()` value (CLOCK_MONOTONIC) to
/// get Unix time: CLOCK_REALTIME - CLOCK_MONOTONIC, measured now. Taken as
/// the tightest of a few bracketed readings, so a preemption between the two
/// clock reads does not skew it.
pub fn monotonic_to_unix_offset_ns() -> i64 {
    let mut best = (i64::MAX, 0i64);
    for _ in 0..5 {
        let m0 = clock_ns(libc::CLOCK_MONOTONIC);
        let r = clock_ns(libc::CLOCK_REALTIME);
        let m1 = clock_ns(libc::CLOCK_MONOTONIC);
        let width = m1.wrapping_sub(m0);
        if width < best.0 {
            best = (width, r.wrapping_sub(m0.wrapping_add(width / 2)));
        }
    }
    best.1
}

/// Now on the kernel programs' clock (bpf_ktime_get_ns is CLOCK_MONOTONIC).
pub fn monotonic_now_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC) as u64
}

// time_t and c_long are i64 only on 64-bit targets.
#[allow(clippy::unnecessary_cast)]
fn clock_ns(clock: libc::clockid_t) -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: writes one timespec on our stack; both clocks always exist.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    (ts.tv_sec as i64)
        .wrapping_mul(1_000_000_000)
        .wrapping_add(ts.tv_nsec as i64)
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

    #[test]
    fn verifier_excerpt_keeps_the_head_and_the_verdict() {
        let short: String = (1..=3).map(|i| format!("line {i}\n")).collect();
        assert_eq!(verifier_excerpt(&short), "line 1\nline 2\nline 3");
        let long: String = (1..=100).map(|i| format!("line {i}\n")).collect();
        let e = verifier_excerpt(&long);
        let lines: Vec<&str> = e.lines().collect();
        assert_eq!(lines.len(), LOG_HEAD + 1 + LOG_TAIL);
        assert_eq!(lines[LOG_HEAD - 1], "line 20");
        assert_eq!(lines[LOG_HEAD], "... (75 lines omitted)");
        assert_eq!(lines.last(), Some(&"line 100"));
        let just_over: String = (1..=22).map(|i| format!("line {i}\n")).collect();
        assert_eq!(verifier_excerpt(&just_over).lines().count(), 22);
    }

    #[test]
    fn monotonic_plus_offset_is_unix_time() {
        let off = monotonic_to_unix_offset_ns();
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: writes one timespec.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        let mono = ts.tv_sec * 1_000_000_000 + ts.tv_nsec;
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970")
            .as_nanos() as i64;
        assert!(
            (mono + off - unix).abs() < 50_000_000,
            "{}",
            mono + off - unix
        );
    }

    #[test]
    fn a_missing_interface_names_the_fix() {
        let e = check_interface("tcpmon-no-such0").expect_err("no such interface");
        assert_eq!(
            e.to_string(),
            "no network interface named tcpmon-no-such0; `ip link` lists them"
        );
    }
}
