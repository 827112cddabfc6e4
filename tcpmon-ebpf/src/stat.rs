//! `tcpmon stat`: tcpstat's interval counters (`tcpmon_common::StatCounters`)
//! for every packet the hooks see, TCP or not, after the filter and before
//! TCP tracking.
//!
//! `STAT` holds `STAT_SLOTS` slots per CPU, one per interval in turn: the
//! interval a packet falls in (its epoch) is `(now - STAT_BASE_NS) /
//! STAT_INTERVAL_NS`, its slot the epoch modulo `STAT_SLOTS`. A slot still
//! tagged with an older epoch is reset before the packet is counted. So no
//! CPU ever writes another's counters, no counter is reset under user space
//! (which reads an interval's slot once it has ended, summed over CPUs, and
//! has `STAT_SLOTS - 1` intervals to do so), and nothing is lost between
//! two reads.
//!
//! `STAT_INTERVAL_NS` is 0 unless `tcpmon stat` loads the programs; it is
//! read-only, so the verifier prunes this whole path for the other views.
//!
//! Sizes follow `tcpmon::wire::stat` (the replay side): the wire length
//! minus the 14 bytes of Ethernet header (VLAN tags stay in, the one TC may
//! hold in skb metadata included), plus `STAT_LINK_BYTES` (`-l`). Classes
//! follow `tcpmon::wire::stat::frame_class` check for check.

use aya_ebpf::{macros::map, maps::PerCpuArray};
use tcpmon_common::{
    StatSlot,
    stat::{STAT_SLOTS, classify},
    tcp::proto,
};

use super::{
    ETH_HLEN, Ext, IPV6_HLEN, Link, Packet, at, cheap_now, ipv4_header, ipv6_ext, ipv6_header,
    link, setting, u8_at,
};

#[map]
static STAT: PerCpuArray<StatSlot> = PerCpuArray::with_max_entries(STAT_SLOTS, 0);

/// Interval length in ns; 0 (the default) turns counting off.
#[unsafe(no_mangle)]
static STAT_INTERVAL_NS: u64 = 0;

/// CLOCK_MONOTONIC time at which epoch 0 begins: when `tcpmon stat`
/// started, so its first interval is (nearly) whole.
#[unsafe(no_mangle)]
static STAT_BASE_NS: u64 = 0;

/// Link-header bytes a size includes: 0, or 14 with `-l`.
#[unsafe(no_mangle)]
static STAT_LINK_BYTES: u32 = 0;

/// The bytes of a VLAN tag.
const VLAN_TAG: u32 = 4;
/// `UDP` header bytes (UDP GSO segments each repeat them).
const UDP_HLEN: usize = 8;

/// Counts `pkt` in the slot of the current interval, if counting is on.
#[inline(always)]
pub(crate) fn count(pkt: &Packet) {
    let (interval, base, link_bytes) = (
        setting(&STAT_INTERVAL_NS),
        setting(&STAT_BASE_NS),
        setting(&STAT_LINK_BYTES),
    );
    if interval == 0 {
        return;
    }
    // The coarse clock may lag by a tick: a packet right after a boundary
    // can land in the interval before. User space reads an interval only
    // a few ticks after its end, so such a packet is still counted.
    let epoch = StatSlot::epoch(cheap_now(), base, interval);
    let Some(slot) = STAT.get_ptr_mut(StatSlot::index(epoch)) else {
        return;
    };
    // SAFETY: this CPU's slot; BPF programs do not migrate mid-run, and
    // the hooks do not interrupt one another on a CPU.
    let slot = unsafe { &mut *slot };
    if slot.epoch != epoch {
        reset(slot, epoch);
    }
    let net = network(pkt);
    // What the frame lacks of the wire: a tag TC holds in metadata.
    let tag = if pkt.outer_vlan.is_some() {
        VLAN_TAG
    } else {
        0
    };
    let size = (pkt.len + tag).saturating_sub(ETH_HLEN as u32) + link_bytes;
    if pkt.wire > 1
        && let Some(headers) = headers(pkt, &net)
    {
        // A GSO/GRO super-packet: the segments it stands for, each with
        // its own headers, as the wire carries them.
        let header = headers + tag - ETH_HLEN as u32 + link_bytes;
        let payload = pkt.len.saturating_sub(headers);
        if slot
            .counters
            .add_segments(header, payload, pkt.seg_payload, pkt.wire, net.class)
        {
            return;
        }
    }
    // One packet, or a super-packet whose segments cannot be told apart
    // (no transport header we know): counted whole, as a capture shows it.
    slot.counters.add(size, net.class);
}

/// Zeroes a slot left from an earlier round and tags it with `epoch`.
#[inline(always)]
fn reset(slot: &mut StatSlot, epoch: u64) {
    // Word by word, volatile: an assignment of the whole struct becomes a
    // call to a byte-loop memset.
    let words = (slot as *mut StatSlot).cast::<u64>();
    let mut i = 0;
    while i < size_of::<StatSlot>() / 8 {
        // SAFETY: within the slot (its size is a multiple of 8, asserted in
        // tcpmon-common) and 8-aligned like any map value.
        unsafe { core::ptr::write_volatile(words.add(i), 0) };
        i += 1;
    }
    slot.epoch = epoch;
}

/// What the counters need of the network and transport layers.
struct Net {
    class: u8,
    protocol: u8,
    /// Where the transport header starts; 0 when unknown.
    l4: usize,
}

/// The class of `pkt`, by the same reading as `frame_class`: a link layer
/// that does not parse classifies nothing; a network header that does not
/// counts as its family alone (protocol 255, reserved, matches none).
#[inline(always)]
fn network(pkt: &Packet) -> Net {
    let Ok(Link { ethertype, off, .. }) = link(pkt) else {
        return Net {
            class: 0,
            protocol: 255,
            l4: 0,
        };
    };
    let (protocol, l4) = match ethertype {
        // Every fragment counts as its protocol, as in user space.
        proto::ETH_P_IP => match ipv4_header(pkt, off) {
            Ok((ip, ihl, _)) => (u8_at(ip, 9), off + ihl),
            Err(_) => (255, 0),
        },
        proto::ETH_P_IPV6 => match ipv6_header(pkt, off) {
            Ok(ip) => match ipv6_ext(pkt, off + IPV6_HLEN, u8_at(ip, 6)) {
                // A non-first fragment counts as the protocol its fragment
                // header names.
                Ok(Ext { next, l4, fragment }) => (next, if fragment { 0 } else { l4 }),
                Err(_) => (255, 0),
            },
            Err(_) => (255, 0),
        },
        _ => (255, 0),
    };
    Net {
        class: classify(ethertype, protocol),
        protocol,
        l4,
    }
}

/// Bytes from the frame's start to the transport payload of a TCP or UDP
/// packet: what each segment of a super-packet repeats.
#[inline(always)]
fn headers(pkt: &Packet, net: &Net) -> Option<u32> {
    if net.l4 == 0 {
        return None;
    }
    let len = match net.protocol {
        proto::IPPROTO_TCP => {
            let tcp = at::<13>(pkt, net.l4).ok()?;
            ((u8_at(tcp, 12) >> 4) as usize) * 4
        }
        proto::IPPROTO_UDP => UDP_HLEN,
        _ => return None,
    };
    Some((net.l4 + len) as u32)
}
