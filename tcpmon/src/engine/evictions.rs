//! Which connections the kernel's full flow map evicted: their counts are
//! partial, and every view that prints counts says so rather than passing
//! them off as a connection's whole.
//!
//! The kernel's LRU map drops a record silently. User space learns of it
//! in two ways: a key the kernel reported as changed is gone when read
//! (what changed since the last read is lost with it), or a record without
//! handshake (guessed) replaces a connection the map should still hold.
//! Either marks the connection user space holds on that 4-tuple, and a
//! guessed record that then appears on it is the rest of the same
//! connection, counted from the eviction on: marked too.

use std::collections::VecDeque;

use rustc_hash::{FxHashMap, FxHashSet};
use tcpmon_common::{ClientHow, FlowKey, FlowRecord};

/// How long after a key vanished a guessed record on it is taken for the
/// rest of the evicted connection: TIME-WAIT's 60 s, as the reaper's late
/// segments, beyond which a connection would have gone quiet anyway.
const AFTER_NS: u64 = 60_000_000_000;

#[derive(Debug, Default)]
pub struct Evictions {
    /// Connections (4-tuple and first packet) whose counts an eviction cut.
    marked: FxHashSet<(FlowKey, u64)>,
    /// 4-tuples whose record vanished, with when (kernel clock).
    vanished: FxHashMap<FlowKey, u64>,
    /// Expiry order of `vanished`.
    order: VecDeque<(u64, FlowKey)>,
}

impl Evictions {
    pub fn mark(&mut self, key: FlowKey, rec: &FlowRecord) {
        self.marked.insert((key, rec.first_ns));
    }

    pub fn is_marked(&self, key: &FlowKey, rec: &FlowRecord) -> bool {
        !self.marked.is_empty() && self.marked.contains(&(*key, rec.first_ns))
    }

    /// The connection left every view: forget its mark.
    pub fn unmark(&mut self, key: &FlowKey, rec: &FlowRecord) {
        if !self.marked.is_empty() {
            self.marked.remove(&(*key, rec.first_ns));
        }
    }

    /// The kernel's record of `key` vanished by `now_ns`.
    pub fn vanished(&mut self, key: FlowKey, now_ns: u64) {
        self.expire(now_ns);
        self.vanished.insert(key, now_ns);
        self.order.push_back((now_ns, key));
    }

    /// `rec`, new on `key`, continues a connection whose record vanished.
    pub fn continues(&self, key: &FlowKey, rec: &FlowRecord) -> bool {
        rec.client_how == ClientHow::Guessed
            && self
                .vanished
                .get(key)
                .is_some_and(|&at| rec.first_ns.abs_diff(at) < AFTER_NS)
    }

    fn expire(&mut self, now_ns: u64) {
        while let Some(&(at, key)) = self.order.front() {
            if at.saturating_add(AFTER_NS) > now_ns {
                break;
            }
            self.order.pop_front();
            if self.vanished.get(&key) == Some(&at) {
                self.vanished.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_guessed_record_soon_after_a_key_vanished_continues_it() {
        let key = FlowKey {
            family: 4,
            port: [80, 40000],
            ..FlowKey::default()
        };
        let mut e = Evictions::default();
        let mut rec = FlowRecord {
            client_how: ClientHow::Guessed,
            first_ns: 5_000,
            ..FlowRecord::EMPTY
        };
        assert!(!e.continues(&key, &rec), "nothing vanished");
        e.vanished(key, 6_000);
        assert!(e.continues(&key, &rec));
        rec.client_how = ClientHow::Syn;
        assert!(!e.continues(&key, &rec), "a handshake starts a connection");
        rec.client_how = ClientHow::Guessed;
        rec.first_ns = 6_000 + AFTER_NS;
        assert!(!e.continues(&key, &rec), "too long after");
        e.vanished(FlowKey::default(), 7_000 + AFTER_NS);
        rec.first_ns = 6_001;
        assert!(!e.continues(&key, &rec), "expired");
    }
}
