//! Writes a SYN flood capture for `peek`'s memory bound: SYNS distinct SYNs
//! (each from its own address and port, none answered) to one server, RATE
//! a second of packet time, then one answered handshake so the run ends on
//! a success too.
//!
//!     gen_synflood OUT.pcap SYNS [RATE]

use std::io::BufWriter;

use tcpmon::backend::pcap::write::PcapWriter;
use tcpmon::wire::build::TcpBuilder;
use tcpmon_common::tcp::flags::*;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (out, syns, rate) = match &args[..] {
        [_, out, syns] => (out, syns.parse::<u64>()?, 100_000),
        [_, out, syns, rate] => (out, syns.parse()?, rate.parse::<u64>()?),
        _ => anyhow::bail!("usage: gen_synflood OUT.pcap SYNS [RATE]"),
    };
    let file = std::fs::File::create(out)?;
    let mut w = PcapWriter::new(BufWriter::with_capacity(1 << 20, file), 1)?;
    let start = 1_700_000_000_000_000_000u64;
    let step = 1_000_000_000 / rate.max(1);
    let server = [192, 0, 2, 1];
    for i in 0..syns {
        let client = [10, (i >> 16) as u8, (i >> 8) as u8, i as u8];
        let port = 1024 + (i % 50_000) as u16;
        let syn = TcpBuilder::v4(client, port, server, 80)
            .flags(SYN)
            .seq(i as u32);
        w.write(start + i * step, &syn.ethernet())?;
    }
    let end = start + syns * step;
    let c = TcpBuilder::v4([198, 51, 100, 7], 40000, server, 80);
    let s = TcpBuilder::v4(server, 80, [198, 51, 100, 7], 40000);
    w.write(end, &c.clone().flags(SYN).seq(1).ethernet())?;
    w.write(end + 1_000, &s.flags(SYN | ACK).seq(9).ack(2).ethernet())?;
    w.write(end + 2_000, &c.flags(ACK).seq(2).ack(10).ethernet())?;
    w.finish()?;
    Ok(())
}
