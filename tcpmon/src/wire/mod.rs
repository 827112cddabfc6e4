//! Header parsing for user space, in the manner of smoltcp's `wire`: each
//! layer is a zero-copy view over bytes whose constructor checks that every
//! accessor stays in bounds, and `parse_frame` walks the layers into a plain
//! struct of the fields tcpmon needs.
//!
//! The kernel programs parse the same layers with pointer arithmetic; both
//! are tested on the same crafted packets (`build`) and real captures.

pub mod build;
mod ip;
mod link;
mod stat;
mod tcp;

pub use ip::{Ipv4Packet, Ipv6Packet, NetworkInfo, parse_network};
pub use link::{LinkInfo, linktype, parse_link};
pub use stat::{frame_class, link_header_len};
pub use tcp::TcpHeader;

use tcpmon_common::{Counter, FlowKey, Segment};

/// Why a frame yielded no TCP segment. Each maps onto the kernel's counter of
/// the same meaning, so both backends report skips alike.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Skip {
    #[error("not IPv4 or IPv6 (ethertype {0:#06x})")]
    NotIp(u16),
    #[error("IP protocol {0} is not TCP")]
    NotTcp(u8),
    #[error("malformed {0}")]
    Malformed(&'static str),
    #[error("non-first IP fragment")]
    Fragment,
    #[error("more VLAN tags or IPv6 extension headers than tcpmon follows")]
    TooDeep,
    #[error("link type {0} is not supported")]
    UnsupportedLink(u32),
}

impl Skip {
    /// The kernel counter this skip is counted under; `None` for a link type
    /// the kernel never sees.
    pub fn counter(self) -> Option<Counter> {
        match self {
            Skip::NotIp(_) => Some(Counter::NotIp),
            Skip::NotTcp(_) => Some(Counter::NotTcp),
            Skip::Malformed(_) => Some(Counter::Malformed),
            Skip::Fragment => Some(Counter::Fragment),
            Skip::TooDeep => Some(Counter::TooDeep),
            Skip::UnsupportedLink(_) => None,
        }
    }
}

/// The fields of one TCP/IP packet that the update rule needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpPacket {
    pub family: u8,
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    pub vlan: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub payload_len: u32,
}

impl TcpPacket {
    /// The flow key and the segment to apply at time `ts_ns`. With
    /// `split_vlans` the VLAN id is part of the key.
    pub fn to_segment(
        &self,
        ts_ns: u64,
        wire_packets: u32,
        split_vlans: bool,
    ) -> (FlowKey, Segment) {
        let key_vlan = if split_vlans { self.vlan } else { 0 };
        let (key, dir) = FlowKey::new(
            self.family,
            self.src,
            self.sport,
            self.dst,
            self.dport,
            key_vlan,
        );
        let seg = Segment {
            ts_ns,
            seq: self.seq,
            ack: self.ack,
            payload_len: self.payload_len,
            wire_packets: wire_packets.max(1),
            flags: self.flags,
            dir,
            guess: key.guess_client(dir),
            vlan: self.vlan,
            ..Segment::default()
        };
        (key, seg)
    }
}

/// The start of a TCP segment that an ICMP or ICMPv6 destination-unreachable
/// quotes, as sent (from `src` to `dst`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuotedTcp {
    pub family: u8,
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
}

impl QuotedTcp {
    /// The flow key of the quoted segment's connection. VLAN 0, as in the
    /// kernel, which cannot tell which VLAN the quoted segment travelled on.
    pub fn key(&self) -> FlowKey {
        FlowKey::new(self.family, self.src, self.sport, self.dst, self.dport, 0).0
    }
}

/// The TCP segment a frame carrying an ICMP or ICMPv6 destination-unreachable
/// quotes; `None` for any other frame or a quote too short to name one.
pub fn parse_unreachable(linktype: u32, frame: &[u8]) -> Option<QuotedTcp> {
    use tcpmon_common::icmp::{ICMP_DEST_UNREACH, ICMP_HLEN, ICMPV6_DEST_UNREACH};
    use tcpmon_common::tcp::proto::{
        ETH_P_IP, ETH_P_IPV6, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP,
    };
    let link = parse_link(linktype, frame).ok()?;
    let net = parse_network(link.ethertype, &frame[link.offset..]).ok()?;
    let icmp = frame.get(link.offset + net.header_len..)?;
    let quoted_type = match (net.protocol, *icmp.first()?) {
        (IPPROTO_ICMP, ICMP_DEST_UNREACH) => ETH_P_IP,
        (IPPROTO_ICMPV6, ICMPV6_DEST_UNREACH) => ETH_P_IPV6,
        _ => return None,
    };
    let quote = icmp.get(ICMP_HLEN..)?;
    let q = parse_network(quoted_type, quote).ok()?;
    if q.protocol != IPPROTO_TCP || q.fragment_offset != 0 {
        return None;
    }
    let t = quote.get(q.header_len..q.header_len + 8)?;
    Some(QuotedTcp {
        family: q.family,
        src: q.src,
        dst: q.dst,
        sport: u16::from_be_bytes([t[0], t[1]]),
        dport: u16::from_be_bytes([t[2], t[3]]),
        seq: u32::from_be_bytes([t[4], t[5], t[6], t[7]]),
    })
}

/// Parses a captured frame of the given LINKTYPE down to TCP.
pub fn parse_frame(linktype: u32, frame: &[u8]) -> Result<TcpPacket, Skip> {
    let link = parse_link(linktype, frame)?;
    let net = parse_network(link.ethertype, &frame[link.offset..])?;
    if net.fragment_offset != 0 {
        return Err(Skip::Fragment);
    }
    if net.protocol != tcpmon_common::tcp::proto::IPPROTO_TCP {
        return Err(Skip::NotTcp(net.protocol));
    }
    let tcp_bytes = &frame[link.offset + net.header_len..];
    let tcp = TcpHeader::parse(tcp_bytes)?;
    Ok(TcpPacket {
        family: net.family,
        src: net.src,
        dst: net.dst,
        sport: tcp.sport,
        dport: tcp.dport,
        vlan: link.vlan,
        seq: tcp.seq,
        ack: tcp.ack,
        flags: tcp.flags,
        payload_len: tcpmon_common::tcp::payload_len(net.payload_len, tcp.header_len as u32),
    })
}

#[cfg(test)]
mod tests {
    use super::build::{Ext, TcpBuilder, arp_frame, udp4_frame};
    use super::*;
    use tcpmon_common::tcp::flags::*;

    const A: [u8; 4] = [10, 0, 0, 1];
    const B: [u8; 4] = [10, 0, 0, 2];

    fn v6(last: u8) -> [u8; 16] {
        let mut a = [0u8; 16];
        a[0] = 0x20;
        a[1] = 0x01;
        a[2] = 0x0d;
        a[3] = 0xb8;
        a[15] = last;
        a
    }

    fn syn4() -> TcpBuilder {
        TcpBuilder::v4(A, 40000, B, 80).flags(SYN).seq(7).payload(0)
    }

    #[test]
    fn plain_ipv4_segment() {
        let f = TcpBuilder::v4(A, 40000, B, 80)
            .flags(ACK | PSH)
            .seq(1000)
            .ack(2000)
            .payload(123)
            .ethernet();
        let p = parse_frame(linktype::ETHERNET, &f).unwrap();
        assert_eq!((p.family, p.sport, p.dport), (4, 40000, 80));
        assert_eq!(&p.src[..4], &A);
        assert_eq!(&p.dst[..4], &B);
        assert_eq!((p.seq, p.ack, p.flags), (1000, 2000, ACK | PSH));
        assert_eq!(p.payload_len, 123);
        assert_eq!(p.vlan, 0);
    }

    #[test]
    fn vlan_and_qinq_keep_the_inner_id() {
        let f = syn4().vlan(42).ethernet();
        assert_eq!(parse_frame(linktype::ETHERNET, &f).unwrap().vlan, 42);
        let f = syn4().qinq(100, 200).ethernet();
        let p = parse_frame(linktype::ETHERNET, &f).unwrap();
        assert_eq!(p.vlan, 200);
        assert_eq!(p.sport, 40000);
        let f = syn4().vlan(1).vlan(2).vlan(3).ethernet();
        assert_eq!(parse_frame(linktype::ETHERNET, &f), Err(Skip::TooDeep));
    }

    #[test]
    fn ipv4_and_tcp_options_are_skipped() {
        let f = syn4()
            .ip_options(&[0x94, 0x04, 0, 0, 1, 1, 1, 1]) // router alert, NOPs
            .tcp_options(&[2, 4, 0x05, 0xb4, 1, 3, 3, 7])
            .payload(10)
            .ethernet();
        let p = parse_frame(linktype::ETHERNET, &f).unwrap();
        assert_eq!((p.sport, p.dport, p.payload_len), (40000, 80, 10));
    }

    #[test]
    fn ipv6_extension_headers_are_walked() {
        let f = TcpBuilder::v6(v6(1), 5555, v6(2), 443)
            .ext(Ext::HopByHop)
            .ext(Ext::Routing)
            .ext(Ext::DestOptions)
            .ext(Ext::Fragment(0))
            .payload(50)
            .ethernet();
        let p = parse_frame(linktype::ETHERNET, &f).unwrap();
        assert_eq!(
            (p.family, p.sport, p.dport, p.payload_len),
            (6, 5555, 443, 50)
        );
        assert_eq!(p.src, v6(1));
        let f = TcpBuilder::v6(v6(1), 5555, v6(2), 443)
            .ext(Ext::Fragment(3))
            .ethernet();
        assert_eq!(parse_frame(linktype::ETHERNET, &f), Err(Skip::Fragment));
        let deep = (0..5).fold(TcpBuilder::v6(v6(1), 1, v6(2), 2), |b, _| {
            b.ext(Ext::DestOptions)
        });
        assert_eq!(
            parse_frame(linktype::ETHERNET, &deep.ethernet()),
            Err(Skip::TooDeep)
        );
    }

    #[test]
    fn non_first_ipv4_fragment_is_skipped() {
        let f = syn4().fragment_offset(185).ethernet();
        assert_eq!(parse_frame(linktype::ETHERNET, &f), Err(Skip::Fragment));
    }

    #[test]
    fn non_tcp_is_classified() {
        assert_eq!(
            parse_frame(linktype::ETHERNET, &arp_frame()),
            Err(Skip::NotIp(0x0806))
        );
        assert_eq!(
            parse_frame(linktype::ETHERNET, &udp4_frame(A, B)),
            Err(Skip::NotTcp(17))
        );
    }

    #[test]
    fn bogus_ihl_and_data_offset_are_malformed() {
        let mut f = syn4().ethernet();
        f[14] = 0x44; // IHL 4
        assert!(matches!(parse_frame(1, &f), Err(Skip::Malformed(_))));
        let mut f = syn4().ethernet();
        f[14] = 0x4f; // IHL 15: 60 bytes of header, more than the packet has
        assert!(matches!(parse_frame(1, &f), Err(Skip::Malformed(_))));
        let mut f = syn4().ethernet();
        f[14 + 20 + 12] = 0x40; // data offset 4
        assert!(matches!(parse_frame(1, &f), Err(Skip::Malformed(_))));
        let mut f = syn4().ethernet();
        f[16..18].copy_from_slice(&10u16.to_be_bytes()); // total length < IHL
        assert!(matches!(parse_frame(1, &f), Err(Skip::Malformed(_))));
    }

    #[test]
    fn every_truncation_is_an_error_never_a_panic() {
        let frames = [
            syn4().qinq(1, 2).ip_options(&[1, 1, 1, 1]).ethernet(),
            TcpBuilder::v6(v6(1), 1, v6(2), 2)
                .vlan(5)
                .ext(Ext::HopByHop)
                .ext(Ext::Routing)
                .ethernet(),
        ];
        for f in frames {
            assert!(parse_frame(linktype::ETHERNET, &f).is_ok());
            for cut in 0..f.len() - 1 {
                // Only the TCP fixed header must be there; cuts inside it or
                // earlier are errors.
                let r = parse_frame(linktype::ETHERNET, &f[..cut]);
                assert!(r.is_err() || cut >= f.len() - 20 + 20, "cut {cut}: {r:?}");
            }
        }
        assert!(matches!(parse_frame(1, &[]), Err(Skip::Malformed(_))));
    }

    #[test]
    fn payload_counts_come_from_headers_not_captured_bytes() {
        let f = syn4().flags(ACK).payload(1400).ethernet();
        let cut = &f[..14 + 20 + 20 + 10];
        assert_eq!(parse_frame(1, cut).unwrap().payload_len, 1400);
    }

    #[test]
    fn oversized_and_tso_packets() {
        // IPv4 total length 0 (TSO): the captured length counts.
        let mut f = syn4().flags(ACK).payload(60_000).ethernet();
        f[16..18].copy_from_slice(&[0, 0]);
        assert_eq!(parse_frame(1, &f).unwrap().payload_len, 60_000);
        // A header claiming more than was captured is a snap-length cut, not an error.
        let mut f = syn4().flags(ACK).ethernet();
        f[16..18].copy_from_slice(&9_000u16.to_be_bytes());
        assert_eq!(parse_frame(1, &f).unwrap().payload_len, 9_000 - 40);
    }

    #[test]
    fn cooked_raw_and_loopback_link_types() {
        let ip = syn4().payload(5).ip();
        let mut sll = vec![0, 0, 0, 1, 0, 6, 0, 0, 0, 0, 0, 0, 0, 0, 0x08, 0x00];
        sll.extend_from_slice(&ip);
        let mut sll2 = vec![
            0x08, 0x00, 0, 0, 0, 0, 0, 1, 0, 1, 0, 6, 0, 0, 0, 0, 0, 0, 0, 0,
        ];
        sll2.extend_from_slice(&ip);
        let mut null_le = 2u32.to_le_bytes().to_vec();
        null_le.extend_from_slice(&ip);
        let mut loop_be = 2u32.to_be_bytes().to_vec();
        loop_be.extend_from_slice(&ip);
        for (lt, f) in [
            (linktype::LINUX_SLL, &sll),
            (linktype::LINUX_SLL2, &sll2),
            (linktype::NULL, &null_le),
            (linktype::LOOP, &loop_be),
            (linktype::RAW, &ip),
            (linktype::IPV4, &ip),
        ] {
            let p = parse_frame(lt, f).unwrap_or_else(|e| panic!("linktype {lt}: {e}"));
            assert_eq!((p.sport, p.payload_len), (40000, 5), "linktype {lt}");
        }
        let ip6 = TcpBuilder::v6(v6(1), 1, v6(2), 2).ip();
        let mut null6 = 30u32.to_le_bytes().to_vec();
        null6.extend_from_slice(&ip6);
        assert_eq!(parse_frame(linktype::NULL, &null6).unwrap().family, 6);
        assert_eq!(parse_frame(linktype::RAW, &ip6).unwrap().family, 6);
        assert_eq!(parse_frame(239, &ip), Err(Skip::UnsupportedLink(239)));
    }

    #[test]
    fn segment_direction_and_guess() {
        let f = TcpBuilder::v4(B, 40000, A, 80).ethernet();
        let (key, seg) = parse_frame(1, &f).unwrap().to_segment(5, 0, false);
        assert_eq!(seg.wire_packets, 1);
        assert_eq!(key.addr[0][..4], A);
        assert_eq!(seg.dir, 1);
        assert_eq!(seg.guess, 1);
        let f = TcpBuilder::v4(B, 40000, A, 80).vlan(9).ethernet();
        let p = parse_frame(1, &f).unwrap();
        assert_eq!(p.to_segment(5, 1, false).0.vlan, 0);
        assert_eq!(p.to_segment(5, 1, false).1.vlan, 9);
        assert_eq!(p.to_segment(5, 1, true).0.vlan, 9);
    }

    #[test]
    fn unreachables_name_the_quoted_segment() {
        for b in [
            syn4().seq(99),
            TcpBuilder::v6(v6(1), 5555, v6(2), 443).flags(SYN).seq(99),
        ] {
            let f = b.unreachable();
            assert!(matches!(parse_frame(1, &f), Err(Skip::NotTcp(1 | 58))));
            let q = parse_unreachable(1, &f).expect("a quote");
            let p = parse_frame(1, &b.ethernet()).unwrap();
            assert_eq!(
                (q.src, q.dst, q.sport, q.dport, q.seq),
                (p.src, p.dst, p.sport, p.dport, 99)
            );
            assert_eq!(q.key(), p.to_segment(0, 1, false).0);
            // Cut anywhere, it is no quote, and no panic.
            for cut in 0..f.len() {
                let _ = parse_unreachable(1, &f[..cut]);
            }
            assert_eq!(parse_unreachable(1, &f[..f.len() - 1]), None);
        }
        assert_eq!(parse_unreachable(1, &syn4().ethernet()), None);
        assert_eq!(parse_unreachable(1, &udp4_frame(A, B)), None);
    }

    #[test]
    fn pppoe_session_over_qinq() {
        let ip = syn4().payload(3).ip();
        let mut f = vec![0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01];
        f.extend_from_slice(&[0x81, 0x00, 0x03, 0xab, 0x81, 0x00, 0x02, 0xe8]);
        f.extend_from_slice(&[0x88, 0x64, 0x11, 0x00, 0xdd, 0xe5]);
        f.extend_from_slice(&((ip.len() + 2) as u16).to_be_bytes());
        f.extend_from_slice(&[0x00, 0x21]);
        f.extend_from_slice(&ip);
        let p = parse_frame(linktype::ETHERNET, &f).unwrap();
        assert_eq!((p.vlan, p.sport, p.payload_len), (0x2e8, 40000, 3));
        f[28..30].copy_from_slice(&[0xc0, 0x21]); // LCP, not IP
        assert!(matches!(parse_frame(1, &f), Err(Skip::NotIp(_))));
    }
}
