//! `cargo xtask run [--release|--debug] -- ARGS...`: brings the eBPF object
//! and tcpmon up to date, then runs tcpmon as root.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;

use anyhow::{Result, bail};

use crate::{ebpf, setup, util};

pub fn run(debug: bool, args: &[String]) -> Result<()> {
    setup::ensure(false)?;
    ebpf::build(false)?;

    let root = util::workspace_root();
    let mut build = Command::new("cargo");
    build.current_dir(&root).args(["build", "-p", "tcpmon"]);
    if !debug {
        build.arg("--release");
    }
    util::stream(&mut build)?;

    let profile = if debug { "debug" } else { "release" };
    let binary = target_dir(&root).join(profile).join("tcpmon");

    // exec, not spawn: tcpmon gets the terminal's signals (Ctrl-C) directly
    // and its exit status becomes ours.
    let err = if util::is_root() {
        Command::new(&binary).args(args).exec()
    } else if let Some(sudo) = util::find_in_path("sudo") {
        eprintln!("tcpmon loads eBPF programs, which needs root: running it through sudo -E");
        Command::new(sudo).arg("-E").arg(&binary).args(args).exec()
    } else {
        bail!(
            "tcpmon loads eBPF programs, which needs root, and sudo is not installed: \
             run `cargo xtask run` as root"
        );
    };
    bail!("could not run {}: {err}", binary.display())
}

/// Honours CARGO_TARGET_DIR like cargo does (relative paths are relative to
/// where cargo ran: the workspace root).
pub(crate) fn target_dir(root: &std::path::Path) -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => root.join(dir),
        None => root.join("target"),
    }
}
