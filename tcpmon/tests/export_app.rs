//! `export`'s metrics and `log`'s lines as whole apps, driven by a
//! scripted source the way the kernel feeds the table live: records read
//! again and again as they change, between ticks. Counters count each
//! packet once however often a record is read; what ended leaves the
//! table (and the backend is asked to forget a timed-out handshake).

mod common;

use common::metrics::{parse, sum};
use tcpmon::engine::FlowTable;
use tcpmon::engine::ledger::EndRules;
use tcpmon::run::script::{Line, Script};
use tcpmon::run::{self, Signals};
use tcpmon::view::log::{LogView, Sink};
use tcpmon::view::metrics::{MetricsOptions, MetricsView};
use tcpmon::view::peek::Locality;
use tcpmon::view::peek::view::AtEnd;
use tcpmon_common::{ClientHow, FlowKey, FlowRecord, State};

const S: u64 = 1_000_000_000;

fn key(client_port: u16) -> FlowKey {
    let mut k = FlowKey {
        family: 4,
        port: [80, client_port],
        ..FlowKey::default()
    };
    k.addr[0][..4].copy_from_slice(&[10, 0, 0, 1]);
    k.addr[1][..4].copy_from_slice(&[10, 0, 0, 2]);
    k
}

/// The kernel's record of a connection from endpoint 1 (the client) at
/// time `t`: `sent` packets and bytes each way (to the server first).
fn rec(state: State, first: u64, t: u64, packets: [u64; 2], bytes: [u64; 2]) -> FlowRecord {
    let mut r = FlowRecord::EMPTY;
    r.state = state;
    r.client = 1;
    r.client_how = ClientHow::Syn;
    r.first_ns = first;
    r.syn_first_ns = first;
    r.syn_last_ns = first;
    r.syn_count = 1;
    r.last_ns = t;
    // [server, client] endpoints: the client sends `packets[0]`.
    r.packets = [packets[1], packets[0]];
    r.bytes = [bytes[1], bytes[0]];
    if state != State::SynSent {
        r.established_ns = first + 2_000_000;
    }
    r
}

fn script() -> Vec<Line> {
    vec![
        Line::Update(key(1), rec(State::SynSent, S, S, [1, 0], [0, 0])),
        Line::Tick(2 * S),
        Line::Update(key(1), rec(State::Established, S, 2 * S, [3, 2], [100, 0])),
        Line::Update(key(2), rec(State::SynSent, 2 * S, 2 * S, [1, 0], [0, 0])),
        Line::Tick(3 * S),
        // Read again unchanged, then changed.
        Line::Update(key(1), rec(State::Established, S, 2 * S, [3, 2], [100, 0])),
        Line::Tick(4 * S),
        Line::Update(
            key(1),
            rec(State::Established, S, 5 * S, [5, 6], [100, 4000]),
        ),
        // Key 2's handshake is quiet for more than 3 s.
        Line::Tick(6 * S),
    ]
}

const RULES: EndRules = EndRules {
    linger_ns: 2 * S,
    handshake_timeout_ns: 3 * S,
    idle_ns: None,
};

fn run_view<V: run::View>(view: &mut V) -> Script {
    let mut source = Script::new(script());
    let mut table = FlowTable::new(0).track_changes();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let mut signals = Signals::new().unwrap();
            run::run(
                &mut source,
                view,
                &mut table,
                &mut signals,
                run::Options::default(),
            )
            .await
            .unwrap();
        });
    source
}

#[test]
fn metrics_count_each_packet_once() {
    let opts = MetricsOptions {
        ports: vec![80],
        timeout_ns: RULES.handshake_timeout_ns,
        max_pending: 100,
        icmp: false,
        rules: RULES,
        locality: Locality::Answering(Default::default()),
        at_end: AtEnd::ExpireDue,
    };
    let mut view = MetricsView::new(opts, Some(Vec::new()));
    let source = run_view(&mut view);
    let text = String::from_utf8(view.into_print().unwrap()).unwrap();
    let m = parse(&text);
    let get = |name, with: &[&str]| sum(&m, name, with);
    let ts = "direction=\"to_server\"";
    let tc = "direction=\"to_client\"";
    assert_eq!(
        get("tcpmon_packets_total", &[ts, "port=\"80\""]),
        6.0,
        "{text}"
    );
    assert_eq!(get("tcpmon_packets_total", &[tc]), 6.0);
    assert_eq!(get("tcpmon_payload_bytes_total", &[ts]), 100.0);
    assert_eq!(get("tcpmon_payload_bytes_total", &[tc]), 4000.0);
    assert_eq!(get("tcpmon_handshake_rtt_seconds_count", &[]), 1.0);
    assert_eq!(get("tcpmon_handshake_rtt_seconds_sum", &[]), 0.002);
    // Key 2 timed out and left; key 1 is established.
    assert_eq!(get("tcpmon_flows_tracked", &[]), 1.0);
    assert_eq!(get("tcpmon_connections", &["state=\"established\""]), 1.0);
    assert_eq!(get("tcpmon_connections", &[]), 1.0);
    assert_eq!(*source.forgotten.borrow(), [key(2)]);
}

#[test]
fn log_writes_each_connection_once_when_it_ends() {
    let mut view = LogView::new(RULES, Sink::Memory(Vec::new()));
    run_view(&mut view);
    let sink = view.into_sink();
    let lines: Vec<serde_json::Value> = std::str::from_utf8(sink.memory())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let got: Vec<(String, String, u64)> = lines
        .iter()
        .map(|l| {
            (
                l["client"].as_str().unwrap().to_string(),
                l["end"].as_str().unwrap().to_string(),
                l["packets_to_client"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("10.0.0.2:2".to_string(), "timeout".to_string(), 0),
            ("10.0.0.2:1".to_string(), "open".to_string(), 6),
        ]
    );
}
