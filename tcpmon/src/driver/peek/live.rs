//! Live `peek`: handshake events from the kernel's ring buffer, timeouts on
//! the monotonic clock (the kernel's timestamps), the statistics socket,
//! and the summary on SIGINT or SIGTERM.

use std::collections::HashSet;
use std::ffi::CString;
use std::io::Write;
use std::net::IpAddr;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::sync::mpsc;

use super::{peek_options, socket};
use crate::backend::ebpf::{EbpfBackend, EbpfOptions, LoadOptions, monotonic_to_unix_offset_ns};
use crate::backend::promisc;
use crate::cli::PeekArgs;
use crate::engine::FlowTable;
use crate::filter::Filter;
use crate::run::{self, Signals, kernel::Kernel};
use crate::view::peek::filter::Filters;
use crate::view::peek::view::{AtEnd, PeekView};
use crate::view::peek::{Locality, PeekStats};

/// How often pending handshakes are checked for their deadline.
const TICK: Duration = Duration::from_millis(100);

pub(super) fn run(iface: &str, args: &PeekArgs, filters: Filters) -> Result<ExitCode> {
    let opts = EbpfOptions {
        iface: iface.to_string(),
        xdp: args.xdp.choice(),
    };
    // Compiled before anything is loaded, so an error in the expression
    // comes first, in tcpdump's words.
    let pcap_filter = args
        .pcap_filter
        .as_deref()
        .map(Filter::compile)
        .transpose()?;
    let load = LoadOptions {
        icmp: args.icmp,
        flow_capacity: args.max_flows,
        filter: pcap_filter.map(|f| f.insns().to_vec()),
        kernel_log: args.kernel_log.level.filter(),
        ..LoadOptions::default()
    };
    let backend = EbpfBackend::attach_with(&opts, &load)?;
    let promisc = match args.promisc {
        true => Some(promisc::enable(iface)?),
        false => None,
    };
    let local: HashSet<IpAddr> = if args.local.is_empty() {
        interface_addresses(iface)?
    } else {
        args.local.iter().copied().collect()
    };
    let listener = socket::bind(&args.socket)?;
    // As many clients as the limit on open files allows, raised to fit.
    let slots = socket::client_slots();
    // Everything that needs root is done.
    if let Some(user) = &args.user {
        drop_privileges(user, &args.socket)?;
    }
    let runtime = super::super::runtime()?;
    let stats = PeekStats::new(filters, Locality::Fixed(local), args.icmp);
    let result = runtime.block_on(live_loop(iface, args, backend, listener, slots, stats));
    // Best effort: after -u the directory may not let us.
    let _ = std::fs::remove_file(&args.socket);
    drop(promisc);
    result
}

async fn live_loop(
    iface: &str,
    args: &PeekArgs,
    mut backend: EbpfBackend,
    listener: std::os::unix::net::UnixListener,
    slots: usize,
    stats: PeekStats,
) -> Result<ExitCode> {
    let listener =
        tokio::net::UnixListener::from_std(listener).context("cannot serve the socket")?;
    // Room for a request from every client: those waiting are answered
    // together (see `run::Input::Query`).
    let (query_tx, queries) = mpsc::channel(socket::MAX_CLIENTS);
    let accepting = tokio::spawn(socket::accept(listener, query_tx, slots));
    let mut signals = Signals::new()?;
    let stderr = std::io::stderr();
    let mut out = std::io::LineWriter::new(stderr.lock());
    // Scripts and tests wait for this line before sending traffic.
    writeln!(out, "tcpmon: watching {iface}")?;
    let opts = peek_options(args, monotonic_to_unix_offset_ns(), AtEnd::ExpireDue);
    // An ended handshake's record stays in the kernel as long as a session
    // may still look it up at its deadline (its event may have been lost).
    backend.set_linger(opts.timeout_ns);
    let mut view = PeekView::new(opts, stats, out)?;
    // The kernel tracks the flows; only its events and timeouts matter here.
    let mut source = Kernel::new(&mut backend, TICK, false, true);
    let mut table = FlowTable::new(0);
    let run_opts = run::Options {
        keys: run::Keys::None,
        queries: Some(queries),
        deadline: None,
    };
    let stopped = run::run(&mut source, &mut view, &mut table, &mut signals, run_opts).await;
    accepting.abort();
    stopped?;
    Ok(ExitCode::SUCCESS)
}

/// The IPv4 and IPv6 addresses of `iface`, which make a SYN RX or TX.
pub(crate) fn interface_addresses(iface: &str) -> Result<HashSet<IpAddr>> {
    let mut set = HashSet::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list freed below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(std::io::Error::last_os_error()).context("cannot list interface addresses");
    }
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: a node of the list getifaddrs returned, not yet freed.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        // SAFETY: ifa_name is a NUL-terminated string in the node.
        let name = unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) };
        if ifa.ifa_addr.is_null() || name.to_bytes() != iface.as_bytes() {
            continue;
        }
        // SAFETY: ifa_addr points at a sockaddr of the family it states.
        unsafe {
            match (*ifa.ifa_addr).sa_family as i32 {
                libc::AF_INET => {
                    let sin = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                    set.insert(IpAddr::from(
                        u32::from_be(sin.sin_addr.s_addr).to_be_bytes(),
                    ));
                }
                libc::AF_INET6 => {
                    let sin6 = &*(ifa.ifa_addr as *const libc::sockaddr_in6);
                    set.insert(IpAddr::from(sin6.sin6_addr.s6_addr));
                }
                _ => {}
            }
        }
    }
    // SAFETY: the list getifaddrs allocated.
    unsafe { libc::freeifaddrs(head) };
    Ok(set)
}

/// Linux capability numbers and the capset ABI (version 3: two 32-bit words).
const CAP_BPF: u32 = 39;
const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// `-u USER`: become USER (its groups too), keeping CAP_BPF alone, which
/// reading the kernel's counters needs where unprivileged BPF is disabled
/// (Debian's default); the ring buffer is mapped memory and needs nothing.
/// The socket is handed to USER so the process can still remove it.
fn drop_privileges(user: &str, socket: &Path) -> Result<()> {
    let name = CString::new(user).context("the user name contains a NUL byte")?;
    // SAFETY: getpwnam returns a pointer into static storage or NULL.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    if pw.is_null() {
        bail!("-u {user}: no such user");
    }
    // SAFETY: non-null, filled by getpwnam.
    let (uid, gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
    let path = CString::new(socket.as_os_str().as_encoded_bytes())
        .context("the socket path contains a NUL byte")?;
    let check = |rc: libc::c_int, what: &str| -> Result<()> {
        if rc != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("-u {user}: {what}"));
        }
        Ok(())
    };
    // SAFETY: plain syscalls with valid pointers; the runtime has no other
    // threads yet.
    unsafe {
        check(libc::chown(path.as_ptr(), uid, gid), "chown of the socket")?;
        check(
            libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0),
            "keeping capabilities",
        )?;
        check(libc::initgroups(name.as_ptr(), gid), "initgroups")?;
        check(libc::setgid(gid), "setgid")?;
        check(libc::setuid(uid), "setuid")?;
        let header = CapHeader {
            version: LINUX_CAPABILITY_VERSION_3,
            pid: 0,
        };
        let mut data = [CapData::default(); 2];
        let bit = 1u32 << (CAP_BPF % 32);
        data[(CAP_BPF / 32) as usize] = CapData {
            effective: bit,
            permitted: bit,
            inheritable: 0,
        };
        let rc = libc::syscall(libc::SYS_capset, &header, data.as_ptr()) as libc::c_int;
        check(rc, "capset")?;
    }
    Ok(())
}
