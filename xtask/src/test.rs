//! `cargo xtask test`: everything CI checks, in the order that fails fastest
//! on the cheapest mistakes. After setup, every step runs even if an earlier
//! one failed, so one run reports all the problems; the summary names them.

use std::process::Command;

use anyhow::{Result, bail};

use crate::{ebpf, package, setup, util, vm};

/// Named as the summary reports them.
const STEPS: &[&str] = &[
    "build-ebpf --check",
    "fmt",
    "clippy",
    "cargo test",
    "package --test",
    "vm-test",
];

fn step(name: &str) -> Result<()> {
    let cargo_args: &[&str] = match name {
        "build-ebpf --check" => return ebpf::build(true),
        // Debian's 6.1 (no tcx) and 6.12 under QEMU, about a minute each.
        "vm-test" => return vm::run(&[], false),
        // Builds the .deb, installs, checks and purges it (root, as CI).
        "package --test" => return package::run(true),
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
