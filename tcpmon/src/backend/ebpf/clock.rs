//! The kernel programs' clock (CLOCK_MONOTONIC) as user space reads it,
//! and its offset to Unix time.

/// Nanoseconds to add to a `bpf_ktime_get_ns()` value (CLOCK_MONOTONIC) to
/// get Unix time: CLOCK_REALTIME - CLOCK_MONOTONIC, measured now. Taken as
/// the tightest of a few bracketed readings, so a preemption between the two
/// clock reads does not skew it.
pub fn monotonic_to_unix_offset_ns() -> i64 {
    let mut best = (i64::MAX, 0i64);
    for _ in 0..5 {
        let m0 = clock_ns(libc::CLOCK_MONOTONIC);
        let r = clock_ns(libc::CLOCK_REALTIME);
        let m1 = clock_ns(libc::CLOCK_MONOTONIC);
        let width = m1.wrapping_sub(m0);
        if width < best.0 {
            best = (width, r.wrapping_sub(m0.wrapping_add(width / 2)));
        }
    }
    best.1
}

/// Now on the kernel programs' clock (bpf_ktime_get_ns is CLOCK_MONOTONIC).
pub fn monotonic_now_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC) as u64
}

// time_t and c_long are i64 only on 64-bit targets.
#[allow(clippy::unnecessary_cast)]
fn clock_ns(clock: libc::clockid_t) -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: writes one timespec on our stack; both clocks always exist.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    (ts.tv_sec as i64)
        .wrapping_mul(1_000_000_000)
        .wrapping_add(ts.tv_nsec as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_plus_offset_is_unix_time() {
        let off = monotonic_to_unix_offset_ns();
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: writes one timespec.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        let mono = ts.tv_sec * 1_000_000_000 + ts.tv_nsec;
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970")
            .as_nanos() as i64;
        assert!(
            (mono + off - unix).abs() < 50_000_000,
            "{}",
            mono + off - unix
        );
    }
}
