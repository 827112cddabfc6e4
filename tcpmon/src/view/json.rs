//! JSON lines: one object per connection, for scripts and log pipelines.
//!
//! Written by hand rather than through serde's derive: a replay can print
//! millions of lines, and escaping checks on keys and values that never need
//! escaping were most of its time. Numbers go through serde_json's own
//! formatter, so the text is what `serde_json` would print.

use std::io::Write;
use std::net::SocketAddr;

use serde_json::ser::{CompactFormatter, Formatter};
use tcpmon_common::ClientHow;

use crate::engine::{Connection, FlowTable};

/// Writes every connection in the table, oldest first.
pub fn write_connections(table: &FlowTable, out: &mut impl Write) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(512);
    for conn in table.in_order() {
        buf.clear();
        line(
            &mut buf,
            table.clock_offset_ns,
            conn,
            table.is_evicted(conn),
        )?;
        buf.push(b'\n');
        out.write_all(&buf)?;
    }
    out.flush()
}

/// One connection's object; `clock_offset_ns` turns its times into Unix
/// time (the table's). `evicted`: the kernel's full flow map cut its counts
/// (see `FlowTable::is_evicted`); a field of every line, not a line of its
/// own, so that each line stays one connection for whatever reads them,
/// and a script comparing counts can leave out those that are partial.
fn line(
    b: &mut Vec<u8>,
    clock_offset_ns: i64,
    c: &Connection,
    evicted: bool,
) -> std::io::Result<()> {
    fields(b, clock_offset_ns, c)?;
    evicted_field(b, evicted);
    b.push(b'}');
    Ok(())
}

fn evicted_field(b: &mut Vec<u8>, evicted: bool) {
    b.extend_from_slice(match evicted {
        true => b",\"evicted\":true",
        false => b",\"evicted\":false",
    });
}

/// The connection log's line: the same object with `end` (why the
/// connection ended) last. Its `evicted` is whether `end` says so: the log
/// writes a connection as it ends, and the guessed record that counts on
/// after an eviction ends as any other.
pub fn ended_line(
    b: &mut Vec<u8>,
    clock_offset_ns: i64,
    c: &Connection,
    end: &str,
) -> std::io::Result<()> {
    fields(b, clock_offset_ns, c)?;
    evicted_field(b, end == "evicted");
    b.extend_from_slice(b",\"end\":\"");
    b.extend_from_slice(end.as_bytes());
    b.extend_from_slice(b"\"}");
    Ok(())
}

/// The object without its closing brace. Field order is the output's
/// column order; keep it stable for scripts.
fn fields(b: &mut Vec<u8>, clock_offset_ns: i64, c: &Connection) -> std::io::Result<()> {
    let unix_ns = |ts_ns: u64| ts_ns as i128 + clock_offset_ns as i128;
    let (cl, sv) = (c.client_side(), c.client_side() ^ 1);
    let r = &c.rec;
    b.extend_from_slice(b"{\"client\":\"");
    addr(b, c.client())?;
    b.extend_from_slice(b"\",\"server\":\"");
    addr(b, c.server())?;
    b.extend_from_slice(b"\",\"state\":\"");
    b.extend_from_slice(r.state.name().as_bytes());
    // How the client side was decided: "syn", "synack" or "guessed".
    b.extend_from_slice(b"\",\"client_how\":\"");
    b.extend_from_slice(match r.client_how {
        ClientHow::Syn => b"syn",
        ClientHow::SynAck => b"synack",
        ClientHow::Guessed | ClientHow::Unknown => b"guessed",
    });
    b.push(b'"');
    for (key, v) in [
        ("packets_to_server", r.packets[cl]),
        ("packets_to_client", r.packets[sv]),
        ("bytes_to_server", r.bytes[cl]),
        ("bytes_to_client", r.bytes[sv]),
    ] {
        field(b, key);
        CompactFormatter.write_u64(b, v)?;
    }
    field(b, "first_seen");
    float(b, unix_seconds(unix_ns(r.first_ns)))?;
    field(b, "last_seen");
    float(b, unix_seconds(unix_ns(r.last_ns)))?;
    for (key, v) in [
        ("syn_retransmits", r.syn_count.saturating_sub(1)),
        ("synack_retransmits", r.synack_count.saturating_sub(1)),
        ("retransmits", r.retransmits[0] + r.retransmits[1]),
    ] {
        field(b, key);
        CompactFormatter.write_u32(b, v)?;
    }
    field(b, "handshake_rtt_us");
    match r.handshake_rtt_ns() {
        Some(ns) => float(b, ns as f64 / 1e3)?,
        None => b.extend_from_slice(b"null"),
    }
    // VLAN of the client's packets (else of the server's); null untagged.
    field(b, "vlan");
    opt_u16(b, nonzero(r.vlan[cl]).or(nonzero(r.vlan[sv])))?;
    // VLAN of the server's packets where it differs from `vlan`.
    field(b, "vlan_to_client");
    opt_u16(
        b,
        nonzero(r.vlan[sv]).filter(|v| nonzero(r.vlan[cl]).is_some_and(|c| c != *v)),
    )?;
    Ok(())
}

fn field(b: &mut Vec<u8>, key: &str) {
    b.extend_from_slice(b",\"");
    b.extend_from_slice(key.as_bytes());
    b.extend_from_slice(b"\":");
}

/// As serde_json prints an `f64`: null when not finite.
fn float(b: &mut Vec<u8>, v: f64) -> std::io::Result<()> {
    if v.is_finite() {
        CompactFormatter.write_f64(b, v)
    } else {
        b.extend_from_slice(b"null");
        Ok(())
    }
}

fn opt_u16(b: &mut Vec<u8>, v: Option<u16>) -> std::io::Result<()> {
    match v {
        Some(v) => CompactFormatter.write_u16(b, v),
        None => {
            b.extend_from_slice(b"null");
            Ok(())
        }
    }
}

/// `SocketAddr`'s `Display`, with IPv4 (the common case) spelled out
/// without the formatting machinery. Neither form needs JSON escaping.
fn addr(b: &mut Vec<u8>, a: SocketAddr) -> std::io::Result<()> {
    match a {
        SocketAddr::V4(v4) => {
            for (i, o) in v4.ip().octets().into_iter().enumerate() {
                if i > 0 {
                    b.push(b'.');
                }
                CompactFormatter.write_u8(b, o)?;
            }
            b.push(b':');
            CompactFormatter.write_u16(b, v4.port())
        }
        SocketAddr::V6(_) => write!(b, "{a}"),
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

#[cfg(test)]
mod tests {
    use super::*;
    use tcpmon_common::{FlowKey, FlowRecord, State};

    /// What serde's derive printed before the line was written by hand.
    #[derive(serde::Serialize)]
    struct Serde {
        client: String,
        server: String,
        state: &'static str,
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
        vlan: Option<u16>,
        vlan_to_client: Option<u16>,
        evicted: bool,
    }

    #[test]
    fn the_same_text_as_serde_prints() {
        let mut table = FlowTable::new(1_700_000_000_123_456_789);
        let mut rec = FlowRecord::EMPTY;
        rec.state = State::Established;
        rec.client_how = ClientHow::SynAck;
        rec.client = 1;
        rec.packets = [3, 40_000_000_000];
        rec.bytes = [u64::MAX, 7];
        rec.first_ns = 987_654_321;
        rec.last_ns = 5_000_000_001;
        rec.syn_count = 2;
        rec.vlan = [10, 20];
        rec.retransmits = [1, 2];
        rec.syn_last_ns = 1_000_000_000;
        rec.established_ns = 1_234_567_891;
        for (family, addr) in [(4u8, [192, 0, 2, 255]), (6, [0x20, 0x01, 0x0d, 0xb8])] {
            let mut key = FlowKey {
                family,
                port: [443, 65535],
                ..FlowKey::default()
            };
            key.addr[0][..4].copy_from_slice(&addr);
            key.addr[1][..4].copy_from_slice(&[10, 0, 0, 1]);
            let c = Connection { key, rec };
            let mut ours = Vec::new();
            let evicted = family == 6;
            line(&mut ours, table.clock_offset_ns, &c, evicted).unwrap();
            let (cl, sv) = (c.client_side(), c.client_side() ^ 1);
            let want = serde_json::to_string(&Serde {
                client: c.client().to_string(),
                server: c.server().to_string(),
                state: "ESTABLISHED",
                client_how: "synack",
                packets_to_server: rec.packets[cl],
                packets_to_client: rec.packets[sv],
                bytes_to_server: rec.bytes[cl],
                bytes_to_client: rec.bytes[sv],
                first_seen: unix_seconds(table.unix_ns(rec.first_ns)),
                last_seen: unix_seconds(table.unix_ns(rec.last_ns)),
                syn_retransmits: 1,
                synack_retransmits: 0,
                retransmits: 3,
                handshake_rtt_us: rec.handshake_rtt_ns().map(|ns| ns as f64 / 1e3),
                vlan: nonzero(rec.vlan[cl]).or(nonzero(rec.vlan[sv])),
                vlan_to_client: nonzero(rec.vlan[sv])
                    .filter(|v| nonzero(rec.vlan[cl]).is_some_and(|c| c != *v)),
                evicted,
            })
            .unwrap();
            assert_eq!(String::from_utf8(ours).unwrap(), want);
            // The second round: nulls, and a clock offset of zero.
            table.clock_offset_ns = 0;
            rec.vlan = [0, 0];
            rec.established_ns = 0;
        }
    }
}
