//! Interval counters of the `stat` view (tcpstat): what one interval of
//! traffic adds up to. The kernel fills one per CPU and interval slot, the
//! capture replay fills one per interval; user space merges and prints them.
//!
//! Sizes are network-layer sizes (the wire length minus the link header),
//! as tcpstat counts them. Every packet counts, not only TCP.

/// Interval slots per CPU in the kernel's `STAT` array. A slot is reused
/// after this many intervals, so user space has that long (less one
/// interval) to read a finished interval before it is overwritten.
pub const STAT_SLOTS: u32 = 16;

/// Protocol bits of one packet, by its real network layer.
pub mod class {
    pub const ARP: u8 = 1;
    pub const IPV4: u8 = 2;
    pub const IPV6: u8 = 4;
    pub const TCP: u8 = 8;
    pub const UDP: u8 = 16;
    /// ICMP or ICMPv6.
    pub const ICMP: u8 = 32;
}

use crate::tcp::proto::*;

/// The class bits of a packet with this EtherType and, for IP, this
/// transport protocol (after any IPv6 extension headers).
#[inline(always)]
pub fn classify(ethertype: u16, protocol: u8) -> u8 {
    let family = match ethertype {
        ETH_P_ARP => return class::ARP,
        ETH_P_IP => class::IPV4,
        ETH_P_IPV6 => class::IPV6,
        _ => return 0,
    };
    family
        | match protocol {
            IPPROTO_TCP => class::TCP,
            IPPROTO_UDP => class::UDP,
            IPPROTO_ICMP | IPPROTO_ICMPV6 => class::ICMP,
            _ => 0,
        }
}

/// Sums over one interval. `min` is 0 while no packet was counted (as in
/// tcpstat, a packet of size 0 does not set it either).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatCounters {
    pub packets: u64,
    pub bytes: u64,
    /// Σ size², for the standard deviation.
    pub sum_sq: u64,
    pub min: u32,
    pub max: u32,
    pub arp: u64,
    pub icmp: u64,
    pub ipv4: u64,
    pub ipv6: u64,
    pub tcp: u64,
    pub udp: u64,
}

impl StatCounters {
    /// Counts one packet of `size` bytes with `class` bits.
    #[inline(always)]
    pub fn add(&mut self, size: u32, class: u8) {
        self.add_n(size, class, 1);
    }

    /// Counts `n` packets of `size` bytes each with `class` bits.
    #[inline(always)]
    pub fn add_n(&mut self, size: u32, class: u8, n: u64) {
        if n == 0 {
            return;
        }
        self.packets += n;
        self.bytes += n * size as u64;
        self.sum_sq += n * (size as u64 * size as u64);
        if size > self.max {
            self.max = size;
        }
        if size != 0 && (self.min == 0 || size < self.min) {
            self.min = size;
        }
        self.add_class(class, n);
    }

    /// Counts a GSO/GRO super-packet as the `segs` packets the wire carries:
    /// each repeats the `header` bytes (network and transport headers, plus
    /// whatever link bytes sizes include) and carries `seg_payload` bytes of
    /// the `payload`, the last one the rest. Returns false, counting
    /// nothing, when the numbers do not describe such a packet (the caller
    /// then counts it whole).
    #[inline(always)]
    pub fn add_segments(
        &mut self,
        header: u32,
        payload: u32,
        seg_payload: u32,
        segs: u32,
        class: u8,
    ) -> bool {
        let full = (segs as u64).wrapping_sub(1) * seg_payload as u64;
        if segs < 2 || seg_payload == 0 || payload as u64 <= full {
            return false;
        }
        let last = payload - full as u32;
        // The last segment is at most a full one; more means the packet is
        // not what these numbers say.
        if last > seg_payload {
            return false;
        }
        self.add_n(header + seg_payload, class, segs as u64 - 1);
        self.add(header + last, class);
        true
    }

    #[inline(always)]
    fn add_class(&mut self, class: u8, n: u64) {
        // Branch-free: each bit adds 0 or n.
        self.arp += n * (class & class::ARP != 0) as u64;
        self.ipv4 += n * (class & class::IPV4 != 0) as u64;
        self.ipv6 += n * (class & class::IPV6 != 0) as u64;
        self.tcp += n * (class & class::TCP != 0) as u64;
        self.udp += n * (class & class::UDP != 0) as u64;
        self.icmp += n * (class & class::ICMP != 0) as u64;
    }

    /// What was counted since `earlier`, a reading of the same counters:
    /// exact for every sum; `min` and `max` cannot be taken apart, so they
    /// stay those of the whole (which bound those of the part since), or 0
    /// when nothing was counted since.
    pub fn since(&self, earlier: &StatCounters) -> StatCounters {
        if self.packets == earlier.packets {
            return StatCounters::default();
        }
        StatCounters {
            packets: self.packets.wrapping_sub(earlier.packets),
            bytes: self.bytes.wrapping_sub(earlier.bytes),
            sum_sq: self.sum_sq.wrapping_sub(earlier.sum_sq),
            min: self.min,
            max: self.max,
            arp: self.arp.wrapping_sub(earlier.arp),
            icmp: self.icmp.wrapping_sub(earlier.icmp),
            ipv4: self.ipv4.wrapping_sub(earlier.ipv4),
            ipv6: self.ipv6.wrapping_sub(earlier.ipv6),
            tcp: self.tcp.wrapping_sub(earlier.tcp),
            udp: self.udp.wrapping_sub(earlier.udp),
        }
    }

    /// Adds another partial sum (another CPU's, or a later slot's).
    pub fn merge(&mut self, o: &StatCounters) {
        self.packets += o.packets;
        self.bytes += o.bytes;
        self.sum_sq += o.sum_sq;
        self.max = self.max.max(o.max);
        if o.min != 0 && (self.min == 0 || o.min < self.min) {
            self.min = o.min;
        }
        self.arp += o.arp;
        self.icmp += o.icmp;
        self.ipv4 += o.ipv4;
        self.ipv6 += o.ipv6;
        self.tcp += o.tcp;
        self.udp += o.udp;
    }
}

/// One CPU's counters for one interval in the kernel's `STAT` array: the
/// interval (epoch) they belong to, so a slot left from an earlier round of
/// the ring is recognised and reset before it is counted into, and user
/// space can tell a finished interval from a stale or overwritten one.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatSlot {
    pub epoch: u64,
    pub counters: StatCounters,
}

impl StatSlot {
    /// The interval (epoch) that CLOCK_MONOTONIC time `now_ns` falls in, on
    /// the grid of `interval_ns` from `base_ns`: the kernel tags slots with
    /// it, user space reads them by it.
    #[inline(always)]
    pub fn epoch(now_ns: u64, base_ns: u64, interval_ns: u64) -> u64 {
        now_ns.saturating_sub(base_ns) / interval_ns
    }

    /// The slot of `epoch`'s interval.
    #[inline(always)]
    pub fn index(epoch: u64) -> u32 {
        (epoch % STAT_SLOTS as u64) as u32
    }
}

const _: () = assert!(core::mem::size_of::<StatCounters>() == 80);
const _: () = assert!(core::mem::size_of::<StatSlot>() == 88);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C), only integers, no padding (3×u64, 2×u32, 6×u64 keeps
    // every field aligned; sizes asserted above).
    unsafe impl bytemuck::Zeroable for super::StatCounters {}
    unsafe impl bytemuck::Pod for super::StatCounters {}
    // SAFETY: as above, a u64 then the counters.
    unsafe impl bytemuck::Zeroable for super::StatSlot {}
    unsafe impl bytemuck::Pod for super::StatSlot {}
    unsafe impl aya::Pod for super::StatSlot {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_and_merge_agree() {
        let mut a = StatCounters::default();
        a.add(40, classify(ETH_P_IP, IPPROTO_TCP));
        a.add(0, classify(ETH_P_ARP, 0));
        let mut b = StatCounters::default();
        b.add(60, classify(ETH_P_IPV6, IPPROTO_ICMPV6));
        b.add(20, classify(ETH_P_IP, IPPROTO_UDP));
        let mut all = StatCounters::default();
        all.merge(&a);
        all.merge(&b);
        assert_eq!(
            (all.packets, all.bytes, all.sum_sq),
            (4, 120, 1600 + 3600 + 400)
        );
        assert_eq!((all.min, all.max), (20, 60));
        assert_eq!((all.arp, all.ipv4, all.ipv6), (1, 2, 1));
        assert_eq!((all.tcp, all.udp, all.icmp), (1, 1, 1));
        assert_eq!(classify(0x88cc, 6), 0);
    }

    #[test]
    fn super_packets_count_their_segments() {
        let tcp4 = classify(ETH_P_IP, IPPROTO_TCP);
        // 52 bytes of IPv4 + TCP headers, 3,000 bytes of payload in
        // segments of 1,448: 1500, 1500 and 52 + 104.
        let mut c = StatCounters::default();
        assert!(c.add_segments(52, 3000, 1448, 3, tcp4));
        let mut one_by_one = StatCounters::default();
        for size in [1500, 1500, 156] {
            one_by_one.add(size, tcp4);
        }
        assert_eq!(c, one_by_one);
        assert_eq!(
            (c.packets, c.bytes, c.tcp, c.min, c.max),
            (3, 3156, 3, 156, 1500)
        );
        // A full last segment.
        let mut c = StatCounters::default();
        assert!(c.add_segments(52, 2896, 1448, 2, tcp4));
        assert_eq!((c.packets, c.bytes, c.min), (2, 3000, 1500));
        // Numbers that do not fit: nothing counted.
        for (payload, seg, segs) in [(1000, 1448, 2), (5000, 1448, 3), (100, 0, 2), (100, 50, 1)] {
            let mut c = StatCounters::default();
            assert!(
                !c.add_segments(52, payload, seg, segs, tcp4),
                "{payload} {seg} {segs}"
            );
            assert_eq!(c, StatCounters::default());
        }
    }

    #[test]
    fn since_takes_the_sums_apart() {
        let mut early = StatCounters::default();
        early.add(100, classify(ETH_P_IP, IPPROTO_UDP));
        let mut all = early;
        all.add(40, classify(ETH_P_ARP, 0));
        all.add(60, classify(ETH_P_IPV6, IPPROTO_TCP));
        let rest = all.since(&early);
        assert_eq!(
            (rest.packets, rest.bytes, rest.sum_sq),
            (2, 100, 1600 + 3600)
        );
        assert_eq!(
            (rest.arp, rest.ipv6, rest.tcp, rest.ipv4, rest.udp),
            (1, 1, 1, 0, 0)
        );
        // The extremes of the whole, which bound those of the rest.
        assert_eq!((rest.min, rest.max), (40, 100));
        assert_eq!(all.since(&all), StatCounters::default());
        assert_eq!(StatSlot::index(17), 1);
    }
}
