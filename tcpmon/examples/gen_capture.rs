//! Writes a synthetic Ethernet capture for replay benchmarks: FLOWS
//! connections, each a handshake, data segments both ways and a FIN close,
//! interleaved round-robin so the flow table is exercised like a busy link.
//! Clients send 100-byte segments, servers SERVER_PAYLOAD bytes (1,000 by
//! default; smaller keeps the file small without changing the per-packet
//! work).
//!
//!     gen_capture OUT.pcap PACKETS FLOWS [SERVER_PAYLOAD]

use std::io::BufWriter;

use tcpmon::backend::pcap::write::PcapWriter;
use tcpmon::wire::build::TcpBuilder;
use tcpmon_common::tcp::flags::*;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (out, packets, flows, server_payload) = match &args[..] {
        [_, out, packets, flows] => (out, packets, flows, 1_000),
        [_, out, packets, flows, payload] => (out, packets, flows, payload.parse()?),
        _ => anyhow::bail!("usage: gen_capture OUT.pcap PACKETS FLOWS [SERVER_PAYLOAD]"),
    };
    let packets: u64 = packets.parse()?;
    let flows: u32 = flows.parse()?;
    let server_payload: usize = server_payload;
    let per_flow = (packets / flows as u64).max(6);
    let file = std::fs::File::create(out)?;
    let mut w = PcapWriter::new(BufWriter::with_capacity(1 << 20, file), 1)?;
    let mut ts = 1_700_000_000_000_000_000u64;
    for step in 0..per_flow {
        for f in 0..flows {
            ts += 1_000;
            let client = [10, 1, (f >> 8) as u8, f as u8];
            let c = TcpBuilder::v4(client, 20_000 + (f % 40_000) as u16, [10, 2, 0, 1], 443);
            let s = TcpBuilder::v4([10, 2, 0, 1], 443, client, 20_000 + (f % 40_000) as u16);
            let (cseq, sseq) = (1_000 + step as u32 * 100, 5_000 + step as u32 * 1_000);
            let frame = match step {
                0 => c.flags(SYN).seq(999).ethernet(),
                1 => s.flags(SYN | ACK).seq(4_999).ack(1_000).ethernet(),
                n if n + 2 == per_flow => c.flags(FIN | ACK).seq(cseq).ack(sseq).ethernet(),
                n if n + 1 == per_flow => s.flags(FIN | ACK).seq(sseq).ack(cseq + 1).ethernet(),
                n if n % 2 == 0 => c
                    .flags(ACK | PSH)
                    .seq(cseq)
                    .ack(sseq)
                    .payload(100)
                    .ethernet(),
                _ => s
                    .flags(ACK)
                    .seq(sseq)
                    .ack(cseq)
                    .payload(server_payload)
                    .ethernet(),
            };
            w.write(ts, &frame)?;
        }
    }
    w.finish()?;
    Ok(())
}
