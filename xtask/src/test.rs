//! `cargo xtask test`: everything CI checks, in the order that fails fastest
//! on the cheapest mistakes. After setup, every step runs even if an earlier
//! one failed, so one run reports all the problems; the summary names them.

use std::process::Command;

use anyhow::{Result, bail};

use crate::{ebpf, setup, util};

/// Named as the summary reports them. `cargo xtask vm-test` (Debian 6.1 and
/// 6.12 under QEMU) is not a step yet: with XDP on a veth pair its guests
/// intermittently report a connection CLOSING that should be CLOSED, a bug
/// not found yet (issue 7); CI must not pass or fail by chance.
const STEPS: &[&str] = &["build-ebpf --check", "fmt", "clippy", "cargo test"];

fn step(name: &str) -> Result<()> {
    let cargo_args: &[&str] = match name {
        "build-ebpf --check" => return ebpf::build(true),
        "fmt" => &["fmt", "--all", "--", "--check"],
        "clippy" => &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
        // Streamed, so each crate's `test result:` line shows as it comes.
        "cargo test" => &["test", "--workspace"],
        _ => unreachable!("unknown step {name}"),
    };
    util::stream(
        Command::new("cargo")
            .current_dir(util::workspace_root())
            .args(cargo_args),
    )
}

pub fn run() -> Result<()> {
    // Without the tools nothing below means anything: stop here if it fails.
    setup::ensure(true)?;

    if !util::is_root() {
        if util::in_ci() {
            bail!(
                "CI is set but this is not root: the kernel and namespace tests would skip \
                 and CI would pass without running them; run CI as root"
            );
        }
        println!(
            "warning: not root, so the kernel and namespace tests will skip; run as root for \
             the full suite"
        );
    }

    let total = STEPS.len();
    let mut failed = Vec::new();
    for (i, name) in STEPS.iter().enumerate() {
        println!("\n==> [{}/{total}] {name}", i + 1);
        if let Err(e) = step(name) {
            eprintln!("==> {name} FAILED: {e:#}");
            failed.push(*name);
        }
    }

    println!();
    if failed.is_empty() {
        println!("==> all {total} steps passed");
        Ok(())
    } else {
        bail!(
            "{} of {total} steps failed: {}",
            failed.len(),
            failed.join(", ")
        )
    }
}
