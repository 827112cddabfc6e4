//! Hooking the loaded programs to an interface: TC (tcx links, or clsact
//! filters before Linux 6.6) and XDP, after checking that the interface
//! exists.

use anyhow::{Result, anyhow, bail};
use aya::Ebpf;
use aya::programs::tc::{self, TcAttachOptions};
use aya::programs::{LinkOrder, SchedClassifier, TcAttachType, Xdp, XdpMode};

use super::explain::{is_permission, permission_error};
use super::load::{LoadOptions, PROG_TC, PROG_XDP, load_with, program};
use super::{EbpfBackend, KernelLog};

/// Whether and how to attach the XDP program.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum XdpChoice {
    /// TC sees both directions.
    #[default]
    Off,
    /// XDP in the driver; the driver must support it.
    Native,
    /// Generic XDP in the network stack; works on any device.
    Skb,
}

#[derive(Clone, Debug, Default)]
pub struct EbpfOptions {
    pub iface: String,
    pub xdp: XdpChoice,
}

impl EbpfBackend {
    /// Loads the embedded object (see `load`), attaches TC on egress, and on
    /// ingress either TC or, when asked, XDP (both on ingress would count
    /// every received packet twice).
    pub fn attach(opts: &EbpfOptions) -> Result<Self> {
        EbpfBackend::attach_with(opts, &LoadOptions::default())
    }

    /// `attach`, loading with `load` options (e.g. `split_vlans`).
    pub fn attach_with(opts: &EbpfOptions, load: &LoadOptions) -> Result<Self> {
        let iface = opts.iface.as_str();
        let ifindex = check_interface(iface)?;
        let mut backend = EbpfBackend::new(load_with(load)?)?;
        if load.kernel_log != log::LevelFilter::Off {
            backend.kernel_log = Some(KernelLog::start(&mut backend.ebpf)?);
        }
        let ebpf = &mut backend.ebpf;
        // Every packet on loopback leaves and arrives through the same
        // device: one hook sees each once, two would count it twice.
        let loopback = ifindex == LOOPBACK_IFINDEX;
        if !loopback || opts.xdp == XdpChoice::Off {
            attach_tc(ebpf, iface, TcAttachType::Egress)?;
        }
        match opts.xdp {
            XdpChoice::Off if loopback => {}
            XdpChoice::Off => attach_tc(ebpf, iface, TcAttachType::Ingress)?,
            XdpChoice::Native => attach_xdp(ebpf, iface, XdpMode::Driver)?,
            XdpChoice::Skb => attach_xdp(ebpf, iface, XdpMode::Skb)?,
        }
        Ok(backend)
    }
}

/// The kernel gives each network namespace's loopback device index 1.
const LOOPBACK_IFINDEX: u32 = 1;

/// The interface's index, or a clear error if there is no such interface.
fn check_interface(iface: &str) -> Result<u32> {
    let name = std::ffi::CString::new(iface)
        .map_err(|_| anyhow!("the interface name {iface:?} contains a NUL byte"))?;
    // SAFETY: a NUL-terminated string that outlives the call.
    match unsafe { libc::if_nametoindex(name.as_ptr()) } {
        0 => bail!("no network interface named {iface}; `ip link` lists them"),
        index => Ok(index),
    }
}

fn attach_tc(ebpf: &mut Ebpf, iface: &str, dir: TcAttachType) -> Result<()> {
    let prog: &mut SchedClassifier = program(ebpf, PROG_TC)?.try_into()?;
    let side = if dir == TcAttachType::Ingress {
        "ingress"
    } else {
        "egress"
    };
    // tcx is probed, not assumed from the kernel version: the link is simply
    // tried, and kernels without tcx (before 6.6) refuse it.
    // Ingress first and egress last, so tcpmon sees what a packet
    // capture sees: every received packet before any filter drops it,
    // and sent packets after other programs have had their say.
    let order = if dir == TcAttachType::Ingress {
        LinkOrder::first()
    } else {
        LinkOrder::last()
    };
    match prog.attach_with_options(iface, dir, TcAttachOptions::TcxOrder(order)) {
        Ok(_) => {
            // Which path was taken matters on older kernels (and to the
            // VM tests, which check it per kernel).
            eprintln!("tcpmon: attached TC {side} on {iface} with tcx");
            return Ok(());
        }
        Err(e) if is_permission(&e) => return Err(permission_error(e)),
        Err(e) => log::info!("no tcx link on {iface} {side} ({e}); using a clsact filter"),
    }
    // Before tcx, TC programs hang off a clsact qdisc as netlink filters.
    // Those are not links: a filter outlives the process that added it, so a
    // SIGKILLed tcpmon leaves its filter running (aya removes it on a normal
    // exit). Remove what an earlier killed run left before adding ours;
    // this also removes the filter of a tcpmon still running on this
    // interface, which tcx would have let coexist.
    if let Err(e) = tc::qdisc_add_clsact(iface) {
        log::debug!("adding clsact to {iface}: {e} (usually: it is already there)");
    }
    match tc::qdisc_detach_program(iface, dir, PROG_TC) {
        Ok(()) => log::warn!("removed a {PROG_TC} filter left on {iface} {side} by an earlier run"),
        Err(e) => log::debug!("no stale {PROG_TC} filter on {iface} {side}: {e}"),
    }
    prog.attach_with_options(iface, dir, TcAttachOptions::Netlink(Default::default()))
        .map_err(|e| {
            if is_permission(&e) {
                return permission_error(e);
            }
            anyhow::Error::new(e).context(format!(
                "attaching {PROG_TC} to {iface} {side} through a clsact qdisc failed; on \
                 distribution kernels before 6.6 load the sch_ingress and cls_bpf modules \
                 (modprobe sch_ingress cls_bpf)"
            ))
        })?;
    eprintln!("tcpmon: attached TC {side} on {iface} with netlink clsact");
    Ok(())
}

fn attach_xdp(ebpf: &mut Ebpf, iface: &str, mode: XdpMode) -> Result<()> {
    let prog: &mut Xdp = program(ebpf, PROG_XDP)?.try_into()?;
    // aya uses an XDP link (gone with the fd) and falls back to a netlink
    // attachment only on kernels before 5.9, where a killed tcpmon would
    // leave the program on the interface until `ip link set dev X xdp off`.
    prog.attach(iface, mode).map_err(|e| {
        if is_permission(&e) {
            return permission_error(e);
        }
        let e = anyhow::Error::new(e);
        match mode {
            XdpMode::Driver => e.context(format!(
                "attaching XDP in native (driver) mode to {iface} failed: its driver may not \
                 support native XDP, or another XDP program is attached; try `--xdp skb` \
                 (generic XDP) or leave XDP off (TC alone sees both directions)"
            )),
            _ => e.context(format!(
                "attaching XDP in skb (generic) mode to {iface} failed; is another XDP program \
                 attached? (`ip link show dev {iface}`)"
            )),
        }
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_interface_names_the_fix() {
        let e = check_interface("tcpmon-no-such0").expect_err("no such interface");
        assert_eq!(
            e.to_string(),
            "no network interface named tcpmon-no-such0; `ip link` lists them"
        );
    }
}
