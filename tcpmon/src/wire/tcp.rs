//! The TCP header.

use super::Skip;

/// The TCP header fields tcpmon reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpHeader {
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    /// Data offset in bytes, options included.
    pub header_len: usize,
}

impl TcpHeader {
    /// Parses the fixed header at the start of `b`. Options are not read, so
    /// a snap length that cut them (common with IPv6 and `-s 68`) still
    /// yields the segment; the data offset still gives the payload length.
    pub fn parse(b: &[u8]) -> Result<TcpHeader, Skip> {
        if b.len() < 20 {
            return Err(Skip::Malformed("TCP header: too short"));
        }
        let header_len = ((b[12] >> 4) as usize) * 4;
        if header_len < 20 {
            return Err(Skip::Malformed("TCP header: data offset below 5"));
        }
        Ok(TcpHeader {
            sport: u16::from_be_bytes([b[0], b[1]]),
            dport: u16::from_be_bytes([b[2], b[3]]),
            seq: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
            ack: u32::from_be_bytes([b[8], b[9], b[10], b[11]]),
            flags: b[13],
            header_len,
        })
    }
}
