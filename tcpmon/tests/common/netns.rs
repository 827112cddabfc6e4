//! A two-host lab for live tests: network namespaces "client" and "server"
//! joined by a veth pair, with IPv4 and IPv6 addresses. Traffic never leaves
//! them. Everything is removed when the lab is dropped.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct Lab {
    pub client_ns: String,
    pub server_ns: String,
    /// The client's end of the veth pair (inside `client_ns`).
    pub client_if: String,
    pub server_if: String,
    pub client_v4: String,
    pub server_v4: String,
    pub client_v6: String,
    pub server_v6: String,
    /// The CPU that commands started later run on (see `pin`).
    cpu: Option<usize>,
    children: Vec<Child>,
}

/// Whether kernel tests can run: root is needed. Under CI they must run, so
/// a missing privilege fails there instead of skipping.
pub fn can_run_kernel_tests(test: &str) -> bool {
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        assert!(
            std::env::var_os("CI").is_none(),
            "{test}: needs root, and CI is set, so it may not be skipped"
        );
        eprintln!("{test}: skipped (needs root)");
    }
    root
}

/// Runs a command and fails the test with its output if it fails.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

impl Lab {
    /// `n` (1..=250) keeps concurrent labs' names and subnets apart.
    pub fn new(n: u8) -> Lab {
        let tag = format!("tm{}x{n}", std::process::id() % 100_000);
        let lab = Lab {
            client_ns: format!("{tag}c"),
            server_ns: format!("{tag}s"),
            client_if: "veth-c".into(),
            server_if: "veth-s".into(),
            client_v4: format!("10.231.{n}.1"),
            server_v4: format!("10.231.{n}.2"),
            client_v6: format!("fd00:231:{n}::1"),
            server_v6: format!("fd00:231:{n}::2"),
            cpu: None,
            children: Vec::new(),
        };
        for ns in [&lab.client_ns, &lab.server_ns] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
            run(Command::new("ip").args(["netns", "add", ns]));
        }
        run(Command::new("ip").args([
            "link",
            "add",
            "tmp-c",
            "netns",
            &lab.client_ns,
            "type",
            "veth",
            "peer",
            "name",
            "tmp-s",
            "netns",
            &lab.server_ns,
        ]));
        for (ns, tmp, name, v4, v6) in [
            (
                &lab.client_ns,
                "tmp-c",
                &lab.client_if,
                &lab.client_v4,
                &lab.client_v6,
            ),
            (
                &lab.server_ns,
                "tmp-s",
                &lab.server_if,
                &lab.server_v4,
                &lab.server_v6,
            ),
        ] {
            lab.ip(ns, &["link", "set", tmp, "name", name]);
            lab.ip(ns, &["addr", "add", &format!("{v4}/24"), "dev", name]);
            lab.ip(
                ns,
                &[
                    "-6",
                    "addr",
                    "add",
                    &format!("{v6}/64"),
                    "dev",
                    name,
                    "nodad",
                ],
            );
            lab.ip(ns, &["link", "set", name, "up"]);
            lab.ip(ns, &["link", "set", "lo", "up"]);
        }
        lab
    }

    fn ip(&self, ns: &str, args: &[&str]) {
        run(Command::new("ip").args(["-n", ns]).args(args));
    }

    /// A command to run inside a namespace.
    pub fn cmd(&self, ns: &str, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns]);
        if let Some(cpu) = self.cpu {
            c.args(["taskset", "-c", &cpu.to_string()]);
        }
        c.arg(program);
        c
    }

    /// Runs the commands started from now on on `cpu` only. A TCP
    /// connection whose two ends run on one CPU has all its segments
    /// handled there (sends from the process, from the softirq of an
    /// incoming ACK, from its timers), one after the other: every observer
    /// sees them in the same order. Spread over CPUs, two segments in flight
    /// at once can reach tcpdump's tap in one order and the TC hook in the
    /// other, and a segment seen after a later one counts as resent.
    pub fn pin(&mut self, cpu: usize) {
        self.cpu = Some(cpu);
    }

    /// One packet per segment on the wire and in captures: without this, TSO
    /// and GRO make super-packets that the kernel counts by segment and a
    /// capture shows as one frame.
    pub fn disable_offloads(&self) {
        for (ns, dev) in [
            (&self.client_ns, &self.client_if),
            (&self.server_ns, &self.server_if),
        ] {
            self.offloads_off(ns, dev, &["tso", "gso", "gro"]);
        }
    }

    /// Turns the ethtool `features` (`tso`, `gso`, ...) off on `dev` in `ns`.
    pub fn offloads_off(&self, ns: &str, dev: &str, features: &[&str]) {
        let mut cmd = self.cmd(ns, "ethtool");
        cmd.args(["-K", dev]);
        for feature in features {
            cmd.args([feature, "off"]);
        }
        run(&mut cmd);
    }

    /// Starts tcpdump on `dev` in `ns`, writing what `filter` keeps (all
    /// when `None`) to `pcap`, and waits until it listens. Immediate mode: a
    /// SIGINT must not strand packets in its ring.
    pub fn start_tcpdump(
        &mut self,
        ns: &str,
        dev: &str,
        pcap: &Path,
        filter: Option<&str>,
    ) -> Tcpdump {
        self.start_tcpdump_snap(ns, dev, pcap, filter, 262_144)
    }

    /// `start_tcpdump` keeping the first `snaplen` bytes of each frame: the
    /// headers are enough for tcpmon, and a full-speed transfer would write
    /// gigabytes.
    pub fn start_tcpdump_snap(
        &mut self,
        ns: &str,
        dev: &str,
        pcap: &Path,
        filter: Option<&str>,
        snaplen: u32,
    ) -> Tcpdump {
        let mut dump = self.cmd(ns, "tcpdump");
        dump.args([
            "-n",
            "-U",
            "--immediate-mode",
            "-B",
            "65536",
            "-s",
            &snaplen.to_string(),
            "-i",
            dev,
            "-w",
        ])
        .arg(pcap)
        .args(filter)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        let child = self.spawn(dump);
        let log = wait_for_stderr(self.child(child), "listening on", Duration::from_secs(10));
        Tcpdump { child, log }
    }

    /// Stops tcpdump; false when it says it dropped packets, so its capture
    /// is incomplete and proves nothing either way.
    pub fn stop_tcpdump(&mut self, dump: Tcpdump) -> bool {
        signal(self.child(dump.child), libc::SIGINT);
        self.child(dump.child).wait().unwrap();
        !dump.log.finish().iter().any(|l| {
            (l.contains("dropped by kernel") || l.contains("dropped by interface"))
                && !l.trim_start().starts_with("0 ")
        })
    }

    /// Starts a long-running process; it is killed when the lab is dropped.
    pub fn spawn(&mut self, mut cmd: Command) -> usize {
        let child = cmd
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
        self.children.push(child);
        self.children.len() - 1
    }

    pub fn child(&mut self, i: usize) -> &mut Child {
        &mut self.children[i]
    }

    /// Serves `dir` over HTTP on `port` (IPv4 and IPv6) in the server namespace.
    pub fn http_server(&mut self, dir: &Path, port: u16) {
        let mut c = self.cmd(&self.server_ns.clone(), "python3");
        c.args([
            "-m",
            "http.server",
            "--bind",
            "::",
            &port.to_string(),
            "--directory",
        ])
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        self.spawn(c);
        self.wait_listening(port);
    }

    /// Waits until something listens on `port` in the server namespace.
    pub fn wait_listening(&self, port: u16) {
        self.wait_listening_in(&self.server_ns, port);
    }

    /// Waits until something listens on `port` in namespace `ns`.
    pub fn wait_listening_in(&self, ns: &str, port: u16) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let out = self.cmd(ns, "ss").args(["-Hltn"]).output().unwrap();
            if String::from_utf8_lossy(&out.stdout).contains(&format!(":{port} ")) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("nothing listens on port {port} after 10 s");
    }

    /// Drops SYNs to `port` in the server namespace, so connects time out.
    pub fn drop_syns_to(&self, port: u16) {
        let rules = format!(
            "table inet tcpmon_test {{\n chain input {{\n  type filter hook input priority 0;\n  \
             tcp dport {port} tcp flags & (syn|ack) == syn drop\n }}\n}}\n"
        );
        let file = std::env::temp_dir().join(format!("{}-{port}.nft", self.server_ns));
        std::fs::write(&file, rules).unwrap();
        run(self.cmd(&self.server_ns, "nft").arg("-f").arg(&file));
        let _ = std::fs::remove_file(file);
    }

    /// Drops `percent` of the data segments from the server's `port` as the
    /// client's interface receives them: after tcpdump's tap and the TC and
    /// XDP hooks (netfilter's ingress hook runs after them), so both
    /// observers see each lost segment and then its retransmission.
    pub fn lose_data_from(&self, port: u16, percent: u32) {
        self.lose(
            &self.client_ns,
            &self.client_if,
            &format!("tcp sport {port}"),
            percent,
        );
    }

    /// Drops `percent` of the data segments to the server's `port` as the
    /// server's interface receives them: after everything on the client's
    /// side has seen them leave, so observers there see each lost segment
    /// and then its retransmission, as the client's kernel counts them.
    pub fn lose_data_to(&self, port: u16, percent: u32) {
        self.lose(
            &self.server_ns,
            &self.server_if,
            &format!("tcp dport {port}"),
            percent,
        );
    }

    /// Drops `percent` of what `matches` selects among the frames over 200
    /// bytes that `dev` in `ns` receives, at netfilter's netdev ingress hook.
    fn lose(&self, ns: &str, dev: &str, matches: &str, percent: u32) {
        let rules = format!(
            "table netdev tcpmon_test_loss {{\n chain ingress {{\n  \
             type filter hook ingress device \"{dev}\" priority 0;\n  \
             {matches} meta length > 200 numgen random mod 100 < {percent} drop\n }}\n}}\n"
        );
        let file = std::env::temp_dir().join(format!("{ns}-loss.nft"));
        std::fs::write(&file, rules).unwrap();
        run(self.cmd(ns, "nft").arg("-f").arg(&file));
        let _ = std::fs::remove_file(file);
    }

    /// Writes `frames` raw onto the client's end of the veth pair (through
    /// an AF_PACKET socket), as they are: VLAN tags included, which this
    /// kernel may have no 8021q module to make devices for.
    pub fn send_raw(&self, frames: &[Vec<u8>]) {
        let hex: Vec<String> = frames
            .iter()
            .map(|f| f.iter().map(|b| format!("{b:02x}")).collect())
            .collect();
        run(self
            .cmd(&self.client_ns, "python3")
            .args([
                "-c",
                "import socket,sys\n\
                 s=socket.socket(socket.AF_PACKET,socket.SOCK_RAW); s.bind((sys.argv[1],0))\n\
                 for h in sys.argv[2:]: s.send(bytes.fromhex(h))\n",
                &self.client_if,
            ])
            .args(&hex));
    }

    /// curl in the client namespace; returns its exit code (refused and
    /// timed-out connections fail on purpose).
    pub fn curl(&self, url: &str, timeout_secs: u32) -> i32 {
        self.cmd(&self.client_ns, "curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "--connect-timeout",
                &timeout_secs.to_string(),
            ])
            .args(["--max-time", "30", url])
            .status()
            .unwrap()
            .code()
            .unwrap_or(-1)
    }
}

/// A tcpdump started by [`Lab::start_tcpdump`].
pub struct Tcpdump {
    child: usize,
    log: Stderr,
}

/// A child's output, read line by line on a thread so the child never
/// blocks on a full pipe; each line with the time it came.
pub struct Lines {
    lines: Arc<Mutex<Vec<(Instant, String)>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

/// A child's standard error, as [`Lines`] (see [`wait_for_stderr`]).
pub type Stderr = Lines;

impl Lines {
    /// Reads `from` (a child's stdout or stderr) until it closes.
    pub fn read(from: impl Read + Send + 'static) -> Lines {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(from).lines().map_while(Result::ok) {
                sink.lock().unwrap().push((Instant::now(), line));
            }
        });
        Lines {
            lines,
            reader: Some(reader),
        }
    }

    /// Waits until `done` holds for the lines so far: how long that took,
    /// or `None` when it still does not after `timeout`.
    pub fn wait_until(
        &self,
        timeout: Duration,
        done: impl Fn(&[(Instant, String)]) -> bool,
    ) -> Option<Duration> {
        let start = Instant::now();
        loop {
            if done(&self.lines.lock().unwrap()) {
                return Some(start.elapsed());
            }
            if start.elapsed() >= timeout {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits until a line containing `needle` has been printed.
    pub fn wait_for(&self, needle: &str, timeout: Duration) {
        let seen = |lines: &[(Instant, String)]| lines.iter().any(|(_, l)| l.contains(needle));
        if self.wait_until(timeout, seen).is_none() {
            panic!(
                "no line containing {needle:?} within {timeout:?}; got {:?}",
                self.lines()
            );
        }
    }

    /// Everything printed, once the child has closed its end.
    pub fn finish(mut self) -> Vec<String> {
        if let Some(r) = self.reader.take() {
            r.join().unwrap();
        }
        self.lines()
    }

    pub fn lines(&self) -> Vec<String> {
        self.timed().into_iter().map(|(_, l)| l).collect()
    }

    /// The lines so far, each with the time it came.
    pub fn timed(&self) -> Vec<(Instant, String)> {
        self.lines.lock().unwrap().clone()
    }
}

/// Waits until a child's stderr prints a line containing `needle`.
pub fn wait_for_stderr(child: &mut Child, needle: &str, timeout: Duration) -> Stderr {
    let s = Lines::read(child.stderr.take().expect("stderr piped"));
    s.wait_for(needle, timeout);
    s
}

/// Sends a signal to a child.
pub fn signal(child: &Child, sig: libc::c_int) {
    unsafe {
        libc::kill(child.id() as libc::pid_t, sig);
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in [&self.client_ns, &self.server_ns] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// Runs `f` on a thread that entered the namespace `ns` (a thread's network
/// namespace is its own, so the test process stays where it is).
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    use std::os::fd::AsRawFd;
    let path = format!("/run/netns/{ns}");
    std::thread::scope(|s| {
        s.spawn(|| {
            let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .unwrap()
    })
}
