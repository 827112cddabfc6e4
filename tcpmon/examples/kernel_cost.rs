//! Kernel cost per packet of the TC and XDP programs, as the kernel itself
//! times them (BPF_PROG_TEST_RUN), next to the empty program of the same
//! type measured in the same run, so the difference is what tcpmon adds to
//! a packet's path. Needs root; `cargo xtask bench` runs it.
//!
//!     kernel_cost [--spread-only] [FLOWS...]
//!     kernel_cost --baseline OBJECT
//!
//! Fixed packets: best of 5 runs of repeat 1,000,000 on one packet, which
//! stays hot in cache. Spread, for each FLOWS (10,000 and 1,000,000 by
//! default): that many distinct established flows, in maps sized as
//! `--max-flows` would size them for that many, primed with a handshake
//! each, then one data packet per flow in turn, each a run of repeat 1;
//! those figures include the harness's own per-run overhead (also paid by
//! the empty program, so the difference is still the program's cost, now
//! with records that are not in cache). `--spread-only` skips the fixed
//! packets.
//!
//! Stat: the same fixed packets through programs loaded with the `stat`
//! interval counters on (STAT_INTERVAL_NS set), next to the programs with
//! them off (0, the path pruned), in the same run: what counting every
//! packet adds; and the programs as `tcpmon stat -i` loads them (counters
//! on, TCP tracking off) next to the empty programs.
//!
//! Filter: the same fixed packets through programs loaded with the filter
//! `tcp port 443 or tcp port 80` (needs libpcap), next to the programs
//! without a filter, in the same run: what the filter's translation adds to
//! a packet it keeps (two tail calls and its instructions), and what a
//! rejected packet costs next to the empty programs. Then the translation
//! alone, returning its verdict, for a short and a 1,000-instruction
//! expression, beside the translation of `ret #1`: ns per classic
//! instruction a packet runs through (the interpreter counts them).
//!
//! New data: packets that each raise their direction's sequence mark, with
//! marks raised by compare-and-exchange against plain stores, same run.
//!
//! `--baseline OBJECT` times another build of the kernel object
//! (`tcpmon.bpf.o` of an earlier commit) against the embedded one, both
//! loaded as the views load them, in the same run: the fixed packets, and
//! a row of its own in the spread of 10,000 flows; and the embedded one
//! with `--kernel-log debug` against off.

use anyhow::{Context, Result, bail};
use aya::Ebpf;
use aya::programs::{Program, SchedClassifier, TestRun, TestRunOptions};
use tcpmon::backend::ebpf::FilterProgram;
use tcpmon::backend::ebpf::{
    LoadOptions, OBJECT, PROG_BENCH_EMPTY_TC, PROG_BENCH_EMPTY_XDP, PROG_BENCH_LOOKUP_TC,
    PROG_BENCH_PARSE_TC, PROG_TC, PROG_XDP, StatLoad, load_object, load_with, monotonic_now_ns,
};
use tcpmon::filter::Filter;
use tcpmon::filter::translate::{Exit, Hook, translate};
use tcpmon::wire::build::{TcpBuilder, udp4_frame};
use tcpmon_common::cbpf::{self, Captured, MEM_WORDS, Regs};
use tcpmon_common::tcp::flags::*;

const REPEAT: u32 = 1_000_000;
const BEST_OF: usize = 5;
const SERVER: [u8; 4] = [10, 0, 0, 1];
/// A typical filter: a web server's traffic.
const FILTER: &str = "tcp port 443 or tcp port 80";

/// TC_ACT_UNSPEC (-1) as the kernel reports it, and XDP_PASS.
const TC_PASS: u32 = u32::MAX;
const XDP_PASS: u32 = 2;

fn main() -> Result<()> {
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("kernel_cost loads eBPF programs and needs root");
    }
    let mut spread_only = false;
    let mut flows = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--spread-only" => spread_only = true,
            "--baseline" => {
                let path = args.next().context("--baseline needs an object file")?;
                return baseline(&std::fs::read(&path).with_context(|| path.clone())?);
            }
            n => flows.push(n.parse::<u32>().context("FLOWS must be a number")?),
        }
    }
    if flows.is_empty() {
        flows = vec![10_000, 1_000_000];
    }
    if !spread_only {
        fixed()?;
    }
    for &n in &flows {
        spread(n, None)?;
    }
    Ok(())
}

/// Client `i` of the flows the benchmark makes, all to SERVER port 80.
fn client(i: u32) -> [u8; 4] {
    [10, 1 + (i >> 16) as u8, (i >> 8) as u8, i as u8]
}

fn port(i: u32) -> u16 {
    20_000 + (i % 40_000) as u16
}

fn c2s(i: u32) -> TcpBuilder {
    TcpBuilder::v4(client(i), port(i), SERVER, 80)
}

fn s2c(i: u32) -> TcpBuilder {
    TcpBuilder::v4(SERVER, 80, client(i), port(i))
}

/// Flow `i`'s handshake, through the TC program of `k`.
fn handshake_on(k: &Kernel, i: u32) -> Result<()> {
    k.run(PROG_TC, &c2s(i).flags(SYN).seq(1000).ethernet(), 1)?;
    k.run(
        PROG_TC,
        &s2c(i).flags(SYN | ACK).seq(5000).ack(1001).ethernet(),
        1,
    )?;
    k.run(
        PROG_TC,
        &c2s(i).flags(ACK).seq(1001).ack(5001).ethernet(),
        1,
    )?;
    Ok(())
}

/// A data segment of flow `i`, the same every time.
fn data(i: u32) -> Vec<u8> {
    c2s(i)
        .flags(ACK | PSH)
        .seq(1001)
        .ack(5001)
        .payload(100)
        .ethernet()
}

/// The production settings (coarse clock on steady segments included),
/// with maps of `flow_capacity` records, and the benchmark's breakdown
/// programs loaded too.
fn load_bench(flow_capacity: u32, flow_cache: bool) -> Result<Kernel> {
    load_bench_with(
        OBJECT,
        &LoadOptions {
            flow_capacity,
            flow_cache,
            ..LoadOptions::default()
        },
    )
}

fn load_bench_with(object: &[u8], opts: &LoadOptions) -> Result<Kernel> {
    let mut ebpf = load_object(object, opts)?;
    for name in [PROG_BENCH_PARSE_TC, PROG_BENCH_LOOKUP_TC] {
        let prog: &mut SchedClassifier = ebpf
            .program_mut(name)
            .with_context(|| format!("no program {name}: run `cargo xtask build-ebpf`"))?
            .try_into()?;
        prog.load().with_context(|| format!("loading {name}"))?;
    }
    Ok(Kernel { ebpf })
}

/// The fixed packets: of flow 0 (established by `handshake_on`), of a
/// flow of its own, not TCP.
fn fixed_packets() -> [(&'static str, Vec<u8>); 3] {
    [
        ("established-flow data (100 B)", data(0)),
        (
            // A flow of its own, so that flow 0 stays established.
            "SYN (retransmitted: an event)",
            TcpBuilder::v4([10, 2, 0, 1], 40_000, SERVER, 80)
                .flags(SYN)
                .seq(1000)
                .ethernet(),
        ),
        ("UDP (not TCP)", udp4_frame(client(0), SERVER)),
    ]
}

/// `--baseline OBJECT` (see the top).
fn baseline(object: &[u8]) -> Result<()> {
    let opts = LoadOptions {
        flow_capacity: FIXED_CAPACITY,
        ..LoadOptions::default()
    };
    let before = load_bench_with(object, &opts)?;
    let after = load_bench_with(OBJECT, &opts)?;
    let logging = load_bench_with(
        OBJECT,
        &LoadOptions {
            kernel_log: log::LevelFilter::Debug,
            ..opts
        },
    )?;
    for k in [&before, &after, &logging] {
        handshake_on(k, 0)?;
    }
    let side = |kernel, name| Side {
        kernel,
        tc: PROG_TC,
        xdp: PROG_XDP,
        name,
    };
    println!(
        "The baseline object against the embedded one, same run (ns/packet, best of {BEST_OF} x repeat {REPEAT})"
    );
    compare(
        &fixed_packets(),
        side(&before, "before"),
        side(&after, "after"),
    )?;
    println!("\nThe embedded object with --kernel-log debug against off");
    compare(
        &fixed_packets(),
        side(&after, "off"),
        side(&logging, "debug"),
    )?;
    spread(10_000, Some(object))
}

/// Fixed packets, each repeated on one flow (and the stat and filter
/// variants).
fn fixed() -> Result<()> {
    let k = load_bench(FIXED_CAPACITY, true)?;
    let handshake = |i: u32| handshake_on(&k, i);
    handshake(0)?;
    let fixed = fixed_packets();
    println!(
        "Kernel cost per packet (BPF_PROG_TEST_RUN, ns/packet, best of {BEST_OF} x repeat {REPEAT})"
    );
    let empty_progs = Side {
        kernel: &k,
        tc: PROG_BENCH_EMPTY_TC,
        xdp: PROG_BENCH_EMPTY_XDP,
        name: "empty",
    };
    let tcpmon = Side {
        kernel: &k,
        tc: PROG_TC,
        xdp: PROG_XDP,
        name: "tcpmon",
    };
    compare(&fixed, empty_progs, tcpmon)?;

    // Where an established flow's data packet goes, TC: parsing, then what
    // finding the record in the map alone costs, and the whole path without
    // and with the per-CPU flow cache.
    let pkt = data(0);
    let nocache = load_bench(FIXED_CAPACITY, false)?;
    handshake_on(&nocache, 0)?;
    let times = best_of(
        &[
            (&k, PROG_BENCH_EMPTY_TC),
            (&k, PROG_BENCH_PARSE_TC),
            (&k, PROG_BENCH_LOOKUP_TC),
            (&nocache, PROG_TC),
            (&k, PROG_TC),
        ],
        &pkt,
    )?;
    let [empty, parse, lookup, map_path, cache_path] = times[..] else {
        unreachable!("five programs timed")
    };
    println!("\nBreakdown of the established-flow data packet, TC (ns/packet over empty)");
    println!(
        "parse headers                        {:>7.1}",
        parse - empty
    );
    println!(
        "parse + flow-map lookup              {:>7.1}",
        lookup - empty
    );
    println!(
        "tcpmon, every packet to its record   {:>7.1}",
        map_path - empty
    );
    println!(
        "tcpmon, per-CPU flow cache (default) {:>7.1}",
        cache_path - empty
    );
    // The stat counters, on more loads of the same object.
    let stat = |track_tcp: bool| -> Result<Kernel> {
        Ok(Kernel {
            ebpf: load_with(&LoadOptions {
                flow_capacity: 1024,
                track_tcp,
                stat: Some(StatLoad {
                    interval_ns: 1_000_000_000,
                    base_ns: monotonic_now_ns(),
                    link_bytes: 0,
                }),
                ..LoadOptions::default()
            })?,
        })
    };
    let (ks, ks_only) = (stat(true)?, stat(false)?);
    handshake_on(&ks, 0)?;
    println!(
        "\nStat counters on (STAT_INTERVAL_NS set) against off (0), same run \
         (ns/packet, best of {BEST_OF} x repeat {REPEAT})"
    );
    let counting = |kernel, name| Side {
        kernel,
        tc: PROG_TC,
        xdp: PROG_XDP,
        name,
    };
    compare(&fixed, counting(&k, "off"), counting(&ks, "stat"))?;
    println!("\nAs `tcpmon stat -i` loads them (counters on, TCP tracking off) against empty");
    compare(&fixed, empty_progs, counting(&ks_only, "stat"))?;

    // The filter, on a second load of the same object.
    let filter = Filter::compile(FILTER).context("compiling the benchmark's filter")?;
    let kf = Kernel {
        ebpf: load_with(&LoadOptions {
            flow_capacity: 1024,
            filter: Some(filter.insns().to_vec()),
            ..LoadOptions::default()
        })?,
    };
    handshake_on(&kf, 0)?;
    let ssh = TcpBuilder::v4(client(0), port(0), SERVER, 22)
        .flags(ACK | PSH)
        .seq(1001)
        .ack(5001)
        .payload(100)
        .ethernet();
    println!(
        "\nFilter {FILTER:?} ({} classic BPF instructions) against no filter, same run \
         (ns/packet, best of {BEST_OF} x repeat {REPEAT})",
        filter.insns().len()
    );
    let ssh_rows = [
        ("port 80 data (kept)", data(0)),
        ("port 22 data (rejected)", ssh),
        ("UDP (rejected)", udp4_frame(client(0), SERVER)),
    ];
    compare(&ssh_rows, counting(&k, "none"), counting(&kf, "filter"))?;
    println!("\nThe rejected packets against the empty programs");
    compare(&ssh_rows[1..], empty_progs, counting(&kf, "filter"))?;
    drop(kf);
    translation_alone()?;
    new_data()?;

    Ok(())
}

/// New data, each packet past the last: every packet raises its
/// direction's sequence mark (the fixed data packet above is a resend
/// after its first run and never does). Runs of repeat 1 (the harness's
/// per-run overhead included, paid alike by both sides), the loads taking
/// turns in blocks: marks raised by compare-and-exchange (the default)
/// against plain stores (`full_atomics` off, as before Linux 5.12), with
/// and without the flow cache.
fn new_data() -> Result<()> {
    let load = |flow_cache, full_atomics| -> Result<Kernel> {
        let ebpf = load_with(&LoadOptions {
            flow_capacity: FIXED_CAPACITY,
            flow_cache,
            full_atomics,
            ..LoadOptions::default()
        })?;
        let k = Kernel { ebpf };
        handshake_on(&k, 0)?;
        Ok(k)
    };
    let loads = [
        load(true, false)?,
        load(true, true)?,
        load(false, false)?,
        load(false, true)?,
    ];
    let progs = [PROG_TC, PROG_XDP];
    // Per load, the next sequence number its flow 0 sends.
    let mut next = [1001u32; 4];
    let mut best = [[f64::INFINITY; 2]; 4];
    for _ in 0..BEST_OF {
        let mut total = [[0.0; 2]; 4];
        for turn in 0..NEW_DATA_TURNS {
            for q in 0..loads.len() * progs.len() {
                let (l, p) = ((q + turn) % 8 / 2, (q + turn) % 2);
                for _ in 0..NEW_DATA_BLOCK {
                    let pkt = c2s(0)
                        .flags(ACK | PSH)
                        .seq(next[l])
                        .ack(5001)
                        .payload(100)
                        .ethernet();
                    next[l] = next[l].wrapping_add(100);
                    total[l][p] += loads[l].run(progs[p], &pkt, 1)?;
                }
            }
        }
        let runs = (NEW_DATA_TURNS * NEW_DATA_BLOCK) as f64;
        for (b, t) in best.iter_mut().flatten().zip(total.iter().flatten()) {
            *b = b.min(t / runs);
        }
    }
    println!(
        "\nNew data (each packet raises the mark): compare-and-exchange against plain stores, \
         same run (ns/packet, repeat 1 per run INCLUDING harness overhead, best of {BEST_OF})"
    );
    println!(
        "{:<24} {:>7} {:>7} {:>7}   {:>7} {:>7} {:>7}",
        "", "TC", "", "", "XDP", "", ""
    );
    println!(
        "{:<24} {:>7} {:>7} {:>7}   {:>7} {:>7} {:>7}",
        "path", "plain", "CAS", "added", "plain", "CAS", "added"
    );
    for (what, plain, cas) in [("flow cache", 0, 1), ("every packet to its record", 2, 3)] {
        let (p, c) = (best[plain], best[cas]);
        println!(
            "{what:<24} {:>7.1} {:>7.1} {:>7.1}   {:>7.1} {:>7.1} {:>7.1}",
            p[0],
            c[0],
            c[0] - p[0],
            p[1],
            c[1],
            c[1] - p[1]
        );
    }
    Ok(())
}

/// Turns and packets per turn of `new_data`: 20,000 packets per program
/// and pass.
const NEW_DATA_TURNS: usize = 20;
const NEW_DATA_BLOCK: usize = 1_000;

/// Maps for the fixed packets, which use a few flows.
const FIXED_CAPACITY: u32 = 1024;

/// `flows` established flows, one data packet each in turn: every packet
/// finds another flow than the last, as on a busy server. Maps sized as
/// `--max-flows` would be for that many flows; the programs take turns
/// (see below).
/// With `baseline`, one more row: that object's programs, as the default
/// loads them.
fn spread(flows: u32, baseline: Option<&[u8]>) -> Result<()> {
    let capacity = (flows + 1024).next_power_of_two();
    let (k, nocache) = (load_bench(capacity, true)?, load_bench(capacity, false)?);
    let before = baseline
        .map(|object| {
            let opts = LoadOptions {
                flow_capacity: capacity,
                ..LoadOptions::default()
            };
            load_bench_with(object, &opts)
        })
        .transpose()?;
    for i in 0..flows {
        handshake_on(&k, i)?;
        handshake_on(&nocache, i)?;
        if let Some(b) = &before {
            handshake_on(b, i)?;
        }
    }
    println!(
        "\nSpread: {flows} established flows (maps of {capacity}), one data packet each in turn, \
         repeat 1 per run (ns/packet as the kernel times a run, INCLUDING per-run harness \
         overhead; best of {SPREAD_PASSES} passes)"
    );
    let mut rows: Vec<(&str, Option<Timed>, Option<Timed>)> = vec![
        (
            "empty",
            Some((&k, PROG_BENCH_EMPTY_TC)),
            Some((&k, PROG_BENCH_EMPTY_XDP)),
        ),
        ("parse headers", Some((&k, PROG_BENCH_PARSE_TC)), None),
        (
            "parse + flow-map lookup",
            Some((&k, PROG_BENCH_LOOKUP_TC)),
            None,
        ),
        (
            "tcpmon, every packet to its record",
            Some((&nocache, PROG_TC)),
            Some((&nocache, PROG_XDP)),
        ),
        (
            "tcpmon, per-CPU flow cache (default)",
            Some((&k, PROG_TC)),
            Some((&k, PROG_XDP)),
        ),
    ];
    if let Some(b) = &before {
        rows.push((
            "baseline object, as the default",
            Some((b, PROG_TC)),
            Some((b, PROG_XDP)),
        ));
    }
    let progs: Vec<Timed> = rows
        .iter()
        .flat_map(|(_, tc, xdp)| [*tc, *xdp])
        .flatten()
        .collect();
    let mut best = vec![f64::INFINITY; progs.len()];
    for _ in 0..SPREAD_PASSES {
        // In turns of SPREAD_BLOCK packets, so that this machine's swings
        // hit every program alike, while each runs packet after packet as on
        // a busy CPU (its instructions stay in cache, its flows' records do
        // not); each turn starting with the next program, so that none
        // always runs after the same one; each program a stride apart in
        // the flows, so that none finds a record another has just read.
        let n = progs.len();
        let mut total = vec![0.0; n];
        let stride = flows / n as u32;
        for (turn, start) in (0..flows).step_by(SPREAD_BLOCK).enumerate() {
            for q in 0..n {
                let p = (q + turn) % n;
                let (kernel, prog) = progs[p];
                for j in start..(start + SPREAD_BLOCK as u32).min(flows) {
                    total[p] += kernel.run(prog, &data((j + p as u32 * stride) % flows), 1)?;
                }
            }
        }
        for (b, t) in best.iter_mut().zip(total) {
            *b = b.min(t / flows as f64);
        }
    }
    let mut times = best.into_iter();
    let mut cell = |prog: Option<Timed>| prog.map(|_| times.next().expect("timed"));
    let (mut tc0, mut xdp0) = (0.0, 0.0);
    let show = |t: Option<f64>, empty: f64| match t {
        Some(t) => format!("{t:>7.1} {:>7.1}", t - empty),
        None => format!("{:>7} {:>7}", "-", "-"),
    };
    println!(
        "{:<38} {:>7} {:>7}   {:>7} {:>7}",
        "program", "TC", "added", "XDP", "added"
    );
    for (i, (what, tc, xdp)) in rows.iter().enumerate() {
        let (tc, xdp) = (cell(*tc), cell(*xdp));
        if i == 0 {
            (tc0, xdp0) = (tc.unwrap_or(0.0), xdp.unwrap_or(0.0));
        }
        println!("{what:<38} {}   {}", show(tc, tc0), show(xdp, xdp0));
    }
    Ok(())
}

const SPREAD_PASSES: usize = 3;
const SPREAD_BLOCK: usize = 100;

/// A program to time, in its load of the object.
type Timed<'a> = (&'a Kernel, &'a str);

struct Kernel {
    ebpf: Ebpf,
}

/// One side of a comparison: a load of the object, its TC and XDP
/// programs to time, and the column's name.
#[derive(Clone, Copy)]
struct Side<'a> {
    kernel: &'a Kernel,
    tc: &'a str,
    xdp: &'a str,
    name: &'a str,
}

/// Times each of `rows` on `base` and on `with`, TC and XDP, and prints
/// them with what `with` adds.
fn compare(rows: &[(&str, Vec<u8>)], base: Side, with: Side) -> Result<()> {
    println!("{:<34} {:-^23}   {:-^23}", "", " TC ", " XDP ");
    println!(
        "{:<34} {:>7} {:>7} {:>7}   {:>7} {:>7} {:>7}",
        "packet", base.name, with.name, "added", base.name, with.name, "added"
    );
    for (what, pkt) in rows {
        let times = best_of(
            &[
                (base.kernel, base.tc),
                (with.kernel, with.tc),
                (base.kernel, base.xdp),
                (with.kernel, with.xdp),
            ],
            pkt,
        )?;
        let [tc0, tc, xdp0, xdp] = times[..] else {
            unreachable!("four programs timed")
        };
        println!(
            "{what:<34} {tc0:>7.1} {tc:>7.1} {:>7.1}   {xdp0:>7.1} {xdp:>7.1} {:>7.1}",
            tc - tc0,
            xdp - xdp0
        );
    }
    Ok(())
}

/// The best of `BEST_OF` rounds of repeat `REPEAT` for each program, the
/// programs taking turns within a round, so that this machine's swings in
/// speed (twofold between runs) hit all of them alike.
fn best_of(progs: &[(&Kernel, &str)], data: &[u8]) -> Result<Vec<f64>> {
    let mut best = vec![f64::INFINITY; progs.len()];
    for _ in 0..BEST_OF {
        for ((kernel, prog), b) in progs.iter().zip(best.iter_mut()) {
            *b = b.min(kernel.run(prog, data, REPEAT)?);
        }
    }
    Ok(best)
}

impl Kernel {
    /// Runs `prog` on `data` `repeat` times; the kernel's mean ns per run.
    fn run(&self, prog: &str, data: &[u8], repeat: u32) -> Result<f64> {
        let opts = TestRunOptions {
            data_in: Some(data),
            repeat,
            ..TestRunOptions::default()
        };
        let program = self
            .ebpf
            .program(prog)
            .with_context(|| format!("{prog} is not in the object"))?;
        let (r, pass) = match program {
            Program::SchedClassifier(p) => (p.test_run(opts), TC_PASS),
            Program::Xdp(p) => (p.test_run(opts), XDP_PASS),
            _ => bail!("{prog} is neither TC nor XDP"),
        };
        let r = r.with_context(|| format!("test run of {prog}"))?;
        if r.return_value != pass {
            bail!(
                "{prog} returned {} instead of passing the packet",
                r.return_value
            );
        }
        Ok(r.duration.as_nanos() as f64)
    }
}

/// The translation on its own (`Exit::Verdict`), TC and XDP: a packet's
/// cost against the number of classic instructions it runs through.
fn translation_alone() -> Result<()> {
    let long = (0..200)
        .map(|i| format!("tcp port {}", 8000 + i))
        .collect::<Vec<_>>()
        .join(" or ");
    let base = [cbpf::Insn {
        code: 0x06,
        jt: 0,
        jf: 0,
        k: 1,
    }];
    let pkt = |dport| {
        TcpBuilder::v4([10, 1, 0, 0], 40000, SERVER, dport)
            .flags(ACK)
            .ethernet()
    };
    println!(
        "\nThe translation alone against `ret #1`'s (ns/packet, best of {BEST_OF} x repeat \
         {REPEAT}; classic instructions run by the interpreter)"
    );
    println!(
        "{:<44} {:>6} {:>7} {:>7} {:>7} {:>7}",
        "expression, packet", "insns", "TC", "ns/ins", "XDP", "ns/ins"
    );
    for (name, expr) in [
        (FILTER, FILTER.to_string()),
        ("200 ports (1,000 insns)", long),
    ] {
        let f = Filter::compile(&expr)?;
        for (what, dport) in [("first term", 443), ("first of 200", 8000), ("none", 22)] {
            let frame = pkt(dport);
            let ran = executed(f.insns(), &frame);
            let mut row = format!("{:<44} {ran:>6}", format!("{name}: {what}"));
            for hook in [Hook::Tc, Hook::Xdp] {
                let prog = FilterProgram::load(hook, &translate(f.insns(), hook, Exit::Verdict)?)?;
                let empty = FilterProgram::load(hook, &translate(&base, hook, Exit::Verdict)?)?;
                let (mut t, mut t0) = (f64::INFINITY, f64::INFINITY);
                for _ in 0..BEST_OF {
                    t = t.min(f64::from(prog.run_repeat(&frame, REPEAT)?.1));
                    t0 = t0.min(f64::from(empty.run_repeat(&frame, REPEAT)?.1));
                }
                row += &format!(" {:>7.1} {:>7.2}", t - t0, (t - t0) / ran as f64);
            }
            println!("{row}");
        }
    }
    Ok(())
}

/// How many classic instructions `insns` runs through on `frame`.
fn executed(insns: &[cbpf::Insn], frame: &[u8]) -> usize {
    let (mut r, mut mem) = (Regs::default(), [0; MEM_WORDS]);
    let pkt = Captured {
        data: frame,
        wire_len: frame.len() as u32,
    };
    let mut n = 1;
    while cbpf::step(&mut r, &mut mem, insns, &pkt).is_none() {
        n += 1;
    }
    n
}
