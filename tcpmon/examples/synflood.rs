//! Sends a live SYN flood for `peek`'s memory bound: COUNT distinct SYNs
//! (each from its own address and port) out of IFACE through a packet
//! socket, so they pass the TC egress hook like any sent packet. For labs
//! in network namespaces only: the destination is 192.0.2.1 (TEST-NET-1).
//!
//!     synflood IFACE COUNT

use std::ffi::CString;

use tcpmon::wire::build::TcpBuilder;
use tcpmon_common::tcp::flags::SYN;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, iface, count] = &args[..] else {
        anyhow::bail!("usage: synflood IFACE COUNT");
    };
    let count: u64 = count.parse()?;
    let name = CString::new(iface.as_str())?;
    // SAFETY: plain syscalls on values that outlive them.
    let (fd, index) = unsafe {
        let index = libc::if_nametoindex(name.as_ptr());
        anyhow::ensure!(index != 0, "no interface {iface}");
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
        anyhow::ensure!(
            fd >= 0,
            "packet socket: {}",
            std::io::Error::last_os_error()
        );
        (fd, index)
    };
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_ifindex = index as i32;
    addr.sll_halen = 6;
    let mut sent = 0u64;
    for i in 0..count {
        let client = [10, (i >> 16) as u8, (i >> 8) as u8, i as u8];
        let port = 1024 + (i % 50_000) as u16;
        let frame = TcpBuilder::v4(client, port, [192, 0, 2, 1], 80)
            .flags(SYN)
            .seq(i as u32)
            .ethernet();
        // SAFETY: the frame and the address outlive the call.
        let n = unsafe {
            libc::sendto(
                fd,
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&addr as *const libc::sockaddr_ll).cast(),
                size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if n == frame.len() as isize {
            sent += 1;
        }
    }
    println!("sent {sent} of {count} SYNs on {iface}");
    Ok(())
}
