//! `tcpmon stat`'s command line: tcpstat's, parsed the way its getopt does
//! (`-o FORMAT` or `-oFORMAT`, clustered flags such as `-el`, options and
//! the interval in any order, `--` ending options), so every tcpstat command
//! line means the same here.

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use clap::ValueEnum;

use super::KernelLogLevel;
use crate::engine::stat::{Mode, StatConfig};
use crate::view::stat::DEFAULT_FORMAT;

/// tcpstat's getopt string: flags, then options taking a value.
const FLAGS: &[u8] = b"h?aeFlp1";
const VALUED: &[u8] = b"BbfioRrs";
const KERNEL_LOG: &[u8] = b"--kernel-log";

#[derive(Clone, Debug, PartialEq)]
pub enum StatSource {
    /// `-r FILE` (`-` is standard input).
    File(PathBuf),
    /// `-i IFACE`, or `auto` when neither `-r` nor `-i` is given.
    Live(String),
}

#[derive(Clone, Debug, PartialEq)]
pub struct StatArgs {
    pub source: StatSource,
    pub format: Vec<u8>,
    pub filter: Option<String>,
    /// `-F`: write out after every interval.
    pub flush: bool,
    /// `-l`: sizes include the link-layer header.
    pub link_size: bool,
    /// Promiscuous unless `-p`.
    pub promisc: bool,
    /// `-R`: %S and %s relative to this many seconds.
    pub relative: f64,
    pub config: StatConfig,
    /// `--kernel-log LEVEL` (tcpmon's, not tcpstat's; see `KernelLogArgs`).
    pub kernel_log: KernelLogLevel,
}

/// Why the command line does not run: tcpstat prints its usage then.
#[derive(Debug, PartialEq)]
pub struct Usage {
    /// What was wrong; `None` for `-h`/`-?`.
    pub error: Option<String>,
}

impl Usage {
    fn bad(msg: impl Into<String>) -> Usage {
        Usage {
            error: Some(msg.into()),
        }
    }

    /// tcpstat's usage text, naming the program as it was called.
    pub fn text(prog: &str) -> String {
        format!(
            "{prog} (tcpmon {}), tcpstat 1.5 compatible
usage: {prog} [-?haeFlp] [-b bps] [-B bps] [-f filter expr] [-i interface]
\t    [-o output] [-R seconds] [-r filename] [-s seconds] [interval]
\t-?, -h \t\t- display this help
\t-a \t\t- accounting mode
\t-b bps\t\t- bandwidth mode, where bps is bits/second
\t-B bps\t\t- dumb bandwidth mode, where bps is bits/second
\t-e \t\t- do not print empty intervals
\t-F\t \t- flush stdout after printing each line
\t-f filter expr \t- packet filter expression (like in tcpdump)
\t-i interface\t- do live capture on [interface], not from file
\t-l\t\t- include linklayer in packet size calc
\t-o output \t- format for the output of stats (see manpage)
\t-p\t\t- non-promiscuous mode when doing live capture
\t-R seconds \t- display time relative to [seconds]
\t-r filename \t- read data from [filename]
\t-s seconds \t- capture only [seconds] long (-1 is infinite)
\t--kernel-log LEVEL - the kernel programs' diagnostics on stderr
\t\t\t  (off, error, warn, info, debug, trace; live only)

\tinterval\t- time interval (seconds) for taking samples
",
            env!("CARGO_PKG_VERSION")
        )
    }
}

/// A number of seconds or bits per second. tcpstat used atof, which reads
/// "abc" as 0; here it is an error naming the value.
fn number(opt: char, v: &[u8]) -> Result<f64, Usage> {
    std::str::from_utf8(v)
        .ok()
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|x| x.is_finite())
        .ok_or_else(|| {
            Usage::bad(format!(
                "-{opt}: {:?} is not a number",
                String::from_utf8_lossy(v)
            ))
        })
}

/// Parses the arguments after the program (or subcommand) name.
pub fn parse(args: &[OsString]) -> Result<StatArgs, Usage> {
    let mut source = None;
    let mut format = DEFAULT_FORMAT.to_vec();
    let mut filter = None;
    let (mut flush, mut link_size, mut promisc) = (false, false, true);
    let mut relative = 0.0;
    let mut capture_secs = None;
    let mut show_empty = true;
    let mut mode = Mode::Intervals;
    let mut whole = false;
    let mut positional: Vec<&[u8]> = Vec::new();
    let mut kernel_log = KernelLogLevel::Off;
    let mut i = 0;
    while i < args.len() {
        let arg = args[i].as_bytes();
        i += 1;
        if arg == b"--" {
            positional.extend(args[i..].iter().map(|a| a.as_bytes()));
            break;
        }
        // The one long option, tcpmon's own: `--kernel-log LEVEL` or
        // `--kernel-log=LEVEL`.
        if let Some(rest) = arg.strip_prefix(KERNEL_LOG) {
            let value = match rest.strip_prefix(b"=") {
                Some(v) => v,
                None if rest.is_empty() && i < args.len() => {
                    i += 1;
                    args[i - 1].as_bytes()
                }
                _ => return Err(Usage::bad("--kernel-log needs a level")),
            };
            let value = String::from_utf8_lossy(value);
            kernel_log = KernelLogLevel::from_str(&value, true)
                .map_err(|_| Usage::bad(format!("--kernel-log: no level {value:?}")))?;
            continue;
        }
        if arg.len() < 2 || arg[0] != b'-' {
            positional.push(arg);
            continue;
        }
        let mut j = 1;
        while j < arg.len() {
            let opt = arg[j];
            j += 1;
            if FLAGS.contains(&opt) {
                match opt {
                    b'h' | b'?' => return Err(Usage { error: None }),
                    b'a' => mode = Mode::Accounting,
                    b'e' => show_empty = false,
                    b'F' => flush = true,
                    b'l' => link_size = true,
                    b'p' => promisc = false,
                    _ => whole = true, // -1
                }
                continue;
            }
            if !VALUED.contains(&opt) {
                return Err(Usage::bad(format!(
                    "invalid option -- '{}'",
                    char::from(opt)
                )));
            }
            // The value is the rest of this argument, or the next one.
            let value: &[u8] = if j < arg.len() {
                &arg[j..]
            } else if i < args.len() {
                i += 1;
                args[i - 1].as_bytes()
            } else {
                return Err(Usage::bad(format!(
                    "option requires an argument -- '{}'",
                    char::from(opt)
                )));
            };
            j = arg.len();
            let o = char::from(opt);
            match opt {
                b'B' | b'b' => {
                    let bps = number(o, value)?;
                    if bps <= 0.0 {
                        return Err(Usage::bad(format!("-{o}: the limit must be above 0")));
                    }
                    mode = Mode::Bandwidth {
                        bps,
                        smart: opt == b'b',
                    };
                }
                b'f' => filter = Some(String::from_utf8_lossy(value).into_owned()),
                b'i' => source = Some(StatSource::Live(String::from_utf8_lossy(value).into())),
                b'o' => format = value.to_vec(),
                b'R' => {
                    relative = number(o, value)?;
                    if relative < 0.0 {
                        return Err(Usage::bad("-R: seconds must not be negative"));
                    }
                }
                b'r' => {
                    source = Some(StatSource::File(PathBuf::from(
                        std::ffi::OsStr::from_bytes(value),
                    )))
                }
                _ => {
                    let s = number(o, value)?;
                    capture_secs = match s {
                        -1.0 => None,
                        s if s > 0.0 => Some(s),
                        _ => return Err(Usage::bad("-s: seconds must be above 0, or -1")),
                    };
                }
            }
        }
    }
    let mut interval = if whole {
        None
    } else {
        match positional.first() {
            None => Some(5.0),
            Some(v) => match number('i', v) {
                Ok(-1.0) => None,
                Ok(x) if x > 0.0 => Some(x),
                _ => {
                    return Err(Usage::bad(format!(
                        "Bad interval value {:?}: seconds above 0, or -1",
                        String::from_utf8_lossy(v)
                    )));
                }
            },
        }
    };
    let source = source.unwrap_or_else(|| StatSource::Live("auto".into()));
    if !promisc && matches!(source, StatSource::File(_)) {
        return Err(Usage::bad("-p option not compatible with -r"));
    }
    // A capture shorter than the interval is one interval, as in tcpstat.
    if let (Some(cap), Some(iv)) = (capture_secs, interval) {
        if cap < iv {
            interval = None;
        }
    }
    Ok(StatArgs {
        source,
        format,
        filter,
        flush,
        link_size,
        promisc,
        relative,
        kernel_log,
        config: StatConfig {
            interval,
            capture_secs,
            show_empty,
            mode,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<StatArgs, Usage> {
        parse(&args.iter().map(OsString::from).collect::<Vec<_>>())
    }

    #[test]
    fn kernel_log_beside_tcpstats_options() {
        assert_eq!(p(&["-i", "eth0"]).unwrap().kernel_log, KernelLogLevel::Off);
        for args in [
            &["--kernel-log", "debug", "-i", "eth0", "1"][..],
            &["-i", "eth0", "--kernel-log=DEBUG", "1"],
        ] {
            let a = p(args).unwrap();
            assert_eq!(a.kernel_log, KernelLogLevel::Debug, "{args:?}");
            assert_eq!(a.source, StatSource::Live("eth0".into()));
        }
        assert!(p(&["--kernel-log"]).is_err());
        assert!(p(&["--kernel-log", "loud"]).is_err());
    }

    #[test]
    fn getopt_forms() {
        let a = p(&["-r", "x.pcap", "-o%n\\n", "-el", "0.5"]).unwrap();
        assert_eq!(a.source, StatSource::File("x.pcap".into()));
        assert_eq!(a.format, b"%n\\n");
        assert!(a.link_size && !a.config.show_empty);
        assert_eq!(a.config.interval, Some(0.5));
        // Interval before the options, -1 as a flag, -s -1 as a value.
        let a = p(&["2", "-rx", "-1", "-s", "-1"]).unwrap();
        assert_eq!((a.config.interval, a.config.capture_secs), (None, None));
        let a = p(&[]).unwrap();
        assert_eq!(a.source, StatSource::Live("auto".into()));
        assert_eq!(a.config.interval, Some(5.0));
        assert_eq!(a.format, DEFAULT_FORMAT);
        assert_eq!(p(&["-R100", "-rf"]).unwrap().relative, 100.0);
        let a = p(&["-r", "-", "--", "-1"]).unwrap();
        assert_eq!(a.config.interval, None);
        assert_eq!(a.source, StatSource::File("-".into()));
    }

    #[test]
    fn modes_and_capture_limit() {
        let a = p(&["-b", "28800", "-rf", "0.5"]).unwrap();
        assert_eq!(
            a.config.mode,
            Mode::Bandwidth {
                bps: 28800.0,
                smart: true
            }
        );
        let a = p(&["-B1e3", "-a", "-rf"]).unwrap();
        assert_eq!(a.config.mode, Mode::Accounting);
        // -s shorter than the interval: one interval.
        let a = p(&["-s", "0.5", "-rf", "1"]).unwrap();
        assert_eq!(
            (a.config.interval, a.config.capture_secs),
            (None, Some(0.5))
        );
    }

    #[test]
    fn errors_are_usage() {
        assert_eq!(p(&["-h"]), Err(Usage { error: None }));
        assert_eq!(p(&["-?"]), Err(Usage { error: None }));
        for bad in [
            &["-x"][..],
            &["-o"],
            &["-b", "0"],
            &["-b", "fast"],
            &["-rf", "0"],
            &["-rf", "soon"],
            &["-s", "0"],
            &["-R", "-3"],
            &["-p", "-rf"],
        ] {
            assert!(p(bad).unwrap_err().error.is_some(), "{bad:?}");
        }
    }
}
