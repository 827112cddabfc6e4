//! The soak's traffic, inside the lab: short connections opened and closed
//! at a steady rate (the server closes first, so the client's ports are
//! free again at once), one long paced bulk transfer, and SYN floods on
//! demand. It counts what it starts, to hold against what tcpmon reports.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

use super::{BULK_PORT, CHURN_PORT, SIDES};
use crate::lab::{Lab, enter};
use crate::util::capture;

/// Short connections a second, over [`CHURN_THREADS`] clients.
pub const CHURN_PER_SEC: u64 = 2_000;
const CHURN_THREADS: u64 = 2;
/// The bulk transfer's pace: steady, and well below what would starve the
/// watchers of CPU on a small machine.
pub const BULK_BYTES_PER_SEC: u64 = 20_000_000;
const CHUNK: usize = 64 * 1024;

/// What the traffic did, as its own count.
#[derive(Default)]
pub struct Counts {
    /// Connection attempts that sent a SYN (attempts that found no local
    /// port never did, and are not counted).
    pub syns: AtomicU64,
    pub connected: AtomicU64,
    pub failed: AtomicU64,
    pub bulk_connections: AtomicU64,
    pub bulk_bytes: AtomicU64,
}

pub struct Traffic {
    stop: Arc<AtomicBool>,
    pub counts: Arc<Counts>,
    threads: Vec<(&'static str, JoinHandle<Result<()>>)>,
}

impl Traffic {
    /// Servers first (listening before any client connects), then the
    /// clients.
    pub fn start() -> Result<Traffic> {
        let stop = Arc::new(AtomicBool::new(false));
        let counts = Arc::new(Counts::default());
        let mut threads = Vec::new();
        let server = |port: u16| -> SocketAddr {
            format!("{}:{port}", SIDES[1].addr)
                .parse()
                .expect("a socket address")
        };
        let churn = listen(server(CHURN_PORT))?;
        let bulk = listen(server(BULK_PORT))?;
        let s = stop.clone();
        threads.push((
            "churn server",
            std::thread::spawn(move || accept_close(churn, &s)),
        ));
        let s = stop.clone();
        threads.push(("bulk server", std::thread::spawn(move || sink(bulk, &s))));
        for _ in 0..CHURN_THREADS {
            let (s, c) = (stop.clone(), counts.clone());
            threads.push((
                "churn client",
                std::thread::spawn(move || churn_client(server(CHURN_PORT), &s, &c)),
            ));
        }
        let (s, c) = (stop.clone(), counts.clone());
        threads.push((
            "bulk client",
            std::thread::spawn(move || bulk_client(server(BULK_PORT), &s, &c)),
        ));
        Ok(Traffic {
            stop,
            counts,
            threads,
        })
    }

    /// Stops every thread and waits for them; the first error any had.
    pub fn stop(self) -> Result<Arc<Counts>> {
        self.stop.store(true, Ordering::SeqCst);
        let mut first = None;
        for (name, t) in self.threads {
            let r = t
                .join()
                .map_err(|_| anyhow!("the {name} thread panicked"))
                .and_then(|r| r.with_context(|| format!("the {name}")));
            if let Err(e) = r {
                first.get_or_insert(e);
            }
        }
        match first {
            Some(e) => Err(e),
            None => Ok(self.counts),
        }
    }

    /// Whether a thread ended early (an error): the soak stops then.
    pub fn broken(&self) -> Option<&'static str> {
        self.threads
            .iter()
            .find(|(_, t)| t.is_finished())
            .map(|(name, _)| *name)
    }
}

/// A listener in the server's namespace, made on a thread that entered it
/// (the socket stays there whichever thread uses it).
fn listen(addr: SocketAddr) -> Result<TcpListener> {
    std::thread::spawn(move || -> Result<TcpListener> {
        enter(SIDES[1].ns)?;
        let l = TcpListener::bind(addr).with_context(|| format!("listening on {addr}"))?;
        l.set_nonblocking(true)?;
        Ok(l)
    })
    .join()
    .map_err(|_| anyhow!("the listening thread panicked"))?
}

/// Waits a little for the next connection, or for `stop`.
fn next_conn(l: &TcpListener, stop: &AtomicBool) -> Result<Option<TcpStream>> {
    while !stop.load(Ordering::SeqCst) {
        match l.accept() {
            Ok((s, _)) => return Ok(Some(s)),
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(1))
            }
            Err(e) => return Err(e).context("accept"),
        }
    }
    Ok(None)
}

/// Accepts and closes at once: the server sends the first FIN.
fn accept_close(l: TcpListener, stop: &AtomicBool) -> Result<()> {
    while let Some(s) = next_conn(&l, stop)? {
        drop(s);
    }
    Ok(())
}

/// Reads and discards whatever each connection sends.
fn sink(l: TcpListener, stop: &AtomicBool) -> Result<()> {
    let mut buf = vec![0u8; CHUNK];
    while let Some(mut s) = next_conn(&l, stop)? {
        s.set_nonblocking(false)?;
        s.set_read_timeout(Some(Duration::from_millis(200)))?;
        while !stop.load(Ordering::SeqCst) {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) => return Err(e).context("reading the bulk transfer"),
            }
        }
    }
    Ok(())
}

/// Paces a loop at `per_sec` iterations a second: sleeps until the next
/// one is due; after a stall it starts again from now rather than rushing
/// to catch up.
struct Pace {
    next: Instant,
    period: Duration,
}

impl Pace {
    fn new(per_sec: f64) -> Pace {
        Pace {
            next: Instant::now(),
            period: Duration::from_secs_f64(1.0 / per_sec),
        }
    }

    fn wait(&mut self) {
        let now = Instant::now();
        if self.next > now {
            std::thread::sleep(self.next - now);
        } else if now - self.next > Duration::from_secs(1) {
            self.next = now;
        }
        self.next += self.period;
    }
}

fn churn_client(addr: SocketAddr, stop: &AtomicBool, counts: &Counts) -> Result<()> {
    enter(SIDES[0].ns)?;
    let mut pace = Pace::new((CHURN_PER_SEC / CHURN_THREADS) as f64);
    while !stop.load(Ordering::SeqCst) {
        pace.wait();
        match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            Ok(mut s) => {
                counts.syns.fetch_add(1, Ordering::SeqCst);
                counts.connected.fetch_add(1, Ordering::SeqCst);
                // Until the server's FIN, then our own close.
                s.set_read_timeout(Some(Duration::from_secs(2)))?;
                let _ = s.read(&mut [0u8; 1]);
            }
            // No local port left: no SYN went out.
            Err(e) if matches!(e.kind(), ErrorKind::AddrNotAvailable | ErrorKind::AddrInUse) => {}
            Err(_) => {
                counts.syns.fetch_add(1, Ordering::SeqCst);
                counts.failed.fetch_add(1, Ordering::SeqCst);
            }
        }
    }
    Ok(())
}

fn bulk_client(addr: SocketAddr, stop: &AtomicBool, counts: &Counts) -> Result<()> {
    enter(SIDES[0].ns)?;
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .with_context(|| format!("connecting to {addr}"))?;
    counts.bulk_connections.fetch_add(1, Ordering::SeqCst);
    counts.syns.fetch_add(1, Ordering::SeqCst);
    let chunk = vec![0x5a; CHUNK];
    let mut pace = Pace::new(BULK_BYTES_PER_SEC as f64 / CHUNK as f64);
    while !stop.load(Ordering::SeqCst) {
        pace.wait();
        s.write_all(&chunk).context("writing the bulk transfer")?;
        counts.bulk_bytes.fetch_add(CHUNK as u64, Ordering::SeqCst);
    }
    s.shutdown(std::net::Shutdown::Write)?;
    Ok(())
}

/// Sends `count` SYNs numbered from `first` (distinct from every other
/// flood's) to the server's dropped port 80, from the client's side, with
/// the synflood example; returns how many went out.
pub fn flood(lab: &Lab, synflood: &Path, count: u64, first: u64) -> Result<u64> {
    let out = capture(
        lab.exec(0, synflood)
            .arg(SIDES[1].addr)
            .arg(count.to_string())
            .arg(first.to_string()),
    )?;
    // "sent N of M SYNs to DST..."
    let sent = out
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("synflood said {out:?}"))?;
    if sent == 0 {
        bail!("synflood sent nothing: {out}");
    }
    Ok(sent)
}

/// The namespace's TCP counters from /proc/net/snmp (ActiveOpens,
/// AttemptFails, RetransSegs...), by name.
pub fn snmp(lab: &Lab, side: usize) -> Result<Vec<(String, u64)>> {
    let text = capture(lab.exec(side, "cat").arg("/proc/net/snmp"))?;
    let tcp: Vec<&str> = text.lines().filter(|l| l.starts_with("Tcp:")).collect();
    let [names, values] = tcp[..] else {
        bail!("no Tcp lines in /proc/net/snmp: {text}");
    };
    Ok(names
        .split_whitespace()
        .zip(values.split_whitespace())
        .skip(1)
        .filter_map(|(n, v)| Some((n.to_string(), v.parse().ok()?)))
        .collect())
}

pub fn counter(snmp: &[(String, u64)], name: &str) -> u64 {
    snmp.iter().find(|(n, _)| n == name).map_or(0, |(_, v)| *v)
}
