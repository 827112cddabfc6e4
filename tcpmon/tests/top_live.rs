//! `tcpmon top -i` live in network namespaces, in a real terminal, with
//! Debian's tcptrack watching the same interface as the oracle.

mod common;

use std::collections::BTreeSet;
use std::process::Stdio;
use std::time::Duration;

use common::netns::{Lab, can_run_kernel_tests};
use common::tmux::Tmux;

const TCPMON: &str = env!("CARGO_BIN_EXE_tcpmon");

/// (client, server, state) of every table row on a screen.
fn connections(screen: &str) -> BTreeSet<(String, String, String)> {
    screen
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 3 && f[0].contains(':') && f[1].contains(':'))
                .then(|| (f[0].to_string(), f[1].to_string(), f[2].to_string()))
        })
        .collect()
}

fn row<'a>(screen: &'a str, server: &str) -> Option<&'a str> {
    screen
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some(server))
}

#[test]
fn live_table_shows_speeds_states_and_purges_like_tcptrack() {
    if !can_run_kernel_tests("live_table_shows_speeds_states_and_purges_like_tcptrack") {
        return;
    }
    let mut lab = Lab::new(6);
    // A sender that paces itself at 300 KiB/s (30 KiB every 100 ms), so the
    // wire rate is steady whatever the receive buffers do.
    let mut paced = lab.cmd(&lab.server_ns.clone(), "python3");
    paced.args([
        "-c",
        "import socket,time\n\
         s=socket.socket(); s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n\
         s.bind(('0.0.0.0',8090)); s.listen(1); c,_=s.accept(); b=b'x'*30720\n\
         for _ in range(600):\n c.sendall(b); time.sleep(0.1)\n",
    ]);
    lab.spawn(paced);
    let mut listener = lab.cmd(&lab.server_ns.clone(), "nc");
    listener.args(["-lk", "9000"]).stdout(Stdio::null());
    lab.spawn(listener);
    lab.wait_listening(8090);
    lab.wait_listening(9000);

    let ns = lab.client_ns.clone();
    let dev = lab.client_if.clone();
    let ours = Tmux::start(
        "live-ours",
        100,
        20,
        &format!("ip netns exec {ns} {TCPMON} top -r 3 -i {dev}"),
    );
    ours.wait_for("Connections 0-0 of 0");
    let theirs = Tmux::start(
        "live-tcptrack",
        100,
        20,
        &format!("ip netns exec {ns} tcptrack -r 3 -i {dev}"),
    );
    theirs.wait_for("Connections");
    std::thread::sleep(Duration::from_millis(500));

    let s4 = lab.server_v4.clone();
    let mut transfer = lab.cmd(&ns, "nc");
    transfer
        .args([s4.as_str(), "8090"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null());
    lab.spawn(transfer);
    // An open connection that sends nothing.
    let mut idle = lab.cmd(&ns, "nc");
    idle.args([s4.as_str(), "9000"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null());
    lab.spawn(idle);
    std::thread::sleep(Duration::from_millis(3500));
    assert_ne!(
        lab.curl(&format!("http://{s4}:8081/"), 3),
        0,
        "8081 is closed"
    );
    std::thread::sleep(Duration::from_millis(1200));
    let a = ours.screen();
    let b = theirs.screen();
    let http = row(&a, &format!("{s4}:8090")).unwrap_or_else(|| panic!("no transfer:\n{a}"));
    assert!(http.contains("ESTABLISHED"), "{a}\n{b}");
    let speed: Vec<&str> = http.split_whitespace().rev().take(2).collect();
    assert_eq!(speed[0], "KB/s", "{http}");
    let kb: u64 = speed[1].parse().unwrap();
    assert!((150..=450).contains(&kb), "about 300 KB/s expected: {http}");
    let quiet = row(&a, &format!("{s4}:9000")).unwrap_or_else(|| panic!("no idle:\n{a}"));
    assert!(
        quiet.contains("ESTABLISHED") && quiet.contains(" 0 B/s"),
        "{quiet}"
    );
    let refused = row(&a, &format!("{s4}:8081")).unwrap_or_else(|| panic!("no refused:\n{a}"));
    assert!(refused.contains("RESET"), "{refused}");
    assert_eq!(
        connections(&a),
        connections(&b),
        "tcpmon (left) and tcptrack (right) list different connections:\n{a}\n{b}"
    );

    // -r 3: the reset connection leaves both screens.
    std::thread::sleep(Duration::from_millis(3500));
    let a = ours.screen();
    assert!(
        row(&a, &format!("{s4}:8081")).is_none(),
        "still shown after -r 3:\n{a}"
    );
    assert!(row(&a, &format!("{s4}:9000")).is_some(), "{a}");
    assert!(row(&theirs.screen(), &format!("{s4}:8081")).is_none());

    ours.keys("q");
    ours.wait_for("EXIT=0");
    theirs.keys("q");
}
