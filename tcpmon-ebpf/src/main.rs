//! tcpmon's kernel side.
//!
//! ```text
//!            NIC / veth / lo
//!                  |
//!   ingress  +-----+------------------+  egress
//!  --------->| tcpmon_xdp (optional)  |
//!            |   XDP_PASS always      |
//!            +-----+------------------+
//!                  |
//!            +-----v------------------+       +-------------------+
//!  --------->| tcpmon_tc  (tcx/clsact)|<------| tcpmon_tc (egress)|<----
//!   ingress  |  TC_ACT_UNSPEC always  |       +---------+---------+
//!            +-----+------------------+                 |
//!                  |  filter (if any): tail call (FILTER_TC/FILTER_XDP)
//!                  |    into the expression translated to eBPF by user
//!                  |    space: rejected -> counted, done; kept -> tail
//!                  |    call (REST_TC/REST_XDP) into tcpmon_tc_rest /
//!                  |    tcpmon_xdp_rest for the rest; with --kernel-log
//!                  |    debug, rejected -> tail call (REJECTED_TC/_XDP)
//!                  |    into tcpmon_tc_rejected / _xdp_rejected, which
//!                  |    count and log it
//!                  |  stat.rs (`tcpmon stat` only): every packet into
//!                  |    STAT (per-CPU array, 16 interval slots per CPU)
//!                  |  parse eth/vlan/pppoe/ip/tcp       |
//!                  v                                    v
//!       +---------------------+  PER_CPU's tag for the slot is another
//!       | CACHE4 / CACHE6     |  flow's: straight to the map below.
//!       | (per-CPU array)     |  Steady segment of a cached flow:
//!       |                     |  tcpmon_common::shadowed, plain adds, done
//!       +----------+----------+  (stale if CACHE_INDEX's generation moved on)
//!                  | anything else; folds the slot back (absorb); a busy
//!                  | flow takes the slot (fold the other flow's back)
//!                  v
//!       +---------------------+  tcpmon_common::apply  +---------------------+
//!       | FLOWS4 / FLOWS      |<---------------------->| EVENTS (ring buffer)|
//!       | (LRU hash, sized by |   state changes only   | Event               |
//!       | --max-flows)        |                        +---------------------+
//!       | FlowKey->FlowRecord |  first change of a record in an epoch:
//!       +---------------------+  its key -> CHANGES (ring buffer, Change);
//!         ^ user space deletes   the epoch is EPOCH[0], which user space
//!           ended connections    bumps before each read (tcpmon_common::
//!           after their linger   change)
//!       +------------------------------------------------------------------+
//!       | COUNTERS (per-CPU array): skipped and lost packets, by reason,   |
//!       | records created per map (evictions = created - size - deleted)   |
//!       | PER_CPU (per-CPU array): the coarse clock's last tick, the tags  |
//!       | of the CPU's cache slots (which flow each holds, in one byte)    |
//!       +------------------------------------------------------------------+
//!       klog.rs (--kernel-log; pruned at load time when off): why a packet
//!       was skipped, what was lost, the filter's and the cache's doings ->
//!       AYA_LOGS (aya-log's ring buffer), at most 100 lines a second per
//!       CPU, counted in KLOG_BUDGET (per-CPU array; refusals too)
//!       icmp.rs (--icmp): destination-unreachables quoting a pending
//!       handshake in FLOWS emit an Unreach event
//!              ^ polled by user space          ^ AsyncFd in user space
//! ```
//!
//! The monitor must never change traffic, so every path returns
//! `TC_ACT_UNSPEC` / `XDP_PASS`: with tcx, any other TC verdict would end the
//! chain and hide packets from programs attached after ours.
//!
//! The per-segment logic is `tcpmon_common::apply`, shared with the pcap
//! backend; this file only parses headers and moves bytes between maps.
#![no_std]
#![no_main]
// Packet loads of 16, 32 and 64 bits in one instruction (see `load`).
#![feature(asm_experimental_arch, core_intrinsics, stmt_expr_attributes)]
#![allow(internal_features)]

mod filter;
mod icmp;
mod klog;
mod stat;

use aya_ebpf::{
    bindings::{BPF_NOEXIST, TC_ACT_UNSPEC, xdp_action::XDP_PASS},
    helpers::{bpf_jiffies64, bpf_ktime_get_coarse_ns, bpf_ktime_get_ns},
    macros::{classifier, map, xdp},
    maps::{Array, LruHashMap, PerCpuArray, RingBuf},
    programs::{TcContext, XdpContext},
};
use klog::klog;
use tcpmon_common::{
    CACHE_FLUSH_NS, CACHE_SLOTS, CacheIndex, CacheKey, CacheSlot, CacheTags, Change, Counter,
    Event, EventKind, FlowKey, FlowKey4, FlowRecord, Own, Segment, Shared, absorb, apply, cached,
    is_steady, shadow, shadowed,
    tcp::{payload_len, proto},
};

#[map]
static FLOWS: LruHashMap<FlowKey, FlowRecord> =
    LruHashMap::with_max_entries(tcpmon_common::FLOW_CAPACITY, 0);

#[map]
static FLOWS4: LruHashMap<FlowKey4, FlowRecord> =
    LruHashMap::with_max_entries(tcpmon_common::FLOW_CAPACITY, 0);

/// This CPU's cached flows (see `tcpmon_common::cache`), and the shared
/// generation of each slot index, bumped when a flow there stops being
/// steady.
#[map]
static CACHE4: PerCpuArray<CacheSlot<FlowKey4>> = PerCpuArray::with_max_entries(CACHE_SLOTS, 0);

#[map]
static CACHE6: PerCpuArray<CacheSlot<FlowKey>> = PerCpuArray::with_max_entries(CACHE_SLOTS, 0);

#[map]
static CACHE_INDEX: Array<CacheIndex> = Array::with_max_entries(CACHE_SLOTS, 0);

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(tcpmon_common::EVENTS_BYTES, 0);

/// The keys of records changed in user space's current epoch, which user
/// space writes into `EPOCH` (see `tcpmon_common::change`).
#[map]
static CHANGES: RingBuf = RingBuf::with_byte_size(tcpmon_common::CHANGES_BYTES, 0);

#[map]
static EPOCH: Array<u32> = Array::with_max_entries(1, 0);

/// Per CPU, what a data segment reads besides its flow's record and
/// slot, in one value: one map and one place to find.
#[map]
static PER_CPU: PerCpuArray<PerCpu> = PerCpuArray::with_max_entries(1, 0);

#[repr(C)]
struct PerCpu {
    /// The jiffies value of the tick in which `coarse_now` last read the
    /// coarse clock, and what it read.
    tick: [u64; 2],
    /// Of the flow cache's slots (`tcpmon_common::CacheTags`).
    tags: CacheTags,
}

#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::COUNT, 0);

/// Set to 1 by the loader (`--split-vlans`) to key flows by VLAN as well,
/// for overlapping address spaces. Read-only to the programs, so the
/// verifier prunes the branch not taken.
#[unsafe(no_mangle)]
static SPLIT_VLANS: u8 = 0;

/// Set to 0 by the loader when only the `stat` counters are wanted: no TCP
/// parsing, no flow records, no events. Read-only like `SPLIT_VLANS`, so
/// the verifier prunes the tracking path then.
#[unsafe(no_mangle)]
static TRACK_TCP: u8 = 1;

/// Set to 0 by the loader to apply every segment to its record in the map,
/// without the per-CPU flow cache (tests and benchmarks compare the two).
/// Read-only like `SPLIT_VLANS`.
#[unsafe(no_mangle)]
static FLOW_CACHE: u8 = 1;

/// Set to 1 by the loader when the kernel has `bpf_ktime_get_coarse_ns`
/// (Linux 5.11). Read-only like `SPLIT_VLANS`: on older kernels the
/// verifier prunes the call, so the object still loads there.
#[unsafe(no_mangle)]
static COARSE_CLOCK: u8 = 0;

// The `#[map]` macro names each map after its static; user space finds them
// by the names in tcpmon-common, so a rename on either side must fail here.
const _: () = assert!(same(tcpmon_common::MAP_FLOWS, "FLOWS"));
const _: () = assert!(same(tcpmon_common::MAP_FLOWS4, "FLOWS4"));
const _: () = assert!(same(tcpmon_common::MAP_EVENTS, "EVENTS"));
const _: () = assert!(same(tcpmon_common::MAP_CHANGES, "CHANGES"));
const _: () = assert!(same(tcpmon_common::MAP_EPOCH, "EPOCH"));
const _: () = assert!(same(tcpmon_common::MAP_COUNTERS, "COUNTERS"));
const _: () = assert!(same(tcpmon_common::MAP_FILTER_TC, "FILTER_TC"));
const _: () = assert!(same(tcpmon_common::MAP_FILTER_XDP, "FILTER_XDP"));
const _: () = assert!(same(tcpmon_common::MAP_REST_TC, "REST_TC"));
const _: () = assert!(same(tcpmon_common::MAP_REST_XDP, "REST_XDP"));
const _: () = assert!(same(tcpmon_common::MAP_REJECTED_TC, "REJECTED_TC"));
const _: () = assert!(same(tcpmon_common::MAP_REJECTED_XDP, "REJECTED_XDP"));
const _: () = assert!(same(tcpmon_common::MAP_STAT, "STAT"));
const _: () = assert!(same(tcpmon_common::MAP_CACHE4, "CACHE4"));
const _: () = assert!(same(tcpmon_common::MAP_CACHE6, "CACHE6"));
const _: () = assert!(same(tcpmon_common::MAP_CACHE_INDEX, "CACHE_INDEX"));
const _: () = assert!(same(tcpmon_common::MAP_KLOG_BUDGET, "KLOG_BUDGET"));

const fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

// `inline(always)` reaches the function the macro wraps: left to LLVM, a
// body this long becomes a BPF subprogram, where the kernel refuses tail
// calls (no BTF for it) and which costs a call per packet.
#[classifier]
#[inline(always)]
pub fn tcpmon_tc(ctx: TcContext) -> i32 {
    if filter::on() {
        // The filter first (see filter.rs); what it keeps goes on in
        // `tcpmon_tc_rest`.
        filter::screen(&ctx, &filter::FILTER_TC);
    } else {
        handle(&tc_packet(&ctx));
    }
    TC_ACT_UNSPEC
}

/// The rest of `tcpmon_tc` for a packet the filter kept (a tail call).
#[classifier]
#[inline(always)]
pub fn tcpmon_tc_rest(ctx: TcContext) -> i32 {
    let pkt = tc_packet(&ctx);
    filter::kept(pkt.len);
    handle(&pkt);
    TC_ACT_UNSPEC
}

/// The packet as `handle` sees it.
#[inline(always)]
fn tc_packet(ctx: &TcContext) -> Packet {
    // SAFETY: `ctx.skb.skb` is the __sk_buff the kernel passed in; these
    // fields are readable by TC programs.
    let (len, gso_segs, gso_size, vlan_present, vlan_tci) = unsafe {
        let s = &*ctx.skb.skb;
        (s.len, s.gso_segs, s.gso_size, s.vlan_present, s.vlan_tci)
    };
    // On TC the kernel may already have moved the outer VLAN tag out of the
    // frame into skb metadata; it still counts as a tag the frame carried.
    let outer_vlan = if vlan_present != 0 {
        Some((vlan_tci & 0x0fff) as u16)
    } else {
        None
    };
    // A GSO/GRO super-packet stands for gso_segs packets on the wire.
    let wire = if gso_segs > 1 { gso_segs } else { 1 };
    Packet {
        data: ctx.data(),
        end: ctx.data_end(),
        len,
        wire,
        seg_payload: if wire > 1 { gso_size } else { 0 },
        outer_vlan,
    }
}

/// A packet the filter rejected, with `--kernel-log debug` (a tail call
/// from the translation; see filter.rs).
#[classifier]
#[inline(always)]
pub fn tcpmon_tc_rejected(ctx: TcContext) -> i32 {
    filter::rejected(tc_packet(&ctx).len);
    TC_ACT_UNSPEC
}

#[xdp]
#[inline(always)]
pub fn tcpmon_xdp(ctx: XdpContext) -> u32 {
    if filter::on() {
        filter::screen(&ctx, &filter::FILTER_XDP);
    } else {
        handle(&xdp_packet(&ctx));
    }
    XDP_PASS
}

/// The rest of `tcpmon_xdp` for a packet the filter kept (a tail call).
#[xdp]
#[inline(always)]
pub fn tcpmon_xdp_rest(ctx: XdpContext) -> u32 {
    let pkt = xdp_packet(&ctx);
    filter::kept(pkt.len);
    handle(&pkt);
    XDP_PASS
}

#[xdp]
#[inline(always)]
pub fn tcpmon_xdp_rejected(ctx: XdpContext) -> u32 {
    filter::rejected(xdp_packet(&ctx).len);
    XDP_PASS
}

#[inline(always)]
fn xdp_packet(ctx: &XdpContext) -> Packet {
    let (data, end) = (ctx.data(), ctx.data_end());
    Packet {
        data,
        end,
        // No skb here: the buffer is all there is (no multi-buffer support).
        len: (end - data) as u32,
        wire: 1,
        seg_payload: 0,
        outer_vlan: None,
    }
}

/// Baselines for benchmarks: the cost of the hook itself.
#[classifier]
pub fn bench_empty_tc(_ctx: TcContext) -> i32 {
    TC_ACT_UNSPEC
}

#[xdp]
pub fn bench_empty_xdp(_ctx: XdpContext) -> u32 {
    XDP_PASS
}

/// Floors for the benchmark's breakdown of a data packet's cost: parsing
/// alone, then parsing and finding the flow's record, which any design that
/// keeps per-flow state in a hash map pays on every packet.
#[classifier]
pub fn bench_parse_tc(ctx: TcContext) -> i32 {
    if let Ok(p) = parse(&tc_packet(&ctx)) {
        // Every field an IPv4 segment's tracking reads: LLVM drops the
        // reading of any field left unused.
        core::hint::black_box((p.src4, p.dst4, p.sport, p.dport, p.vlan));
        core::hint::black_box((p.seq, p.ack, p.flags, p.payload));
    }
    TC_ACT_UNSPEC
}

#[classifier]
pub fn bench_lookup_tc(ctx: TcContext) -> i32 {
    if let Ok(p) = parse(&tc_packet(&ctx)) {
        let (src, dst) = (p.src4.to_ne_bytes(), p.dst4.to_ne_bytes());
        let (key, _) = FlowKey4::new(src, p.sport, dst, p.dport, 0);
        core::hint::black_box(FLOWS4.get_ptr_mut(&key));
    }
    TC_ACT_UNSPEC
}

/// What the hooks know about a packet beyond its bytes.
struct Packet {
    data: usize,
    end: usize,
    /// Whole packet length, paged data included (the parsed bytes are only
    /// the linear part on TC).
    len: u32,
    /// Wire packets it stands for (GSO/GRO segments), and the transport
    /// payload each carries (0 when it is one packet).
    wire: u32,
    seg_payload: u32,
    /// The outer VLAN id when TC holds the tag in skb metadata (its 4 bytes
    /// are then not in `len`).
    outer_vlan: Option<u16>,
}

/// The fields of one TCP segment the update rule needs, in header order.
struct Parsed {
    family: u8,
    /// IPv6 addresses; zero for IPv4.
    src: [u8; 16],
    dst: [u8; 16],
    /// IPv4 addresses, in packet byte order; zero for IPv6.
    src4: u32,
    dst4: u32,
    sport: u16,
    dport: u16,
    vlan: u16,
    seq: u32,
    ack: u32,
    flags: u8,
    payload: u32,
}

/// A setting the loader writes into a read-only global before loading
/// (`SPLIT_VLANS`, `TRACK_TCP`, ...). Read volatile, so that the compiler
/// does not fold in the default; the verifier sees the loaded value as a
/// constant and prunes the branches it rules out.
#[inline(always)]
pub(crate) fn setting<T: Copy>(global: &'static T) -> T {
    // SAFETY: a plain read of a global the programs never write.
    unsafe { core::ptr::read_volatile(global) }
}

/// Everything after the filter: the `stat` counters (every packet), then
/// TCP tracking.
#[inline(always)]
fn handle(pkt: &Packet) {
    stat::count(pkt);
    if setting(&TRACK_TCP) == 0 {
        return;
    }
    match parse(pkt) {
        Ok(p) => track(pkt, &p),
        Err(c) => {
            count(c);
            klog::skipped(pkt.len, c);
        }
    }
}

#[inline(always)]
fn track(pkt: &Packet, p: &Parsed) {
    let key_vlan = if setting(&SPLIT_VLANS) != 0 {
        p.vlan
    } else {
        0
    };
    if p.family == 4 {
        // IPv4 flows live in FLOWS4 under the 16-byte form of the key; the
        // full key is only built for an event.
        let (src, dst) = (p.src4.to_ne_bytes(), p.dst4.to_ne_bytes());
        let (key, dir) = FlowKey4::new(src, p.sport, dst, p.dport, key_vlan);
        let seg = segment(pkt, p, dir, key.guess_client(dir));
        // Inlined on purpose: an outlined closure is a BPF subprogram (see
        // `tcpmon_tc`).
        follow(
            &FLOWS4,
            &CACHE4,
            &key,
            seg,
            #[inline(always)]
            |kind, r| emit(&key.widen(), kind, r),
        );
    } else {
        let (key, dir) = FlowKey::new(p.family, p.src, p.sport, p.dst, p.dport, key_vlan);
        let seg = segment(pkt, p, dir, key.guess_client(dir));
        follow(
            &FLOWS,
            &CACHE6,
            &key,
            seg,
            #[inline(always)]
            |kind, r| emit(&key, kind, r),
        );
    }
}

/// The segment, its time still to be taken (see `now`).
#[inline(always)]
fn segment(pkt: &Packet, p: &Parsed, dir: u8, guess: u8) -> Segment {
    Segment {
        ts_ns: 0,
        seq: p.seq,
        ack: p.ack,
        payload_len: p.payload,
        wire_packets: pkt.wire,
        flags: p.flags,
        dir,
        guess,
        _pad: 0,
        vlan: p.vlan,
        _pad2: [0; 2],
    }
}

/// Applies a segment of flow `key`: to this CPU's cache slot for it when
/// the flow is cached there and the segment is steady, else to its record
/// in `map` (see `tcpmon_common::cache`). The rule (`apply`) is called in
/// one place only: LLVM inlines it wherever it is called.
#[inline(always)]
fn follow<K: CacheKey, F: FnMut(EventKind, &FlowRecord)>(
    map: &LruHashMap<K, FlowRecord>,
    cache: &PerCpuArray<CacheSlot<K>>,
    key: &K,
    mut seg: Segment,
    emit: F,
) {
    let cache_on = setting(&FLOW_CACHE) != 0;
    let (index, tag) = (key.cache_index(), key.cache_tag());
    let mut slot = None;
    // The slot only if its tag is the flow's: most segments of a busy
    // server find another flow's slot, and the tags told it without a miss.
    if cache_on
        && let Some(tags) = tags::<K>()
        && tags[(index & (CACHE_SLOTS - 1)) as usize] == tag
        && let Some(s) = cache.get_ptr_mut(index)
    {
        // SAFETY: this CPU's slot; programs do not migrate mid-run.
        let s = unsafe { &mut *s };
        let ours = s.key.same(key) && !s.is_empty();
        if ours
            && is_steady(&s.shadow, seg.flags)
            && let Some(ix) = shared(index)
            && s.generation == generation(ix)
        {
            seg.ts_ns = now(&s.shadow, seg.flags);
            if seg.ts_ns < s.flush_at {
                let d = (seg.dir & 1) as usize;
                let lent = ix.lend::<Own>(&mut s.shadow, d);
                shadowed(&mut s.shadow, &seg);
                ix.learn(&s.shadow, d, lent);
                // Counted in the slot: a counter update is a map lookup.
                s.tcp += 1;
                return;
            }
        }
        if ours {
            slot = Some(s);
        }
    }

    let Some(rec) = record(map, key) else {
        count(Counter::FlowInsertFailed);
        let k = key.full();
        klog!(
            Warn,
            "flow " {k.port[0]} ":" {k.port[1]} " not tracked: the flow map refused to create its record"
        );
        return;
    };
    // SAFETY: the pointer came from a successful lookup and stays valid for
    // this program run (an LRU eviction meanwhile only recycles the memory).
    // Two CPUs can hold it at once, a flow's RX and TX often run on
    // different ones: the rule makes its hot counters atomic adds; its
    // state changes are plain stores, as handshake and teardown segments
    // are a round trip apart.
    let rec = unsafe { &mut *rec };
    if let Some(s) = &mut slot {
        fold(s, rec);
    }
    let (was_steady, previous_ns) = (is_steady(rec, 0), rec.last_ns);
    seg.ts_ns = now(rec, seg.flags);
    let d = (seg.dir & 1) as usize;
    // The index's line only for a connection that a slot may hold, whose
    // marks other CPUs' slots may have moved (see `cached`).
    let ix = if cache_on && cached(rec) {
        shared(index)
    } else {
        None
    };
    let lent = match &ix {
        Some(ix) => ix.lend::<Shared>(rec, d),
        None => false,
    };
    apply(rec, &seg, emit);
    count(Counter::Tcp);
    changed(rec, key);
    if !cache_on {
        return;
    }
    if let Some(ix) = ix {
        ix.learn(rec, d, lent);
    }
    if !is_steady(rec, 0) {
        // Whether or not the record says `cached`: another CPU may be
        // filling a slot from it right now.
        if was_steady && let Some(ix) = shared(index) {
            // Other CPUs' slots of this flow must not take its next segment
            // (it may acknowledge a FIN). After the record changed, so that
            // a CPU that fills a slot after reading the new generation reads
            // the new state too.
            bump(ix);
        }
        return;
    }
    // Cache it if it is busy (its previous segment came within a tick or
    // so: a flow that sends a segment now and then would only cost a fold
    // later), unless the slot serves another flow that is still current.
    // Said likely, so that LLVM lays out the rare fill after the common
    // path, which then runs through fewer instruction-cache lines.
    let t = seg.ts_ns;
    if core::intrinsics::likely(t.saturating_sub(previous_ns) > CACHE_BUSY_NS) {
        return;
    }
    let (Some(s), Some(ix), Some(tags)) = (cache.get_ptr_mut(index), shared(index), tags::<K>())
    else {
        return;
    };
    // SAFETY: as above.
    let s = unsafe { &mut *s };
    let generation = generation(ix);
    if !s.is_empty() && s.generation == generation && t < s.flush_at {
        return;
    }
    if !s.is_empty() {
        match map.get_ptr_mut(&s.key) {
            Some(other) => {
                // SAFETY: as for `rec`.
                let other = unsafe { &mut *other };
                fold(s, other);
                changed(other, &s.key);
            }
            None => orphan(s),
        }
    }
    ix.claim(rec);
    let k = key.full();
    klog!(Debug, "flow cache: flow " {k.port[0]} ":" {k.port[1]} " takes a slot");
    s.key = *key;
    s.generation = generation;
    s.flush_at = t + CACHE_FLUSH_NS;
    s.shadow = shadow(rec);
    tags[(index & (CACHE_SLOTS - 1)) as usize] = tag;
}

/// This CPU's tags of its slots for keys `K`.
#[inline(always)]
fn tags<K: CacheKey>() -> Option<&'static mut [u8; CACHE_SLOTS as usize]> {
    // SAFETY: this CPU's value; programs do not migrate mid-run.
    PER_CPU
        .get_ptr_mut(0)
        .map(|cpu| K::tags(unsafe { &mut (*cpu).tags }))
}

/// The entry of slot index `index` that all CPUs share.
#[inline(always)]
fn shared(index: u32) -> Option<&'static mut CacheIndex> {
    // SAFETY: a value of the array, valid while the program runs; CPUs
    // write it concurrently, see `CacheIndex`.
    CACHE_INDEX.get_ptr_mut(index).map(|ix| unsafe { &mut *ix })
}

/// The index's generation, as slots keep it; read volatile, as other CPUs
/// bump it.
#[inline(always)]
fn generation(ix: &CacheIndex) -> u32 {
    // SAFETY: an aligned u64 of the value.
    unsafe { core::ptr::read_volatile(&ix.generation) as u32 }
}

/// Tells user space that `rec`, the record of `key`, changed: once per
/// epoch (see `tcpmon_common::change`).
#[inline(always)]
fn changed<K: CacheKey>(rec: &mut FlowRecord, key: &K) {
    let Some(epoch) = EPOCH.get_ptr(0) else {
        return;
    };
    // SAFETY: the array's one value; volatile, as user space writes it.
    let epoch = unsafe { core::ptr::read_volatile(epoch) };
    if rec.epoch == epoch {
        return;
    }
    rec.epoch = epoch;
    match CHANGES.reserve::<Change>(0) {
        Some(mut entry) => {
            let c = entry.as_mut_ptr();
            // SAFETY: the reservation is size_of::<Change>() bytes, 8-aligned;
            // every field is written before submit.
            unsafe {
                (*c).key = key.full();
                (*c).epoch = epoch;
                (*c)._pad = 0;
            }
            entry.submit(0);
        }
        None => {
            count(Counter::ChangesLost);
            klog!(
                Warn,
                "CHANGES ring buffer full: a changed record's key is lost, user space reads every record next"
            );
        }
    }
}

/// See `follow`: more than the coarse clock's tick at HZ 250 and above.
const CACHE_BUSY_NS: u64 = 5_000_000;

/// Empties a slot of ours into its record: the connection's, unless a newer
/// one took the 4-tuple (or the map evicted it and this is a new record).
#[inline(always)]
fn fold<K: CacheKey>(slot: &mut CacheSlot<K>, rec: &mut FlowRecord) {
    if rec.first_ns == slot.shadow.first_ns {
        absorb(rec, &slot.shadow);
        let k = slot.key.full();
        klog!(
            Debug,
            "flow cache: " {slot.tcp} " segments of flow " {k.port[0]} ":" {k.port[1]} " folded into its record"
        );
        release(slot);
    } else {
        orphan(slot);
    }
}

/// Counts what a slot held for a connection that is gone, and empties it.
#[inline(always)]
fn orphan<K: CacheKey>(slot: &mut CacheSlot<K>) {
    let packets = slot.shadow.packets[0] + slot.shadow.packets[1];
    count_n(Counter::Orphaned, packets);
    let k = slot.key.full();
    klog!(
        Info,
        "flow cache: " {packets} " packets of flow " {k.port[0]} ":" {k.port[1]} " orphaned: its record left the map (evicted, or a new connection took the 4-tuple)"
    );
    release(slot);
}

/// Empties a slot whose counts went to a record or to `Orphaned`; its
/// segments go to `Tcp`.
#[inline(always)]
fn release<K>(slot: &mut CacheSlot<K>) {
    count_n(Counter::Tcp, slot.tcp as u64);
    slot.tcp = 0;
    slot.shadow.first_ns = 0;
}

/// Makes every CPU's slot at this index stale.
#[inline(always)]
fn bump(ix: &mut CacheIndex) {
    use core::intrinsics::{AtomicOrdering, atomic_xadd};
    // SAFETY: an aligned u64 in the map value; an atomic add (a full
    // barrier), as CPUs bump it concurrently.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(&mut ix.generation, 1) };
}

/// The record of `key` in `map`, created empty if there is none.
// By reference on purpose: `&FlowRecord::EMPTY` is promoted to a read-only
// global, where by value it would be a 136-byte stack temporary.
#[allow(clippy::needless_borrows_for_generic_args)]
#[inline(always)]
fn record<K>(map: &LruHashMap<K, FlowRecord>, key: &K) -> Option<*mut FlowRecord> {
    if let Some(r) = map.get_ptr_mut(key) {
        return Some(r);
    }
    // NOEXIST: another CPU may have created it meanwhile; its record wins
    // and the second lookup finds it.
    if map
        .insert(key, &FlowRecord::EMPTY, BPF_NOEXIST as u64)
        .is_ok()
    {
        // Which map: known when this is compiled for its key type.
        count(if size_of::<K>() == size_of::<FlowKey4>() {
            Counter::FlowsCreated4
        } else {
            Counter::FlowsCreated6
        });
    }
    map.get_ptr_mut(key)
}

/// The segment's time. A steady segment (see `is_steady`) only moves
/// `last_ns`, so where the kernel has it, it takes the coarse clock: the
/// same CLOCK_MONOTONIC, read without touching the clock source, and behind
/// it by a tick at most (rarely two, see `coarse_now`). Never earlier than
/// `last_ns`, so that `last_ns`
/// never goes back (a fine reading may have been taken within the tick).
/// Every other segment, whose time may become `first_ns`, a SYN or
/// handshake time, reads the precise clock.
#[inline(always)]
fn now(rec: &FlowRecord, flags: u8) -> u64 {
    if is_steady(rec, flags) {
        let t = cheap_now();
        if t > rec.last_ns { t } else { rec.last_ns }
    } else {
        // SAFETY: a helper without preconditions.
        unsafe { bpf_ktime_get_ns() }
    }
}

/// CLOCK_MONOTONIC for times that may lag by a tick: the coarse clock
/// (`coarse_now`) where the kernel has it, else the precise one.
#[inline(always)]
fn cheap_now() -> u64 {
    if setting(&COARSE_CLOCK) != 0 {
        coarse_now()
    } else {
        // SAFETY: a helper without preconditions.
        unsafe { bpf_ktime_get_ns() }
    }
}

/// `bpf_ktime_get_coarse_ns`, called once per tick and CPU. The coarse
/// clock only moves when the tick advances jiffies, and the verifier turns
/// `bpf_jiffies64` into a plain load, where the coarse clock is a helper
/// call (about 15 ns here). In the instant between the tick advancing
/// jiffies and the clock, the value kept may be a tick old: still earlier
/// than the precise clock, which is all `now` relies on.
#[inline(always)]
fn coarse_now() -> u64 {
    // SAFETY: helpers without preconditions; both exist where COARSE_CLOCK
    // is set (jiffies64 since 5.5, the coarse clock since 5.11).
    let jiffies = unsafe { bpf_jiffies64() };
    match PER_CPU.get_ptr_mut(0) {
        Some(cpu) => {
            // SAFETY: this CPU's value; BPF programs do not migrate mid-run.
            let tick = unsafe { &mut (*cpu).tick };
            if tick[0] != jiffies {
                // SAFETY: as above.
                *tick = [jiffies, unsafe { bpf_ktime_get_coarse_ns() }];
            }
            tick[1]
        }
        // SAFETY: as above.
        None => unsafe { bpf_ktime_get_coarse_ns() },
    }
}

const KIND_OFF: usize = core::mem::offset_of!(Event, kind);
const _: () =
    assert!(KIND_OFF.is_multiple_of(8) && core::mem::offset_of!(Event, rec) == KIND_OFF + 8);

#[inline(always)]
fn emit(key: &FlowKey, kind: EventKind, rec: &FlowRecord) {
    match EVENTS.reserve::<Event>(0) {
        Some(mut entry) => {
            let e = entry.as_mut_ptr();
            // SAFETY: the reservation is size_of::<Event>() bytes, 8-aligned;
            // every field is written before submit.
            unsafe {
                (*e).key = *key;
                // kind and its padding as one 8-byte store: LLVM turns a
                // 7-byte zero fill into a call to a byte-loop memset.
                e.cast::<u8>()
                    .add(KIND_OFF)
                    .cast::<u64>()
                    .write(u64::from_le_bytes([kind as u8, 0, 0, 0, 0, 0, 0, 0]));
                (*e).rec = *rec;
            }
            entry.submit(0);
        }
        None => {
            count(Counter::EventsLost);
            klog!(
                Warn,
                "EVENTS ring buffer full: event " {kind as u8} " of flow " {key.port[0]} ":" {key.port[1]} " lost"
            );
        }
    }
}

#[inline(always)]
fn count(c: Counter) {
    count_n(c, 1);
}

#[inline(always)]
fn count_n(c: Counter, n: u64) {
    if let Some(v) = COUNTERS.get_ptr_mut(c as u32) {
        // SAFETY: this CPU's slot; BPF programs do not migrate mid-run.
        unsafe { *v += n };
    }
}

// ---------------------------------------------------------------------------
// Header parsing.
//
// Every read goes through `at`, which checks the end of the bytes right
// before the access, on the very pointer that is read: the verifier only
// trusts a packet pointer whose range it has seen compared against data_end,
// and LLVM is free to hoist or merge checks made earlier on other values.
// Offsets that come from header fields are masked so the verifier can bound
// them without following every arithmetic step.

const ETH_HLEN: usize = 14;
const IPV4_HLEN: usize = 20;
const IPV6_HLEN: usize = 40;
const TCP_HLEN: usize = 20;
/// Largest offset a header can start at: 22 bytes of Ethernet and VLAN, an
/// IPv6 header and four extension headers of at most 2 KiB each.
const OFF_MASK: usize = 0x3fff;

type Res<T> = Result<T, Counter>;

/// The packet has bytes up to `off` (exclusive), or it is `Malformed`.
#[inline(always)]
fn within(pkt: &Packet, off: usize) -> Res<()> {
    if pkt.data + (off & OFF_MASK) > pkt.end {
        return Err(Counter::Malformed);
    }
    Ok(())
}

/// `N` readable bytes at `off`, or `Malformed` when the packet ends before.
#[inline(always)]
fn at<const N: usize>(pkt: &Packet, off: usize) -> Res<usize> {
    let p = pkt.data + (off & OFF_MASK);
    if p + N > pkt.end {
        return Err(Counter::Malformed);
    }
    Ok(p)
}

#[inline(always)]
fn u8_at(p: usize, i: usize) -> u8 {
    // SAFETY: callers pass a pointer returned by `at` with i < N.
    unsafe { *((p + i) as *const u8) }
}

#[inline(always)]
fn be16_at(p: usize, i: usize) -> u16 {
    u16::from_be(load!(p + i, u16))
}

#[inline(always)]
fn be32_at(p: usize, i: usize) -> u32 {
    u32::from_be(ne32_at(p, i))
}

/// Packet bytes at `i` as a native-endian word, so that the bytes stay in
/// packet order. Addresses travel as words, not as 16 separate bytes: LLVM
/// keeps each byte of a `[u8; 16]` in its own register, and the spills
/// overflow the 512-byte stack.
#[inline(always)]
fn ne32_at(p: usize, i: usize) -> u32 {
    load!(p + i, u32)
}

#[inline(always)]
fn ne64_at(p: usize, i: usize) -> u64 {
    load!(p + i, u64)
}

/// One load instruction of a `$ty` at packet address `$addr`, aligned or
/// not. Packet data has no alignment guarantee, so LLVM splits an unaligned
/// read into byte loads and shifts (a third of the parse path's
/// instructions); the verifier accepts unaligned packet loads wherever the
/// CPU does them efficiently (x86-64, arm64, ...), as it does for C programs
/// that read headers through packed structs. Only packet memory is read
/// this way: the stack and map values keep LLVM's aligned accesses, which
/// the verifier requires.
macro_rules! load {
    ($addr:expr, u16) => {
        load!(@ $addr, u16, "{v} = *(u16 *)({a} + 0)")
    };
    ($addr:expr, u32) => {
        load!(@ $addr, u32, "{v} = *(u32 *)({a} + 0)")
    };
    ($addr:expr, u64) => {
        load!(@ $addr, u64, "{v} = *(u64 *)({a} + 0)")
    };
    (@ $addr:expr, $ty:ty, $insn:literal) => {{
        let v: u64;
        // SAFETY: callers pass an address inside the bytes `at` checked;
        // the load zero-extends into the 64-bit register.
        unsafe {
            core::arch::asm!(
                $insn,
                v = lateout(reg) v,
                a = in(reg) $addr,
                options(pure, readonly, nostack, preserves_flags)
            )
        };
        v as $ty
    }};
}
use load;

#[inline(always)]
fn v6_addr_at(p: usize, i: usize) -> [u8; 16] {
    // SAFETY: same size, any bit pattern is a valid byte array.
    unsafe { core::mem::transmute::<[u64; 2], [u8; 16]>([ne64_at(p, i), ne64_at(p, i + 8)]) }
}

#[inline(always)]
fn is_vlan(ethertype: u16) -> bool {
    ethertype == proto::ETH_P_8021Q
        || ethertype == proto::ETH_P_8021AD
        || ethertype == proto::ETH_P_QINQ1
}

/// Where the network layer starts, under any VLAN tags and PPPoE.
struct Link {
    ethertype: u16,
    off: usize,
    /// The innermost VLAN id, 0 when untagged.
    vlan: u16,
}

/// The link layer of an Ethernet frame, as `tcpmon::wire::parse_link`
/// reads it: VLAN tags (the one TC may hold in skb metadata included) and
/// PPPoE sessions, whose non-IP payloads are `NotIp`.
#[inline(always)]
fn link(pkt: &Packet) -> Res<Link> {
    let eth = at::<ETH_HLEN>(pkt, 0)?;
    let mut ethertype = be16_at(eth, 12);
    let mut off = ETH_HLEN;
    let (mut vlan, mut tags) = match pkt.outer_vlan {
        Some(id) => (id, 1),
        None => (0, 0),
    };
    // At most MAX_VLAN_TAGS steps, so the verifier sees a bounded walk;
    // the innermost tag names the VLAN.
    let mut i = 0;
    while i < proto::MAX_VLAN_TAGS && is_vlan(ethertype) {
        if tags >= proto::MAX_VLAN_TAGS {
            return Err(Counter::TooDeep);
        }
        let tag = at::<4>(pkt, off)?;
        vlan = be16_at(tag, 0) & 0x0fff;
        ethertype = be16_at(tag, 2);
        off += 4;
        tags += 1;
        i += 1;
    }
    if is_vlan(ethertype) {
        return Err(Counter::TooDeep);
    }
    // PPPoE sessions (DSL access networks): a 6-byte PPPoE header, then the
    // PPP protocol number.
    if ethertype == proto::ETH_P_PPP_SES {
        let ppp = at::<8>(pkt, off)?;
        ethertype = match be16_at(ppp, 6) {
            proto::PPP_IP => proto::ETH_P_IP,
            proto::PPP_IPV6 => proto::ETH_P_IPV6,
            _ => return Err(Counter::NotIp),
        };
        off += 8;
    }
    Ok(Link {
        ethertype,
        off,
        vlan,
    })
}

#[inline(always)]
fn parse(pkt: &Packet) -> Res<Parsed> {
    let (l3, vlan) = match plain_ipv4(pkt) {
        Some(l3) => (l3, 0),
        None => {
            let Link {
                ethertype,
                off,
                vlan,
            } = link(pkt)?;
            let l3 = match ethertype {
                proto::ETH_P_IP => ipv4(pkt, off)?,
                proto::ETH_P_IPV6 => ipv6(pkt, off)?,
                _ => return Err(Counter::NotIp),
            };
            (l3, vlan)
        }
    };

    let tcp = at::<TCP_HLEN>(pkt, l3.l4_off)?;
    let doff = ((u8_at(tcp, 12) >> 4) as u32) * 4;
    if doff < TCP_HLEN as u32 {
        return Err(Counter::Malformed);
    }
    Ok(Parsed {
        family: l3.family,
        src: l3.src,
        dst: l3.dst,
        src4: l3.src4,
        dst4: l3.dst4,
        sport: be16_at(tcp, 0),
        dport: be16_at(tcp, 2),
        vlan,
        seq: be32_at(tcp, 4),
        ack: be32_at(tcp, 8),
        flags: u8_at(tcp, 13),
        payload: payload_len(l3.ip_payload, doff),
    })
}

struct L3 {
    family: u8,
    src: [u8; 16],
    dst: [u8; 16],
    src4: u32,
    dst4: u32,
    /// Bytes after the IP header and its extensions, from the header.
    ip_payload: u32,
    l4_off: usize,
}

/// Bytes after `off` in the whole packet: what a zero IP length stands for
/// (BIG TCP and TSO super-packets leave it zero).
#[inline(always)]
fn rest(pkt: &Packet, off: usize) -> u32 {
    pkt.len.saturating_sub(off as u32)
}

/// An IPv4 header at `off` that `tcpmon::wire`'s parser accepts too:
/// version 4, its options there, a total length of 0 (TSO, BIG TCP) or at
/// least the header. Its address, header length and total length.
#[inline(always)]
fn ipv4_header(pkt: &Packet, off: usize) -> Res<(usize, usize, u32)> {
    let ip = at::<IPV4_HLEN>(pkt, off)?;
    let ver_ihl = u8_at(ip, 0);
    let ihl = ((ver_ihl & 0x0f) as usize) * 4;
    if ver_ihl >> 4 != 4 || ihl < IPV4_HLEN {
        return Err(Counter::Malformed);
    }
    // Options must be there too, whatever comes next (as in user space).
    within(pkt, off + ihl)?;
    let total = be16_at(ip, 2) as u32;
    if total != 0 && total < ihl as u32 {
        return Err(Counter::Malformed);
    }
    Ok((ip, ihl, total))
}

/// The most common frame, read with one bounds check and no loops:
/// untagged Ethernet, IPv4 without options, not a later fragment, TCP. The
/// same `L3` as `link` and `ipv4` make of it (the kernel tests' frames go
/// both ways); anything else, malformed frames included, is left to them.
#[inline(always)]
fn plain_ipv4(pkt: &Packet) -> Option<L3> {
    const IP: usize = ETH_HLEN;
    const L4: usize = ETH_HLEN + IPV4_HLEN;
    if pkt.outer_vlan.is_some() {
        return None;
    }
    let p = at::<{ L4 + TCP_HLEN }>(pkt, 0).ok()?;
    let total = be16_at(p, IP + 2) as u32;
    if be16_at(p, 12) != proto::ETH_P_IP
        || u8_at(p, IP) != 0x45
        || be16_at(p, IP + 6) & 0x1fff != 0
        || u8_at(p, IP + 9) != proto::IPPROTO_TCP
        || (total != 0 && total < IPV4_HLEN as u32)
    {
        return None;
    }
    Some(L3 {
        family: 4,
        src: [0; 16],
        dst: [0; 16],
        src4: ne32_at(p, IP + 12),
        dst4: ne32_at(p, IP + 16),
        ip_payload: if total == 0 {
            rest(pkt, L4)
        } else {
            total - IPV4_HLEN as u32
        },
        l4_off: L4,
    })
}

#[inline(always)]
fn ipv4(pkt: &Packet, off: usize) -> Res<L3> {
    let (ip, ihl, total) = ipv4_header(pkt, off)?;
    let ip_payload = if total == 0 {
        rest(pkt, off + ihl)
    } else {
        total - ihl as u32
    };
    // Only the first fragment carries the TCP header.
    if be16_at(ip, 6) & 0x1fff != 0 {
        return Err(Counter::Fragment);
    }
    if u8_at(ip, 9) != proto::IPPROTO_TCP {
        if u8_at(ip, 9) == proto::IPPROTO_ICMP {
            icmp::v4(pkt, off + ihl);
        }
        return Err(Counter::NotTcp);
    }
    Ok(L3 {
        family: 4,
        src: [0; 16],
        dst: [0; 16],
        src4: ne32_at(ip, 12),
        dst4: ne32_at(ip, 16),
        ip_payload,
        l4_off: off + ihl,
    })
}

#[inline(always)]
fn ipv6(pkt: &Packet, off: usize) -> Res<L3> {
    let ip = ipv6_header(pkt, off)?;
    let plen = be16_at(ip, 4) as u32;
    let src = v6_addr_at(ip, 8);
    let dst = v6_addr_at(ip, 24);
    let Ext { next, l4, fragment } = ipv6_ext(pkt, off + IPV6_HLEN, u8_at(ip, 6))?;
    if fragment {
        return Err(Counter::Fragment);
    }
    if next != proto::IPPROTO_TCP {
        if next == proto::IPPROTO_ICMPV6 {
            icmp::v6(pkt, l4);
        }
        return Err(Counter::NotTcp);
    }
    let ext_len = (l4 - off - IPV6_HLEN) as u32;
    let ip_payload = if plen == 0 {
        rest(pkt, l4)
    } else {
        plen.saturating_sub(ext_len)
    };
    Ok(L3 {
        family: 6,
        src,
        dst,
        src4: 0,
        dst4: 0,
        ip_payload,
        l4_off: l4,
    })
}

/// An IPv6 header at `off`: all 40 bytes there, version 6. Its address.
#[inline(always)]
fn ipv6_header(pkt: &Packet, off: usize) -> Res<usize> {
    let ip = at::<IPV6_HLEN>(pkt, off)?;
    if u8_at(ip, 0) >> 4 != 6 {
        return Err(Counter::Malformed);
    }
    Ok(ip)
}

/// The end of an IPv6 extension-header chain.
struct Ext {
    /// The protocol after the chain: the transport protocol, or with
    /// `fragment` the one the fragment header names.
    next: u8,
    /// Where it starts.
    l4: usize,
    /// The chain ended at a fragment header of a non-first fragment, whose
    /// payload has no transport header.
    fragment: bool,
}

/// Walks hop-by-hop, routing, destination-options and fragment headers from
/// `l4`, whose protocol is `next`: the same set and depth as
/// `tcpmon::wire`'s IPv6 parser, and the same stops.
#[inline(always)]
fn ipv6_ext(pkt: &Packet, mut l4: usize, mut next: u8) -> Res<Ext> {
    let mut i = 0;
    while i < proto::MAX_IPV6_EXT {
        let mut fragment = false;
        match next {
            proto::IPPROTO_HOPOPTS | proto::IPPROTO_ROUTING | proto::IPPROTO_DSTOPTS => {
                let ext = at::<8>(pkt, l4)?;
                next = u8_at(ext, 0);
                l4 += (u8_at(ext, 1) as usize + 1) * 8;
            }
            proto::IPPROTO_FRAGMENT => {
                let ext = at::<8>(pkt, l4)?;
                fragment = be16_at(ext, 2) & 0xfff8 != 0;
                next = u8_at(ext, 0);
                l4 += 8;
            }
            _ => break,
        }
        l4 &= OFF_MASK;
        within(pkt, l4)?;
        if fragment {
            return Ok(Ext { next, l4, fragment });
        }
        i += 1;
    }
    if matches!(
        next,
        proto::IPPROTO_HOPOPTS
            | proto::IPPROTO_ROUTING
            | proto::IPPROTO_DSTOPTS
            | proto::IPPROTO_FRAGMENT
    ) {
        return Err(Counter::TooDeep);
    }
    Ok(Ext {
        next,
        l4,
        fragment: false,
    })
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
