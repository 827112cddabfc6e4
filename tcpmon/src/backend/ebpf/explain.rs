//! Turning the kernel's refusals (permissions, missing ring buffers, the
//! verifier) into errors that say what to do.

use std::io;

use anyhow::anyhow;
use aya::EbpfError;
use aya::maps::MapError;
use aya::programs::ProgramError;
use aya::util::KernelVersion;

use super::load::kernel_at_least;

const PERMISSION_HINT: &str =
    "loading eBPF programs needs root or CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON: run with sudo";

fn errno_in_chain(e: &(dyn std::error::Error + 'static), errno: i32) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<io::Error>()
            && io.raw_os_error() == Some(errno)
        {
            return true;
        }
        cur = err.source();
    }
    false
}

pub(super) fn is_permission(e: &(dyn std::error::Error + 'static)) -> bool {
    errno_in_chain(e, libc::EPERM)
}

/// The hint, then what failed and the errno, once each (aya's errors
/// repeat their message down the source chain).
pub(super) fn permission_error(e: impl std::error::Error + Send + Sync + 'static) -> anyhow::Error {
    let mut root: &dyn std::error::Error = &e;
    while let Some(next) = root.source() {
        root = next;
    }
    anyhow!("{PERMISSION_HINT} ({e}: {root})")
}

pub(super) fn explain_load(e: EbpfError) -> anyhow::Error {
    if is_permission(&e) {
        return permission_error(e);
    }
    if let EbpfError::MapError(MapError::CreateError { name, io_error }) = &e
        && name == tcpmon_common::MAP_EVENTS
        && io_error.raw_os_error() == Some(libc::EINVAL)
        && !kernel_at_least(5, 8)
    {
        let running = KernelVersion::current()
            .map(|v| v.to_string())
            .unwrap_or_else(|_| "unknown".into());
        return anyhow::Error::new(e).context(format!(
            "this kernel ({running}) has no BPF ring buffers: tcpmon's eBPF backend needs \
             Linux >= 5.8 (replay captures with -T instead)"
        ));
    }
    if let EbpfError::ProgramError(pe) = e {
        return explain_program("the eBPF object", pe);
    }
    anyhow::Error::new(e).context("loading tcpmon's eBPF object into the kernel")
}

/// Lines of the verifier log kept in the error; the whole log is logged at
/// debug level.
const LOG_HEAD: usize = 20;
const LOG_TAIL: usize = 5;

/// The first `LOG_HEAD` lines of a verifier log and, when it is longer, its
/// last `LOG_TAIL`, where the verifier says why it gave up.
fn verifier_excerpt(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    let mut excerpt = lines[..lines.len().min(LOG_HEAD)].join("\n");
    if lines.len() > LOG_HEAD {
        let tail = lines.len().saturating_sub(LOG_TAIL).max(LOG_HEAD);
        if tail > LOG_HEAD {
            excerpt.push_str(&format!("\n... ({} lines omitted)", tail - LOG_HEAD));
        }
        excerpt.push('\n');
        excerpt.push_str(&lines[tail..].join("\n"));
    }
    excerpt
}

pub(super) fn explain_program(name: &str, e: ProgramError) -> anyhow::Error {
    if is_permission(&e) {
        return permission_error(e);
    }
    if let ProgramError::LoadError {
        io_error,
        verifier_log,
    } = &e
    {
        let log = verifier_log.to_string();
        log::debug!("verifier log for {name}:\n{log}");
        let excerpt = verifier_excerpt(&log);
        return anyhow!(
            "the kernel's verifier rejected {name} ({io_error}); this kernel cannot run \
             tcpmon's programs as built, please report it with `uname -r`. Verifier log:\n{excerpt}"
        );
    }
    anyhow::Error::new(e).context(format!("loading {name} into the kernel"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifier_excerpt_keeps_the_head_and_the_verdict() {
        let short: String = (1..=3).map(|i| format!("line {i}\n")).collect();
        assert_eq!(verifier_excerpt(&short), "line 1\nline 2\nline 3");
        let long: String = (1..=100).map(|i| format!("line {i}\n")).collect();
        let e = verifier_excerpt(&long);
        let lines: Vec<&str> = e.lines().collect();
        assert_eq!(lines.len(), LOG_HEAD + 1 + LOG_TAIL);
        assert_eq!(lines[LOG_HEAD - 1], "line 20");
        assert_eq!(lines[LOG_HEAD], "... (75 lines omitted)");
        assert_eq!(lines.last(), Some(&"line 100"));
        let just_over: String = (1..=22).map(|i| format!("line {i}\n")).collect();
        assert_eq!(verifier_excerpt(&just_over).lines().count(), 22);
    }
}
