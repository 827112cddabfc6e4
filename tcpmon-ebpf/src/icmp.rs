//! `--icmp`: ICMP and ICMPv6 destination-unreachable messages whose quote
//! names a pending handshake in `FLOWS4` or `FLOWS` emit an `Unreach` event, so user
//! space can end that session as tcpeek's "failure (unreach)". The message
//! itself still counts as not TCP, and nothing in the flow record changes.

use tcpmon_common::{
    EventKind, FlowKey, FlowKey4, FlowRecord,
    icmp::{ICMP_DEST_UNREACH, ICMP_HLEN, ICMPV6_DEST_UNREACH, quote_ends_handshake},
    tcp::proto,
};

use super::{
    FLOWS, FLOWS4, IPV4_HLEN, IPV6_HLEN, Packet, Res, at, be16_at, be32_at, emit, ne32_at, u8_at,
    v6_addr_at,
};

/// Set to 1 by the loader with `--icmp`; read-only, so without it the
/// verifier prunes the quote parsing.
#[unsafe(no_mangle)]
static ICMP_UNREACH: u8 = 0;

#[inline(always)]
fn enabled() -> bool {
    super::setting(&ICMP_UNREACH) != 0
}

/// An ICMP message at `off` (after the IPv4 header).
#[inline(always)]
pub(crate) fn v4(pkt: &Packet, off: usize) {
    if enabled() {
        // A message too short to quote anything is simply not one of these.
        let _ = quote_v4(pkt, off);
    }
}

/// An ICMPv6 message at `off` (after the IPv6 header and its extensions).
#[inline(always)]
pub(crate) fn v6(pkt: &Packet, off: usize) {
    if enabled() {
        let _ = quote_v6(pkt, off);
    }
}

#[inline(always)]
fn quote_v4(pkt: &Packet, off: usize) -> Res<()> {
    let icmp = at::<ICMP_HLEN>(pkt, off)?;
    if u8_at(icmp, 0) != ICMP_DEST_UNREACH {
        return Ok(());
    }
    let q = off + ICMP_HLEN;
    let ip = at::<IPV4_HLEN>(pkt, q)?;
    let ihl = ((u8_at(ip, 0) & 0x0f) as usize) * 4;
    if ihl < IPV4_HLEN || u8_at(ip, 9) != proto::IPPROTO_TCP {
        return Ok(());
    }
    let tcp = at::<8>(pkt, q + ihl)?;
    // IPv4 flows live in FLOWS4 under the narrow key (see `track`).
    let (src, dst) = (ne32_at(ip, 12).to_ne_bytes(), ne32_at(ip, 16).to_ne_bytes());
    let (key, _) = FlowKey4::new(src, be16_at(tcp, 0), dst, be16_at(tcp, 2), 0);
    // SAFETY: a lookup in our own map; the record is copied out by `emit`.
    if let Some(rec) = unsafe { FLOWS4.get(&key) } {
        matched(&key.widen(), rec, tcp);
    }
    Ok(())
}

#[inline(always)]
fn quote_v6(pkt: &Packet, off: usize) -> Res<()> {
    let icmp = at::<ICMP_HLEN>(pkt, off)?;
    if u8_at(icmp, 0) != ICMPV6_DEST_UNREACH {
        return Ok(());
    }
    let q = off + ICMP_HLEN;
    let ip = at::<IPV6_HLEN>(pkt, q)?;
    // Quotes of SYNs carry no extension headers in practice; others are
    // not followed.
    if u8_at(ip, 6) != proto::IPPROTO_TCP {
        return Ok(());
    }
    let tcp = at::<8>(pkt, q + IPV6_HLEN)?;
    let (src, dst) = (v6_addr_at(ip, 8), v6_addr_at(ip, 24));
    let (key, _) = FlowKey::new(6, src, be16_at(tcp, 0), dst, be16_at(tcp, 2), 0);
    // SAFETY: as above.
    if let Some(rec) = unsafe { FLOWS.get(&key) } {
        matched(&key, rec, tcp);
    }
    Ok(())
}

/// `tcp`: the quoted segment's first 8 bytes (ports, sequence number);
/// `rec`: the record of the connection its tuple names. VLAN 0 in the key:
/// with --split-vlans, quotes of VLAN-keyed flows are not matched.
#[inline(always)]
fn matched(key: &FlowKey, rec: &FlowRecord, tcp: usize) {
    if quote_ends_handshake(rec, be32_at(tcp, 4)) {
        emit(key, EventKind::Unreach, rec);
    }
}
