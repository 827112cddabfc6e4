//! The four tcpmon commands the soak watches the lab with, on the client's
//! end of the veth: `top` (its screen, in tmux), `peek` (with its
//! statistics socket), `stat` and `export`. Each one's pid gives its
//! memory and CPU; peek's socket and export's metrics give their counts.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::{EXPORT_LISTEN, HANDSHAKE_TIMEOUT, SIDES};
use crate::lab::Lab;
use crate::procfs;
use crate::util::capture;

/// tmux server of the soak's own, so no user session is touched.
const TMUX_SOCKET: &str = "tcpmon-soak";

pub struct Watcher {
    pub name: &'static str,
    pub pid: u32,
    /// None for `top`, which tmux started.
    child: Option<Child>,
}

impl Watcher {
    /// Still running: a child that exited stays a zombie until waited
    /// for, so /proc tells for all of them.
    pub fn alive(&self) -> bool {
        std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).is_ok_and(|s| {
            !s.rsplit_once(')')
                .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
        })
    }
}

/// One look at a watcher.
#[derive(Clone, Copy, Default)]
pub struct Sample {
    pub rss_kib: u64,
    pub cpu_ticks: u64,
}

pub struct Watchers {
    pub list: Vec<Watcher>,
    pub socket: PathBuf,
    tcpmon: PathBuf,
}

impl Watchers {
    pub fn start(lab: &Lab, tcpmon: &Path, scratch: &Path) -> Result<Watchers> {
        let iface = SIDES[0].iface;
        let server = SIDES[1].addr;
        let socket = scratch.join("peek.sock");
        let timeout = HANDSHAKE_TIMEOUT.as_secs().to_string();
        let mut w = Watchers {
            list: Vec::new(),
            socket: socket.clone(),
            tcpmon: tcpmon.to_path_buf(),
        };
        // Every handshake goes to the server's address: with it local,
        // peek and export count them all as RX.
        let peek = spawn(
            lab.exec(0, tcpmon)
                .args([
                    "peek", "-i", iface, "-q", "-t", &timeout, "--local", server, "-U",
                ])
                .arg(&socket),
            &scratch.join("peek.log"),
        )?;
        w.list.push(peek_watcher("peek", peek));
        let stat = spawn(
            lab.exec(0, tcpmon).args(["stat", "-i", iface, "10"]),
            &scratch.join("stat.log"),
        )?;
        w.list.push(peek_watcher("stat", stat));
        let export = spawn(
            lab.exec(0, tcpmon).args([
                "export",
                "-i",
                iface,
                "-t",
                &timeout,
                "--local",
                server,
                "--listen",
                EXPORT_LISTEN,
            ]),
            &scratch.join("export.log"),
        )?;
        w.list.push(peek_watcher("export", export));
        let top = format!(
            "ip netns exec {} {} top -i {iface} 2>{}",
            SIDES[0].ns,
            tcpmon.display(),
            scratch.join("top.log").display()
        );
        tmux(&["kill-server"]).ok();
        tmux(&["new-session", "-d", "-x", "160", "-y", "48", &top])?;
        // Ready when each answers (or shows its screen).
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ready = w.peek_doc().is_ok() && lab_scrape(lab).is_ok();
            let top_pid = top_pid();
            if let (true, Some(pid)) = (ready, top_pid) {
                w.list.insert(
                    0,
                    Watcher {
                        name: "top",
                        pid,
                        child: None,
                    },
                );
                break;
            }
            if let Some(dead) = w.list.iter().find(|x| !x.alive()) {
                bail!(
                    "tcpmon {} exited while starting (see {})",
                    dead.name,
                    scratch.display()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "the watchers were not all up within 60 s (see {})",
                    scratch.display()
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        Ok(w)
    }

    pub fn sample(&self) -> Vec<Sample> {
        self.list
            .iter()
            .map(|w| Sample {
                rss_kib: procfs::memory_kib(w.pid).map_or(0, |(rss, _)| rss),
                cpu_ticks: procfs::cpu_ticks(w.pid).unwrap_or(0),
            })
            .collect()
    }

    /// peek's statistics (GET), as JSON.
    pub fn peek_doc(&self) -> Result<serde_json::Value> {
        let out = capture(
            Command::new(&self.tcpmon)
                .args(["peekstat", "-j", "-U"])
                .arg(&self.socket),
        )?;
        serde_json::from_str(&out).with_context(|| format!("peekstat -j said {out:?}"))
    }

    /// Ends them all: SIGINT to the three it started (each must exit with
    /// success), `q` to top. Returns the ones that did not end well.
    pub fn stop(mut self) -> Vec<String> {
        let mut bad = Vec::new();
        for w in &mut self.list {
            let Some(c) = &mut w.child else { continue };
            // SAFETY: a signal to our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGINT) };
            match wait_timeout(c, Duration::from_secs(10)) {
                Some(s) if s.success() => {}
                Some(s) => bad.push(format!("{} exited with {s} when stopped", w.name)),
                None => {
                    let _ = c.kill();
                    let _ = c.wait();
                    bad.push(format!("{} did not stop within 10 s of SIGINT", w.name));
                }
            }
        }
        let _ = tmux(&["send-keys", "q"]);
        std::thread::sleep(Duration::from_millis(500));
        if let Some(top) = self.list.iter_mut().find(|w| w.child.is_none())
            && top.alive()
        {
            bad.push("top did not quit on q".into());
        }
        let _ = tmux(&["kill-server"]);
        bad
    }
}

impl Drop for Watchers {
    fn drop(&mut self) {
        for w in &mut self.list {
            if let Some(c) = &mut w.child
                && matches!(c.try_wait(), Ok(None))
            {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        let _ = tmux(&["kill-server"]);
    }
}

fn peek_watcher(name: &'static str, child: Child) -> Watcher {
    Watcher {
        name,
        // `ip netns exec` execs tcpmon, so the child's pid is tcpmon's.
        pid: child.id(),
        child: Some(child),
    }
}

fn spawn(cmd: &mut Command, log: &Path) -> Result<Child> {
    let file = File::create(log).with_context(|| format!("creating {}", log.display()))?;
    cmd.stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        .spawn()
        .with_context(|| format!("starting {cmd:?}"))
}

fn wait_timeout(c: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(Some(s)) = c.try_wait() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

fn tmux(args: &[&str]) -> Result<String> {
    capture(Command::new("tmux").args(["-L", TMUX_SOCKET]).args(args))
}

/// top's pid: the pane's process (the shell tmux started, or what it
/// exec'd) or a descendant, whichever is tcpmon.
fn top_pid() -> Option<u32> {
    let pane: u32 = tmux(&["list-panes", "-F", "#{pane_pid}"])
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let mut frontier = vec![pane];
    // Bounded: a shell, `ip netns exec`, tcpmon.
    for _ in 0..4 {
        let mut next = Vec::new();
        for pid in frontier {
            if comm(pid).as_deref() == Some("tcpmon") {
                return Some(pid);
            }
            next.extend(children(pid));
        }
        frontier = next;
    }
    None
}

fn comm(pid: u32) -> Option<String> {
    Some(
        std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .ok()?
            .trim()
            .to_string(),
    )
}

fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Scrapes made so far: each is a connection the client's namespace opens
/// (on its loopback, which no watcher sees), for the kernel's count.
pub static SCRAPES: AtomicU64 = AtomicU64::new(0);

/// export's metrics, from inside the lab (it listens on its loopback).
pub fn lab_scrape(lab: &Lab) -> Result<String> {
    SCRAPES.fetch_add(1, Ordering::SeqCst);
    capture(lab.exec(0, "curl").args([
        "-sf",
        "--max-time",
        "10",
        &format!("http://{EXPORT_LISTEN}/metrics"),
    ]))
}
