//! The flow table's map from key to record: an open-addressing hash table
//! with linear probing, written out here for one thing std's `HashMap` does
//! not offer: [`Flows::prefetch`], which asks for a key's slot ahead of
//! time. A replay touches a different flow with nearly every packet, and on a
//! busy capture the table outgrows the CPU caches, so without a prefetch each
//! packet waits for memory; with one, the next packets' slots load while the
//! current one is applied.

use std::hash::Hasher;

use crate::prefetch::prefetch;
use rustc_hash::FxHasher;
use tcpmon_common::{FlowKey, FlowRecord};

/// Slots start at this many and double when three quarters are used: probe
/// runs stay short, and the table stays small enough for the TLB.
const MIN_SLOTS: usize = 1024;

/// Cache-line aligned, so a slot is exactly three lines to prefetch.
#[derive(Clone, Copy)]
#[repr(align(64))]
struct Slot {
    key: FlowKey,
    rec: FlowRecord,
    used: bool,
}

const EMPTY: Slot = Slot {
    key: FlowKey {
        addr: [[0; 16]; 2],
        port: [0; 2],
        vlan: 0,
        family: 0,
        _pad: 0,
    },
    rec: FlowRecord::EMPTY,
    used: false,
};

#[derive(Debug, Default)]
pub(super) struct Flows {
    /// Empty, or a power of two long.
    slots: Vec<Slot>,
    len: usize,
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot")
            .field("key", &self.key)
            .field("used", &self.used)
            .finish_non_exhaustive()
    }
}

impl Flows {
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// Where `key`'s probe sequence starts.
    #[inline]
    fn home(&self, key: &FlowKey) -> usize {
        let mut h = FxHasher::default();
        for w in key.words() {
            h.write_u64(w);
        }
        h.finish() as usize & (self.slots.len() - 1)
    }

    /// The slot holding `key`, or the empty slot where it would go.
    #[inline]
    fn find(&self, key: &FlowKey) -> (usize, bool) {
        let mask = self.slots.len() - 1;
        let mut i = self.home(key);
        loop {
            let s = &self.slots[i];
            if !s.used {
                return (i, false);
            }
            if s.key == *key {
                return (i, true);
            }
            i = (i + 1) & mask;
        }
    }

    /// Starts loading `key`'s slot into cache; a hint, with no effect on
    /// the table.
    #[inline]
    pub(super) fn prefetch(&self, key: &FlowKey) {
        if self.slots.is_empty() {
            return;
        }
        let slot = &self.slots[self.home(key)] as *const Slot as *const u8;
        for line in (0..size_of::<Slot>()).step_by(64) {
            prefetch(slot.wrapping_add(line));
        }
    }

    pub(super) fn get(&self, key: &FlowKey) -> Option<&FlowRecord> {
        if self.len == 0 {
            return None;
        }
        match self.find(key) {
            (i, true) => Some(&self.slots[i].rec),
            _ => None,
        }
    }

    pub(super) fn get_mut(&mut self, key: &FlowKey) -> Option<&mut FlowRecord> {
        if self.len == 0 {
            return None;
        }
        match self.find(key) {
            (i, true) => Some(&mut self.slots[i].rec),
            _ => None,
        }
    }

    /// The record for `key`, inserted as `FlowRecord::EMPTY` if missing.
    #[inline]
    pub(super) fn entry(&mut self, key: FlowKey) -> &mut FlowRecord {
        if (self.len + 1) * 4 > self.slots.len() * 3 {
            self.grow();
        }
        let (i, found) = self.find(&key);
        if !found {
            self.slots[i] = Slot {
                key,
                rec: FlowRecord::EMPTY,
                used: true,
            };
            self.len += 1;
        }
        &mut self.slots[i].rec
    }

    pub(super) fn insert(&mut self, key: FlowKey, rec: FlowRecord) {
        *self.entry(key) = rec;
    }

    /// Removes `key` and closes the gap by moving later entries of the same
    /// probe run back, so lookups never need tombstones.
    pub(super) fn remove(&mut self, key: &FlowKey) {
        if self.len == 0 {
            return;
        }
        let (mut gap, found) = self.find(key);
        if !found {
            return;
        }
        self.slots[gap].used = false;
        self.len -= 1;
        let mask = self.slots.len() - 1;
        let mut i = gap;
        loop {
            i = (i + 1) & mask;
            if !self.slots[i].used {
                return;
            }
            // An entry may fill the gap unless its home lies cyclically in
            // (gap, i]: then it would move before where lookups start.
            let home = self.home(&self.slots[i].key);
            let stays = if gap < i {
                gap < home && home <= i
            } else {
                gap < home || home <= i
            };
            if !stays {
                self.slots[gap] = self.slots[i];
                self.slots[i].used = false;
                gap = i;
            }
        }
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (&FlowKey, &FlowRecord)> {
        self.slots
            .iter()
            .filter(|s| s.used)
            .map(|s| (&s.key, &s.rec))
    }

    fn grow(&mut self) {
        let n = (self.slots.len() * 2).max(MIN_SLOTS);
        let old = std::mem::replace(&mut self.slots, vec![EMPTY; n]);
        for s in old.into_iter().filter(|s| s.used) {
            let (i, _) = self.find(&s.key);
            self.slots[i] = s;
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
    /// entries back along their probe runs).
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
                    ours.entry(k).packets[0] += step;
                    std.entry(k).or_insert(FlowRecord::EMPTY).packets[0] += step;
                }
                _ => assert_eq!(ours.get(&k), std.get(&k), "step {step}"),
            }
            assert_eq!(ours.len(), std.len());
        }
        let mut all: Vec<_> = ours.iter().map(|(k, r)| (*k, *r)).collect();
        all.sort_by_key(|(k, _)| *k);
        let mut want: Vec<_> = std.into_iter().collect();
        want.sort_by_key(|(k, _)| *k);
        assert_eq!(all, want);
    }
}
