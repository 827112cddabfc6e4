//! `cargo xtask setup`: makes a Debian-like machine ready to build the eBPF
//! object and run the tests, one progress line per step.
//!
//! Every check is local (rustup, rustc, dpkg-query, a PATH lookup), so when
//! nothing is missing setup takes well under a second and touches no network.
//! It only installs as root on Debian-like systems; elsewhere (or with
//! `--check`) it lists what is missing with the commands to get it, and fails.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

use crate::probe::{
    is_debian_like, llvm_version, missing_packages, program_exists, rust_src_present,
    toolchain_listed,
};
use crate::util::{self, capture, logged};

/// bpf-linker links through libLLVM, and rustc hands it LLVM bitcode: the two
/// LLVM major versions must be the same, or linking fails in obscure ways.
pub const LLVM_MAJOR: u32 = 22;
/// Debian's llvm-22 packages install here; bpf-linker's build finds
/// llvm-config through it.
pub const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
/// Pinned so a new bpf-linker release (maybe for another LLVM) cannot change
/// the object under us. 0.13.0 builds with rustc 1.95 and has `llvm-22`.
const BPF_LINKER_VERSION: &str = "0.13.0";
/// The nightly this project was set up with (rustc 1.97.0-nightly e50aa6fba
/// 2026-05-19, LLVM 22.1.4); suggested when `nightly` is missing or unusable.
const KNOWN_GOOD_NIGHTLY: &str = "nightly-2026-05-20";

/// For the eBPF build: LLVM for bpf-linker (libLLVM and llvm-config); Polly
/// and zstd because building bpf-linker against LLVM 22 needed them here.
const BUILD_PACKAGES: &[&str] = &["llvm-22-dev", "libpolly-22-dev", "libzstd-dev"];
/// For the tests: traffic generators, reference tools to compare against,
/// and namespace/nftables plumbing.
const TEST_PACKAGES: &[&str] = &[
    "tshark",
    "tcpdump",
    "nftables",
    "iproute2",
    "tcpstat",
    "tcptrack",
    "curl",
    "netcat-openbsd",
    "python3",
    "tmux",
    "ethtool",
    // libpcap compiles filter expressions (tcpmon dlopens it; no -dev
    // package needed). tcpdump pulls it in too; named for clarity.
    "libpcap0.8",
    // A real Prometheus scrapes `tcpmon export` in its tests (and its
    // promtool checks /metrics); the tests start it themselves.
    "prometheus",
];
/// For `cargo xtask vm-test` only: QEMU (software emulation), the guest's
/// busybox, cpio to pack its initramfs, xz for Debian's .ko.xz modules,
/// iproute2, whose `ip` goes into the guest, and binutils' objcopy, which
/// strips tcpmon's debug info for it; libpcap, which the guest's filter case
/// needs.
const VM_PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "busybox-static",
    "cpio",
    "xz-utils",
    "iproute2",
    "binutils",
    "libpcap0.8",
];
/// Off Debian there is no dpkg to ask; probe one program per test package.
const TEST_PROGRAMS: &[(&str, &str)] = &[
    ("tshark", "tshark"),
    ("tcpdump", "tcpdump"),
    ("nftables", "nft"),
    ("iproute2", "ip"),
    ("tcpstat", "tcpstat"),
    ("tcptrack", "tcptrack"),
    ("curl", "curl"),
    ("netcat-openbsd", "nc"),
    ("python3", "python3"),
    ("tmux", "tmux"),
    ("ethtool", "ethtool"),
    ("prometheus", "promtool"),
    ("man-db", "man"),
    ("systemd", "systemd-analyze"),
];

/// The toolchain the kernel crate is built with. `nightly` unless
/// TCPMON_NIGHTLY names another (e.g. a dated one, when today's nightly has
/// moved to a newer LLVM).
pub fn nightly() -> String {
    std::env::var("TCPMON_NIGHTLY")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "nightly".into())
}

/// What other subcommands call first. `test_tools` adds the test packages.
pub fn ensure(test_tools: bool) -> Result<()> {
    run(test_tools, false)
}

pub fn run(test_tools: bool, check_only: bool) -> Result<()> {
    let mut s = Setup::new(check_only);
    s.nightly()?;
    s.rust_src()?;
    s.apt(
        "apt packages for the eBPF build",
        BUILD_PACKAGES,
        "about 1 minute",
    )?;
    s.bpf_linker()?;
    if test_tools {
        s.apt(
            "apt packages for the tests",
            TEST_PACKAGES,
            "about 1 minute",
        )?;
    }
    s.finish()
}

/// What `cargo xtask vm-test` calls first: the VM packages alone (it tests
/// the committed eBPF object, so it needs neither the nightly nor LLVM).
pub fn ensure_vm() -> Result<()> {
    let mut s = Setup::new(false);
    s.apt(
        "apt packages for the VM tests",
        VM_PACKAGES,
        "about 2 minutes",
    )?;
    s.finish()
}

/// Something missing that we may not install, and how the user gets it.
struct Missing {
    what: String,
    commands: Vec<String>,
}

struct Setup {
    /// Why we must not install (None: we may).
    cannot_install: Option<&'static str>,
    debian: bool,
    /// `apt-get update` runs at most once, right before the first install.
    apt_updated: bool,
    /// False once the nightly is known to be absent (skip its rust-src).
    have_nightly: bool,
    missing: Vec<Missing>,
    logs: PathBuf,
}

impl Setup {
    fn new(check_only: bool) -> Setup {
        let debian = is_debian_like();
        let cannot_install = if check_only {
            Some("--check was given")
        } else if !debian {
            Some("this is not a Debian-like system")
        } else if !util::is_root() {
            Some("not running as root")
        } else {
            None
        };
        Setup {
            cannot_install,
            debian,
            apt_updated: false,
            have_nightly: true,
            missing: Vec::new(),
            logs: util::workspace_root().join("target/xtask"),
        }
    }

    /// The nightly must exist and use the LLVM bpf-linker is built for. We
    /// never install one: a nightly pulled today may carry another LLVM.
    fn nightly(&mut self) -> Result<()> {
        let tc = nightly();
        checking(&format!("{tc} toolchain"));
        if util::find_in_path("rustup").is_none() {
            println!("missing");
            bail!("rustup is not on PATH: install Rust with https://rustup.rs, then retry");
        }
        let list = capture(Command::new("rustup").args(["toolchain", "list"]))?;
        if !toolchain_listed(&list, &tc) {
            println!("missing");
            self.have_nightly = false;
            self.missing.push(Missing {
                what: format!("a nightly toolchain built with LLVM {LLVM_MAJOR}"),
                commands: vec![
                    format!(
                        "rustup toolchain install {KNOWN_GOOD_NIGHTLY} --profile minimal --component rust-src"
                    ),
                    format!("export TCPMON_NIGHTLY={KNOWN_GOOD_NIGHTLY}"),
                ],
            });
            return Ok(());
        }
        let vv = capture(Command::new("rustc").arg(format!("+{tc}")).arg("-vV"))?;
        let (major, full) = llvm_version(&vv)
            .with_context(|| format!("no `LLVM version:` line in `rustc +{tc} -vV`"))?;
        if major != LLVM_MAJOR {
            println!("wrong LLVM ({full})");
            bail!(
                "`{tc}` is built with LLVM {full}, but bpf-linker {BPF_LINKER_VERSION} here links \
                 against LLVM {LLVM_MAJOR} ({LLVM_PREFIX}); the two must match.\n\
                 Use the nightly this project is built with (setup will not pull another nightly \
                 for you):\n  \
                 rustup toolchain install {KNOWN_GOOD_NIGHTLY} --profile minimal --component rust-src\n  \
                 export TCPMON_NIGHTLY={KNOWN_GOOD_NIGHTLY}"
            );
        }
        let release = vv
            .lines()
            .next()
            .unwrap_or_default()
            .trim_start_matches("rustc ");
        println!("ok ({release}, LLVM {full})");
        Ok(())
    }

    /// `-Z build-std=core` compiles core from the toolchain's rust-src.
    fn rust_src(&mut self) -> Result<()> {
        if !self.have_nightly {
            return Ok(()); // the install command above already adds rust-src
        }
        let tc = nightly();
        checking(&format!("rust-src for {tc}"));
        if rust_src_present(&tc)? {
            println!("ok");
            return Ok(());
        }
        println!("missing");
        let mut cmd = Command::new("rustup");
        cmd.args(["component", "add", "rust-src", "--toolchain", &tc]);
        self.install_or_report(
            &format!("rust-src for {tc}"),
            cmd,
            "a few seconds",
            "rust-src",
        )
    }

    fn apt(&mut self, what: &str, packages: &[&str], eta: &str) -> Result<()> {
        checking(what);
        if !self.debian {
            return self.probe_programs(packages);
        }
        let missing = missing_packages(packages)?;
        if missing.is_empty() {
            println!("ok");
            return Ok(());
        }
        println!("missing {}", missing.join(" "));
        if self.cannot_install.is_some() {
            let sudo = if util::is_root() { "" } else { "sudo " };
            self.missing.push(Missing {
                what: format!("{what} ({})", missing.join(" ")),
                commands: vec![format!(
                    "{sudo}apt-get update && {sudo}apt-get install -y {}",
                    missing.join(" ")
                )],
            });
            return Ok(());
        }
        self.apt_update()?;
        if missing
            .iter()
            .any(|p| p == "tshark" || p == "wireshark-common")
        {
            // wireshark-common asks whether non-root users may capture; answer
            // "no" up front so the install never waits for a terminal.
            preseed("wireshark-common wireshark-common/install-setuid boolean false")?;
        }
        let mut cmd = Command::new("apt-get");
        cmd.env("DEBIAN_FRONTEND", "noninteractive")
            // Wait for another apt (e.g. unattended-upgrades) instead of failing.
            .args(["-o", "DPkg::Lock::Timeout=300", "install", "-y", "-q"])
            .args(&missing);
        self.install(&missing.join(" "), cmd, eta, "apt-install")?;
        let still = missing_packages(packages)?;
        if !still.is_empty() {
            bail!(
                "apt-get install finished but {} is still not installed",
                still.join(" ")
            );
        }
        Ok(())
    }

    /// Off Debian: report test programs that are not on PATH (build
    /// dependencies are covered by the bpf-linker check).
    fn probe_programs(&mut self, packages: &[&str]) -> Result<()> {
        let absent: Vec<&str> = TEST_PROGRAMS
            .iter()
            .filter(|(pkg, prog)| packages.contains(pkg) && !program_exists(prog))
            .map(|(pkg, _)| *pkg)
            .collect();
        if packages == BUILD_PACKAGES {
            println!(
                "skipped (not Debian-like: needs LLVM {LLVM_MAJOR} with its development files)"
            );
        } else if absent.is_empty() {
            println!("ok (programs found on PATH)");
        } else {
            println!("missing {}", absent.join(" "));
            self.missing.push(Missing {
                what: format!(
                    "programs the tests use (Debian package names): {}",
                    absent.join(" ")
                ),
                commands: vec!["install them with your system's package manager".into()],
            });
        }
        Ok(())
    }

    fn apt_update(&mut self) -> Result<()> {
        if self.apt_updated {
            return Ok(());
        }
        println!("updating apt package lists (takes a few seconds) ...");
        let mut cmd = Command::new("apt-get");
        cmd.args(["-o", "DPkg::Lock::Timeout=300", "update", "-q"]);
        let took = logged(&mut cmd, &self.logs.join("apt-update.log"))?;
        println!(
            "updating apt package lists ... done ({})",
            util::human(took)
        );
        self.apt_updated = true;
        Ok(())
    }

    /// bpf-linker is rustc's linker for the bpf target. It may sit in
    /// ~/.cargo/bin without that being on PATH; build-ebpf adds it.
    fn bpf_linker(&mut self) -> Result<()> {
        checking("bpf-linker");
        if let Some(path) = bpf_linker_path() {
            let version = capture(Command::new(&path).arg("--version"))?;
            let version = version.trim();
            println!("ok ({version}, {})", path.display());
            if !version.ends_with(BPF_LINKER_VERSION) {
                println!(
                    "  note: expected bpf-linker {BPF_LINKER_VERSION} (LLVM {LLVM_MAJOR}); if linking \
                     fails, reinstall it with: {}",
                    util::display(&bpf_linker_install())
                );
            }
            return Ok(());
        }
        println!("missing");
        let what = if self.debian {
            "bpf-linker".to_string()
        } else {
            format!(
                "bpf-linker (install LLVM {LLVM_MAJOR} with its development files first, and set LLVM_PREFIX to where they are)"
            )
        };
        let cmd = bpf_linker_install();
        self.install_or_report(&what, cmd, "about 3 minutes", "bpf-linker")?;
        if self.cannot_install.is_none() && bpf_linker_path().is_none() {
            bail!("cargo install bpf-linker finished, but no bpf-linker in PATH or ~/.cargo/bin");
        }
        Ok(())
    }

    fn install_or_report(&mut self, what: &str, cmd: Command, eta: &str, log: &str) -> Result<()> {
        if self.cannot_install.is_some() {
            self.missing.push(Missing {
                what: what.into(),
                commands: vec![util::display(&cmd)],
            });
            return Ok(());
        }
        self.install(what, cmd, eta, log)
    }

    fn install(&self, what: &str, mut cmd: Command, eta: &str, log: &str) -> Result<()> {
        println!("installing {what} (takes {eta}) ...");
        let log = self.logs.join(format!("{log}.log"));
        let took = logged(&mut cmd, &log).with_context(|| format!("installing {what}"))?;
        println!("installing {what} ... done ({})", util::human(took));
        Ok(())
    }

    fn finish(self) -> Result<()> {
        if self.missing.is_empty() {
            return Ok(());
        }
        let why = self
            .cannot_install
            .unwrap_or("it is not installed automatically");
        eprintln!("\nsetup did not install the following ({why}):");
        for m in &self.missing {
            eprintln!("  {}:", m.what);
            for c in &m.commands {
                eprintln!("    {c}");
            }
        }
        bail!("setup incomplete: run the commands above (in this order), then retry")
    }
}

fn checking(what: &str) {
    print!("checking {what} ... ");
    let _ = std::io::stdout().flush();
}

/// Pinned version, LLVM 22 only (the default features would want another
/// LLVM), `--locked` so its dependencies are the ones that were tested.
fn bpf_linker_install() -> Command {
    let mut cmd = Command::new("cargo");
    cmd.env(
        "PATH",
        util::path_with(&[&Path::new(LLVM_PREFIX).join("bin")]),
    )
    .env("LLVM_PREFIX", LLVM_PREFIX)
    .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
    .args(["--no-default-features", "--features"])
    .arg(format!("llvm-{LLVM_MAJOR}"))
    .arg("--locked");
    cmd
}

fn bpf_linker_path() -> Option<PathBuf> {
    util::find_in_path("bpf-linker").or_else(|| {
        let p = util::cargo_bin_dir().join("bpf-linker");
        util::is_executable(&p).then_some(p)
    })
}

fn preseed(answer: &str) -> Result<()> {
    let mut child = Command::new("debconf-set-selections")
        .stdin(Stdio::piped())
        .spawn()
        .context("could not start debconf-set-selections")?;
    writeln!(child.stdin.take().expect("piped stdin"), "{answer}")?;
    if !child.wait()?.success() {
        bail!("debconf-set-selections rejected `{answer}`");
    }
    Ok(())
}
