//! Small helpers shared by the subcommands: where things are, who we run as,
//! and three ways of running a child process (captured, streamed, logged).

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// The workspace root. Taken from where xtask was compiled rather than from
/// the current directory, so `cargo xtask` works from any subdirectory.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}

/// Where `cargo install` puts binaries; it may not be on PATH (e.g. in CI).
pub fn cargo_bin_dir() -> PathBuf {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| home_dir().join(".cargo"));
    home.join("bin")
}

fn home_dir() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"))
}

/// The first executable called `name` on PATH.
pub fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

pub fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Effective uid 0. Read from /proc so xtask needs no libc binding for it.
pub fn is_root() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .is_some_and(|euid| euid == "0")
}

/// CI systems set CI=true (GitHub, GitLab, ...); treat "false"/"0" as unset.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// PATH with `dirs` in front of the current one.
pub fn path_with(dirs: &[&Path]) -> std::ffi::OsString {
    let current = std::env::var_os("PATH").unwrap_or_default();
    let mut all: Vec<PathBuf> = dirs.iter().map(|d| d.to_path_buf()).collect();
    all.extend(std::env::split_paths(&current));
    std::env::join_paths(all).expect("PATH entries contain no ':'")
}

/// A shell-like rendering of a command (env overrides, program, args), for
/// progress lines and error messages.
pub fn display(cmd: &Command) -> String {
    let mut parts: Vec<String> = cmd
        .get_envs()
        .filter_map(|(k, v)| {
            let v = v?.to_string_lossy();
            // A PATH we prepended to: show only what we added.
            let current = std::env::var("PATH").unwrap_or_default();
            let v = match v.strip_suffix(&current) {
                Some(added) if k == "PATH" && !current.is_empty() => format!("{added}$PATH"),
                _ => v.into_owned(),
            };
            Some(format!("{}={}", k.to_string_lossy(), v))
        })
        .collect();
    parts.push(cmd.get_program().to_string_lossy().into_owned());
    parts.extend(cmd.get_args().map(|a| {
        let a = a.to_string_lossy();
        if a.is_empty() || a.contains(char::is_whitespace) {
            format!("'{a}'")
        } else {
            a.into_owned()
        }
    }));
    parts.join(" ")
}

/// Runs `cmd` and returns its stdout; on failure the error carries stderr.
pub fn capture(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("could not start `{}`", display(cmd)))?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            display(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `cmd` with its output going straight to the terminal (compiler
/// diagnostics, test results), after printing what runs.
pub fn stream(cmd: &mut Command) -> Result<()> {
    println!("$ {}", display(cmd));
    let status = cmd
        .status()
        .with_context(|| format!("could not start `{}`", display(cmd)))?;
    if !status.success() {
        bail!("`{}` failed ({status})", display(cmd));
    }
    Ok(())
}

/// Builds tcpmon's `targets` (`--bin tcpmon`, `--examples`, ...) in release
/// mode, for the commands that run the built binaries (bench, soak,
/// package); returns the folder they are in.
pub fn build_release(targets: &[&str]) -> Result<std::path::PathBuf> {
    let root = workspace_root();
    stream(
        Command::new("cargo")
            .current_dir(&root)
            .args(["build", "--release", "-p", "tcpmon"])
            .args(targets),
    )?;
    Ok(crate::run::target_dir(&root).join("release"))
}

/// Runs a long, chatty installer with its output in a log file, so progress
/// stays one line per step. On failure, shows the end of the log.
pub fn logged(cmd: &mut Command, log: &Path) -> Result<Duration> {
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut file = File::create(log).with_context(|| format!("creating {}", log.display()))?;
    writeln!(file, "$ {}", display(cmd))?;
    let start = Instant::now();
    let status = cmd
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        .status()
        .with_context(|| format!("could not start `{}`", display(cmd)))?;
    if !status.success() {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(30)..].join("\n");
        bail!(
            "`{}` failed ({status}); last lines of {}:\n{tail}",
            display(cmd),
            log.display()
        );
    }
    Ok(start.elapsed())
}

pub fn human(d: Duration) -> String {
    let s = d.as_secs();
    if s < 60 {
        format!("{s}s")
    } else {
        format!("{}m {:02}s", s / 60, s % 60)
    }
}

/// A metric's value in Prometheus's text exposition, summed over its
/// series (`name` is matched as a prefix of the series' name).
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(['{', ' ']))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
