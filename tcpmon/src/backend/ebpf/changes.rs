//! Reading only the flow records that changed since the last read (see
//! `tcpmon_common::change`), and deleting the records of connections that
//! ended, so that a tick costs what changed, not what the maps hold.

use anyhow::{Context, Result, anyhow};
use aya::maps::{Array, MapData, MapError, RingBuf};
use rustc_hash::{FxHashMap, FxHashSet};

use tcpmon_common::{Change, Counter, FlowKey, FlowKey4, FlowRecord};

use super::clock::monotonic_now_ns;
use super::{EbpfBackend, Reaper, Seen};

/// What the change reader keeps between reads.
pub(super) struct Changes {
    ring: RingBuf<MapData>,
    /// The epoch in the kernel's `EPOCH` array (0: never read yet).
    epoch: u32,
    /// Keys that came with the current epoch: a change after the read in
    /// the same epoch pushes nothing, so they are read again next time.
    carry: Vec<FlowKey>,
    /// What each CPU's cache slots held at the last read, by key.
    slots: FxHashMap<FlowKey, Vec<FlowRecord>>,
    /// `Counter::ChangesLost` at the last read.
    lost: u64,
    /// Records `reap` deleted from `FLOWS4` and `FLOWS`.
    deleted: [u64; 2],
    /// Their entries.
    capacity: [u64; 2],
    /// Keys the kernel reported as changed whose record was gone when
    /// read, and not by user space's delete: evicted (see `take_vanished`).
    vanished: Vec<FlowKey>,
}

/// How `changed` read the maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadKind {
    /// The records whose keys the kernel reported: this many.
    Changed(usize),
    /// Every record: the first read, or the ring had no room for a change.
    Full,
}

impl Changes {
    pub(super) fn new(ring: RingBuf<MapData>, capacity: [u64; 2]) -> Changes {
        Changes {
            deleted: [0; 2],
            capacity,
            ring,
            epoch: 0,
            carry: Vec::new(),
            slots: FxHashMap::default(),
            lost: 0,
            vanished: Vec::new(),
        }
    }
}

/// What `forget` did with a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Forgot {
    /// Deleted from the kernel's map.
    Deleted,
    /// The map holds another connection on the 4-tuple now, or the same
    /// one having seen more since it was read: left in place.
    Moved,
    /// The map no longer held it (evicted, or deleted before).
    Gone,
}

impl EbpfBackend {
    /// The records that changed since the last call, with what the CPUs'
    /// cache slots hold for them folded in, into `out` (cleared first).
    /// The first call, and any after the kernel had no room to report a
    /// change (`Counter::ChangesLost`), reads every record instead.
    pub fn changed(&mut self, out: &mut Vec<(FlowKey, FlowRecord)>) -> Result<ReadKind> {
        out.clear();
        let epoch = self.changes.epoch.wrapping_add(1).max(1);
        self.set_epoch(epoch)?;
        let previous = std::mem::replace(&mut self.changes.epoch, epoch);
        let mut keys = std::mem::take(&mut self.changes.carry);
        let mut bad = 0u64;
        while let Some(item) = self.changes.ring.next() {
            match bytemuck::try_pod_read_unaligned::<Change>(&item) {
                Ok(c) => {
                    keys.push(c.key);
                    if c.epoch == epoch {
                        self.changes.carry.push(c.key);
                    }
                }
                Err(_) => bad += 1,
            }
        }
        if bad > 0 {
            log::warn!("{bad} entries of the CHANGES ring buffer were no Change of this build");
        }
        let lost = self.counter(Counter::ChangesLost)?;
        let cached = self.read_caches()?;
        let slots = cached.shadows.clone();
        let full = previous == 0 || lost != self.changes.lost;
        self.changes.lost = lost;
        if full {
            self.changes.slots = slots;
            self.snapshot(out)?;
            self.screen(out);
            self.reap()?;
            return Ok(ReadKind::Full);
        }
        // A slot that counted more since the last read is a change of its
        // flow that no record shows yet.
        for (key, shadows) in &slots {
            if self.changes.slots.get(key) != Some(shadows) {
                keys.push(*key);
            }
        }
        self.changes.slots = slots;
        let mut seen = FxHashSet::default();
        for key in keys {
            if !seen.insert(key) {
                continue;
            }
            match self.lookup_bare(&key)? {
                Some(mut rec) => {
                    cached.fold_into(&key, &mut rec);
                    out.push((key, rec));
                }
                // Changed since the last read (or during it), then gone,
                // and not by user space's delete: evicted, and what changed
                // may be lost with it, which the table must know.
                None if !self.reaper.deleted(&key) => self.changes.vanished.push(key),
                None => {}
            }
        }
        self.screen(out);
        self.reap()?;
        Ok(ReadKind::Changed(out.len()))
    }

    /// The keys `changed` found gone since the last call: records the
    /// kernel's full maps evicted after a change user space had not read.
    pub fn take_vanished(&mut self) -> Vec<FlowKey> {
        std::mem::take(&mut self.changes.vanished)
    }

    /// Shows the reaper what was read, and leaves out what it calls late
    /// segments of a deleted connection.
    fn screen(&mut self, out: &mut Vec<(FlowKey, FlowRecord)>) {
        let now = monotonic_now_ns();
        out.retain(|(key, rec)| self.reaper.saw(key, rec, now) == Seen::Connection);
    }

    /// Deletes from the kernel's maps the records of connections that
    /// ended and lingered long enough (see `reaper`); `changed` does it on
    /// every read, views that do not call it do it on their own ticks.
    /// Returns how many it deleted.
    pub fn reap(&mut self) -> Result<usize> {
        let now = monotonic_now_ns();
        let mut deleted = 0;
        for (key, rec) in self.reaper.due(now) {
            match self.forget(&key, &rec)? {
                Forgot::Deleted => {
                    self.reaper.forgot(key, now);
                    self.changes.deleted[family(&key)] += 1;
                    deleted += 1;
                }
                // Changed since: its new state decides.
                Forgot::Moved => {
                    if let Some(rec) = self.lookup_bare(&key)? {
                        self.reaper.saw(&key, &rec, now);
                    }
                }
                Forgot::Gone => {}
            }
        }
        Ok(deleted)
    }

    /// How long an ended connection's record stays in the kernel after its
    /// last segment (top's `-r`; 2 s unless set).
    pub fn set_linger(&mut self, linger_ns: u64) {
        self.reaper = Reaper::new(linger_ns);
    }

    /// Flow records the kernel's full maps evicted (at least: records
    /// created beyond what the maps hold and what user space deleted; the
    /// LRU may also evict a little before a map is full, which no counter
    /// shows). Both IP versions' maps together.
    pub fn flows_evicted(&self) -> Result<u64> {
        let created = [
            self.counter(Counter::FlowsCreated4)?,
            self.counter(Counter::FlowsCreated6)?,
        ];
        let c = &self.changes;
        Ok((0..2)
            .map(|i| created[i].saturating_sub(c.capacity[i] + c.deleted[i]))
            .sum())
    }

    /// Packets of late segments (trailing a connection already deleted)
    /// that were left out of every view.
    pub fn late_packets(&self) -> u64 {
        self.reaper.late_packets
    }

    /// Deletes the kernel's record of a connection a view took as ended
    /// (a handshake that timed out, a connection idle too long), `rec` as
    /// user space last read it: also when it saw more since (what came
    /// after the last read is lost, rather than the whole connection
    /// counted again as a new one), never when the map holds another
    /// connection on the 4-tuple. Bare segments that trail it are then
    /// taken for late ones, as after a close.
    pub fn drop_ended(&mut self, key: &FlowKey, rec: &FlowRecord) -> Result<()> {
        match self.lookup_bare(key)? {
            Some(now) if now.first_ns == rec.first_ns => {
                let deleted = match key.narrow() {
                    Some(k4) => self.delete_in::<FlowKey4>(tcpmon_common::MAP_FLOWS4, k4),
                    None => self.delete_in::<FlowKey>(tcpmon_common::MAP_FLOWS, *key),
                }?;
                if deleted {
                    self.reaper.forgot(*key, monotonic_now_ns());
                    self.changes.deleted[family(key)] += 1;
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Deletes the kernel's record of a connection that ended, `rec` as
    /// user space last read it: only while the map still holds that very
    /// connection unchanged, so that nothing counted since is lost (a
    /// segment that comes after the delete starts a record of its own).
    pub fn forget(&mut self, key: &FlowKey, rec: &FlowRecord) -> Result<Forgot> {
        let Some(now) = self.lookup_bare(key)? else {
            return Ok(Forgot::Gone);
        };
        if now.first_ns != rec.first_ns || now.last_ns != rec.last_ns {
            return Ok(Forgot::Moved);
        }
        let deleted = match key.narrow() {
            Some(k4) => self.delete_in::<FlowKey4>(tcpmon_common::MAP_FLOWS4, k4),
            None => self.delete_in::<FlowKey>(tcpmon_common::MAP_FLOWS, *key),
        }?;
        Ok(if deleted {
            Forgot::Deleted
        } else {
            Forgot::Gone
        })
    }

    fn delete_in<K: aya::Pod>(&mut self, name: &str, key: K) -> Result<bool> {
        let map = self
            .ebpf
            .map_mut(name)
            .ok_or_else(|| anyhow!("the embedded eBPF object has no {name} map"))?;
        let mut flows = aya::maps::HashMap::<_, K, tcpmon_common::FlowRecordBits>::try_from(map)
            .with_context(|| format!("opening the {name} map"))?;
        match flows.remove(&key) {
            Ok(()) => Ok(true),
            Err(MapError::KeyNotFound) => Ok(false),
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => {
                Ok(false)
            }
            Err(e) => Err(e).with_context(|| format!("deleting from the {name} map")),
        }
    }

    /// The kernel's record of `key` as its map holds it, without what cache
    /// slots hold for it.
    fn lookup_bare(&self, key: &FlowKey) -> Result<Option<FlowRecord>> {
        match key.narrow() {
            Some(k4) => self.lookup_in(tcpmon_common::MAP_FLOWS4, k4),
            None => self.lookup_in(tcpmon_common::MAP_FLOWS, *key),
        }
    }

    fn set_epoch(&mut self, epoch: u32) -> Result<()> {
        let map = self
            .ebpf
            .map_mut(tcpmon_common::MAP_EPOCH)
            .ok_or_else(|| anyhow!("the embedded eBPF object has no EPOCH map"))?;
        let mut array = Array::<_, u32>::try_from(map).context("opening the EPOCH map")?;
        array
            .set(0, epoch, 0)
            .context("writing the epoch into the EPOCH map")
    }
}

/// 0 for a flow of `FLOWS4`, 1 for one of `FLOWS`.
fn family(key: &FlowKey) -> usize {
    usize::from(key.narrow().is_none())
}
