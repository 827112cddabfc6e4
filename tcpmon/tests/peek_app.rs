//! `peek` as a whole app, driven by a scripted source: the same view and
//! run loop as live and replay, with what it prints read back.

use std::collections::HashSet;

use tcpmon::engine::FlowTable;
use tcpmon::run::script::{Line, Script};
use tcpmon::run::{self, Keys, Query, Signals, Stop};
use tcpmon::view::peek::filter::Filters;
use tcpmon::view::peek::view::{AtEnd, PeekOptions, PeekView};
use tcpmon::view::peek::{Locality, PeekStats};
use tcpmon::wire::build::TcpBuilder;
use tcpmon::wire::parse_frame;
use tcpmon_common::tcp::flags::{ACK, SYN};

const SECOND: u64 = 1_000_000_000;

fn seg(client: u8, from_client: bool, flags: u8, seq: u32, ack: u32, ts_ns: u64) -> Line {
    let (c, s) = ([10, 0, 0, client], [10, 0, 0, 2]);
    let b = match from_client {
        true => TcpBuilder::v4(c, 40000, s, 80),
        false => TcpBuilder::v4(s, 80, c, 40000),
    };
    let frame = b.flags(flags).seq(seq).ack(ack).ethernet();
    let (key, seg) = parse_frame(1, &frame).unwrap().to_segment(ts_ns, 1, false);
    Line::Segment(key, seg)
}

/// Runs `script` through a `peek` view with a 1 s timeout and statistics
/// queries queued before the run (`asks`: REFRESH or not, in order).
/// Returns what was printed, the queries' answers and why the run stopped.
fn run(script: Vec<Line>, asks: &[bool]) -> (String, Vec<String>, Stop) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let filters = Filters::parse(&["web:RX@*:80"]).unwrap();
        let local: HashSet<_> = ["10.0.0.2".parse().unwrap()].into();
        let stats = PeekStats::new(filters, Locality::Fixed(local), false);
        let opts = PeekOptions {
            timeout_ns: SECOND,
            max_pending: 100,
            icmp: false,
            quiet: false,
            clock_offset_ns: 0,
            at_end: AtEnd::ExpireAll,
        };
        let mut view = PeekView::new(opts, stats, Vec::new()).unwrap();
        let (tx, queries) = tokio::sync::mpsc::channel(asks.len());
        let mut answers = Vec::new();
        for &refresh in asks {
            let (reply, answer) = tokio::sync::oneshot::channel();
            tx.send(Query { refresh, reply }).await.unwrap();
            answers.push(answer);
        }
        let mut table = FlowTable::new(0);
        let mut signals = Signals::new().unwrap();
        let opts = run::Options {
            keys: Keys::None,
            queries: Some(queries),
            deadline: None,
        };
        let stop = run::run(
            &mut Script::new(script),
            &mut view,
            &mut table,
            &mut signals,
            opts,
        )
        .await
        .unwrap();
        let out = String::from_utf8(view.into_out()).unwrap();
        let mut docs = Vec::new();
        for a in answers {
            docs.push(a.await.unwrap());
        }
        (out, docs, stop)
    })
}

#[test]
fn sessions_finish_on_events_and_ticks_and_the_summary_ends_the_run() {
    let script = vec![
        // Client 1 connects; client 3's SYN goes unanswered.
        seg(1, true, SYN, 100, 0, SECOND),
        seg(3, true, SYN, 700, 0, SECOND + 1_000),
        seg(1, false, SYN | ACK, 500, 101, SECOND + 2_000),
        seg(1, true, ACK, 101, 501, SECOND + 3_000),
        Line::Tick(SECOND + 500_000_000),
        // Client 3's session times out here, on packet time.
        Line::Tick(2 * SECOND + 100_000_000),
        Line::Stop(Stop::Signal),
    ];
    let (out, answers, stop) = run(script, &[false]);
    let answer = &answers[0];
    assert_eq!(stop, Stop::Signal);
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with(" TIME(s) |       TIMESTAMP"), "{out}");
    let sessions: Vec<&&str> = lines.iter().filter(|l| l.contains("10.0.0.")).collect();
    assert_eq!(sessions.len(), 2, "{out}");
    assert!(
        sessions[0].contains("10.0.0.1:40000") && sessions[0].contains("success"),
        "{out}"
    );
    assert!(
        sessions[1].contains("10.0.0.3:40000") && sessions[1].contains("timeout"),
        "{out}"
    );
    assert!(
        out.contains("========== TCPEEK SUMMARY =========="),
        "{out}"
    );
    // The query is answered between two inputs, whichever came first: at
    // most the one success is counted.
    let doc: serde_json::Value = serde_json::from_str(answer).unwrap();
    let total = doc[0]["web"]["success"]["total"].as_u64();
    assert!(matches!(total, Some(0 | 1)), "{answer}");
}

#[test]
fn queries_waiting_together_are_answered_from_one_reading_in_order() {
    let script = vec![
        seg(1, true, SYN, 100, 0, SECOND),
        seg(1, false, SYN | ACK, 500, 101, SECOND + 2_000),
        seg(1, true, ACK, 101, 501, SECOND + 3_000),
        Line::Stop(Stop::Signal),
    ];
    // GET, REFRESH, REFRESH, GET, all waiting before the run starts: they
    // are answered together, between the same two inputs.
    let (_, answers, _) = run(script, &[false, true, true, false]);
    let docs: Vec<serde_json::Value> = answers
        .iter()
        .map(|a| serde_json::from_str(a).unwrap())
        .collect();
    let total = |d: &serde_json::Value| d[0]["web"]["success"]["total"].as_u64().unwrap();
    assert_eq!(
        answers[0], answers[3],
        "GETs asked together share a document"
    );
    assert!(docs[0][1]["pcap"].is_object(), "{}", answers[0]);
    // The first REFRESH has everything so far, the second the nothing since.
    assert_eq!(total(&docs[1]), total(&docs[0]), "{answers:?}");
    assert_eq!(total(&docs[2]), 0, "{answers:?}");
    assert!(docs[1].get(1).is_none() && docs[2].get(1).is_none());
}
