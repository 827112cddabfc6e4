//! Sends a live SYN flood for `peek`'s memory bound and `top`'s cost at
//! scale: COUNT distinct SYNs (each from its own address and port) to DST
//! through the IP stack, from a raw IPv4 socket that writes its own headers
//! (IPPROTO_RAW implies IP_HDRINCL), so they leave by the route to DST and
//! pass the TC egress hook like any sent packet. Frames written to an
//! AF_PACKET socket, what this did before, skip the TC egress hook on this
//! machine's kernel. For labs in network namespaces only: run it in the
//! namespace whose interface is watched, DST an address on the far side
//! (it must answer ARP; the SYNs themselves go unanswered or are reset).
//!
//!     synflood DST COUNT [FIRST]
//!
//! FIRST (0 by default) numbers the first SYN: runs with different ranges
//! send distinct SYNs (new sources and sequence numbers), so a second
//! flood is new sessions rather than the first one's retransmissions.

use std::net::Ipv4Addr;

use anyhow::{Context, Result};
use tcpmon::wire::build::TcpBuilder;
use tcpmon_common::tcp::flags::SYN;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (dst, count, first) = match &args[..] {
        [_, dst, count] => (dst, count, "0"),
        [_, dst, count, first] => (dst, count, first.as_str()),
        _ => anyhow::bail!("usage: synflood DST COUNT [FIRST]"),
    };
    let dst: Ipv4Addr = dst
        .parse()
        .with_context(|| format!("{dst}: not an IPv4 address"))?;
    let count: u64 = count
        .parse()
        .with_context(|| format!("{count}: not a count"))?;
    let first: u64 = first
        .parse()
        .with_context(|| format!("{first}: not a number"))?;
    // SAFETY: a plain syscall.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
    anyhow::ensure!(
        fd >= 0,
        "raw IPv4 socket (needs CAP_NET_RAW): {}",
        std::io::Error::last_os_error()
    );
    let addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as u16,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(dst).to_be(),
        },
        sin_zero: [0; 8],
    };
    let (mut sent, mut first_error) = (0u64, None);
    for i in first..first + count {
        // 10.100.0.0 to 10.163.255.255: distinct sources for up to 4 Mi
        // SYNs, none of them the lab's own addresses.
        let client = [10, 100 + ((i >> 16) & 0x3f) as u8, (i >> 8) as u8, i as u8];
        let port = 1024 + (i % 50_000) as u16;
        let packet = TcpBuilder::v4(client, port, dst.octets(), 80)
            .flags(SYN)
            .seq(i as u32)
            .ip();
        // SAFETY: the packet and the address outlive the call.
        let n = unsafe {
            libc::sendto(
                fd,
                packet.as_ptr().cast(),
                packet.len(),
                0,
                (&addr as *const libc::sockaddr_in).cast(),
                size_of::<libc::sockaddr_in>() as u32,
            )
        };
        if n == packet.len() as isize {
            sent += 1;
        } else if first_error.is_none() {
            // A full device queue (ENOBUFS) drops a SYN, not the run.
            first_error = Some(std::io::Error::last_os_error());
        }
    }
    // SAFETY: our own descriptor, closed once.
    unsafe { libc::close(fd) };
    match first_error {
        None => println!("sent {sent} of {count} SYNs to {dst}"),
        Some(e) => println!("sent {sent} of {count} SYNs to {dst} (first failure: {e})"),
    }
    Ok(())
}
