//! What the `top` table shows: which connections (tcptrack's purge rules),
//! their cells, and their order.

use tcpmon_common::{ClientHow, FlowKey, State};

use std::cmp::Ordering;

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

/// What a redraw reads its connections from.
pub struct Source<'a> {
    pub table: &'a FlowTable,
    pub rates: &'a Rates,
    pub purge: Purge,
    /// Hide connections that were already open when tcpmon started
    /// (tcptrack's `-d`).
    pub only_new: bool,
    /// Flows the kernel's full flow maps evicted so far (0 in a replay).
    pub flows_evicted: u64,
}

/// A redraw's time, and the previous redraw's ("A" marks a packet since).
#[derive(Clone, Copy, Debug, Default)]
pub struct At {
    pub now_ns: u64,
    pub since_ns: u64,
}

/// A connection on the table, with what the order and the footer read of
/// it copied in: with a million connections on the table, a page is
/// selected from these in one contiguous array, not by chasing a pointer
/// into the table per comparison.
#[derive(Clone, Copy, Debug)]
pub struct Shown<'a> {
    pub conn: &'a Connection,
    /// Payload bytes per second.
    pub speed: f64,
    first_ns: u64,
    last_ns: u64,
    bytes: u64,
    /// The longer of its addresses' texts.
    address_len: u16,
}

impl<'a> Shown<'a> {
    pub fn new(conn: &'a Connection, speed: f64) -> Shown<'a> {
        Shown {
            conn,
            speed,
            first_ns: conn.rec.first_ns,
            last_ns: conn.rec.last_ns,
            bytes: conn.payload_bytes(),
            address_len: address_len(conn.client()).max(address_len(conn.server())) as u16,
        }
    }
}

/// The connections on the table at `at`, with their speeds; none is
/// formatted yet, as only a page of them will be. One pass over the table.
pub fn shown<'a>(src: &Source<'a>, at: At) -> Vec<Shown<'a>> {
    let mut shown = Vec::with_capacity(src.table.len());
    shown.extend(
        src.table
            .iter()
            .filter(|c| src.purge.keeps(c, at.now_ns))
            .filter(|c| !src.only_new || c.rec.client_how == ClientHow::Syn)
            .map(|c| Shown::new(c, src.rates.speed(c))),
    );
    shown
}

/// One screenful, chosen from all shown connections.
#[derive(Debug)]
pub struct Page {
    /// Formatted, in order.
    pub rows: Vec<Row>,
    /// Index of the first row in the whole sorted table.
    pub first: usize,
    pub total: usize,
    /// All rows' speeds added up.
    pub total_speed: f64,
    /// The longest client or server address among all rows, plus 2.
    pub address_width: usize,
}

/// Picks rows `scroll..scroll + len` (the scroll kept inside the table) in
/// `sort`'s order, and formats only those: partial selection, not a sort of
/// every connection at every redraw.
pub fn page(shown: &mut [Shown], at: At, sort: Sort, scroll: usize, len: usize) -> Page {
    let total = shown.len();
    let first = scroll.min(total.saturating_sub(len.max(1)));
    let end = (first + len).min(total);
    let order = |a: &Shown, b: &Shown| sort.order(a, b, at.now_ns);
    let rows: Vec<Row> = if end <= TOP_K_MAX {
        first_in_order(shown, end, order)[first.min(end)..]
            .iter()
            .map(|s| row(s.conn, s.speed, at))
            .collect()
    } else {
        if end < total && end > 0 {
            shown.select_nth_unstable_by(end - 1, order);
        }
        let top = &mut shown[..end];
        if first > 0 && first < end {
            top.select_nth_unstable_by(first, order);
        }
        let rows = &mut top[first..];
        rows.sort_unstable_by(order);
        rows.iter().map(|s| row(s.conn, s.speed, at)).collect()
    };
    Page {
        rows,
        first,
        total,
        // Speeds are whole bytes a second, so the sum is exact in any order.
        total_speed: shown.iter().map(|s| s.speed).sum(),
        address_width: shown
            .iter()
            .map(|s| usize::from(s.address_len) + 2)
            .max()
            .unwrap_or(0),
    }
}

/// Up to this many rows from the top (the page's end), `page` keeps the
/// best in one pass instead of partitioning the whole array.
const TOP_K_MAX: usize = 512;

/// The first `k` of `shown` in `order`, in order: one pass that compares
/// most entries only with the worst kept so far (a page is tens of rows
/// out of up to millions, and tables come roughly in order of appearance).
fn first_in_order<'a>(
    shown: &[Shown<'a>],
    k: usize,
    order: impl Fn(&Shown, &Shown) -> Ordering,
) -> Vec<Shown<'a>> {
    let mut best: Vec<Shown> = Vec::with_capacity(k + 1);
    if k == 0 {
        return best;
    }
    for s in shown {
        if best.len() == k && order(s, &best[k - 1]) != Ordering::Less {
            continue;
        }
        let at = best.partition_point(|b| order(b, s) == Ordering::Less);
        best.insert(at, *s);
        best.truncate(k);
    }
    best
}

fn row(c: &Connection, speed: f64, at: At) -> Row {
    Row {
        id: (c.key, c.rec.first_ns),
        client: c.client().to_string(),
        server: c.server().to_string(),
        state: c.rec.state,
        guessed: c.rec.client_how == ClientHow::Guessed,
        idle_ns: at.now_ns.saturating_sub(c.rec.last_ns),
        active: c.rec.last_ns > at.since_ns,
        speed,
        bytes: c.payload_bytes(),
        packets: c.rec.packets[0] + c.rec.packets[1],
        rtt_ns: c.rec.handshake_rtt_ns(),
        retransmits: c.rec.retransmits[0] + c.rec.retransmits[1],
    }
}

/// The length of an address's text, without building it.
fn address_len(a: std::net::SocketAddr) -> usize {
    let digits = |n: u32| match n {
        0..=9 => 1,
        10..=99 => 2,
        100..=999 => 3,
        1000..=9999 => 4,
        _ => 5,
    };
    match a {
        std::net::SocketAddr::V4(v4) => {
            let ip: usize = v4.ip().octets().iter().map(|o| digits(*o as u32)).sum();
            ip + 3 + 1 + digits(v4.port() as u32)
        }
        std::net::SocketAddr::V6(_) => {
            struct Count(usize);
            impl std::fmt::Write for Count {
                fn write_str(&mut self, s: &str) -> std::fmt::Result {
                    self.0 += s.len();
                    Ok(())
                }
            }
            let mut n = Count(0);
            let _ = std::fmt::Write::write_fmt(&mut n, format_args!("{a}"));
            n.0
        }
    }
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

    /// The table's order: `apply`'s, with ties in order of appearance
    /// (first seen, then key) as `apply` leaves them, so that any selection
    /// method gives the same rows.
    fn order(self, a: &Shown, b: &Shown, now_ns: u64) -> Ordering {
        let idle = |s: &Shown| now_ns.saturating_sub(s.last_ns);
        match self {
            Sort::Unsorted => Ordering::Equal,
            Sort::Rate => b.speed.total_cmp(&a.speed).then(idle(a).cmp(&idle(b))),
            Sort::Bytes => b.bytes.cmp(&a.bytes),
        }
        .then(a.first_ns.cmp(&b.first_ns))
        // Only on a tie in time: the key is in the table.
        .then_with(|| a.conn.key.cmp(&b.conn.key))
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

#[cfg(test)]
mod tests {
    use super::*;
    use tcpmon_common::FlowRecord;

    /// Pages picked by partial selection are the slices of the whole table
    /// sorted as before (every row built, stable sort), ties included.
    #[test]
    fn pages_are_slices_of_the_fully_sorted_table() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut rnd = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let conns: Vec<(Connection, f64)> = (0..300u32)
            .map(|i| {
                let mut key = FlowKey {
                    family: if i % 7 == 0 { 6 } else { 4 },
                    port: [rnd(3) as u16, 80],
                    ..FlowKey::default()
                };
                key.addr[0][..4].copy_from_slice(&i.wrapping_mul(2_654_435_761).to_be_bytes());
                let mut rec = FlowRecord::EMPTY;
                rec.first_ns = rnd(40);
                rec.last_ns = rec.first_ns + rnd(5);
                rec.bytes = [rnd(4) * 100, 0];
                (Connection { key, rec }, rnd(3) as f64 * 1024.0)
            })
            .collect();
        let at = At {
            now_ns: 50,
            since_ns: 41,
        };
        for sort in [Sort::Unsorted, Sort::Rate, Sort::Bytes] {
            let mut all: Vec<&(Connection, f64)> = conns.iter().collect();
            all.sort_by_key(|(c, _)| (c.rec.first_ns, c.key));
            let mut want: Vec<Row> = all.iter().map(|(c, s)| row(c, *s, at)).collect();
            sort.apply(&mut want);
            for (scroll, len) in [(0, 10), (5, 10), (123, 17), (290, 20), (400, 10), (0, 1000)] {
                let mut shown: Vec<Shown> = conns.iter().map(|(c, s)| Shown::new(c, *s)).collect();
                let p = page(&mut shown, at, sort, scroll, len);
                assert_eq!(p.total, 300);
                assert_eq!(
                    p.rows,
                    want[p.first..(p.first + len).min(300)],
                    "{sort:?} {scroll}"
                );
                assert_eq!(p.first, scroll.min(300 - len.min(300)));
                assert_eq!(
                    p.address_width,
                    want.iter()
                        .map(|r| r.client.len().max(r.server.len()) + 2)
                        .max()
                        .unwrap()
                );
            }
        }
    }
}
