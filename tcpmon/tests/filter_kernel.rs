//! Filter expressions in the kernel (BPF_PROG_TEST_RUN): on crafted packets
//! and on the Ethernet frames of the shared captures, the kernel programs
//! reject (count `Filtered` and touch nothing else) exactly the packets the
//! user-space filter rejects, for the same libpcap program.
//!
//! Needs root, like `kernel.rs`; under CI it must run.

mod common;

use tcpmon::backend::ebpf::{self, EbpfBackend, LoadOptions, PROG_TC, PROG_XDP};
use tcpmon::backend::pcap::file::open;
use tcpmon::filter::{Filter, FilterError};
use tcpmon::wire::build::{Ext, TcpBuilder, arp_frame, udp4_frame};
use tcpmon_common::Counter;
use tcpmon_common::tcp::flags::*;

use common::filters::EXPRESSIONS;
use common::kernel::{assert_passed, try_run};
use common::netns::can_run_kernel_tests;

/// Loads the programs with the filter on. Tests may swap in other programs
/// no longer than `first`: the kernel runs at most that many instructions.
fn load(first: &Filter) -> EbpfBackend {
    let ebpf = ebpf::load_with(&LoadOptions {
        flow_capacity: 4096,
        filter: Some(first.insns().to_vec()),
        ..LoadOptions::default()
    })
    .unwrap_or_else(|e| panic!("{e:?}"));
    EbpfBackend::new(ebpf).expect("backend")
}

/// Instructions the verifier processed to accept `prog`.
fn verified(be: &EbpfBackend, prog: &str) -> u32 {
    let info = be
        .ebpf()
        .program(prog)
        .expect("program")
        .info()
        .expect("info");
    info.verified_instruction_count().unwrap_or(0)
}

/// Whether the kernel's `prog` rejected `frame`: `None` when the test
/// harness refuses the frame (TC wants 14 + 40 bytes at least).
fn kernel_rejects(be: &EbpfBackend, prog: &str, frame: &[u8]) -> Option<bool> {
    let before = be.counters().expect("counters")[Counter::Filtered as usize];
    match try_run(be, prog, frame, None, 1) {
        Ok(r) => assert_passed(prog, &r),
        // The harness wants a whole L3 header on TC, and at most about a
        // page of data.
        Err(_) if frame.len() < 14 + 40 || frame.len() > 3000 => return None,
        Err(e) => panic!("{prog} on {} bytes: {e}", frame.len()),
    }
    let after = be.counters().expect("counters")[Counter::Filtered as usize];
    Some(after - before == 1)
}

fn crafted() -> Vec<Vec<u8>> {
    let a = [172, 16, 16, 139];
    let b = [10, 0, 0, 1];
    let c = [192, 168, 1, 5];
    let mut v6a = [0u8; 16];
    v6a[..8].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 2]);
    v6a[14..].copy_from_slice(&[0x10, 0x00]);
    let mut v6b = v6a;
    v6b[15] = 0x02;
    let mut out = Vec::new();
    for (src, sport, dst, dport) in [
        (a, 40000, b, 80),
        (b, 80, a, 40000),
        (c, 443, b, 5555),
        (b, 1234, c, 8080),
        (a, 20, c, 21),
    ] {
        for flags in [SYN, SYN | ACK, ACK, RST | ACK, FIN | ACK] {
            let t = TcpBuilder::v4(src, sport, dst, dport).flags(flags);
            out.push(t.ethernet());
            out.push(t.clone().payload(700).ethernet());
            out.push(t.clone().vlan(100).ethernet());
            out.push(t.clone().qinq(200, 100).ethernet());
            out.push(t.clone().ip_options(&[1, 1, 1, 0]).ethernet());
        }
    }
    for (sport, dport) in [(40000, 80), (80, 40000), (21, 50000)] {
        let t = TcpBuilder::v6(v6a, sport, v6b, dport).flags(SYN);
        out.push(t.ethernet());
        out.push(t.clone().vlan(7).ethernet());
        out.push(t.clone().ext(Ext::HopByHop).ethernet());
    }
    out.push(udp4_frame(a, b));
    out.push(arp_frame());
    out
}

/// Ethernet frames of the shared captures (up to 300 a file, to keep the
/// test short).
fn captured() -> Vec<Vec<u8>> {
    let (Some(dir), Some(rows)) = (common::shared_pcaps(), common::manifest()) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for row in rows {
        let mut r = open(&row.path(&dir)).expect("capture");
        let mut n = 0;
        while let Ok(Some(f)) = r.next_frame() {
            if f.linktype == 1 && n < 300 {
                out.push(f.data.to_vec());
                n += 1;
            }
        }
    }
    out
}

#[test]
fn the_kernel_rejects_exactly_what_user_space_rejects() {
    if !can_run_kernel_tests("the_kernel_rejects_exactly_what_user_space_rejects") {
        return;
    }
    let filters: Vec<Filter> = EXPRESSIONS
        .iter()
        .map(|e| Filter::compile(e).unwrap_or_else(|err| panic!("{e}: {err}")))
        .collect();
    let longest = filters.iter().max_by_key(|f| f.insns().len()).unwrap();
    let mut be = load(longest);
    let mut frames = crafted();
    let n_crafted = frames.len();
    frames.extend(captured());
    let (mut decided, mut kept, mut dropped) = (0, 0, 0);
    for (expr, f) in EXPRESSIONS.iter().zip(&filters) {
        ebpf::set_filter(be.ebpf_mut(), *f.program()).expect("set the filter");
        for (i, frame) in frames.iter().enumerate() {
            // What the kernel sees: the captured bytes are the packet.
            let user = !f.matches(frame, frame.len() as u32);
            for prog in [PROG_TC, PROG_XDP] {
                let Some(kernel) = kernel_rejects(&be, prog, frame) else {
                    continue;
                };
                assert_eq!(
                    kernel,
                    user,
                    "{prog} with {expr:?} on {} frame {i}: kernel rejects {kernel}, user space {user}: {frame:02x?}",
                    if i < n_crafted { "crafted" } else { "captured" },
                );
                decided += 1;
                if user {
                    dropped += 1;
                } else {
                    kept += 1;
                }
            }
        }
    }
    eprintln!("{decided} kernel decisions agree ({kept} kept, {dropped} rejected)");
    assert!(
        kept > 1000 && dropped > 1000,
        "{kept} kept, {dropped} dropped"
    );
}

/// How close the interpreter comes to the verifier's budget of a million
/// instructions with the longest program it takes: for the report, and a
/// guard against growth. Then the same for an everyday expression, which
/// the verifier walks for its own length only.
#[test]
fn the_verifier_walks_the_interpreter_for_the_program_length() {
    if !can_run_kernel_tests("the_verifier_walks_the_interpreter_for_the_program_length") {
        return;
    }
    let mut expr = String::from("tcp port 8080");
    let mut ors = 0;
    let longest = loop {
        let longer = format!("{expr} or tcp port {}", 9000 + ors);
        match Filter::compile(&longer) {
            Ok(_) => (expr, ors) = (longer, ors + 1),
            Err(FilterError::TooLong { .. }) => break Filter::compile(&expr).expect("compiles"),
            Err(e) => panic!("{longer}: {e}"),
        }
    };
    assert!(longest.insns().len() > tcpmon_common::cbpf::MAX_INSNS - 4);
    let short = Filter::compile("tcp port 8080").expect("compiles");
    let mut counts = Vec::new();
    for f in [&longest, &short] {
        let be = load(f);
        for prog in [PROG_TC, PROG_XDP] {
            let n = verified(&be, prog);
            eprintln!(
                "{prog}, {} filter instructions: the verifier processed {n} instructions",
                f.insns().len()
            );
            assert!(n < 500_000, "{prog}: {n} verified instructions");
            counts.push(n);
        }
    }
    // 20 rounds instead of 128, plus the same part outside the loop (on
    // 6.18: 321k against 51k on TC, 161k against 26k on XDP).
    assert!(counts[2] * 2 < counts[0], "TC: {counts:?}");
    assert!(counts[3] * 2 < counts[1], "XDP: {counts:?}");
}

#[test]
fn a_rejected_packet_touches_no_flow_and_an_accepted_one_does() {
    if !can_run_kernel_tests("a_rejected_packet_touches_no_flow_and_an_accepted_one_does") {
        return;
    }
    let f = Filter::compile("tcp port 443 or tcp port 80").expect("compiles");
    let be = load(&f);
    let other = TcpBuilder::v4([10, 0, 0, 2], 40000, [10, 0, 0, 1], 22)
        .flags(SYN)
        .ethernet();
    assert_eq!(kernel_rejects(&be, PROG_TC, &other), Some(true));
    let mut flows = Vec::new();
    be.snapshot(&mut flows).expect("snapshot");
    assert!(flows.is_empty(), "{flows:?}");
    let c = be.counters().expect("counters");
    assert_eq!(c[Counter::Tcp as usize], 0);
    let web = TcpBuilder::v4([10, 0, 0, 2], 40000, [10, 0, 0, 1], 443)
        .flags(SYN)
        .ethernet();
    assert_eq!(kernel_rejects(&be, PROG_XDP, &web), Some(false));
    be.snapshot(&mut flows).expect("snapshot");
    assert_eq!(flows.len(), 1);
    assert_eq!(be.counters().expect("counters")[Counter::Tcp as usize], 1);
}

#[test]
fn without_a_filter_nothing_is_filtered() {
    if !can_run_kernel_tests("without_a_filter_nothing_is_filtered") {
        return;
    }
    let be = EbpfBackend::new(
        ebpf::load_with(&LoadOptions {
            flow_capacity: 1024,
            ..LoadOptions::default()
        })
        .expect("load"),
    )
    .expect("backend");
    for prog in [PROG_TC, PROG_XDP] {
        eprintln!(
            "{prog} without a filter: the verifier processed {} instructions",
            verified(&be, prog)
        );
    }
    let f = TcpBuilder::v4([10, 0, 0, 2], 40000, [10, 0, 0, 1], 22)
        .flags(SYN)
        .ethernet();
    assert_eq!(kernel_rejects(&be, PROG_TC, &f), Some(false));
}

#[test]
fn a_program_longer_than_the_kernel_runs_is_refused_clearly() {
    let expr = (1..=100)
        .map(|p| format!("port {p}"))
        .collect::<Vec<_>>()
        .join(" or ");
    match Filter::compile(&expr) {
        Err(FilterError::TooLong { len, max }) => {
            assert!(len > max);
            assert_eq!(
                FilterError::TooLong { len, max }.to_string(),
                format!(
                    "the filter expression compiles to {len} classic BPF instructions; tcpmon \
                     runs at most {max}: simplify it"
                )
            );
        }
        Err(e) => panic!("{e}"),
        Ok(f) => panic!("{} instructions fit", f.insns().len()),
    }
}
