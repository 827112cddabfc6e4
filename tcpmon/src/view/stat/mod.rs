//! tcpstat's output: the `-o` format string, its `%` codes and `\` escapes
//! with tcpstat's exact printf precisions, `%NUMBER` file descriptors, and
//! the `-a`/`-b`/`-B` summaries.

pub mod view;

use std::io::Write;

use crate::engine::stat::{Line, Totals};

/// tcpstat's default format.
pub const DEFAULT_FORMAT: &[u8] = b"Time:%S\tn=%n\tavg=%a\tstddev=%d\tbps=%b\n";

/// A value a `%` code prints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Code {
    /// %A ARP packets.
    Arp,
    /// %a average size.
    Avg,
    /// %B bytes per second.
    BytesPerSec,
    /// %b bits per second.
    BitsPerSec,
    /// %C ICMP and ICMPv6 packets.
    Icmp,
    /// %d standard deviation of the size.
    StdDev,
    /// %I IPv4 packets.
    Ipv4,
    /// %l load over the last minute, relative to the peak.
    Load,
    /// %M largest size.
    Max,
    /// %m smallest size.
    Min,
    /// %N bytes.
    Bytes,
    /// %n packets.
    Packets,
    /// %p packets per second.
    PacketsPerSec,
    /// %R %S relative to the first packet.
    RelSecs,
    /// %r %s relative to the first packet.
    RelMicros,
    /// %S the interval's middle, whole seconds.
    Secs,
    /// %s the interval's middle, seconds.microseconds.
    Micros,
    /// %T TCP packets.
    Tcp,
    /// %U UDP packets.
    Udp,
    /// %V IPv6 packets.
    Ipv6,
}

impl Code {
    fn from_byte(b: u8) -> Option<Code> {
        use Code::*;
        Some(match b {
            b'A' => Arp,
            b'a' => Avg,
            b'B' => BytesPerSec,
            b'b' => BitsPerSec,
            b'C' => Icmp,
            b'd' => StdDev,
            b'I' => Ipv4,
            b'l' => Load,
            b'M' => Max,
            b'm' => Min,
            b'N' => Bytes,
            b'n' => Packets,
            b'p' => PacketsPerSec,
            b'R' => RelSecs,
            b'r' => RelMicros,
            b'S' => Secs,
            b's' => Micros,
            b'T' => Tcp,
            b'U' => Udp,
            b'V' => Ipv6,
            _ => return None,
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Piece {
    Text(Vec<u8>),
    Value(Code),
    /// `%NUMBER`: what follows goes to this file descriptor.
    Fd(i32),
}

/// A parsed `-o` format.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Format {
    pieces: Vec<Piece>,
}

impl Format {
    /// Parses like tcpstat: an unknown `%X` prints `%X`, `%%` prints `%`
    /// (tcpstat printed `%%`), any `\X` that is not a C escape prints `X`.
    /// A lone `%` or `\` at the end prints itself (tcpstat read past the
    /// end of the string there).
    pub fn parse(s: &[u8]) -> Format {
        let mut pieces = Vec::new();
        let mut text = Vec::new();
        let mut i = 0;
        while i < s.len() {
            let c = s[i];
            i += 1;
            let Some(&next) = s.get(i).filter(|_| c == b'%' || c == b'\\') else {
                text.push(c);
                continue;
            };
            i += 1;
            if c == b'\\' {
                text.push(match next {
                    b'a' => 0x07,
                    b'b' => 0x08,
                    b'f' => 0x0c,
                    b'n' => b'\n',
                    b'r' => b'\r',
                    b't' => b'\t',
                    b'v' => 0x0b,
                    other => other,
                });
                continue;
            }
            let piece = if let Some(code) = Code::from_byte(next) {
                Piece::Value(code)
            } else if next.is_ascii_digit() {
                let start = i - 1;
                while s.get(i).is_some_and(u8::is_ascii_digit) {
                    i += 1;
                }
                // tcpstat: descriptors above 256 mean standard output.
                let fd = std::str::from_utf8(&s[start..i])
                    .ok()
                    .and_then(|d| d.parse::<i32>().ok())
                    .filter(|&fd| fd <= 256)
                    .unwrap_or(1);
                Piece::Fd(fd)
            } else if next == b'%' {
                text.push(b'%');
                continue;
            } else {
                text.extend_from_slice(&[b'%', next]);
                continue;
            };
            if !text.is_empty() {
                pieces.push(Piece::Text(std::mem::take(&mut text)));
            }
            pieces.push(piece);
        }
        if !text.is_empty() {
            pieces.push(Piece::Text(text));
        }
        Format { pieces }
    }

    pub fn pieces(&self) -> &[Piece] {
        &self.pieces
    }

    /// Writes one interval. `relative` is `-R`.
    pub fn render(&self, line: &Line, relative: f64, out: &mut Outputs) {
        out.select(1);
        let c = line.counters;
        let n = c.packets as f64;
        let (avg, stddev) = if c.packets == 0 {
            (0.0, 0.0)
        } else {
            let avg = line.bytes / n;
            // Rounding can take an exact 0 a hair below zero: that is 0,
            // not tcpstat's -nan.
            (avg, (c.sum_sq as f64 / n - avg * avg).max(0.0).sqrt())
        };
        let dt = line.dt;
        let per_sec = |x: f64| if dt > 0.0 { x / dt } else { 0.0 };
        let mid = line.begin + dt / 2.0;
        for piece in &self.pieces {
            let code = match piece {
                Piece::Text(t) => {
                    out.write(t);
                    continue;
                }
                Piece::Fd(fd) => {
                    out.select(*fd);
                    continue;
                }
                Piece::Value(code) => *code,
            };
            let buf = out.buf();
            // Writing to a Vec cannot fail. tcpstat's %d is a C int; counts
            // beyond it are printed whole.
            let _ = match code {
                Code::Arp => write!(buf, "{}", c.arp),
                Code::Avg => write!(buf, "{avg:.2}"),
                Code::BytesPerSec => write!(buf, "{:.2}", per_sec(line.bytes)),
                Code::BitsPerSec => write!(buf, "{:.2}", per_sec(line.bytes) * 8.0),
                Code::Icmp => write!(buf, "{}", c.icmp),
                Code::StdDev => write!(buf, "{stddev:.2}"),
                Code::Ipv4 => write!(buf, "{}", c.ipv4),
                Code::Load => write!(
                    buf,
                    "{:.2}",
                    if line.peak == 0.0 {
                        1.0
                    } else {
                        line.load / line.peak
                    }
                ),
                Code::Max => write!(buf, "{}", c.max),
                Code::Min => write!(buf, "{}", c.min),
                Code::Bytes => write!(buf, "{:.0}", line.bytes),
                Code::Packets => write!(buf, "{}", c.packets),
                Code::PacketsPerSec => write!(buf, "{:.2}", per_sec(n)),
                // C's (int) cast truncates toward zero, as `as` does.
                Code::Secs => write!(buf, "{}", (mid + 0.5 - relative) as i64),
                Code::Micros => write!(buf, "{:.6}", mid - relative),
                // Relative to the first packet only: tcpstat subtracted -R
                // here as well.
                Code::RelSecs => write!(buf, "{}", (mid + 0.5 - line.first) as i64),
                Code::RelMicros => write!(buf, "{:.6}", mid - line.first),
                Code::Tcp => write!(buf, "{}", c.tcp),
                Code::Udp => write!(buf, "{}", c.udp),
                Code::Ipv6 => write!(buf, "{}", c.ipv6),
            };
        }
    }
}

/// Output buffered per file descriptor, in order: switching to another
/// descriptor first writes out what the current one holds, so lines going
/// to the same file keep their order.
pub struct Outputs {
    fd: i32,
    buf: Vec<u8>,
    /// Standard output was closed under us (a pipe's reader left).
    broken: bool,
}

impl Default for Outputs {
    fn default() -> Self {
        Outputs {
            fd: 1,
            buf: Vec::with_capacity(1 << 16),
            broken: false,
        }
    }
}

impl Outputs {
    fn select(&mut self, fd: i32) {
        if fd != self.fd {
            self.flush();
            self.fd = fd;
        }
    }

    fn buf(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }

    fn write(&mut self, b: &[u8]) {
        self.buf.extend_from_slice(b);
    }

    /// Writes out what is buffered once there is enough of it.
    pub fn flush_if_full(&mut self) {
        if self.buf.len() >= 1 << 16 {
            self.flush();
        }
    }

    /// Whether standard output can no longer be written.
    pub fn broken(&self) -> bool {
        self.broken
    }

    /// Writes everything buffered. Like tcpstat, a descriptor that cannot
    /// be written loses its output silently (the user named it), except
    /// standard output, whose loss ends the run.
    pub fn flush(&mut self) {
        let mut rest = &self.buf[..];
        while !rest.is_empty() {
            // SAFETY: writes initialised bytes from a live slice.
            let n = unsafe { libc::write(self.fd, rest.as_ptr().cast(), rest.len()) };
            if n < 0 {
                let err = std::io::Error::last_os_error();
                if err.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                if self.fd == 1 {
                    self.broken = true;
                }
                break;
            }
            rest = &rest[n as usize..];
        }
        self.buf.clear();
    }
}

/// tcpstat's human-readable size for `-a`.
fn human_bytes(b: f64) -> String {
    const K: f64 = 1024.0;
    if b > K * K * K {
        format!("{:8.1} GB", b / (K * K * K))
    } else if b > K * K {
        format!("{:8.1} MB", b / (K * K))
    } else if b > K {
        format!("{:8.1} KB", b / K)
    } else {
        format!("{b:8.1}  B")
    }
}

/// `-a`: the average rate extrapolated to longer periods.
pub fn write_accounting(out: &mut impl Write, t: &Totals) -> std::io::Result<()> {
    let x = if t.time > 0.0 { t.bytes / t.time } else { 0.0 };
    for (label, secs) in [
        ("sec", 1.0),
        ("minute", 60.0),
        ("hour", 3600.0),
        ("day", 86400.0),
        ("month", 86400.0 * 30.0),
    ] {
        writeln!(out, "Bytes/{label}\t= {}", human_bytes(x * secs))?;
    }
    Ok(())
}

/// `-b`/`-B`: the time spent above the limit, and the peak.
pub fn write_bandwidth(
    out: &mut impl Write,
    t: &Totals,
    limit: f64,
    smart: bool,
) -> std::io::Result<()> {
    let share = if t.time > 0.0 {
        100.0 * t.time_over / t.time
    } else {
        0.0
    };
    writeln!(
        out,
        "{}Time exceeding {limit:.2} bps:\t{:.2} sec.\t({share:.2}% of the time)",
        if smart { "" } else { "(Raw) " },
        t.time_over,
    )?;
    writeln!(out, "Peak Bandwidth: {:.2} bps", t.peak)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tcpmon_common::StatCounters;

    fn render(fmt: &[u8], sizes: &[u32]) -> String {
        let mut c = StatCounters::default();
        for &s in sizes {
            c.add(s, 0);
        }
        let line = Line {
            counters: &c,
            bytes: c.bytes as f64,
            begin: 100.0,
            dt: 1.0,
            load: 10.0,
            peak: 40.0,
            first: 99.0,
        };
        let mut out = Outputs::default();
        Format::parse(fmt).render(&line, 0.0, &mut out);
        String::from_utf8(out.buf).unwrap()
    }

    #[test]
    fn stddev_check_values() {
        assert_eq!(render(b"%d", &[40, 60, 40, 60]), "10.00");
        assert_eq!(render(b"%d", &[100, 200, 300, 400]), "111.80");
        assert_eq!(render(b"%d %a %m %M", &[]), "0.00 0.00 0 0");
    }

    #[test]
    fn every_code_and_precision() {
        assert_eq!(
            render(b"%n %N %a %B %b %p %M %m %l", &[100, 200]),
            "2 300 150.00 300.00 2400.00 2.00 200 100 0.25"
        );
        assert_eq!(render(b"%S %s %R %r", &[]), "101 100.500000 2 1.500000");
        assert_eq!(render(b"%A%C%I%T%U%V", &[]), "000000");
    }

    #[test]
    fn escapes_unknown_codes_and_percent() {
        assert_eq!(render(b"a\\tb\\n\\q\\\\%%%Z%", &[]), "a\tb\nq\\%%Z%");
        assert_eq!(render(b"x\\", &[]), "x\\");
        assert_eq!(
            Format::parse(b"%n%2x%999y%12").pieces(),
            [
                Piece::Value(Code::Packets),
                Piece::Fd(2),
                Piece::Text(b"x".to_vec()),
                Piece::Fd(1),
                Piece::Text(b"y".to_vec()),
                Piece::Fd(12),
            ]
        );
    }

    #[test]
    fn accounting_and_bandwidth_text() {
        let t = Totals {
            time: 2.0,
            time_over: 1.0,
            bytes: 392.0,
            peak: 2720.0,
        };
        let mut v = Vec::new();
        write_accounting(&mut v, &t).unwrap();
        let s = String::from_utf8(v).unwrap();
        assert!(
            s.starts_with("Bytes/sec\t=    196.0  B\nBytes/minute\t=     11.5 KB\n"),
            "{s}"
        );
        let mut v = Vec::new();
        write_bandwidth(&mut v, &t, 100.0, false).unwrap();
        assert_eq!(
            String::from_utf8(v).unwrap(),
            "(Raw) Time exceeding 100.00 bps:\t1.00 sec.\t(50.00% of the time)\nPeak Bandwidth: 2720.00 bps\n"
        );
    }
}
