//! Link layers found in captures: Ethernet (with VLAN tags), Linux cooked
//! v1/v2, raw IP and BSD loopback. What comes out is the EtherType of the
//! network layer, where it starts, and the innermost VLAN id.

use super::Skip;
use tcpmon_common::tcp::proto::*;

/// LINKTYPE_* values (https://www.tcpdump.org/linktypes.html).
pub mod linktype {
    pub const NULL: u32 = 0;
    pub const ETHERNET: u32 = 1;
    pub const RAW: u32 = 101;
    pub const LOOP: u32 = 108;
    pub const LINUX_SLL: u32 = 113;
    pub const IPV4: u32 = 228;
    pub const IPV6: u32 = 229;
    pub const LINUX_SLL2: u32 = 276;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkInfo {
    pub ethertype: u16,
    /// Offset of the network header in the frame.
    pub offset: usize,
    /// Innermost VLAN id, 0 when untagged.
    pub vlan: u16,
}

pub fn parse_link(linktype: u32, frame: &[u8]) -> Result<LinkInfo, Skip> {
    let (ethertype, offset) = match linktype {
        linktype::ETHERNET => (be16(frame, 12, "Ethernet header")?, 14),
        linktype::LINUX_SLL => (be16(frame, 14, "Linux SLL header")?, 16),
        linktype::LINUX_SLL2 => (be16(frame, 0, "Linux SLL2 header")?, 20),
        linktype::RAW => (ip_version_ethertype(frame)?, 0),
        linktype::IPV4 => (ETH_P_IP, 0),
        linktype::IPV6 => (ETH_P_IPV6, 0),
        linktype::NULL | linktype::LOOP => (loopback_family(frame)?, 4),
        other => return Err(Skip::UnsupportedLink(other)),
    };
    if frame.len() < offset {
        return Err(Skip::Malformed("link header"));
    }
    let link = skip_vlan_tags(frame, ethertype, offset)?;
    if link.ethertype == ETH_P_PPP_SES {
        return pppoe_session(frame, link);
    }
    Ok(link)
}

/// PPPoE session frames (DSL access networks) carry IP after a 6-byte PPPoE
/// header and a 2-byte PPP protocol number.
fn pppoe_session(frame: &[u8], link: LinkInfo) -> Result<LinkInfo, Skip> {
    let ethertype = match be16(frame, link.offset + 6, "PPPoE header")? {
        PPP_IP => ETH_P_IP,
        PPP_IPV6 => ETH_P_IPV6,
        _ => return Err(Skip::NotIp(ETH_P_PPP_SES)),
    };
    Ok(LinkInfo {
        ethertype,
        offset: link.offset + 8,
        vlan: link.vlan,
    })
}

/// Follows up to `MAX_VLAN_TAGS` 802.1Q/802.1ad tags, keeping the innermost id.
fn skip_vlan_tags(frame: &[u8], mut ethertype: u16, mut offset: usize) -> Result<LinkInfo, Skip> {
    let mut vlan = 0;
    for _ in 0..MAX_VLAN_TAGS {
        if !is_vlan(ethertype) {
            return Ok(LinkInfo {
                ethertype,
                offset,
                vlan,
            });
        }
        vlan = be16(frame, offset, "VLAN tag")? & 0x0fff;
        ethertype = be16(frame, offset + 2, "VLAN tag")?;
        offset += 4;
    }
    if is_vlan(ethertype) {
        return Err(Skip::TooDeep);
    }
    Ok(LinkInfo {
        ethertype,
        offset,
        vlan,
    })
}

fn is_vlan(ethertype: u16) -> bool {
    matches!(ethertype, ETH_P_8021Q | ETH_P_8021AD | ETH_P_QINQ1)
}

fn ip_version_ethertype(frame: &[u8]) -> Result<u16, Skip> {
    match frame.first().map(|b| b >> 4) {
        Some(4) => Ok(ETH_P_IP),
        Some(6) => Ok(ETH_P_IPV6),
        Some(_) => Err(Skip::NotIp(0)),
        None => Err(Skip::Malformed("raw IP frame")),
    }
}

/// BSD loopback: a 4-byte address family in the capturing host's byte order
/// (NULL) or network order (LOOP). AF_INET is 2 everywhere; AF_INET6 is 24,
/// 28 or 30 depending on the BSD.
fn loopback_family(frame: &[u8]) -> Result<u16, Skip> {
    let b: [u8; 4] = frame
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .ok_or(Skip::Malformed("loopback header"))?;
    let family = u32::from_le_bytes(b).min(u32::from_be_bytes(b));
    match family {
        2 => Ok(ETH_P_IP),
        24 | 28 | 30 => Ok(ETH_P_IPV6),
        _ => Err(Skip::NotIp(0)),
    }
}

pub(super) fn be16(b: &[u8], at: usize, what: &'static str) -> Result<u16, Skip> {
    match b.get(at..at + 2) {
        Some(x) => Ok(u16::from_be_bytes([x[0], x[1]])),
        None => Err(Skip::Malformed(what)),
    }
}
