//! ICMP and ICMPv6 destination-unreachable messages quote the start of the
//! packet they answer: its IP header and at least 8 bytes of TCP (ports and
//! sequence number). tcpeek's `--icmp` ends a pending handshake as
//! "unreach" when such a quote names it; both backends decide that here.

use crate::flow::{FlowRecord, State};

/// ICMP type "destination unreachable".
pub const ICMP_DEST_UNREACH: u8 = 3;
/// ICMPv6 type "destination unreachable".
pub const ICMPV6_DEST_UNREACH: u8 = 1;
/// The ICMP header before the quote, in bytes (both versions).
pub const ICMP_HLEN: usize = 8;

/// Whether a destination-unreachable quoting a TCP segment with sequence
/// number `seq` ends this connection's handshake: the handshake is still
/// pending and the quote is its SYN or its SYN+ACK (the sequence number
/// guards against quotes of older connections on the same tuple).
#[inline(always)]
pub fn quote_ends_handshake(rec: &FlowRecord, seq: u32) -> bool {
    let pending = rec.state == State::SynSent || rec.state == State::SynAckAck;
    pending
        && ((rec.syn_count > 0 && seq == rec.syn_seq)
            || (rec.synack_count > 0 && seq == rec.synack_seq))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_pending_handshakes_own_segments_match() {
        let mut rec = FlowRecord::EMPTY;
        rec.state = State::SynSent;
        rec.syn_count = 1;
        rec.syn_seq = 100;
        assert!(quote_ends_handshake(&rec, 100));
        assert!(!quote_ends_handshake(&rec, 101));
        rec.state = State::SynAckAck;
        rec.synack_count = 1;
        rec.synack_seq = 500;
        assert!(quote_ends_handshake(&rec, 500));
        rec.state = State::Established;
        assert!(!quote_ends_handshake(&rec, 100));
    }
}
