//! `--kernel-log LEVEL`: the kernel programs' diagnostics (tcpmon-ebpf's
//! klog.rs) passed to the `log` crate under the target `tcpmon::kernel`.
//!
//! The level is loaded into the programs as aya-log's read-only
//! `AYA_LOG_LEVEL` (see `aya_level`): off, the verifier prunes every line
//! and nothing here runs. On, a thread waits on aya-log's ring buffer and
//! hands each record to the `log` crate as it comes, whatever the view's
//! run loop is doing, and reports once a second the lines the kernel's
//! rate limit refused (`tcpmon_common::klog`).

use std::os::fd::{AsFd, AsRawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use aya::Ebpf;
use aya::maps::{MapData, PerCpuArray};
use aya_log::EbpfLogger;
use log::LevelFilter;
use tcpmon_common::klog::{Budget, LINES_PER_SECOND};

pub use tcpmon_common::klog::TARGET;

/// The value of aya-log's `AYA_LOG_LEVEL` for `level`: aya-log-common's
/// levels are the `log` crate's (error 1 to trace 5), and 0 logs nothing.
pub fn aya_level(level: LevelFilter) -> u8 {
    level as usize as u8
}

/// Reads the kernel's lines until dropped.
pub struct KernelLog {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// How long the thread waits for a record before it checks `stop` and the
/// rate limit's count.
const POLL: Duration = Duration::from_millis(100);
const DROPPED_EVERY: Duration = Duration::from_secs(1);

impl KernelLog {
    /// Takes aya-log's ring buffer and the rate limit's map out of `ebpf`
    /// (loaded with a level above off) and starts reading them. The records
    /// go to `log::logger()`.
    pub fn start(ebpf: &mut Ebpf) -> Result<KernelLog> {
        let logger = EbpfLogger::init(ebpf).context("opening aya-log's ring buffer (AYA_LOGS)")?;
        let budget = ebpf
            .take_map(tcpmon_common::MAP_KLOG_BUDGET)
            .ok_or_else(|| anyhow!("the embedded eBPF object has no KLOG_BUDGET map"))?;
        let budget: PerCpuArray<MapData, Budget> =
            PerCpuArray::try_from(budget).context("opening KLOG_BUDGET")?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::Builder::new()
            .name("kernel-log".into())
            .spawn({
                let stop = stop.clone();
                move || read(logger, &budget, &stop)
            })
            .context("starting the kernel log's thread")?;
        Ok(KernelLog {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for KernelLog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn read(
    mut logger: EbpfLogger<&'static dyn log::Log>,
    budget: &PerCpuArray<MapData, Budget>,
    stop: &AtomicBool,
) {
    let mut reported = 0u64;
    let mut last = Instant::now();
    loop {
        let stopping = stop.load(Ordering::Relaxed);
        wait_readable(&logger, POLL);
        logger.flush();
        if stopping || last.elapsed() >= DROPPED_EVERY {
            last = Instant::now();
            let dropped = dropped(budget);
            if dropped > reported {
                log::warn!(
                    target: TARGET,
                    "{} kernel log lines dropped by the rate limit ({LINES_PER_SECOND} a second per CPU)",
                    dropped - reported
                );
                reported = dropped;
            }
        }
        if stopping {
            return;
        }
    }
}

/// Lines the CPUs' rate limits refused since the programs were loaded.
fn dropped(budget: &PerCpuArray<MapData, Budget>) -> u64 {
    match budget.get(&0, 0) {
        Ok(cpus) => cpus.iter().map(|b| u64::from(b.dropped)).sum(),
        Err(e) => {
            log::debug!("reading KLOG_BUDGET: {e}");
            0
        }
    }
}

/// Waits until the ring buffer has a record, or `timeout`.
fn wait_readable(fd: &impl AsFd, timeout: Duration) {
    let mut pfd = libc::pollfd {
        fd: fd.as_fd().as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd on the stack; the fd outlives the call.
    unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as libc::c_int) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_are_aya_logs() {
        assert_eq!(aya_level(LevelFilter::Off), 0);
        assert_eq!(
            aya_level(LevelFilter::Error),
            aya_log::Level::Error as u8,
            "aya-log-common's Error"
        );
        assert_eq!(aya_level(LevelFilter::Trace), aya_log::Level::Trace as u8);
    }
}
