//! `tcpmon stat` against Debian's tcpstat: byte-identical output on every
//! Ethernet capture in ../shared/pcaps and on a capture of real traffic made
//! here, for the default format and one using every code, intervals 0.5, 1,
//! 5 and -1, with -e, -l and -s; -a, -b and -B where tcpstat is right, and
//! tcpmon's correct value where it is not (SEMANTICS.md, README).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::netns::{Lab, can_run_kernel_tests, run};

const TCPMON: &str = env!("CARGO_BIN_EXE_tcpmon");
/// Every code, escapes and an unknown code (`%%` is a documented
/// difference, checked apart).
const EVERY_CODE: &str = "%A %a %B %b %C %d %I %l %M %m %N %n %p %R %r %S %s %T %U %V|\\t%q\\n";
/// Without %C: IPv6 traffic has ICMPv6 behind a hop-by-hop header (MLD),
/// which tcpstat does not look past.
const NO_ICMP: &str = "%A %a %B %b %d %I %l %M %m %N %n %p %R %r %S %s %T %U %V\\n";
/// The codes that do not depend on classification.
const SIZE_CODES: &str = "%a %B %b %d %l %M %m %N %n %p %R %r %S %s\\n";
const INTERVALS: [&str; 4] = ["0.5", "1", "5", "-1"];

/// Ethernet captures tcpstat cannot read whole: Debian's libpcap stops at a
/// second interface with another link type or snap length.
fn libpcap_refuses(file: &str) -> bool {
    matches!(
        file,
        "zeek__ldap-gap-data-missing.pcapng" | "pcapplusplus__pcapng-example.pcapng"
    )
}

fn tool(program: &str, file: &Path, args: &[&str]) -> String {
    let mut cmd = match program {
        "tcpstat" => {
            // tcpstat pads a gap forever in some cases (SEMANTICS.md).
            let mut c = Command::new("timeout");
            c.args(["-s", "KILL", "60", "tcpstat"]);
            c
        }
        _ => {
            let mut c = Command::new(TCPMON);
            c.arg("stat");
            c
        }
    };
    cmd.arg("-r").arg(file).args(args);
    let out = cmd
        .stderr(Stdio::piped())
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e} (apt-get install tcpstat)"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn compare(file: &Path, args: &[&str]) -> (String, String) {
    let theirs = tool("tcpstat", file, args);
    let ours = tool("tcpmon", file, args);
    (theirs, ours)
}

fn assert_same(file: &Path, args: &[&str]) {
    let (theirs, ours) = compare(file, args);
    assert!(
        theirs == ours,
        "{} {args:?}: tcpstat (left) and tcpmon (right) differ:\n{}",
        file.display(),
        first_difference(&theirs, &ours)
    );
}

fn first_difference(a: &str, b: &str) -> String {
    for (i, (x, y)) in a.lines().zip(b.lines()).enumerate() {
        if x != y {
            return format!("line {}:\n  {x:?}\n  {y:?}", i + 1);
        }
    }
    format!("{} lines against {}", a.lines().count(), b.lines().count())
}

/// Seconds from the first packet to the last, as tcpmon measures it.
fn span(file: &Path) -> f64 {
    let mid: f64 = tool("tcpmon", file, &["-o", "%r", "-1"]).parse().unwrap();
    mid * 2.0
}

/// The intervals worth running: a capture spanning years at 0.5 s is a
/// billion padding lines for both tools.
fn intervals(file: &Path) -> Vec<&'static str> {
    let span = span(file);
    INTERVALS
        .into_iter()
        .filter(|iv| *iv == "-1" || span / iv.parse::<f64>().unwrap() < 100_000.0)
        .collect()
}

/// Everything tcpstat gets right, on one capture, with the format `every`.
fn golden(file: &Path, every: &str) {
    for iv in intervals(file) {
        let iv_args = ["--", iv];
        assert_same(file, &iv_args);
        for opts in [&[][..], &["-e"], &["-l"], &["-e", "-l"]] {
            let mut a: Vec<&str> = opts.to_vec();
            a.extend(["-o", every]);
            a.extend(iv_args);
            assert_same(file, &a);
        }
        capture_limit(file, iv, every);
        summaries(file, iv);
    }
}

/// `-s 2`: identical where an interval fits in 2 s; otherwise the run is
/// one interval, and tcpmon prints only that one where tcpstat went on
/// padding with zero-length intervals.
fn capture_limit(file: &Path, iv: &str, every: &str) {
    let args = ["-s", "2", "-o", every, "--", iv];
    if iv != "-1" && iv.parse::<f64>().unwrap() <= 2.0 {
        assert_same(file, &args);
        return;
    }
    // tcpstat may pad forever here (when the last packet is within 2 s of
    // the first, say): its first line is written at once, unbuffered.
    let theirs = Command::new("timeout")
        .args(["-s", "KILL", "3", "tcpstat", "-r"])
        .arg(file)
        .args(args)
        .output()
        .unwrap()
        .stdout;
    let theirs = String::from_utf8(theirs).unwrap();
    let ours = tool("tcpmon", file, &args);
    let first = theirs.split_inclusive('\n').next().unwrap_or("");
    // A single packet makes a zero-length interval: tcpstat's rates are
    // inf and its load nan, tcpmon's 0 and 1.
    let fixed: Vec<String> = first
        .split(' ')
        .map(|w| match w {
            "inf" => "0.00".into(),
            "-nan" | "nan" => "1.00".into(),
            w => w.to_string(),
        })
        .collect();
    assert_eq!(ours, fixed.join(" "), "{} {args:?}", file.display());
}

/// -a, -b and -B: tcpstat counts the last interval's time twice. tcpmon's
/// figures are checked against totals from tcpstat's own interval lines.
fn summaries(file: &Path, iv: &str) {
    let lines = tool("tcpstat", file, &["-o", "%N %b\n", "--", iv]);
    let rows: Vec<(f64, f64)> = lines
        .lines()
        .map(|l| {
            let (n, b) = l.split_once(' ').unwrap();
            (n.parse().unwrap(), b.parse().unwrap())
        })
        .collect();
    let time = match iv {
        "-1" => span(file),
        _ => rows.len() as f64 * iv.parse::<f64>().unwrap(),
    };
    let bytes: f64 = rows.iter().map(|r| r.0).sum();
    let ours = tool("tcpmon", file, &["-a", "--", iv]);
    let per_sec = ours
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("Bytes/sec\t= "))
        .unwrap_or_else(|| panic!("{ours}"));
    let expect = if time > 0.0 { bytes / time } else { 0.0 };
    assert_eq!(per_sec, human(expect), "{} -a {iv}", file.display());
    assert_eq!(ours.lines().count(), 5);

    let peak = rows.iter().map(|r| r.1).fold(0.0, f64::max);
    let limit = 10_000.0;
    for flag in ["-b", "-B"] {
        let args = [flag, "10000", "--", iv];
        let (theirs, ours) = compare(file, &args);
        // Seconds above the limit and the peak are right in tcpstat.
        let secs = |s: &str| s.split('\t').nth(1).map(str::to_owned);
        let (t1, o1) = (theirs.lines().next(), ours.lines().next());
        assert_eq!(t1.and_then(secs), o1.and_then(secs), "{args:?}");
        assert_eq!(theirs.lines().nth(1), ours.lines().nth(1), "{args:?}");
        assert_eq!(
            ours.lines().nth(1).unwrap(),
            format!("Peak Bandwidth: {peak:.2} bps")
        );
        let over: f64 = o1
            .and_then(secs)
            .unwrap()
            .trim_end_matches(" sec.")
            .parse()
            .unwrap();
        // The seconds above are printed rounded: allow for that.
        let share: f64 = o1
            .unwrap()
            .rsplit_once('(')
            .and_then(|(_, p)| p.split('%').next())
            .unwrap()
            .parse()
            .unwrap();
        let expect = if time > 0.0 { 100.0 * over / time } else { 0.0 };
        let slack = if time > 0.0 {
            100.0 * 0.005 / time + 0.01
        } else {
            0.0
        };
        assert!(
            (share - expect).abs() <= slack,
            "{} {args:?}: {share}% of the time, expected {expect}",
            file.display()
        );
        let raw = if flag == "-B" { "(Raw) " } else { "" };
        assert!(
            o1.unwrap()
                .starts_with(&format!("{raw}Time exceeding {limit:.2} bps:\t"))
        );
        if flag == "-B" {
            let above = rows.iter().filter(|r| r.1 > limit).count() as f64;
            let dt = if iv == "-1" {
                time
            } else {
                iv.parse().unwrap()
            };
            assert_eq!(format!("{over:.2}"), format!("{:.2}", above * dt));
        }
    }
}

fn human(b: f64) -> String {
    let k = 1024.0;
    if b > k * k * k {
        format!("{:8.1} GB", b / (k * k * k))
    } else if b > k * k {
        format!("{:8.1} MB", b / (k * k))
    } else if b > k {
        format!("{:8.1} KB", b / k)
    } else {
        format!("{b:8.1}  B")
    }
}

fn have_tcpstat() -> bool {
    let ok = Command::new("tcpstat")
        .arg("-h")
        .stderr(Stdio::null())
        .status()
        .is_ok();
    assert!(
        ok || std::env::var_os("CI").is_none(),
        "tcpstat is required under CI (apt-get install tcpstat)"
    );
    ok
}

/// The shared Ethernet captures libpcap reads, each with its path and the
/// codes to compare: all of them, or only the sizes where frames are
/// VLAN-tagged (tcpstat does not look under the tags).
fn ethernet_captures<'a>(
    dir: &Path,
    rows: &'a [common::ManifestRow],
) -> Vec<(&'a common::ManifestRow, PathBuf, &'static str)> {
    rows.iter()
        .filter(|r| r.link_type() == 1 && !libpcap_refuses(&r.file))
        .map(|r| {
            let codes = match r.field_u64("vlan_pkts") {
                0 => EVERY_CODE,
                _ => SIZE_CODES,
            };
            (r, r.path(dir), codes)
        })
        .collect()
}

#[test]
fn shared_ethernet_captures_match_tcpstat() {
    let (Some(dir), Some(rows)) = (common::shared_pcaps(), common::manifest()) else {
        return;
    };
    if !have_tcpstat() {
        return;
    }
    let mut checked = 0;
    for (_, path, every) in ethernet_captures(&dir, &rows) {
        golden(&path, every);
        checked += 1;
    }
    assert!(checked >= 15, "only {checked} Ethernet captures checked");
}

/// Where tcpstat classifies nothing (VLAN tags, cooked and raw links, BSD
/// loopback IPv6) tcpmon counts by the real network layer: here against
/// tshark's counts, and the sizes without the link header.
#[test]
fn classification_under_vlan_cooked_and_raw_links() {
    let Some(dir) = common::shared_pcaps() else {
        return;
    };
    // file, %I %V %T %U %C %A, then %N.
    let cases = [
        (
            "pcapplusplus__one_http_stream_rst.pcap",
            "10 0 10 0 0 0",
            2220,
        ),
        // The MPLS-labelled frames stay unclassified.
        ("zeek__mixed-vlan-mpls.pcap", "36 0 36 0 0 0", 15745),
        // SLL2: 20 bytes of header off every frame.
        (
            "lwerdna__simple_http_sll2.pcap",
            "24 0 24 0 0 0",
            3593 - 24 * 20,
        ),
        ("pcapplusplus__raw_ip.pcap", "50 50 92 8 0 0", 31018),
        // BSD loopback: 4 bytes off, AF_INET6 30 is IPv6.
        ("zeek__redis-attr.pcap", "24 4 28 0 0 0", 1842 - 28 * 4),
        (
            "tcpdump__resp_3_malicious.pcap",
            "163 0 163 0 0 0",
            12092 - 163 * 16,
        ),
    ];
    for (file, classes, bytes) in cases {
        let out = tool(
            "tcpmon",
            &dir.join(file),
            &["-o", "%I %V %T %U %C %A|%N", "-1"],
        );
        assert_eq!(out, format!("{classes}|{bytes}"), "{file}");
    }
}

/// An Ethernet pcap file without frames, in `dir`.
fn empty_pcap(dir: &Path) -> PathBuf {
    let path = dir.join("empty.pcap");
    let mut header = vec![0xd4, 0xc3, 0xb2, 0xa1, 2, 0, 4, 0];
    header.extend([0; 8]);
    header.extend(65535u32.to_le_bytes());
    header.extend(1u32.to_le_bytes());
    std::fs::write(&path, &header).unwrap();
    path
}

/// The documented differences, each against what tcpstat prints.
#[test]
fn tcpstat_bugs_not_copied() {
    let Some(dir) = common::shared_pcaps() else {
        return;
    };
    let dir = dir.as_path();
    let tmp = std::env::temp_dir().join(format!("tcpmon-stat-bugs-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    // An empty capture prints nothing (tcpstat: one interval at the epoch).
    let empty = empty_pcap(&tmp);
    assert_eq!(tool("tcpmon", &empty, &[]), "");
    // One packet with -1: rates 0, not inf/nan.
    let one = tmp.join("one.pcap");
    run(Command::new("tcpdump")
        .args(["-r"])
        .arg(dir.join("chrissanders__nowebaccess3.pcapng"))
        .args(["-c", "1", "-w"])
        .arg(&one)
        .stderr(Stdio::null()));
    assert_eq!(
        tool("tcpmon", &one, &["-1"]),
        "Time:1268914566\tn=1\tavg=60.00\tstddev=0.00\tbps=0.00\n"
    );
    // %% is one percent sign; -R leaves %R/%r relative to the first packet.
    let f = dir.join("chrissanders__nowebaccess3.pcapng");
    assert_eq!(
        tool("tcpmon", &f, &["-R", "100", "-o", "%%|%s|%r|%R\n", "1"]),
        "%|1268914466.529657|0.500000|1\n%|1268914467.529657|1.500000|2\n"
    );
    let _ = std::fs::remove_dir_all(&tmp);
}

#[test]
fn tcpstat_program_name_and_command_line() {
    let dir = std::env::temp_dir().join(format!("tcpmon-argv0-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let link = dir.join("tcpstat");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(TCPMON, &link).unwrap();
    let out = Command::new(&link).arg("-h").output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "tcpstat exits 1 after its usage"
    );
    let usage = String::from_utf8_lossy(&out.stderr);
    assert!(usage.contains("usage: tcpstat [-?haeFlp]"), "{usage}");
    let out = Command::new(&link).args(["-x"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid option -- 'x'"));
    // A wrong filter expression: tcpdump's words, before any frame is read.
    let empty = empty_pcap(&dir);
    common::fails_with(
        Command::new(&link)
            .args(["-f", "tcp port", "-r"])
            .arg(&empty),
        "can't parse filter expression",
    );
    if let Some(pcaps) = common::shared_pcaps() {
        // Standard input, clustered flags, the interval first.
        let f = pcaps.join("zeek__nmap-vsn.pcap");
        let out = Command::new(&link)
            .args(["0.5", "-elr", "-", "-o%n\\n"])
            .stdin(std::fs::File::open(&f).unwrap())
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8(out.stdout).unwrap(),
            tool("tcpmon", &f, &["-e", "-l", "-o", "%n\\n", "0.5"])
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `-f EXPR`: the packets `tcpdump -r FILE EXPR` keeps, so the output is
/// tcpstat's `-f` byte for byte, on every Ethernet capture and for every
/// expression of the filter tests; where an expression keeps nothing,
/// tcpmon prints nothing (tcpstat: its one interval at the epoch).
#[test]
fn filter_expressions_match_tcpstat() {
    let (Some(dir), Some(rows)) = (common::shared_pcaps(), common::manifest()) else {
        return;
    };
    if !have_tcpstat() {
        return;
    }
    let (mut same, mut empty) = (0, 0);
    for (row, path, format) in ethernet_captures(&dir, &rows) {
        for expr in common::filters::EXPRESSIONS {
            let args = ["-f", expr, "-o", format, "-1"];
            let (theirs, ours) = compare(&path, &args);
            if ours.is_empty() {
                assert_eq!(
                    theirs.lines().count(),
                    1,
                    "{} -f {expr:?}: tcpmon printed nothing, tcpstat {theirs:?}",
                    row.file
                );
                assert!(theirs.contains(" 0 "), "{theirs}");
                empty += 1;
                continue;
            }
            // The kept packets share one timestamp: a zero-length interval,
            // whose rates tcpmon prints as 0 (tcpstat: inf and nan).
            if theirs.contains("inf") {
                assert_eq!(ours.lines().count(), 1, "{ours}");
                assert!(!ours.contains("inf") && !ours.contains("nan"), "{ours}");
                continue;
            }
            assert!(
                theirs == ours,
                "{} -f {expr:?}: tcpstat (left) and tcpmon (right) differ:\n{}",
                row.file,
                first_difference(&theirs, &ours)
            );
            same += 1;
        }
        // Intervals too, for one expression, where it keeps something
        // (tagged frames are neither `tcp` nor `udp` to libpcap).
        let expr = "tcp or udp";
        if !tool("tcpmon", &path, &["-f", expr, "-1"]).is_empty() {
            for iv in intervals(&path)
                .into_iter()
                .filter(|iv| *iv != "-1")
                .take(1)
            {
                assert_same(&path, &["-f", expr, "-o", format, "--", iv]);
            }
        }
    }
    assert!(same >= 100 && empty > 0, "{same} identical, {empty} empty");
}

/// A capture of real traffic (HTTP over IPv4 and IPv6, UDP and ICMP
/// unreachables, ARP and neighbour discovery) made by tcpdump in a lab: identical output.
#[test]
fn real_traffic_capture_matches_tcpstat() {
    if !can_run_kernel_tests("real_traffic_capture_matches_tcpstat") || !have_tcpstat() {
        return;
    }
    let mut lab = Lab::new(60);
    let tmp = std::env::temp_dir().join(format!("tcpmon-stat-lab-{}", std::process::id()));
    let www = tmp.join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("big"), vec![7u8; 3_000_000]).unwrap();
    lab.http_server(&www, 8080);
    let pcap: PathBuf = tmp.join("lab.pcap");
    let ns = lab.client_ns.clone();
    let dev = lab.client_if.clone();
    let dump = lab.start_tcpdump(&ns, &dev, &pcap, None);
    run(lab
        .cmd(&ns, "ip")
        .args(["neigh", "flush", "dev", &lab.client_if]));
    let (s4, s6) = (lab.server_v4.clone(), lab.server_v6.clone());
    for round in 0..3 {
        assert_eq!(lab.curl(&format!("http://{s4}:8080/big"), 5), 0);
        assert_eq!(lab.curl(&format!("http://[{s6}]:8080/big"), 5), 0);
        // UDP to a closed port: ICMP and ICMPv6 port-unreachable replies.
        run(lab.cmd(&ns, "bash").args([
            "-c",
            &format!("echo hi > /dev/udp/{s4}/9999; echo hi > /dev/udp/{s6}/9999; true"),
        ]));
        std::thread::sleep(Duration::from_millis(300 * round));
    }
    std::thread::sleep(Duration::from_millis(300));
    lab.stop_tcpdump(dump);
    let counts = tool("tcpmon", &pcap, &["-o", "%A %C %T %U %V", "-1"]);
    let c: Vec<u64> = counts.split(' ').map(|x| x.parse().unwrap()).collect();
    assert!(c.iter().all(|&n| n > 0), "every class present: {counts}");
    let out = run(Command::new("tshark")
        .args(["-n", "-r"])
        .arg(&pcap)
        .args(["-Y", "icmp || icmpv6"])
        .stderr(Stdio::null()));
    let icmp = String::from_utf8_lossy(&out.stdout).lines().count() as u64;
    assert_eq!(c[1], icmp, "%C against tshark's ICMP and ICMPv6 packets");
    golden(&pcap, NO_ICMP);
    let _ = std::fs::remove_dir_all(&tmp);
}
