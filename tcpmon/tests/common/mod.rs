//! Helpers shared by the integration tests.
//!
//! The real captures live outside the repository (`../shared/pcaps` next to
//! the checkout) so that they are not copied into it. Without them the tests
//! that need them are skipped on a developer machine, but fail under CI,
//! where a silently skipped test would look like a passing one.
#![allow(dead_code)]

pub mod captures;
pub mod filters;
pub mod kernel;
pub mod metrics;
pub mod netns;
pub mod peek;
pub mod tmux;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Overrides where the shared captures are.
pub const PCAPS_ENV: &str = "TCPMON_PCAPS";

/// The shared capture folder: `$TCPMON_PCAPS`, else `shared/pcaps` beside
/// the checkout. `None` (after saying so on stderr) when it is missing,
/// except under CI, where that is a failure.
pub fn shared_pcaps() -> Option<PathBuf> {
    let dir = match std::env::var_os(PCAPS_ENV) {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/pcaps")),
    };
    match dir.canonicalize() {
        Ok(dir) if dir.is_dir() => Some(dir),
        _ if std::env::var_os("CI").is_some() => panic!(
            "shared captures not found at {} (set {PCAPS_ENV} to their folder); \
             CI is set, so they are required",
            dir.display()
        ),
        _ => {
            eprintln!(
                "shared captures not found at {} (set {PCAPS_ENV}); skipping the tests that need them",
                dir.display()
            );
            None
        }
    }
}

/// One line of `MANIFEST.tsv`.
#[derive(Debug, Clone)]
pub struct ManifestRow {
    /// File name within the shared folder.
    pub file: String,
    /// The link-type column as written, e.g. `EN10MB` or, for pcapng files
    /// with several interfaces, `EN10MB [pcapng IDBs: ...]`; see [`Self::link_name`].
    pub linktype: String,
    pub packets: u64,
    pub tcp_packets: u64,
    pub tcp_conversations: u64,
    /// The prose part of the notes column (before `||`).
    pub notes: String,
    /// The `k=v; k=v` pairs after `||` in the notes column.
    pub fields: BTreeMap<String, String>,
}

impl ManifestRow {
    /// The libpcap link-type name of the first frame, e.g. `EN10MB`.
    pub fn link_name(&self) -> &str {
        self.linktype.split_whitespace().next().unwrap_or("")
    }

    /// The `LINKTYPE_*` value of [`Self::link_name`].
    pub fn link_type(&self) -> u32 {
        linktype_from_name(self.link_name()).unwrap_or_else(|| {
            panic!(
                "{}: unknown link type name {:?}",
                self.file,
                self.link_name()
            )
        })
    }

    /// A numeric entry of [`Self::fields`], e.g. `field_u64("retrans_pkts")`.
    pub fn field_u64(&self, key: &str) -> u64 {
        let value = self
            .fields
            .get(key)
            .unwrap_or_else(|| panic!("{}: no field {key:?} in the manifest notes", self.file));
        value
            .parse()
            .unwrap_or_else(|_| panic!("{}: field {key}={value:?} is not a number", self.file))
    }

    pub fn path(&self, dir: &Path) -> PathBuf {
        dir.join(&self.file)
    }
}

/// libpcap's `DLT_*` names as used in the manifest, to `LINKTYPE_*` values.
pub fn linktype_from_name(name: &str) -> Option<u32> {
    Some(match name {
        "NULL" => 0,
        "EN10MB" => 1,
        "RAW" => 101,
        "LOOP" => 108,
        "LINUX_SLL" => 113,
        "IPV4" => 228,
        "IPV6" => 229,
        "NFLOG" => 239,
        "LINUX_SLL2" => 276,
        _ => return None,
    })
}

/// The rows of `MANIFEST.tsv`, or `None` when the captures are not here
/// (see [`shared_pcaps`]). A malformed manifest panics: it is test input.
pub fn manifest() -> Option<Vec<ManifestRow>> {
    let path = shared_pcaps()?.join("MANIFEST.tsv");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    Some(parse_manifest(&text, &path))
}

fn parse_manifest(text: &str, path: &Path) -> Vec<ManifestRow> {
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header: Vec<&str> = lines.next().unwrap_or_default().split('\t').collect();
    let column = |name: &str| {
        header
            .iter()
            .position(|h| *h == name)
            .unwrap_or_else(|| panic!("{}: no column {name:?} in {header:?}", path.display()))
    };
    let (file, linktype, packets, tcp_packets, tcp_conversations, notes) = (
        column("file"),
        column("linktype"),
        column("packets"),
        column("tcp_packets"),
        column("tcp_conversations"),
        column("notes"),
    );
    lines
        .map(|line| {
            let cells: Vec<&str> = line.split('\t').collect();
            let cell = |i: usize| -> &str {
                cells.get(i).copied().unwrap_or_else(|| {
                    panic!(
                        "{}: short line ({} columns): {line}",
                        path.display(),
                        cells.len()
                    )
                })
            };
            let count = |i: usize| -> u64 {
                cell(i).parse().unwrap_or_else(|_| {
                    panic!(
                        "{}: column {} is not a number: {line}",
                        path.display(),
                        header[i]
                    )
                })
            };
            let (prose, pairs) = cell(notes).split_once("||").unwrap_or((cell(notes), ""));
            let fields = pairs
                .split(';')
                .filter_map(|pair| pair.split_once('='))
                .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                .collect();
            ManifestRow {
                file: cell(file).to_owned(),
                linktype: cell(linktype).to_owned(),
                packets: count(packets),
                tcp_packets: count(tcp_packets),
                tcp_conversations: count(tcp_conversations),
                notes: prose.trim().to_owned(),
                fields,
            }
        })
        .collect()
}

/// Whether `program` can be run, for tests that compare with tshark or
/// tcpdump when they are installed.
pub fn have_program(program: &str) -> bool {
    std::process::Command::new(program)
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok()
}

/// A fresh, empty folder `tcpmon-NAME-PID` in the temporary directory.
pub fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tcpmon-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Runs `cmd`, which must fail and say `needle` on standard error; returns
/// all it said there.
pub fn fails_with(cmd: &mut std::process::Command, needle: &str) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(!out.status.success(), "{cmd:?} succeeded");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(err.contains(needle), "{err}");
    err
}
