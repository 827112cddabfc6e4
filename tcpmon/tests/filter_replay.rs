//! Filter expressions in the pcap backend, with tcpdump as the oracle: for
//! every shared capture and a set of expressions, the frames tcpmon keeps
//! are exactly those `tcpdump -r FILE -w OUT EXPR` writes, and `top` on the
//! capture with the expression prints what it prints on tcpdump's output.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use tcpmon::backend::pcap::file::Format;
use tcpmon::backend::pcap::file::open;
use tcpmon::filter::{FilterError, Filters, Source};

use common::filters::EXPRESSIONS;

fn tcpdump_available() -> bool {
    if common::have_program("tcpdump") {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "tcpdump is missing; CI must have it (cargo xtask setup installs it)"
    );
    eprintln!("tcpdump not installed; skipping");
    false
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tcpmon-filter-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir.join(name)
}

/// A frame as both sides see it: time in microseconds (tcpdump writes
/// microsecond pcap), wire length, bytes.
type Key = (u64, u32, Vec<u8>);

fn frames(path: &Path) -> (Source, Vec<(u32, Key)>) {
    let mut r = open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let big_endian = matches!(
        r.format(),
        Format::Pcap {
            big_endian: true,
            ..
        }
    );
    let mut out = Vec::new();
    while let Some(f) = r.next_frame().expect("readable capture") {
        out.push((f.linktype, (f.ts_ns / 1000, f.orig_len, f.data.to_vec())));
    }
    (Source::File { big_endian }, out)
}

/// tcpdump's decision: the frames it writes, or its error.
fn tcpdump(path: &Path, expr: &str, out: &Path) -> Result<Vec<Key>, String> {
    let o = Command::new("tcpdump")
        .args(["-r"])
        .arg(path)
        .arg("-w")
        .arg(out)
        .arg(expr)
        .output()
        .expect("run tcpdump");
    if !o.status.success() {
        return Err(String::from_utf8_lossy(&o.stderr).into_owned());
    }
    Ok(frames(out).1.into_iter().map(|(_, k)| k).collect())
}

#[test]
fn replay_keeps_exactly_the_frames_tcpdump_keeps() {
    let (Some(dir), Some(rows)) = (common::shared_pcaps(), common::manifest()) else {
        return;
    };
    if !tcpdump_available() {
        return;
    }
    let out = scratch("kept.pcap");
    let (mut compared, mut strict) = (0, 0);
    for row in &rows {
        let path = row.path(&dir);
        let (source, all) = frames(&path);
        for expr in EXPRESSIONS {
            let theirs = tcpdump(&path, expr, &out);
            let mut filters = Filters::new(expr, source).expect("a valid expression");
            let mut ours = Vec::new();
            let mut error = None;
            for (lt, (ts, len, data)) in &all {
                match filters.matches(*lt, data, *len) {
                    Ok(true) => ours.push((*ts, *len, data.clone())),
                    Ok(false) => {}
                    Err(e) => {
                        error = Some(e);
                        break;
                    }
                }
            }
            match (theirs, error) {
                // tcpdump cannot read a pcapng whose interfaces differ in
                // link type or snap length: no oracle for that file.
                (Err(stderr), _) if stderr.contains("pcap_loop: an interface has") => {}
                (Ok(theirs), None) => {
                    assert!(
                        ours == theirs,
                        "{} with {expr:?}: tcpmon keeps {} frames, tcpdump {}",
                        row.file,
                        ours.len(),
                        theirs.len()
                    );
                    compared += 1;
                    strict += usize::from(!ours.is_empty() && ours.len() < all.len());
                }
                // tcpdump refuses the expression for this link type, and so
                // does tcpmon, naming the link type.
                (Err(stderr), Some(FilterError::LinkType { message, .. })) => {
                    assert!(
                        stderr.contains(&message),
                        "{} with {expr:?}: tcpdump says {stderr:?}, tcpmon {message:?}",
                        row.file
                    );
                }
                (theirs, ours) => panic!(
                    "{} with {expr:?}: tcpdump {theirs:?}, tcpmon {ours:?}",
                    row.file
                ),
            }
        }
    }
    eprintln!("{compared} (capture, expression) pairs agree, {strict} keeping some but not all");
    assert!(compared >= rows.len() * EXPRESSIONS.len() / 2, "{compared}");
    assert!(
        strict >= 40,
        "too few pairs tell kept from dropped: {strict}"
    );
}

fn tcpmon(args: &[&str], path: &Path, expr: Option<&str>) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tcpmon"));
    cmd.args(["top", "--json", "-T"]).arg(path).args(args);
    if let Some(e) = expr {
        cmd.arg(e);
    }
    cmd.output().expect("run tcpmon")
}

/// End to end through the binary: the table with the expression is the
/// table of tcpdump's filtered copy of the capture.
#[test]
fn top_with_a_filter_prints_the_table_of_tcpdumps_filtered_capture() {
    let Some(dir) = common::shared_pcaps() else {
        return;
    };
    if !tcpdump_available() {
        return;
    }
    for (file, expr) in [
        ("chrissanders__http_ip4and6.pcapng", "ip6"),
        ("zeek__mixed-vlan-mpls.pcap", "vlan"),
        ("pcapplusplus__tls2.pcap", "tcp port 443 and host 10.0.0.1"),
        ("zeek__ftp-ipv6.pcap", "port 21"),
        (
            "chrissanders__synscan.pcapng",
            "tcp[tcpflags] & tcp-rst != 0",
        ),
        ("lwerdna__simple_http_sll2.pcap", "src port 80"),
        ("pcapplusplus__raw_ip.pcap", "greater 100"),
    ] {
        let path = dir.join(file);
        let cut = scratch(&format!("{file}.cut.pcap"));
        let o = Command::new("tcpdump")
            .arg("-r")
            .arg(&path)
            .arg("-w")
            .arg(&cut)
            .arg(expr)
            .output()
            .expect("run tcpdump");
        assert!(o.status.success(), "tcpdump: {o:?}");
        let filtered = tcpmon(&[], &path, Some(expr));
        let reference = tcpmon(&[], &cut, None);
        assert!(filtered.status.success(), "{file}: {filtered:?}");
        let ours = String::from_utf8_lossy(&filtered.stdout);
        let theirs = String::from_utf8_lossy(&reference.stdout);
        assert_eq!(ours, theirs, "{file} with {expr:?}");
        let all = tcpmon(&[], &path, None);
        assert_ne!(
            String::from_utf8_lossy(&all.stdout),
            ours,
            "{file}: {expr:?} should drop some connections"
        );
    }
}

fn stderr_of(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).trim_end().to_string()
}

#[test]
fn a_wrong_expression_is_reported_in_tcpdumps_words() {
    let Some(dir) = common::shared_pcaps() else {
        return;
    };
    if !tcpdump_available() {
        return;
    }
    let path = dir.join("chrissanders__http_ip4and6.pcapng");
    for expr in [
        "tcp port",
        "host 1.2.3.4 and (",
        "port foo",
        "net 10.0.0.1/33",
    ] {
        let o = tcpmon(&[], &path, Some(expr));
        assert_eq!(o.status.code(), Some(1), "{expr}");
        assert!(o.stdout.is_empty(), "{expr}: no table on an error");
        let td = Command::new("tcpdump")
            .arg("-r")
            .arg(&path)
            .arg(expr)
            .output()
            .expect("run tcpdump");
        let td = stderr_of(&td);
        let tcpdump_says = td.lines().last().expect("tcpdump's error");
        let tcpdump_says = tcpdump_says.strip_prefix("tcpdump: ").expect(tcpdump_says);
        assert_eq!(stderr_of(&o), format!("tcpmon: {tcpdump_says}"), "{expr}");
    }
}

/// `top -T` and `stat -r` (which reads frames on its own path) alike: the
/// error naming the link type, and no table or statistics, which would
/// describe only the frames before it.
#[test]
fn an_expression_the_link_type_lacks_names_the_link_type() {
    let Some(dir) = common::shared_pcaps() else {
        return;
    };
    let path = dir.join("pcapplusplus__raw_ip.pcap");
    let stat = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_tcpmon"))
            .args(["stat", "-r"])
            .arg(&path)
            .args(["-o", "%n\\n", "-1"])
            .args(extra)
            .output()
            .expect("run tcpmon stat")
    };
    for o in [tcpmon(&[], &path, Some("vlan 5")), stat(&["-f", "vlan 5"])] {
        assert_eq!(o.status.code(), Some(1), "{}", stderr_of(&o));
        assert!(
            o.stdout.is_empty(),
            "{}",
            String::from_utf8_lossy(&o.stdout)
        );
        assert_eq!(
            stderr_of(&o),
            format!(
                "tcpmon: {}: the filter expression cannot apply to link type raw IP (101): \
                 no VLAN support for Raw IP",
                path.display()
            )
        );
    }
    // Without the expression the same file gives its statistics.
    let o = stat(&[]);
    assert!(o.status.success(), "{}", stderr_of(&o));
    let n: u64 = String::from_utf8_lossy(&o.stdout).trim().parse().unwrap();
    assert!(n > 0);
}

#[test]
fn without_libpcap_a_filter_says_what_to_install_and_no_filter_needs_none() {
    let Some(dir) = common::shared_pcaps() else {
        return;
    };
    let path = dir.join("chrissanders__http_ip4and6.pcapng");
    let run = |expr: Option<&str>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tcpmon"));
        cmd.env(tcpmon::filter::ENV_LIBPCAP, "libpcap-not-installed.so.0.8")
            .args(["top", "--json", "-T"])
            .arg(&path);
        if let Some(e) = expr {
            cmd.arg(e);
        }
        cmd.output().expect("run tcpmon")
    };
    let o = run(Some("port 80"));
    assert_eq!(o.status.code(), Some(1));
    let e = stderr_of(&o);
    assert!(
        e.starts_with("tcpmon: filter expressions are compiled by libpcap, which could not be loaded (libpcap-not-installed.so.0.8: "),
        "{e}"
    );
    assert!(e.contains("apt-get install libpcap0.8"), "{e}");
    let o = run(None);
    assert!(o.status.success(), "{o:?}");
    assert_eq!(String::from_utf8_lossy(&o.stdout).lines().count(), 2);
}
