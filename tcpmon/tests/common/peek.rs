//! Running `tcpmon peek -i` in a lab and asking its statistics socket, as
//! the live tests of the socket do.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use super::netns::{Lab, Stderr, signal, wait_for_stderr};

const TCPMON: &str = env!("CARGO_BIN_EXE_tcpmon");

/// Starts `tcpmon peek` in the client namespace on its veth end; returns
/// the child's index in the lab and its stderr once it watches.
pub fn start_peek(lab: &mut Lab, extra: &[&str]) -> (usize, Stderr) {
    let mut cmd = lab.cmd(&lab.client_ns.clone(), TCPMON);
    cmd.args(["peek", "-i", &lab.client_if.clone()])
        .args(extra)
        .env("TZ", "UTC")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let i = lab.spawn(cmd);
    let log = wait_for_stderr(lab.child(i), "tcpmon: watching", Duration::from_secs(30));
    (i, log)
}

/// Sends SIGINT and returns everything printed.
pub fn stop_peek(lab: &mut Lab, i: usize, log: Stderr) -> Vec<String> {
    signal(lab.child(i), libc::SIGINT);
    let status = lab.child(i).wait().unwrap();
    let lines = log.finish();
    assert!(status.success(), "tcpmon peek failed: {lines:#?}");
    lines
}

/// `tcpmon peekstat -U SOCK ARGS...`, which must succeed; its stdout.
pub fn peekstat(sock: &Path, args: &[&str]) -> String {
    let out = Command::new(TCPMON)
        .args(["peekstat", "-U"])
        .arg(sock)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "peekstat: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The socket's document through `peekstat -j` (`--refresh` if asked).
pub fn json(sock: &Path, refresh: bool) -> serde_json::Value {
    let mut args = vec!["-j"];
    if refresh {
        args.push("--refresh");
    }
    serde_json::from_str(&peekstat(sock, &args)).unwrap()
}
