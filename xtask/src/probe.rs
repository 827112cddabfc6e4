//! Local, read-only probes of what is installed (rustup, dpkg, PATH), and
//! the parsers behind them, kept apart from the install steps so they can be
//! unit-tested. None of them touches the network.

use std::collections::HashSet;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, Result};

use crate::util::{self, capture};

pub fn rust_src_present(toolchain: &str) -> Result<bool> {
    let sysroot = capture(
        Command::new("rustc")
            .arg(format!("+{toolchain}"))
            .args(["--print", "sysroot"]),
    )?;
    Ok(Path::new(sysroot.trim())
        .join("lib/rustlib/src/rust/library/core")
        .is_dir())
}

pub fn is_debian_like() -> bool {
    let os = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    os_is_debian_like(&os)
        && util::find_in_path("dpkg-query").is_some()
        && util::find_in_path("apt-get").is_some()
}

/// Non-root PATHs often lack the sbin directories where nft, ip and ethtool live.
pub fn program_exists(name: &str) -> bool {
    util::find_in_path(name).is_some()
        || ["/usr/sbin", "/sbin"]
            .iter()
            .any(|d| util::is_executable(&Path::new(d).join(name)))
}

/// The packages of `packages` that dpkg does not report as installed.
pub fn missing_packages(packages: &[&str]) -> Result<Vec<String>> {
    // Exits 1 when it does not know a package: that just means "missing".
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Package} ${Status}\\n"])
        .args(packages)
        .stdin(Stdio::null())
        .output()
        .context("could not run dpkg-query")?;
    let installed = installed_from_dpkg(&String::from_utf8_lossy(&out.stdout));
    Ok(packages
        .iter()
        .filter(|p| !installed.contains(**p))
        .map(|p| p.to_string())
        .collect())
}

// Pure parsers below, kept apart so they can be unit-tested.

/// Lines of `${Package} ${Status}`, e.g. "tshark install ok installed";
/// removed-but-configured packages end in "config-files" instead.
fn installed_from_dpkg(out: &str) -> HashSet<String> {
    out.lines()
        .filter(|l| l.split_whitespace().last() == Some("installed"))
        .filter_map(|l| l.split_whitespace().next())
        .map(|p| p.split(':').next().unwrap_or(p).to_string())
        .collect()
}

/// `rustup toolchain list` prints e.g. "nightly-x86_64-unknown-linux-gnu".
/// `nightly` must not match a dated "nightly-2026-05-20-x86_64-...".
pub fn toolchain_listed(list: &str, name: &str) -> bool {
    list.lines()
        .filter_map(|l| l.split_whitespace().next())
        .any(|t| {
            t == name
                || t.strip_prefix(name)
                    .and_then(|rest| rest.strip_prefix('-'))
                    .is_some_and(|host| !host.starts_with(|c: char| c.is_ascii_digit()))
        })
}

/// From `rustc -vV`: "LLVM version: 22.1.4" -> (22, "22.1.4").
pub fn llvm_version(vv: &str) -> Option<(u32, String)> {
    let full = vv
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version:"))?
        .trim();
    let major = full.split('.').next()?.parse().ok()?;
    Some((major, full.to_string()))
}

fn os_is_debian_like(os_release: &str) -> bool {
    os_release
        .lines()
        .filter_map(|l| l.split_once('='))
        .filter(|(k, _)| *k == "ID" || *k == "ID_LIKE")
        .flat_map(|(_, v)| v.trim_matches('"').split_whitespace())
        .any(|id| id == "debian" || id == "ubuntu")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dpkg_status() {
        let out = "tshark install ok installed\nethtool deinstall ok config-files\n\
                   libzstd-dev:amd64 hold ok installed\n";
        let got = installed_from_dpkg(out);
        assert!(got.contains("tshark") && got.contains("libzstd-dev"));
        assert!(!got.contains("ethtool"));
    }

    #[test]
    fn toolchains() {
        let list = "stable-x86_64-unknown-linux-gnu (active, default)\n\
                    nightly-2026-05-20-x86_64-unknown-linux-gnu\n1.95.0-x86_64-unknown-linux-gnu\n";
        assert!(!toolchain_listed(list, "nightly"));
        assert!(toolchain_listed(list, "nightly-2026-05-20"));
        assert!(toolchain_listed(
            "nightly-x86_64-unknown-linux-gnu\n",
            "nightly"
        ));
    }

    #[test]
    fn llvm() {
        let vv = "rustc 1.97.0-nightly\nhost: x86_64-unknown-linux-gnu\nLLVM version: 22.1.4\n";
        assert_eq!(llvm_version(vv), Some((22, "22.1.4".into())));
        assert_eq!(llvm_version("rustc 1.0\n"), None);
    }

    #[test]
    fn os_release() {
        assert!(os_is_debian_like("ID=debian\nVERSION_ID=\"12\"\n"));
        assert!(os_is_debian_like(
            "ID=linuxmint\nID_LIKE=\"ubuntu debian\"\n"
        ));
        assert!(!os_is_debian_like("ID=fedora\n"));
    }
}
