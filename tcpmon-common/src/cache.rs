//! The per-CPU flow cache: where the kernel counts an established flow's
//! steady segments (data and pure ACKs, see `is_steady`) without going to
//! its record in the LRU map.
//!
//! Finding a record in the LRU hash map costs more than the rest of a data
//! packet's work (hashing the key, walking the bucket, marking the entry
//! used), and the record's counters need atomic adds, as a flow's two
//! directions run on different CPUs. So each CPU keeps a direct-mapped
//! table of `CACHE_SLOTS` slots. A slot holds a flow's key and a *shadow*
//! of its record (`update::shadow`): a copy with the counters zeroed, to
//! which steady segments are applied with plain adds (`update::shadowed`).
//! `update::absorb` folds a shadow back into its record. The kernel does
//! that when it takes the slot back: for a segment of the flow that is not
//! steady, for another flow once the slot is stale, or `CACHE_FLUSH_NS`
//! after it was filled (which also keeps the LRU map seeing a busy flow as
//! used). User space does it to the copies it reads, on every read, so
//! what it shows is complete once traffic stops.
//!
//! A flow's segments, even one direction's, often run on two CPUs (sends
//! from the process and from the softirq of an incoming ACK), so each CPU's
//! slot sees part of them. What must be true of all of them is shared per
//! slot index (`CacheIndex`, the kernel's `CACHE_INDEX`):
//! - A flow leaves the steady state (FIN, RST, a new SYN) on whichever CPU
//!   sees that segment. That segment bumps the index's generation; a slot
//!   filled under an older generation is not used again, so the ACK of a
//!   FIN always reaches the full rule on the record.
//! - A retransmission is a segment below the highest sequence mark any CPU
//!   has seen, and the original may have passed through another CPU's
//!   slot. So every CPU raises its copy's mark to the index's before it
//!   applies a segment, and shares its own after (`CacheIndex::lend` and
//!   `learn`).
//!
//! On a busy server most segments find their slot holding another flow.
//! To learn that, a segment reads a byte of its CPU's `CacheTags` (next to
//! what it reads anyway, the coarse clock's tick) instead of the slot.

use crate::flow::{FlowKey, FlowKey4, FlowRecord, bits};
use crate::tcp::seq_before;
use crate::update::{Memory, Shared, raise_mark, set_bit};

/// Slots per CPU in each of the two caches (IPv4 and IPv6); a power of two.
/// 168 and 192 bytes a slot: 360 KiB per CPU for both.
pub const CACHE_SLOTS: u32 = 1 << CACHE_BITS;
const CACHE_BITS: u32 = 10;

/// How long a slot serves its flow before the kernel folds it into the
/// record and fills it again. Bounds how long another CPU's view of the
/// flow's sequence space (for retransmissions) can lag behind this one's.
pub const CACHE_FLUSH_NS: u64 = 10_000_000;

/// One cached flow on one CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheSlot<K> {
    pub key: K,
    /// The index's generation when the slot was filled.
    pub generation: u32,
    /// Segments this slot counted that the kernel's `Counter::Tcp` does not
    /// have yet: it adds them when it empties the slot, user space when it
    /// reads the counters. Zero in an empty slot.
    pub tcp: u32,
    /// CLOCK_MONOTONIC time after which the slot must be folded and filled
    /// again before it counts another segment.
    pub flush_at: u64,
    /// `first_ns` 0: the slot is empty. Otherwise its `first_ns` names the
    /// connection it belongs to (a newer connection on the same 4-tuple has
    /// another), and its counters are what the record does not have yet.
    pub shadow: FlowRecord,
}

impl<K> CacheSlot<K> {
    pub fn is_empty(&self) -> bool {
        self.shadow.first_ns == 0
    }
}

/// What all CPUs share about one slot index (see the module's text).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheIndex {
    /// Bumped (atomically) when a flow at this index leaves the steady
    /// state; a slot filled under an older generation is stale.
    pub generation: u64,
    /// `first_ns` of the connection whose sequence marks `seq_hi` holds:
    /// the last one a CPU filled a slot at this index for that had marks in
    /// both directions (0: none).
    pub owner: u64,
    /// Its highest sequence mark per direction that any CPU has seen.
    pub seq_hi: [u32; 2],
}

// A shared mark moves forward only, by compare-and-exchange (see
// `update::Shared`), so CPUs racing on it cannot lower it. Two CPUs filling
// slots of two flows at one index at the same instant can leave one flow's
// marks under the other's name, until the next fill.
impl CacheIndex {
    /// Before a segment of direction `d` goes to `rec` (a record or a slot's
    /// shadow): raises `rec`'s mark of that direction to the shared one if
    /// this index holds the marks of `rec`'s connection, and says whether it
    /// does, for `learn`. `M` says what `rec` is: `Shared` for a record in
    /// the map, `Own` for a slot's shadow. (Not a method taking the segment
    /// as a closure: LLVM made the rule's closure a BPF subprogram.)
    #[inline(always)]
    pub fn lend<M: Memory>(&self, rec: &mut FlowRecord, d: usize) -> bool {
        // A record just made has `first_ns` 0, as has an index never claimed.
        let shared = self.owner == rec.first_ns && self.owner != 0;
        if shared {
            raise_mark::<M>(rec, d, self.seq_hi[d]);
        }
        shared
    }

    /// After the segment: shares `rec`'s mark of direction `d` if `lend`
    /// said so and the segment did not start a new connection on the
    /// 4-tuple. Writing only what moved forward leaves the line shared
    /// among CPUs while only acknowledgments come.
    #[inline(always)]
    pub fn learn(&mut self, rec: &FlowRecord, d: usize, lent: bool) {
        let hi = rec.seq_hi[d];
        if lent && rec.first_ns == self.owner && seq_before(self.seq_hi[d], hi) {
            Shared::raise(&mut self.seq_hi, d, hi);
        }
    }

    /// Makes the index share the marks of `rec`'s connection, for which a
    /// slot is being filled, once it has marks both ways, and marks `rec`
    /// as `cached`. Before the slot copies `rec`: a CPU that saw the
    /// record as not cached yet, and so left the index alone, applied its
    /// segment to the record before the copy or after this call.
    #[inline(always)]
    pub fn claim(&mut self, rec: &mut FlowRecord) {
        set_bit(rec, bits::CACHED);
        let both = bits::seq_valid(0) | bits::seq_valid(1);
        if self.owner != rec.first_ns && rec.bits & both == both {
            self.owner = rec.first_ns;
            self.seq_hi = rec.seq_hi;
        }
    }
}

/// Per CPU, the tag of the flow each of its slots last took, IPv4 and
/// IPv6: 2 KiB, where the slots take 360. A tag that differs from a
/// segment's says that the slot holds another flow, without a read of the
/// slot, which on a busy server (a flow's segment seldom finds its own
/// slot) is one more cache miss a segment. Equal tags say nothing: the
/// slot decides (it may hold another flow of the same tag, or be empty).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheTags {
    pub v4: [u8; CACHE_SLOTS as usize],
    pub v6: [u8; CACHE_SLOTS as usize],
}

/// Whether a slot may hold `rec`'s connection (`CacheIndex::claim` was
/// called for it; see `bits::CACHED`). If not, a segment that goes to the
/// record needs nothing from the index, neither `lend` nor `learn`: no CPU
/// counts the connection apart, and no slot needs its marks. On a busy
/// server most flows are never cached, and the index's line is one miss
/// less per segment.
#[inline(always)]
pub fn cached(rec: &FlowRecord) -> bool {
    rec.bits & bits::CACHED != 0
}

/// A key's slot index, the same on every CPU and in user space.
pub trait CacheKey: Copy + PartialEq {
    /// A hash of every field of the key (see `mix`), of which the slot
    /// index and the tag are two parts.
    fn cache_hash(&self) -> u64;

    #[inline(always)]
    fn cache_index(&self) -> u32 {
        (self.cache_hash() >> (64 - CACHE_BITS)) as u32
    }

    /// Seven more bits of the hash, and the top bit set, so that it is
    /// never 0, the tag of a slot never filled (see `CacheTags`).
    #[inline(always)]
    fn cache_tag(&self) -> u8 {
        (self.cache_hash() >> (64 - CACHE_BITS - 8)) as u8 | 0x80
    }

    /// This key type's tags among a CPU's.
    fn tags(tags: &mut CacheTags) -> &mut [u8; CACHE_SLOTS as usize];

    /// `==` in word compares: LLVM turns the derived comparison of byte
    /// arrays into a call to `memcmp`, which BPF programs do not have.
    fn same(&self, other: &Self) -> bool;
    /// The key as user space knows it.
    fn full(&self) -> FlowKey;
}

impl CacheKey for FlowKey4 {
    #[inline(always)]
    fn cache_hash(&self) -> u64 {
        let addrs = u32::from_ne_bytes(self.addr[0]) as u64
            | (u32::from_ne_bytes(self.addr[1]) as u64) << 32;
        let rest = self.port[0] as u64 | (self.port[1] as u64) << 16 | (self.vlan as u64) << 32;
        mix(addrs, rest)
    }

    #[inline(always)]
    fn tags(tags: &mut CacheTags) -> &mut [u8; CACHE_SLOTS as usize] {
        &mut tags.v4
    }

    #[inline(always)]
    fn same(&self, other: &Self) -> bool {
        let (a, b) = (self.words(), other.words());
        a[0] == b[0] && a[1] == b[1]
    }

    #[inline(always)]
    fn full(&self) -> FlowKey {
        self.widen()
    }
}

impl CacheKey for FlowKey {
    #[inline(always)]
    fn cache_hash(&self) -> u64 {
        let (a0, a1) = words(&self.addr[0]);
        let (b0, b1) = words(&self.addr[1]);
        let rest = self.port[0] as u64 | (self.port[1] as u64) << 16 | (self.vlan as u64) << 32;
        mix(
            a0 ^ a1.rotate_left(16) ^ b0.rotate_left(32) ^ b1.rotate_left(48),
            rest,
        )
    }

    #[inline(always)]
    fn tags(tags: &mut CacheTags) -> &mut [u8; CACHE_SLOTS as usize] {
        &mut tags.v6
    }

    #[inline(always)]
    fn same(&self, other: &Self) -> bool {
        let (a, b) = (self.words(), other.words());
        a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3] && a[4] == b[4]
    }

    #[inline(always)]
    fn full(&self) -> FlowKey {
        *self
    }
}

/// Multiplicative hashing: the top bits of the product depend on every bit
/// of both words.
#[inline(always)]
fn mix(a: u64, b: u64) -> u64 {
    (a ^ b.rotate_left(29)).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

#[inline(always)]
fn words(a: &[u8; 16]) -> (u64, u64) {
    (
        u64::from_ne_bytes([a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]]),
        u64::from_ne_bytes([a[8], a[9], a[10], a[11], a[12], a[13], a[14], a[15]]),
    )
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    use crate::decode::{Checked, UnknownValue};
    use crate::flow::record_unknown;

    /// Implements the checked reading of one key's slots (a slot holds a
    /// record, whose enum fields the kernel's bytes may not fill rightly).
    macro_rules! checked_slot {
        ($key:ty, $bits:ident) => {
            /// A `CacheSlot`'s bytes as the kernel left them, unchecked.
            pub type $bits = [u64; core::mem::size_of::<CacheSlot<$key>>() / 8];

            // SAFETY: repr(C), the Pod key, integers and the record, no
            // padding (sizes asserted below); an empty slot is zero bytes.
            unsafe impl bytemuck::Zeroable for CacheSlot<$key> {}
            unsafe impl bytemuck::NoUninit for CacheSlot<$key> {}
            unsafe impl bytemuck::CheckedBitPattern for CacheSlot<$key> {
                type Bits = $bits;
                fn is_valid_bit_pattern(bits: &$bits) -> bool {
                    Self::unknown(bits).is_none()
                }
            }

            impl Checked for CacheSlot<$key> {
                fn unknown(bits: &$bits) -> Option<UnknownValue> {
                    let at = core::mem::offset_of!(CacheSlot<$key>, shadow);
                    record_unknown(&bytemuck::bytes_of(bits)[at..])
                }

                fn settle(&mut self) {
                    self.shadow.settle();
                }
            }
        };
    }

    checked_slot!(FlowKey4, CacheSlot4Bits);
    checked_slot!(FlowKey, CacheSlot6Bits);
}

#[cfg(feature = "user")]
pub use pod::{CacheSlot4Bits, CacheSlot6Bits};

const _: () = assert!(core::mem::size_of::<CacheSlot<FlowKey4>>() == 16 + 16 + 136);
const _: () = assert!(core::mem::size_of::<CacheSlot<FlowKey>>() == 40 + 16 + 136);
const _: () = assert!(core::mem::size_of::<CacheIndex>() == 24);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::update::Own;

    #[test]
    fn indexes_spread_over_the_table() {
        let mut hit = [false; CACHE_SLOTS as usize];
        for i in 0..CACHE_SLOTS * 4 {
            let (k, _) = FlowKey4::new(
                [10, 0, (i >> 8) as u8, i as u8],
                40_000,
                [10, 0, 0, 1],
                80,
                0,
            );
            hit[k.cache_index() as usize] = true;
        }
        let used = hit.iter().filter(|&&h| h).count();
        // 4 keys a slot at random would leave about 2% of slots unused.
        assert!(used > CACHE_SLOTS as usize * 9 / 10, "{used} slots used");
    }

    #[test]
    fn keys_at_one_index_seldom_share_a_tag() {
        // Up to 16 tags per index, from 4 keys per index on average.
        let mut tags = [[0u8; 16]; CACHE_SLOTS as usize];
        let mut n = [0usize; CACHE_SLOTS as usize];
        let (mut pairs, mut equal) = (0, 0);
        for i in 0..CACHE_SLOTS * 4 {
            let client = [10, 1, (i >> 8) as u8, i as u8];
            let (k, _) = FlowKey4::new(client, 40_000, [10, 0, 0, 1], 80, 0);
            let (ix, tag) = (k.cache_index() as usize, k.cache_tag());
            assert_ne!(tag, 0);
            let seen = &mut tags[ix][..n[ix].min(16)];
            pairs += seen.len();
            equal += seen.iter().filter(|&&t| t == tag).count();
            if n[ix] < 16 {
                tags[ix][n[ix]] = tag;
            }
            n[ix] += 1;
        }
        // 1 in 128 at random.
        assert!(equal * 50 < pairs, "{equal} of {pairs} pairs share a tag");
    }

    #[test]
    fn an_index_shares_marks_of_its_owner_only() {
        let both = bits::seq_valid(0) | bits::seq_valid(1);
        let mut rec = FlowRecord::EMPTY;
        rec.first_ns = 7;
        rec.seq_hi = [100, u32::MAX - 5];
        rec.bits = bits::seq_valid(0);
        let mut ix = CacheIndex::default();
        assert!(!cached(&rec));
        ix.claim(&mut rec);
        assert_eq!(ix.owner, 0, "no mark yet in direction 1");
        assert!(cached(&rec), "in a slot, marks or not");
        rec.bits = both;
        ix.claim(&mut rec);
        assert_eq!((ix.owner, ix.seq_hi), (7, rec.seq_hi));

        // Another CPU's copy, behind in direction 0, and behind across the
        // wrap in direction 1: a segment of each direction raises its mark
        // first, and a mark only moves forward.
        let mut other = rec;
        other.seq_hi = [50, u32::MAX - 5];
        ix.seq_hi[1] = 10;
        assert!(ix.lend::<Own>(&mut other, 0) && ix.lend::<Own>(&mut other, 1));
        assert_eq!(other.seq_hi, [100, 10]);
        other.seq_hi[0] = 300;
        ix.learn(&other, 0, true);
        assert_eq!(ix.seq_hi, [300, 10], "shared after the segment");
        ix.seq_hi[0] = 200;
        ix.lend::<Own>(&mut other, 0);
        assert_eq!(other.seq_hi[0], 300);

        // A newer connection on the 4-tuple neither takes nor gives marks
        // until it claims the index.
        let mut newer = FlowRecord::EMPTY;
        newer.first_ns = 8;
        let lent = ix.lend::<Own>(&mut newer, 0);
        newer.seq_hi[0] = 5;
        ix.learn(&newer, 0, lent);
        assert_eq!((lent, newer.bits, ix.seq_hi[0]), (false, 0, 200));
        newer.bits = both;
        ix.claim(&mut newer);
        assert_eq!((ix.owner, ix.seq_hi), (8, [5, 0]));
        // Nor does a segment that replaces the connection give its marks.
        let lent = ix.lend::<Own>(&mut newer, 0);
        newer.first_ns = 9;
        newer.seq_hi[0] = 1;
        ix.learn(&newer, 0, lent);
        assert_eq!(ix.seq_hi[0], 5);
        // Nor a record just made, before its first segment.
        let mut fresh = FlowRecord::EMPTY;
        let mut unclaimed = CacheIndex::default();
        assert!(!unclaimed.lend::<Own>(&mut fresh, 0));
        unclaimed.learn(&fresh, 0, false);
        assert_eq!(fresh.bits, 0);
    }

    #[test]
    fn index_covers_every_key_field() {
        let base = FlowKey::new(6, [1; 16], 1000, [2; 16], 80, 0).0;
        let mut other = base;
        let mut changed = 0;
        for byte in 0..16 {
            for side in 0..2 {
                other.addr[side][byte] ^= 0x55;
                changed += (other.cache_index() != base.cache_index()) as u32;
                other = base;
            }
        }
        other.port[1] = 81;
        changed += (other.cache_index() != base.cache_index()) as u32;
        other = base;
        other.vlan = 3;
        changed += (other.cache_index() != base.cache_index()) as u32;
        assert!(changed >= 30, "{changed} of 34 changes moved the index");
    }
}
