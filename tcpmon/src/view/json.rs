//! JSON lines: one object per connection, for scripts and log pipelines.

use std::io::Write;

use serde::Serialize;
use tcpmon_common::ClientHow;

use crate::engine::{Connection, FlowTable};

/// Field order is the output's column order; keep it stable for scripts.
#[derive(Serialize)]
struct Line {
    client: Addr,
    server: Addr,
    state: &'static str,
    /// How the client side was decided: "syn", "synack" or "guessed".
    client_how: &'static str,
    packets_to_server: u64,
    packets_to_client: u64,
    bytes_to_server: u64,
    bytes_to_client: u64,
    first_seen: f64,
    last_seen: f64,
    syn_retransmits: u32,
    synack_retransmits: u32,
    retransmits: u32,
    handshake_rtt_us: Option<f64>,
    /// VLAN of the client's packets (else of the server's); null untagged.
    vlan: Option<u16>,
    /// VLAN of the server's packets where it differs from `vlan`.
    vlan_to_client: Option<u16>,
}

/// Writes every connection in the table, oldest first.
pub fn write_connections(table: &FlowTable, out: &mut impl Write) -> std::io::Result<()> {
    for conn in table.in_order() {
        let line = line(table, conn);
        serde_json::to_writer(&mut *out, &line)?;
        out.write_all(b"\n")?;
    }
    out.flush()
}

fn line(table: &FlowTable, c: &Connection) -> Line {
    let (cl, sv) = (c.client_side(), c.client_side() ^ 1);
    let r = &c.rec;
    Line {
        client: Addr(c.client()),
        server: Addr(c.server()),
        state: r.state.name(),
        client_how: match r.client_how {
            ClientHow::Syn => "syn",
            ClientHow::SynAck => "synack",
            ClientHow::Guessed | ClientHow::Unknown => "guessed",
        },
        packets_to_server: r.packets[cl],
        packets_to_client: r.packets[sv],
        bytes_to_server: r.bytes[cl],
        bytes_to_client: r.bytes[sv],
        first_seen: unix_seconds(table.unix_ns(r.first_ns)),
        last_seen: unix_seconds(table.unix_ns(r.last_ns)),
        syn_retransmits: r.syn_count.saturating_sub(1),
        synack_retransmits: r.synack_count.saturating_sub(1),
        retransmits: r.retransmits[0] + r.retransmits[1],
        handshake_rtt_us: r.handshake_rtt_ns().map(|ns| ns as f64 / 1e3),
        vlan: nonzero(r.vlan[cl]).or(nonzero(r.vlan[sv])),
        vlan_to_client: nonzero(r.vlan[sv])
            .filter(|v| nonzero(r.vlan[cl]).is_some_and(|c| c != *v)),
    }
}

/// An address written as a JSON string straight from its `Display`, with
/// no `String` per line.
struct Addr(std::net::SocketAddr);

impl Serialize for Addr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

fn nonzero(v: u16) -> Option<u16> {
    (v != 0).then_some(v)
}

/// Unix seconds with microsecond precision. Dividing whole microseconds
/// gives the f64 nearest to that decimal, which serde prints exactly.
fn unix_seconds(ns: i128) -> f64 {
    (ns / 1_000) as f64 / 1e6
}
