//! Two network namespaces joined by a veth pair, for the benchmarks and
//! the soak: traffic stays inside them, and they are removed when the lab
//! is dropped (after a failure too).

use std::process::{Command, Stdio};

use anyhow::{Context, Result};

use crate::util::capture;

/// One side of a lab: its namespace, its end of the veth pair and its
/// IPv4 address.
#[derive(Clone, Copy)]
pub struct Side {
    pub ns: &'static str,
    pub iface: &'static str,
    pub addr: &'static str,
}

pub struct Lab {
    pub sides: [Side; 2],
}

impl Lab {
    /// The namespaces (first removed if a crashed run left them), the veth
    /// pair, addresses in a /24, links up (loopback too).
    pub fn new(sides: [Side; 2]) -> Result<Lab> {
        let lab = Lab { sides };
        lab.remove();
        for s in sides {
            ip(&format!("netns add {}", s.ns))?;
            ip(&format!("-n {} link set lo up", s.ns))?;
        }
        let [a, b] = sides;
        ip(&format!(
            "link add {} netns {} type veth peer name {} netns {}",
            a.iface, a.ns, b.iface, b.ns
        ))?;
        for s in sides {
            ip(&format!(
                "-n {} addr add {}/24 dev {}",
                s.ns, s.addr, s.iface
            ))?;
            ip(&format!("-n {} link set {} up", s.ns, s.iface))?;
        }
        Ok(lab)
    }

    /// `program` run inside side `i`'s namespace.
    pub fn exec(&self, i: usize, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", self.sides[i].ns]).arg(program);
        c
    }

    /// Applies nftables commands inside side `i`'s namespace.
    pub fn nft(&self, i: usize, commands: &str) -> Result<()> {
        capture(self.exec(i, "nft").arg(commands)).map(drop)
    }

    /// Sets a sysctl inside side `i`'s namespace (the per-namespace ones:
    /// net.ipv4.*).
    pub fn sysctl(&self, i: usize, key: &str, value: &str) -> Result<()> {
        capture(
            self.exec(i, "sysctl")
                .args(["-qw", &format!("{key}={value}")]),
        )
        .map(drop)
    }

    fn remove(&self) {
        for s in self.sides {
            let _ = Command::new("ip")
                .args(["netns", "del", s.ns])
                .stderr(Stdio::null())
                .status();
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.remove();
    }
}

fn ip(args: &str) -> Result<String> {
    capture(Command::new("ip").args(args.split(' '))).with_context(|| format!("ip {args}"))
}

/// Moves the calling thread into namespace `ns` (a thread's network
/// namespace is its own: the process and its other threads stay put), so
/// that its sockets are the lab's.
pub fn enter(ns: &str) -> Result<()> {
    use std::os::fd::AsRawFd;
    let path = format!("/run/netns/{ns}");
    let file = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
    // SAFETY: setns on a descriptor we own, for this thread only.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("setns {path}"));
    }
    Ok(())
}
