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

/// A handshake round trip: microseconds below 10 ms, then milliseconds.
pub fn rtt(ns: Option<u64>) -> String {
    match ns {
        None => "-".into(),
        Some(ns) if ns < 10_000_000 => format!("{}us", ns / 1_000),
        Some(ns) if ns < 10_000_000_000 => format!("{:.1}ms", ns as f64 / 1e6),
        Some(ns) => format!("{}s", ns / 1_000_000_000),
    }
}

/// A count in at most five characters: 1023, 12.3K, 512M (powers of 1024).
pub fn amount(n: u64) -> String {
    const UNITS: [&str; 5] = ["K", "M", "G", "T", "P"];
    if n < 1024 {
        return n.to_string();
    }
    let mut v = n as f64;
    let mut unit = "";
    for u in UNITS {
        if v < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    if v < 10.0 {
        format!("{v:.1}{unit}")
    } else {
        format!("{v:.0}{unit}")
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
    fn rtt_and_amounts() {
        assert_eq!(rtt(None), "-");
        assert_eq!(rtt(Some(85_000)), "85us");
        assert_eq!(rtt(Some(12_345_678)), "12.3ms");
        assert_eq!(rtt(Some(12_000_000_000)), "12s");
        assert_eq!(amount(1023), "1023");
        assert_eq!(amount(1536), "1.5K");
        assert_eq!(amount(50 << 20), "50M");
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
