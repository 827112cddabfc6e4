//! `tcpmon peek -r` on the shared captures: every session line equals what
//! tshark's dissection gives when tcpeek's rules are applied to it
//! (success on the client's ACK after a SYN+ACK, reject on an RST, timeout
//! after `-t` or at the end of the capture, retransmitted SYNs and SYN+ACKs
//! by sequence number), and the counts agree with the manifest's refused
//! and unanswered connections. Filters are checked end to end on a scan.

mod common;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::Command;

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Line {
    client: SocketAddr,
    server: SocketAddr,
    outcome: String,
    dup_syn: u32,
    dup_synack: u32,
}

fn tcpmon() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tcpmon"))
}

/// Runs `tcpmon peek -r FILE ARGS...`; returns the session lines (sorted)
/// and the whole stderr.
fn peek(path: &Path, args: &[&str]) -> (Vec<Line>, String) {
    let out = tcpmon()
        .args(["peek", "-r"])
        .arg(path)
        .args(args)
        .env("TZ", "UTC")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{}: {err}", path.display());
    let mut lines: Vec<Line> = err
        .lines()
        .filter(|l| l.contains(" | ") && !l.starts_with(" TIME(s)"))
        .map(|l| {
            let f: Vec<&str> = l.split('|').collect();
            assert_eq!(f.len(), 5, "{l:?}");
            let ends: Vec<&str> = f[2].split_whitespace().collect();
            let dups: Vec<u32> = f[4]
                .split_whitespace()
                .map(|n| n.parse().unwrap())
                .collect();
            Line {
                client: ends[0].parse().unwrap_or_else(|_| panic!("{l:?}")),
                server: ends[1].parse().unwrap(),
                outcome: f[3].trim().to_string(),
                dup_syn: dups[0],
                dup_synack: dups[1],
            }
        })
        .collect();
    lines.sort();
    (lines, err)
}

struct Pkt {
    stream: u64,
    t: f64,
    src: SocketAddr,
    dst: SocketAddr,
    flags: u8,
    seq: u64,
}

fn tshark_packets(path: &Path, filter: &str) -> Vec<Pkt> {
    let out = Command::new("tshark")
        .args(["-n", "-r"])
        .arg(path)
        .args(["-Y", filter, "-T", "fields", "-E", "separator=/t"])
        .args(["-e", "tcp.stream", "-e", "frame.time_epoch"])
        .args(["-e", "ip.src", "-e", "ipv6.src", "-e", "tcp.srcport"])
        .args(["-e", "ip.dst", "-e", "ipv6.dst", "-e", "tcp.dstport"])
        .args(["-e", "tcp.flags", "-e", "tcp.seq_raw"])
        .output()
        .expect("tshark runs (install it: apt-get install tshark)");
    assert!(out.status.success(), "tshark failed on {}", path.display());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| {
            let f: Vec<&str> = line
                .split('\t')
                .map(|v| v.split(',').next().unwrap())
                .collect();
            let ip = |v4: &str, v6: &str| -> IpAddr {
                if v6.is_empty() { v4 } else { v6 }.parse().unwrap()
            };
            Pkt {
                stream: f[0].parse().unwrap(),
                t: f[1].parse().unwrap(),
                src: SocketAddr::new(ip(f[2], f[3]), f[4].parse().unwrap()),
                dst: SocketAddr::new(ip(f[5], f[6]), f[7].parse().unwrap()),
                flags: u16::from_str_radix(f[8].trim_start_matches("0x"), 16).unwrap() as u8,
                seq: f[9].parse().unwrap(),
            }
        })
        .collect()
}

/// tcpeek's rules applied to tshark's streams: the sessions one expects.
fn expected(pkts: &[Pkt], timeout: f64) -> Vec<Line> {
    const FIN: u8 = 1;
    const SYN: u8 = 2;
    const RST: u8 = 4;
    const ACK: u8 = 16;
    struct S {
        client: SocketAddr,
        server: SocketAddr,
        start: f64,
        syn_seq: u64,
        synack_seq: Option<u64>,
        dup_syn: u32,
        dup_synack: u32,
        outcome: Option<&'static str>,
    }
    let mut streams: BTreeMap<u64, S> = BTreeMap::new();
    for p in pkts {
        let syn = p.flags & SYN != 0;
        let ack = p.flags & ACK != 0;
        let s = match streams.get_mut(&p.stream) {
            Some(s) => s,
            None if syn && !ack => {
                streams.insert(
                    p.stream,
                    S {
                        client: p.src,
                        server: p.dst,
                        start: p.t,
                        syn_seq: p.seq,
                        synack_seq: None,
                        dup_syn: 0,
                        dup_synack: 0,
                        outcome: None,
                    },
                );
                continue;
            }
            None => continue,
        };
        if s.outcome.is_some() {
            continue;
        }
        if p.t - s.start >= timeout {
            s.outcome = Some("failure (timeout)");
            continue;
        }
        let from_client = p.src == s.client;
        if p.flags & RST != 0 {
            s.outcome = Some("failure (reject)");
        } else if syn && !ack && from_client {
            if p.seq == s.syn_seq {
                s.dup_syn += 1;
            }
        } else if syn && ack && !from_client {
            match s.synack_seq {
                None => s.synack_seq = Some(p.seq),
                Some(q) if q == p.seq => s.dup_synack += 1,
                Some(_) => {}
            }
        } else if ack && !syn && p.flags & FIN == 0 && from_client && s.synack_seq.is_some() {
            s.outcome = Some("success");
        }
    }
    let mut lines: Vec<Line> = streams
        .into_values()
        .map(|s| Line {
            client: s.client,
            server: s.server,
            outcome: s.outcome.unwrap_or("failure (timeout)").to_string(),
            dup_syn: s.dup_syn,
            dup_synack: s.dup_synack,
        })
        .collect();
    lines.sort();
    lines
}

/// Captures tcpmon cannot read whole, and what tshark should then look at.
fn tshark_filter(file: &str) -> Option<&'static str> {
    match file {
        "zeek__nflog-http.pcap" => None,
        "zeek__mixed-vlan-mpls.pcap" => Some("tcp && !mpls && !icmp && !icmpv6"),
        _ => Some("tcp && !icmp && !icmpv6"),
    }
}

#[test]
fn sessions_match_tcpeeks_rules_on_tsharks_dissection() {
    let Some(rows) = common::manifest() else {
        return;
    };
    let dir = common::shared_pcaps().unwrap();
    let mut checked = 0;
    for row in &rows {
        let Some(filter) = tshark_filter(&row.file) else {
            continue;
        };
        let path = row.path(&dir);
        let pkts = tshark_packets(&path, filter);
        for timeout in ["60", "2"] {
            let want = expected(&pkts, timeout.parse().unwrap());
            let (got, _) = peek(&path, &["-t", timeout]);
            let extra: Vec<&Line> = got.iter().filter(|l| !want.contains(l)).collect();
            let missing: Vec<&Line> = want.iter().filter(|l| !got.contains(l)).collect();
            assert!(
                got == want,
                "{} with -t {timeout}: tcpmon has {} sessions, tshark {}; only in tcpmon's: {extra:?}; only in tshark's: {missing:?}",
                row.file,
                got.len(),
                want.len()
            );
        }
        // The manifest's own counts, where they mean what tcpeek means.
        let (got, err) = peek(&path, &[]);
        let count = |o: &str| got.iter().filter(|l| l.outcome == o).count() as u64;
        let rejected = count("failure (reject)");
        let timed_out = count("failure (timeout)");
        if row.file != "zeek__mixed-vlan-mpls.pcap" {
            assert_eq!(rejected, row.field_u64("refused_syn_rst"), "{}", row.file);
            assert_eq!(
                got.len() as u64,
                row.field_u64("handshake_ok")
                    + row.field_u64("syn_only_unanswered")
                    + row.field_u64("refused_syn_rst"),
                "{}: every session once",
                row.file
            );
            assert!(
                timed_out >= row.field_u64("syn_only_unanswered"),
                "{}",
                row.file
            );
            let retried = got
                .iter()
                .filter(|l| l.outcome == "failure (timeout)" && l.dup_syn > 0)
                .count() as u64;
            assert!(
                retried >= row.field_u64("syn_retried_no_synack"),
                "{}",
                row.file
            );
        }
        assert!(
            err.contains("========== TCPEEK SUMMARY =========="),
            "{err}"
        );
        checked += 1;
    }
    assert!(checked >= 20, "only {checked} captures checked");
}

/// Lines of one filter's block in the summary, from " name" to the next rule.
fn block(err: &str, name: &str) -> Vec<String> {
    let lines: Vec<&str> = err.lines().collect();
    let start = lines
        .iter()
        .position(|l| *l == format!(" {name}"))
        .unwrap_or_else(|| panic!("no filter {name} in {err}"));
    lines[start..]
        .iter()
        .take_while(|l| !l.starts_with("---") && !l.starts_with("==="))
        .map(|l| l.to_string())
        .collect()
}

#[test]
fn summary_counts_refused_and_timed_out_scans() {
    let Some(dir) = common::shared_pcaps() else {
        return;
    };
    let (_, err) = peek(&dir.join("zeek__nmap-vsn.pcap"), &["-q"]);
    assert!(!err.contains(" TIME(s) |"), "-q prints no session lines");
    assert_eq!(
        block(&err, "RX"),
        [
            " RX",
            "   Success: 3 session",
            "     SYN Segment Duplicate :      0",
            "     S/A Segment Duplicate :      0",
            "   Failure: 14 session",
            "     Connection Timed Out  :      8",
            "     Connection Rejected   :      6",
            "     SYN Segment Duplicate :      0",
            "     S/A Segment Duplicate :      0",
        ]
    );
    assert!(err.contains("     from : 2011-09-27 18:07:20\n       to : 2011-09-27 18:07:22\n     time :         2.415 (sec)\n"), "{err}");
    assert!(
        err.contains(" capture stats\n   tcp segments     : 32\n   not tcp          : 515\n"),
        "{err}"
    );
    // A browser's unanswered connections, each retrying its SYN.
    let (_, err) = peek(&dir.join("chrissanders__http_espn_fail.pcapng"), &["-q"]);
    let rx = block(&err, "RX");
    assert_eq!(rx[1], "   Success: 7 session");
    assert_eq!(rx[4], "   Failure: 9 session");
    assert_eq!(rx[5], "     Connection Timed Out  :      9");
    assert_eq!(rx[7], "     SYN Segment Duplicate :      9");
    // --local makes them outgoing.
    let (_, err) = peek(
        &dir.join("chrissanders__http_espn_fail.pcapng"),
        &["-q", "--local", "172.16.16.154"],
    );
    assert_eq!(block(&err, "RX")[1], "   Success: 0 session");
    assert_eq!(block(&err, "TX")[1], "   Success: 7 session");
    assert_eq!(block(&err, "TX")[4], "   Failure: 9 session");
}

#[test]
fn filters_split_a_scan_by_port_and_exclude() {
    let Some(dir) = common::shared_pcaps() else {
        return;
    };
    let path = dir.join("zeek__nmap-vsn.pcap");
    let (all, _) = peek(&path, &[]);
    let (_, err) = peek(
        &path,
        &[
            "-q",
            "http:RX@*:80",
            "web:RX@%:80:443",
            // Overlapping rules: each session once.
            "scanner:RX@192.168.1.0/24:80,192.168.1.71:80:443,*:*",
            "other:RX@10.0.0.0/8:*",
            "v6:RX@[::]/0:*",
            // Excludes https from every filter, written after them or not.
            ":RX@*:443",
        ],
    );
    let counts = |port: Option<u16>| {
        let n = |o: &str| {
            all.iter()
                .filter(|l| l.server.port() != 443)
                .filter(|l| port.is_none_or(|p| l.server.port() == p))
                .filter(|l| l.outcome == o)
                .count()
        };
        (n("success"), n("failure (timeout)"), n("failure (reject)"))
    };
    let (ok, timeout, reject) = counts(Some(80));
    assert!(
        ok > 0 && timeout > 0 && reject > 0,
        "the scan has every outcome on port 80"
    );
    for name in ["http", "web", "scanner"] {
        let b = block(&err, name);
        assert_eq!(b[1], format!("   Success: {ok} session"), "{name}");
        assert_eq!(
            b[4],
            format!("   Failure: {} session", timeout + reject),
            "{name}"
        );
        assert_eq!(
            b[5],
            format!("     Connection Timed Out  : {timeout:6}"),
            "{name}"
        );
        assert_eq!(
            b[6],
            format!("     Connection Rejected   : {reject:6}"),
            "{name}"
        );
    }
    assert_eq!(
        counts(None),
        counts(Some(80)),
        "the scan hit ports 80 and 443 only"
    );
    for name in ["other", "v6"] {
        assert_eq!(block(&err, name)[1], "   Success: 0 session");
        assert_eq!(block(&err, name)[4], "   Failure: 0 session");
    }
    // No default filters when named ones are given.
    assert!(!err.lines().any(|l| l == " RX"));
}

#[test]
fn malformed_filters_are_clear_errors() {
    let Some(dir) = common::shared_pcaps() else {
        return;
    };
    let err = common::fails_with(
        tcpmon()
            .args(["peek", "-r"])
            .arg(dir.join("zeek__nmap-vsn.pcap"))
            .arg("web:RX@10.0.0.300:80"),
        "bad filter \"web:RX@10.0.0.300:80\": \"10.0.0.300\" is not an IP address",
    );
    assert!(
        err.contains("\n  web:RX@10.0.0.300:80\n         ^^^^^^^^^^\n"),
        "{err}"
    );
}

#[test]
fn program_name_tcpeek_runs_peek() {
    let Some(dir) = common::shared_pcaps() else {
        return;
    };
    let link = std::env::temp_dir().join(format!("tcpeek-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&link);
    std::fs::create_dir_all(&link).unwrap();
    let tcpeek = link.join("tcpeek");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_tcpmon"), &tcpeek).unwrap();
    let out = Command::new(&tcpeek)
        .arg("-r")
        .arg(dir.join("chrissanders__tcp_refuseconnection.pcapng"))
        .env("TZ", "UTC")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains(
            "   0.001 | 09-07-02 19:05:49.394 | 192.168.100.138:3372    192.168.100.1:80    | failure (reject)  |       0        0 \n"
        ),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&link);
}

/// Writes a capture of (seconds, frame) pairs.
fn capture(name: &str, frames: &[(f64, Vec<u8>)]) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("tcpmon-{name}-{}.pcap", std::process::id()));
    let file = std::fs::File::create(&path).unwrap();
    let mut w = tcpmon::backend::pcap::write::PcapWriter::new(file, 1).unwrap();
    for (t, f) in frames {
        w.write(1_700_000_000_000_000_000 + (t * 1e9) as u64, f)
            .unwrap();
    }
    w.finish().unwrap();
    path
}

#[test]
fn icmp_unreachables_end_handshakes_with_icmp_only() {
    use tcpmon::wire::build::TcpBuilder;
    use tcpmon_common::tcp::flags::*;
    let v4 = TcpBuilder::v4([10, 0, 0, 2], 40000, [10, 0, 0, 1], 80)
        .flags(SYN)
        .seq(1);
    let v6 = TcpBuilder::v6(
        "fd00::2".parse::<std::net::Ipv6Addr>().unwrap().octets(),
        40001,
        "fd00::1".parse::<std::net::Ipv6Addr>().unwrap().octets(),
        443,
    )
    .flags(SYN)
    .seq(1);
    let path = capture(
        "unreach",
        &[
            (0.0, v4.ethernet()),
            (0.5, v6.ethernet()),
            (1.0, v4.ethernet()),
            (1.2, v4.unreachable()),
            (1.3, v6.unreachable()),
            // A late quote of a finished session changes nothing.
            (1.4, v4.unreachable()),
        ],
    );
    let (lines, err) = peek(&path, &["--icmp"]);
    let outcomes: Vec<(u16, &str, u32)> = lines
        .iter()
        .map(|l| (l.server.port(), l.outcome.as_str(), l.dup_syn))
        .collect();
    assert_eq!(
        outcomes,
        [(80, "failure (unreach)", 1), (443, "failure (unreach)", 0)]
    );
    assert!(err.contains("   1.000 | 23-11-14 22:13:20.000 |        10.0.0.2:40000        10.0.0.1:80    | failure (unreach) |       1        0 \n"), "{err}");
    let rx = block(&err, "RX");
    assert_eq!(rx[4], "   Failure: 2 session");
    assert_eq!(rx[7], "     ICMP Unreachable      :      2");
    // Without --icmp the quotes are ignored: both time out, and the summary
    // has no unreach line, as in tcpeek.
    let (lines, err) = peek(&path, &[]);
    assert!(
        lines.iter().all(|l| l.outcome == "failure (timeout)"),
        "{lines:?}"
    );
    assert!(!err.contains("ICMP Unreachable"));
    let _ = std::fs::remove_file(path);
}

#[test]
fn a_syn_flood_is_bounded_and_what_was_dropped_is_counted() {
    use tcpmon::wire::build::TcpBuilder;
    use tcpmon_common::tcp::flags::*;
    const SYNS: u64 = 100_000;
    // 10,000 SYNs a second from distinct clients, then a 60 s lull and one
    // successful handshake: the flood times out on packet time meanwhile.
    let mut frames: Vec<(f64, Vec<u8>)> = (0..SYNS)
        .map(|i| {
            let client = [10, (i >> 16) as u8, (i >> 8) as u8, i as u8];
            let syn = TcpBuilder::v4(client, 1024 + (i % 50_000) as u16, [192, 0, 2, 1], 80);
            (i as f64 / 10_000.0, syn.flags(SYN).seq(i as u32).ethernet())
        })
        .collect();
    let c = TcpBuilder::v4([198, 51, 100, 7], 40000, [192, 0, 2, 1], 80);
    let s = TcpBuilder::v4([192, 0, 2, 1], 80, [198, 51, 100, 7], 40000);
    frames.push((80.0, c.clone().flags(SYN).seq(1).ethernet()));
    frames.push((80.001, s.flags(SYN | ACK).seq(9).ack(2).ethernet()));
    frames.push((80.002, c.flags(ACK).seq(2).ack(10).ethernet()));
    let path = capture("flood", &frames);
    let (lines, err) = peek(&path, &["-q", "--max-pending", "1000"]);
    assert!(lines.is_empty());
    let rx = block(&err, "RX");
    assert_eq!(rx[1], "   Success: 1 session", "{err}");
    assert_eq!(rx[5], "     Connection Timed Out  :   1000");
    assert!(
        err.contains(&format!("   sessions dropped : {}\n", SYNS - 1000)),
        "{err}"
    );
    // Without the bound every SYN is a session.
    let (_, err) = peek(&path, &["-q"]);
    assert_eq!(
        block(&err, "RX")[5],
        format!("     Connection Timed Out  : {SYNS:6}")
    );
    assert!(err.contains("   sessions dropped : 0\n"), "{err}");
    let _ = std::fs::remove_file(path);
}

/// `-f EXPRESSION` (a pcap filter, issue 6) keeps exactly the sessions
/// whose packets it selects: on a scan of ports 80 and 443, `tcp port 80`
/// leaves the unfiltered run's sessions on port 80, the same lines.
#[test]
fn pcap_filter_expressions_select_sessions() {
    let Some(dir) = common::shared_pcaps() else {
        return;
    };
    let path = dir.join("zeek__nmap-vsn.pcap");
    let (all, _) = peek(&path, &[]);
    let (kept, _) = peek(&path, &["-f", "tcp port 80"]);
    let want: Vec<&Line> = all.iter().filter(|l| l.server.port() == 80).collect();
    assert!(
        !want.is_empty() && want.len() < all.len(),
        "the scan has sessions on both sides of the filter"
    );
    assert_eq!(kept.iter().collect::<Vec<_>>(), want);

    let bad = tcpmon()
        .args(["peek", "-r"])
        .arg(&path)
        .args(["-f", "tcp port"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("syntax error"), "{err}");
}
