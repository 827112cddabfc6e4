//! The kernel programs, run by the kernel itself on crafted packets
//! (BPF_PROG_TEST_RUN), checked through what they leave in FLOWS, COUNTERS
//! and the EVENTS ring buffer.
//!
//! Loading programs needs root. Without it these tests print a skip notice
//! and pass on a developer machine; under CI (env `CI` set) they fail, since
//! a silently skipped test would look like a passing one.
//!
//! Live traffic through attached programs is tested in `live.rs`; the
//! per-packet cost benchmark is the `kernel_cost` example, which
//! `cargo xtask bench` runs.

mod common;

use std::time::Duration;

use aya::programs::{ProgramError, TestRunResult};
use tcpmon::backend::ebpf::{
    self, EbpfBackend, LoadOptions, PROG_BENCH_EMPTY_TC, PROG_BENCH_EMPTY_XDP, PROG_TC, PROG_XDP,
    ReadKind,
};
use tcpmon::engine::FlowTable;
use tcpmon::wire::build::{Ext, TcpBuilder, arp_frame, udp4_frame};
use tcpmon::wire::{linktype, parse_frame};
use tcpmon_common::tcp::flags::*;
use tcpmon_common::{ClientHow, Counter, EventKind, FlowKey, FlowRecord, State};

use common::kernel::{assert_passed, pppoe, run_passes, skb_ctx, v6};
use common::netns::can_run_kernel_tests;

const CLIENT: [u8; 4] = [10, 0, 0, 2];
const SERVER: [u8; 4] = [10, 0, 0, 1];
const CPORT: u16 = 40000;

fn v4_16(a: [u8; 4]) -> [u8; 16] {
    let mut x = [0; 16];
    x[..4].copy_from_slice(&a);
    x
}

/// The client's side of a v4 conversation with SERVER:80.
fn c2s() -> TcpBuilder {
    TcpBuilder::v4(CLIENT, CPORT, SERVER, 80)
}

fn s2c() -> TcpBuilder {
    TcpBuilder::v4(SERVER, 80, CLIENT, CPORT)
}

struct Kernel {
    be: EbpfBackend,
}

impl Kernel {
    fn load() -> Option<Kernel> {
        Kernel::load_with(false)
    }

    fn load_with(split_vlans: bool) -> Option<Kernel> {
        Kernel::load_opts(LoadOptions {
            flow_capacity: 1024,
            split_vlans,
            ..LoadOptions::default()
        })
    }

    fn load_opts(opts: LoadOptions) -> Option<Kernel> {
        if !can_run_kernel_tests("the kernel tests (sudo -E cargo test -p tcpmon --test kernel)") {
            return None;
        }
        let ebpf = ebpf::load_with(&opts).unwrap_or_else(|e| panic!("{e:?}"));
        Some(Kernel {
            be: EbpfBackend::new(ebpf).expect("backend over the loaded programs"),
        })
    }

    fn try_run(
        &self,
        prog: &str,
        data: &[u8],
        ctx: Option<&[u8]>,
        repeat: u32,
    ) -> Result<TestRunResult, ProgramError> {
        common::kernel::try_run(&self.be, prog, data, ctx, repeat)
    }

    /// Runs `prog` once and checks that it let the packet through.
    fn run(&self, prog: &str, data: &[u8]) {
        self.run_ctx(prog, data, None);
    }

    fn run_ctx(&self, prog: &str, data: &[u8], ctx: Option<&[u8]>) {
        run_passes(&self.be, prog, data, ctx);
    }

    fn tc(&self, data: &[u8]) {
        self.run(PROG_TC, data);
    }

    fn flows(&self) -> Vec<(FlowKey, FlowRecord)> {
        let mut out = Vec::new();
        self.be.snapshot(&mut out).expect("snapshot of FLOWS");
        out
    }

    fn only_flow(&self) -> (FlowKey, FlowRecord) {
        let flows = self.flows();
        assert_eq!(flows.len(), 1, "{flows:#?}");
        flows[0]
    }

    fn counters(&self) -> [u64; Counter::COUNT as usize] {
        self.be.counters().expect("COUNTERS")
    }

    fn counter(&self, c: Counter) -> u64 {
        self.counters()[c as usize]
    }

    /// Which counter one run of `prog` on `frame` moved (exactly one must).
    fn verdict(&self, prog: &str, frame: &[u8]) -> Counter {
        self.verdict_unless_refused(prog, frame)
            .unwrap_or_else(|| panic!("the kernel refused {} bytes for {prog}", frame.len()))
    }

    /// `verdict`, or `None` when the kernel refuses to run `prog` on
    /// `frame`: the skb test harness wants a whole L3 header (20 bytes
    /// after Ethernet for IPv4, 40 for IPv6) and XDP a whole Ethernet one.
    fn verdict_unless_refused(&self, prog: &str, frame: &[u8]) -> Option<Counter> {
        let before = self.counters();
        match self.try_run(prog, frame, None, 1) {
            Ok(r) => assert_passed(prog, &r),
            Err(e) => {
                let limit = if prog == PROG_TC { 14 + 40 } else { 14 };
                assert!(frame.len() < limit, "{prog} on {} bytes: {e}", frame.len());
                assert_eq!(self.counters(), before, "a refused run must not count");
                return None;
            }
        }
        let after = self.counters();
        let moved: Vec<Counter> = Counter::ALL
            .iter()
            .copied()
            .filter(|&c| after[c as usize] != before[c as usize])
            // Not verdicts: what the packet made (a record) or lost (an event).
            .filter(|&c| {
                !matches!(
                    c,
                    Counter::EventsLost | Counter::FlowsCreated4 | Counter::FlowsCreated6
                )
            })
            .collect();
        assert_eq!(
            moved.len(),
            1,
            "{prog} on {frame:02x?}: counters moved {moved:?}"
        );
        assert_eq!(
            after[moved[0] as usize] - before[moved[0] as usize],
            1,
            "{prog}: {:?} moved by more than one",
            moved[0]
        );
        Some(moved[0])
    }
}

/// What the user-space parser makes of `frame`, as a kernel counter.
fn user_space_verdict(frame: &[u8]) -> Counter {
    match parse_frame(linktype::ETHERNET, frame) {
        Ok(_) => Counter::Tcp,
        Err(skip) => skip.counter().expect("an Ethernet frame maps to a counter"),
    }
}

fn handshake(k: &Kernel, prog: &str) {
    k.run(prog, &c2s().flags(SYN).seq(1000).ethernet());
    k.run(prog, &s2c().flags(SYN | ACK).seq(5000).ack(1001).ethernet());
    k.run(prog, &c2s().flags(ACK).seq(1001).ack(5001).ethernet());
}

fn check_established(k: &Kernel, prog: &str) {
    let (key, rec) = k.only_flow();
    assert_eq!(key.family, 4);
    assert_eq!(
        key.addr,
        [v4_16(SERVER), v4_16(CLIENT)],
        "lower endpoint first"
    );
    assert_eq!(key.port, [80, CPORT]);
    assert_eq!(key.vlan, 0);
    assert_eq!(rec.state, State::Established, "{prog}: {rec:#?}");
    assert_eq!(rec.client, 1, "the SYN's sender (endpoint 1) is the client");
    assert_eq!(rec.client_how, ClientHow::Syn);
    assert_eq!((rec.syn_count, rec.synack_count), (1, 1));
    assert_eq!((rec.syn_seq, rec.synack_seq), (1000, 5000));
    assert_eq!(rec.packets, [1, 2], "server sent one, client two");
    assert_eq!(rec.bytes, [0, 0]);
    assert!(rec.first_ns > 0 && rec.syn_first_ns <= rec.established_ns);
    assert!(rec.handshake_rtt_ns().is_some());
    assert_eq!(k.counter(Counter::Tcp), 3);
}

#[test]
fn v4_handshake_through_tc_establishes_the_flow() {
    let Some(k) = Kernel::load() else { return };
    handshake(&k, PROG_TC);
    check_established(&k, PROG_TC);
    // Data counts bytes, not events.
    k.tc(&c2s()
        .flags(ACK | PSH)
        .seq(1001)
        .ack(5001)
        .payload(100)
        .ethernet());
    let (_, rec) = k.only_flow();
    assert_eq!(rec.bytes, [0, 100]);
    assert_eq!(rec.packets, [1, 3]);
}

#[test]
fn v4_handshake_through_xdp_establishes_the_flow() {
    let Some(k) = Kernel::load() else { return };
    handshake(&k, PROG_XDP);
    check_established(&k, PROG_XDP);
}

/// Steady segments may take the coarse clock: `last_ns` still never goes
/// back and never falls behind the handshake's precise times; the precise
/// clock alone (`coarse_clock: false`, as on kernels before 5.11) works too.
#[test]
fn last_seen_moves_forward_with_either_clock() {
    for coarse_clock in [true, false] {
        let Some(k) = Kernel::load_opts(LoadOptions {
            flow_capacity: 1024,
            coarse_clock,
            ..LoadOptions::default()
        }) else {
            return;
        };
        for prog in [PROG_TC, PROG_XDP] {
            handshake(&k, prog);
            let (_, est) = k.only_flow();
            assert_eq!(est.state, State::Established);
            assert_eq!(est.last_ns, est.established_ns);
            let mut last = est.last_ns;
            for i in 0..3 {
                let data = c2s().flags(ACK | PSH).seq(1001 + i * 10).ack(5001);
                k.run(prog, &data.payload(10).ethernet());
                let (_, rec) = k.only_flow();
                assert!(
                    rec.last_ns >= last,
                    "{prog} coarse {coarse_clock}: {rec:#?}"
                );
                assert_eq!(rec.established_ns, est.established_ns);
                last = rec.last_ns;
            }
            std::thread::sleep(Duration::from_millis(30));
            k.run(prog, &s2c().flags(ACK).seq(5001).ack(1031).ethernet());
            let (_, rec) = k.only_flow();
            assert!(
                rec.last_ns > est.last_ns + 10_000_000,
                "{prog} coarse {coarse_clock}: the clock moved on by 30 ms: {rec:#?}"
            );
            // A FIN takes the precise clock, still not before last_ns.
            k.run(prog, &s2c().flags(FIN | ACK).seq(5001).ack(1031).ethernet());
            let (_, fin) = k.only_flow();
            assert_eq!(fin.state, State::Closing);
            assert!(fin.last_ns >= rec.last_ns);
            // Next program, fresh connection on the same tuple.
            k.run(prog, &c2s().flags(RST).seq(1031).ethernet());
            k.run(prog, &c2s().flags(SYN).seq(1).ethernet());
            k.run(prog, &c2s().flags(RST).seq(2).ethernet());
        }
    }
}

#[test]
fn gso_super_packets_count_their_segments_on_tc() {
    let Some(k) = Kernel::load() else { return };
    handshake(&k, PROG_TC);
    let ctx = skb_ctx(10, 0);
    let data = c2s()
        .flags(ACK)
        .seq(1001)
        .ack(5001)
        .payload(1000)
        .ethernet();
    k.run_ctx(PROG_TC, &data, Some(&ctx));
    let (_, rec) = k.only_flow();
    assert_eq!(rec.packets, [1, 12]);
    assert_eq!(rec.bytes, [0, 1000]);
    // gso_segs 0 (not a GSO packet) is still one packet.
    k.run_ctx(PROG_TC, &data, Some(&skb_ctx(0, 0)));
    assert_eq!(k.only_flow().1.packets, [1, 13]);
}

#[test]
fn zero_ip_total_length_falls_back_to_the_packet_length() {
    let Some(k) = Kernel::load() else { return };
    let mut f = c2s().flags(ACK).payload(500).ethernet();
    f[16..18].copy_from_slice(&[0, 0]); // TSO / BIG TCP
    k.tc(&f);
    k.run(PROG_XDP, &f);
    assert_eq!(k.only_flow().1.bytes, [0, 1000]);
}

#[tokio::test]
async fn the_ring_buffer_receives_handshake_events() {
    let Some(mut k) = Kernel::load() else { return };
    handshake(&k, PROG_TC);
    let mut events = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), k.be.read_events(&mut events))
        .await
        .expect("events within 5 s")
        .expect("reading events");
    let kinds: Vec<_> = events.iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        [EventKind::Opened, EventKind::SynAck, EventKind::Established]
    );
    let (key, rec) = k.only_flow();
    let last = events.last().expect("three events");
    assert_eq!(last.key, key);
    assert_eq!(last.rec.state, State::Established);
    assert_eq!(
        last.rec, rec,
        "the event carries the record after the change"
    );
    assert_eq!(events[0].rec.state, State::SynSent);
    // Data segments emit nothing.
    k.tc(&c2s().flags(ACK).seq(1001).ack(5001).payload(10).ethernet());
    let mut more = Vec::new();
    assert_eq!(k.be.try_read_events(&mut more), 0, "{more:?}");
    assert_eq!(k.counter(Counter::EventsLost), 0);
}

#[test]
fn ipv6_with_hop_by_hop_and_destination_options() {
    let Some(k) = Kernel::load() else { return };
    let f = TcpBuilder::v6(v6(1), 5555, v6(2), 443)
        .ext(Ext::HopByHop)
        .ext(Ext::DestOptions)
        .flags(SYN)
        .seq(77)
        .payload(20)
        .ethernet();
    assert_eq!(k.verdict(PROG_TC, &f), Counter::Tcp);
    assert_eq!(k.verdict(PROG_XDP, &f), Counter::Tcp);
    let (key, rec) = k.only_flow();
    assert_eq!(key.family, 6);
    assert_eq!(key.addr, [v6(1), v6(2)]);
    assert_eq!(key.port, [5555, 443]);
    assert_eq!(rec.bytes, [40, 0], "payload after both extension headers");
    assert_eq!(rec.client, 0);
    // All four kinds, the most the parser walks.
    let f = TcpBuilder::v6(v6(1), 5555, v6(2), 443)
        .ext(Ext::HopByHop)
        .ext(Ext::Routing)
        .ext(Ext::DestOptions)
        .ext(Ext::Fragment(0))
        .flags(ACK)
        .payload(7)
        .ethernet();
    assert_eq!(k.verdict(PROG_TC, &f), Counter::Tcp);
    assert_eq!(k.only_flow().1.bytes, [47, 0]);
}

#[test]
fn vlan_ids_go_to_the_record_and_with_split_vlans_to_the_key() {
    let Some(k) = Kernel::load() else { return };
    k.tc(&c2s().flags(SYN).seq(1).vlan(42).ethernet());
    k.tc(&s2c()
        .flags(SYN | ACK)
        .seq(9)
        .ack(2)
        .qinq(100, 200)
        .ethernet());
    let (key, rec) = k.only_flow();
    assert_eq!(key.vlan, 0, "VLANs do not split flows by default");
    assert_eq!(rec.vlan, [200, 42], "innermost id, per direction");
    assert_eq!(rec.state, State::SynAckAck);

    let Some(k) = Kernel::load_with(true) else {
        return;
    };
    k.tc(&c2s().flags(SYN).seq(1).vlan(42).ethernet());
    k.run(PROG_XDP, &c2s().flags(SYN).seq(1).qinq(100, 200).ethernet());
    let mut flows = k.flows();
    flows.sort_by_key(|(key, _)| key.vlan);
    let vlans: Vec<u16> = flows.iter().map(|(key, _)| key.vlan).collect();
    assert_eq!(
        vlans,
        [42, 200],
        "one flow per VLAN, keyed by the innermost id"
    );
    // 802.1ad and the old 0x9100 outer tags are followed too.
    let mut f = c2s().flags(SYN).seq(1).qinq(7, 300).ethernet();
    f[12..14].copy_from_slice(&0x9100u16.to_be_bytes());
    assert_eq!(k.verdict(PROG_TC, &f), Counter::Tcp);
    assert!(k.flows().iter().any(|(key, _)| key.vlan == 300));
}

#[test]
fn ipv4_options_are_skipped() {
    let Some(k) = Kernel::load() else { return };
    let f = c2s()
        .flags(SYN)
        .seq(5)
        .ip_options(&[0x94, 0x04, 0, 0, 1, 1, 1, 1]) // router alert, NOPs
        .tcp_options(&[2, 4, 0x05, 0xb4, 1, 3, 3, 7])
        .payload(33)
        .ethernet();
    assert_eq!(k.verdict(PROG_TC, &f), Counter::Tcp);
    let (key, rec) = k.only_flow();
    assert_eq!(key.port, [80, CPORT]);
    assert_eq!(rec.bytes, [0, 33]);
    // The longest header there is: IHL 15.
    let f = c2s().flags(ACK).ip_options(&[1; 40]).payload(3).ethernet();
    assert_eq!(k.verdict(PROG_XDP, &f), Counter::Tcp);
    assert_eq!(k.only_flow().1.bytes, [0, 36]);
}

#[test]
fn pppoe_sessions_are_followed() {
    let Some(k) = Kernel::load() else { return };
    let f = pppoe(&c2s().flags(SYN).seq(3).payload(4).ethernet(), 0x0021);
    assert_eq!(user_space_verdict(&f), Counter::Tcp);
    assert_eq!(k.verdict(PROG_TC, &f), Counter::Tcp);
    assert_eq!(k.only_flow().1.bytes, [0, 4]);
    let f6 = TcpBuilder::v6(v6(1), 1, v6(2), 2).ethernet();
    assert_eq!(k.verdict(PROG_XDP, &pppoe(&f6, 0x0057)), Counter::Tcp);
    // LCP and friends are not IP.
    assert_eq!(k.verdict(PROG_TC, &pppoe(&f6, 0xc021)), Counter::NotIp);
}

#[test]
fn non_first_fragments_are_counted_not_parsed() {
    let Some(k) = Kernel::load() else { return };
    let v4 = c2s().flags(ACK).fragment_offset(185).ethernet();
    assert_eq!(k.verdict(PROG_TC, &v4), Counter::Fragment);
    assert_eq!(k.verdict(PROG_XDP, &v4), Counter::Fragment);
    let v6f = TcpBuilder::v6(v6(1), 1, v6(2), 2)
        .ext(Ext::Fragment(3))
        .ethernet();
    assert_eq!(k.verdict(PROG_TC, &v6f), Counter::Fragment);
    assert!(k.flows().is_empty());
    // A first fragment carries the TCP header.
    let mut first = c2s().flags(SYN).ethernet();
    first[20] |= 0x20; // more fragments
    assert_eq!(k.verdict(PROG_TC, &first), Counter::Tcp);
}

#[test]
fn arp_is_not_ip_and_udp_is_not_tcp() {
    let Some(k) = Kernel::load() else { return };
    for prog in [PROG_TC, PROG_XDP] {
        assert_eq!(k.verdict(prog, &arp_frame()), Counter::NotIp);
        assert_eq!(
            k.verdict(prog, &udp4_frame(CLIENT, SERVER)),
            Counter::NotTcp
        );
    }
    assert!(k.flows().is_empty());
}

#[test]
fn deeper_stacks_than_followed_are_too_deep() {
    let Some(k) = Kernel::load() else { return };
    let f = c2s().vlan(1).vlan(2).vlan(3).ethernet();
    assert_eq!(k.verdict(PROG_TC, &f), Counter::TooDeep);
    let deep = (0..5).fold(TcpBuilder::v6(v6(1), 1, v6(2), 2), |b, _| {
        b.ext(Ext::DestOptions)
    });
    assert_eq!(k.verdict(PROG_XDP, &deep.ethernet()), Counter::TooDeep);
}

#[test]
fn bogus_header_lengths_are_malformed() {
    let Some(k) = Kernel::load() else { return };
    let good = c2s().flags(SYN).ethernet();
    let mut ihl4 = good.clone();
    ihl4[14] = 0x44;
    let mut ihl15 = good.clone();
    ihl15[14] = 0x4f; // 60-byte header in a 40-byte packet
    let mut version = good.clone();
    version[14] = 0x65;
    let mut short_total = good.clone();
    short_total[16..18].copy_from_slice(&10u16.to_be_bytes());
    let mut doff4 = good.clone();
    doff4[14 + 20 + 12] = 0x40;
    let ethernet_only = good[..14].to_vec();
    for (what, f) in [
        ("IHL 4", &ihl4),
        ("IHL 15", &ihl15),
        ("IP version 6 in an IPv4 frame", &version),
        ("total length below IHL", &short_total),
        ("data offset 4", &doff4),
        ("Ethernet header only", &ethernet_only),
    ] {
        for prog in [PROG_TC, PROG_XDP] {
            if let Some(got) = k.verdict_unless_refused(prog, f) {
                assert_eq!(got, Counter::Malformed, "{what} through {prog}");
            }
        }
        assert_eq!(
            k.verdict(PROG_XDP, f),
            Counter::Malformed,
            "{what} through XDP"
        );
        assert_eq!(
            user_space_verdict(f),
            Counter::Malformed,
            "{what} in user space"
        );
    }
    assert!(k.flows().is_empty());
}

/// Every truncation of a few rich frames: never a crash, always a pass
/// verdict, and the same classification as the user-space parser.
#[test]
fn truncated_frames_match_the_user_space_parser() {
    let Some(k) = Kernel::load() else { return };
    let frames = [
        c2s()
            .qinq(1, 2)
            .ip_options(&[1, 1, 1, 1])
            .payload(8)
            .ethernet(),
        TcpBuilder::v6(v6(1), 1, v6(2), 2)
            .vlan(5)
            .ext(Ext::HopByHop)
            .ext(Ext::Routing)
            .payload(8)
            .ethernet(),
        pppoe(&c2s().flags(FIN | ACK).ethernet(), 0x0021),
    ];
    for f in &frames {
        for cut in 0..=f.len() {
            let part = &f[..cut];
            for prog in [PROG_TC, PROG_XDP] {
                if let Some(got) = k.verdict_unless_refused(prog, part) {
                    assert_eq!(
                        got,
                        user_space_verdict(part),
                        "{prog}, cut at {cut}: {part:02x?}"
                    );
                }
            }
        }
    }
}

#[test]
fn zero_length_and_oversized_frames() {
    let Some(k) = Kernel::load() else { return };
    for prog in [PROG_TC, PROG_XDP] {
        assert!(k.try_run(prog, &[], None, 1).is_err(), "{prog}: empty data");
    }
    assert_eq!(k.counters(), [0; Counter::COUNT as usize]);
    // A 9000-byte jumbo frame: more than the skb harness takes in one page
    // (refused), while XDP gets the first page as linear data and the rest
    // as fragments it does not read. Either way the header's length counts.
    let jumbo = c2s().flags(ACK).payload(8946).ethernet();
    let mut expect = 0;
    for prog in [PROG_TC, PROG_XDP] {
        match k.try_run(prog, &jumbo, None, 1) {
            Ok(r) => {
                assert_passed(prog, &r);
                expect += 8946;
                assert_eq!(k.only_flow().1.bytes, [0, expect], "{prog}");
            }
            Err(e) => eprintln!("{prog}: the kernel refused a 9000-byte frame ({e})"),
        }
    }
    // The largest frame that fits in one page is parsed normally.
    let big = c2s().flags(ACK).payload(3000).ethernet();
    assert_eq!(k.verdict(PROG_TC, &big), Counter::Tcp);
    assert_eq!(k.verdict(PROG_XDP, &big), Counter::Tcp);
    expect += 6000;
    assert_eq!(k.only_flow().1.bytes, [0, expect]);
    // A header claiming more than the frame holds (GRO and multi-buffer
    // tails are outside the linear data) counts what the header says.
    let mut claims = c2s().flags(ACK).payload(10).ethernet();
    claims[16..18].copy_from_slice(&9000u16.to_be_bytes());
    assert_eq!(k.verdict(PROG_TC, &claims), Counter::Tcp);
    assert_eq!(k.only_flow().1.bytes, [0, expect + 9000 - 40]);
}

#[test]
fn new_syn_on_a_closed_tuple_supersedes_it() {
    let Some(mut k) = Kernel::load() else { return };
    handshake(&k, PROG_TC);
    k.tc(&c2s().flags(RST).seq(1001).ethernet());
    assert_eq!(k.only_flow().1.state, State::Reset);
    k.tc(&c2s().flags(SYN).seq(90_000).ethernet());
    let (_, rec) = k.only_flow();
    assert_eq!(rec.state, State::SynSent);
    assert_eq!(rec.syn_seq, 90_000);
    assert_eq!(rec.packets, [0, 1], "the new connection counts afresh");
    let mut events = Vec::new();
    k.be.try_read_events(&mut events);
    let kinds: Vec<_> = events.iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds[kinds.len() - 2..],
        [EventKind::Superseded, EventKind::Opened]
    );
    assert_eq!(events[events.len() - 2].rec.state, State::Reset);
}

/// Issue 17's frames (see `common::captures::second_synack`) through the
/// kernel program: one record, as the replay makes it, with the second
/// SYN+ACK a packet of the connection and no false retransmission.
#[test]
fn a_second_synack_with_another_isn_stays_in_its_connection() {
    let Some(mut k) = Kernel::load() else { return };
    let (frames, want) = common::captures::second_synack();
    let mut replay = FlowTable::new(0);
    for (i, f) in frames.iter().enumerate() {
        k.tc(f);
        let pkt = parse_frame(linktype::ETHERNET, f).expect("a TCP frame");
        let (key, seg) = pkt.to_segment(1 + i as u64, 1, false);
        replay.apply(key, &seg, |_| {});
    }
    let (key, rec) = k.only_flow();
    assert_eq!(rec.state, State::Closed, "{rec:#?}");
    assert_eq!(rec.client_how, ClientHow::Syn);
    assert_eq!(rec.retransmits, [0, 0]);
    assert_eq!((rec.syn_count, rec.synack_count), (1, 1));
    assert_eq!(rec.client, 1, "the client is the higher endpoint");
    assert_eq!(
        rec.packets,
        [want.packets_to_client, want.packets_to_server]
    );
    assert_eq!(rec.bytes, [want.bytes_to_client, want.bytes_to_server]);
    assert!(rec.handshake_rtt_ns().is_some());
    // The kernel map holds one record per tuple whatever happened: the
    // events and the counts above say whether it was superseded.
    let replayed = replay.connections();
    assert_eq!(replayed.len(), 1, "the replay splits it: {replayed:#?}");
    assert_eq!(key, replayed[0].key);
    assert_eq!(
        timeless(rec),
        timeless(replayed[0].rec),
        "kernel against replay"
    );
    let mut events = Vec::new();
    k.be.try_read_events(&mut events);
    let kinds: Vec<_> = events.iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        [
            EventKind::Opened,
            EventKind::SynAck,
            EventKind::Established,
            EventKind::Closing,
            EventKind::Closed
        ]
    );
}

#[test]
fn snapshot_reads_more_flows_than_one_batch() {
    let Some(k) = Kernel::load_opts(LoadOptions {
        flow_capacity: 16_384,
        ..LoadOptions::default()
    }) else {
        return;
    };
    const N: u16 = 5_000;
    for port in 0..N {
        let f = TcpBuilder::v4(CLIENT, 20_000 + port, SERVER, 80)
            .flags(SYN)
            .ethernet();
        k.run(PROG_XDP, &f);
    }
    let mut ports: Vec<u16> = k.flows().iter().map(|(key, _)| key.port[1]).collect();
    ports.sort_unstable();
    assert_eq!(ports, (20_000..20_000 + N).collect::<Vec<_>>());
}

/// IPv4 flows live in their own map under a 16-byte key; the snapshot
/// widens them back, next to the IPv6 flows, and events carry the full key.
#[test]
fn v4_and_v6_flows_meet_in_one_snapshot() {
    let Some(mut k) = Kernel::load() else { return };
    handshake(&k, PROG_TC);
    let f6 = TcpBuilder::v6(v6(1), 5555, v6(2), 443).flags(SYN).seq(7);
    k.run(PROG_XDP, &f6.ethernet());
    let mut flows = k.flows();
    flows.sort_by_key(|(key, _)| key.family);
    assert_eq!(flows.len(), 2, "{flows:#?}");
    let (k4, r4) = flows[0];
    assert_eq!(k4.family, 4);
    assert_eq!(k4.addr, [v4_16(SERVER), v4_16(CLIENT)]);
    assert_eq!(k4.port, [80, CPORT]);
    assert_eq!((k4.vlan, k4._pad), (0, 0));
    assert_eq!(r4.state, State::Established);
    let (k6, r6) = flows[1];
    assert_eq!(
        (k6.family, k6.addr, k6.port),
        (6, [v6(1), v6(2)], [5555, 443])
    );
    assert_eq!(r6.state, State::SynSent);
    let mut events = Vec::new();
    k.be.try_read_events(&mut events);
    assert_eq!(events.len(), 4);
    assert!(events[..3].iter().all(|e| e.key == k4), "{events:#?}");
    assert_eq!(events[3].key, k6);
}

#[test]
fn empty_baselines_pass_everything() {
    let Some(k) = Kernel::load() else { return };
    for prog in [PROG_BENCH_EMPTY_TC, PROG_BENCH_EMPTY_XDP] {
        k.run(prog, &c2s().ethernet());
        k.run(prog, &arp_frame());
    }
    assert_eq!(k.counters(), [0; Counter::COUNT as usize]);
}

#[test]
fn icmp_unreachables_quoting_a_pending_handshake_emit_unreach() {
    for family in [4, 6] {
        let Some(mut k) = Kernel::load_opts(LoadOptions {
            flow_capacity: 1024,
            icmp: true,
            ..LoadOptions::default()
        }) else {
            return;
        };
        let syn = if family == 4 {
            c2s().flags(SYN).seq(1000)
        } else {
            TcpBuilder::v6(v6(2), CPORT, v6(1), 80).flags(SYN).seq(1000)
        };
        k.tc(&syn.ethernet());
        // A quote of another sequence number (an older connection) and of a
        // tuple with no flow change nothing.
        k.tc(&syn.clone().seq(7).unreachable());
        let stranger = if family == 4 {
            TcpBuilder::v4(CLIENT, 1, SERVER, 2)
        } else {
            TcpBuilder::v6(v6(2), 1, v6(1), 2)
        };
        k.tc(&stranger.flags(SYN).unreachable());
        k.tc(&syn.unreachable());
        let mut events = Vec::new();
        k.be.try_read_events(&mut events);
        let kinds: Vec<_> = events.iter().map(|e| e.kind).collect();
        assert_eq!(
            kinds,
            [EventKind::Opened, EventKind::Unreach],
            "IPv{family}"
        );
        let (key, rec) = k.only_flow();
        assert_eq!(events[1].key, key);
        assert_eq!(events[1].rec, rec, "the record is unchanged");
        assert_eq!(rec.state, State::SynSent);
        assert_eq!(
            k.counter(Counter::NotTcp),
            3,
            "ICMP still counts as not TCP"
        );
    }
    // Without --icmp the quote is not even parsed.
    let Some(mut k) = Kernel::load() else { return };
    let syn = c2s().flags(SYN).seq(1000);
    k.tc(&syn.ethernet());
    k.tc(&syn.unreachable());
    let mut events = Vec::new();
    k.be.try_read_events(&mut events);
    assert_eq!(events.len(), 1);
}

/// `EbpfBackend::lookup` (peek's check at a session's deadline) finds IPv4
/// flows in FLOWS4 and IPv6 flows in FLOWS, and nothing for unknown keys.
#[test]
fn lookup_finds_flows_in_either_map() {
    let Some(k) = Kernel::load() else { return };
    handshake(&k, PROG_TC);
    k.run(
        PROG_TC,
        &TcpBuilder::v6(v6(1), 5555, v6(2), 443)
            .flags(SYN)
            .seq(7)
            .ethernet(),
    );
    let flows = k.flows();
    assert_eq!(flows.len(), 2, "{flows:#?}");
    for (key, rec) in &flows {
        let found = k.be.lookup(key).expect("reading the maps");
        assert_eq!(found.as_ref(), Some(rec), "family {}", key.family);
        let mut other = *key;
        other.port[0] ^= 1;
        assert_eq!(k.be.lookup(&other).expect("reading the maps"), None);
    }
}

// --- The per-CPU flow cache ---------------------------------------------------

/// A record without its times, which differ between two loads.
fn timeless(mut r: FlowRecord) -> FlowRecord {
    r.first_ns = 0;
    r.last_ns = 0;
    r.syn_first_ns = 0;
    r.syn_last_ns = 0;
    r.synack_first_ns = 0;
    r.established_ns = 0;
    r
}

/// Moves the calling thread (a test's own) onto `cpu`, so that the
/// programs it runs use that CPU's cache slots.
fn pin_to_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET and
    // sched_setaffinity only touch it and the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        let r = libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
        assert_eq!(r, 0, "cannot move the test onto CPU {cpu}");
    }
}

/// Two CPUs to move a flow's segments between, or `None` (with a notice)
/// on a one-CPU machine; under CI that is a failure.
fn two_cpus() -> Option<()> {
    // The machine's CPUs, not this thread's: tests pin their threads.
    // SAFETY: a plain libc call.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    if n >= 2 {
        return Some(());
    }
    if std::env::var_os("CI").is_some() {
        panic!("the flow cache's cross-CPU tests need two CPUs; CI is set, so they must run");
    }
    eprintln!("skipping: the flow cache's cross-CPU tests need two CPUs");
    None
}

fn data(seq: u32, len: usize) -> Vec<u8> {
    c2s()
        .flags(ACK | PSH)
        .seq(seq)
        .ack(5001)
        .payload(len)
        .ethernet()
}

/// Held by tests that keep both CPUs busy for seconds, and by those whose
/// segments must come within the cache's busy time of each other (5 ms),
/// which a busy CPU would delay.
static CPUS: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn cpus_to_ourselves() -> std::sync::MutexGuard<'static, ()> {
    CPUS.lock().unwrap_or_else(|e| e.into_inner())
}

/// On CPU 0: the handshake, then `n` data segments of 10 bytes from
/// sequence number 1001 on, which CPU 0's slot takes. No reads in between:
/// a read of the cache can take longer than the flush period. Holds the
/// CPUs (see `CPUS`) until the test ends.
fn cached_on_cpu_0(k: &Kernel, n: u32) -> std::sync::MutexGuard<'static, ()> {
    let alone = cpus_to_ourselves();
    pin_to_cpu(0);
    handshake(k, PROG_TC);
    for i in 0..n {
        k.tc(&data(1001 + i * 10, 10));
    }
    alone
}

/// A program, a frame and the skb context to run it with.
type Step = (&'static str, Vec<u8>, Option<Vec<u8>>);

/// A conversation with data both ways, retransmissions, GSO super-packets,
/// a VLAN change, IPv6 beside it and a teardown leaves the same records
/// with the flow cache as without it, read after every segment, and the
/// cache was in use.
#[test]
fn the_flow_cache_changes_no_record() {
    let Some(on) = Kernel::load() else { return };
    let off = Kernel::load_opts(LoadOptions {
        flow_capacity: 1024,
        flow_cache: false,
        ..LoadOptions::default()
    })
    .expect("root");
    pin_to_cpu(0);
    let v6c = |f: u8| TcpBuilder::v6(v6(2), 40_001, v6(1), 443).flags(f);
    let mut segments: Vec<Step> = vec![
        (PROG_TC, c2s().flags(SYN).seq(1000).ethernet(), None),
        (
            PROG_XDP,
            s2c().flags(SYN | ACK).seq(5000).ack(1001).ethernet(),
            None,
        ),
        (
            PROG_TC,
            c2s().flags(ACK).seq(1001).ack(5001).ethernet(),
            None,
        ),
        (PROG_TC, v6c(SYN).seq(7).ethernet(), None),
    ];
    let mut seq = 1001;
    for i in 0..24u32 {
        let prog = if i % 3 == 0 { PROG_XDP } else { PROG_TC };
        let len = [100, 1448, 0, 7][i as usize % 4];
        // Every fifth segment goes back 50 bytes: a retransmission.
        let start = if i % 5 == 4 { seq - 50 } else { seq };
        let mut frame = c2s().flags(ACK | PSH).seq(start).ack(5001).payload(len);
        if i > 16 {
            frame = frame.vlan(12);
        }
        seq = seq.max(start + len as u32);
        let ctx = (i % 7 == 6 && prog == PROG_TC).then(|| skb_ctx(4, 0));
        segments.push((prog, frame.ethernet(), ctx));
        segments.push((
            PROG_TC,
            s2c()
                .flags(ACK)
                .seq(5001)
                .ack(seq)
                .payload(i as usize % 2)
                .ethernet(),
            None,
        ));
        segments.push((
            PROG_XDP,
            v6c(ACK).seq(8 + i).ack(1).payload(10).ethernet(),
            None,
        ));
    }
    segments.extend([
        (
            PROG_TC,
            c2s().flags(FIN | ACK).seq(seq).ack(5013).ethernet(),
            None,
        ),
        (
            PROG_TC,
            s2c().flags(ACK).seq(5013).ack(seq + 1).ethernet(),
            None,
        ),
        (
            PROG_XDP,
            s2c().flags(FIN | ACK).seq(5013).ack(seq + 1).ethernet(),
            None,
        ),
        (
            PROG_TC,
            c2s().flags(ACK).seq(seq + 1).ack(5014).ethernet(),
            None,
        ),
    ]);
    let mut most_cached = 0;
    for (i, (prog, frame, ctx)) in segments.iter().enumerate() {
        on.run_ctx(prog, frame, ctx.as_deref());
        off.run_ctx(prog, frame, ctx.as_deref());
        // Not after every segment: reading takes longer than the flush
        // period, so every segment would find its slot due.
        if i % 12 != 11 && i + 1 != segments.len() {
            continue;
        }
        most_cached = most_cached.max(on.be.cached_packets().unwrap());
        assert_eq!(off.be.cached_packets().unwrap(), 0);
        let flows = |k: &Kernel| {
            let mut f: Vec<_> = k
                .flows()
                .into_iter()
                .map(|(key, r)| (key, timeless(r)))
                .collect();
            f.sort_by_key(|(key, _)| *key);
            f
        };
        assert_eq!(flows(&on), flows(&off), "after segment {i}");
        // Segments counted in slots included.
        assert_eq!(on.counters(), off.counters(), "after segment {i}");
    }
    assert!(
        most_cached >= 5,
        "the cache held at most {most_cached} packets"
    );
    let (_, rec) = on.flows().into_iter().find(|(k, _)| k.family == 4).unwrap();
    assert_eq!(rec.state, State::Closed);
    // Segments 4, 9 and 19 went back with data (14 carried none); the
    // server's one-byte segments all start at 5001.
    assert_eq!(rec.retransmits, [11, 3], "{rec:#?}");
    assert_eq!(on.counter(Counter::Tcp), off.counter(Counter::Tcp));
}

/// A flow cached on one CPU, both FINs on another: the client's last ACK,
/// back on the first CPU, must reach the full rule (the first FIN made the
/// first CPU's slot stale), or the connection never closes.
#[test]
fn fins_on_another_cpu_end_the_cached_flow() {
    let Some(k) = Kernel::load() else { return };
    let Some(()) = two_cpus() else { return };
    let _alone = cached_on_cpu_0(&k, 3);
    pin_to_cpu(1);
    k.tc(&c2s().flags(FIN | ACK).seq(1031).ack(5001).ethernet());
    k.tc(&s2c().flags(FIN | ACK).seq(5001).ack(1032).ethernet());
    pin_to_cpu(0);
    k.tc(&c2s().flags(ACK).seq(1032).ack(5002).ethernet());
    let (_, rec) = k.only_flow();
    assert_eq!(rec.state, State::Closed, "{rec:#?}");
    // Server: SYN+ACK, FIN. Client: SYN, ACK, 3 data, FIN, ACK.
    assert_eq!(rec.packets, [2, 7]);
    assert_eq!(rec.bytes, [0, 30]);
    assert_eq!(k.be.cached_packets().unwrap(), 0, "CPU 0's slot was folded");
}

/// A resend seen on another CPU than its original counts, both ways: the
/// original in CPU 0's slot and the resend going to the record on CPU 1,
/// and the original in CPU 1's slot and the resend to CPU 0's.
#[test]
fn a_resend_on_another_cpu_than_its_original_counts() {
    let Some(()) = two_cpus() else { return };
    // CPU 1 caches the flow only if its segments come within the cache's
    // busy time (5 ms) of each other, after a read of the map in between:
    // a machine busy with other work can delay them. That is no failure
    // of what is tested here: try again with a fresh load.
    for _ in 0..5 {
        let Some(k) = Kernel::load() else { return };
        let _alone = cached_on_cpu_0(&k, 3);
        pin_to_cpu(1);
        k.tc(&data(1021, 10));
        assert_eq!(k.only_flow().1.retransmits, [0, 1], "CPU 0's original");
        k.tc(&data(1031, 10));
        k.tc(&data(1041, 10));
        if k.be.cached_packets().unwrap() <= 3 {
            eprintln!("CPU 1 did not cache the flow (a slow machine); again");
            continue;
        }
        pin_to_cpu(0);
        k.tc(&data(1041, 10));
        let (_, rec) = k.only_flow();
        assert_eq!(rec.retransmits, [0, 2], "CPU 1's original");
        assert_eq!(rec.packets, [1, 9]);
        return;
    }
    panic!("CPU 1 never cached the flow in 5 attempts");
}

/// A connection cached on one CPU, reset and replaced on another: what the
/// first CPU's slot held cannot go to the new connection; it is counted as
/// orphaned when that slot is taken back.
#[test]
fn cached_counts_of_a_replaced_connection_are_orphaned() {
    let Some(k) = Kernel::load() else { return };
    let Some(()) = two_cpus() else { return };
    let _alone = cached_on_cpu_0(&k, 4);
    pin_to_cpu(1);
    k.tc(&c2s().flags(RST).seq(1041).ethernet());
    k.tc(&c2s().flags(SYN).seq(90_000).ethernet());
    let (_, rec) = k.only_flow();
    assert_eq!(rec.packets, [0, 1], "the new connection counts afresh");
    assert_eq!(k.counter(Counter::Orphaned), 0);
    pin_to_cpu(0);
    k.tc(&c2s().flags(SYN).seq(90_000).ethernet());
    assert_eq!(k.counter(Counter::Orphaned), 4);
    let (_, rec) = k.only_flow();
    assert_eq!((rec.packets, rec.syn_count), ([0, 2], 2));
}

/// A busy cached flow still reaches its record in the map every
/// `CACHE_FLUSH_NS` (which also keeps the LRU map seeing it as used).
#[test]
fn a_cached_flow_reaches_its_record_every_flush_period() {
    let Some(k) = Kernel::load() else { return };
    let _alone = cached_on_cpu_0(&k, 3);
    assert_eq!(k.be.cached_packets().unwrap(), 3);
    std::thread::sleep(Duration::from_nanos(3 * tcpmon_common::CACHE_FLUSH_NS));
    k.tc(&data(1031, 10));
    assert_eq!(k.be.cached_packets().unwrap(), 0, "folded into the record");
    assert_eq!(k.only_flow().1.packets, [1, 6]);
    k.tc(&data(1041, 10));
    assert_eq!(k.only_flow().1.bytes, [0, 50]);
}

/// Runs `send(cpu)` on CPUs 0 and 1 at once, after the handshake on CPU 0,
/// with and without the flow cache; then hands the record to `check`.
fn on_two_cpus_at_once(send: impl Fn(&Kernel, usize) + Sync, check: impl Fn(bool, FlowRecord)) {
    for cache in [true, false] {
        let Some(k) = Kernel::load_opts(LoadOptions {
            flow_capacity: 1024,
            flow_cache: cache,
            ..LoadOptions::default()
        }) else {
            return;
        };
        let Some(()) = two_cpus() else { return };
        let _alone = cpus_to_ourselves();
        pin_to_cpu(0);
        handshake(&k, PROG_TC);
        std::thread::scope(|s| {
            for cpu in 0..2 {
                let (k, send) = (&k, &send);
                s.spawn(move || {
                    pin_to_cpu(cpu);
                    send(k, cpu);
                });
            }
        });
        check(cache, k.only_flow().1);
    }
}

/// Segments a CPU sends in the cross-CPU mark tests.
const AT_ONCE: u32 = 20_000;

/// A data segment of 10 bytes, the `i`-th of the client (`dir` 1) or of the
/// server (`dir` 0).
fn chunk(dir: usize, i: u32) -> Vec<u8> {
    match dir {
        1 => data(1001 + i * 10, 10),
        _ => s2c()
            .flags(ACK | PSH)
            .seq(5001 + i * 10)
            .ack(1001)
            .payload(10)
            .ethernet(),
    }
}

/// Each CPU sends one direction's data, every new segment followed by the
/// one before it again, at once: neither CPU's writes may undo the other's
/// (the marks of both directions sit side by side in the record, and in
/// the cache's shared index). Every resend counts, and nothing else.
#[test]
fn two_cpus_moving_both_marks_at_once_miss_no_resend() {
    on_two_cpus_at_once(
        |k, cpu| {
            let frames: Vec<Vec<u8>> = (0..=AT_ONCE).map(|i| chunk(cpu, i)).collect();
            for i in 0..AT_ONCE as usize {
                k.tc(&frames[i + 1]);
                k.tc(&frames[i]);
            }
        },
        |cache, rec| {
            assert_eq!(rec.retransmits, [AT_ONCE; 2], "cache {cache}");
            assert_eq!(
                rec.seq_hi,
                [5001 + (AT_ONCE + 1) * 10, 1001 + (AT_ONCE + 1) * 10],
                "cache {cache}"
            );
        },
    );
}

/// Both CPUs send new data of one direction at once, interleaved (as two
/// threads writing one socket do, or a sender's process and the softirq
/// that sends what incoming ACKs opened), each segment followed by itself
/// again. Two CPUs racing to raise the mark must leave the higher one: with
/// a plain store, a CPU that read the mark before the other raised it
/// stores its own lower end back, and the other's duplicate that follows
/// then passes as new data. Every duplicate counts (so may a new segment
/// that comes after the other CPU's later one: reordering, which any
/// high-water mark counts), and the mark ends at the highest end sent.
/// (A plain store's window is the two instructions between its load and
/// its store: with plain stores this test passed here too, so it guards
/// the exchange, which must neither lower a mark nor touch the other
/// direction's half of the word, rather than catch the race itself.)
#[test]
fn two_cpus_raising_one_mark_at_once_miss_no_resend() {
    on_two_cpus_at_once(
        |k, cpu| {
            let frames: Vec<Vec<u8>> = (0..AT_ONCE).map(|i| chunk(1, 2 * i + cpu as u32)).collect();
            for f in &frames {
                k.tc(f);
                k.tc(f);
            }
        },
        |cache, rec| {
            assert!(
                rec.retransmits[1] >= AT_ONCE * 2,
                "cache {cache}: {} of {} duplicates counted",
                rec.retransmits[1],
                AT_ONCE * 2
            );
            assert_eq!(rec.seq_hi[1], 1001 + 2 * AT_ONCE * 10, "cache {cache}");
        },
    );
}

/// User space reads the records that changed since its last read: all of
/// them the first time, then only the flows whose records or cache slots
/// moved, each once however often it changed.
#[test]
fn reads_after_the_first_return_only_what_changed() {
    // The cache takes the flow only if its segments come within its busy
    // time (5 ms) of each other, which a busy machine can delay: then a
    // fresh load tries again.
    for _ in 0..5 {
        let Some(mut k) = Kernel::load() else { return };
        let mut out = Vec::new();
        let _alone = cpus_to_ourselves();
        pin_to_cpu(0);
        handshake(&k, PROG_TC);
        let other = |f: u8| TcpBuilder::v4(CLIENT, CPORT + 1, SERVER, 80).flags(f);
        k.tc(&other(SYN).seq(7).ethernet());
        assert_eq!(k.be.changed(&mut out).unwrap(), ReadKind::Full);
        assert_eq!(out.len(), 2);
        assert_eq!(k.be.changed(&mut out).unwrap(), ReadKind::Changed(0));
        // Data into the first flow's record (the cache takes a busy flow's
        // segments only from the second on), three times: one change.
        for i in 0..3 {
            k.tc(&data(1001 + i * 10, 10));
        }
        if k.be.cached_packets().unwrap() == 0 {
            eprintln!("the cache took nothing (a slow machine); again");
            continue;
        }
        assert_eq!(k.be.changed(&mut out).unwrap(), ReadKind::Changed(1));
        assert_eq!(out[0].1.bytes, [0, 30], "with the slot's counts folded in");
        // Only the slot moves: still a change of its flow.
        k.tc(&data(1031, 10));
        assert_eq!(k.be.changed(&mut out).unwrap(), ReadKind::Changed(1));
        assert_eq!(out[0].1.bytes, [0, 40]);
        k.tc(&other(SYN).seq(7).ethernet());
        assert_eq!(k.be.changed(&mut out).unwrap(), ReadKind::Changed(1));
        assert_eq!(out[0].1.syn_count, 2);
        assert_eq!(k.be.changed(&mut out).unwrap(), ReadKind::Changed(0));
        return;
    }
    panic!("the cache never took the flow in 5 attempts");
}

/// A connection that ended leaves the kernel's map once its linger is
/// over; a segment that trails it afterwards is a late segment, counted
/// and deleted at once, not a new connection.
#[test]
fn ended_connections_leave_the_kernel_map() {
    let Some(mut k) = Kernel::load() else { return };
    let mut out = Vec::new();
    k.be.set_linger(0);
    handshake(&k, PROG_TC);
    k.tc(&c2s().flags(FIN | ACK).seq(1001).ack(5001).ethernet());
    k.tc(&s2c().flags(FIN | ACK).seq(5001).ack(1002).ethernet());
    k.tc(&c2s().flags(ACK).seq(1002).ack(5002).ethernet());
    let key = k.only_flow().0;
    k.be.changed(&mut out).unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].1.state, State::Closed);
    assert_eq!(k.be.lookup(&key).unwrap(), None, "deleted after the read");
    // The client's last ACK again (its FIN's answer was resent).
    k.tc(&c2s().flags(ACK).seq(1002).ack(5002).ethernet());
    assert!(
        k.be.lookup(&key).unwrap().is_some(),
        "the kernel made a record"
    );
    k.be.changed(&mut out).unwrap();
    assert!(out.is_empty(), "a late segment is no connection: {out:#?}");
    assert_eq!(k.be.late_packets(), 1);
    k.be.reap().unwrap();
    assert_eq!(k.be.lookup(&key).unwrap(), None, "deleted at once");
    // An open connection stays.
    let open = |f: u8| TcpBuilder::v4(CLIENT, CPORT + 2, SERVER, 80).flags(f);
    k.tc(&open(SYN).seq(9).ethernet());
    k.be.changed(&mut out).unwrap();
    assert_eq!(out.len(), 1);
    assert!(k.be.lookup(&out[0].0).unwrap().is_some());
}

/// An ended connection stays in the kernel's map for its linger (the
/// segments that trail an end may still come), and is gone from the map
/// once it passed: read in the map itself, at a linger that is not 0.
#[test]
fn ended_connections_stay_for_their_linger_then_leave_the_map() {
    let Some(mut k) = Kernel::load() else { return };
    let mut out = Vec::new();
    k.be.set_linger(300_000_000);
    handshake(&k, PROG_TC);
    k.tc(&c2s().flags(FIN | ACK).seq(1001).ack(5001).ethernet());
    k.tc(&s2c().flags(FIN | ACK).seq(5001).ack(1002).ethernet());
    k.tc(&c2s().flags(ACK).seq(1002).ack(5002).ethernet());
    let key = k.only_flow().0;
    k.be.changed(&mut out).unwrap();
    assert_eq!(out[0].1.state, State::Closed);
    assert!(
        k.be.lookup(&key).unwrap().is_some(),
        "held while it lingers"
    );
    std::thread::sleep(std::time::Duration::from_millis(400));
    k.be.changed(&mut out).unwrap();
    assert_eq!(
        k.be.lookup(&key).unwrap(),
        None,
        "gone once its linger passed"
    );
    assert!(k.be.take_vanished().is_empty(), "deleted, not evicted");
}

/// Flows the full map pushed out are counted: records created beyond the
/// map's size and what user space deleted.
#[test]
fn flows_the_full_map_evicts_are_counted() {
    let Some(mut k) = Kernel::load() else { return };
    let mut out = Vec::new();
    k.be.set_linger(0);
    // One connection that ends and is deleted: it takes no room.
    handshake(&k, PROG_TC);
    k.tc(&c2s().flags(RST).seq(1001).ethernet());
    k.be.changed(&mut out).unwrap();
    k.be.changed(&mut out).unwrap();
    assert_eq!(k.be.flows_evicted().unwrap(), 0);
    // The test map holds 1024 flows of each IP version.
    for i in 0..1100u32 {
        let client = [10, 1, (i >> 8) as u8, i as u8];
        k.tc(&TcpBuilder::v4(client, 40_000, SERVER, 80)
            .flags(SYN)
            .seq(i)
            .ethernet());
    }
    assert_eq!(k.be.flows_evicted().unwrap(), 1100 - 1024);
    assert_eq!(k.counter(Counter::FlowsCreated4), 1101);
}
