//! The flow table: current connections by key, plus finished connections
//! whose 4-tuple a newer connection took over.

use tcpmon_common::{ClientHow, Event, EventKind, FlowKey, FlowRecord, Segment, State, apply};

use rustc_hash::FxHashMap;

use super::evictions::Evictions;
use super::flows::{Flows, Found};

/// One connection as views see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Connection {
    pub key: FlowKey,
    pub rec: FlowRecord,
}

#[derive(Debug, Default)]
pub struct FlowTable {
    /// FxHash: several times faster than SipHash on 40-byte keys, and a
    /// replay's keys come from a file, not from someone aiming collisions.
    live: Flows,
    /// Connections superseded by a new one on the same 4-tuple, oldest first.
    finished: Vec<Connection>,
    /// Add to a record's timestamps to get Unix nanoseconds: 0 for captures
    /// (packet time), CLOCK_REALTIME - CLOCK_MONOTONIC for the kernel.
    pub clock_offset_ns: i64,
    /// Connections the kernel's full flow map evicted before user space
    /// read their last counts (see `evicted` and `vanished`).
    pub evicted: u64,
    /// Which connections those are, and the guessed records that continue
    /// them.
    evictions: Evictions,
    /// What changed since `take_changes`, when someone asked to know.
    changes: Option<Changes>,
}

/// The connections changed since they were last taken: each live key once
/// (its index slot's dirty bit dedups), with what it held before the first
/// change; retired connections are those pushed onto `finished` since.
#[derive(Debug, Default)]
struct Changes {
    list: Vec<Changed>,
    /// The records changed keys held before, for keys that existed: a
    /// flood's new keys cost 48 bytes each here, not a record's copy.
    befores: Vec<FlowRecord>,
    finished_seen: usize,
    /// Connections retired as evicted since, by (key, first_ns).
    evicted: Vec<(FlowKey, u64)>,
}

#[derive(Debug)]
struct Changed {
    key: FlowKey,
    /// Where in `Changes::befores` the record the key held before this
    /// round's first change is; `NEW` for a new key.
    before: u32,
}

const NEW: u32 = u32::MAX;

/// Change buffers keep room for this many between rounds; a flood's round
/// does not keep its size afterwards.
const KEEP_CHANGES: usize = 65_536;

/// One connection that changed since the changes were last taken.
#[derive(Clone, Copy, Debug)]
pub struct Change<'a> {
    pub conn: &'a Connection,
    /// Its record when the changes were last taken; `None` if it is new
    /// since.
    pub before: Option<&'a FlowRecord>,
    /// It left the live table since: a new connection took its 4-tuple, or
    /// the kernel's full map evicted it. Its record changes no more.
    pub retired: Option<Retired>,
}

/// Why a connection left the live table before it was purged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retired {
    /// A new connection began on its 4-tuple.
    Superseded,
    /// The kernel's full flow map evicted it while it was open.
    Evicted,
}

impl FlowTable {
    pub fn new(clock_offset_ns: i64) -> FlowTable {
        FlowTable {
            clock_offset_ns,
            ..FlowTable::default()
        }
    }

    /// Records which connections change, for [`FlowTable::take_changes`]
    /// (what rates need); off by default, since a list nobody takes grows.
    pub fn track_changes(mut self) -> FlowTable {
        self.changes = Some(Changes {
            list: Vec::new(),
            befores: Vec::new(),
            finished_seen: self.finished.len(),
            evicted: Vec::new(),
        });
        self
    }

    /// Called before the connection at `f` changes.
    fn mark(&mut self, f: Found, existed: bool) {
        let Some(ch) = self.changes.as_mut() else {
            return;
        };
        let Some(i) = f.index else { return };
        if self.live.is_dirty(f) {
            return;
        }
        let c = self.live.at(i);
        let before = match existed {
            true => {
                ch.befores.push(c.rec);
                (ch.befores.len() - 1) as u32
            }
            false => NEW,
        };
        ch.list.push(Changed { key: c.key, before });
        self.live.set_dirty(f, true);
    }

    /// Hands each connection that changed since the last call to `f`, once,
    /// with its record at the last call (`None` if it is new since),
    /// including connections retired meanwhile. Needs `track_changes`.
    pub fn take_changes(&mut self, mut f: impl FnMut(Change)) {
        let Some(ch) = self.changes.as_mut() else {
            return;
        };
        let list = std::mem::take(&mut ch.list);
        let befores = std::mem::take(&mut ch.befores);
        let evicted = std::mem::take(&mut ch.evicted);
        let finished_seen = std::mem::replace(&mut ch.finished_seen, self.finished.len());
        // Connections whose key now holds another one, or nothing: the old
        // one may be among the retired.
        let mut gone: FxHashMap<(FlowKey, u64), &FlowRecord> = FxHashMap::default();
        for c in &list {
            let found = self.live.find(&c.key);
            let now = found.index.map(|i| *self.live.at(i));
            let before = befores.get(c.before as usize);
            if let Some(now) = now
                && self.live.is_dirty(found)
            {
                self.live.set_dirty(found, false);
                f(Change {
                    conn: &now,
                    before: before.filter(|b| b.first_ns == now.rec.first_ns),
                    retired: None,
                });
            }
            if let Some(b) = before
                && now.is_none_or(|n| n.rec.first_ns != b.first_ns)
            {
                gone.insert((c.key, b.first_ns), b);
            }
        }
        for c in &self.finished[finished_seen.min(self.finished.len())..] {
            let id = (c.key, c.rec.first_ns);
            let retired = match evicted.contains(&id) {
                true => Retired::Evicted,
                false => Retired::Superseded,
            };
            f(Change {
                conn: c,
                before: gone.get(&id).copied(),
                retired: Some(retired),
            });
        }
        // The buffers are reused: the next round is likely as large,
        // unless it was a flood's.
        let (mut list, mut befores) = (list, befores);
        list.clear();
        befores.clear();
        if let Some(ch) = self.changes.as_mut()
            && list.capacity() <= KEEP_CHANGES
        {
            ch.list = list;
            ch.befores = befores;
        }
    }

    /// Forgets the connections retired so far (superseded or evicted),
    /// once their changes were taken.
    pub fn clear_finished(&mut self) {
        self.finished.clear();
        if let Some(ch) = self.changes.as_mut() {
            ch.finished_seen = 0;
        }
    }

    /// Connections in the live table (not retired).
    pub fn live_len(&self) -> usize {
        self.live.len()
    }

    /// Applies a segment with the shared update rule (the pcap backend's
    /// path) and reports the event, if any, to `on_event`.
    pub fn apply(&mut self, key: FlowKey, seg: &Segment, mut on_event: impl FnMut(&Event)) {
        let (found, existed) = self.live.entry(key);
        self.mark(found, existed);
        let i = found.index.expect("entry is present");
        let rec = &mut self.live.at_mut(i).rec;
        let finished = &mut self.finished;
        apply(rec, seg, |kind, rec| {
            if kind == EventKind::Superseded {
                finished.push(Connection { key, rec: *rec });
            }
            on_event(&Event {
                key,
                kind,
                _pad: [0; 7],
                rec: *rec,
            });
        });
    }

    /// An ICMP destination-unreachable quoted a segment of `key` with
    /// sequence number `seq`: reports an `Unreach` event when that ends a
    /// pending handshake (the pcap backend's side of the kernel's `--icmp`).
    pub fn unreachable(&self, key: FlowKey, seq: u32, mut on_event: impl FnMut(&Event)) {
        if let Some(rec) = self.live.get(&key)
            && tcpmon_common::icmp::quote_ends_handshake(rec, seq)
        {
            on_event(&Event {
                key,
                kind: EventKind::Unreach,
                _pad: [0; 7],
                rec: *rec,
            });
        }
    }

    /// Starts loading `key`'s index slot into cache, for a segment that
    /// will be applied shortly: see [`Flows`].
    #[inline]
    pub fn prefetch(&self, key: &FlowKey) {
        self.live.prefetch(key);
    }

    /// Starts loading `key`'s record, some time after `prefetch`.
    #[inline]
    pub fn prefetch_record(&self, key: &FlowKey) {
        self.live.prefetch_entry(key);
    }

    /// Takes in an event the kernel emitted (the eBPF backend's path).
    pub fn on_event(&mut self, ev: &Event) {
        if ev.kind == EventKind::Superseded {
            self.retire(ev.key, ev.rec);
        } else {
            self.merge(ev.key, ev.rec);
        }
    }

    /// Takes in a record read from the kernel's flow map. Events and map
    /// reads race, so the newer of the two copies wins.
    pub fn merge(&mut self, key: FlowKey, rec: FlowRecord) {
        let found = self.live.find(&key);
        match found.index {
            Some(i) if !is_newer(&rec, &self.live.at(i).rec) => {}
            Some(i) if evicted(&self.live.at(i).rec, &rec) => {
                let old = self.live.at(i).rec;
                self.retire_evicted(key, old);
                // The rest of the same connection, counted from the
                // eviction on.
                self.evictions.mark(key, &rec);
                let found = self.live.insert(key, rec);
                self.mark(found, false);
            }
            Some(i) => {
                self.mark(found, true);
                self.live.at_mut(i).rec = rec;
            }
            None => {
                // A snapshot may still show a connection that was already
                // retired; keep it retired.
                if !self
                    .finished
                    .iter()
                    .rev()
                    .any(|c| c.key == key && same_connection(&c.rec, &rec))
                {
                    if self.evictions.continues(&key, &rec) {
                        self.evictions.mark(key, &rec);
                    }
                    let found = self.live.insert(key, rec);
                    self.mark(found, false);
                }
            }
        }
    }

    /// The kernel reported a change of `key` and then no longer held it,
    /// at `now_ns` on its clock: its full map evicted the record (user
    /// space deletes only what did not change since it read it). The
    /// connection held on `key`, if any, may have lost what changed since
    /// it was read: retired as evicted. Unless it had ended (both FINs
    /// acknowledged, or reset): nothing but a resent segment comes after
    /// that, and a change the kernel reports during a read (after the ring
    /// was drained) may be one the read saw, which is no loss; marking
    /// those made every seventh connection of a churn "evicted" with its
    /// counts whole.
    pub fn vanished(&mut self, key: FlowKey, now_ns: u64) {
        self.evictions.vanished(key, now_ns);
        if let Some(&old) = self.live.get(&key)
            && !matches!(old.state, State::Closed | State::Reset)
        {
            self.retire_evicted(key, old);
        }
    }

    /// Counts and marks an evicted connection and moves it to `finished`.
    fn retire_evicted(&mut self, key: FlowKey, old: FlowRecord) {
        self.evicted += 1;
        self.evictions.mark(key, &old);
        if let Some(ch) = self.changes.as_mut() {
            ch.evicted.push((key, old.first_ns));
        }
        self.retire(key, old);
    }

    /// Whether the kernel's full flow map cut `c`'s counts: it was evicted
    /// before its last counts were read, or it is what came after such an
    /// eviction on its 4-tuple.
    pub fn is_evicted(&self, c: &Connection) -> bool {
        self.evictions.is_marked(&c.key, &c.rec)
    }

    fn retire(&mut self, key: FlowKey, rec: FlowRecord) {
        let found = self.live.find(&key);
        if let Some(i) = found.index
            && same_connection(&self.live.at(i).rec, &rec)
        {
            self.mark(found, true);
            self.live.remove(&key);
        }
        self.finished.push(Connection { key, rec });
    }

    /// Every connection, finished and current, in the order they were first
    /// seen (ties broken by key, so output is deterministic). Sorts
    /// references, not copies: a replay's table can hold millions.
    pub fn in_order(&self) -> Vec<&Connection> {
        let mut all: Vec<&Connection> = self.iter().collect();
        // Mostly sorted already (entries go in as they are first seen), which
        // the stable sort notices.
        all.sort_by_key(|c| (c.rec.first_ns, c.key));
        all
    }

    /// Every connection, finished and current, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &Connection> {
        self.finished.iter().chain(self.live.all())
    }

    /// [`FlowTable::in_order`], copied.
    pub fn connections(&self) -> Vec<Connection> {
        self.in_order().into_iter().copied().collect()
    }

    /// Keeps only the connections `keep` accepts (the live `top` view drops
    /// what it no longer shows, so a long run's memory stays bounded).
    pub fn retain(&mut self, mut keep: impl FnMut(&Connection) -> bool) {
        let seen = self.changes.as_ref().map_or(0, |c| c.finished_seen);
        let (mut i, mut kept_seen) = (0, 0);
        let evictions = &mut self.evictions;
        let mut keep = |c: &Connection| {
            let k = keep(c);
            if !k {
                evictions.unmark(&c.key, &c.rec);
            }
            k
        };
        self.finished.retain(|c| {
            let k = keep(c);
            kept_seen += usize::from(k && i < seen);
            i += 1;
            k
        });
        if let Some(ch) = self.changes.as_mut() {
            ch.finished_seen = kept_seen;
        }
        self.live.retain(keep);
    }

    pub fn len(&self) -> usize {
        self.live.len() + self.finished.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A backend timestamp as Unix nanoseconds.
    pub fn unix_ns(&self, ts_ns: u64) -> i128 {
        ts_ns as i128 + self.clock_offset_ns as i128
    }
}

impl Connection {
    /// TCP payload bytes both ways: what speeds count.
    pub fn payload_bytes(&self) -> u64 {
        self.rec.bytes[0] + self.rec.bytes[1]
    }

    /// Index of the client in the key's endpoints.
    pub fn client_side(&self) -> usize {
        self.rec.client as usize & 1
    }

    pub fn client(&self) -> std::net::SocketAddr {
        self.endpoint(self.client_side())
    }

    pub fn server(&self) -> std::net::SocketAddr {
        self.endpoint(self.client_side() ^ 1)
    }

    fn endpoint(&self, side: usize) -> std::net::SocketAddr {
        let a = self.key.addr[side];
        let ip: std::net::IpAddr = if self.key.family == 6 {
            std::net::Ipv6Addr::from(a).into()
        } else {
            std::net::Ipv4Addr::new(a[0], a[1], a[2], a[3]).into()
        };
        std::net::SocketAddr::new(ip, self.key.port[side])
    }
}

/// The kernel's record of an open connection `old` was replaced by one it
/// made for a segment without SYN (`new`, guessed): nothing but its LRU
/// map, full, makes it forget an open connection (a SYN starting a new one
/// reports the old one as superseded, and user space deletes only ended
/// ones). The old record's counts end there; the new one counts on.
/// An ended connection `old`, though, is deleted by user space only after
/// its linger, and late segments after that delete never reach the table
/// (the reaper screens them): a bare record (no SYN, no payload) within
/// TIME-WAIT of its end means the map evicted it first.
fn evicted(old: &FlowRecord, new: &FlowRecord) -> bool {
    new.first_ns > old.first_ns
        && new.client_how == ClientHow::Guessed
        && (!matches!(old.state, State::Closed | State::Reset)
            || (is_bare(new) && new.first_ns - old.last_ns.min(new.first_ns) < LATE_NS))
}

/// TIME-WAIT's 60 s, in which the closing end may still resend its FIN.
const LATE_NS: u64 = 60_000_000_000;

/// A record made by segments without SYN and without payload only.
fn is_bare(rec: &FlowRecord) -> bool {
    rec.bytes == [0, 0]
        && (rec.flags_seen[0] | rec.flags_seen[1]) & tcpmon_common::tcp::flags::SYN == 0
}

fn same_connection(a: &FlowRecord, b: &FlowRecord) -> bool {
    a.first_ns == b.first_ns
}

/// A later connection on the tuple, or the same one having seen more.
fn is_newer(a: &FlowRecord, b: &FlowRecord) -> bool {
    let seen = |r: &FlowRecord| r.packets[0] + r.packets[1];
    (a.first_ns, a.last_ns, seen(a)) > (b.first_ns, b.last_ns, seen(b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tcpmon_common::State;
    use tcpmon_common::tcp::flags::*;

    fn seg(ts: u64, dir: u8, flags: u8, seq: u32, ack: u32) -> Segment {
        Segment {
            ts_ns: ts,
            seq,
            ack,
            wire_packets: 1,
            flags,
            dir,
            guess: 1,
            ..Segment::default()
        }
    }

    fn key() -> FlowKey {
        FlowKey {
            port: [80, 40000],
            family: 4,
            ..FlowKey::default()
        }
    }

    #[test]
    fn applying_segments_and_replaying_events_give_the_same_table() {
        let segs = [
            seg(1, 1, SYN, 10, 0),
            seg(2, 0, SYN | ACK, 50, 11),
            seg(3, 1, ACK, 11, 51),
            seg(4, 1, RST, 11, 0),
            seg(5, 1, SYN, 900, 0), // a new connection on the same tuple
        ];
        let mut direct = FlowTable::new(0);
        let mut events = Vec::new();
        for s in &segs {
            direct.apply(key(), s, |e| events.push(*e));
        }
        let kinds: Vec<EventKind> = events.iter().map(|e| e.kind).collect();
        assert_eq!(
            kinds,
            [
                EventKind::Opened,
                EventKind::SynAck,
                EventKind::Established,
                EventKind::Reset,
                EventKind::Superseded,
                EventKind::Opened
            ]
        );
        let mut via_events = FlowTable::new(0);
        for e in &events {
            via_events.on_event(e);
        }
        assert_eq!(direct.connections(), via_events.connections());
        let conns = direct.connections();
        assert_eq!(conns.len(), 2);
        assert_eq!(conns[0].rec.state, State::Reset);
        assert_eq!(conns[1].rec.state, State::SynSent);
    }

    #[test]
    fn an_older_copy_never_overwrites_a_newer_one() {
        let mut t = FlowTable::new(0);
        let mut a = FlowRecord::EMPTY;
        a.first_ns = 1;
        a.last_ns = 10;
        a.packets = [5, 5];
        let mut b = a;
        b.last_ns = 5;
        b.packets = [1, 1];
        t.merge(key(), a);
        t.merge(key(), b);
        assert_eq!(t.connections()[0].rec.packets, [5, 5]);
    }

    fn open_at(first_ns: u64, state: State, how: ClientHow) -> FlowRecord {
        let mut r = FlowRecord::EMPTY;
        r.first_ns = first_ns;
        r.last_ns = first_ns + 1;
        r.packets = [1, 1];
        r.state = state;
        r.client_how = how;
        r
    }

    #[test]
    fn a_vanished_open_connection_is_marked_and_what_follows_it_too() {
        let mut t = FlowTable::new(0);
        let open = open_at(1, State::Established, ClientHow::Syn);
        t.merge(key(), open);
        t.vanished(key(), 10);
        assert_eq!(t.evicted, 1);
        assert_eq!(t.live_len(), 0, "retired");
        let c = t.connections()[0];
        assert!(t.is_evicted(&c));
        // The rest of it, picked up again without a handshake.
        let rest = open_at(5, State::Established, ClientHow::Guessed);
        t.merge(key(), rest);
        let conns = t.connections();
        assert_eq!(conns.len(), 2);
        assert!(conns.iter().all(|c| t.is_evicted(c)), "both halves");
        // Dropped from the table, dropped from the marks.
        t.retain(|_| false);
        assert!(!t.is_evicted(&conns[1]));
    }

    #[test]
    fn a_vanished_ended_connection_stays_whole() {
        let mut t = FlowTable::new(0);
        t.merge(key(), open_at(1, State::Closed, ClientHow::Syn));
        t.vanished(key(), 10);
        assert_eq!(t.evicted, 0);
        assert!(!t.is_evicted(&t.connections()[0]));
    }

    #[test]
    fn a_bare_record_after_an_ended_one_means_the_map_evicted_it() {
        let mut t = FlowTable::new(0);
        t.merge(key(), open_at(1, State::Closed, ClientHow::Syn));
        // The last ACK, resent after the map evicted the record.
        let mut late = open_at(9, State::Established, ClientHow::Guessed);
        late.flags_seen = [tcpmon_common::tcp::flags::ACK, 0];
        t.merge(key(), late);
        let conns = t.connections();
        assert_eq!(conns.len(), 2);
        assert_eq!(t.evicted, 1);
        assert!(conns.iter().all(|c| t.is_evicted(c)));
    }

    #[test]
    fn a_stale_snapshot_does_not_revive_a_retired_connection() {
        let mut t = FlowTable::new(0);
        let mut old = FlowRecord::EMPTY;
        old.first_ns = 1;
        old.last_ns = 3;
        t.merge(key(), old);
        t.on_event(&Event {
            key: key(),
            kind: EventKind::Superseded,
            _pad: [0; 7],
            rec: old,
        });
        t.merge(key(), old);
        assert_eq!(t.len(), 1);
    }
}
