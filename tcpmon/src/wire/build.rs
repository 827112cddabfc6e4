//! Builds TCP/IP frames from a few fields: crafted packets for tests of both
//! parsers and the kernel programs, and synthetic captures for benchmarks.

use tcpmon_common::tcp::proto::*;

/// An IPv6 extension header to put before TCP.
#[derive(Clone, Copy, Debug)]
pub enum Ext {
    HopByHop,
    DestOptions,
    Routing,
    /// Fragment header with this offset (8-byte units); 0 is a first fragment.
    Fragment(u16),
}

/// A TCP segment to build; every setter returns the builder.
#[derive(Clone, Debug)]
pub struct TcpBuilder {
    v6: bool,
    src: [u8; 16],
    dst: [u8; 16],
    sport: u16,
    dport: u16,
    seq: u32,
    ack: u32,
    flags: u8,
    payload: usize,
    /// (TPID, VLAN id), outermost first.
    vlans: Vec<(u16, u16)>,
    ip_options: Vec<u8>,
    tcp_options: Vec<u8>,
    ext: Vec<Ext>,
    fragment_offset: u16,
}

impl TcpBuilder {
    pub fn v4(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> TcpBuilder {
        let mut s = [0; 16];
        let mut d = [0; 16];
        s[..4].copy_from_slice(&src);
        d[..4].copy_from_slice(&dst);
        TcpBuilder::new(false, s, sport, d, dport)
    }

    pub fn v6(src: [u8; 16], sport: u16, dst: [u8; 16], dport: u16) -> TcpBuilder {
        TcpBuilder::new(true, src, sport, dst, dport)
    }

    fn new(v6: bool, src: [u8; 16], sport: u16, dst: [u8; 16], dport: u16) -> TcpBuilder {
        TcpBuilder {
            v6,
            src,
            dst,
            sport,
            dport,
            seq: 0,
            ack: 0,
            flags: tcpmon_common::tcp::flags::ACK,
            payload: 0,
            vlans: Vec::new(),
            ip_options: Vec::new(),
            tcp_options: Vec::new(),
            ext: Vec::new(),
            fragment_offset: 0,
        }
    }

    pub fn flags(mut self, flags: u8) -> Self {
        self.flags = flags;
        self
    }
    pub fn seq(mut self, seq: u32) -> Self {
        self.seq = seq;
        self
    }
    pub fn ack(mut self, ack: u32) -> Self {
        self.ack = ack;
        self
    }
    /// Payload bytes (filled with a pattern).
    pub fn payload(mut self, len: usize) -> Self {
        self.payload = len;
        self
    }
    /// Adds an 802.1Q tag (outermost first when called repeatedly).
    pub fn vlan(mut self, id: u16) -> Self {
        self.vlans.push((ETH_P_8021Q, id));
        self
    }
    /// An 802.1ad outer tag and an 802.1Q inner tag.
    pub fn qinq(mut self, outer: u16, inner: u16) -> Self {
        self.vlans.push((ETH_P_8021AD, outer));
        self.vlans.push((ETH_P_8021Q, inner));
        self
    }
    /// IPv4 options, padded with end-of-list to a multiple of 4 bytes.
    pub fn ip_options(mut self, opts: &[u8]) -> Self {
        self.ip_options = padded(opts);
        self
    }
    /// TCP options, padded with end-of-list to a multiple of 4 bytes.
    pub fn tcp_options(mut self, opts: &[u8]) -> Self {
        self.tcp_options = padded(opts);
        self
    }
    /// Appends an IPv6 extension header.
    pub fn ext(mut self, ext: Ext) -> Self {
        self.ext.push(ext);
        self
    }
    /// IPv4 fragment offset in 8-byte units.
    pub fn fragment_offset(mut self, offset: u16) -> Self {
        self.fragment_offset = offset;
        self
    }

    /// An Ethernet frame (with the VLAN tags, if any).
    pub fn ethernet(&self) -> Vec<u8> {
        let mut f = vec![0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01];
        for (tpid, id) in &self.vlans {
            f.extend_from_slice(&tpid.to_be_bytes());
            f.extend_from_slice(&(id & 0x0fff).to_be_bytes());
        }
        let ethertype = if self.v6 { ETH_P_IPV6 } else { ETH_P_IP };
        f.extend_from_slice(&ethertype.to_be_bytes());
        f.extend_from_slice(&self.ip());
        f
    }

    /// The IP packet alone (for raw-IP link types).
    pub fn ip(&self) -> Vec<u8> {
        let tcp = self.tcp();
        if self.v6 {
            self.ipv6(&tcp)
        } else {
            self.ipv4(&tcp)
        }
    }

    fn tcp(&self) -> Vec<u8> {
        let mut t = Vec::with_capacity(20 + self.tcp_options.len() + self.payload);
        t.extend_from_slice(&self.sport.to_be_bytes());
        t.extend_from_slice(&self.dport.to_be_bytes());
        t.extend_from_slice(&self.seq.to_be_bytes());
        t.extend_from_slice(&self.ack.to_be_bytes());
        let offset = ((20 + self.tcp_options.len()) / 4) as u8;
        t.push(offset << 4);
        t.push(self.flags);
        t.extend_from_slice(&64240u16.to_be_bytes());
        t.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
        t.extend_from_slice(&self.tcp_options);
        t.extend((0..self.payload).map(|i| b'a' + (i % 26) as u8));
        t
    }

    fn ipv4(&self, tcp: &[u8]) -> Vec<u8> {
        let hlen = 20 + self.ip_options.len();
        let total = (hlen + tcp.len()) as u16;
        let mut p = Vec::with_capacity(total as usize);
        p.push(0x40 | (hlen / 4) as u8);
        p.push(0);
        p.extend_from_slice(&total.to_be_bytes());
        p.extend_from_slice(&[0x12, 0x34]);
        p.extend_from_slice(&(self.fragment_offset & 0x1fff).to_be_bytes());
        p.extend_from_slice(&[64, IPPROTO_TCP, 0, 0]);
        p.extend_from_slice(&self.src[..4]);
        p.extend_from_slice(&self.dst[..4]);
        p.extend_from_slice(&self.ip_options);
        let sum = checksum(&p, 0);
        p[10..12].copy_from_slice(&sum.to_be_bytes());
        let mut tcp = tcp.to_vec();
        let pseudo = pseudo_sum(&self.src[..4], &self.dst[..4], tcp.len());
        let sum = checksum(&tcp, pseudo);
        tcp[16..18].copy_from_slice(&sum.to_be_bytes());
        p.extend_from_slice(&tcp);
        p
    }

    fn ipv6(&self, tcp: &[u8]) -> Vec<u8> {
        let mut ext = Vec::new();
        for (i, e) in self.ext.iter().enumerate() {
            let next = self.ext.get(i + 1).map_or(IPPROTO_TCP, ext_number);
            match e {
                Ext::Fragment(off) => {
                    ext.extend_from_slice(&[next, 0]);
                    ext.extend_from_slice(&(off << 3).to_be_bytes());
                    ext.extend_from_slice(&[0, 0, 0, 1]);
                }
                // 8 bytes: next header, length 0, PadN with 4 bytes of padding.
                Ext::HopByHop | Ext::DestOptions => {
                    ext.extend_from_slice(&[next, 0, 1, 4, 0, 0, 0, 0]);
                }
                // 24 bytes: type 0 header with one address, segments left 0.
                Ext::Routing => {
                    ext.extend_from_slice(&[next, 2, 0, 0, 0, 0, 0, 0]);
                    ext.extend_from_slice(&self.dst);
                }
            }
        }
        let first = self.ext.first().map_or(IPPROTO_TCP, ext_number);
        let mut p = vec![0x60, 0, 0, 0];
        p.extend_from_slice(&((ext.len() + tcp.len()) as u16).to_be_bytes());
        p.extend_from_slice(&[first, 64]);
        p.extend_from_slice(&self.src);
        p.extend_from_slice(&self.dst);
        p.extend_from_slice(&ext);
        let mut tcp = tcp.to_vec();
        let pseudo = pseudo_sum(&self.src, &self.dst, tcp.len());
        let sum = checksum(&tcp, pseudo);
        tcp[16..18].copy_from_slice(&sum.to_be_bytes());
        p.extend_from_slice(&tcp);
        p
    }
}

fn ext_number(e: &Ext) -> u8 {
    match e {
        Ext::HopByHop => IPPROTO_HOPOPTS,
        Ext::DestOptions => IPPROTO_DSTOPTS,
        Ext::Routing => IPPROTO_ROUTING,
        Ext::Fragment(_) => IPPROTO_FRAGMENT,
    }
}

fn padded(opts: &[u8]) -> Vec<u8> {
    let mut v = opts.to_vec();
    v.resize(opts.len().div_ceil(4) * 4, 0);
    v
}

fn pseudo_sum(src: &[u8], dst: &[u8], tcp_len: usize) -> u32 {
    let mut sum = 0u32;
    for pair in src.chunks(2).chain(dst.chunks(2)) {
        sum += u16::from_be_bytes([pair[0], pair[1]]) as u32;
    }
    sum + IPPROTO_TCP as u32 + tcp_len as u32
}

/// The Internet checksum of `data`, starting from a partial `sum`.
fn checksum(data: &[u8], mut sum: u32) -> u16 {
    for chunk in data.chunks(2) {
        let hi = chunk[0] as u32;
        let lo = chunk.get(1).copied().unwrap_or(0) as u32;
        sum += (hi << 8) | lo;
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A non-TCP frame: an ARP request.
pub fn arp_frame() -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01]);
    f.extend_from_slice(&ETH_P_ARP.to_be_bytes());
    f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01, 10, 0, 0, 1]);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&[10, 0, 0, 2]);
    f
}

/// A UDP datagram over IPv4 in Ethernet (checksums zero: never validated).
pub fn udp4_frame(src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01, 0x08, 0x00];
    f.extend_from_slice(&[0x45, 0, 0, 28, 0, 0, 0, 0, 64, IPPROTO_UDP, 0, 0]);
    f.extend_from_slice(&src);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&[0x30, 0x39, 0, 53, 0, 8, 0, 0]);
    f
}

impl TcpBuilder {
    /// An ICMP (or, for an IPv6 segment, ICMPv6) destination-unreachable
    /// in Ethernet, sent back to this segment's sender by its destination
    /// and quoting the segment's IP header and first 8 TCP bytes, as a host
    /// refusing it with "port unreachable" would.
    pub fn unreachable(&self) -> Vec<u8> {
        let ip = self.ip();
        let hlen = if self.v6 {
            40
        } else {
            (ip[0] & 0x0f) as usize * 4
        };
        let quote = &ip[..(hlen + 8).min(ip.len())];
        let mut f = vec![0x02, 0, 0, 0, 0, 0x01, 0x02, 0, 0, 0, 0, 0x02];
        let (icmp_type, code) = if self.v6 { (1u8, 4u8) } else { (3u8, 3u8) };
        let mut icmp = vec![icmp_type, code, 0, 0, 0, 0, 0, 0];
        icmp.extend_from_slice(quote);
        if self.v6 {
            f.extend_from_slice(&ETH_P_IPV6.to_be_bytes());
            f.extend_from_slice(&[0x60, 0, 0, 0]);
            f.extend_from_slice(&(icmp.len() as u16).to_be_bytes());
            f.extend_from_slice(&[IPPROTO_ICMPV6, 64]);
            f.extend_from_slice(&self.dst);
            f.extend_from_slice(&self.src);
        } else {
            let sum = checksum(&icmp, 0);
            icmp[2..4].copy_from_slice(&sum.to_be_bytes());
            let total = (20 + icmp.len()) as u16;
            f.extend_from_slice(&ETH_P_IP.to_be_bytes());
            let mut h = vec![0x45, 0];
            h.extend_from_slice(&total.to_be_bytes());
            h.extend_from_slice(&[0, 0, 0, 0, 64, IPPROTO_ICMP, 0, 0]);
            h.extend_from_slice(&self.dst[..4]);
            h.extend_from_slice(&self.src[..4]);
            let sum = checksum(&h, 0);
            h[10..12].copy_from_slice(&sum.to_be_bytes());
            f.extend_from_slice(&h);
        }
        f.extend_from_slice(&icmp);
        f
    }
}
