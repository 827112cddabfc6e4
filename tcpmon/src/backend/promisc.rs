//! Promiscuous mode for as long as tcpmon runs, as tcptrack does unless
//! given `-p`: on a mirror port, frames for other hosts only reach the TC
//! hook if the device accepts them. The mode is a packet socket's membership,
//! which the kernel withdraws when the socket closes, so a killed tcpmon
//! (even by SIGKILL) leaves the interface as it found it.

use std::ffi::CString;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};

use anyhow::{Context, Result};

/// Holds the interface in promiscuous mode until dropped.
pub struct Promiscuous {
    _socket: OwnedFd,
}

pub fn enable(iface: &str) -> Result<Promiscuous> {
    let name = CString::new(iface).context("interface name contains a NUL byte")?;
    // SAFETY: plain syscalls; every pointer is to a live local value.
    unsafe {
        let index = libc::if_nametoindex(name.as_ptr());
        if index == 0 {
            anyhow::bail!("no network interface named {iface}; `ip link` lists them");
        }
        // Protocol 0: the socket receives no packets; it only holds the mode.
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error())
                .context("cannot open a packet socket to set promiscuous mode (use -p to skip)");
        }
        let socket = OwnedFd::from_raw_fd(fd);
        let mreq = libc::packet_mreq {
            mr_ifindex: index as libc::c_int,
            mr_type: libc::PACKET_MR_PROMISC as libc::c_ushort,
            mr_alen: 0,
            mr_address: [0; 8],
        };
        let rc = libc::setsockopt(
            fd,
            libc::SOL_PACKET,
            libc::PACKET_ADD_MEMBERSHIP,
            (&mreq as *const libc::packet_mreq).cast(),
            std::mem::size_of::<libc::packet_mreq>() as libc::socklen_t,
        );
        if rc != 0 {
            return Err(io::Error::last_os_error()).with_context(|| {
                format!("cannot put {iface} in promiscuous mode (use -p to skip)")
            });
        }
        Ok(Promiscuous { _socket: socket })
    }
}
