//! `tcpmon peek -i` live in network namespaces with real TCP stacks: each
//! outcome over IPv4 and IPv6 (success, refused, SYNs dropped by nftables,
//! refused by nftables with an ICMP port-unreachable under `--icmp`,
//! SYN+ACKs dropped on the client), every line, the summary and the socket
//! JSON checked; the socket itself (GET, REFRESH deltas, concurrent clients,
//! a stale socket file, permissions, `-u`).

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::netns::{Lab, Stderr, can_run_kernel_tests, run};
use common::peek::{json, peekstat, start_peek, stop_peek};
use common::{fails_with, tempdir};

const TCPMON: &str = env!("CARGO_BIN_EXE_tcpmon");

/// Applies an nftables ruleset inside a namespace.
fn nft(lab: &Lab, ns: &str, rules: &str) {
    let file = std::env::temp_dir().join(format!("{ns}-{}.nft", std::process::id()));
    std::fs::write(&file, rules).unwrap();
    run(lab.cmd(ns, "nft").arg("-f").arg(&file));
    let _ = std::fs::remove_file(file);
}

/// Session lines as (src, dst, result, dup syn, dup s/a), checking their
/// columns on the way.
fn sessions(lines: &[String]) -> Vec<(String, String, String, u32, u32)> {
    lines
        .iter()
        .filter(|l| l.contains(" | ") && !l.starts_with(" TIME(s)"))
        .map(|l| {
            let f: Vec<&str> = l.split('|').collect();
            assert_eq!(f.len(), 5, "{l:?}");
            let time = f[0].trim();
            assert!(
                time.len() >= 5 && time.as_bytes()[time.len() - 4] == b'.',
                "TIME(s) is %4d.%03d: {l:?}"
            );
            assert_eq!(f[1].len(), 23, "TIMESTAMP is %y-%m-%d %T.mmm: {l:?}");
            let ends: Vec<&str> = f[2].split_whitespace().collect();
            let dups: Vec<u32> = f[4]
                .split_whitespace()
                .map(|n| n.parse().unwrap())
                .collect();
            assert!(l.ends_with(' '), "tcpeek's lines end in a space: {l:?}");
            (
                ends[0].to_string(),
                ends[1].to_string(),
                f[3].trim().to_string(),
                dups[0],
                dups[1],
            )
        })
        .collect()
}

fn wait_for_sessions(log: &Stderr, n: usize, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if sessions(&log.lines()).len() >= n {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!(
        "fewer than {n} sessions within {timeout:?}: {:#?}",
        log.lines()
    );
}

/// One filter's block of the summary.
fn block(lines: &[String], name: &str) -> Vec<String> {
    let start = lines
        .iter()
        .position(|l| *l == format!(" {name}"))
        .unwrap_or_else(|| panic!("no filter {name}: {lines:#?}"));
    lines[start..]
        .iter()
        .take_while(|l| !l.starts_with("---") && !l.starts_with("==="))
        .cloned()
        .collect()
}

#[test]
fn live_outcomes_lines_summary_and_json() {
    if !can_run_kernel_tests("live_outcomes_lines_summary_and_json") {
        return;
    }
    let mut lab = Lab::new(40);
    let www = tempdir("peek-www");
    std::fs::write(www.join("index.html"), "hello\n").unwrap();
    lab.http_server(&www, 8080);
    for family in ["-4", "-6"] {
        let mut nc = lab.cmd(&lab.server_ns.clone(), "nc");
        nc.args([family, "-lk", "8084"]).stdout(Stdio::null());
        lab.spawn(nc);
    }
    lab.wait_listening(8084);
    lab.drop_syns_to(8082);
    nft(
        &lab,
        &lab.server_ns.clone(),
        "table inet peek_reject {\n chain input {\n  type filter hook input priority 0;\n  \
         tcp dport 8083 reject with icmpx type port-unreachable\n }\n}\n",
    );
    // The client's netfilter drops SYN+ACKs from 8084; tcpmon's TC hook sees
    // them arrive before that, so the server's retransmissions show.
    nft(
        &lab,
        &lab.client_ns.clone(),
        "table inet peek_test {\n chain input {\n  type filter hook input priority 0;\n  \
         tcp sport 8084 tcp flags & (syn|ack) == syn|ack drop\n }\n}\n",
    );
    let sock = tempdir("peek-sock").join("tcpeek.sock");
    let (i, log) = start_peek(
        &mut lab,
        &["-t", "2", "--icmp", "-U", sock.to_str().unwrap()],
    );
    let hosts = [
        (lab.client_v4.clone(), lab.server_v4.clone()),
        (
            format!("[{}]", lab.client_v6),
            format!("[{}]", lab.server_v6),
        ),
    ];
    for (_, server) in &hosts {
        assert_eq!(lab.curl(&format!("http://{server}:8080/"), 5), 0);
        assert_eq!(lab.curl(&format!("http://{server}:8081/"), 5), 7, "refused");
        assert_ne!(
            lab.curl(&format!("http://{server}:8082/"), 3),
            0,
            "SYNs dropped"
        );
        assert_ne!(
            lab.curl(&format!("http://{server}:8083/"), 3),
            0,
            "ICMP reject"
        );
        assert_ne!(
            lab.curl(&format!("http://{server}:8084/"), 3),
            0,
            "SYN+ACKs dropped"
        );
    }
    wait_for_sessions(&log, 10, Duration::from_secs(20));
    let doc = json(&sock, false);
    let lines = stop_peek(&mut lab, i, log);
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with(" TIME(s) |       TIMESTAMP       |"))
    );

    let got = sessions(&lines);
    assert_eq!(got.len(), 10, "{lines:#?}");
    for (client, server) in &hosts {
        let find = |port: u16| {
            let dst = format!("{server}:{port}");
            got.iter()
                .find(|s| s.1 == dst)
                .unwrap_or_else(|| panic!("no session to {dst}: {lines:#?}"))
                .clone()
        };
        let ok = find(8080);
        assert!(ok.0.starts_with(&format!("{client}:")), "{ok:?}");
        assert_eq!((ok.2.as_str(), ok.3, ok.4), ("success", 0, 0));
        let refused = find(8081);
        assert_eq!(
            (refused.2.as_str(), refused.3, refused.4),
            ("failure (reject)", 0, 0)
        );
        let dropped = find(8082);
        assert_eq!(dropped.2, "failure (timeout)");
        assert!(
            dropped.3 >= 1,
            "a dropped SYN is retransmitted: {dropped:?}"
        );
        assert_eq!(dropped.4, 0);
        let unreach = find(8083);
        assert_eq!(unreach.2, "failure (unreach)", "{lines:#?}");
        let no_synack = find(8084);
        assert_eq!(no_synack.2, "failure (timeout)");
        assert!(
            no_synack.4 >= 1,
            "the server resends its SYN+ACK: {no_synack:?}"
        );
    }

    // The client sent every SYN: all TX.
    let tx = block(&lines, "TX");
    assert_eq!(tx[1], "   Success: 2 session");
    assert_eq!(tx[2], "     SYN Segment Duplicate :      0");
    assert_eq!(tx[4], "   Failure: 8 session");
    assert_eq!(tx[5], "     Connection Timed Out  :      4");
    assert_eq!(tx[6], "     Connection Rejected   :      2");
    assert_eq!(tx[7], "     ICMP Unreachable      :      2");
    assert_eq!(tx[8], "     SYN Segment Duplicate :      4");
    assert_eq!(tx[9], "     S/A Segment Duplicate :      2");
    let rx = block(&lines, "RX");
    assert_eq!(rx[1], "   Success: 0 session");
    assert_eq!(rx[4], "   Failure: 0 session");
    assert!(lines.iter().any(|l| l == " kernel stats"));
    assert!(lines.iter().any(|l| l == "   events lost      : 0"));
    assert_eq!(
        lines.last().map(String::as_str),
        Some("====================================")
    );

    // The socket said the same before the end.
    assert_eq!(doc[0]["RX"]["success"]["total"], 0);
    let t = &doc[1]["TX"];
    assert_eq!(t["success"]["total"], 2);
    assert_eq!(t["failure"]["total"], 8);
    assert_eq!(t["failure"]["timeout"], 4);
    assert_eq!(t["failure"]["reject"], 2);
    assert_eq!(t["failure"]["unreach"], 2);
    assert_eq!(t["failure"]["dupsyn"], 4);
    assert_eq!(t["failure"]["dupsynack"], 2);
    assert!(
        doc[2]["pcap"]["stats"]["recv"].as_u64().unwrap() > 20,
        "{doc}"
    );
    assert_eq!(doc[2]["pcap"]["stats"]["drop"], 0);
    assert!(!sock.exists(), "the socket is removed at exit");
}

#[test]
fn socket_get_refresh_concurrency_stale_file_and_user() {
    if !can_run_kernel_tests("socket_get_refresh_concurrency_stale_file_and_user") {
        return;
    }
    let mut lab = Lab::new(41);
    let mut nc = lab.cmd(&lab.server_ns.clone(), "nc");
    nc.args(["-lk", "9000"]).stdout(Stdio::null());
    lab.spawn(nc);
    lab.wait_listening(9000);
    // A crashed run left its socket file behind.
    let dir = tempdir("peek-stale");
    let sock = dir.join("tcpeek.sock");
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    assert!(sock.exists());

    let (i, log) = start_peek(
        &mut lab,
        &[
            "-q",
            "-U",
            sock.to_str().unwrap(),
            "-u",
            "nobody",
            "web:TX@*:9000",
        ],
    );
    let meta = std::fs::metadata(&sock).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    assert!(std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type()));
    // -u: the process runs as nobody and owns its socket.
    let pid = lab.child(i).id();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(
        uid_line.split_whitespace().skip(1).all(|u| u == "65534"),
        "{uid_line}"
    );
    assert_eq!(meta.uid(), 65534);

    let connect = |n: usize| {
        for _ in 0..n {
            let mut c = lab.cmd(&lab.client_ns, "nc");
            c.args(["-z", "-w", "2", &lab.server_v4, "9000"]);
            assert!(c.status().unwrap().success());
        }
    };
    let total = |doc: &serde_json::Value| doc[0]["web"]["success"]["total"].as_u64().unwrap();
    connect(3);
    // Wait until the three are counted.
    let deadline = Instant::now() + Duration::from_secs(10);
    while total(&json(&sock, false)) < 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let get = json(&sock, false);
    assert_eq!(total(&get), 3, "{get}");
    let recv = get[1]["pcap"]["stats"]["recv"].as_u64().unwrap();
    assert!(
        recv >= 9,
        "the kernel's counters are read after -u too: {get}"
    );
    // REFRESH: first the totals, then only what changed; GET is unchanged.
    assert_eq!(total(&json(&sock, true)), 3);
    assert!(
        json(&sock, true).get(1).is_none(),
        "REFRESH has no statistics element"
    );
    assert_eq!(total(&json(&sock, true)), 0);
    connect(2);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(total(&json(&sock, true)), 2);
    assert_eq!(total(&json(&sock, false)), 5);
    assert!(
        json(&sock, false)[1]["pcap"]["stats"]["recv"]
            .as_u64()
            .unwrap()
            > recv
    );
    // The text table.
    let table = peekstat(&sock, &[]);
    assert!(
        table.starts_with("====== TCPEEK SUMMARY ======\n----------------------------\n web\n"),
        "{table}"
    );
    assert!(
        table.contains(" success\n     total               5\n"),
        "{table}"
    );

    // Raw protocol: LF or CRLF, many clients at once.
    let raw = |line: &'static [u8]| {
        use std::io::{Read, Write};
        let mut s = std::os::unix::net::UnixStream::connect(&sock).unwrap();
        s.write_all(line).unwrap();
        let mut doc = String::new();
        s.read_to_string(&mut doc).unwrap();
        doc
    };
    let crlf = raw(b"GET\r\n");
    assert_eq!(raw(b"GET\n"), crlf);
    let docs: Vec<String> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..16).map(|_| s.spawn(|| raw(b"GET\r\n"))).collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for d in &docs {
        let v: serde_json::Value = serde_json::from_str(d).unwrap();
        assert_eq!(total(&v), 5);
    }
    // A second peek on the same socket is refused while this one runs.
    fails_with(
        lab.cmd(&lab.server_ns, TCPMON)
            .args(["peek", "-i", "lo", "-U"])
            .arg(&sock),
        "another tcpmon peek",
    );

    let lines = stop_peek(&mut lab, i, log);
    assert!(!lines.iter().any(|l| l.contains(" | ")), "-q: {lines:#?}");
    assert_eq!(block(&lines, "web")[1], "   Success: 5 session");
    let _ = std::fs::remove_dir_all(&dir);
}
