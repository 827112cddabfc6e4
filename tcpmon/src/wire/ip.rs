//! IPv4 and IPv6 headers (IPv6 with its extension-header chain).

use super::Skip;
use super::link::be16;
use tcpmon_common::tcp::proto::*;

/// What the transport layer needs from the network layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetworkInfo {
    pub family: u8,
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// Transport protocol after any IPv6 extension headers.
    pub protocol: u8,
    /// IP header plus extension headers, in bytes.
    pub header_len: usize,
    /// Transport bytes as the headers state them (not as captured).
    pub payload_len: u32,
    /// Fragment offset in 8-byte units; only offset 0 carries a TCP header.
    pub fragment_offset: u16,
}

pub fn parse_network(ethertype: u16, bytes: &[u8]) -> Result<NetworkInfo, Skip> {
    match ethertype {
        ETH_P_IP => Ipv4Packet::new_checked(bytes)?.info(),
        ETH_P_IPV6 => Ipv6Packet::new_checked(bytes)?.info(),
        other => Err(Skip::NotIp(other)),
    }
}

/// A view over an IPv4 header whose fixed part and options are present.
pub struct Ipv4Packet<'a> {
    buf: &'a [u8],
}

impl<'a> Ipv4Packet<'a> {
    pub fn new_checked(buf: &'a [u8]) -> Result<Self, Skip> {
        if buf.len() < 20 {
            return Err(Skip::Malformed("IPv4 header: too short"));
        }
        let p = Ipv4Packet { buf };
        if p.version() != 4 {
            return Err(Skip::Malformed("IPv4 header: version is not 4"));
        }
        if p.header_len() < 20 {
            return Err(Skip::Malformed("IPv4 header: IHL below 5"));
        }
        if p.header_len() > buf.len() {
            return Err(Skip::Malformed("IPv4 header: options cut short"));
        }
        let total = p.total_len() as usize;
        if total != 0 && total < p.header_len() {
            return Err(Skip::Malformed(
                "IPv4 header: total length below header length",
            ));
        }
        Ok(p)
    }

    pub fn version(&self) -> u8 {
        self.buf[0] >> 4
    }
    pub fn header_len(&self) -> usize {
        ((self.buf[0] & 0x0f) as usize) * 4
    }
    pub fn total_len(&self) -> u16 {
        u16::from_be_bytes([self.buf[2], self.buf[3]])
    }
    pub fn fragment_offset(&self) -> u16 {
        u16::from_be_bytes([self.buf[6], self.buf[7]]) & 0x1fff
    }
    pub fn protocol(&self) -> u8 {
        self.buf[9]
    }
    pub fn src(&self) -> [u8; 4] {
        [self.buf[12], self.buf[13], self.buf[14], self.buf[15]]
    }
    pub fn dst(&self) -> [u8; 4] {
        [self.buf[16], self.buf[17], self.buf[18], self.buf[19]]
    }

    fn info(&self) -> Result<NetworkInfo, Skip> {
        // Total length 0 is a TSO/BIG TCP packet captured before
        // segmentation: only the captured length tells its size.
        let total = match self.total_len() {
            0 => self.buf.len() as u32,
            n => n as u32,
        };
        Ok(NetworkInfo {
            family: 4,
            src: widen(self.src()),
            dst: widen(self.dst()),
            protocol: self.protocol(),
            header_len: self.header_len(),
            payload_len: total - self.header_len() as u32,
            fragment_offset: self.fragment_offset(),
        })
    }
}

/// A view over an IPv6 fixed header.
pub struct Ipv6Packet<'a> {
    buf: &'a [u8],
}

impl<'a> Ipv6Packet<'a> {
    pub fn new_checked(buf: &'a [u8]) -> Result<Self, Skip> {
        if buf.len() < 40 {
            return Err(Skip::Malformed("IPv6 header: too short"));
        }
        if buf[0] >> 4 != 6 {
            return Err(Skip::Malformed("IPv6 header: version is not 6"));
        }
        Ok(Ipv6Packet { buf })
    }

    pub fn payload_len(&self) -> u16 {
        u16::from_be_bytes([self.buf[4], self.buf[5]])
    }
    pub fn next_header(&self) -> u8 {
        self.buf[6]
    }
    pub fn src(&self) -> [u8; 16] {
        self.buf[8..24].try_into().expect("checked length")
    }
    pub fn dst(&self) -> [u8; 16] {
        self.buf[24..40].try_into().expect("checked length")
    }

    /// Walks hop-by-hop, routing, destination-options and fragment headers,
    /// the same set and depth as the kernel parser.
    fn info(&self) -> Result<NetworkInfo, Skip> {
        // Payload length 0 is a jumbogram or BIG TCP: use what was captured.
        let stated = match self.payload_len() {
            0 => (self.buf.len() - 40) as u32,
            n => n as u32,
        };
        let mut next = self.next_header();
        let mut at = 40usize;
        let mut fragment_offset = 0;
        let mut walked = 0;
        while matches!(
            next,
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_FRAGMENT
        ) {
            if walked == MAX_IPV6_EXT {
                return Err(Skip::TooDeep);
            }
            walked += 1;
            let ext = self
                .buf
                .get(at..at + 8)
                .ok_or(Skip::Malformed("IPv6 extension header cut short"))?;
            let len = if next == IPPROTO_FRAGMENT {
                fragment_offset = be16(ext, 2, "IPv6 fragment header")? >> 3;
                8
            } else {
                (ext[1] as usize + 1) * 8
            };
            next = ext[0];
            at += len;
            if at > self.buf.len() {
                return Err(Skip::Malformed("IPv6 extension header cut short"));
            }
            if fragment_offset != 0 {
                break;
            }
        }
        Ok(NetworkInfo {
            family: 6,
            src: self.src(),
            dst: self.dst(),
            protocol: next,
            header_len: at,
            payload_len: stated.saturating_sub((at - 40) as u32),
            fragment_offset,
        })
    }
}

fn widen(a: [u8; 4]) -> [u8; 16] {
    let mut out = [0; 16];
    out[..4].copy_from_slice(&a);
    out
}
