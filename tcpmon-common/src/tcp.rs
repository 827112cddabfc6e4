//! The parsed TCP segment both header parsers produce, and the constants of
//! the protocols they walk.

/// TCP flag bits (the low byte of the flags field).
pub mod flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
    pub const URG: u8 = 0x20;
    pub const ECE: u8 = 0x40;
    pub const CWR: u8 = 0x80;
}

/// EtherTypes and IP protocol numbers the parsers recognise.
pub mod proto {
    pub const ETH_P_IP: u16 = 0x0800;
    pub const ETH_P_ARP: u16 = 0x0806;
    pub const ETH_P_IPV6: u16 = 0x86DD;
    pub const ETH_P_8021Q: u16 = 0x8100;
    pub const ETH_P_8021AD: u16 = 0x88A8;
    /// Old QinQ outer tag still seen on some switches.
    pub const ETH_P_QINQ1: u16 = 0x9100;
    /// PPPoE session stage: 6-byte PPPoE header, then a 2-byte PPP protocol.
    pub const ETH_P_PPP_SES: u16 = 0x8864;
    pub const PPP_IP: u16 = 0x0021;
    pub const PPP_IPV6: u16 = 0x0057;

    pub const IPPROTO_HOPOPTS: u8 = 0;
    pub const IPPROTO_ICMP: u8 = 1;
    pub const IPPROTO_TCP: u8 = 6;
    pub const IPPROTO_UDP: u8 = 17;
    pub const IPPROTO_ROUTING: u8 = 43;
    pub const IPPROTO_FRAGMENT: u8 = 44;
    pub const IPPROTO_ICMPV6: u8 = 58;
    pub const IPPROTO_DSTOPTS: u8 = 60;

    /// VLAN tags a parser follows before giving up (802.1ad outer + 802.1Q inner).
    pub const MAX_VLAN_TAGS: usize = 2;
    /// IPv6 extension headers a parser walks before giving up.
    pub const MAX_IPV6_EXT: usize = 4;
}

/// One TCP segment as the update rule needs it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Segment {
    /// Backend clock: kernel monotonic time, or packet time for captures.
    pub ts_ns: u64,
    pub seq: u32,
    pub ack: u32,
    /// TCP payload bytes: IP payload length minus the TCP header.
    pub payload_len: u32,
    /// Packets on the wire this segment stands for (GSO segments), at least 1.
    pub wire_packets: u32,
    pub flags: u8,
    /// 0 when sent by endpoint 0 of the flow key.
    pub dir: u8,
    /// The side taken as client if no handshake is seen (`FlowKey::guess_client`).
    pub guess: u8,
    pub _pad: u8,
    /// Innermost VLAN id, 0 when untagged.
    pub vlan: u16,
    pub _pad2: [u8; 2],
}

/// TCP payload length from the IP layer's payload length (IPv4 total length
/// minus its header, or the IPv6 payload length minus extension headers) and
/// the TCP header length. Lengths come from the headers, not from captured
/// bytes, so a snap length that cut the frame does not change the count; a
/// header claiming less than the TCP header counts as no payload.
#[inline(always)]
pub fn payload_len(ip_payload: u32, tcp_header: u32) -> u32 {
    ip_payload.saturating_sub(tcp_header)
}

/// `a` comes before `b` in sequence space (RFC 1982 arithmetic).
#[inline(always)]
pub fn seq_before(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}
