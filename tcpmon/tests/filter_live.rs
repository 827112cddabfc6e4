//! Filter expressions live: `tcpmon top -i IFACE EXPR` in a namespace lab,
//! where the kernel programs run libpcap's program before anything else.

mod common;

use std::io::Read;
use std::process::{Child, Stdio};
use std::time::Duration;

use common::netns::{Lab, can_run_kernel_tests, wait_for_stderr};
use tcpmon::wire::build::TcpBuilder;
use tcpmon_common::tcp::flags::SYN;

const TCPMON: &str = env!("CARGO_BIN_EXE_tcpmon");

/// Lab numbers no other test file uses (grep `Lab::new(`).
const LAB_PORT: u8 = 61;
const LAB_VLAN: u8 = 62;

/// Starts `tcpmon top --json --duration SECS -i IFACE EXPR` in `ns` and
/// waits until it watches.
fn start(lab: &mut Lab, ns: &str, iface: &str, secs: u32, expr: &[&str]) -> usize {
    let mut mon = lab.cmd(ns, TCPMON);
    mon.args([
        "top",
        "--json",
        "--duration",
        &secs.to_string(),
        "-i",
        iface,
    ])
    .args(expr)
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let i = lab.spawn(mon);
    wait_for_stderr(lab.child(i), "watching", Duration::from_secs(30));
    i
}

/// The JSON lines of a finished run.
fn finish(child: &mut Child) -> Vec<serde_json::Value> {
    let mut out = String::new();
    child
        .stdout
        .take()
        .expect("stdout piped")
        .read_to_string(&mut out)
        .expect("read stdout");
    let status = child.wait().expect("wait for tcpmon");
    assert!(status.success(), "tcpmon exited with {status}");
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn servers(conns: &[serde_json::Value]) -> Vec<String> {
    conns
        .iter()
        .map(|c| c["server"].as_str().expect("server").to_string())
        .collect()
}

/// A server on 8080 and one on 8081; `port 8080` keeps only the first's
/// connections, over IPv4 and IPv6.
#[test]
fn live_top_with_port_8080_sees_only_that_ports_connections() {
    if !can_run_kernel_tests("live_top_with_port_8080_sees_only_that_ports_connections") {
        return;
    }
    let mut lab = Lab::new(LAB_PORT);
    let www = std::env::temp_dir().join(format!("tcpmon-filter-live-{}", std::process::id()));
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("f"), vec![b'x'; 50_000]).unwrap();
    lab.http_server(&www, 8080);
    lab.http_server(&www, 8081);
    let (ns, dev) = (lab.client_ns.clone(), lab.client_if.clone());
    let mon = start(&mut lab, &ns, &dev, 6, &["port", "8080"]);
    let (s4, s6) = (lab.server_v4.clone(), lab.server_v6.clone());
    assert_eq!(lab.curl(&format!("http://{s4}:8080/f"), 5), 0);
    assert_eq!(lab.curl(&format!("http://[{s6}]:8080/f"), 5), 0);
    assert_eq!(lab.curl(&format!("http://{s4}:8081/f"), 5), 0);
    assert_eq!(lab.curl(&format!("http://[{s6}]:8081/f"), 5), 0);
    let conns = finish(lab.child(mon));
    let mut seen = servers(&conns);
    seen.sort();
    assert_eq!(
        seen,
        [format!("{s4}:8080"), format!("[{s6}]:8080")],
        "{conns:#?}"
    );
    for c in &conns {
        assert_eq!(c["state"], "CLOSED", "{c}");
        assert!(c["bytes_to_client"].as_u64().unwrap() > 50_000, "{c}");
    }
    let _ = std::fs::remove_dir_all(&www);
}

/// On TC ingress the kernel moves a received packet's outer VLAN tag into
/// skb metadata before the hook runs; the filter must see it where it was on
/// the wire, for every way a program reads it: `vlan N` (the TCI at wire
/// offset 14), loads past the tag through `X` (`tcp[tcpflags]` after
/// `vlan`), and raw reads of the tag's bytes (`ether[12:2]`, the TPID).
/// Tagged and untagged SYNs, written raw onto the client's end of the veth
/// pair (this kernel may have no 8021q module for VLAN devices).
#[test]
fn live_vlan_expressions_see_the_tag_the_kernel_took_out_of_the_frame() {
    if !can_run_kernel_tests("live_vlan_expressions_see_the_tag_the_kernel_took_out_of_the_frame") {
        return;
    }
    let mut lab = Lab::new(LAB_VLAN);
    let (s_ns, s_if) = (lab.server_ns.clone(), lab.server_if.clone());
    let (a, b) = ([10, 9, 0, 1], [10, 9, 0, 2]);
    let syn = |sport: u16, dport: u16| TcpBuilder::v4(a, sport, b, dport).flags(SYN);
    let frames = vec![
        syn(40000, 8080).vlan(100).ethernet(),
        syn(40001, 8080).ethernet(),
        syn(40002, 8080).vlan(200).ethernet(),
        syn(40003, 9090).vlan(100).ethernet(),
        syn(40004, 8080).qinq(300, 100).ethernet(),
    ];
    for (expr, clients) in [
        ("vlan 100 and tcp port 8080", &[40000][..]),
        (
            "vlan and tcp[tcpflags] & tcp-syn != 0 and tcp dst port 8080",
            &[40000, 40002],
        ),
        (
            "ether[12:2] = 0x8100 and ether[14:2] & 0xfff = 100 and ether[16:2] = 0x800",
            &[40000, 40003],
        ),
    ] {
        let words: Vec<&str> = expr.split(' ').collect();
        let mon = start(&mut lab, &s_ns, &s_if, 3, &words);
        lab.send_raw(&frames);
        let conns = finish(lab.child(mon));
        let mut seen: Vec<u16> = conns
            .iter()
            .map(|c| {
                let client = c["client"].as_str().expect("client");
                client.rsplit(':').next().unwrap().parse().expect("port")
            })
            .collect();
        seen.sort();
        assert_eq!(seen, clients, "{expr}: {conns:#?}");
        if let Some(c) = conns.iter().find(|c| c["client"] == "10.9.0.1:40000") {
            assert_eq!(c["vlan"], 100, "{c}");
            assert_eq!(c["state"], "SYN_SENT", "{c}");
        }
    }
}
