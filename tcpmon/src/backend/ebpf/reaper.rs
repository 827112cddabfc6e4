//! Which kernel records user space is done with, so that the kernel's maps
//! hold live connections and not every one that ever ended.
//!
//! A connection that closed or was reset is deleted from the kernel's map
//! once it has been quiet for the linger time (top's `-r`, 2 s by default):
//! user space read its final record by then, and the segments that trail
//! an end (the last ACK of a FIN, a retransmitted FIN) come within a round
//! trip. One that still trails after the delete finds no record and makes
//! a new one, which the kernel takes for a connection picked up mid-stream.
//! Such a record, on a 4-tuple deleted in the last `LATE_NS`, with no SYN
//! and no payload, is a late segment of the old connection, not a
//! connection: it is counted (`late_segments`), deleted at once and shown
//! nowhere.

use std::collections::VecDeque;

use rustc_hash::FxHashMap;
use tcpmon_common::tcp::flags;
use tcpmon_common::{ClientHow, FlowKey, FlowRecord, State};

/// How long after a delete a bare segment on the 4-tuple is taken for a
/// late one: TIME-WAIT's 60 s, in which the closing end may still resend
/// its FIN.
pub const LATE_NS: u64 = 60_000_000_000;

#[derive(Debug, Default)]
pub struct Reaper {
    linger_ns: u64,
    /// Ended connections, in the order they ended: when each may go.
    ended: VecDeque<(u64, FlowKey, FlowRecord)>,
    /// 4-tuples deleted recently, with when.
    forgotten: FxHashMap<FlowKey, u64>,
    /// Expiry order of `forgotten`.
    forgotten_order: VecDeque<(u64, FlowKey)>,
    /// Packets of late segments dropped (see the module's text).
    pub late_packets: u64,
}

/// What a record read from the kernel is to the reaper.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seen {
    /// A connection: show it.
    Connection,
    /// Late segments of a connection already deleted: delete it at once
    /// and show it nowhere.
    Late,
}

impl Reaper {
    pub fn new(linger_ns: u64) -> Reaper {
        Reaper {
            linger_ns,
            ..Reaper::default()
        }
    }

    /// A record as the kernel holds it, `now_ns` on its clock.
    pub fn saw(&mut self, key: &FlowKey, rec: &FlowRecord, now_ns: u64) -> Seen {
        self.expire(now_ns);
        if self.forgotten.contains_key(key) && is_bare(rec) {
            self.late_packets += rec.packets[0] + rec.packets[1];
            self.ended.push_back((0, *key, *rec));
            return Seen::Late;
        }
        if matches!(rec.state, State::Closed | State::Reset) {
            self.ended
                .push_back((rec.last_ns.saturating_add(self.linger_ns), *key, *rec));
        }
        Seen::Connection
    }

    /// The ended records whose linger is over at `now_ns`, to delete.
    pub fn due(&mut self, now_ns: u64) -> Vec<(FlowKey, FlowRecord)> {
        let mut due = Vec::new();
        // Mostly in order of their due time; one that is not (a record
        // that lingered longer) waits for those before it, a tick or two.
        while let Some(&(at, key, rec)) = self.ended.front() {
            if at > now_ns {
                break;
            }
            self.ended.pop_front();
            due.push((key, rec));
        }
        due
    }

    /// Whether user space deleted `key`'s record in the last `LATE_NS`.
    pub fn deleted(&self, key: &FlowKey) -> bool {
        self.forgotten.contains_key(key)
    }

    /// `key`'s record was deleted at `now_ns`.
    pub fn forgot(&mut self, key: FlowKey, now_ns: u64) {
        self.forgotten.insert(key, now_ns);
        self.forgotten_order.push_back((now_ns, key));
    }

    fn expire(&mut self, now_ns: u64) {
        while let Some(&(at, key)) = self.forgotten_order.front() {
            if at.saturating_add(LATE_NS) > now_ns {
                break;
            }
            self.forgotten_order.pop_front();
            if self.forgotten.get(&key) == Some(&at) {
                self.forgotten.remove(&key);
            }
        }
    }
}

/// A record made by segments without SYN and without payload only.
fn is_bare(rec: &FlowRecord) -> bool {
    rec.client_how == ClientHow::Guessed
        && rec.bytes == [0, 0]
        && (rec.flags_seen[0] | rec.flags_seen[1]) & flags::SYN == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(port: u16) -> FlowKey {
        FlowKey {
            port: [80, port],
            family: 4,
            ..FlowKey::default()
        }
    }

    fn rec(state: State, how: ClientHow, last_ns: u64) -> FlowRecord {
        FlowRecord {
            state,
            client_how: how,
            first_ns: 1,
            last_ns,
            packets: [1, 1],
            flags_seen: [flags::ACK, flags::ACK | flags::FIN],
            ..FlowRecord::EMPTY
        }
    }

    #[test]
    fn ended_connections_go_after_their_linger() {
        let mut r = Reaper::new(2_000);
        let closed = rec(State::Closed, ClientHow::Syn, 1_000);
        let open = rec(State::Established, ClientHow::Syn, 1_000);
        assert_eq!(r.saw(&key(1), &closed, 1_000), Seen::Connection);
        assert_eq!(r.saw(&key(2), &open, 1_000), Seen::Connection);
        assert!(r.due(2_999).is_empty(), "still lingering");
        assert_eq!(r.due(3_000), vec![(key(1), closed)]);
        assert!(r.due(10_000).is_empty(), "once, and never an open one");
    }

    #[test]
    fn bare_segments_on_a_tuple_just_deleted_are_late() {
        let mut r = Reaper::new(2_000);
        r.forgot(key(1), 5_000);
        let bare = rec(State::Closing, ClientHow::Guessed, 6_000);
        assert_eq!(r.saw(&key(1), &bare, 6_000), Seen::Late);
        assert_eq!(r.late_packets, 2);
        assert_eq!(r.due(6_000), vec![(key(1), bare)], "deleted at once");
        // With payload, or a SYN, or on another tuple: a connection.
        let mut data = bare;
        data.bytes = [0, 10];
        assert_eq!(r.saw(&key(1), &data, 6_000), Seen::Connection);
        let syn = rec(State::SynSent, ClientHow::Syn, 6_000);
        assert_eq!(r.saw(&key(1), &syn, 6_000), Seen::Connection);
        assert_eq!(r.saw(&key(2), &bare, 6_000), Seen::Connection);
        // After TIME-WAIT's 60 s it is a connection picked up mid-stream.
        assert_eq!(r.saw(&key(1), &bare, 5_000 + LATE_NS), Seen::Connection);
    }
}
