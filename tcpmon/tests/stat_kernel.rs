//! The `stat` view's kernel counters (tcpmon-ebpf's stat.rs), run by the
//! kernel itself on crafted packets (BPF_PROG_TEST_RUN): every packet lands
//! in its interval's slot with the size and class the replay side gives the
//! same frame (`wire::stat`), TC and XDP alike; GSO super-packets count as
//! their segments; with the counters off, or a filter rejecting the packet,
//! nothing is counted.
//!
//! Needs root; under CI it must run.

mod common;

use tcpmon::backend::ebpf::{
    self, EbpfBackend, LoadOptions, PROG_TC, PROG_XDP, StatLoad, monotonic_now_ns,
};
use tcpmon::filter::Filter;
use tcpmon::wire::build::{Ext, TcpBuilder, arp_frame, udp4_frame};
use tcpmon::wire::{frame_class, link_header_len, linktype};
use tcpmon_common::StatCounters;
use tcpmon_common::stat::class::*;
use tcpmon_common::tcp::flags::*;
use tcpmon_common::tcp::proto::*;

use common::kernel::{pppoe, run_passes, skb_ctx, v6};
use common::netns::can_run_kernel_tests;

/// An hour: every run of a test falls in interval 0.
const HOUR_NS: u64 = 3_600_000_000_000;
/// Ethernet pads frames to 60 bytes (without the FCS); the TC test harness
/// also wants a whole IPv6 header's worth.
const MIN_FRAME: usize = 60;

fn load(stat: bool, link_bytes: u32, filter: Option<&str>) -> EbpfBackend {
    let ebpf = ebpf::load_with(&LoadOptions {
        flow_capacity: 1024,
        stat: stat.then(|| StatLoad {
            interval_ns: HOUR_NS,
            base_ns: monotonic_now_ns(),
            link_bytes,
        }),
        filter: filter.map(|f| Filter::compile(f).expect("filter").insns().to_vec()),
        ..LoadOptions::default()
    })
    .unwrap_or_else(|e| panic!("{e:?}"));
    EbpfBackend::new(ebpf).expect("backend")
}

fn interval0(be: &EbpfBackend) -> StatCounters {
    let r = be.stat_interval(0).expect("STAT");
    assert_eq!(r.overwritten, 0);
    r.counters
}

fn padded(mut f: Vec<u8>) -> Vec<u8> {
    if f.len() < MIN_FRAME {
        f.resize(MIN_FRAME, 0);
    }
    f
}

/// `frame` with the protocol number at `at` replaced.
fn with_protocol(mut frame: Vec<u8>, at: usize, protocol: u8) -> Vec<u8> {
    frame[at] = protocol;
    frame
}

/// Crafted frames, each with the class it must get (checked against the
/// replay side's `frame_class` too).
fn crafted() -> Vec<(&'static str, Vec<u8>, u8)> {
    let (a, b) = ([10, 0, 0, 1], [10, 0, 0, 2]);
    let tcp4 = TcpBuilder::v4(a, 40000, b, 80).flags(ACK);
    let tcp6 = TcpBuilder::v6(v6(1), 40000, v6(2), 443).flags(SYN);
    // Protocol bytes: IPv4 at 14 + 9, IPv6 next header at 14 + 6, the
    // first extension header's at 14 + 40.
    vec![
        ("ARP", arp_frame(), ARP),
        ("UDP/IPv4", udp4_frame(a, b), IPV4 | UDP),
        ("TCP/IPv4", tcp4.clone().payload(500).ethernet(), IPV4 | TCP),
        (
            "TCP/IPv4 with options",
            tcp4.clone().ip_options(&[1, 1, 1, 0]).ethernet(),
            IPV4 | TCP,
        ),
        ("ICMP unreachable", tcp4.unreachable(), IPV4 | ICMP),
        ("IGMP/IPv4", with_protocol(tcp4.ethernet(), 23, 2), IPV4),
        (
            "non-first IPv4 fragment of UDP",
            with_protocol(
                tcp4.clone().fragment_offset(100).ethernet(),
                23,
                IPPROTO_UDP,
            ),
            IPV4 | UDP,
        ),
        ("TCP/IPv6", tcp6.clone().payload(100).ethernet(), IPV6 | TCP),
        ("ICMPv6 unreachable", tcp6.unreachable(), IPV6 | ICMP),
        (
            "UDP/IPv6",
            with_protocol(tcp6.ethernet(), 20, IPPROTO_UDP),
            IPV6 | UDP,
        ),
        (
            "TCP/IPv6 behind hop-by-hop and destination options",
            tcp6.clone()
                .ext(Ext::HopByHop)
                .ext(Ext::DestOptions)
                .ethernet(),
            IPV6 | TCP,
        ),
        (
            "ICMPv6 behind hop-by-hop (MLD)",
            with_protocol(
                tcp6.clone().ext(Ext::HopByHop).ethernet(),
                54,
                IPPROTO_ICMPV6,
            ),
            IPV6 | ICMP,
        ),
        (
            "non-first IPv6 fragment of TCP",
            tcp6.clone().ext(Ext::Fragment(10)).ethernet(),
            IPV6 | TCP,
        ),
        (
            "IPv6, too many extension headers",
            tcp6.clone()
                .ext(Ext::HopByHop)
                .ext(Ext::DestOptions)
                .ext(Ext::Routing)
                .ext(Ext::DestOptions)
                .ext(Ext::DestOptions)
                .ethernet(),
            IPV6,
        ),
        (
            "TCP/IPv4 in VLAN 7",
            tcp4.clone().vlan(7).ethernet(),
            IPV4 | TCP,
        ),
        (
            "TCP/IPv6 in QinQ",
            tcp6.clone().qinq(100, 7).payload(20).ethernet(),
            IPV6 | TCP,
        ),
        (
            "TCP/IPv4 in PPPoE",
            pppoe(&tcp4.ethernet(), 0x0021),
            IPV4 | TCP,
        ),
        (
            "bad IPv4 version",
            with_protocol(tcp4.ethernet(), 14, 0x55),
            IPV4,
        ),
        (
            "LLDP",
            with_protocol(with_protocol(tcp4.ethernet(), 12, 0x88), 13, 0xcc),
            0,
        ),
    ]
}

/// Each crafted frame, through TC and through XDP: one packet of the
/// replay side's size and class each time, and over all of them exactly
/// the counters the replay side adds up (sum of squares, min, max too).
#[test]
fn every_packet_counted_as_the_replay_counts_it() {
    if !can_run_kernel_tests("every_packet_counted_as_the_replay_counts_it") {
        return;
    }
    for link_bytes in [0, 14] {
        let be = load(true, link_bytes, None);
        let mut expected = StatCounters::default();
        for prog in [PROG_TC, PROG_XDP] {
            for (what, frame, class) in crafted() {
                let frame = padded(frame);
                let replay_class = frame_class(linktype::ETHERNET, &frame).expect("Ethernet");
                assert_eq!(replay_class, class, "{what}: the replay side's class");
                let size = frame.len() as u32 - link_header_len(linktype::ETHERNET) + link_bytes;
                let before = interval0(&be);
                run_passes(&be, prog, &frame, None);
                let got = interval0(&be).since(&before);
                let mut one = StatCounters::default();
                one.add(size, class);
                assert_eq!(
                    (got.packets, got.bytes, got.sum_sq),
                    (1, size as u64, size as u64 * size as u64),
                    "{prog}, {what}"
                );
                assert_eq!(
                    (got.arp, got.icmp, got.ipv4, got.ipv6, got.tcp, got.udp),
                    (one.arp, one.icmp, one.ipv4, one.ipv6, one.tcp, one.udp),
                    "{prog}, {what}: class {class:#x}"
                );
                expected.add(size, class);
            }
        }
        assert_eq!(interval0(&be), expected, "-l: {link_bytes}");
        // TCP tracking still ran after the counters.
        assert!(be.counters().expect("COUNTERS")[0] > 0);
    }
}

/// A TSO/GRO super-packet counts as the segments the wire carries, each
/// with its own headers; one whose numbers do not add up counts whole.
#[test]
fn super_packets_count_as_their_segments() {
    if !can_run_kernel_tests("super_packets_count_as_their_segments") {
        return;
    }
    let be = load(true, 0, None);
    let tcp4 = TcpBuilder::v4([10, 0, 0, 1], 40000, [10, 0, 0, 2], 80).flags(ACK);
    // 40 bytes of IPv4 and TCP headers; 2,000 bytes in segments of 800:
    // 840, 840 and 440 bytes on the wire.
    let frame = tcp4.clone().payload(2000).ethernet();
    run_passes(&be, PROG_TC, &frame, Some(&skb_ctx(3, 800)));
    let got = interval0(&be);
    assert_eq!(
        (got.packets, got.bytes, got.min, got.max, got.tcp, got.ipv4),
        (3, 2120, 440, 840, 3, 3)
    );
    assert_eq!(got.sum_sq, 2 * 840 * 840 + 440 * 440);
    // TCP options (12 bytes) repeat in every segment too, and IPv6 with an
    // extension header: 40 + 8 + 32 bytes of headers.
    let frame = TcpBuilder::v6(v6(1), 40000, v6(2), 443)
        .flags(ACK)
        .ext(Ext::HopByHop)
        .tcp_options(&[1; 12])
        .payload(1000)
        .ethernet();
    let before = interval0(&be);
    run_passes(&be, PROG_TC, &frame, Some(&skb_ctx(2, 500)));
    let got = interval0(&be).since(&before);
    assert_eq!((got.packets, got.bytes, got.ipv6), (2, 2 * (80 + 500), 2));
    // Segment numbers that cannot be (3 segments of 800 for 1,000 bytes):
    // the frame counts whole, as a capture would show it.
    let frame = tcp4.payload(1000).ethernet();
    let before = interval0(&be);
    run_passes(&be, PROG_TC, &frame, Some(&skb_ctx(3, 800)));
    let got = interval0(&be).since(&before);
    assert_eq!((got.packets, got.bytes), (1, 1040));
}

/// Without `stat` the path is pruned: nothing is counted. A filter runs
/// first: what it rejects is not counted either.
#[test]
fn nothing_counted_when_off_or_filtered_out() {
    if !can_run_kernel_tests("nothing_counted_when_off_or_filtered_out") {
        return;
    }
    let frames: Vec<Vec<u8>> = crafted().into_iter().map(|(_, f, _)| padded(f)).collect();
    let off = load(false, 0, None);
    for prog in [PROG_TC, PROG_XDP] {
        for f in &frames {
            run_passes(&off, prog, f, None);
        }
    }
    assert_eq!(interval0(&off), StatCounters::default());

    let filtered = load(true, 0, Some("udp"));
    for prog in [PROG_TC, PROG_XDP] {
        for f in &frames {
            run_passes(&filtered, prog, f, None);
        }
    }
    let got = interval0(&filtered);
    // UDP over IPv4 and IPv6 and the IPv4 UDP fragment (libpcap's `udp`
    // looks at the protocol field alone for IPv4), through both hooks.
    assert_eq!((got.packets, got.udp), (6, 6), "{got:?}");
}
