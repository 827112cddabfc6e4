//! Writes classic pcap files (nanosecond resolution): synthetic captures for
//! benchmarks and tests.

use std::io::{self, Write};

pub struct PcapWriter<W: Write> {
    out: W,
}

impl<W: Write> PcapWriter<W> {
    /// Writes the file header for frames of `linktype`.
    pub fn new(mut out: W, linktype: u32) -> io::Result<Self> {
        out.write_all(&0xa1b2_3c4du32.to_le_bytes())?; // nanosecond magic
        out.write_all(&2u16.to_le_bytes())?;
        out.write_all(&4u16.to_le_bytes())?;
        out.write_all(&[0; 8])?; // thiszone, sigfigs
        out.write_all(&262_144u32.to_le_bytes())?;
        out.write_all(&linktype.to_le_bytes())?;
        Ok(PcapWriter { out })
    }

    pub fn write(&mut self, ts_ns: u64, frame: &[u8]) -> io::Result<()> {
        let len = frame.len() as u32;
        self.out
            .write_all(&((ts_ns / 1_000_000_000) as u32).to_le_bytes())?;
        self.out
            .write_all(&((ts_ns % 1_000_000_000) as u32).to_le_bytes())?;
        self.out.write_all(&len.to_le_bytes())?;
        self.out.write_all(&len.to_le_bytes())?;
        self.out.write_all(frame)
    }

    pub fn finish(mut self) -> io::Result<W> {
        self.out.flush()?;
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::pcap::file::CaptureReader;

    #[test]
    fn written_frames_read_back() {
        let mut w = PcapWriter::new(Vec::new(), 1).unwrap();
        w.write(1_500_000_000_123_456_789, b"abc").unwrap();
        w.write(1_500_000_001_000_000_000, b"de").unwrap();
        let bytes = w.finish().unwrap();
        let mut r = CaptureReader::new(&bytes[..]).unwrap();
        let f = r.next_frame().unwrap().unwrap();
        assert_eq!(
            (f.ts_ns, f.data, f.linktype),
            (1_500_000_000_123_456_789, &b"abc"[..], 1)
        );
        let f = r.next_frame().unwrap().unwrap();
        assert_eq!((f.ts_ns, f.orig_len), (1_500_000_001_000_000_000, 2));
        assert!(r.next_frame().unwrap().is_none());
    }
}
