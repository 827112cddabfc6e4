//! tcptrack's cell formats.

/// Idle time: `Ns` under a minute, then `Nm`, then `Nh`.
pub fn idle(ns: u64) -> String {
    let s = ns / 1_000_000_000;
    if s < 60 {
        format!("{s}s")
    } else if s < 3600 {
        format!("{}m", s / 60)
    } else {
        format!("{}h", s / 3600)
    }
}

/// Speed in whole units: `B/s` below 1 KiB/s, then `KB/s`, `MB/s`, `GB/s`.
pub fn speed(bytes_per_sec: f64) -> String {
    let b = bytes_per_sec.max(0.0) as u64;
    const K: u64 = 1024;
    if b < K {
        format!("{b} B/s")
    } else if b < K * K {
        format!("{} KB/s", b / K)
    } else if b < K * K * K {
        format!("{} MB/s", b / (K * K))
    } else {
        format!("{} GB/s", b / (K * K * K))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_units() {
        let s = 1_000_000_000;
        assert_eq!(idle(0), "0s");
        assert_eq!(idle(59 * s + s / 2), "59s");
        assert_eq!(idle(60 * s), "1m");
        assert_eq!(idle(3599 * s), "59m");
        assert_eq!(idle(7200 * s), "2h");
    }

    #[test]
    fn speed_units() {
        assert_eq!(speed(0.0), "0 B/s");
        assert_eq!(speed(1023.9), "1023 B/s");
        assert_eq!(speed(1024.0), "1 KB/s");
        assert_eq!(speed(1024.0 * 1024.0 - 1.0), "1023 KB/s");
        assert_eq!(speed(5.5 * 1024.0 * 1024.0), "5 MB/s");
        assert_eq!(speed(3.0 * 1024.0 * 1024.0 * 1024.0), "3 GB/s");
    }
}
