//! `cargo xtask package [--test]`: a Debian package of tcpmon, built with
//! `dpkg-deb` from a staging tree (no cargo-deb: one more tool to install
//! for what a control file and a tree say plainly).
//!
//! What goes in: the release binary; man pages and bash, zsh and fish
//! completions, which the binary writes from its own command-line
//! definitions (`tcpmon generate`); the systemd unit and its defaults file
//! from `packaging/`; and the drop-in names.
//!
//! The drop-in names `tcptrack`, `tcpstat`, `tcpeek` and `tcpeekstat` are
//! links to `tcpmon` in `/usr/lib/tcpmon/bin`, not in `/usr/bin`: Debian's
//! own tcpstat and tcptrack packages own `/usr/bin/tcpstat` and
//! `/usr/bin/tcptrack`, so the package installs beside them without a
//! conflict, and whoever wants tcpmon under the old names puts that
//! directory first in `PATH`.
//!
//! `--test` (a CI step, as root): installs the package with `dpkg -i`,
//! checks that `tcpmon --version` says the package's version, that the man
//! pages show and the bash completion loads, that `systemd-analyze verify`
//! accepts the unit, then purges it and checks nothing it installed stays.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::run::target_dir;
use crate::util::{self, capture};

const NAME: &str = "tcpmon";
const UNIT: &str = "tcpmon-export.service";
const DEFAULTS: &str = "tcpmon";
const DROP_INS: [&str; 4] = ["tcptrack", "tcpstat", "tcpeek", "tcpeekstat"];

pub fn run(test: bool) -> Result<()> {
    let deb = build()?;
    println!("built {}", deb.display());
    if test {
        if !util::is_root() {
            bail!("`cargo xtask package --test` installs the package: run it as root");
        }
        install_test(&deb)?;
    }
    Ok(())
}

fn build() -> Result<PathBuf> {
    let root = util::workspace_root();
    let binary = util::build_release(&["--bin", "tcpmon"])?.join("tcpmon");
    let version = version_of(&binary)?;
    let arch = capture(Command::new("dpkg").arg("--print-architecture"))?
        .trim()
        .to_string();
    let stage = target_dir(&root).join("package/root");
    if stage.exists() {
        std::fs::remove_dir_all(&stage)
            .with_context(|| format!("removing the old {}", stage.display()))?;
    }
    let put = |rel: &str, bytes: &[u8], mode: u32| -> Result<()> {
        let path = stage.join(rel);
        std::fs::create_dir_all(path.parent().expect("a file in a directory"))?;
        std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
        set_mode(&path, mode)
    };
    let read = |p: PathBuf| std::fs::read(&p).with_context(|| format!("reading {}", p.display()));

    put("usr/bin/tcpmon", &read(binary.clone())?, 0o755)?;
    for name in DROP_INS {
        let link = stage.join("usr/lib/tcpmon/bin").join(name);
        std::fs::create_dir_all(link.parent().expect("a directory"))?;
        std::os::unix::fs::symlink("/usr/bin/tcpmon", &link)
            .with_context(|| format!("linking {}", link.display()))?;
    }

    // Man pages, compressed as Debian ships them.
    let man = target_dir(&root).join("package/man");
    util::stream(Command::new(&binary).arg("generate").arg("man").arg(&man))?;
    for page in std::fs::read_dir(&man)? {
        let page = page?.path();
        if page.extension().is_none_or(|e| e != "8") {
            continue;
        }
        util::stream(Command::new("gzip").args(["-9nkf"]).arg(&page))?;
        let name = page.file_name().expect("a file").to_string_lossy();
        let gz = man.join(format!("{name}.gz"));
        put(&format!("usr/share/man/man8/{name}.gz"), &read(gz)?, 0o644)?;
    }

    for (shell, rel) in [
        ("bash", "usr/share/bash-completion/completions/tcpmon"),
        ("zsh", "usr/share/zsh/vendor-completions/_tcpmon"),
        ("fish", "usr/share/fish/vendor_completions.d/tcpmon.fish"),
    ] {
        let script = capture(Command::new(&binary).args(["generate", "completions", shell]))?;
        put(rel, script.as_bytes(), 0o644)?;
    }

    let packaging = root.join("packaging");
    put(
        &format!("usr/lib/systemd/system/{UNIT}"),
        &read(packaging.join(UNIT))?,
        0o644,
    )?;
    put(
        &format!("etc/default/{DEFAULTS}"),
        &read(packaging.join("default"))?,
        0o644,
    )?;
    put(
        "usr/share/doc/tcpmon/copyright",
        &read(packaging.join("copyright"))?,
        0o644,
    )?;

    let control = format!(
        "Package: {NAME}\n\
         Version: {version}\n\
         Architecture: {arch}\n\
         Maintainer: tcpmon developers <tcpmon@localhost>\n\
         Section: net\n\
         Priority: optional\n\
         Depends: libc6 (>= 2.31)\n\
         Recommends: libpcap0.8\n\
         Description: TCP connection monitor for busy Linux servers (eBPF)\n \
         tcpmon watches TCP connections from eBPF programs on the TC and XDP\n \
         hooks: a live table like tcptrack, interval statistics like tcpstat,\n \
         handshake outcomes like tcpeek, Prometheus metrics and a connection\n \
         log. It replays pcap captures through the same engine.\n"
    );
    put("DEBIAN/control", control.as_bytes(), 0o644)?;
    put(
        "DEBIAN/conffiles",
        format!("/etc/default/{DEFAULTS}\n").as_bytes(),
        0o644,
    )?;
    // The unit is installed, not enabled: it needs an interface named in
    // /etc/default/tcpmon first.
    let reload = "#!/bin/sh\nset -e\nif [ -d /run/systemd/system ]; then systemctl daemon-reload || true; fi\n";
    put("DEBIAN/postinst", reload.as_bytes(), 0o755)?;
    put("DEBIAN/postrm", reload.as_bytes(), 0o755)?;
    put(
        "DEBIAN/prerm",
        format!(
            "#!/bin/sh\nset -e\nif [ -d /run/systemd/system ]; then systemctl stop {UNIT} || true; fi\n"
        )
        .as_bytes(),
        0o755,
    )?;

    let deb = target_dir(&root).join(format!("package/{NAME}_{version}_{arch}.deb"));
    util::stream(
        Command::new("dpkg-deb")
            .args(["--root-owner-group", "--build"])
            .arg(&stage)
            .arg(&deb),
    )?;
    Ok(deb)
}

/// The version `tcpmon --version` prints (`tcpmon 0.1.0`).
fn version_of(binary: &Path) -> Result<String> {
    let out = capture(Command::new(binary).arg("--version"))?;
    out.split_whitespace()
        .nth(1)
        .map(str::to_string)
        .with_context(|| format!("unexpected `tcpmon --version` output: {out:?}"))
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", path.display()))
}

fn install_test(deb: &Path) -> Result<()> {
    let check = |ok: bool, what: &str| -> Result<()> {
        if ok {
            println!("package: ok: {what}");
            Ok(())
        } else {
            bail!("package: {what}: failed")
        }
    };
    util::stream(Command::new("dpkg").arg("-i").arg(deb))?;
    let files: Vec<String> = capture(Command::new("dpkg").args(["-L", NAME]))?
        .lines()
        .map(str::to_string)
        .collect();
    let result = (|| -> Result<()> {
        let version = capture(Command::new("dpkg-query").args(["-W", "-f=${Version}", NAME]))?;
        let says = capture(Command::new("/usr/bin/tcpmon").arg("--version"))?;
        check(
            says.trim() == format!("tcpmon {version}"),
            &format!(
                "`tcpmon --version` ({}) is the package's {version}",
                says.trim()
            ),
        )?;
        for page in [
            "tcpmon",
            "tcpmon-top",
            "tcpmon-stat",
            "tcpmon-peek",
            "tcpmon-export",
        ] {
            let text = capture(
                Command::new("man")
                    .env("MANPAGER", "cat")
                    .env("MANWIDTH", "80")
                    .args(["8", page]),
            )?;
            check(text.contains(page), &format!("`man {page}` shows its page"))?;
        }
        let completion = capture(Command::new("bash").args([
            "-c",
            "source /usr/share/bash-completion/completions/tcpmon && complete -p tcpmon",
        ]))?;
        check(
            completion.contains("tcpmon"),
            "the bash completion loads (`complete -p tcpmon`)",
        )?;
        let verify = Command::new("systemd-analyze")
            .args(["verify", &format!("/usr/lib/systemd/system/{UNIT}")])
            .output()
            .context("running systemd-analyze")?;
        let complaints = String::from_utf8_lossy(&verify.stderr).into_owned();
        check(
            verify.status.success() && !complaints.contains(UNIT),
            &format!("`systemd-analyze verify {UNIT}` accepts it{complaints}"),
        )?;
        for name in DROP_INS {
            let link = format!("/usr/lib/tcpmon/bin/{name}");
            check(
                std::fs::read_link(&link).is_ok_and(|t| t == Path::new("/usr/bin/tcpmon")),
                &format!("{link} links to tcpmon"),
            )?;
        }
        Ok(())
    })();
    util::stream(Command::new("dpkg").args(["--purge", NAME]))?;
    result?;
    let left: Vec<&String> = files
        .iter()
        .filter(|f| {
            let p = Path::new(f.as_str());
            // Directories other packages share stay, as they should.
            p.symlink_metadata().is_ok_and(|m| !m.is_dir())
        })
        .collect();
    check(
        left.is_empty() && !Path::new("/etc/default/tcpmon").exists(),
        &format!("purging leaves nothing behind {left:?}"),
    )
}
