//! A running process's CPU time and memory from /proc, for the benchmarks
//! and the soak.

use anyhow::{Context, Result};

fn read(pid: u32, file: &str) -> Result<String> {
    let path = format!("/proc/{pid}/{file}");
    std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))
}

/// User plus system time so far, in clock ticks ([`ticks_per_sec`]).
pub fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = read(pid, "stat")?;
    // After the command name's closing parenthesis: fields 3 on; utime
    // and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    Ok(f[11] + f[12])
}

pub fn ticks_per_sec() -> f64 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) as f64 }
}

/// VmRSS and VmHWM (the peak), in KiB.
pub fn memory_kib(pid: u32) -> Result<(u64, u64)> {
    let status = read(pid, "status")?;
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Ok((kib("VmRSS:"), kib("VmHWM:")))
}
