//! Churn with full flow maps: thousands of short connections open and
//! close beside one long transfer, watched live with the smallest
//! `--max-flows`, so the kernel's LRU evicts records all along; and a few
//! hundred connections opened before the churn and idle through it, so
//! that the LRU evicts them open, then used and closed. Evictions must be
//! counted, the idle ones marked `evicted`, no connection may appear
//! twice, and every connection `top --json` does not mark must have
//! exactly the counts of the replay of tcpdump's capture of the same
//! traffic.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::netns::{Lab, can_run_kernel_tests, signal, wait_for_stderr};
use serde_json::Value;

const TCPMON: &str = env!("CARGO_BIN_EXE_tcpmon");
/// A lab number no other test file uses (grep `Lab::new(`).
const LAB_CHURN: u8 = 95;
const CHURN_PORT: u16 = 5201;
const LONG_PORT: u16 = 5202;
const HELD_PORT: u16 = 5203;
/// Connections idle through the churn: the least recently used records.
const HELD: usize = 200;
/// Short connections: three times the map's size, so most records are
/// evicted whatever the machine's speed.
const SHORT: usize = 3_000;
/// Paced below what tcpdump keeps up with beside a busy machine, so that
/// its capture is whole and the comparison means something.
const SHORT_PER_SEC: u64 = 1_000;
/// The smallest map tcpmon accepts.
const MAX_FLOWS: &str = "1024";

#[test]
fn churn_with_full_flow_maps_counts_evictions_and_keeps_the_rest_exact() {
    if !can_run_kernel_tests("churn_with_full_flow_maps_counts_evictions_and_keeps_the_rest_exact")
    {
        return;
    }
    let started = Instant::now();
    let mut lab = Lab::new(LAB_CHURN);
    // One packet per segment, so that the capture's packets are the hook's.
    lab.disable_offloads();
    let (client_ns, dev) = (lab.client_ns.clone(), lab.client_if.clone());
    let server_ns = lab.server_ns.clone();
    let churn_addr: SocketAddr = format!("{}:{CHURN_PORT}", lab.server_v4).parse().unwrap();
    let long_addr: SocketAddr = format!("{}:{LONG_PORT}", lab.server_v4).parse().unwrap();
    let held_addr: SocketAddr = format!("{}:{HELD_PORT}", lab.server_v4).parse().unwrap();
    let churn_server = serve(&server_ns, churn_addr, SHORT);
    let long_server = serve(&server_ns, long_addr, 1);
    let held_server = serve(&server_ns, held_addr, HELD);

    let dir = common::tempdir("churn");
    let pcap = dir.join("capture.pcap");
    let dump = lab.start_tcpdump_snap(&client_ns, &dev, &pcap, Some("tcp"), 128);
    let mut mon = lab.cmd(&client_ns, TCPMON);
    // `-r 30`: ended connections stay in the kernel's map for the whole
    // run, so the map is full after its first 1,024 connections and evicts
    // from then on, however fast this machine opens them.
    mon.args([
        "top",
        "--json",
        "--max-flows",
        MAX_FLOWS,
        "-r",
        "30",
        "-i",
        &dev,
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mon = lab.spawn(mon);
    let log = wait_for_stderr(lab.child(mon), "watching", Duration::from_secs(20));

    // Opened before the churn (the server reads them once all are open),
    // then idle through it.
    let (held_tx, held_rx) = std::sync::mpsc::channel();
    let held = in_thread_of(&client_ns, move || {
        let mut held = Vec::new();
        for _ in 0..HELD {
            let mut s = TcpStream::connect(held_addr).unwrap();
            s.write_all(&[3u8; 100]).unwrap();
            held.push(s);
        }
        held_tx.send(held).unwrap();
    });
    held.join().unwrap();
    let held = held_rx.recv().unwrap();
    let long = in_thread_of(&client_ns, move || {
        let mut s = TcpStream::connect(long_addr).unwrap();
        let chunk = [7u8; 1000];
        // Till the churn is done: 1 kB every 2 ms, paced as the churn.
        let end = Instant::now() + Duration::from_millis(SHORT as u64 * 1000 / SHORT_PER_SEC + 500);
        while Instant::now() < end {
            s.write_all(&chunk).unwrap();
            std::thread::sleep(Duration::from_millis(2));
        }
        finish(s);
    });
    let churn = in_thread_of(&client_ns, move || {
        let t0 = Instant::now();
        for i in 0..SHORT as u64 {
            let due = t0 + Duration::from_micros(i * 1_000_000 / SHORT_PER_SEC);
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
            let mut s = TcpStream::connect(churn_addr).unwrap();
            s.write_all(&[1u8; 200]).unwrap();
            finish(s);
        }
    });
    churn.join().unwrap();
    long.join().unwrap();
    churn_server.join().unwrap();
    long_server.join().unwrap();
    // Evicted by now (a thousand and more flows came since): used again
    // and closed.
    in_thread_of(&client_ns, move || {
        for mut s in held {
            s.write_all(&[4u8; 100]).unwrap();
            finish(s);
        }
    })
    .join()
    .unwrap();
    held_server.join().unwrap();
    // A tick for the last records to be read.
    std::thread::sleep(Duration::from_millis(1500));
    signal(lab.child(mon), libc::SIGINT);
    let live = {
        let child = lab.child(mon);
        let mut json = String::new();
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut json)
            .unwrap();
        assert!(child.wait().unwrap().success(), "tcpmon failed");
        json
    };
    let complete = lab.stop_tcpdump(dump);
    assert!(complete, "tcpdump dropped packets: nothing to compare with");
    let stderr = log.finish().join("\n");

    // Counted: the kernel's count, at the end of `top`.
    let evicted = stderr
        .split("evicted ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no count of evicted flows in tcpmon's stderr:\n{stderr}"));
    assert!(evicted > 0, "no flow evicted: {stderr}");

    let replay = Command::new(TCPMON)
        .args(["top", "--json", "-T"])
        .arg(&pcap)
        .output()
        .unwrap();
    assert!(replay.status.success(), "the replay failed");
    let replay = lines(&String::from_utf8_lossy(&replay.stdout));
    let live = lines(&live);
    // Client ports are not reused within the run (TIME-WAIT holds them),
    // so a 4-tuple is one connection in the capture.
    let mut by_tuple: HashMap<(String, String), &Value> = HashMap::new();
    for r in &replay {
        let tuple = (s(r, "client"), s(r, "server"));
        assert!(
            by_tuple.insert(tuple, r).is_none(),
            "the replay repeats {r}"
        );
    }
    assert!(
        by_tuple.len() > SHORT,
        "the replay holds {} connections of {}",
        by_tuple.len(),
        SHORT + 1
    );

    let mut seen = HashMap::new();
    let (mut compared, mut marked, mut marked_whole) = (0, 0, 0);
    const COUNTS: [&str; 4] = [
        "packets_to_server",
        "packets_to_client",
        "bytes_to_server",
        "bytes_to_client",
    ];
    for l in &live {
        let id = (s(l, "client"), s(l, "server"), l["first_seen"].to_string());
        assert!(seen.insert(id, l).is_none(), "live shows twice: {l}");
        if l["evicted"] == true {
            marked += 1;
            // Marked, yet whole: the mark is on the safe side (a record
            // read after its last change and evicted before the re-read
            // the epoch's race asks for). Only reported.
            let whole = by_tuple
                .get(&(s(l, "client"), s(l, "server")))
                .is_some_and(|r| COUNTS.iter().all(|k| l[*k] == r[*k]));
            marked_whole += usize::from(whole);
            continue;
        }
        assert_eq!(l["evicted"], false, "no evicted field: {l}");
        let tuple = (s(l, "client"), s(l, "server"));
        let r = by_tuple
            .get(&tuple)
            .unwrap_or_else(|| panic!("live shows a connection the capture does not hold: {l}"));
        let live_start = l["first_seen"].as_f64().unwrap();
        let replay_start = r["first_seen"].as_f64().unwrap();
        assert!(
            (live_start - replay_start).abs() < 0.5,
            "not the same start: {l} / {r}"
        );
        for k in COUNTS.iter().chain(&["client_how", "state"]) {
            assert_eq!(
                l[k], r[k],
                "{k} differs from the replay's: live {l}, replay {r}"
            );
        }
        compared += 1;
    }
    // Two live records on one 4-tuple are an eviction's two halves: both
    // marked.
    let mut tuples: HashMap<(String, String), Vec<&Value>> = HashMap::new();
    for l in &live {
        tuples
            .entry((s(l, "client"), s(l, "server")))
            .or_default()
            .push(l);
    }
    for (tuple, ls) in &tuples {
        assert!(
            ls.len() == 1 || ls.iter().all(|l| l["evicted"] == true),
            "{tuple:?} shows twice, not as an eviction's halves: {ls:#?}"
        );
    }
    // The idle ones were evicted open: marked.
    let held_marked = live
        .iter()
        .filter(|l| s(l, "server") == held_addr.to_string() && l["evicted"] == true)
        .map(|l| s(l, "client"))
        .collect::<std::collections::HashSet<_>>()
        .len();
    eprintln!(
        "{} connections, {evicted} flows evicted; live showed {}: {compared} equal to the \
         replay's, {marked} marked evicted ({marked_whole} of them whole), of those {held_marked} \
         of the {HELD} idle connections; {:.1} s",
        by_tuple.len(),
        live.len(),
        started.elapsed().as_secs_f64()
    );
    // Most connections must have been compared for the test to mean
    // anything (the map holds 1,024 records).
    assert!(compared >= 500, "only {compared} connections compared");
    assert!(held_marked > 0, "no idle connection marked evicted");
    let _ = std::fs::remove_dir_all(dir);
}

/// The client's side of a connection's end: no more to send, then read
/// the server's reply to its end, then close.
fn finish(mut s: TcpStream) {
    s.shutdown(Shutdown::Write).unwrap();
    let mut sink = Vec::new();
    s.read_to_end(&mut sink).unwrap();
}

/// A server in namespace `ns` on `addr` for `n` connections: each is read
/// to its end, answered with 300 bytes and closed. All are accepted first
/// on the idle connections' port: they stay open together, more than a
/// listen backlog holds.
fn serve(ns: &str, addr: SocketAddr, n: usize) -> JoinHandle<()> {
    let (ready_tx, ready) = std::sync::mpsc::channel();
    let all_first = addr.port() == HELD_PORT;
    let handle = in_thread_of(ns, move || {
        let listener = TcpListener::bind(addr).unwrap();
        ready_tx.send(()).unwrap();
        let answer = |mut s: TcpStream| {
            let mut sink = Vec::new();
            s.read_to_end(&mut sink).unwrap();
            s.write_all(&[2u8; 300]).unwrap();
        };
        let mut open = Vec::new();
        for _ in 0..n {
            let (s, _) = listener.accept().unwrap();
            match all_first {
                true => open.push(s),
                false => answer(s),
            }
        }
        open.into_iter().for_each(answer);
    });
    ready.recv().expect("the server did not start");
    handle
}

/// Runs `f` on a new thread that entered namespace `ns`.
fn in_thread_of(ns: &str, f: impl FnOnce() + Send + 'static) -> JoinHandle<()> {
    use std::os::fd::AsRawFd;
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
        f()
    })
}

fn lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect()
}

fn s(v: &Value, key: &str) -> String {
    v[key].as_str().unwrap_or_default().to_string()
}
