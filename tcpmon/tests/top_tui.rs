//! `tcpmon top` in a real terminal: tmux runs it on shared captures, sends
//! keys and reads the screen back.

mod common;

use std::path::Path;
use std::process::Command;

use common::tmux::Tmux;

const TCPMON: &str = env!("CARGO_BIN_EXE_tcpmon");

/// The client of the connection with the most payload bytes.
fn biggest(file: &str) -> String {
    let out = Command::new(TCPMON)
        .args(["top", "--json", "-T", file])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .max_by_key(|v| {
            v["bytes_to_server"].as_u64().unwrap() + v["bytes_to_client"].as_u64().unwrap()
        })
        .map(|v| v["client"].as_str().unwrap().to_string())
        .unwrap()
}

fn capture(dir: &Path, name: &str) -> String {
    dir.join(name).display().to_string()
}

#[test]
fn keys_sort_pause_and_quit_restoring_the_terminal() {
    let Some(dir) = common::shared_pcaps() else {
        return;
    };
    let file = capture(&dir, "chrissanders__http_espn_fail.pcapng");
    let t = Tmux::start("keys", 80, 14, &format!("{TCPMON} top -r 1000 -T {file}"));
    let s = t.wait_for("Connections 1-11 of 16");
    let lines: Vec<&str> = s.lines().collect();
    assert_eq!(
        lines[0].trim_end(),
        " Client                Server                State        Idle A Speed"
    );
    assert!(
        lines[1].starts_with(" 172.16.16.154:64859   68.71.212.158:80      ESTABLISHED  "),
        "{s}"
    );
    assert!(s.contains("SYN_SENT"), "{s}");
    assert!(s.contains("Unpaused  Unsorted"), "{s}");
    t.keys("s");
    t.wait_for("Unpaused  Sorted by rate");
    t.keys("s");
    t.wait_for("Unpaused  Sorted by bytes");
    let by_bytes = t.screen();
    // The connection with the most payload, as --json counts it, comes first.
    assert!(
        by_bytes
            .lines()
            .nth(1)
            .unwrap()
            .starts_with(&format!(" {:<22}", biggest(&file))),
        "{by_bytes}"
    );
    t.keys("p");
    t.wait_for("Paused    Sorted by bytes");
    t.keys("s");
    t.wait_for("Paused    Unsorted");
    t.keys("End");
    t.wait_for("Connections 6-16 of 16");
    t.keys("q");
    let s = t.wait_for("EXIT=0");
    assert!(!s.contains("Client"), "the table is gone after q:\n{s}");
}

#[test]
fn small_terminal_gets_a_message_and_resizing_redraws() {
    let Some(dir) = common::shared_pcaps() else {
        return;
    };
    let file = capture(&dir, "zeek__redis-attr.pcap");
    let t = Tmux::start("small", 60, 10, &format!("{TCPMON} top -r 1000 -T {file}"));
    t.wait_for("at least 80x3");
    assert!(
        t.cmd()
            .args(["resize-window", "-x", "90", "-y", "10"])
            .status()
            .unwrap()
            .success()
    );
    t.wait_for("Connections 1-4 of 4");
    t.keys("q");
    t.wait_for("EXIT=0");
}

#[test]
fn called_tcptrack_it_is_top() {
    let Some(dir) = common::shared_pcaps() else {
        return;
    };
    let link_dir = std::env::temp_dir().join(format!("tcpmon-argv0-{}", std::process::id()));
    std::fs::create_dir_all(&link_dir).unwrap();
    let link = link_dir.join("tcptrack");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(TCPMON, &link).unwrap();
    let file = capture(&dir, "zeek__redis-attr.pcap");
    let t = Tmux::start(
        "argv0",
        80,
        8,
        &format!("{} -r 1000 -T {file}", link.display()),
    );
    t.wait_for("127.0.0.1:6379");
    t.keys("q");
    t.wait_for("EXIT=0");
    let _ = std::fs::remove_dir_all(link_dir);
}

#[test]
fn realtime_replay_follows_packet_time() {
    let Some(dir) = common::shared_pcaps() else {
        return;
    };
    let file = capture(&dir, "zeek__redis-attr.pcap");
    let started = std::time::Instant::now();
    let t = Tmux::start(
        "realtime",
        80,
        10,
        &format!("{TCPMON} top --realtime -r 1000 -T {file}"),
    );
    // The capture's second pair of connections comes about 4 s after the
    // first: shown as fast as possible they would appear at once.
    t.wait_for("Connections 1-2 of 2");
    t.wait_for("Connections 1-4 of 4");
    assert!(
        started.elapsed() >= std::time::Duration::from_secs(3),
        "replayed faster than recorded: {:?}",
        started.elapsed()
    );
    t.keys("q");
    t.wait_for("EXIT=0");
}
