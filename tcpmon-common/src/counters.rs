//! Per-CPU counters of everything the kernel side skipped or lost, so that
//! nothing disappears silently. Indexes into the `COUNTERS` per-CPU array.

#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// TCP segments applied to a flow record.
    Tcp = 0,
    /// Frames whose network layer is neither IPv4 nor IPv6 (ARP, LLDP, ...).
    NotIp = 1,
    /// IP packets carrying something other than TCP.
    NotTcp = 2,
    /// Too short or inconsistent to parse (bad IHL, data offset, lengths).
    Malformed = 3,
    /// Non-first IP fragments: no TCP header to read.
    Fragment = 4,
    /// Ring-buffer reservations that failed: events lost.
    EventsLost = 5,
    /// Flow records the map refused to create.
    FlowInsertFailed = 6,
    /// Deeper VLAN stacks or IPv6 extension chains than the parser follows.
    TooDeep = 7,
    /// Packets the filter expression rejected before anything else looked
    /// at them.
    Filtered = 8,
    /// Packets the filter kept that never reached flow tracking: the tail
    /// call into the tracking program failed (the loader fills its program
    /// array before attaching, so this stays 0).
    Untracked = 9,
    /// Packets counted in a per-CPU cache slot (see `cache`) whose
    /// connection was gone from the flow map when the slot was folded back:
    /// a newer connection took its 4-tuple, or the map evicted it.
    Orphaned = 10,
    /// Keys of changed records the `CHANGES` ring buffer had no room for
    /// (see `change`): user space reads every record instead that tick.
    ChangesLost = 11,
    /// Flow records the kernel created in `FLOWS4` and in `FLOWS`. Beyond
    /// the map's capacity plus what user space deleted, its LRU evicted the
    /// rest (see the backend's `flows_evicted`).
    FlowsCreated4 = 12,
    FlowsCreated6 = 13,
}

impl Counter {
    pub const COUNT: u32 = 14;
    pub const ALL: [Counter; Counter::COUNT as usize] = [
        Counter::Tcp,
        Counter::NotIp,
        Counter::NotTcp,
        Counter::Malformed,
        Counter::Fragment,
        Counter::EventsLost,
        Counter::FlowInsertFailed,
        Counter::TooDeep,
        Counter::Filtered,
        Counter::Untracked,
        Counter::Orphaned,
        Counter::ChangesLost,
        Counter::FlowsCreated4,
        Counter::FlowsCreated6,
    ];

    /// Stable name for JSON and summaries.
    pub fn name(self) -> &'static str {
        match self {
            Counter::Tcp => "tcp_segments",
            Counter::NotIp => "not_ip",
            Counter::NotTcp => "not_tcp",
            Counter::Malformed => "malformed",
            Counter::Fragment => "fragments",
            Counter::EventsLost => "events_lost",
            Counter::FlowInsertFailed => "flow_insert_failed",
            Counter::TooDeep => "too_deep",
            Counter::Filtered => "filtered",
            Counter::Untracked => "untracked",
            Counter::Orphaned => "orphaned",
            Counter::ChangesLost => "changes_lost",
            Counter::FlowsCreated4 => "flows_created_ipv4",
            Counter::FlowsCreated6 => "flows_created_ipv6",
        }
    }
}
