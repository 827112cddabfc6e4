//! Exact at full speed: a bulk transfer through a veth pair as fast as the
//! machine moves it, on both CPUs, nothing pinned, offloads on and off, TC
//! and native XDP. The sender's own kernel counts what it sent and resent
//! (`/proc/net/snmp` in its namespace); tcpmon, watching the sender's
//! interface, must count the same, and the same as its replay of tcpdump's
//! capture where that capture holds every packet.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::netns::{Lab, can_run_kernel_tests, signal, wait_for_stderr};
use serde_json::Value;

const TCPMON: &str = env!("CARGO_BIN_EXE_tcpmon");
const PORT: u16 = 5001;

#[test]
fn live_retransmits_equal_the_senders_count_at_full_speed() {
    if !can_run_kernel_tests("live_retransmits_equal_the_senders_count_at_full_speed") {
        return;
    }
    let mut replayed = 0;
    for (n, offloads, xdp) in [
        (21, false, "off"),
        (22, false, "native"),
        (23, true, "off"),
        (24, true, "native"),
    ] {
        replayed += transfer(n, offloads, xdp) as u32;
    }
    // tcpdump may miss packets that the hooks saw (a veth whose queue is
    // stopped drops after the TC hook, before the tap); at least one
    // capture must have been complete for the comparison to mean anything.
    assert!(replayed > 0, "no capture held every packet");
}

/// The TCP counters of the namespace `ns` (fresh, so they are this test's).
fn snmp_tcp(lab: &Lab, ns: &str) -> (u64, u64) {
    let out = common::netns::run(lab.cmd(ns, "cat").arg("/proc/net/snmp"));
    let text = String::from_utf8_lossy(&out.stdout);
    let mut tcp = text.lines().filter(|l| l.starts_with("Tcp:"));
    let (names, values) = (tcp.next().unwrap(), tcp.next().unwrap());
    let field = |name: &str| -> u64 {
        let i = names.split_whitespace().position(|n| n == name).unwrap();
        values.split_whitespace().nth(i).unwrap().parse().unwrap()
    };
    (field("OutSegs"), field("RetransSegs"))
}

/// The transfer's connection in `top --json` output: (packets to the
/// server, retransmits to the server).
fn connection(json: &[u8], server: &str) -> (u64, u64) {
    let lines: Vec<Value> = String::from_utf8_lossy(json)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|v: &Value| v["server"] == server)
        .collect();
    assert_eq!(lines.len(), 1, "one connection to {server}: {lines:#?}");
    let v = &lines[0];
    (
        v["packets_to_server"].as_u64().unwrap(),
        v["retransmits"].as_u64().unwrap(),
    )
}

/// One transfer of 3 s with 1% of the data lost after every observer;
/// true when tcpdump's capture was complete and its replay compared.
fn transfer(n: u8, offloads: bool, xdp: &str) -> bool {
    let what = format!(
        "offloads {}, --xdp {xdp}",
        if offloads { "on" } else { "off" }
    );
    let mut lab = Lab::new(n);
    if !offloads {
        lab.disable_offloads();
    }
    lab.lose_data_to(PORT, 1);
    let server_ns = lab.server_ns.clone();
    let (ns, dev) = (lab.client_ns.clone(), lab.client_if.clone());
    let mut sink = lab.cmd(&server_ns, "nc");
    sink.args(["-l", "-p", &PORT.to_string()])
        .stdout(Stdio::null());
    lab.spawn(sink);
    lab.wait_listening(PORT);

    let dir = common::tempdir(&format!("exact{n}"));
    let pcap = dir.join("capture.pcap");
    let dump = lab.start_tcpdump_snap(&ns, &dev, &pcap, Some("tcp"), 128);
    let mut mon = lab.cmd(&ns, TCPMON);
    mon.args(["top", "--json", "--xdp", xdp, "-i", &dev])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mon = lab.spawn(mon);
    let _log = wait_for_stderr(lab.child(mon), "watching", Duration::from_secs(20));

    let (out_before, retrans_before) = snmp_tcp(&lab, &ns);
    let sent = lab
        .cmd(&ns, "sh")
        .args([
            "-c",
            &format!("timeout 3 nc -N {} {PORT} < /dev/zero", lab.server_v4),
        ])
        .status()
        .unwrap();
    // timeout's 124: the 3 s ran out, as they should.
    assert_eq!(sent.code(), Some(124), "{what}: nc ended early");
    std::thread::sleep(Duration::from_millis(300));
    let (out_after, retrans_after) = snmp_tcp(&lab, &ns);
    let (out, retrans) = (out_after - out_before, retrans_after - retrans_before);

    signal(lab.child(mon), libc::SIGINT);
    let live = {
        let child = lab.child(mon);
        let mut json = Vec::new();
        std::io::Read::read_to_end(&mut child.stdout.take().unwrap(), &mut json).unwrap();
        assert!(child.wait().unwrap().success(), "{what}: tcpmon failed");
        json
    };
    let complete = lab.stop_tcpdump(dump);
    let server = format!("{}:{PORT}", lab.server_v4);
    let (packets, live_retrans) = connection(&live, &server);
    eprintln!(
        "{what}: kernel sent {out} segments and resent {retrans}; tcpmon saw {packets} and \
         {live_retrans} resent"
    );
    assert!(
        retrans >= 200,
        "{what}: only {retrans} retransmissions, too few to compare"
    );
    // Within 2% + 2 (the bound; every run here was exact).
    let close = |a: u64, b: u64| a.abs_diff(b) <= b / 50 + 2;
    assert!(
        close(live_retrans, retrans),
        "{what}: tcpmon counted {live_retrans} retransmissions, the sender's kernel {retrans}"
    );
    // Every segment the connection sent, resent ones included, and the
    // sender's kernel sent nothing else.
    assert!(
        close(packets, out + retrans),
        "{what}: tcpmon counted {packets} segments, the kernel {out} + {retrans} resent"
    );

    // With offloads on the capture holds super-packets, which a replay
    // cannot split: compare it only with one packet per segment.
    let mut compared = false;
    if !complete {
        eprintln!("{what}: tcpdump dropped packets; the replay is not compared");
    }
    if !offloads && complete {
        let replay = Command::new(TCPMON)
            .args(["top", "--json", "-T"])
            .arg(&pcap)
            .output()
            .unwrap();
        assert!(replay.status.success(), "{what}: replay failed");
        let (replay_packets, replay_retrans) = connection(&replay.stdout, &server);
        if replay_packets == packets {
            assert_eq!(
                replay_retrans, live_retrans,
                "{what}: the replay of a complete capture differs from live"
            );
            compared = true;
        } else {
            eprintln!(
                "{what}: the capture holds {replay_packets} of the {packets} segments the \
                 hook saw; not compared"
            );
        }
    }
    let _ = std::fs::remove_dir_all(dir);
    compared
}
