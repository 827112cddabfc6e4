//! `top` as a whole app, driven by a scripted source instead of a backend
//! and drawn on ratatui's `TestBackend`: the same view and run loop as live
//! and replay, with the screen read back cell by cell. (top_tui.rs runs the
//! binary in a real terminal.)

use ratatui::backend::TestBackend;
use tcpmon::engine::FlowTable;
use tcpmon::run::script::{Line, Script};
use tcpmon::run::{self, Keys, Signals, Stop};
use tcpmon::view::top::view::{Mode, TopView};
use tcpmon::view::top::{TopOptions, Tui};
use tcpmon::wire::build::TcpBuilder;
use tcpmon::wire::parse_frame;
use tcpmon_common::tcp::flags::{ACK, PSH, SYN};

const SECOND: u64 = 1_000_000_000;
const LINKTYPE_ETHERNET: u32 = 1;

/// A segment of a connection from 10.0.0.`client`:40000 to 10.0.0.2:80 at
/// `ts_ns`; `from_client` says which way it goes.
fn seg(
    client: u8,
    from_client: bool,
    flags: u8,
    seq: u32,
    ack: u32,
    len: usize,
    ts_ns: u64,
) -> Line {
    let (c, s) = ([10, 0, 0, client], [10, 0, 0, 2]);
    let b = match from_client {
        true => TcpBuilder::v4(c, 40000, s, 80),
        false => TcpBuilder::v4(s, 80, c, 40000),
    };
    let frame = b.flags(flags).seq(seq).ack(ack).payload(len).ethernet();
    let pkt = parse_frame(LINKTYPE_ETHERNET, &frame).unwrap();
    let (key, seg) = pkt.to_segment(ts_ns, 1, false);
    Line::Segment(key, seg)
}

/// A handshake and `bytes` of payload from the server, starting at `t`.
fn connection(client: u8, bytes: usize, t: u64) -> Vec<Line> {
    vec![
        seg(client, true, SYN, 100, 0, 0, t),
        seg(client, false, SYN | ACK, 500, 101, 0, t + 1_000),
        seg(client, true, ACK, 101, 501, 0, t + 2_000),
        seg(client, false, PSH | ACK, 501, 101, bytes, t + 3_000),
    ]
}

fn screen_text(tui: &Tui<TestBackend>) -> Vec<String> {
    let buf = tui.terminal.backend().buffer();
    let w = buf.area.width as usize;
    buf.content
        .chunks(w)
        .map(|row| row.iter().map(|c| c.symbol()).collect::<String>())
        .collect()
}

fn headless() -> tcpmon::view::top::view::OpenScreen<TestBackend> {
    Box::new(|| Tui::headless(TestBackend::new(80, 8)))
}

/// Runs `script` through a `top` view in `mode`; returns the view and why
/// the run stopped.
fn run(mode: Mode, live: bool, script: Vec<Line>) -> (TopView<TestBackend, Vec<u8>>, Stop) {
    run_with(mode, live, script, Keys::None)
}

fn run_with(
    mode: Mode,
    live: bool,
    script: Vec<Line>,
    keys: Keys,
) -> (TopView<TestBackend, Vec<u8>>, Stop) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut view =
            TopView::new(TopOptions::default(), mode, live, headless(), Vec::new()).unwrap();
        // As the drivers build it for a screen: rates need the changes.
        let mut table = FlowTable::new(0).track_changes();
        let mut signals = Signals::new().unwrap();
        let opts = run::Options {
            keys,
            queries: None,
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
        (view, stop)
    })
}

#[test]
fn a_followed_screen_redraws_on_ticks_sorts_on_s_and_quits_on_q() {
    let mut script = connection(1, 100, SECOND);
    script.extend(connection(3, 5000, SECOND + 10_000));
    script.push(Line::Tick(2 * SECOND));
    script.push(Script::key('s'));
    script.push(Script::key('s'));
    script.push(Script::key('q'));
    // Never reached: q ends the run.
    script.push(Line::Tick(3 * SECOND));
    let (view, stop) = run(Mode::Tui { follow: true }, true, script);
    assert_eq!(stop, Stop::Quit);
    let s = screen_text(view.screen().unwrap());
    assert_eq!(
        s[0].trim_end(),
        " Client                Server                State        Idle A Speed"
    );
    // Sorted by bytes: the connection with more payload first.
    assert!(
        s[1].starts_with(" 10.0.0.3:40000        10.0.0.2:80           ESTABLISHED"),
        "{s:#?}"
    );
    assert!(
        s[2].starts_with(" 10.0.0.1:40000        10.0.0.2:80           ESTABLISHED"),
        "{s:#?}"
    );
    assert!(
        s.iter().any(|l| l.contains("Unpaused  Sorted by bytes")),
        "{s:#?}"
    );
    assert!(view_out(view).is_empty());
}

#[test]
fn a_replay_shows_its_final_table_at_the_end_and_takes_keys_there() {
    let mut script = connection(1, 100, SECOND);
    script.push(Line::Tick(2 * SECOND));
    script.extend(connection(3, 5000, 2 * SECOND + 10_000));
    script.push(Line::Stop(Stop::End));
    // Typed during the replay: read once the final table is up.
    let (tx, keys) = tokio::sync::mpsc::unbounded_channel();
    for c in ['s', 's', 'p'] {
        let Line::Key(k) = Script::key(c) else {
            unreachable!()
        };
        tx.send(k).unwrap();
    }
    // Then the keys end, as when the terminal goes away: so does the run,
    // leaving the screen as `p` drew it.
    drop(tx);
    let (view, stop) = run_with(
        Mode::Tui { follow: false },
        false,
        script,
        Keys::Given(keys),
    );
    assert_eq!(stop, Stop::End);
    let s = screen_text(view.screen().unwrap());
    assert!(s[1].starts_with(" 10.0.0.3:40000"), "{s:#?}");
    assert!(s[2].starts_with(" 10.0.0.1:40000"), "{s:#?}");
    assert!(
        s.iter().any(|l| l.contains("Paused    Sorted by bytes")),
        "{s:#?}"
    );
    assert!(
        s.iter().any(|l| l.contains("Connections 1-2 of 2")),
        "{s:#?}"
    );
}

#[test]
fn text_output_prints_a_table_each_tick_and_at_the_end() {
    let mut script = connection(1, 100, SECOND);
    script.push(Line::Tick(2 * SECOND));
    script.extend(connection(3, 5000, 2 * SECOND + 10_000));
    script.push(Line::Stop(Stop::Signal));
    let (view, stop) = run(Mode::Text, true, script);
    assert_eq!(stop, Stop::Signal);
    let out = view_out(view);
    let tables: Vec<&str> = out.split_terminator("\n\n").collect();
    assert_eq!(tables.len(), 2, "{out}");
    let first: Vec<&str> = tables[0].lines().collect();
    assert_eq!(first.len(), 2, "{out}");
    assert!(first[0].starts_with("Client "), "{out}");
    assert!(first[1].starts_with("10.0.0.1:40000 "), "{out}");
    assert!(first[1].contains("ESTABLISHED"), "{out}");
    assert!(first[1].ends_with("         4          100"), "{out}");
    let last: Vec<&str> = tables[1].lines().collect();
    assert_eq!(last.len(), 3, "{out}");
    assert!(last[2].starts_with("10.0.0.3:40000 "), "{out}");
    assert!(last[2].ends_with("         4         5000"), "{out}");
}

#[test]
fn json_output_comes_once_at_the_end() {
    let mut script = connection(1, 100, SECOND);
    script.push(Line::Tick(2 * SECOND));
    script.push(Line::Stop(Stop::End));
    let (view, stop) = run(Mode::Json, false, script);
    assert_eq!(stop, Stop::End);
    let out = view_out(view);
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "{out}");
    assert_eq!(lines[0]["client"], "10.0.0.1:40000");
    assert_eq!(lines[0]["bytes_to_client"], 100);
}

fn view_out(view: TopView<TestBackend, Vec<u8>>) -> String {
    String::from_utf8(view.into_out()).unwrap()
}
