//! pcapng blocks (draft-ietf-opsawg-pcapng): sections, interfaces and the
//! three packet block kinds; every other block is skipped by its length.
//!
//! Interface ids count from 0 in each section, and each interface has its own
//! link type and timestamp unit, so a frame's meaning depends on blocks read
//! long before it. [`Section`] holds that context.

use std::io::Read;

use super::{CaptureError, Endian, Input, MAX_RECORD_LEN, PCAPNG_MAGIC, Record, Span};

const SECTION_HEADER: &str = "section header block";
const IDB: u32 = 1;
const PACKET_BLOCK: u32 = 2;
const SIMPLE_PACKET_BLOCK: u32 = 3;
const ENHANCED_PACKET_BLOCK: u32 = 6;

/// Type, length, byte-order magic, version (4) and section length (8), plus
/// the trailing length.
const SECTION_HEADER_MIN_LEN: u32 = 28;
/// Type, length and trailing length: the least any block can be.
const BLOCK_MIN_LEN: u32 = 12;

const OPT_END: u16 = 0;
const OPT_IF_TSRESOL: u16 = 9;
const OPT_IF_TSOFFSET: u16 = 14;

/// What the current section has declared so far.
pub(super) struct Section {
    endian: Endian,
    /// Offset of the section header, named in errors about interface ids
    /// because those ids only mean something within their section.
    start: u64,
    interfaces: Vec<Interface>,
    /// Simple Packet Blocks carry no timestamp. They get the previous
    /// packet's time, so that time never jumps back to 1970 under the
    /// engine's timeouts.
    last_ts_ns: u64,
}

#[derive(Debug, Clone, Copy)]
struct Interface {
    linktype: u32,
    snaplen: u32,
    scale: TsScale,
    /// `if_tsoffset`, already in nanoseconds.
    offset_ns: i64,
}

/// Turns an interface's timestamp units into nanoseconds. Decided once per
/// interface so the per-frame cost is one multiply or divide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TsScale {
    Mul(u64),
    Div(u64),
    /// Units of 2^-n seconds.
    Pow2(u32),
}

impl TsScale {
    const MICROS: TsScale = TsScale::Mul(1_000);

    /// Decodes `if_tsresol`: the top bit says whether the rest is a negative
    /// power of 10 or of 2.
    fn from_tsresol(v: u8) -> TsScale {
        let n = u32::from(v & 0x7f);
        if v & 0x80 != 0 {
            TsScale::Pow2(n)
        } else if n <= 9 {
            TsScale::Mul(10u64.pow(9 - n))
        } else {
            // Finer than 1e-28 s makes every timestamp 0 ns either way.
            TsScale::Div(10u64.checked_pow(n - 9).unwrap_or(u64::MAX))
        }
    }

    /// Wraps modulo 2^64 ns, like [`super::Frame::ts_ns`] documents.
    fn to_ns(self, units: u64) -> u64 {
        match self {
            TsScale::Mul(m) => units.wrapping_mul(m),
            TsScale::Div(d) => units / d,
            TsScale::Pow2(n) => ((u128::from(units) * 1_000_000_000) >> n) as u64,
        }
    }
}

impl Section {
    /// Reads the file's first Section Header Block, whose type (the magic)
    /// has already been consumed.
    pub(super) fn first<R: Read>(
        input: &mut Input<R>,
        buf: &mut Vec<u8>,
    ) -> Result<Section, CaptureError> {
        let mut section = Section {
            endian: Endian::Little,
            start: 0,
            interfaces: Vec::new(),
            last_ts_ns: 0,
        };
        let mut len = [0u8; 4];
        let got = input.fill(&mut len)?;
        let result = if got < len.len() {
            Err(CaptureError::TruncatedHeader {
                what: SECTION_HEADER,
                offset: 0,
                need: 12,
                got: 4 + got as u64,
            })
        } else {
            section.read_header(input, buf, 0, len)
        };
        match result {
            Ok(()) => Ok(section),
            // A file cut inside its very first block is one shorter than its
            // header, which deserves the plainer message.
            Err(
                CaptureError::TruncatedHeader { need, got, .. }
                | CaptureError::Truncated { need, got, .. },
            ) => Err(CaptureError::ShortHeader {
                format: "pcapng section",
                need,
                got,
            }),
            Err(e) => Err(e),
        }
    }

    /// Reads the rest of a Section Header Block at `offset` (type and length
    /// field already consumed) and starts a new section. The length is raw
    /// bytes because its byte order is only known from the magic after it.
    fn read_header<R: Read>(
        &mut self,
        input: &mut Input<R>,
        buf: &mut Vec<u8>,
        offset: u64,
        len: [u8; 4],
    ) -> Result<(), CaptureError> {
        let mut bom = [0u8; 4];
        let got = input.fill(&mut bom)?;
        if got < bom.len() {
            return Err(CaptureError::TruncatedHeader {
                what: SECTION_HEADER,
                offset,
                need: 12,
                got: 8 + got as u64,
            });
        }
        let endian = match u32::from_be_bytes(bom) {
            0x1a2b_3c4d => Endian::Big,
            0x4d3c_2b1a => Endian::Little,
            other => {
                return Err(CaptureError::Corrupt {
                    what: SECTION_HEADER,
                    offset,
                    detail: format!(
                        "byte-order magic {other:08x} is neither 1a2b3c4d nor 4d3c2b1a"
                    ),
                });
            }
        };
        let len = endian.u32(&len, 0);
        check_length(SECTION_HEADER, offset, len, SECTION_HEADER_MIN_LEN)?;
        let rest = len as usize - 12;
        let span = input.take(buf, rest)?;
        let got = span.len();
        if got < rest {
            return Err(CaptureError::Truncated {
                what: SECTION_HEADER,
                offset,
                need: len.into(),
                got: 12 + got as u64,
            });
        }
        let block = input.slice(buf, &span);
        let (major, minor) = (endian.u16(block, 0), endian.u16(block, 2));
        if major != 1 {
            return Err(CaptureError::UnsupportedVersion {
                offset,
                major,
                minor,
            });
        }
        check_trailer(SECTION_HEADER, offset, len, endian.u32(block, rest - 4))?;
        self.endian = endian;
        self.start = offset;
        self.interfaces.clear();
        Ok(())
    }

    /// Reads blocks until one holds a packet.
    pub(super) fn next_record<R: Read>(
        &mut self,
        input: &mut Input<R>,
        buf: &mut Vec<u8>,
    ) -> Result<Option<Record>, CaptureError> {
        loop {
            let offset = input.offset;
            let mut header = [0u8; 8];
            match input.fill(&mut header)? {
                0 => return Ok(None),
                8 => {}
                got => {
                    return Err(CaptureError::TruncatedHeader {
                        what: "pcapng block",
                        offset,
                        need: 8,
                        got: got as u64,
                    });
                }
            }
            if header[..4] == PCAPNG_MAGIC {
                let len = [header[4], header[5], header[6], header[7]];
                self.read_header(input, buf, offset, len)?;
                continue;
            }
            let block_type = self.endian.u32(&header, 0);
            let len = self.endian.u32(&header, 4);
            let (what, min_len) = describe(block_type);
            check_length(what, offset, len, min_len)?;
            if !matches!(
                block_type,
                IDB | PACKET_BLOCK | SIMPLE_PACKET_BLOCK | ENHANCED_PACKET_BLOCK
            ) {
                skip_block(input, what, offset, len, self.endian)?;
                continue;
            }
            let rest = len as usize - 8;
            let span = input.take(buf, rest)?;
            let got = span.len();
            if got < rest {
                return Err(CaptureError::Truncated {
                    what,
                    offset,
                    need: len.into(),
                    got: 8 + got as u64,
                });
            }
            let block = input.slice(buf, &span);
            check_trailer(what, offset, len, self.endian.u32(block, rest - 4))?;
            let body = &block[..rest - 4];
            if block_type == IDB {
                self.interfaces.push(Interface::parse(self.endian, body));
            } else {
                return self.packet(block_type, what, offset, body, &span).map(Some);
            }
        }
    }

    /// Decodes a packet block's body (what follows type and length, without
    /// the trailer), which starts `span`.
    fn packet(
        &mut self,
        block_type: u32,
        what: &'static str,
        offset: u64,
        body: &[u8],
        span: &Span,
    ) -> Result<Record, CaptureError> {
        let e = self.endian;
        if block_type == SIMPLE_PACKET_BLOCK {
            let iface = self.interface(what, offset, 0)?;
            let orig_len = e.u32(body, 0);
            // The block holds min(orig_len, snaplen) bytes plus padding.
            let room = (body.len() - 4) as u32;
            let mut caplen = orig_len.min(room);
            if iface.snaplen != 0 {
                caplen = caplen.min(iface.snaplen);
            }
            return Ok(Record {
                ts_ns: self.last_ts_ns,
                linktype: iface.linktype,
                data: span.sub(4..4 + caplen as usize),
                orig_len,
                interface: 0,
                offset,
            });
        }
        // Enhanced and obsolete Packet Blocks share a layout, except that the
        // old one splits the interface id field into id and drop count.
        let interface = if block_type == ENHANCED_PACKET_BLOCK {
            e.u32(body, 0)
        } else {
            u32::from(e.u16(body, 0))
        };
        let units = (u64::from(e.u32(body, 4)) << 32) | u64::from(e.u32(body, 8));
        let caplen = e.u32(body, 12);
        let orig_len = e.u32(body, 16);
        let room = body.len() - 20;
        if caplen as usize > room {
            return Err(CaptureError::Corrupt {
                what,
                offset,
                detail: format!(
                    "captured length {caplen} does not fit in the {room} bytes the block has for packet data"
                ),
            });
        }
        let iface = self.interface(what, offset, interface)?;
        let ts_ns = iface
            .scale
            .to_ns(units)
            .wrapping_add_signed(iface.offset_ns);
        self.last_ts_ns = ts_ns;
        Ok(Record {
            ts_ns,
            linktype: iface.linktype,
            data: span.sub(20..20 + caplen as usize),
            orig_len,
            interface,
            offset,
        })
    }

    fn interface(
        &self,
        what: &'static str,
        offset: u64,
        id: u32,
    ) -> Result<Interface, CaptureError> {
        self.interfaces
            .get(id as usize)
            .copied()
            .ok_or(CaptureError::UnknownInterface {
                what,
                offset,
                interface: id,
                described: self.interfaces.len(),
                section: self.start,
            })
    }
}

impl Interface {
    /// Decodes an Interface Description Block body. Options are only read as
    /// far as they are well formed: they carry metadata, and refusing a whole
    /// capture over a malformed comment would help nobody.
    fn parse(e: Endian, body: &[u8]) -> Interface {
        let mut iface = Interface {
            linktype: e.u16(body, 0).into(),
            snaplen: e.u32(body, 4),
            scale: TsScale::MICROS,
            offset_ns: 0,
        };
        let mut opts = &body[8..];
        while opts.len() >= 4 {
            let code = e.u16(opts, 0);
            let len = usize::from(e.u16(opts, 2));
            if code == OPT_END || 4 + len > opts.len() {
                break;
            }
            let value = &opts[4..4 + len];
            match (code, len) {
                (OPT_IF_TSRESOL, 1) => iface.scale = TsScale::from_tsresol(value[0]),
                (OPT_IF_TSOFFSET, 8) => {
                    let secs = e.u64(value, 0) as i64;
                    iface.offset_ns = secs.wrapping_mul(1_000_000_000);
                }
                _ => {}
            }
            let padded = (4 + len + 3) & !3;
            opts = &opts[padded.min(opts.len())..];
        }
        iface
    }
}

/// Name for messages and the least length a block of this type can have.
fn describe(block_type: u32) -> (&'static str, u32) {
    match block_type {
        IDB => ("interface description block", 20),
        PACKET_BLOCK => ("packet block", 32),
        SIMPLE_PACKET_BLOCK => ("simple packet block", 16),
        4 => ("name resolution block", BLOCK_MIN_LEN),
        5 => ("interface statistics block", BLOCK_MIN_LEN),
        ENHANCED_PACKET_BLOCK => ("enhanced packet block", 32),
        0x0a => ("decryption secrets block", BLOCK_MIN_LEN),
        0x0bad | 0x4000_0bad => ("custom block", BLOCK_MIN_LEN),
        _ => ("pcapng block", BLOCK_MIN_LEN),
    }
}

/// Rejects a block length before anything is read or allocated for it.
fn check_length(what: &'static str, offset: u64, len: u32, min: u32) -> Result<(), CaptureError> {
    if len > MAX_RECORD_LEN {
        return Err(CaptureError::Oversized {
            what,
            offset,
            len: len.into(),
            max: MAX_RECORD_LEN,
        });
    }
    let detail = if !len.is_multiple_of(4) {
        format!("block length {len} is not a multiple of 4")
    } else if len < min {
        format!("block length {len} is shorter than the {min} bytes this block type needs")
    } else {
        return Ok(());
    };
    Err(CaptureError::Corrupt {
        what,
        offset,
        detail,
    })
}

/// A block repeats its length at the end; a mismatch means we are no longer
/// where we think we are in the file.
fn check_trailer(
    what: &'static str,
    offset: u64,
    len: u32,
    trailer: u32,
) -> Result<(), CaptureError> {
    if trailer == len {
        return Ok(());
    }
    Err(CaptureError::Corrupt {
        what,
        offset,
        detail: format!("block length is {len} at the start but {trailer} at the end"),
    })
}

fn skip_block<R: Read>(
    input: &mut Input<R>,
    what: &'static str,
    offset: u64,
    len: u32,
    endian: Endian,
) -> Result<(), CaptureError> {
    let body = u64::from(len) - 12;
    let skipped = input.skip(body)?;
    let mut trailer = [0u8; 4];
    let got = if skipped == body {
        input.fill(&mut trailer)?
    } else {
        0
    };
    if got < trailer.len() {
        return Err(CaptureError::Truncated {
            what,
            offset,
            need: len.into(),
            got: 8 + skipped + got as u64,
        });
    }
    check_trailer(what, offset, len, endian.u32(&trailer, 0))
}
