//! `--kernel-log`: the kernel programs' diagnostics, run by the kernel on
//! crafted packets (BPF_PROG_TEST_RUN) and read through
//! `ebpf::KernelLog` into this binary's own `log` logger. Off, the
//! verifier must have pruned every line: the translated programs reference
//! neither aya-log's ring buffer nor the rate limit's map.
//!
//! Needs root; under CI (env `CI` set) it fails without.

mod common;

use std::os::fd::{AsFd, AsRawFd};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use aya::maps::MapInfo;
use aya::programs::Program;
use log::{Level, LevelFilter};
use tcpmon::backend::ebpf::{self, EbpfBackend, KernelLog, LoadOptions, PROG_TC, PROG_XDP};
use tcpmon::filter::Filter;
use tcpmon::wire::build::{TcpBuilder, arp_frame, udp4_frame};
use tcpmon_common::Counter;
use tcpmon_common::klog::LINES_PER_SECOND;
use tcpmon_common::tcp::flags::SYN;

use common::kernel::{assert_passed, run_passes, try_run};
use common::netns::can_run_kernel_tests;

/// What reached the `log` crate under the kernel's target.
static LINES: Mutex<Vec<(Level, String)>> = Mutex::new(Vec::new());

struct Capture;

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }
    fn log(&self, r: &log::Record) {
        if r.target() == ebpf::KERNEL_LOG_TARGET {
            LINES
                .lock()
                .unwrap()
                .push((r.level(), r.args().to_string()));
        }
    }
    fn flush(&self) {}
}

fn capture() {
    // Once per binary; later calls find it set.
    let _ = log::set_logger(&Capture);
    log::set_max_level(LevelFilter::Trace);
}

/// With a filter and `debug`, both verdicts are logged, and the rejected
/// packet still counted; at `info` the translation has no logging path.
fn filter_verdicts() {
    let insns = Filter::compile("tcp port 80")
        .expect("libpcap compiles it")
        .insns()
        .to_vec();
    for (level, logged) in [(LevelFilter::Debug, true), (LevelFilter::Info, false)] {
        LINES.lock().unwrap().clear();
        let opts = LoadOptions {
            flow_capacity: 1024,
            kernel_log: level,
            filter: Some(insns.clone()),
            ..LoadOptions::default()
        };
        let ebpf = ebpf::load_with(&opts).unwrap_or_else(|e| panic!("{e:?}"));
        let mut be = EbpfBackend::new(ebpf).expect("backend");
        let _log = KernelLog::start(be.ebpf_mut()).expect("the kernel log starts");
        let ssh = TcpBuilder::v4([10, 0, 0, 2], 40000, [10, 0, 0, 1], 22)
            .flags(SYN)
            .ethernet();
        let web = TcpBuilder::v4([10, 0, 0, 2], 40001, [10, 0, 0, 1], 80)
            .flags(SYN)
            .ethernet();
        for prog in [PROG_TC, PROG_XDP] {
            run_passes(&be, prog, &ssh, None);
            run_passes(&be, prog, &web, None);
        }
        let counters = be.counters().expect("COUNTERS");
        assert_eq!(counters[Counter::Filtered as usize], 2, "{level}");
        if logged {
            let lines = wait_for(&[
                &format!("filter rejected a packet of {} bytes", ssh.len()),
                &format!("filter kept a packet of {} bytes", web.len()),
            ]);
            let count = |needle: &str| lines.iter().filter(|(_, l)| l.contains(needle)).count();
            assert_eq!((count("rejected"), count("kept")), (2, 2), "{lines:#?}");
            assert_eq!(line_with(&lines, "rejected").0, Level::Debug);
        } else {
            std::thread::sleep(Duration::from_millis(300));
            assert_eq!(*LINES.lock().unwrap(), [], "{level}: no verdicts");
        }
    }
}

fn load(level: LevelFilter) -> Option<EbpfBackend> {
    if !can_run_kernel_tests(
        "the kernel log tests (sudo -E cargo test -p tcpmon --test kernel_log)",
    ) {
        return None;
    }
    let opts = LoadOptions {
        flow_capacity: 1024,
        kernel_log: level,
        ..LoadOptions::default()
    };
    let ebpf = ebpf::load_with(&opts).unwrap_or_else(|e| panic!("{e:?}"));
    Some(EbpfBackend::new(ebpf).expect("backend over the loaded programs"))
}

/// Waits until the captured lines hold one containing each of `needles`;
/// returns them all.
fn wait_for(needles: &[&str]) -> Vec<(Level, String)> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let lines = LINES.lock().unwrap().clone();
        if needles
            .iter()
            .all(|n| lines.iter().any(|(_, l)| l.contains(n)))
        {
            return lines;
        }
        assert!(
            Instant::now() < deadline,
            "no line containing each of {needles:?} within 5 s; got {lines:#?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn line_with<'a>(lines: &'a [(Level, String)], needle: &str) -> &'a (Level, String) {
    lines
        .iter()
        .find(|(_, l)| l.contains(needle))
        .expect("waited for")
}

/// One test, not several: the log crate's logger and the captured lines
/// are this binary's, and the rate limit is per CPU, shared by every
/// program loaded at once.
#[test]
fn kernel_log_names_why_and_is_limited_and_pruned_when_off() {
    capture();
    let Some(mut be) = load(LevelFilter::Trace) else {
        return;
    };
    let log = KernelLog::start(be.ebpf_mut()).expect("the kernel log starts");

    // Skipped packets name their reason, at their level.
    let good = TcpBuilder::v4([10, 0, 0, 2], 40000, [10, 0, 0, 1], 80)
        .flags(SYN)
        .ethernet();
    let mut ihl4 = good.clone();
    ihl4[14] = 0x44;
    run_passes(&be, PROG_TC, &ihl4, None);
    run_passes(&be, PROG_XDP, &arp_frame(), None);
    run_passes(
        &be,
        PROG_TC,
        &udp4_frame([10, 0, 0, 2], [10, 0, 0, 1]),
        None,
    );
    let frag = TcpBuilder::v4([10, 0, 0, 2], 40000, [10, 0, 0, 1], 80)
        .fragment_offset(8)
        .ethernet();
    run_passes(&be, PROG_TC, &frag, None);
    let lines = wait_for(&[
        &format!("skipped a packet of {} bytes: malformed", ihl4.len()),
        "bytes: not IPv4 or IPv6",
        "bytes: IP, not TCP",
        "an IP fragment after the first",
    ]);
    assert_eq!(line_with(&lines, "malformed").0, Level::Info);
    assert_eq!(line_with(&lines, "fragment").0, Level::Info);
    assert_eq!(line_with(&lines, "not TCP").0, Level::Trace);
    // A tracked segment logs nothing of its own.
    LINES.lock().unwrap().clear();
    run_passes(&be, PROG_TC, &good, None);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(*LINES.lock().unwrap(), [], "a SYN that is tracked");

    filter_verdicts();

    // The rate limit: of 3 x the budget in one burst on one CPU, started
    // just after the kernel's clock turned a second (so that the budget is
    // whole and the burst, a millisecond or so, within one second), the
    // budget's worth gets through and the rest is reported as dropped.
    let burst = 3 * LINES_PER_SECOND;
    let now = ebpf::monotonic_now_ns();
    std::thread::sleep(Duration::from_nanos(
        1_000_000_000 - now % 1_000_000_000 + 10_000_000,
    ));
    let r = try_run(&be, PROG_TC, &ihl4, None, burst).expect("test run");
    assert_passed(PROG_TC, &r);
    let lines = wait_for(&["kernel log lines dropped by the rate limit"]);
    let sent = lines
        .iter()
        .filter(|(_, l)| l.contains("malformed"))
        .count() as u32;
    let dropped: u32 = line_with(&lines, "dropped by the rate limit")
        .1
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .expect("a count first");
    assert_eq!(
        (sent, dropped),
        (LINES_PER_SECOND, burst - LINES_PER_SECOND)
    );
    drop(log);

    // With it on, the programs reference both maps in code that runs;
    // off, the verifier removed every line, and the rate limit with them.
    let on = referenced_log_maps(&be);
    assert_eq!(on, (true, true), "logging on: AYA_LOGS, KLOG_BUDGET");
    let Some(off) = load(LevelFilter::Off) else {
        return;
    };
    assert_eq!(
        referenced_log_maps(&off),
        (false, false),
        "logging off: no line survives the verifier"
    );
}

/// Whether `tcpmon_tc`'s instructions after the verifier (dead code
/// removed) still load `AYA_LOGS` and `KLOG_BUDGET`.
fn referenced_log_maps(be: &EbpfBackend) -> (bool, bool) {
    let Program::SchedClassifier(p) = be.ebpf().program(PROG_TC).expect("tcpmon_tc") else {
        panic!("tcpmon_tc is a TC program");
    };
    let info = p.info().expect("program info");
    let id_of = |name: &str| {
        info.map_ids()
            .expect("map ids")
            .unwrap_or_default()
            .into_iter()
            .find(|id| {
                MapInfo::from_id(*id)
                    .ok()
                    .is_some_and(|m| m.name_as_str() == Some(name))
            })
            .unwrap_or_else(|| panic!("tcpmon_tc does not use a map named {name}"))
    };
    let (logs, budget) = (id_of("AYA_LOGS"), id_of("KLOG_BUDGET"));
    let fd = p.fd().expect("loaded");
    let maps = xlated_map_ids(fd.as_fd().as_raw_fd());
    assert!(!maps.is_empty(), "tcpmon_tc loads maps");
    (maps.contains(&logs), maps.contains(&budget))
}

/// The ids of the maps the translated program `fd` loads (`ld_imm64` of a
/// map or of a map value, which the kernel's dump names by id).
fn xlated_map_ids(fd: i32) -> Vec<u32> {
    // struct bpf_prog_info: xlated_prog_len at 20, xlated_prog_insns at 32.
    let mut info = [0u64; 32];
    let get = |info: &mut [u64; 32]| {
        // union bpf_attr's info: bpf_fd, info_len, info (a pointer).
        let mut attr = [0u64; 3];
        attr[0] = fd as u32 as u64 | ((size_of_val(info) as u64) << 32);
        attr[1] = info.as_mut_ptr() as u64;
        // SAFETY: BPF_OBJ_GET_INFO_BY_FD with buffers that outlive it.
        let r = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                15, // BPF_OBJ_GET_INFO_BY_FD
                attr.as_mut_ptr(),
                size_of_val(&attr),
            )
        };
        assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
    };
    get(&mut info);
    let len = (info[2] >> 32) as usize;
    let mut insns = vec![0u64; len / 8];
    info = [0; 32];
    info[2] = (len as u64) << 32;
    info[4] = insns.as_mut_ptr() as u64;
    get(&mut info);
    let mut ids = Vec::new();
    let mut i = 0;
    while i < insns.len() {
        let insn = insns[i];
        let (code, src) = (insn as u8, (insn >> 12) as u8 & 0x0f);
        if code == 0x18 {
            // BPF_PSEUDO_MAP_FD or BPF_PSEUDO_MAP_VALUE: imm is the id.
            if src == 1 || src == 2 {
                ids.push((insn >> 32) as u32);
            }
            i += 1;
        }
        i += 1;
    }
    ids
}
