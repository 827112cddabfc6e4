//! A reader that closes the pipe (`tcpmon top --json -T FILE | head`) ends
//! tcpmon quietly, as it ends cat and ripgrep: no error message, status 0.

mod common;

use std::process::{Command, Stdio};

const TCPMON: &str = env!("CARGO_BIN_EXE_tcpmon");

/// Runs tcpmon with its standard output on a pipe whose reading end is
/// already closed, so its first write fails with EPIPE.
fn into_closed_pipe(args: &[&str]) -> std::process::Output {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    Command::new(TCPMON)
        .args(args)
        .stdout(Stdio::from(writer))
        .stderr(Stdio::piped())
        .output()
        .unwrap()
}

#[test]
fn a_closed_pipe_ends_tcpmon_quietly() {
    let (frames, _) = common::captures::second_synack();
    let pcap = common::captures::write_pcap("closed-pipe.pcap", &frames);
    let pcap = pcap.to_str().unwrap();
    for args in [
        &["top", "--json", "-T", pcap][..],
        &["top", "-T", pcap],
        &["stat", "-r", pcap, "1"],
        &["log", "-T", pcap],
        &["export", "-T", pcap],
    ] {
        let out = into_closed_pipe(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.is_empty(), "{args:?}: {err}");
        assert!(out.status.success(), "{args:?}: {:?}", out.status);
    }
}
