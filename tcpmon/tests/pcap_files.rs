//! The capture reader on the real captures of `shared/pcaps`, checked against
//! the manifest and, when it is installed, against tshark.

mod common;

use std::fs;
use std::io::{Cursor, Read};
use std::path::Path;
use std::process::{Command, Stdio};

use tcpmon::backend::pcap::file::{CaptureError, CaptureReader, Format, open};

/// Frame counts and the first frame's link type, from any reader.
struct Summary {
    frames: u64,
    first_linktype: Option<u32>,
    /// Frames cut by the snap length (fewer bytes captured than on the wire).
    cut_frames: u64,
}

fn summarize<R: Read>(reader: &mut CaptureReader<R>) -> Result<Summary, (Summary, CaptureError)> {
    let mut s = Summary {
        frames: 0,
        first_linktype: None,
        cut_frames: 0,
    };
    loop {
        match reader.next_frame() {
            Ok(Some(frame)) => {
                s.frames += 1;
                s.first_linktype.get_or_insert(frame.linktype);
                s.cut_frames += u64::from((frame.data.len() as u64) < u64::from(frame.orig_len));
            }
            Ok(None) => return Ok(s),
            Err(e) => return Err((s, e)),
        }
    }
}

#[test]
fn every_manifest_file_reads_completely() {
    let (Some(dir), Some(rows)) = (common::shared_pcaps(), common::manifest()) else {
        return;
    };
    assert!(!rows.is_empty(), "empty manifest");
    for row in &rows {
        let path = row.path(&dir);
        let mut reader = open(&path).unwrap_or_else(|e| panic!("{}: {e}", row.file));
        let expected_format = match reader.format() {
            Format::Pcap { nanos: false, .. } => "pcap",
            Format::Pcap { nanos: true, .. } => "nsecpcap",
            Format::PcapNg => "pcapng",
        };
        assert_eq!(
            row.fields.get("format").map(String::as_str),
            Some(expected_format),
            "{}: format",
            row.file
        );
        let s = summarize(&mut reader)
            .unwrap_or_else(|(s, e)| panic!("{} after {} frames: {e}", row.file, s.frames));
        assert_eq!(s.frames, row.packets, "{}: frame count", row.file);
        assert_eq!(
            s.first_linktype,
            Some(row.link_type()),
            "{}: link type",
            row.file
        );
        assert_eq!(
            s.cut_frames,
            row.field_u64("truncated_frames"),
            "{}: frames cut by snaplen",
            row.file
        );
        assert_eq!(
            reader.offset(),
            row.field_u64("size"),
            "{}: bytes consumed",
            row.file
        );
    }
}

/// Converts tshark's `frame.time_epoch` ("1418145369.924505488") to ns
/// without going through a float, which would lose the last digits. Wraps
/// modulo 2^64 as the reader does: tshark shows an interface of
/// pcapng-example at 18446744073204 s, a negative time stored unsigned.
fn epoch_to_ns(text: &str) -> u64 {
    let (secs, frac) = text.trim().split_once('.').unwrap_or((text.trim(), ""));
    assert!(frac.len() <= 9, "more than ns precision: {text}");
    let frac = format!("{frac:0<9}");
    (secs.parse::<u128>().unwrap() * 1_000_000_000 + frac.parse::<u128>().unwrap()) as u64
}

/// tshark's fields for the first `count` frames, one `Vec` of columns per frame.
fn tshark_fields(path: &Path, fields: &[&str], count: u64) -> Vec<Vec<String>> {
    let mut cmd = Command::new("tshark");
    cmd.arg("-r")
        .arg(path)
        .args(["-c", &count.to_string(), "-T", "fields"]);
    for f in fields {
        cmd.args(["-e", f]);
    }
    let out = cmd.stderr(Stdio::null()).output().expect("running tshark");
    assert!(out.status.success(), "tshark failed on {}", path.display());
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| l.split('\t').map(str::to_owned).collect())
        .collect()
}

/// First frame's time as `tshark -r FILE -T fields -e frame.time_epoch -c 1`
/// prints it, checked against the value hard-coded from tshark 4.0.17.
fn check_first_timestamp(file: &str, from_tshark: u64) {
    let Some(dir) = common::shared_pcaps() else {
        return;
    };
    let path = dir.join(file);
    let mut reader = open(&path).unwrap();
    let ts_ns = reader.next_frame().unwrap().unwrap().ts_ns;
    assert_eq!(ts_ns, from_tshark, "{file}");
    if common::have_program("tshark") {
        let rows = tshark_fields(&path, &["frame.time_epoch"], 1);
        assert_eq!(
            ts_ns,
            epoch_to_ns(&rows[0][0]),
            "{file}: tshark now says {}",
            rows[0][0]
        );
    }
}

#[test]
fn nanosecond_pcap_timestamp_is_exact() {
    // tshark -r tcpdump__tcp-handshake-nano.pcap -T fields -e frame.time_epoch -c 1
    // printed 1418145369.924505488
    check_first_timestamp(
        "tcpdump__tcp-handshake-nano.pcap",
        1_418_145_369_924_505_488,
    );
}

#[test]
fn big_endian_nanosecond_pcap_timestamp_is_exact() {
    // tshark -r pcapplusplus__nanosecs_big_endian.pcap -T fields -e frame.time_epoch -c 1
    // printed 1766361926.167647291
    check_first_timestamp(
        "pcapplusplus__nanosecs_big_endian.pcap",
        1_766_361_926_167_647_291,
    );
}

/// Every frame's time, wire length, captured length and interface agree with
/// tshark (the first frames of each file, to keep the test quick). tshark
/// takes most of a second just to start, so the files are checked in parallel.
#[test]
fn frames_match_tshark() {
    const FRAMES: u64 = 3000;
    let Some(rows) = common::manifest() else {
        return;
    };
    if !common::have_program("tshark") {
        eprintln!("tshark not installed; skipping the comparison with it");
        return;
    }
    let dir = common::shared_pcaps().unwrap();
    std::thread::scope(|scope| {
        for row in &rows {
            let path = row.path(&dir);
            scope.spawn(move || compare_with_tshark(row, &path, FRAMES));
        }
    });
}

fn compare_with_tshark(row: &common::ManifestRow, path: &Path, frames: u64) {
    let file = &row.file;
    let expected = tshark_fields(
        path,
        &[
            "frame.time_epoch",
            "frame.len",
            "frame.cap_len",
            "frame.interface_id",
        ],
        frames,
    );
    assert_eq!(
        expected.len() as u64,
        frames.min(row.packets),
        "{file}: tshark frame count"
    );
    let mut reader = open(path).unwrap();
    for (i, cols) in expected.iter().enumerate() {
        let f = reader
            .next_frame()
            .unwrap()
            .unwrap_or_else(|| panic!("{file}: ends before frame {}", i + 1));
        let what = format!("{file} frame {}", i + 1);
        assert_eq!(f.ts_ns, epoch_to_ns(&cols[0]), "{what}: time");
        assert_eq!(f.orig_len.to_string(), cols[1], "{what}: wire length");
        assert_eq!(f.data.len().to_string(), cols[2], "{what}: captured length");
        // tshark leaves the interface empty for pcap files.
        if !cols[3].is_empty() {
            assert_eq!(f.interface.to_string(), cols[3], "{what}: interface");
        }
    }
}

/// A download or copy that stopped part way: every whole frame, then an error
/// that names where the damage is.
#[test]
fn file_cut_at_60_percent_gives_frames_then_error_with_offset() {
    let Some(dir) = common::shared_pcaps() else {
        return;
    };
    for file in ["zeek__ftp-ipv6.pcap", "pcapplusplus__pcapng-example.pcapng"] {
        let bytes = fs::read(dir.join(file)).unwrap();
        let cut = bytes.len() * 6 / 10;
        let copy = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("cut-{}-{file}", std::process::id()));
        fs::write(&copy, &bytes[..cut]).unwrap();
        let result = summarize(&mut open(&copy).unwrap());
        fs::remove_file(&copy).unwrap();

        let (partial, err) = result
            .err()
            .unwrap_or_else(|| panic!("{file}: cut file read without error"));
        let full = summarize(&mut CaptureReader::new(Cursor::new(&bytes)).unwrap())
            .ok()
            .unwrap();
        assert!(
            partial.frames > 0 && partial.frames < full.frames,
            "{file}: {} frames",
            partial.frames
        );
        let offset = err.offset().unwrap();
        assert!(
            offset > 0 && offset < cut as u64,
            "{file}: error at byte {offset}, cut at {cut}"
        );
        assert!(
            matches!(
                err,
                CaptureError::Truncated { .. } | CaptureError::TruncatedHeader { .. }
            ),
            "{file}: {err:?}"
        );
        assert!(
            err.to_string().contains(&format!("at byte {offset}")),
            "{err}"
        );
    }
}

/// `open("-")` reads standard input. The test runs itself again as a child
/// with a capture on stdin, since a test cannot replace its own stdin.
#[test]
fn open_dash_reads_standard_input() {
    const CHILD: &str = "TCPMON_TEST_STDIN_CHILD";
    if std::env::var_os(CHILD).is_some() {
        let s = summarize(&mut open(Path::new("-")).unwrap()).ok().unwrap();
        println!("stdin-frames={}", s.frames);
        return;
    }
    let Some(dir) = common::shared_pcaps() else {
        return;
    };
    let file = dir.join("pcapplusplus__pcapng-example.pcapng");
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "open_dash_reads_standard_input",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, "1")
        .stdin(fs::File::open(&file).unwrap())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "child failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("stdin-frames=159"), "{stdout}");
}

#[test]
fn open_reports_missing_file_and_wrong_content() {
    let err = open(Path::new("/nonexistent/capture.pcap")).err().unwrap();
    assert!(matches!(err, CaptureError::Open { .. }), "{err:?}");
    assert!(
        err.to_string().contains("/nonexistent/capture.pcap"),
        "{err}"
    );

    // A text file named like a capture.
    let path = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("not-a-capture-{}.pcap", std::process::id()));
    fs::write(&path, "hello, world\n").unwrap();
    let err = open(&path).err().unwrap();
    fs::remove_file(&path).unwrap();
    assert!(
        matches!(
            err,
            CaptureError::UnknownMagic {
                magic: 0x6865_6c6c,
                ..
            }
        ),
        "{err:?}"
    );
}
