//! `tcpmon peek -i`'s statistics socket under abuse, against the real
//! binary in a lab: 1,000 clients that connect at once and never send, a
//! client sending a megabyte without a newline, more clients than the cap,
//! 1,000 requests at once. Meanwhile handshakes go on and must all be
//! counted, an ordinary client must have its answer within 100 ms, and the
//! process's memory must stay within a bound (docs/peek.md, "The socket").

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Barrier};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::netns::{Lab, can_run_kernel_tests, in_netns};
use common::peek::{json, start_peek, stop_peek};
use common::{fails_with, tempdir};

const TCPMON: &str = env!("CARGO_BIN_EXE_tcpmon");

/// A lab number no other test file uses (grep `Lab::new(`).
const LAB: u8 = 43;
/// The server's documented limits (docs/peek.md).
const MAX_CLIENTS: usize = 1024;
const MAX_LINE: usize = 128;
const IDLE: Duration = Duration::from_secs(1);
/// What the issue asks of an ordinary client while the socket is abused.
const ANSWER_WITHIN: Duration = Duration::from_millis(100);
/// The longest 1,000 simultaneous requests may take to be all answered:
/// 1 ms each, for a debug build on a loaded machine (about 0.2 s on this
/// one with a load of 8 on 2 CPUs).
const BURST: Duration = Duration::from_secs(1);
/// Growth of the process's resident memory allowed while over 1,000
/// clients are connected: the server keeps per client a task with a
/// 128-byte buffer (under 1 KiB, so under 1 MiB for 1,024) and never reads
/// more of a request; another 1 MiB for the allocator's and the runtime's
/// slack. Measured: 0.1 MiB; 6.9 MiB before the limits (8 KiB of read
/// buffer per client, no cap).
const RSS_GROWTH_KIB: u64 = 2 * 1024;

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Reads until the server closes: a reset after the reply (the server
/// closed on data it did not read) ends it too.
fn reply(s: &mut UnixStream) -> String {
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    String::from_utf8(buf).unwrap()
}

/// Sends `line` on a new connection and reads until the server closes;
/// returns the reply and how long the whole exchange took.
fn ask(sock: &Path, line: &[u8]) -> (String, Duration) {
    let t = Instant::now();
    let mut s = UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(line).unwrap();
    (reply(&mut s), t.elapsed())
}

/// An ordinary client's GET, which must be answered with the statistics
/// within [`ANSWER_WITHIN`]; returns the successes counted.
fn quick_get(sock: &Path, during: &str) -> u64 {
    let (reply, took) = ask(sock, b"GET\r\n");
    assert!(
        took < ANSWER_WITHIN,
        "{during}: GET answered in {took:?}: {reply}"
    );
    let doc: serde_json::Value = serde_json::from_str(&reply)
        .unwrap_or_else(|e| panic!("{during}: GET answered {reply:?}: {e}"));
    successes(&doc)
}

fn successes(doc: &serde_json::Value) -> u64 {
    doc[0]["web"]["success"]["total"].as_u64().unwrap()
}

/// `n` clients connected at once (from 8 threads), none sending.
fn connect_many(sock: &Path, n: usize) -> Vec<UnixStream> {
    std::thread::scope(|s| {
        let hs: Vec<_> = (0..8)
            .map(|t| {
                s.spawn(move || {
                    (t..n)
                        .step_by(8)
                        .map(|_| UnixStream::connect(sock).unwrap())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
    })
}

/// Reads each client until the server closes (or `limit` passes); the
/// replies, each with when it ended.
fn read_all(clients: Vec<UnixStream>, limit: Duration) -> Vec<(String, Instant)> {
    let chunks: Vec<Vec<UnixStream>> = clients.into_iter().enumerate().fold(
        vec![Vec::new(), Vec::new(), Vec::new(), Vec::new()],
        |mut acc, (i, c)| {
            acc[i % 4].push(c);
            acc
        },
    );
    std::thread::scope(|s| {
        let hs: Vec<_> = chunks
            .into_iter()
            .map(|chunk| {
                s.spawn(move || {
                    chunk
                        .into_iter()
                        .map(|mut c| {
                            c.set_read_timeout(Some(limit)).unwrap();
                            (reply(&mut c), Instant::now())
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
    })
}

/// `n` handshakes with the server's port 9000 from the client namespace,
/// one every 20 ms, on a thread of their own.
fn handshakes(lab: &Lab, n: usize) -> JoinHandle<()> {
    let (ns, server) = (lab.client_ns.clone(), lab.server_v4.clone());
    std::thread::spawn(move || {
        in_netns(&ns, || {
            for _ in 0..n {
                let addr = format!("{server}:9000").parse().unwrap();
                TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap();
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    })
}

/// Waits until `n` successes are counted.
fn wait_counted(sock: &Path, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = 0;
    while Instant::now() < deadline {
        seen = successes(&json(sock, false));
        if seen >= n {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(seen, n, "successes counted");
}

/// The test holds thousands of sockets: its own soft limit on open files
/// goes up to the hard one.
fn raise_nofile() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        lim.rlim_cur = lim.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
    }
    assert!(
        lim.rlim_cur >= 4096,
        "too few files allowed: {}",
        lim.rlim_cur
    );
}

struct Peek {
    lab: Lab,
    i: usize,
    log: common::netns::Stderr,
    pid: u32,
    sock: PathBuf,
    dir: PathBuf,
}

fn start() -> Peek {
    raise_nofile();
    let mut lab = Lab::new(LAB);
    let mut nc = lab.cmd(&lab.server_ns.clone(), "nc");
    nc.args(["-lk", "9000"]).stdout(Stdio::null());
    lab.spawn(nc);
    lab.wait_listening(9000);
    let dir = tempdir("peek-abuse");
    let sock = dir.join("tcpeek.sock");
    let (i, log) = start_peek(
        &mut lab,
        &["-q", "-U", sock.to_str().unwrap(), "web:TX@*:9000"],
    );
    let pid = lab.child(i).id();
    Peek {
        lab,
        i,
        log,
        pid,
        sock,
        dir,
    }
}

#[test]
fn socket_under_abuse_keeps_counting_answering_and_bounded() {
    if !can_run_kernel_tests("socket_under_abuse_keeps_counting_answering_and_bounded") {
        return;
    }
    let p = start();
    let sock = p.sock.clone();
    handshakes(&p.lab, 20).join().unwrap();
    wait_counted(&sock, 20);
    // Warm up what a first answer allocates, then the baseline.
    for _ in 0..20 {
        quick_get(&sock, "before the abuse");
    }
    let rss_before = rss_kib(p.pid);
    let mut rss_peak = rss_before;
    let counting = handshakes(&p.lab, 100);

    // 1. 1,000 clients connected at once that never send, and one sending
    // a megabyte without a newline.
    let t_silent = Instant::now();
    let silent = connect_many(&sock, 1000);
    let sock2 = sock.clone();
    let megabyte = std::thread::spawn(move || {
        let mut s = UnixStream::connect(&sock2).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let t = Instant::now();
        // The server stops reading after MAX_LINE bytes and closes: the
        // rest cannot all be written.
        let sent = s.write_all(&vec![b'x'; 1 << 20]);
        (sent.is_err(), reply(&mut s), t.elapsed())
    });
    for _ in 0..5 {
        quick_get(&sock, "1,000 silent clients and a megabyte");
        rss_peak = rss_peak.max(rss_kib(p.pid));
        std::thread::sleep(Duration::from_millis(20));
    }
    let (cut, reply, took) = megabyte.join().unwrap();
    assert!(cut, "the megabyte was read to its end: {reply}");
    assert!(
        reply.contains("\"error\"") && reply.contains(&format!("longer than {MAX_LINE} bytes")),
        "{reply:?}"
    );
    assert!(took < Duration::from_secs(1), "refused after {took:?}");
    rss_peak = rss_peak.max(rss_kib(p.pid));
    // The silent ones are closed after the idle timeout, with its reason.
    for (reply, at) in read_all(silent, Duration::from_secs(5)) {
        let after = at - t_silent;
        assert!(
            after >= IDLE && after < IDLE * 3,
            "closed {after:?} after connecting: {reply:?}"
        );
        assert!(reply.contains("no request within"), "{reply:?}");
    }

    // 2. More clients than the cap: those beyond are refused at once, and
    // say why.
    let t_full = Instant::now();
    let held = connect_many(&sock, MAX_CLIENTS);
    let t_extra = Instant::now();
    let extra = connect_many(&sock, 10);
    rss_peak = rss_peak.max(rss_kib(p.pid));
    assert!(
        t_full.elapsed() < IDLE / 2,
        "connecting took {:?}: the first ones may have been let go already",
        t_full.elapsed()
    );
    for (reply, at) in read_all(extra, Duration::from_secs(5)) {
        assert!(reply.contains("too many clients"), "{reply:?}");
        assert!(
            at - t_extra < ANSWER_WITHIN,
            "refused {:?} after connecting",
            at - t_extra
        );
    }
    // peekstat says why, and fails.
    fails_with(
        Command::new(TCPMON).args(["peekstat", "-U"]).arg(&sock),
        "refused the request: too many clients at once (at most 1024)",
    );
    drop(held);
    // Closed by their clients: the slots are free again at once.
    std::thread::sleep(Duration::from_millis(100));
    quick_get(&sock, "after the full house");

    // 3. 1,000 requests at once: every one answered, the last within
    // BURST (an ordinary client asking then is one of them, and waits as
    // long; 5.8 s before requests were answered together).
    let clients = connect_many(&sock, 1000);
    let go = Arc::new(Barrier::new(5));
    let burst: Vec<_> = {
        let mut chunks: Vec<Vec<UnixStream>> = (0..4).map(|_| Vec::new()).collect();
        for (i, c) in clients.into_iter().enumerate() {
            chunks[i % 4].push(c);
        }
        chunks
            .into_iter()
            .map(|chunk| {
                let go = go.clone();
                std::thread::spawn(move || {
                    go.wait();
                    let mut chunk = chunk;
                    for c in &mut chunk {
                        c.write_all(b"GET\n").unwrap();
                    }
                    chunk
                })
            })
            .collect()
    };
    go.wait();
    let t_burst = Instant::now();
    let written: Vec<UnixStream> = burst.into_iter().flat_map(|h| h.join().unwrap()).collect();
    let answers = read_all(written, Duration::from_secs(10));
    rss_peak = rss_peak.max(rss_kib(p.pid));
    let slowest = answers.iter().map(|(_, at)| *at - t_burst).max().unwrap();
    assert!(
        slowest < BURST,
        "1,000 requests answered within {slowest:?}"
    );
    quick_get(&sock, "after 1,000 requests");
    for (reply, _) in &answers {
        let doc: serde_json::Value =
            serde_json::from_str(reply).unwrap_or_else(|e| panic!("{reply:?}: {e}"));
        assert!(successes(&doc) >= 20, "{reply}");
    }
    eprintln!(
        "peek socket: RSS {rss_before} KiB before, {rss_peak} KiB at most, \
         1,000 requests answered within {slowest:?}"
    );
    assert!(
        rss_peak - rss_before < RSS_GROWTH_KIB,
        "RSS grew from {rss_before} to {rss_peak} KiB"
    );

    // Counting went on throughout: every handshake is in.
    counting.join().unwrap();
    wait_counted(&sock, 120);
    quick_get(&sock, "after the abuse");
    let Peek {
        mut lab,
        i,
        log,
        dir,
        ..
    } = p;
    let lines = stop_peek(&mut lab, i, log);
    assert!(
        lines.iter().any(|l| l == "   Success: 120 session"),
        "{lines:#?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_low_limit_on_open_files_lowers_the_cap_and_refuses_cleanly() {
    if !can_run_kernel_tests("a_low_limit_on_open_files_lowers_the_cap_and_refuses_cleanly") {
        return;
    }
    raise_nofile();
    let mut lab = Lab::new(LAB + 1);
    let dir = tempdir("peek-nofile");
    let sock = dir.join("tcpeek.sock");
    // A hard limit of 256 open files: the soft one cannot be raised to fit
    // 1,024 clients, so the cap comes down to what fits.
    let mut cmd = lab.cmd(&lab.client_ns.clone(), "prlimit");
    cmd.args([
        "--nofile=256:256",
        TCPMON,
        "peek",
        "-q",
        "web:TX@*:9000",
        "-i",
    ])
    .arg(&lab.client_if)
    .arg("-U")
    .arg(&sock)
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    let i = lab.spawn(cmd);
    let log =
        common::netns::wait_for_stderr(lab.child(i), "tcpmon: watching", Duration::from_secs(30));
    let warning = log
        .lines()
        .into_iter()
        .find(|l| l.contains("lets the socket serve"))
        .unwrap_or_else(|| panic!("no warning about the cap: {:#?}", log.lines()));
    let cap: usize = warning
        .split("serve ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{warning}"));
    assert!((100..256 - 64).contains(&cap), "{warning}");
    // More clients than fit: those beyond the cap are refused at once with
    // it, not left hanging on a failed accept.
    let clients = connect_many(&sock, cap + 50);
    let replies = read_all(clients, Duration::from_secs(5));
    let refused = replies
        .iter()
        .filter(|(r, _)| r.contains(&format!("too many clients at once (at most {cap})")))
        .count();
    let idle = replies
        .iter()
        .filter(|(r, _)| r.contains("no request within"))
        .count();
    assert_eq!((refused, idle), (50, cap), "{:?}", &replies[..3]);
    quick_get(&sock, "after the low cap's clients");
    let lines = stop_peek(&mut lab, i, log);
    assert!(
        lines.iter().any(|l| l.contains("TCPEEK SUMMARY")),
        "{lines:#?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
