//! Classic pcap files: one 24-byte file header, then records of a 16-byte
//! header and the captured bytes. The magic number gives both the byte order
//! (as written by the capturing machine) and the timestamp unit.

use std::io::Read;

use super::{CaptureError, Endian, Format, Input, MAX_RECORD_LEN, Record, unknown_magic};

const HEADER_LEN: usize = 24;
const RECORD_HEADER_LEN: usize = 16;

/// The link-type field keeps FCS information in its upper bits (libpcap's
/// `LT_LINKTYPE`).
const LINKTYPE_MASK: u32 = 0x03ff_ffff;

/// What the file header says about every record.
pub(super) struct Header {
    endian: Endian,
    nanos: bool,
    linktype: u32,
}

impl Header {
    /// Reads the rest of the file header after its `magic`, which is not the
    /// pcapng one.
    pub(super) fn read<R: Read>(
        input: &mut Input<R>,
        magic: [u8; 4],
    ) -> Result<Header, CaptureError> {
        let (endian, nanos) = match u32::from_le_bytes(magic) {
            0xa1b2_c3d4 => (Endian::Little, false),
            0xd4c3_b2a1 => (Endian::Big, false),
            0xa1b2_3c4d => (Endian::Little, true),
            0x4d3c_b2a1 => (Endian::Big, true),
            _ => return Err(unknown_magic(magic)),
        };
        let mut header = [0u8; HEADER_LEN];
        header[..4].copy_from_slice(&magic);
        let got = 4 + input.fill(&mut header[4..])?;
        if got < HEADER_LEN {
            return Err(CaptureError::ShortHeader {
                format: "pcap file",
                need: HEADER_LEN as u64,
                got: got as u64,
            });
        }
        Ok(Header {
            endian,
            nanos,
            linktype: endian.u32(&header, 20) & LINKTYPE_MASK,
        })
    }

    pub(super) fn format(&self) -> Format {
        Format::Pcap {
            nanos: self.nanos,
            big_endian: self.endian == Endian::Big,
        }
    }

    /// Reads one packet record; its bytes land at the front of `buf`.
    pub(super) fn next_record<R: Read>(
        &self,
        input: &mut Input<R>,
        buf: &mut Vec<u8>,
    ) -> Result<Option<Record>, CaptureError> {
        const WHAT: &str = "packet record";
        let offset = input.offset;
        let mut header = [0u8; RECORD_HEADER_LEN];
        match input.fill(&mut header)? {
            0 => return Ok(None),
            RECORD_HEADER_LEN => {}
            got => {
                return Err(CaptureError::TruncatedHeader {
                    what: WHAT,
                    offset,
                    need: RECORD_HEADER_LEN as u64,
                    got: got as u64,
                });
            }
        }
        let e = self.endian;
        let secs = u64::from(e.u32(&header, 0));
        let frac = u64::from(e.u32(&header, 4));
        let caplen = e.u32(&header, 8);
        let orig_len = e.u32(&header, 12);
        if caplen > MAX_RECORD_LEN {
            return Err(CaptureError::Oversized {
                what: WHAT,
                offset,
                len: caplen.into(),
                max: MAX_RECORD_LEN,
            });
        }
        let data = input.take(buf, caplen as usize)?;
        let got = data.len();
        if got < caplen as usize {
            return Err(CaptureError::Truncated {
                what: WHAT,
                offset,
                need: caplen.into(),
                got: got as u64,
            });
        }
        let frac_ns = if self.nanos { frac } else { frac * 1_000 };
        Ok(Some(Record {
            // Cannot overflow: u32::MAX seconds is about 4.3e18 ns.
            ts_ns: secs * 1_000_000_000 + frac_ns,
            linktype: self.linktype,
            data,
            orig_len,
            interface: 0,
            offset,
        }))
    }
}
