//! What the `top` table shows: which connections (tcptrack's purge rules),
//! their cells, and their order.

use tcpmon_common::{ClientHow, FlowKey, State};

use crate::engine::{Connection, FlowTable, Rates};

const SECOND: u64 = 1_000_000_000;

/// How long connections stay on screen once idle.
#[derive(Clone, Copy, Debug)]
pub struct Purge {
    /// CLOSED and RESET connections (tcptrack's `-r`, default 2 s).
    pub closed_ns: u64,
    /// ESTABLISHED connections; tcptrack keeps them forever (`None`).
    pub established_ns: Option<u64>,
}

impl Default for Purge {
    fn default() -> Self {
        Purge {
            closed_ns: 2 * SECOND,
            established_ns: None,
        }
    }
}

impl Purge {
    /// tcptrack's rules: handshakes that stall go after 30 s, half-closed
    /// connections after 60 s.
    pub fn keeps(&self, c: &Connection, now_ns: u64) -> bool {
        let idle = now_ns.saturating_sub(c.rec.last_ns);
        match c.rec.state {
            State::Closed | State::Reset => idle <= self.closed_ns,
            State::SynSent | State::SynAckAck | State::None => idle <= 30 * SECOND,
            State::Closing => idle <= 60 * SECOND,
            State::Established => self.established_ns.is_none_or(|max| idle <= max),
        }
    }
}

/// One line of the table.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub id: (FlowKey, u64),
    pub client: String,
    pub server: String,
    pub state: State,
    /// The client was guessed (no handshake seen).
    pub guessed: bool,
    pub idle_ns: u64,
    /// A packet arrived since the previous redraw.
    pub active: bool,
    /// Payload bytes per second.
    pub speed: f64,
    /// Payload bytes both ways, all time.
    pub bytes: u64,
    pub packets: u64,
    pub rtt_ns: Option<u64>,
    pub retransmits: u32,
}

/// Columns beyond tcptrack's, shown on request (`--columns`, key `c`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Extras {
    pub rtt: bool,
    pub retransmits: bool,
    pub bytes: bool,
    pub packets: bool,
}

impl Extras {
    pub const ALL: Extras = Extras {
        rtt: true,
        retransmits: true,
        bytes: true,
        packets: true,
    };

    /// Parses a comma-separated list: rtt, retrans, bytes, packets, all.
    pub fn parse(list: &str) -> Result<Extras, String> {
        let mut e = Extras::default();
        for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            match name {
                "rtt" => e.rtt = true,
                "retrans" => e.retransmits = true,
                "bytes" => e.bytes = true,
                "packets" => e.packets = true,
                "all" => e = Extras::ALL,
                other => {
                    return Err(format!(
                        "unknown column {other:?}: the extra columns are rtt, retrans, bytes, packets, all"
                    ));
                }
            }
        }
        Ok(e)
    }

    pub fn any(self) -> bool {
        self != Extras::default()
    }
}

/// The rows to show at `now_ns`. `only_new`: hide connections that were
/// already open when tcpmon started (tcptrack's `-d`).
pub fn rows(
    table: &FlowTable,
    rates: &Rates,
    now_ns: u64,
    last_redraw_ns: u64,
    purge: &Purge,
    only_new: bool,
) -> Vec<Row> {
    table
        .connections()
        .iter()
        .filter(|c| purge.keeps(c, now_ns))
        .filter(|c| !only_new || c.rec.client_how == ClientHow::Syn)
        .map(|c| Row {
            id: (c.key, c.rec.first_ns),
            client: c.client().to_string(),
            server: c.server().to_string(),
            state: c.rec.state,
            guessed: c.rec.client_how == ClientHow::Guessed,
            idle_ns: now_ns.saturating_sub(c.rec.last_ns),
            active: c.rec.last_ns > last_redraw_ns,
            speed: rates.speed(c),
            bytes: c.rec.bytes[0] + c.rec.bytes[1],
            packets: c.rec.packets[0] + c.rec.packets[1],
            rtt_ns: c.rec.handshake_rtt_ns(),
            retransmits: c.rec.retransmits[0] + c.rec.retransmits[1],
        })
        .collect()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Sort {
    /// In the order connections appeared.
    #[default]
    Unsorted,
    /// Fastest first; equal speeds, the least idle first.
    Rate,
    /// Most bytes first.
    Bytes,
}

impl Sort {
    pub fn next(self) -> Sort {
        match self {
            Sort::Unsorted => Sort::Rate,
            Sort::Rate => Sort::Bytes,
            Sort::Bytes => Sort::Unsorted,
        }
    }

    /// tcptrack's footer label.
    pub fn label(self) -> &'static str {
        match self {
            Sort::Unsorted => "Unsorted",
            Sort::Rate => "Sorted by rate",
            Sort::Bytes => "Sorted by bytes",
        }
    }

    /// Stable, so equal rows keep their order of appearance.
    pub fn apply(self, rows: &mut [Row]) {
        match self {
            Sort::Unsorted => {}
            Sort::Rate => {
                rows.sort_by(|a, b| b.speed.total_cmp(&a.speed).then(a.idle_ns.cmp(&b.idle_ns)))
            }
            Sort::Bytes => rows.sort_by_key(|r| std::cmp::Reverse(r.bytes)),
        }
    }
}
