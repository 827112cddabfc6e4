//! `tcpmon export -T` and `tcpmon log -T` on every shared capture and on
//! crafted ones: handshake counters equal `peek -r`'s summary, packet and
//! byte counters the sums of `top --json -T`, promtool finds nothing wrong
//! in the text; each `log` line is the `top --json` object of its
//! connection plus `end`, one per connection.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::metrics::{parse, sum};
use serde_json::Value;

const TCPMON: &str = env!("CARGO_BIN_EXE_tcpmon");

fn tcpmon(args: &[&str], path: &Path) -> (String, String) {
    let out = Command::new(TCPMON).args(args).arg(path).output().unwrap();
    // Damaged captures end with status 1 after what they could read.
    (
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The captures: every shared one, and crafted ones.
fn captures() -> Vec<PathBuf> {
    let mut all = Vec::new();
    if let Some(rows) = common::manifest() {
        let dir = common::shared_pcaps().unwrap();
        all.extend(rows.iter().map(|r| r.path(&dir)));
    }
    let (frames, _) = common::captures::second_synack();
    all.push(common::captures::write_pcap(
        "export-second-synack.pcap",
        &frames,
    ));
    assert!(all.len() > 1 || std::env::var_os("CI").is_none());
    all
}

/// peek's summary: (filter, outcome) to sessions.
fn peek_counts(err: &str) -> BTreeMap<(String, &'static str), f64> {
    let mut counts = BTreeMap::new();
    let mut filter = String::new();
    for line in err.lines() {
        if line == " RX" || line == " TX" {
            filter = line.trim().to_lowercase();
            continue;
        }
        let value = || {
            line.rsplit(':')
                .next()
                .unwrap()
                .split_whitespace()
                .next()
                .unwrap()
                .parse::<f64>()
                .unwrap()
        };
        let outcome = if line.starts_with("   Success:") {
            "success"
        } else if line.contains("Connection Timed Out") {
            "timeout"
        } else if line.contains("Connection Rejected") {
            "reject"
        } else if line.contains("ICMP Unreachable") {
            "unreach"
        } else {
            continue;
        };
        if !filter.is_empty() {
            counts.insert((filter.clone(), outcome), value());
        }
    }
    counts
}

#[test]
fn export_counts_what_peek_and_top_count() {
    let promtool = common::have_program("promtool");
    assert!(
        promtool || std::env::var_os("CI").is_none(),
        "promtool is missing (apt-get install prometheus), and CI is set"
    );
    for path in captures() {
        let name = path.display().to_string();
        let (metrics, err) = tcpmon(&["export", "-T"], &path);
        assert!(!err.contains("panicked"), "{name}: {err}");
        let m = parse(&metrics);
        // Handshakes: as peek's default RX and TX filters count them.
        let (_, peek_err) = tcpmon(&["peek", "-q", "-r"], &path);
        let peek = peek_counts(&peek_err);
        assert!(!peek.is_empty(), "{name}: no summary in {peek_err}");
        for ((dir, outcome), n) in &peek {
            let got = sum(
                &m,
                "tcpmon_handshakes_total",
                &[
                    &format!("direction=\"{dir}\""),
                    &format!("outcome=\"{outcome}\""),
                ],
            );
            assert_eq!(got, *n, "{name}: {dir} {outcome}");
        }
        // Traffic: the sums of top's connections.
        let (json, _) = tcpmon(&["top", "--json", "-T"], &path);
        let conns: Vec<Value> = json
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let total = |k: &str| conns.iter().map(|c| c[k].as_u64().unwrap()).sum::<u64>() as f64;
        for (metric, dir, key) in [
            ("tcpmon_packets_total", "to_server", "packets_to_server"),
            ("tcpmon_packets_total", "to_client", "packets_to_client"),
            ("tcpmon_payload_bytes_total", "to_server", "bytes_to_server"),
            ("tcpmon_payload_bytes_total", "to_client", "bytes_to_client"),
        ] {
            let got = sum(&m, metric, &[&format!("direction=\"{dir}\"")]);
            assert_eq!(got, total(key), "{name}: {metric} {dir}");
        }
        for (metric, key) in [
            ("tcpmon_syn_retransmits_total", "syn_retransmits"),
            ("tcpmon_synack_retransmits_total", "synack_retransmits"),
            ("tcpmon_retransmits_total", "retransmits"),
        ] {
            assert_eq!(sum(&m, metric, &[]), total(key), "{name}: {metric}");
        }
        let with_rtt = conns
            .iter()
            .filter(|c| !c["handshake_rtt_us"].is_null())
            .count();
        // A connection split by a jump in time has its handshake in neither
        // part (see TIME_JUMPS).
        let jumps = TIME_JUMPS.iter().any(|f| name.ends_with(f));
        assert!(
            jumps || sum(&m, "tcpmon_handshake_rtt_seconds_count", &[]) == with_rtt as f64,
            "{name}: RTTs observed"
        );
        // What has not ended is tracked, in some state.
        let tracked = sum(&m, "tcpmon_flows_tracked", &[]);
        assert_eq!(sum(&m, "tcpmon_connections", &[]), tracked, "{name}");
        assert!(tracked <= conns.len() as f64, "{name}");
        if promtool {
            check_metrics(&metrics, &name);
        }
    }
}

/// `promtool check metrics` finds no problem.
pub fn check_metrics(text: &str, name: &str) {
    use std::io::Write;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
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
        "{name}: promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A connection's identity in both outputs.
fn id(c: &Value) -> String {
    format!("{} {} {}", c["client"], c["server"], c["first_seen"])
}

/// Captures whose packet time jumps: one frame of this one is stamped 47
/// years after the rest, so every connection open then has been quiet for
/// 47 years and ends; what follows makes new ones. `top` keeps it all as
/// one table.
const TIME_JUMPS: &[&str] = &["pcapplusplus__pcapng-example.pcapng"];

#[test]
fn log_lines_are_top_json_objects_plus_end() {
    for path in captures() {
        let name = path.display().to_string();
        if TIME_JUMPS.iter().any(|f| name.ends_with(f)) {
            continue;
        }
        let (json, _) = tcpmon(&["top", "--json", "-T"], &path);
        let (log, err) = tcpmon(&["log", "-T"], &path);
        assert!(!err.contains("panicked"), "{name}: {err}");
        let mut top: BTreeMap<String, Value> = BTreeMap::new();
        for l in json.lines() {
            let c: Value = serde_json::from_str(l).unwrap();
            assert!(top.insert(id(&c), c).is_none(), "{name}: two alike in top");
        }
        let mut seen = 0;
        for l in log.lines() {
            let mut c: Value = serde_json::from_str(l).unwrap();
            let end = c.as_object_mut().unwrap().remove("end").expect("end");
            let end = end.as_str().unwrap().to_string();
            assert!(
                [
                    "closed",
                    "reset",
                    "timeout",
                    "idle",
                    "evicted",
                    "superseded",
                    "open"
                ]
                .contains(&end.as_str()),
                "{name}: {l}"
            );
            let want = top
                .get(&id(&c))
                .unwrap_or_else(|| panic!("{name}: not in top: {l}"));
            assert_eq!(&c, want, "{name}");
            // Fields in top's order, then end.
            let keys: Vec<&String> = c.as_object().unwrap().keys().collect();
            let top_keys: Vec<&String> = want.as_object().unwrap().keys().collect();
            assert_eq!(keys, top_keys);
            let state = c["state"].as_str().unwrap();
            match state {
                "CLOSED" => assert_eq!(end, "closed", "{name}: {l}"),
                "RESET" => assert_eq!(end, "reset", "{name}: {l}"),
                _ => assert_ne!(end, "closed", "{name}: {l}"),
            }
            seen += 1;
        }
        assert_eq!(seen, top.len(), "{name}: one line per connection");
    }
}

/// Bad input: a clear error naming the problem, never a panic.
#[test]
fn bad_input_is_a_clear_error() {
    let (frames, _) = common::captures::second_synack();
    let pcap = common::captures::write_pcap("export-bad-input.pcap", &frames);
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = taken.local_addr().unwrap().to_string();
    for (args, needle) in [
        (
            vec!["export", "-i", "lo", "--listen", "localhost-9465"],
            "invalid value 'localhost-9465' for '--listen <ADDR:PORT>'",
        ),
        (
            vec!["export", "-i", "lo", "--listen", &taken],
            "Address already in use",
        ),
        (
            vec![
                "log",
                "-T",
                pcap.to_str().unwrap(),
                "-w",
                "/nonexistent/dir/conns.log",
            ],
            "cannot open the log file /nonexistent/dir/conns.log: No such file or directory",
        ),
        (vec!["export", "--port-label", "80"], "nothing to watch"),
        (
            vec!["log", "-T", pcap.to_str().unwrap(), "-t", "0"],
            "-t must be a positive",
        ),
    ] {
        let err = common::fails_with(Command::new(TCPMON).args(&args), needle);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}

/// `--help`'s count of series is exact: 35 per port label value, 23 more.
#[test]
fn the_series_help_counts() {
    let (frames, _) = common::captures::second_synack();
    let pcap = common::captures::write_pcap("export-series.pcap", &frames);
    for (labels, ports) in [(None, 1), (Some("80,443"), 3), (Some("22,80,443,8080"), 5)] {
        let mut cmd = Command::new(TCPMON);
        cmd.args(["export", "-T"]).arg(&pcap);
        if let Some(l) = labels {
            cmd.args(["--port-label", l]);
        }
        let out = cmd.output().unwrap();
        let n = parse(&String::from_utf8(out.stdout).unwrap()).len();
        assert_eq!(n, 35 * ports + 23, "{labels:?}");
    }
    let help = Command::new(TCPMON)
        .args(["export", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    assert!(help.contains("at most 35 x (P + 1) + 23"), "{help}");
}
