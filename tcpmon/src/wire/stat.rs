//! What the `stat` view needs from a frame: its network-layer size and its
//! protocol class, found by the same link and IP views as the TCP parser.

use tcpmon_common::stat::classify;

use super::Skip;
use super::ip::parse_network;
use super::link::{linktype, parse_link};

/// Bytes of link header the `stat` view takes off the wire length. Ethernet
/// counts 14 even when VLAN tags follow, as tcpstat does, so byte counts
/// match it; link types tcpmon does not parse keep their whole length.
pub fn link_header_len(lt: u32) -> u32 {
    match lt {
        linktype::ETHERNET => 14,
        linktype::LINUX_SLL => 16,
        linktype::LINUX_SLL2 => 20,
        linktype::NULL | linktype::LOOP => 4,
        _ => 0,
    }
}

/// The `tcpmon_common::stat::class` bits of a frame: ARP, IPv4/IPv6 by the
/// network layer under any VLAN tags or PPPoE, and TCP/UDP/ICMP by the
/// transport protocol after IPv6 extension headers. A frame cut before its
/// transport protocol is known still counts as IPv4 or IPv6. The one error
/// is a link type tcpmon does not parse.
pub fn frame_class(lt: u32, frame: &[u8]) -> Result<u8, Skip> {
    let link = match parse_link(lt, frame) {
        Ok(link) => link,
        Err(e @ Skip::UnsupportedLink(_)) => return Err(e),
        Err(_) => return Ok(0),
    };
    let protocol = match parse_network(link.ethertype, &frame[link.offset..]) {
        Ok(net) => net.protocol,
        // No protocol number is 255 ("reserved"), so nothing more is counted.
        Err(_) => 255,
    };
    Ok(classify(link.ethertype, protocol))
}

#[cfg(test)]
mod tests {
    use super::super::build::{Ext, TcpBuilder, arp_frame, udp4_frame};
    use super::*;
    use tcpmon_common::stat::class::*;

    fn frame_class(lt: u32, f: &[u8]) -> u8 {
        super::frame_class(lt, f).unwrap_or(0)
    }

    #[test]
    fn classes_by_real_network_layer() {
        let a = [10, 0, 0, 1];
        let b = [10, 0, 0, 2];
        let eth = linktype::ETHERNET;
        assert_eq!(frame_class(eth, &arp_frame()), ARP);
        assert_eq!(frame_class(eth, &udp4_frame(a, b)), IPV4 | UDP);
        let tcp = TcpBuilder::v4(a, 1, b, 2);
        assert_eq!(
            frame_class(eth, &tcp.clone().vlan(7).ethernet()),
            IPV4 | TCP
        );
        assert_eq!(frame_class(linktype::RAW, &tcp.ip()), IPV4 | TCP);
        let mut v6 = [0u8; 16];
        v6[15] = 1;
        let f = TcpBuilder::v6(v6, 1, v6, 2)
            .ext(Ext::HopByHop)
            .ext(Ext::DestOptions)
            .ethernet();
        assert_eq!(frame_class(eth, &f), IPV6 | TCP);
        // Cut inside the extension headers: IPv6, protocol unknown.
        assert_eq!(frame_class(eth, &f[..14 + 44]), IPV6);
        assert_eq!(super::frame_class(239, &f), Err(Skip::UnsupportedLink(239)));
    }
}
