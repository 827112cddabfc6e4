//! Every shared capture replays with exit 0, and per-connection packet and
//! payload counts equal tshark's per-stream counts (`tcp.stream`, `tcp.len`
//! summed per sender).

mod common;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::Command;

/// (lower endpoint, higher endpoint) -> sorted list of
/// (packets from lower, packets from higher, bytes from lower, bytes from higher).
type Tally = BTreeMap<(SocketAddr, SocketAddr), Vec<[u64; 4]>>;

/// Captures the README exempts from the comparison, and why.
fn exemption(file: &str) -> Option<&'static str> {
    match file {
        "zeek__nflog-http.pcap" => Some("NFLOG link type: tcpmon says it is unsupported"),
        _ => None,
    }
}

/// A display filter narrowing what tshark counts, where tcpmon by design
/// sees less: TCP inside MPLS is not parsed.
fn tshark_filter(file: &str) -> &'static str {
    match file {
        "zeek__mixed-vlan-mpls.pcap" => "tcp && !mpls",
        _ => "tcp",
    }
}

fn tshark_tally(path: &Path, filter: &str) -> Tally {
    let out = Command::new("tshark")
        .args(["-n", "-r"])
        .arg(path)
        .args(["-Y", filter, "-T", "fields", "-E", "separator=/t"])
        .args([
            "-e",
            "tcp.stream",
            "-e",
            "ip.src",
            "-e",
            "ipv6.src",
            "-e",
            "tcp.srcport",
        ])
        .args([
            "-e",
            "ip.dst",
            "-e",
            "ipv6.dst",
            "-e",
            "tcp.dstport",
            "-e",
            "tcp.len",
        ])
        .output()
        .expect("tshark runs (install it: apt-get install tshark)");
    assert!(out.status.success(), "tshark failed on {}", path.display());
    let mut streams: BTreeMap<u64, (SocketAddr, SocketAddr, [u64; 4])> = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        // Where tshark decodes packets inside the payload (OpenFlow, ICMP
        // quotes) a field lists several values; the first is the layer that
        // carries this TCP segment.
        let f: Vec<&str> = line
            .split('\t')
            .map(|v| v.split(',').next().unwrap())
            .collect();
        let addr = |v4: &str, v6: &str| -> IpAddr {
            let s = if v6.is_empty() { v4 } else { v6 };
            s.parse().unwrap()
        };
        let src = SocketAddr::new(addr(f[1], f[2]), f[3].parse().unwrap());
        let dst = SocketAddr::new(addr(f[4], f[5]), f[6].parse().unwrap());
        let len: u64 = f[7].parse().unwrap_or(0);
        let (lo, hi) = (src.min(dst), src.max(dst));
        let e = streams
            .entry(f[0].parse().unwrap())
            .or_insert((lo, hi, [0; 4]));
        let from_lo = src == lo && src != dst;
        let i = if from_lo { 0 } else { 1 };
        e.2[i] += 1;
        e.2[2 + i] += len;
    }
    let mut tally = Tally::new();
    for (lo, hi, c) in streams.into_values() {
        tally.entry((lo, hi)).or_default().push(c);
    }
    tally.values_mut().for_each(|v| v.sort());
    tally
}

fn tcpmon_tally(path: &Path) -> Tally {
    let out = Command::new(env!("CARGO_BIN_EXE_tcpmon"))
        .args(["top", "--json", "-T"])
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tcpmon failed on {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let mut tally = Tally::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let client: SocketAddr = v["client"].as_str().unwrap().parse().unwrap();
        let server: SocketAddr = v["server"].as_str().unwrap().parse().unwrap();
        let n = |k: &str| v[k].as_u64().unwrap();
        let (to_s, to_c) = (n("packets_to_server"), n("packets_to_client"));
        let (b_to_s, b_to_c) = (n("bytes_to_server"), n("bytes_to_client"));
        let (lo, hi) = (client.min(server), client.max(server));
        let c = if client == lo {
            [to_s, to_c, b_to_s, b_to_c]
        } else {
            [to_c, to_s, b_to_c, b_to_s]
        };
        tally.entry((lo, hi)).or_default().push(c);
    }
    tally.values_mut().for_each(|v| v.sort());
    tally
}

#[test]
fn per_connection_counts_match_tshark() {
    let (Some(dir), Some(rows)) = (common::shared_pcaps(), common::manifest()) else {
        return;
    };
    let mut failures = Vec::new();
    for row in rows {
        let path = row.path(&dir);
        if let Some(why) = exemption(&row.file) {
            eprintln!("{}: not compared ({why})", row.file);
            continue;
        }
        let ours = tcpmon_tally(&path);
        let theirs = tshark_tally(&path, tshark_filter(&row.file));
        if ours != theirs {
            let only = |a: &Tally, b: &Tally| -> Vec<String> {
                a.iter()
                    .filter(|(k, v)| b.get(*k) != Some(*v))
                    .map(|(k, v)| format!("{} <-> {}: {v:?}", k.0, k.1))
                    .take(5)
                    .collect()
            };
            failures.push(format!(
                "{}:\n  tcpmon only: {:?}\n  tshark only: {:?}",
                row.file,
                only(&ours, &theirs),
                only(&theirs, &ours)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_capture_replays_and_unsupported_link_types_are_named() {
    let (Some(dir), Some(rows)) = (common::shared_pcaps(), common::manifest()) else {
        return;
    };
    for row in rows {
        let out = Command::new(env!("CARGO_BIN_EXE_tcpmon"))
            .args(["top", "--json", "-T"])
            .arg(row.path(&dir))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        if row.link_name() == "NFLOG" {
            assert!(stderr.contains("NFLOG"), "{}: {stderr}", row.file);
            assert!(
                !out.status.success(),
                "{}: nothing parsed must not exit 0",
                row.file
            );
        } else {
            assert!(out.status.success(), "{}: {stderr}", row.file);
            assert!(stderr.is_empty(), "{}: {stderr}", row.file);
            let lines = String::from_utf8_lossy(&out.stdout).lines().count() as u64;
            assert!(lines > 0, "{}: no connection", row.file);
        }
    }
}

/// Issue 17: a second SYN+ACK with another ISN, answering the client's SYN
/// of a connection under way, is a packet of that connection, as tshark
/// counts it: one connection, closed, with its handshake and without
/// retransmissions.
#[test]
fn a_second_synack_with_another_isn_stays_in_its_connection() {
    let (frames, want) = common::captures::second_synack();
    let path = common::captures::write_pcap("second-synack.pcap", &frames);
    let theirs = tshark_tally(&path, "tcp");
    let ours = tcpmon_tally(&path);
    assert_eq!(ours, theirs, "tcpmon against tshark");
    let lo_is_server = common::captures::SERVER < common::captures::CLIENT;
    assert!(lo_is_server, "the tally's lower endpoint is the server");
    let counts = [
        want.packets_to_client,
        want.packets_to_server,
        want.bytes_to_client,
        want.bytes_to_server,
    ];
    assert_eq!(
        ours.into_values().collect::<Vec<_>>(),
        [vec![counts]],
        "one connection with every packet"
    );

    let out = Command::new(env!("CARGO_BIN_EXE_tcpmon"))
        .args(["top", "--json", "-T"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).unwrap();
    assert_eq!(v["state"], "CLOSED", "{v}");
    assert_eq!(v["client_how"], "syn", "{v}");
    assert_eq!(v["retransmits"], 0, "{v}");
    assert_eq!(v["syn_retransmits"], 0, "{v}");
    assert_eq!(v["synack_retransmits"], 0, "{v}");
    assert_eq!(v["handshake_rtt_us"], 2_000.0, "SYN to ACK: {v}");
}
