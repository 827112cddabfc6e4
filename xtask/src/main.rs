//! `cargo xtask`: the project's build and test entry points, so a fresh
//! machine needs two commands (`cargo xtask run -- -i eth0`, `cargo xtask
//! test`) and no notes on what to install first.

mod bench;
mod ebpf;
mod lab;
mod package;
mod probe;
mod procfs;
mod run;
mod setup;
mod soak;
mod test;
mod util;
mod vm;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "Build, run and test tcpmon"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Check for, and (as root on Debian/Ubuntu) install, the nightly's
    /// rust-src, LLVM 22 and bpf-linker; with --test, the test tools too
    Setup {
        /// Also the packages the tests use (tshark, tcpdump, nftables, ...)
        #[arg(long)]
        test: bool,
        /// Only report what is missing and how to get it; install nothing
        #[arg(long)]
        check: bool,
    },
    /// Build the kernel programs and copy the object to tcpmon/bpf/tcpmon.bpf.o
    BuildEbpf {
        /// Do not copy: fail if the committed object differs from a fresh build
        #[arg(long)]
        check: bool,
    },
    /// Build everything and run tcpmon (as root) with ARGS, e.g. `-- -i eth0`
    Run {
        /// Release build (the default: tcpmon watches 10G links)
        #[arg(long, conflicts_with = "debug")]
        release: bool,
        /// Debug build
        #[arg(long)]
        debug: bool,
        /// Arguments for tcpmon
        #[arg(
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "ARGS"
        )]
        args: Vec<String>,
    },
    /// Everything CI runs: setup, build-ebpf --check, fmt, clippy, cargo test,
    /// package --test, vm-test
    Test,
    /// Benchmarks, as root: kernel cost per packet (TC and XDP against empty
    /// programs) and replay speed and memory against tcpstat on the same file
    Bench {
        /// Only this section (1 kernel cost, 2 replay, 3 many flows, 4 export)
        #[arg(long)]
        only: Option<u32>,
    },
    /// A long live run, as root (not in CI): top, peek, stat and export
    /// watching churn, a bulk transfer and SYN bursts in lab namespaces;
    /// checks memory stays steady and every connection is accounted for
    Soak {
        /// How long the traffic runs
        #[arg(long, default_value_t = 60)]
        minutes: u64,
    },
    /// Build the Debian package (target/package/); with --test, as root,
    /// install it, check it, and purge it
    Package {
        #[arg(long)]
        test: bool,
    },
    /// Boot Debian kernels under QEMU and run tcpmon's attach modes in each
    VmTest {
        /// Test the release build (default: the debug build `cargo test` makes)
        #[arg(long)]
        release: bool,
        /// Debian kernel versions (6.1, 6.12) or package names
        /// (linux-image-6.1.0-47-cloud-amd64); default: 6.1 and 6.12
        #[arg(value_name = "KERNEL")]
        kernels: Vec<String>,
    },
}

fn main() -> ExitCode {
    let result = match Cli::parse().cmd {
        Cmd::Setup { test, check } => setup::run(test, check),
        Cmd::BuildEbpf { check } => setup::ensure(false).and_then(|()| ebpf::build(check)),
        Cmd::Run { debug, args, .. } => run::run(debug, &args),
        Cmd::Test => test::run(),
        Cmd::Bench { only } => bench::run(only),
        Cmd::Package { test } => package::run(test),
        Cmd::Soak { minutes } => soak::run(minutes),
        Cmd::VmTest { kernels, release } => vm::run(&kernels, release),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
