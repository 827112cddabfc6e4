//! The flow key (canonical 5-tuple plus VLAN) and the per-flow record.

/// A connection's identity, independent of packet direction: the lower
/// endpoint (address, then port) always comes first, so both directions of a
/// connection find the same map entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct FlowKey {
    /// IPv4 addresses use the first four bytes; the rest stay zero.
    pub addr: [[u8; 16]; 2],
    /// Host byte order.
    pub port: [u16; 2],
    /// 0 unless VLANs separate flows (`--split-vlans`, for overlapping
    /// address spaces); then the innermost VLAN id. By default a connection
    /// whose directions travel on different VLANs (routed between them) is
    /// one connection, as tshark and tcptrack see it: the record keeps each
    /// direction's VLAN.
    pub vlan: u16,
    /// 4 or 6.
    pub family: u8,
    pub _pad: u8,
}

impl FlowKey {
    /// Builds the canonical key for a segment sent from `src` to `dst`, and
    /// the direction of that segment: 0 when the sender is endpoint 0.
    #[inline(always)]
    pub fn new(
        family: u8,
        src: [u8; 16],
        sport: u16,
        dst: [u8; 16],
        dport: u16,
        vlan: u16,
    ) -> (FlowKey, u8) {
        let src_first = endpoint_le(&src, sport, &dst, dport);
        let (a, b, pa, pb, dir) = if src_first {
            (src, dst, sport, dport, 0)
        } else {
            (dst, src, dport, sport, 1)
        };
        (
            FlowKey {
                addr: [a, b],
                port: [pa, pb],
                vlan,
                family,
                _pad: 0,
            },
            dir,
        )
    }

    /// The side tcptrack takes for the client when no SYN was seen: the one
    /// with the higher port (ephemeral ports are high). On equal ports, the
    /// sender of the first segment seen.
    #[inline(always)]
    pub fn guess_client(&self, first_sender: u8) -> u8 {
        if self.port[0] > self.port[1] {
            0
        } else if self.port[1] > self.port[0] {
            1
        } else {
            first_sender & 1
        }
    }
}

/// Total order on endpoints; any order works as long as both backends use
/// this one: addresses as big-endian numbers, then ports. The kernel build
/// compares two u64 halves (no loop, no 128-bit arithmetic for the
/// verifier); elsewhere one u128 compares the same way in fewer
/// instructions, which a replay feels on every packet.
#[inline(always)]
fn endpoint_le(a: &[u8; 16], pa: u16, b: &[u8; 16], pb: u16) -> bool {
    #[cfg(target_arch = "bpf")]
    {
        endpoint_le_by_halves(a, pa, b, pb)
    }
    #[cfg(not(target_arch = "bpf"))]
    {
        (u128::from_be_bytes(*a), pa) <= (u128::from_be_bytes(*b), pb)
    }
}

#[cfg_attr(not(any(target_arch = "bpf", test)), allow(dead_code))]
#[inline(always)]
fn endpoint_le_by_halves(a: &[u8; 16], pa: u16, b: &[u8; 16], pb: u16) -> bool {
    let (a0, a1) = halves(a);
    let (b0, b1) = halves(b);
    (a0, a1, pa) <= (b0, b1, pb)
}

#[inline(always)]
fn halves(a: &[u8; 16]) -> (u64, u64) {
    (
        u64::from_be_bytes([a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]]),
        u64::from_be_bytes([a[8], a[9], a[10], a[11], a[12], a[13], a[14], a[15]]),
    )
}

/// Connection states, with tcptrack's names.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// No segment applied yet (a fresh map entry).
    None = 0,
    SynSent = 1,
    SynAckAck = 2,
    Established = 3,
    Closing = 4,
    Closed = 5,
    Reset = 6,
}

impl State {
    pub fn from_u8(v: u8) -> State {
        match v {
            1 => State::SynSent,
            2 => State::SynAckAck,
            3 => State::Established,
            4 => State::Closing,
            5 => State::Closed,
            6 => State::Reset,
            _ => State::None,
        }
    }

    /// The name tcptrack prints.
    pub fn name(self) -> &'static str {
        match self {
            State::None => "NONE",
            State::SynSent => "SYN_SENT",
            State::SynAckAck => "SYN|ACK-ACK",
            State::Established => "ESTABLISHED",
            State::Closing => "CLOSING",
            State::Closed => "CLOSED",
            State::Reset => "RESET",
        }
    }
}

/// How the client side was decided.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientHow {
    Unknown = 0,
    /// It sent the first SYN.
    Syn = 1,
    /// The capture began after the SYN: it received the SYN+ACK.
    SynAck = 2,
    /// No handshake seen: the side with the higher port.
    Guessed = 3,
}

impl ClientHow {
    pub fn from_u8(v: u8) -> ClientHow {
        match v {
            1 => ClientHow::Syn,
            2 => ClientHow::SynAck,
            3 => ClientHow::Guessed,
            _ => ClientHow::Unknown,
        }
    }
}

/// Bits of `FlowRecord::bits`, two per direction where it matters.
pub mod bits {
    /// `seq_hi[d]` holds a value.
    pub const SEQ_VALID: [u8; 2] = [1 << 0, 1 << 1];
    /// Direction d sent a FIN; `fin_seq[d]` is the ACK that acknowledges it.
    pub const FIN: [u8; 2] = [1 << 2, 1 << 3];
    /// The other side acknowledged direction d's FIN.
    pub const FIN_ACKED: [u8; 2] = [1 << 4, 1 << 5];
    /// Both sides sent a SYN (simultaneous open).
    pub const SIMULTANEOUS: u8 = 1 << 6;
}

/// Everything tcpmon knows about one connection. Index `[d]` is the
/// direction from endpoint d of the key (`FlowKey::addr[d]`) to the other.
/// 136 bytes, no implicit padding.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowRecord {
    /// Wire packets (a GSO super-packet counts its segments).
    pub packets: [u64; 2],
    /// TCP payload bytes.
    pub bytes: [u64; 2],
    /// Timestamps in nanoseconds on the backend's clock.
    pub first_ns: u64,
    pub last_ns: u64,
    pub syn_first_ns: u64,
    pub syn_last_ns: u64,
    pub synack_first_ns: u64,
    /// When the client's ACK completed the handshake.
    pub established_ns: u64,
    /// SYNs from the client, the first included.
    pub syn_count: u32,
    /// SYN+ACKs from the server, the first included.
    pub synack_count: u32,
    /// Data segments whose sequence range had been seen before.
    pub retransmits: [u32; 2],
    pub syn_seq: u32,
    pub synack_seq: u32,
    /// Highest sequence number sent plus one, per direction.
    pub seq_hi: [u32; 2],
    /// ACK number that acknowledges direction d's FIN.
    pub fin_seq: [u32; 2],
    /// `State` as u8.
    pub state: u8,
    /// 0 or 1: which endpoint of the key is the client.
    pub client: u8,
    /// `ClientHow` as u8.
    pub client_how: u8,
    /// See `bits`.
    pub bits: u8,
    /// TCP flags seen, OR-ed per direction.
    pub flags_seen: [u8; 2],
    /// Innermost VLAN id of the last segment in each direction, 0 untagged.
    pub vlan: [u16; 2],
    pub _pad: [u8; 6],
}

impl FlowRecord {
    pub const EMPTY: FlowRecord = FlowRecord {
        packets: [0; 2],
        bytes: [0; 2],
        first_ns: 0,
        last_ns: 0,
        syn_first_ns: 0,
        syn_last_ns: 0,
        synack_first_ns: 0,
        established_ns: 0,
        syn_count: 0,
        synack_count: 0,
        retransmits: [0; 2],
        syn_seq: 0,
        synack_seq: 0,
        seq_hi: [0; 2],
        fin_seq: [0; 2],
        state: 0,
        client: 0,
        client_how: 0,
        bits: 0,
        flags_seen: [0; 2],
        vlan: [0; 2],
        _pad: [0; 6],
    };

    pub fn state(&self) -> State {
        State::from_u8(self.state)
    }

    pub fn client_how(&self) -> ClientHow {
        ClientHow::from_u8(self.client_how)
    }

    /// The server's index (the client's other side).
    pub fn server(&self) -> usize {
        (self.client as usize & 1) ^ 1
    }

    /// Time from the last SYN to the ACK that completed the handshake. Seen
    /// from either end (or in between) this is one round trip plus the
    /// server's accept latency, so it is the same figure on client and server.
    pub fn handshake_rtt_ns(&self) -> Option<u64> {
        if self.established_ns != 0 && self.syn_count > 0 {
            Some(self.established_ns.saturating_sub(self.syn_last_ns))
        } else {
            None
        }
    }
}

impl Default for FlowRecord {
    fn default() -> Self {
        FlowRecord::EMPTY
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: both are repr(C), all fields are integers or arrays of them,
    // and the explicit `_pad` fields leave no implicit padding (checked by
    // the size assertions below).
    unsafe impl bytemuck::Zeroable for super::FlowKey {}
    unsafe impl bytemuck::Pod for super::FlowKey {}
    unsafe impl bytemuck::Zeroable for super::FlowRecord {}
    unsafe impl bytemuck::Pod for super::FlowRecord {}
}

const _: () = assert!(core::mem::size_of::<FlowKey>() == 40);
const _: () = assert!(core::mem::size_of::<FlowRecord>() == 136);

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(a: [u8; 4]) -> [u8; 16] {
        let mut x = [0; 16];
        x[..4].copy_from_slice(&a);
        x
    }

    #[test]
    fn both_directions_share_one_key() {
        let (k1, d1) = FlowKey::new(4, v4([10, 0, 0, 2]), 40000, v4([10, 0, 0, 1]), 80, 0);
        let (k2, d2) = FlowKey::new(4, v4([10, 0, 0, 1]), 80, v4([10, 0, 0, 2]), 40000, 0);
        assert_eq!(k1, k2);
        assert_ne!(d1, d2);
        assert_eq!(k1.addr[0], v4([10, 0, 0, 1]));
        assert_eq!(k1.guess_client(0), 1, "port 40000 is the client");
    }

    #[test]
    fn loopback_endpoints_differ_by_port() {
        let lo = v4([127, 0, 0, 1]);
        let (k, d) = FlowKey::new(4, lo, 5000, lo, 80, 0);
        assert_eq!(k.port, [80, 5000]);
        assert_eq!(d, 1);
        let (_, d2) = FlowKey::new(4, lo, 80, lo, 5000, 0);
        assert_eq!(d2, 0);
    }

    #[test]
    fn vlan_separates_flows() {
        let (a, _) = FlowKey::new(4, v4([1, 1, 1, 1]), 1, v4([2, 2, 2, 2]), 2, 10);
        let (b, _) = FlowKey::new(4, v4([1, 1, 1, 1]), 1, v4([2, 2, 2, 2]), 2, 20);
        assert_ne!(a, b);
    }

    #[test]
    fn both_forms_of_the_endpoint_order_agree() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut rand = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..100_000 {
            // Few distinct values, so equal halves, addresses and ports occur.
            let mut addr = || {
                let mut a = [0u8; 16];
                for b in a.iter_mut().step_by(5) {
                    *b = (rand() % 3) as u8;
                }
                a
            };
            let (a, b) = (addr(), addr());
            let (pa, pb) = ((rand() % 3) as u16, (rand() % 3) as u16);
            assert_eq!(
                endpoint_le(&a, pa, &b, pb),
                endpoint_le_by_halves(&a, pa, &b, pb),
                "{a:?}:{pa} vs {b:?}:{pb}"
            );
        }
    }

    #[test]
    fn equal_ports_guess_the_first_sender() {
        let (k, d) = FlowKey::new(4, v4([1, 1, 1, 1]), 7, v4([2, 2, 2, 2]), 7, 0);
        assert_eq!(k.guess_client(d), d);
    }
}
