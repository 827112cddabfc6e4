//! The flow table's map from key to record, sized for hundreds of thousands
//! of flows: the connections sit in one dense `Vec` (176 bytes each, no
//! empty slots), and an open-addressing index of 8-byte slots (linear
//! probing) points into it. A slot holds the entry's position, 31 bits of
//! its hash (so probes and growth never read the 176-byte entries of other
//! keys) and a "changed since last taken" bit. That is about 192 bytes a
//! flow where records stored in the probe array cost 350 or more.
//!
//! [`Flows::prefetch`] asks for a key's index slot ahead of time, and
//! [`Flows::prefetch_entry`] for its entry a little later: a replay touches
//! a different flow with nearly every packet, and on a busy capture the
//! table outgrows the CPU caches.

use std::hash::Hasher;

use crate::prefetch::prefetch;
use rustc_hash::FxHasher;
use tcpmon_common::{FlowKey, FlowRecord};

use super::Connection;

/// Slots start at this many and double when three quarters are used: probe
/// runs stay short.
const MIN_SLOTS: usize = 1024;

const NONE: u32 = u32::MAX;
const EMPTY: u64 = NONE as u64;
const DIRTY: u64 = 1 << 63;
const HASH_SHIFT: u32 = 32;

#[derive(Debug, Default)]
pub(super) struct Flows {
    /// In insertion order, except that a removal moves the last one into
    /// the gap.
    conns: Vec<Connection>,
    /// Empty, or a power of two long: `EMPTY`, or the entry's position in
    /// the low 32 bits, its 31-bit hash above, `DIRTY` on top.
    slots: Vec<u64>,
}

/// Where a key is: its index slot, and its entry if present.
#[derive(Clone, Copy)]
pub(super) struct Found {
    slot: usize,
    pub(super) index: Option<usize>,
}

#[inline]
fn hash(key: &FlowKey) -> u32 {
    let mut h = FxHasher::default();
    for w in key.words() {
        h.write_u64(w);
    }
    // Fx's high bits are its best mixed.
    (h.finish() >> 33) as u32
}

#[inline]
fn index_of(slot: u64) -> u32 {
    slot as u32
}

#[inline]
fn hash_of(slot: u64) -> u32 {
    (slot >> HASH_SHIFT) as u32 & 0x7fff_ffff
}

impl Flows {
    pub(super) fn len(&self) -> usize {
        self.conns.len()
    }

    /// The entries, in no particular order.
    pub(super) fn all(&self) -> &[Connection] {
        &self.conns
    }

    #[inline]
    fn home(&self, h: u32) -> usize {
        h as usize & (self.slots.len() - 1)
    }

    /// `key`'s slot, or the empty slot where it would go.
    #[inline]
    pub(super) fn find(&self, key: &FlowKey) -> Found {
        if self.slots.is_empty() {
            return Found {
                slot: 0,
                index: None,
            };
        }
        let h = hash(key);
        let mask = self.slots.len() - 1;
        let mut i = self.home(h);
        loop {
            let s = self.slots[i];
            let at = index_of(s);
            if at == NONE {
                return Found {
                    slot: i,
                    index: None,
                };
            }
            if hash_of(s) == h && self.conns[at as usize].key == *key {
                return Found {
                    slot: i,
                    index: Some(at as usize),
                };
            }
            i = (i + 1) & mask;
        }
    }

    /// Starts loading `key`'s index slot into cache; a hint, with no effect
    /// on the table.
    #[inline]
    pub(super) fn prefetch(&self, key: &FlowKey) {
        if !self.slots.is_empty() {
            prefetch(&self.slots[self.home(hash(key))] as *const u64 as *const u8);
        }
    }

    /// Starts loading `key`'s entry, once its slot (see `prefetch`) is in
    /// cache: the first slot of the probe run whose hash matches is taken
    /// on trust, as a hint may be wrong.
    #[inline]
    pub(super) fn prefetch_entry(&self, key: &FlowKey) {
        if self.slots.is_empty() {
            return;
        }
        let h = hash(key);
        let mask = self.slots.len() - 1;
        let mut i = self.home(h);
        loop {
            let s = self.slots[i];
            if index_of(s) == NONE {
                return;
            }
            if hash_of(s) == h {
                let p = self.conns.as_ptr().wrapping_add(index_of(s) as usize) as *const u8;
                for line in (0..size_of::<Connection>()).step_by(64) {
                    prefetch(p.wrapping_add(line));
                }
                return;
            }
            i = (i + 1) & mask;
        }
    }

    pub(super) fn get(&self, key: &FlowKey) -> Option<&FlowRecord> {
        self.find(key).index.map(|i| &self.conns[i].rec)
    }

    pub(super) fn at(&self, index: usize) -> &Connection {
        &self.conns[index]
    }

    pub(super) fn at_mut(&mut self, index: usize) -> &mut Connection {
        &mut self.conns[index]
    }

    /// `key`'s entry, inserted with `FlowRecord::EMPTY` if missing, and
    /// whether it was there.
    #[inline]
    pub(super) fn entry(&mut self, key: FlowKey) -> (Found, bool) {
        if (self.conns.len() + 1) * 4 > self.slots.len() * 3 {
            self.grow();
        }
        let f = self.find(&key);
        if f.index.is_some() {
            return (f, true);
        }
        let i = self.conns.len();
        assert!(i < NONE as usize, "more than 4 billion flows");
        self.conns.push(Connection {
            key,
            rec: FlowRecord::EMPTY,
        });
        self.slots[f.slot] = ((hash(&key) as u64) << HASH_SHIFT) | i as u64;
        (
            Found {
                slot: f.slot,
                index: Some(i),
            },
            false,
        )
    }

    pub(super) fn insert(&mut self, key: FlowKey, rec: FlowRecord) -> Found {
        let (f, _) = self.entry(key);
        self.conns[f.index.expect("just inserted")].rec = rec;
        f
    }

    pub(super) fn is_dirty(&self, f: Found) -> bool {
        f.index.is_some() && self.slots[f.slot] & DIRTY != 0
    }

    pub(super) fn set_dirty(&mut self, f: Found, dirty: bool) {
        if f.index.is_some() {
            if dirty {
                self.slots[f.slot] |= DIRTY;
            } else {
                self.slots[f.slot] &= !DIRTY;
            }
        }
    }

    /// Removes `key`: the last entry moves into its place, and later slots
    /// of the probe run move back, so lookups never need tombstones.
    pub(super) fn remove(&mut self, key: &FlowKey) {
        let f = self.find(key);
        let Some(at) = f.index else { return };
        self.unlink(f.slot);
        let last = self.conns.len() - 1;
        if at != last {
            let moved = self.find(&self.conns[last].key).slot;
            self.slots[moved] = (self.slots[moved] & !(NONE as u64)) | at as u64;
        }
        self.conns.swap_remove(at);
    }

    /// Keeps the entries `keep` accepts, in one pass over the entries and
    /// one rebuild of the index (a purge may drop most of a large table).
    pub(super) fn retain(&mut self, mut keep: impl FnMut(&Connection) -> bool) {
        let dirty: Vec<bool> = if self.slots.iter().any(|s| s & DIRTY != 0) {
            let mut d = vec![false; self.conns.len()];
            for s in self.slots.iter().filter(|s| index_of(**s) != NONE) {
                d[index_of(*s) as usize] = s & DIRTY != 0;
            }
            d
        } else {
            Vec::new()
        };
        let before = self.conns.len();
        let mut i = 0;
        let mut kept_dirty = Vec::new();
        self.conns.retain(|c| {
            let k = keep(c);
            if k && dirty.get(i).copied().unwrap_or(false) {
                kept_dirty.push(c.key);
            }
            i += 1;
            k
        });
        if self.conns.len() != before {
            self.rebuild(self.slots.len());
            for key in kept_dirty {
                let f = self.find(&key);
                self.set_dirty(f, true);
            }
        }
    }

    /// Empties slot `gap`, moving later entries of its probe run back.
    fn unlink(&mut self, mut gap: usize) {
        self.slots[gap] = EMPTY;
        let mask = self.slots.len() - 1;
        let mut i = gap;
        loop {
            i = (i + 1) & mask;
            let s = self.slots[i];
            if index_of(s) == NONE {
                return;
            }
            // An entry may fill the gap unless its home lies cyclically in
            // (gap, i]: then it would move before where lookups start.
            let home = self.home(hash_of(s));
            let stays = if gap < i {
                gap < home && home <= i
            } else {
                gap < home || home <= i
            };
            if !stays {
                self.slots[gap] = s;
                self.slots[i] = EMPTY;
                gap = i;
            }
        }
    }

    fn grow(&mut self) {
        let n = (self.slots.len() * 2).max(MIN_SLOTS);
        let old = std::mem::replace(&mut self.slots, vec![EMPTY; n]);
        let mask = n - 1;
        // The stored hashes place every slot without reading an entry.
        for s in old.into_iter().filter(|s| index_of(*s) != NONE) {
            let mut i = self.home(hash_of(s));
            while index_of(self.slots[i]) != NONE {
                i = (i + 1) & mask;
            }
            self.slots[i] = s;
        }
    }

    /// A fresh index of `n` slots (at least enough) for the entries as they
    /// are; dirty bits are not kept.
    fn rebuild(&mut self, n: usize) {
        let mut n = n.max(MIN_SLOTS);
        while self.conns.len() * 4 > n * 3 {
            n *= 2;
        }
        // Shrink a mostly emptied index too.
        while n > MIN_SLOTS && self.conns.len() * 8 < n {
            n /= 2;
        }
        self.slots = vec![EMPTY; n];
        let mask = n - 1;
        for (at, c) in self.conns.iter().enumerate() {
            let h = hash(&c.key);
            let mut i = self.home(h);
            while index_of(self.slots[i]) != NONE {
                i = (i + 1) & mask;
            }
            self.slots[i] = ((h as u64) << HASH_SHIFT) | at as u64;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u32) -> FlowKey {
        let mut k = FlowKey {
            family: 4,
            ..FlowKey::default()
        };
        k.addr[0][..4].copy_from_slice(&n.to_be_bytes());
        k.port = [(n % 7) as u16, 80];
        k
    }

    /// Against std's HashMap, through growth and many removals (which move
    /// entries back along their probe runs and the last entry into gaps).
    #[test]
    fn behaves_like_a_hash_map() {
        let mut ours = Flows::default();
        let mut std = std::collections::HashMap::new();
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for step in 0..200_000u64 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let k = key((seed % 3_000) as u32);
            match seed >> 60 {
                0..=2 => {
                    ours.remove(&k);
                    std.remove(&k);
                }
                3..=9 => {
                    let (f, _) = ours.entry(k);
                    ours.at_mut(f.index.unwrap()).rec.packets[0] += step;
                    std.entry(k).or_insert(FlowRecord::EMPTY).packets[0] += step;
                }
                10 => {
                    let cut = (seed % 3_000) as u32;
                    ours.retain(|c| c.key.port[0] as u32 != cut % 7);
                    std.retain(|k, _| k.port[0] as u32 != cut % 7);
                }
                _ => assert_eq!(ours.get(&k), std.get(&k), "step {step}"),
            }
            assert_eq!(ours.len(), std.len());
        }
        let mut all: Vec<_> = ours.all().iter().map(|c| (c.key, c.rec)).collect();
        all.sort_by_key(|(k, _)| *k);
        let mut want: Vec<_> = std.into_iter().collect();
        want.sort_by_key(|(k, _)| *k);
        assert_eq!(all, want);
    }

    #[test]
    fn dirty_bits_follow_their_entries() {
        let mut f = Flows::default();
        for n in 0..100 {
            let (found, _) = f.entry(key(n));
            f.set_dirty(found, n % 3 == 0);
        }
        f.remove(&key(0));
        f.retain(|c| c.key != key(4));
        for n in 1..100 {
            let found = f.find(&key(n));
            assert_eq!(f.is_dirty(found), n % 3 == 0 && n != 0, "flow {n}");
        }
    }
}
