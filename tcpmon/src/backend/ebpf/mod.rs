//! The live backend: loads the kernel programs built from `tcpmon-ebpf`,
//! hooks them to one interface, and reads what they record (the `FLOWS`
//! map, the `EVENTS` ring buffer, the `COUNTERS` array and, for `stat`,
//! the `STAT` interval slots). This file holds the backend and its reads
//! of the maps; loading, attaching, the ring buffer, batch reads, error
//! explanations and clocks each have their own.
//!
//! Everything is attached as a BPF link where the kernel has links (tcx on
//! Linux >= 6.6, XDP links on >= 5.9): a link lives as long as its file
//! descriptor, so even a SIGKILLed tcpmon leaves nothing behind.

mod attach;
mod batch;
mod changes;
mod clock;
mod events;
mod explain;
mod filter;
mod kernel_log;
mod load;
mod reaper;

use anyhow::{Context, Result, anyhow, bail};
use aya::Ebpf;
use aya::maps::{Map, MapError, PerCpuArray, RingBuf};

use tcpmon_common::{
    CacheKey, CacheSlot, Checked, Counter, FlowKey, FlowKey4, FlowRecord, FlowRecordBits,
    StatCounters, StatSlot, UnknownValue, decode,
};

pub use attach::{EbpfOptions, XdpChoice};
use batch::{batch_unsupported, iterate, lookup_batch};
use changes::Changes;
pub use changes::{Forgot, ReadKind};
pub use clock::{monotonic_now_ns, monotonic_to_unix_offset_ns};
use events::Events;
pub use filter::{FilterProgram, set_filter};
pub use kernel_log::{KernelLog, TARGET as KERNEL_LOG_TARGET};
pub use load::{
    LoadOptions, OBJECT, PROG_BENCH_EMPTY_TC, PROG_BENCH_EMPTY_XDP, PROG_BENCH_LOOKUP_TC,
    PROG_BENCH_PARSE_TC, PROG_TC, PROG_XDP, StatLoad, load, load_object, load_with,
};
use reaper::{Reaper, Seen};

pub struct EbpfBackend {
    /// Owns the programs, their links and the maps not taken below;
    /// dropping it detaches everything.
    ebpf: Ebpf,
    events: Events,
    changes: Changes,
    /// Which records of ended connections to delete (see `reap`).
    reaper: Reaper,
    /// Ring-buffer entries skipped because they were no `Event` of this
    /// build (see `undecodable_events`).
    undecodable: u64,
    /// The kernel's diagnostics, when loaded with `LoadOptions::kernel_log`.
    kernel_log: Option<KernelLog>,
}

/// How long an ended connection's record stays in the kernel's map after
/// its last segment, unless a view asks for longer (`set_linger`): top's
/// default `-r`.
const DEFAULT_LINGER_NS: u64 = 2_000_000_000;

/// One interval's counters read from `STAT`, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatRead {
    pub counters: StatCounters,
    /// CPUs whose slot already held a later interval: what they counted in
    /// this one was overwritten before it was read.
    pub overwritten: u32,
}

impl EbpfBackend {
    /// Wraps programs loaded by `load`/`load_with`, attached or not.
    pub fn new(mut ebpf: Ebpf) -> Result<Self> {
        let map = ebpf
            .take_map(tcpmon_common::MAP_EVENTS)
            .ok_or_else(|| anyhow!("the embedded eBPF object has no EVENTS ring buffer"))?;
        let ring = RingBuf::try_from(map).context("opening the EVENTS ring buffer")?;
        let map = ebpf
            .take_map(tcpmon_common::MAP_CHANGES)
            .ok_or_else(|| anyhow!("the embedded eBPF object has no CHANGES ring buffer"))?;
        let changes = RingBuf::try_from(map).context("opening the CHANGES ring buffer")?;
        let capacities = [
            capacity(&ebpf, tcpmon_common::MAP_FLOWS4)?,
            capacity(&ebpf, tcpmon_common::MAP_FLOWS)?,
        ];
        Ok(EbpfBackend {
            ebpf,
            events: Events::Plain(ring),
            changes: Changes::new(changes, capacities),
            reaper: Reaper::new(DEFAULT_LINGER_NS),
            undecodable: 0,
            kernel_log: None,
        })
    }

    /// The loaded object, for test runs and benchmarks of its programs.
    pub fn ebpf(&self) -> &Ebpf {
        &self.ebpf
    }

    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
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
        let mut sums = [0u64; Counter::COUNT as usize];
        for (sum, c) in sums.iter_mut().zip(Counter::ALL) {
            *sum = self.counter(c)?;
        }
        // After the counters: a slot the kernel empties in between is then
        // missed until the next read, never counted twice.
        sums[Counter::Tcp as usize] += self.read_caches()?.tcp;
        Ok(sums)
    }

    /// One counter, summed over the CPUs (for `Tcp`, without what cache
    /// slots still hold: see `counters`).
    pub fn counter(&self, c: Counter) -> Result<u64> {
        let map = self
            .ebpf
            .map(tcpmon_common::MAP_COUNTERS)
            .ok_or_else(|| anyhow!("the embedded eBPF object has no COUNTERS map"))?;
        let array = PerCpuArray::<_, u64>::try_from(map).context("opening COUNTERS")?;
        let values = array
            .get(&(c as u32), 0)
            .with_context(|| format!("reading counter {}", c.name()))?;
        Ok(values.iter().copied().fold(0u64, u64::wrapping_add))
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

/// Entries of the map `name` as the kernel made it.
fn capacity(ebpf: &Ebpf, name: &str) -> Result<u64> {
    let map = ebpf
        .map(name)
        .ok_or_else(|| anyhow!("the embedded eBPF object has no {name} map"))?;
    let Map::LruHashMap(data) = map else {
        bail!("{name} in the embedded eBPF object is not an LRU hash map");
    };
    let info = data
        .info()
        .with_context(|| format!("reading {name}'s size"))?;
    Ok(info.max_entries() as u64)
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
