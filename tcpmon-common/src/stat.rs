//! Interval counters of the `stat` view (tcpstat): what one interval of
//! traffic adds up to. The kernel fills one per CPU and interval slot, the
//! capture replay fills one per interval; user space merges and prints them.
//!
//! Sizes are network-layer sizes (the wire length minus the link header),
//! as tcpstat counts them. Every packet counts, not only TCP.

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
        self.packets += 1;
        self.bytes += size as u64;
        self.sum_sq += size as u64 * size as u64;
        if size > self.max {
            self.max = size;
        }
        if size != 0 && (self.min == 0 || size < self.min) {
            self.min = size;
        }
        self.add_class(class, 1);
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

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C), only integers, no padding (8×u64 + 2×u32 before the
    // remaining u64s keeps every field aligned).
    unsafe impl bytemuck::Zeroable for super::StatCounters {}
    unsafe impl bytemuck::Pod for super::StatCounters {}
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
}
