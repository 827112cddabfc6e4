//! Captures the tests make frame by frame, for patterns the shared captures
//! lack: the replay tests write them to a file, the kernel tests send the
//! same frames through the kernel program.

use std::io::BufWriter;
use std::path::{Path, PathBuf};

use tcpmon::backend::pcap::write::PcapWriter;
use tcpmon::wire::build::TcpBuilder;
use tcpmon::wire::linktype;
use tcpmon_common::tcp::flags::*;

pub const CLIENT: [u8; 4] = [10, 0, 0, 2];
pub const CPORT: u16 = 40000;
pub const SERVER: [u8; 4] = [10, 0, 0, 1];
pub const SPORT: u16 = 80;

fn c2s() -> TcpBuilder {
    TcpBuilder::v4(CLIENT, CPORT, SERVER, SPORT)
}

fn s2c() -> TcpBuilder {
    TcpBuilder::v4(SERVER, SPORT, CLIENT, CPORT)
}

/// What a capture holds for its one connection, as `top --json` and
/// tshark count it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Expected {
    pub packets_to_server: u64,
    pub packets_to_client: u64,
    pub bytes_to_server: u64,
    pub bytes_to_client: u64,
}

/// Issue 17: a handshake (client ISN 1000, server ISN 5000), data both
/// ways, then a second SYN+ACK from the server's side with another ISN,
/// acknowledging the client's SYN (a duplicate answer from another path or
/// a middlebox), the client's ACK to it, data going on with the original
/// numbers, and a FIN teardown. The second ISN lies after the server's
/// sequence numbers, so a rule that took it as the server's would count the
/// server's later data as retransmitted.
pub fn second_synack() -> (Vec<Vec<u8>>, Expected) {
    let frames = vec![
        c2s().flags(SYN).seq(1000).ethernet(),
        s2c().flags(SYN | ACK).seq(5000).ack(1001).ethernet(),
        c2s().flags(ACK).seq(1001).ack(5001).ethernet(),
        c2s()
            .flags(ACK | PSH)
            .seq(1001)
            .ack(5001)
            .payload(100)
            .ethernet(),
        s2c()
            .flags(ACK | PSH)
            .seq(5001)
            .ack(1101)
            .payload(300)
            .ethernet(),
        c2s().flags(ACK).seq(1101).ack(5301).ethernet(),
        s2c().flags(SYN | ACK).seq(1_000_000).ack(1001).ethernet(),
        // The client answers the unexpected SYN+ACK with an ACK (RFC 9293,
        // 3.10.7.4) carrying its own numbers.
        c2s().flags(ACK).seq(1101).ack(5301).ethernet(),
        c2s()
            .flags(ACK | PSH)
            .seq(1101)
            .ack(5301)
            .payload(50)
            .ethernet(),
        s2c()
            .flags(ACK | PSH)
            .seq(5301)
            .ack(1151)
            .payload(200)
            .ethernet(),
        c2s().flags(FIN | ACK).seq(1151).ack(5501).ethernet(),
        s2c().flags(FIN | ACK).seq(5501).ack(1152).ethernet(),
        c2s().flags(ACK).seq(1152).ack(5502).ethernet(),
    ];
    let expected = Expected {
        packets_to_server: 8,
        packets_to_client: 5,
        bytes_to_server: 150,
        bytes_to_client: 500,
    };
    (frames, expected)
}

/// Writes `frames` as an Ethernet pcap at `name` in the tests' scratch
/// folder, one millisecond apart.
pub fn write_pcap(name: &str, frames: &[Vec<u8>]) -> PathBuf {
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let file = std::fs::File::create(&path).expect("scratch capture");
    let mut w = PcapWriter::new(BufWriter::new(file), linktype::ETHERNET).expect("pcap header");
    let start = 1_700_000_000_000_000_000u64;
    for (i, f) in frames.iter().enumerate() {
        w.write(start + i as u64 * 1_000_000, f)
            .expect("pcap frame");
    }
    w.finish().expect("pcap written");
    path
}
