//! `cargo xtask soak [--minutes N]` (as root, not in CI): tcpmon's four
//! live commands watch the same lab interface for a long time while
//! thousands of connections a second open and close, a bulk transfer runs
//! throughout, and every 10 minutes a burst of 100,000 SYNs arrives. Every
//! minute: each watcher's RSS and CPU and the kernel's TCP counters.
//!
//! Pass: no watcher dies (and each stops cleanly at the end); each one's
//! RSS over the last half stays within 10% of its RSS at half time; and
//! peek and export account for every connection the soak made: what they
//! report is at most the soak's own count, which is at most what they
//! report plus what they say they lost (events lost, sessions dropped,
//! flows evicted). The soak's count is checked against the kernel's
//! (ActiveOpens in the client's namespace).

mod traffic;
mod watchers;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::lab::{Lab, Side};
use crate::run::target_dir;
use crate::{procfs, setup, util};
use traffic::{BULK_BYTES_PER_SEC, CHURN_PER_SEC, Traffic, counter, snmp};
use watchers::{SCRAPES, Sample, Watchers, lab_scrape};

/// The client side (watched, sending) and the server side.
const SIDES: [Side; 2] = [
    Side {
        ns: "tcpmon-soak-c",
        iface: "soakc",
        addr: "10.97.0.1",
    },
    Side {
        ns: "tcpmon-soak-s",
        iface: "soaks",
        addr: "10.97.0.2",
    },
];
const CHURN_PORT: u16 = 5301;
const BULK_PORT: u16 = 5302;
/// In the client's namespace, on its loopback.
const EXPORT_LISTEN: &str = "127.0.0.1:9468";
/// peek's and export's `-t`: the floods' handshakes end as timeouts soon
/// after, so the final counts hold them all.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
const BURST: u64 = 100_000;
const BURST_EVERY: Duration = Duration::from_secs(600);
const SAMPLE_EVERY: Duration = Duration::from_secs(60);
/// RSS over the last half, against RSS at half time.
const RSS_TOLERANCE: f64 = 0.10;

/// Set by SIGINT or SIGTERM: the soak stops early, cleaning up.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

pub fn run(minutes: u64) -> Result<()> {
    if minutes < 2 {
        bail!("--minutes must be at least 2 (samples at half time and after)");
    }
    if !util::is_root() {
        bail!("the soak makes network namespaces and loads eBPF programs: run it as root");
    }
    setup::ensure(true)?;
    let root = util::workspace_root();
    let release = util::build_release(&["--bin", "tcpmon", "--example", "synflood"])?;
    let scratch = target_dir(&root).join("xtask/soak");
    std::fs::create_dir_all(&scratch).with_context(|| format!("creating {}", scratch.display()))?;
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }

    let lab = Lab::new(SIDES)?;
    lab.nft(
        1,
        "add table inet soak; add chain inet soak input { type filter hook input priority 0; }; \
         add rule inet soak input tcp dport 80 drop",
    )?;
    // Room for thousands of connections a second from one address.
    lab.sysctl(0, "net.ipv4.ip_local_port_range", "1024 65535")?;
    let duration = Duration::from_secs(minutes * 60);
    println!(
        "soak: {minutes} min; {CHURN_PER_SEC} connections/s, a bulk transfer at {} MB/s, {BURST} \
         SYNs every {} min (first at {}); logs in {}",
        BULK_BYTES_PER_SEC / 1_000_000,
        BURST_EVERY.as_secs() / 60,
        util::human(first_burst(duration)),
        scratch.display()
    );
    let watchers = Watchers::start(&lab, &release.join("tcpmon"), &scratch)?;
    let snmp_before = snmp(&lab, 0)?;
    let scrapes_before = SCRAPES.load(Ordering::SeqCst);
    let traffic = Traffic::start()?;
    let outcome = soak(
        &lab,
        &watchers,
        &traffic,
        duration,
        &release.join("examples/synflood"),
    );
    let counts = traffic.stop();
    let outcome = outcome.and_then(|o| counts.map(|c| (o, c)));
    let (mut o, counts) = match outcome {
        Ok(x) => x,
        Err(e) => {
            drop(watchers);
            return Err(e);
        }
    };
    // The last handshakes end (timeouts, closes) before the final counts.
    std::thread::sleep(HANDSHAKE_TIMEOUT + Duration::from_secs(3));
    let peek = watchers.peek_doc();
    let export = lab_scrape(&lab);
    let snmp_after = snmp(&lab, 0)?;
    let scrapes = SCRAPES.load(Ordering::SeqCst) - scrapes_before;
    o.failures.extend(watchers.stop());
    let report = verdict::Final {
        counts: &counts,
        flood_sent: o.flood_sent,
        active_opens: counter(&snmp_after, "ActiveOpens") - counter(&snmp_before, "ActiveOpens"),
        scrapes,
        peek: peek?,
        export: export?,
    };
    report.print(&mut o)
}

/// When the first burst comes: at 5 minutes, or a quarter of a shorter
/// soak, so that even a short run has one before half time.
fn first_burst(duration: Duration) -> Duration {
    (duration / 4).min(Duration::from_secs(300))
}

/// What the soak saw while it ran.
pub struct Outcome {
    /// Per minute: the watchers' samples, in their order.
    samples: Vec<Vec<Sample>>,
    names: Vec<&'static str>,
    flood_sent: u64,
    failures: Vec<String>,
    elapsed: Duration,
}

fn soak(
    lab: &Lab,
    watchers: &Watchers,
    traffic: &Traffic,
    duration: Duration,
    synflood: &std::path::Path,
) -> Result<Outcome> {
    let start = Instant::now();
    let mut o = Outcome {
        samples: Vec::new(),
        names: watchers.list.iter().map(|w| w.name).collect(),
        flood_sent: 0,
        failures: Vec::new(),
        elapsed: Duration::ZERO,
    };
    let mut next_burst = first_burst(duration);
    let mut bursts = 0;
    let mut next_sample = SAMPLE_EVERY;
    let mut last = watchers.sample();
    let mut last_snmp = snmp(lab, 0)?;
    let hz = procfs::ticks_per_sec();
    print_header(&o.names);
    // Bounded by the duration (or a signal); each pass sleeps a second.
    while start.elapsed() < duration && !STOP.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_secs(1));
        if let Some(name) = traffic.broken() {
            o.failures.push(format!("the {name} thread ended early"));
            break;
        }
        let dead: Vec<&str> = watchers
            .list
            .iter()
            .filter(|w| !w.alive())
            .map(|w| w.name)
            .collect();
        if !dead.is_empty() {
            o.failures
                .push(format!("died during the soak: {}", dead.join(", ")));
            break;
        }
        if start.elapsed() >= next_burst {
            let sent = traffic::flood(lab, synflood, BURST, bursts * BURST)?;
            println!(
                "  burst {}: {sent} SYNs at {}",
                bursts + 1,
                util::human(start.elapsed())
            );
            o.flood_sent += sent;
            bursts += 1;
            next_burst += BURST_EVERY;
        }
        if start.elapsed() >= next_sample {
            let now = watchers.sample();
            let snmp_now = snmp(lab, 0)?;
            let opens = counter(&snmp_now, "ActiveOpens") - counter(&last_snmp, "ActiveOpens");
            let retrans = counter(&snmp_now, "RetransSegs") - counter(&last_snmp, "RetransSegs");
            let mut line = format!("{:>4}", next_sample.as_secs() / 60);
            for (n, l) in now.iter().zip(&last) {
                let cpu = (n.cpu_ticks - l.cpu_ticks) as f64 / hz / SAMPLE_EVERY.as_secs_f64();
                line += &format!(
                    " | {:>6.1} MB {:>5.1}%",
                    n.rss_kib as f64 / 1024.0,
                    cpu * 100.0
                );
            }
            line += &format!(" | {:>7}/s {:>6}", opens / SAMPLE_EVERY.as_secs(), retrans);
            if let Ok(text) = lab_scrape(lab) {
                line += &format!(
                    " | {:>8}",
                    util::metric_sum(&text, "tcpmon_events_lost_total") as u64
                );
            }
            println!("{line}");
            o.samples.push(now.clone());
            last = now;
            last_snmp = snmp_now;
            next_sample += SAMPLE_EVERY;
        }
    }
    o.elapsed = start.elapsed();
    if STOP.load(Ordering::SeqCst) {
        o.failures
            .push(format!("interrupted after {}", util::human(o.elapsed)));
    }
    Ok(o)
}

fn print_header(names: &[&str]) {
    let mut h = String::from(" min");
    for n in names {
        h += &format!(" | {n:<6}  RSS   CPU");
    }
    h += " |  opens/s retrans | ev. lost (export)";
    println!("{h}");
}

mod verdict;
