//! `cargo xtask bench`: what tcpmon costs, each figure next to a baseline
//! measured in the same run, since this machine's absolute timings move with
//! whatever else it is doing.
//!
//! 1. Kernel cost per packet: the `kernel_cost` example (root) times the TC
//!    and XDP programs with BPF_PROG_TEST_RUN beside the empty programs.
//! 2. Replay: `tcpmon top --json -T` and `tcpmon stat -r FILE -1` against
//!    Debian's `tcpstat -r FILE -1` on the same synthetic capture, best of 3
//!    each, interleaved; packets/s and peak RSS. `stat` against tcpstat is
//!    the like-for-like pair (same work, same output).
//! 3. Many flows: `tcpmon top --json -T` on 1,000,000 unanswered SYNs (the
//!    `gen_synflood` example), against `tcpstat -r FILE -o '%n\n' 1` in
//!    the same run: time ratio and peak RSS, with the goals (at most 15x
//!    tcpstat's time, at most 250 bytes a flow).
//! 4. `tcpmon export` live with 1,000,000 flows (see `export`): scrape time,
//!    idle CPU and memory, with the goals.

mod export;

use std::fs::File;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::{run::target_dir, setup, util};

/// The synthetic capture: packets, flows, and server payload bytes per data
/// segment (the generator's default is 1,000; 300 keeps the file near
/// 550 MB while the per-packet work is the same).
const PACKETS: u64 = 2_000_000;
const FLOWS: u32 = 10_000;
const SERVER_PAYLOAD: u32 = 300;
const ROUNDS: usize = 3;

/// Runs every section, or only section `only` (1 to 4).
pub fn run(only: Option<u32>) -> Result<()> {
    let section = |n: u32| only.is_none_or(|o| o == n);
    setup::ensure(true)?;
    if !util::is_root() {
        bail!(
            "the kernel benchmark loads eBPF programs and needs root: run `cargo xtask bench` as root"
        );
    }
    let root = util::workspace_root();
    let release = util::build_release(&["--bins", "--examples"])?;

    if section(1) {
        println!("\n== 1. Kernel cost per packet ==");
        util::stream(&mut Command::new(release.join("examples/kernel_cost")))?;
    }

    if section(2) {
        println!("\n== 2. Replay: tcpmon top --json -T and tcpmon stat -r vs tcpstat -r ==");
        let capture = target_dir(&root).join("xtask/bench.pcap");
        ensure_capture(&release.join("examples/gen_capture"), &capture)?;
        replay(&release.join("tcpmon"), &capture)?;
    }

    if section(3) {
        println!("\n== 3. Many flows: tcpmon top --json -T on {SYNFLOOD} SYNs vs tcpstat -r ==");
        let synflood = target_dir(&root).join("xtask/synflood.pcap");
        if !synflood.exists() {
            let partial = synflood.with_extension("pcap.partial");
            util::stream(
                Command::new(release.join("examples/gen_synflood"))
                    .arg(&partial)
                    .arg(SYNFLOOD.to_string()),
            )?;
            std::fs::rename(&partial, &synflood)?;
        }
        many_flows(&release.join("tcpmon"), &synflood)?;
    }

    if section(4) {
        println!("\n== 4. tcpmon export live with {SYNFLOOD} flows ==");
        export::run(&release.join("tcpmon"), &target_dir(&root).join("xtask"))?;
    }
    Ok(())
}

/// Flows in the many-flows capture, and the goals for it.
const SYNFLOOD: u64 = 1_000_000;
const MAX_BYTES_PER_FLOW: f64 = 250.0;
const MAX_TIME_RATIO: f64 = 15.0;

fn many_flows(tcpmon: &Path, capture: &Path) -> Result<()> {
    std::io::copy(&mut File::open(capture)?, &mut std::io::sink())?;
    let dir = capture.parent().expect("capture path has a parent");
    let (ours_out, theirs_out) = (dir.join("synflood.json"), dir.join("synflood-tcpstat.out"));
    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    for _ in 0..ROUNDS {
        let mut c = Command::new(tcpmon);
        c.args(["top", "--json", "-T"]).arg(capture);
        ours.push(timed(c, &ours_out)?);
        let mut c = Command::new("tcpstat");
        c.arg("-r").arg(capture).args(["-o", "%n\n", "1"]);
        theirs.push(timed(c, &theirs_out)?);
    }
    // The flood's SYNs plus the one handshake at its end.
    let lines = std::fs::read_to_string(&ours_out)?.lines().count() as u64;
    if lines != SYNFLOOD + 1 {
        bail!(
            "tcpmon printed {lines} connections, expected {}",
            SYNFLOOD + 1
        );
    }
    let best = |s: &[Sample]| s.iter().map(|s| s.wall).min().expect("ROUNDS > 0");
    let rss = |s: &[Sample]| s.iter().map(|s| s.max_rss_kib).max().expect("ROUNDS > 0");
    let (t_ours, t_theirs) = (best(&ours), best(&theirs));
    let ratio = t_ours.as_secs_f64() / t_theirs.as_secs_f64();
    let mb = rss(&ours) as f64 * 1024.0 / 1e6;
    let per_flow = rss(&ours) as f64 * 1024.0 / SYNFLOOD as f64;
    println!("{:<26} {:>9} {:>13}", "tool", "best s", "peak RSS MB");
    println!(
        "{:<26} {:>9.3} {mb:>13.1}",
        "tcpmon top --json -T",
        t_ours.as_secs_f64()
    );
    println!(
        "{:<26} {:>9.3} {:>13.1}",
        "tcpstat -r -o %n 1",
        t_theirs.as_secs_f64(),
        rss(&theirs) as f64 * 1024.0 / 1e6
    );
    let verdict = |ok: bool| if ok { "goal met" } else { "OVER THE GOAL" };
    println!(
        "tcpmon time / tcpstat time: {ratio:.1}x (goal <= {MAX_TIME_RATIO}x: {})",
        verdict(ratio <= MAX_TIME_RATIO)
    );
    println!(
        "tcpmon peak RSS per flow: {per_flow:.0} bytes (goal <= {MAX_BYTES_PER_FLOW}: {})",
        verdict(per_flow <= MAX_BYTES_PER_FLOW)
    );
    Ok(())
}

fn ensure_capture(gen_capture: &Path, capture: &Path) -> Result<()> {
    if capture.exists() {
        println!("using {} (delete it to regenerate)", capture.display());
        return Ok(());
    }
    std::fs::create_dir_all(capture.parent().expect("capture path has a parent"))?;
    // Written under another name first, so an interrupted run leaves no
    // half-written capture to be reused.
    let partial = capture.with_extension("pcap.partial");
    util::stream(Command::new(gen_capture).args([
        partial.as_os_str(),
        PACKETS.to_string().as_ref(),
        FLOWS.to_string().as_ref(),
        SERVER_PAYLOAD.to_string().as_ref(),
    ]))?;
    std::fs::rename(&partial, capture)
        .with_context(|| format!("renaming {} to {}", partial.display(), capture.display()))
}

/// One timed run of a child: wall time and peak resident set size.
struct Sample {
    wall: Duration,
    max_rss_kib: i64,
}

fn replay(tcpmon: &Path, capture: &Path) -> Result<()> {
    let size = std::fs::metadata(capture)?.len();
    println!(
        "capture: {} ({PACKETS} packets, {FLOWS} flows, {:.0} MB); best of {ROUNDS}, interleaved",
        capture.display(),
        size as f64 / 1e6
    );
    // Read once so that neither tool pays for the first read from disk.
    std::io::copy(&mut File::open(capture)?, &mut std::io::sink())?;

    let tcpmon_cmd = || {
        let mut c = Command::new(tcpmon);
        c.args(["top", "--json", "-T"]).arg(capture);
        c
    };
    // The same arguments for both, so the work and the output are the same.
    let stat_args = ["-o", "%n\n", "-1"];
    let stat_cmd = || {
        let mut c = Command::new(tcpmon);
        c.args(["stat", "-r"]).arg(capture).args(stat_args);
        c
    };
    let tcpstat_cmd = || {
        let mut c = Command::new("tcpstat");
        c.arg("-r").arg(capture).args(stat_args);
        c
    };
    // Outputs go to files, read back once to check every tool read it all.
    let dir = capture.parent().expect("capture path has a parent");
    let (ours_out, stat_out, theirs_out) = (
        dir.join("tcpmon.json"),
        dir.join("tcpmon-stat.out"),
        dir.join("tcpstat.out"),
    );
    let mut ours = Vec::new();
    let mut stat = Vec::new();
    let mut theirs = Vec::new();
    for _ in 0..ROUNDS {
        ours.push(timed(tcpmon_cmd(), &ours_out)?);
        stat.push(timed(stat_cmd(), &stat_out)?);
        theirs.push(timed(tcpstat_cmd(), &theirs_out)?);
    }
    // All must have read the whole file for the times to compare.
    for (tool, out) in [("tcpstat", &theirs_out), ("tcpmon stat", &stat_out)] {
        let printed = std::fs::read_to_string(out)?;
        let counted: u64 = printed
            .trim()
            .parse()
            .with_context(|| format!("{tool} printed {printed:?}, not a packet count"))?;
        if counted != PACKETS {
            bail!("{tool} counted {counted} packets, expected {PACKETS}");
        }
    }
    let packets = json_packets(&std::fs::read_to_string(&ours_out)?)?;
    if packets != PACKETS {
        bail!("tcpmon's connections add up to {packets} packets, expected {PACKETS}");
    }

    let best = |s: &[Sample]| s.iter().map(|s| s.wall).min().expect("ROUNDS > 0");
    let rss = |s: &[Sample]| s.iter().map(|s| s.max_rss_kib).max().expect("ROUNDS > 0");
    let (t_ours, t_stat, t_theirs) = (best(&ours), best(&stat), best(&theirs));
    let rate = |t: Duration| PACKETS as f64 / t.as_secs_f64();
    println!(
        "{:<26} {:>9} {:>14} {:>13}",
        "tool", "best s", "packets/s", "peak RSS MiB"
    );
    for (name, samples, t) in [
        ("tcpmon top --json -T", &ours, t_ours),
        ("tcpmon stat -r -o %n -1", &stat, t_stat),
        ("tcpstat -r -o %n -1", &theirs, t_theirs),
    ] {
        println!(
            "{name:<26} {:>9.3} {:>14.0} {:>13.1}",
            t.as_secs_f64(),
            rate(t),
            rss(samples) as f64 / 1024.0
        );
    }
    for (name, t) in [("top", t_ours), ("stat", t_stat)] {
        println!(
            "tcpmon {name} speed / tcpstat speed: {:.2}x ({})",
            t_theirs.as_secs_f64() / t.as_secs_f64(),
            if t <= t_theirs {
                "tcpmon is at least as fast"
            } else {
                "tcpmon is SLOWER"
            }
        );
    }
    let times = |s: &[Sample]| {
        s.iter()
            .map(|s| format!("{:.3}", s.wall.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(" ")
    };
    println!(
        "all runs (s): tcpmon top {}; tcpmon stat {}; tcpstat {}",
        times(&ours),
        times(&stat),
        times(&theirs)
    );
    Ok(())
}

/// Runs `cmd` to completion with its output in `out`; its peak RSS comes
/// from wait4, which reports the child's own rusage rather than that of all
/// children so far.
fn timed(mut cmd: Command, out: &Path) -> Result<Sample> {
    let shown = util::display(&cmd);
    let out = File::create(out).with_context(|| format!("creating {}", out.display()))?;
    let start = Instant::now();
    let child = cmd
        .stdin(Stdio::null())
        .stdout(out)
        .spawn()
        .with_context(|| format!("could not start `{shown}`"))?;
    let mut status = 0;
    // SAFETY: rusage is plain data, filled in by wait4.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child, by pid; `child` is never waited on
    // through std afterwards.
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    let wall = start.elapsed();
    if pid < 0 {
        bail!("waiting for `{shown}`: {}", std::io::Error::last_os_error());
    }
    let status = std::process::ExitStatus::from_raw(status);
    if !status.success() {
        bail!("`{shown}` failed ({status})");
    }
    Ok(Sample {
        wall,
        max_rss_kib: usage.ru_maxrss,
    })
}

/// Sum of both directions' packets over every connection in tcpmon's JSON
/// lines; a light scan, so xtask needs no JSON parser.
fn json_packets(json: &str) -> Result<u64> {
    let mut total = 0u64;
    for key in ["\"packets_to_server\":", "\"packets_to_client\":"] {
        for (at, _) in json.match_indices(key) {
            let rest = &json[at + key.len()..];
            let end = rest
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(rest.len());
            total += rest[..end]
                .parse::<u64>()
                .context("packet count in tcpmon's JSON")?;
        }
    }
    Ok(total)
}
