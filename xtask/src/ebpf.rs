//! `cargo xtask build-ebpf [--check]`: builds the kernel crate with nightly
//! and bpf-linker, and copies (or, with --check, compares) the object that
//! tcpmon embeds.
//!
//! The object is committed so `cargo build -p tcpmon` needs only stable Rust.
//! That is safe because the build is reproducible byte for byte; `--check`
//! (run by `cargo xtask test`, hence CI) proves the committed file is exactly
//! what the sources produce.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::setup::{self, LLVM_PREFIX};
use crate::util;

/// Where tcpmon expects the object (relative to the workspace root).
pub const OBJECT: &str = "tcpmon/bpf/tcpmon.bpf.o";
const CRATE_DIR: &str = "tcpmon-ebpf";
const TARGET: &str = "bpfel-unknown-none";

/// Assumes setup (build group) has run.
pub fn build(check: bool) -> Result<()> {
    let root = util::workspace_root();
    let crate_dir = root.join(CRATE_DIR);
    if !crate_dir.join("Cargo.toml").is_file() {
        bail!(
            "the kernel crate is not there yet ({CRATE_DIR}/Cargo.toml is missing), so there is \
             no eBPF object to build; {OBJECT} is left as it is"
        );
    }

    let target_dir = crate_dir.join("target");
    let mut cmd = Command::new("cargo");
    cmd.current_dir(&crate_dir)
        .arg(format!("+{}", setup::nightly()))
        .args([
            "build",
            "--release",
            "-Z",
            "build-std=core",
            "--target",
            TARGET,
        ])
        // Explicit, so a CARGO_TARGET_DIR in the caller's environment cannot
        // move the object somewhere we do not look.
        .arg("--target-dir")
        .arg(&target_dir)
        // bpf-linker may be only in ~/.cargo/bin; LLVM 22's tools go first so
        // nothing finds another llvm-config.
        .env(
            "PATH",
            util::path_with(&[&Path::new(LLVM_PREFIX).join("bin"), &util::cargo_bin_dir()]),
        )
        .env("LLVM_PREFIX", LLVM_PREFIX)
        // Flags meant for the host build would change the object's bytes.
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS");
    util::stream(&mut cmd).context("building the kernel crate")?;

    let built_path = target_dir.join(TARGET).join("release").join(CRATE_DIR);
    let built = std::fs::read(&built_path).with_context(|| {
        format!(
            "the build succeeded but {} is missing",
            built_path.display()
        )
    })?;
    refuse_subprograms(&built_path)?;
    let object_path = root.join(OBJECT);
    let current = std::fs::read(&object_path).ok();

    if check {
        return compare(&built, current.as_deref(), &root);
    }
    if current.as_deref() == Some(built.as_slice()) {
        println!("{OBJECT} is up to date ({} bytes)", built.len());
        return Ok(());
    }
    // Only written when it changed, so tcpmon is not rebuilt for nothing.
    if let Some(dir) = object_path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&object_path, &built)
        .with_context(|| format!("writing {}", object_path.display()))?;
    println!(
        "updated {OBJECT} ({} bytes): commit it with the kernel sources",
        built.len()
    );
    Ok(())
}

/// A function LLVM does not inline becomes a BPF subprogram in `.text`,
/// under its mangled Rust name, which carries a hash of the crate's path:
/// the object would then differ from a build in any other directory, and the
/// committed object fail `--check` everywhere else. Only the memory builtins
/// bpf-linker adds may live there.
fn refuse_subprograms(object: &Path) -> Result<()> {
    let objdump = Path::new(LLVM_PREFIX).join("bin").join("llvm-objdump");
    let out = Command::new(&objdump)
        .arg("-t")
        .arg(object)
        .output()
        .with_context(|| format!("running {}", objdump.display()))?;
    if !out.status.success() {
        bail!(
            "{} -t {} failed: {}",
            objdump.display(),
            object.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let outlined: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(" F .text"))
        .filter_map(|l| l.split_whitespace().last())
        .filter(|name| !matches!(*name, "memcpy" | "memmove" | "memset"))
        .map(String::from)
        .collect();
    if !outlined.is_empty() {
        bail!(
            "LLVM made BPF subprograms of {outlined:?}: their names depend on the build \
             directory, so the object is no longer reproducible. Inline them: \
             #[inline(always)] on the function, or call a closure's body directly"
        );
    }
    Ok(())
}

fn compare(built: &[u8], committed: Option<&[u8]>, root: &Path) -> Result<()> {
    let stale = format!("{OBJECT} is stale: run cargo xtask build-ebpf and commit it");
    let Some(committed) = committed else {
        bail!("{OBJECT} does not exist: run cargo xtask build-ebpf and commit it");
    };
    if committed != built {
        let first = built.iter().zip(committed).position(|(a, b)| a != b);
        let detail = match first {
            Some(off) => format!("first difference at byte {off}"),
            None => "one is a prefix of the other".into(),
        };
        bail!(
            "{stale}\n  (fresh build: {} bytes, {OBJECT}: {} bytes, {detail})",
            built.len(),
            committed.len()
        );
    }
    println!("{OBJECT} matches a fresh build ({} bytes)", built.len());
    warn_if_uncommitted(root);
    Ok(())
}

/// The comparison is against the working tree; say so when that differs
/// from what is committed, since CI only sees the commit.
fn warn_if_uncommitted(root: &Path) {
    let Ok(out) = Command::new("git")
        .current_dir(root)
        .args(["status", "--porcelain", "--", OBJECT])
        .output()
    else {
        return;
    };
    if out.status.success() && !out.stdout.is_empty() {
        println!("note: {OBJECT} has uncommitted changes; CI checks the committed one");
    }
}
