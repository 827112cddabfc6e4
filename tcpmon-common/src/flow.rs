//! The flow key (canonical 5-tuple plus VLAN) and the per-flow record.

/// A connection's identity, independent of packet direction: the lower
/// endpoint (address, then port) always comes first, so both directions of a
/// connection find the same map entry. Aligned as a u64 so that
/// `CacheKey::same` compares it in five loads.
#[repr(C, align(8))]
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
        guess(self.port, first_sender)
    }
}

#[inline(always)]
fn guess(port: [u16; 2], first_sender: u8) -> u8 {
    if port[0] > port[1] {
        0
    } else if port[1] > port[0] {
        1
    } else {
        first_sender & 1
    }
}

/// The key of an IPv4 flow as the kernel's `FLOWS4` map stores it: the same
/// fields as `FlowKey` without the twelve zero bytes of each address, so the
/// kernel hashes and compares 16 bytes instead of 40. `FlowKey::narrow` and
/// `FlowKey4::widen` convert without loss; user space only sees `FlowKey`.
/// Aligned as a u64 so that `CacheKey::same` compares it in two loads.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FlowKey4 {
    pub addr: [[u8; 4]; 2],
    /// Host byte order.
    pub port: [u16; 2],
    pub vlan: u16,
    pub _pad: [u8; 2],
}

impl FlowKey {
    /// The narrow form of an IPv4 key (`family` 4, addresses zero past
    /// their fourth byte, as `FlowKey::new` builds them); `None` otherwise.
    #[inline(always)]
    pub fn narrow(&self) -> Option<FlowKey4> {
        let tail = |a: &[u8; 16]| {
            let (_, t) = halves(a);
            let head = u32::from_be_bytes([a[4], a[5], a[6], a[7]]);
            t == 0 && head == 0
        };
        if self.family != 4 || !tail(&self.addr[0]) || !tail(&self.addr[1]) || self._pad != 0 {
            return None;
        }
        let v4 = |a: &[u8; 16]| [a[0], a[1], a[2], a[3]];
        Some(FlowKey4 {
            addr: [v4(&self.addr[0]), v4(&self.addr[1])],
            port: self.port,
            vlan: self.vlan,
            _pad: [0; 2],
        })
    }
}

impl FlowKey4 {
    /// `FlowKey::new` for IPv4, straight to the narrow form: the same key
    /// (widened) and the same direction, with one 64-bit comparison.
    #[inline(always)]
    pub fn new(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, vlan: u16) -> (FlowKey4, u8) {
        // FlowKey orders endpoints by (address as a big-endian number, port).
        let rank = |a: [u8; 4], p: u16| ((u32::from_be_bytes(a) as u64) << 16) | p as u64;
        let src_first = rank(src, sport) <= rank(dst, dport);
        let (a, b, pa, pb, dir) = if src_first {
            (src, dst, sport, dport, 0)
        } else {
            (dst, src, dport, sport, 1)
        };
        (
            FlowKey4 {
                addr: [a, b],
                port: [pa, pb],
                vlan,
                _pad: [0; 2],
            },
            dir,
        )
    }

    /// `FlowKey::guess_client`, on the same ports.
    #[inline(always)]
    pub fn guess_client(&self, first_sender: u8) -> u8 {
        guess(self.port, first_sender)
    }

    /// The full key this narrow one stands for.
    #[inline(always)]
    pub fn widen(&self) -> FlowKey {
        let v16 = |a: [u8; 4]| {
            let mut x = [0u8; 16];
            x[0] = a[0];
            x[1] = a[1];
            x[2] = a[2];
            x[3] = a[3];
            x
        };
        FlowKey {
            addr: [v16(self.addr[0]), v16(self.addr[1])],
            port: self.port,
            vlan: self.vlan,
            family: 4,
            _pad: 0,
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
#[cfg_attr(
    feature = "user",
    derive(bytemuck::NoUninit, bytemuck::CheckedBitPattern)
)]
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
#[cfg_attr(
    feature = "user",
    derive(bytemuck::NoUninit, bytemuck::CheckedBitPattern)
)]
pub enum ClientHow {
    Unknown = 0,
    /// It sent the first SYN.
    Syn = 1,
    /// The capture began after the SYN: it received the SYN+ACK.
    SynAck = 2,
    /// No handshake seen: the side with the higher port.
    Guessed = 3,
}

/// Bits of `FlowRecord::bits`, two per direction where it matters. Per
/// direction as shifts: indexing a table by a runtime direction costs the
/// kernel program a load.
pub mod bits {
    /// `seq_hi[d]` holds a value.
    #[inline(always)]
    pub const fn seq_valid(d: usize) -> u8 {
        1 << d
    }
    /// Direction d sent a FIN; `fin_seq[d]` is the ACK that acknowledges it.
    #[inline(always)]
    pub const fn fin(d: usize) -> u8 {
        1 << (2 + d)
    }
    /// The other side acknowledged direction d's FIN.
    #[inline(always)]
    pub const fn fin_acked(d: usize) -> u8 {
        1 << (4 + d)
    }
    /// Both sides sent a SYN (simultaneous open).
    pub const SIMULTANEOUS: u8 = 1 << 6;
    /// The kernel's own: a CPU filled a cache slot from the record (see
    /// `cache::cached`). User space never sees it (`decode` clears it), so
    /// a record reads the same from either backend, cached or not.
    pub const CACHED: u8 = 1 << 7;
}

/// Everything tcpmon knows about one connection. Index `[d]` is the
/// direction from endpoint d of the key (`FlowKey::addr[d]`) to the other.
/// 136 bytes, no implicit padding.
///
/// What a data segment of an established connection reads and writes (see
/// `update::is_steady`) comes first, in 72 bytes: where a busy server's
/// segments each find another flow's record, out of cache, every line of
/// the record a segment touches is a miss, and the kernel's map puts the
/// record right after its key, so these bytes share lines with the key
/// the lookup has just read. The rest, handshake and teardown, after.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowRecord {
    /// Wire packets (a GSO super-packet counts its segments).
    pub packets: [u64; 2],
    /// TCP payload bytes.
    pub bytes: [u64; 2],
    /// The last segment's time; like every time here, in nanoseconds on
    /// the backend's clock.
    pub last_ns: u64,
    /// Highest sequence number sent plus one, per direction.
    pub seq_hi: [u32; 2],
    /// Data segments whose sequence range had been seen before.
    pub retransmits: [u32; 2],
    pub state: State,
    /// 0 or 1: which endpoint of the key is the client.
    pub client: u8,
    pub client_how: ClientHow,
    /// See `bits`.
    pub bits: u8,
    /// TCP flags seen, OR-ed per direction.
    pub flags_seen: [u8; 2],
    /// Innermost VLAN id of the last segment in each direction, 0 untagged.
    pub vlan: [u16; 2],
    pub _pad: [u8; 2],
    /// User space's epoch (`change::Change`) in which the kernel last
    /// reported this record as changed; 0 before it ever was.
    pub epoch: u32,
    /// The first segment's time.
    pub first_ns: u64,
    pub syn_first_ns: u64,
    pub syn_last_ns: u64,
    pub synack_first_ns: u64,
    /// When the client's ACK completed the handshake.
    pub established_ns: u64,
    /// SYNs from the client, the first included.
    pub syn_count: u32,
    /// SYN+ACKs from the server, the first included.
    pub synack_count: u32,
    pub syn_seq: u32,
    pub synack_seq: u32,
    /// ACK number that acknowledges direction d's FIN.
    pub fin_seq: [u32; 2],
}

// The fields a steady segment touches end here (see `FlowRecord`).
const _: () = assert!(core::mem::offset_of!(FlowRecord, first_ns) == 72);

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
        state: State::None,
        client: 0,
        client_how: ClientHow::Unknown,
        bits: 0,
        flags_seen: [0; 2],
        vlan: [0; 2],
        _pad: [0; 2],
        epoch: 0,
    };

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
    use super::{ClientHow, FlowKey, FlowKey4, FlowRecord, State};
    use crate::decode::{Checked, UnknownValue, unknown_byte};

    // SAFETY: both keys are repr(C), all fields are integers or arrays of
    // them, and the explicit `_pad` fields leave no implicit padding
    // (checked by the size assertions below).
    unsafe impl bytemuck::Zeroable for FlowKey {}
    unsafe impl bytemuck::Pod for FlowKey {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl bytemuck::Zeroable for FlowKey4 {}
    unsafe impl bytemuck::Pod for FlowKey4 {}
    unsafe impl aya::Pod for FlowKey4 {}

    // SAFETY: repr(C) without implicit padding, as the keys; its two enum
    // fields are repr(u8) with a variant 0, so zero bytes are a record
    // (`FlowRecord::EMPTY`), but not every byte is: the kernel's bytes go
    // through `Checked` (aya reads them as `FlowRecordBits`).
    unsafe impl bytemuck::Zeroable for FlowRecord {}
    unsafe impl bytemuck::NoUninit for FlowRecord {}
    unsafe impl bytemuck::CheckedBitPattern for FlowRecord {
        type Bits = FlowRecordBits;
        fn is_valid_bit_pattern(bits: &FlowRecordBits) -> bool {
            FlowRecord::unknown(bits).is_none()
        }
    }

    /// A `FlowRecord`'s bytes as the kernel left them, unchecked: what
    /// user space reads from the flow maps before `decode` checks them.
    pub type FlowRecordBits = [u64; core::mem::size_of::<FlowRecord>() / 8];

    impl Checked for FlowRecord {
        fn unknown(bits: &FlowRecordBits) -> Option<UnknownValue> {
            record_unknown(bytemuck::bytes_of(bits))
        }

        fn settle(&mut self) {
            self.bits &= !super::bits::CACHED;
        }
    }

    /// The first of a record's enum fields in `bytes` (a record's, from its
    /// start) that holds no variant, for records inside other values too.
    pub(crate) fn record_unknown(bytes: &[u8]) -> Option<UnknownValue> {
        unknown_byte::<State>("state", bytes, core::mem::offset_of!(FlowRecord, state)).or_else(
            || {
                let at = core::mem::offset_of!(FlowRecord, client_how);
                unknown_byte::<ClientHow>("client_how", bytes, at)
            },
        )
    }
}

#[cfg(feature = "user")]
pub use pod::FlowRecordBits;
#[cfg(feature = "user")]
pub(crate) use pod::record_unknown;

// Whole keys as words, padding included: keys are built with zero padding,
// as the LRU maps, which hash and compare their bytes, need anyway.
impl FlowKey {
    #[inline(always)]
    pub fn words(&self) -> [u64; 5] {
        // SAFETY: 40 bytes of plain integers with explicit padding (size
        // asserted below), aligned as u64.
        unsafe { core::mem::transmute::<FlowKey, [u64; 5]>(*self) }
    }
}

impl FlowKey4 {
    #[inline(always)]
    pub fn words(&self) -> [u64; 2] {
        // SAFETY: as for `FlowKey::words`, 16 bytes.
        unsafe { core::mem::transmute::<FlowKey4, [u64; 2]>(*self) }
    }
}

const _: () = assert!(core::mem::size_of::<FlowKey>() == 40);
const _: () = assert!(core::mem::size_of::<FlowKey4>() == 16);
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
    fn v4_keys_narrow_and_widen_without_loss() {
        let (k, _) = FlowKey::new(4, v4([10, 0, 0, 2]), 40000, v4([10, 0, 0, 1]), 80, 42);
        let n = k.narrow().expect("an IPv4 key");
        assert_eq!(n.addr, [[10, 0, 0, 1], [10, 0, 0, 2]]);
        assert_eq!((n.port, n.vlan), ([80, 40000], 42));
        assert_eq!(n.widen(), k);
        let six = |last| {
            let mut a = [0u8; 16];
            a[0] = 0x20;
            a[15] = last;
            a
        };
        let (k6, _) = FlowKey::new(6, six(1), 1, six(2), 2, 0);
        assert_eq!(k6.narrow(), None);
        // Only keys that widen back to themselves narrow.
        for i in 4..16 {
            let mut odd = k;
            odd.addr[i % 2][i] = 1;
            assert_eq!(odd.narrow(), None, "byte {i}");
        }
        let mut zero_family = k;
        zero_family.family = 0;
        assert_eq!(zero_family.narrow(), None);
    }

    #[test]
    fn narrow_v4_keys_are_built_like_full_ones() {
        let mut x: u64 = 0x243f_6a88_85a3_08d3;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for i in 0..20_000 {
            let r = next();
            // Few distinct values, so equal addresses and ports are common.
            let addr = |v: u64| [10, 0, (v & 1) as u8, ((v >> 1) & 3) as u8 * 60];
            let (src, dst) = (addr(r), addr(r >> 8));
            let (sport, dport) = ((r >> 16) as u16 % 3 * 20_000, (r >> 32) as u16 % 3 * 20_000);
            let vlan = (i % 2) as u16 * 7;
            let (k4, d4) = FlowKey4::new(src, sport, dst, dport, vlan);
            let mut s16 = [0u8; 16];
            s16[..4].copy_from_slice(&src);
            let mut d16 = [0u8; 16];
            d16[..4].copy_from_slice(&dst);
            let (k, d) = FlowKey::new(4, s16, sport, d16, dport, vlan);
            assert_eq!(
                (k4.widen(), d4),
                (k, d),
                "{src:?}:{sport} -> {dst:?}:{dport}"
            );
            assert_eq!(k.narrow(), Some(k4));
            assert_eq!(k4.guess_client(d4), k.guess_client(d));
        }
        // The address compares as a number, not byte by byte from the end.
        let (k, d) = FlowKey4::new([1, 0, 0, 2], 9, [2, 0, 0, 1], 1, 0);
        assert_eq!((k.addr[0], d), ([1, 0, 0, 2], 0));
    }

    #[test]
    fn equal_ports_guess_the_first_sender() {
        let (k, d) = FlowKey::new(4, v4([1, 1, 1, 1]), 7, v4([2, 2, 2, 2]), 7, 0);
        assert_eq!(k.guess_client(d), d);
    }
}
