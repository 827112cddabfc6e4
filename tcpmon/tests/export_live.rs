//! `tcpmon export` and `tcpmon log` live in network namespaces with real
//! TCP stacks. A real Prometheus (Debian's package, started here with its
//! own configuration and storage) scrapes `export` every second; after
//! known traffic, PromQL through its HTTP API returns exactly the counts.
//! `log` writes one line per connection, equal to `top --json`'s object
//! plus `end`, and SIGHUP reopens its file.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::metrics::{parse, sum};
use common::netns::{Lab, Stderr, can_run_kernel_tests, signal, wait_for_stderr};
use common::tempdir;
use serde_json::Value;

const TCPMON: &str = env!("CARGO_BIN_EXE_tcpmon");
/// Lab numbers no other test file uses (grep `Lab::new(`).
const LAB_EXPORT: u8 = 90;
const LAB_LOG: u8 = 91;
const METRICS: &str = "127.0.0.1:9465";
const PROMETHEUS: &str = "127.0.0.1:19090";

/// Starts tcpmon with `args` in the server namespace, waiting until it
/// watches.
fn start(lab: &mut Lab, args: &[&str]) -> (usize, Stderr) {
    let mut cmd = lab.cmd(&lab.server_ns.clone(), TCPMON);
    cmd.args(args).stdout(Stdio::null()).stderr(Stdio::piped());
    let i = lab.spawn(cmd);
    let log = wait_for_stderr(lab.child(i), "tcpmon: watching", Duration::from_secs(30));
    (i, log)
}

/// SIGINT, and a clean exit.
fn stop(lab: &mut Lab, i: usize, log: Stderr) -> Vec<String> {
    signal(lab.child(i), libc::SIGINT);
    let status = lab.child(i).wait().unwrap();
    let lines = log.finish();
    assert!(status.success(), "tcpmon failed: {lines:#?}");
    lines
}

/// curl inside the server namespace: (HTTP status, body).
fn http_get(lab: &Lab, url: &str, headers: &[&str]) -> (String, String) {
    let mut cmd = lab.cmd(&lab.server_ns, "curl");
    cmd.args(["-s", "--max-time", "5", "-w", "\n%{http_code}"]);
    for h in headers {
        cmd.args(["-H", h]);
    }
    let out = cmd.arg(url).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.to_string(), body.to_string())
}

/// One PromQL query, through Prometheus's HTTP API: the value of its one
/// sample (`None` when it has none).
fn promql(lab: &Lab, query: &str) -> Option<f64> {
    let out = lab
        .cmd(&lab.server_ns, "curl")
        .args(["-s", "--max-time", "5", "-G"])
        .arg(format!("http://{PROMETHEUS}/api/v1/query"))
        .arg("--data-urlencode")
        .arg(format!("query={query}"))
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
    assert_eq!(v["status"], "success", "{query}: {v}");
    let result = v["data"]["result"].as_array()?;
    assert!(result.len() <= 1, "{query}: {v}");
    result.first()?["value"][1].as_str()?.parse().ok()
}

/// Waits until `query` returns `want`, and says how long it took.
fn wait_promql(lab: &Lab, query: &str, want: f64, timeout: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let got = promql(lab, query);
        if got == Some(want) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < timeout,
            "{query}: {got:?}, not {want}, after {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Prometheus in the server namespace, scraping tcpmon every second, its
/// data in `dir`.
fn start_prometheus(lab: &mut Lab, dir: &Path) {
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: tcpmon\n    static_configs:\n      - targets: ['{METRICS}']\n"
        ),
    )
    .unwrap();
    let mut cmd = lab.cmd(&lab.server_ns.clone(), "prometheus");
    cmd.arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address={PROMETHEUS}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    lab.spawn(cmd);
    wait_promql(lab, "up{job=\"tcpmon\"}", 1.0, Duration::from_secs(60));
}

#[test]
fn prometheus_scrapes_exact_counts() {
    if !can_run_kernel_tests("prometheus_scrapes_exact_counts") {
        return;
    }
    assert!(
        common::have_program("prometheus") || std::env::var_os("CI").is_none(),
        "prometheus is missing (apt-get install prometheus), and CI is set"
    );
    if !common::have_program("prometheus") {
        eprintln!("prometheus_scrapes_exact_counts: skipped (no prometheus)");
        return;
    }
    let mut lab = Lab::new(LAB_EXPORT);
    let www = tempdir("export-www");
    std::fs::write(www.join("index.html"), "hello\n").unwrap();
    lab.http_server(&www, 8080);
    lab.drop_syns_to(8082);
    let server_if = lab.server_if.clone();
    let (tcpmon, log) = start(
        &mut lab,
        &[
            "export",
            "-i",
            &server_if,
            "--listen",
            METRICS,
            "--port-label",
            "8080",
            "-t",
            "3",
        ],
    );
    let prom_dir = tempdir("export-prometheus");
    start_prometheus(&mut lab, &prom_dir);

    // Known traffic: N successful connections (one over IPv6), M refused,
    // one whose SYNs are dropped until the client gives up.
    const N: usize = 5;
    const M: usize = 3;
    let (v4, v6) = (lab.server_v4.clone(), lab.server_v6.clone());
    for _ in 0..N - 1 {
        assert_eq!(lab.curl(&format!("http://{v4}:8080/"), 5), 0);
    }
    assert_eq!(lab.curl(&format!("http://[{v6}]:8080/"), 5), 0);
    for _ in 0..M {
        assert_eq!(lab.curl(&format!("http://{v4}:8081/"), 5), 7, "refused");
    }
    assert_eq!(lab.curl(&format!("http://{v4}:8082/"), 2), 28, "timed out");

    let h = |dir: &str, outcome: &str, port: &str| {
        format!(
            "sum(tcpmon_handshakes_total{{direction=\"{dir}\",outcome=\"{outcome}\",port=\"{port}\"}})"
        )
    };
    // The timeout comes 3 s after the first SYN, then a tick and a scrape.
    let waited = wait_promql(
        &lab,
        &h("rx", "timeout", "other"),
        1.0,
        Duration::from_secs(30),
    );
    eprintln!("the timeout reached Prometheus within {waited:?}");
    for (query, want) in [
        (h("rx", "success", "8080"), N as f64),
        (h("rx", "success", "other"), 0.0),
        (h("rx", "reject", "other"), M as f64),
        (h("rx", "timeout", "other"), 1.0),
        (h("rx", "timeout", "8080"), 0.0),
        (h("rx", "unreach", "other"), 0.0),
        ("sum(tcpmon_handshakes_total{direction=\"tx\"})".into(), 0.0),
        ("sum(tcpmon_handshakes_total)".into(), (N + M + 1) as f64),
        ("sum(tcpmon_handshake_rtt_seconds_count)".into(), N as f64),
        ("sum(tcpmon_syn_retransmits_total)".into(), 1.0),
        ("sum(tcpmon_events_lost_total)".into(), 0.0),
        ("tcpmon_build_info".into(), 1.0),
    ] {
        wait_promql(&lab, &query, want, Duration::from_secs(10));
    }
    // A connection's bytes: each response is the same size.
    let to_client = promql(
        &lab,
        "sum(tcpmon_payload_bytes_total{direction=\"to_client\",port=\"8080\"})",
    )
    .unwrap();
    assert!(
        to_client > 0.0 && to_client % N as f64 == 0.0,
        "{to_client}"
    );

    // The endpoint itself: formats, promtool, 404, a silent client.
    let url = format!("http://{METRICS}/metrics");
    let (code, text) = http_get(&lab, &url, &[]);
    assert_eq!(code, "200");
    check_metrics(&text);
    let m = parse(&text);
    assert_eq!(
        sum(&m, "tcpmon_handshakes_total", &["outcome=\"reject\""]),
        M as f64
    );
    let (code, om) = http_get(
        &lab,
        &url,
        &["Accept: application/openmetrics-text; version=1.0.0"],
    );
    assert_eq!(code, "200");
    assert!(om.trim_end().ends_with("# EOF"), "{om}");
    let (code, _) = http_get(&lab, &format!("http://{METRICS}/"), &[]);
    assert_eq!(code, "404");
    let mut silent = lab.cmd(&lab.server_ns.clone(), "python3");
    silent.args([
        "-c",
        "import socket,sys,time\ns=socket.create_connection(('127.0.0.1',9465))\nprint('up',flush=True)\ntime.sleep(60)",
    ]);
    silent.stdout(Stdio::piped());
    let s = lab.spawn(silent);
    let mut up = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(lab.child(s).stdout.as_mut().unwrap()),
        &mut up,
    )
    .unwrap();
    assert_eq!(up.trim(), "up");
    let t = Instant::now();
    let (code, _) = http_get(&lab, &url, &[]);
    assert_eq!(code, "200", "answered beside a silent client");
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    let _ = lab.child(s).kill();

    // A second exporter on the same address: a clear error, no panic.
    let out = lab
        .cmd(&lab.server_ns, TCPMON)
        .args(["export", "-i", &server_if, "--listen", METRICS])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("cannot listen on 127.0.0.1:9465") && err.contains("in use"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    stop(&mut lab, tcpmon, log);
}

/// `promtool check metrics` finds no problem.
fn check_metrics(text: &str) {
    use std::io::Write;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The log's lines in `path`, as JSON.
fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect()
}

fn wait_lines(path: &Path, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while lines(path).len() < n {
        assert!(
            Instant::now() < deadline,
            "{} has {} lines, not {n}",
            path.display(),
            lines(path).len()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn log_lines_match_top_and_sighup_reopens() {
    if !can_run_kernel_tests("log_lines_match_top_and_sighup_reopens") {
        return;
    }
    let mut lab = Lab::new(LAB_LOG);
    let www = tempdir("log-www");
    std::fs::write(www.join("index.html"), "hello\n").unwrap();
    lab.http_server(&www, 8080);
    let dir = tempdir("log-files");
    let file = dir.join("conns.log");
    let server_if = lab.server_if.clone();
    let (log_i, log_err) = start(
        &mut lab,
        &[
            "log",
            "-i",
            &server_if,
            "-r",
            "1",
            "-w",
            file.to_str().unwrap(),
        ],
    );
    // top keeps every connection until the end, for comparison.
    let mut top = lab.cmd(&lab.server_ns.clone(), TCPMON);
    top.args(["top", "--json", "-i", &server_if, "-r", "600", "-p"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let top_i = lab.spawn(top);
    let top_err = wait_for_stderr(
        lab.child(top_i),
        "tcpmon: watching",
        Duration::from_secs(30),
    );

    let v4 = lab.server_v4.clone();
    let v6 = lab.server_v6.clone();
    for _ in 0..3 {
        assert_eq!(lab.curl(&format!("http://{v4}:8080/"), 5), 0);
    }
    wait_lines(&file, 3);
    // logrotate: move the file away, SIGHUP, and the new file fills.
    let moved = dir.join("conns.log.1");
    std::fs::rename(&file, &moved).unwrap();
    signal(lab.child(log_i), libc::SIGHUP);
    let reopened = Instant::now() + Duration::from_secs(10);
    while !file.exists() {
        assert!(Instant::now() < reopened, "SIGHUP made no new file");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(lab.curl(&format!("http://{v4}:8080/"), 5), 0);
    assert_eq!(lab.curl(&format!("http://[{v6}]:8080/"), 5), 0);
    wait_lines(&file, 2);
    assert_eq!(lines(&moved).len(), 3, "the moved file got no more");

    stop(&mut lab, log_i, log_err);
    signal(lab.child(top_i), libc::SIGINT);
    let out = lab.child(top_i).wait_with_output_owned();
    top_err.finish();
    let top: BTreeMap<String, Value> = out
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .map(|c| (format!("{} {}", c["client"], c["server"]), c))
        .collect();
    let all: Vec<Value> = lines(&moved).into_iter().chain(lines(&file)).collect();
    assert_eq!(all.len(), 5, "{all:#?}");
    assert_eq!(top.len(), 5, "{top:#?}");
    for mut c in all {
        let obj = c.as_object_mut().unwrap();
        assert_eq!(obj.remove("end").unwrap(), "closed", "{obj:?}");
        let want = &top[&format!("{} {}", c["client"], c["server"])];
        // Two programs on one hook stamp the same packets microseconds
        // apart: times within a millisecond, the rest exact.
        for key in ["first_seen", "last_seen"] {
            let (a, b) = (c[key].as_f64().unwrap(), want[key].as_f64().unwrap());
            assert!((a - b).abs() < 1e-3, "{key}: {c} {want}");
        }
        let (a, b) = (
            c["handshake_rtt_us"].as_f64().unwrap(),
            want["handshake_rtt_us"].as_f64().unwrap(),
        );
        assert!((a - b).abs() < 1000.0, "rtt: {c} {want}");
        let mut c = c.clone();
        let mut want = want.clone();
        for v in [&mut c, &mut want] {
            for key in ["first_seen", "last_seen", "handshake_rtt_us"] {
                v.as_object_mut().unwrap().remove(key);
            }
        }
        assert_eq!(c, want);
    }
}

/// A child's standard output once it exits.
trait WaitOutput {
    fn wait_with_output_owned(&mut self) -> String;
}

impl WaitOutput for std::process::Child {
    fn wait_with_output_owned(&mut self) -> String {
        let mut s = String::new();
        std::io::Read::read_to_string(self.stdout.as_mut().unwrap(), &mut s).unwrap();
        let status = self.wait().unwrap();
        assert!(status.success(), "top: {status:?}");
        s
    }
}
