//! Reads pcap and pcapng capture files in plain Rust, without libpcap.
//!
//! Replays go through multi-gigabyte files, so a regular file is mapped into
//! memory and frames borrow from the map (see `map` for what that means when
//! the file changes underneath). Pipes and standard input go through a large
//! `BufReader`, and each record is copied once into a buffer the reader keeps
//! for the whole file. Neither path allocates per frame.
//!
//! Damaged files are common (a capture cut short by a full disk or a killed
//! tcpdump, a download that stopped): the reader hands out every complete
//! frame before the damage and then one error naming the byte offset, so the
//! user learns both that the file is bad and how much of it was used. Length
//! fields are never trusted for allocation: a record may claim at most
//! [`MAX_RECORD_LEN`], and the buffer only grows as bytes actually arrive.

use std::fmt;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::ops::Range;
use std::path::{Path, PathBuf};

mod map;
mod pcap;
mod pcapng;
#[cfg(test)]
mod tests;

/// Longest record (pcap packet record or pcapng block) accepted. Real frames
/// stay far below it (libpcap caps snapshots at 256 KiB); a bigger length
/// field means corruption, and trusting it would let one bad byte ask for
/// gigabytes.
pub const MAX_RECORD_LEN: u32 = 256 << 20;

/// Big enough that a replay makes few read calls, small enough not to matter.
const READ_BUFFER_LEN: usize = 1 << 20;

/// A pcapng file starts with a Section Header Block, whose type reads the
/// same in both byte orders.
const PCAPNG_MAGIC: [u8; 4] = [0x0a, 0x0d, 0x0d, 0x0a];

/// Which kind of capture file is being read, as told by its magic bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Pcap { nanos: bool, big_endian: bool },
    PcapNg,
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Format::Pcap { nanos, big_endian } => write!(
                f,
                "pcap ({}-second timestamps, {}-endian)",
                if *nanos { "nano" } else { "micro" },
                if *big_endian { "big" } else { "little" }
            ),
            Format::PcapNg => f.write_str("pcapng"),
        }
    }
}

/// One captured frame. `data` borrows the reader's buffer or map, which is why the
/// next call to [`CaptureReader::next_frame`] needs the frame dropped first.
#[derive(Debug, Clone, Copy)]
pub struct Frame<'a> {
    /// Unix time in nanoseconds, modulo 2^64 (which is reached in 2554).
    /// Some writers store small negative times as huge unsigned ones (an SLL
    /// interface in PcapPlusPlus's pcapng-example, about 2^64 microseconds);
    /// wrapping keeps the intervals between such frames right, where
    /// saturating would stack them all on one instant.
    pub ts_ns: u64,
    /// `LINKTYPE_*` value of the frame's interface.
    pub linktype: u32,
    /// The captured bytes; fewer than `orig_len` when the snap length cut them.
    pub data: &'a [u8],
    /// Length on the wire.
    pub orig_len: u32,
    /// pcapng interface id within its section (0 for pcap).
    pub interface: u32,
    /// Byte offset of this record in the file.
    pub offset: u64,
}

/// Everything that can go wrong reading a capture. Each message names the
/// byte offset it applies to, so a damaged file can be inspected with `xxd`
/// or cut with `head -c`.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    // `source` is the error's cause: printing it here too would say it twice.
    #[error("cannot open the capture file {}", path.display())]
    Open { path: PathBuf, source: io::Error },
    #[error("read error at byte {offset}")]
    Io { offset: u64, source: io::Error },
    #[error("empty capture file: no bytes at all, expected a pcap or pcapng header at byte 0")]
    Empty,
    #[error(
        "file too short: it ends at byte {got}, inside the {format} header that needs {need} bytes"
    )]
    ShortHeader {
        format: &'static str,
        need: u64,
        got: u64,
    },
    #[error(
        "unknown capture format: magic bytes {magic:08x} at byte 0; understood are pcap \
         (a1b2c3d4 microsecond, a1b23c4d nanosecond, either byte order) and pcapng (0a0d0d0a){hint}"
    )]
    UnknownMagic { magic: u32, hint: &'static str },
    #[error("truncated {what} header at byte {offset}: {need} bytes needed, {got} left")]
    TruncatedHeader {
        what: &'static str,
        offset: u64,
        need: u64,
        got: u64,
    },
    #[error("truncated {what} at byte {offset}: header says {need} bytes, {got} left")]
    Truncated {
        what: &'static str,
        offset: u64,
        need: u64,
        got: u64,
    },
    #[error("corrupt {what} at byte {offset}: claims {len} bytes, more than the {max}-byte limit")]
    Oversized {
        what: &'static str,
        offset: u64,
        len: u64,
        max: u32,
    },
    #[error("corrupt {what} at byte {offset}: {detail}")]
    Corrupt {
        what: &'static str,
        offset: u64,
        detail: String,
    },
    #[error(
        "unsupported pcapng version {major}.{minor} in the section header at byte {offset} (only 1.x is defined)"
    )]
    UnsupportedVersion { offset: u64, major: u16, minor: u16 },
    #[error(
        "{what} at byte {offset} refers to interface {interface}, but its section \
         (header at byte {section}) describes only {described} interface(s) before it"
    )]
    UnknownInterface {
        what: &'static str,
        offset: u64,
        interface: u32,
        described: usize,
        section: u64,
    },
}

impl CaptureError {
    /// Byte offset the error applies to, for callers that report it apart
    /// from the message; `None` when no position applies (opening the file).
    pub fn offset(&self) -> Option<u64> {
        use CaptureError::*;
        match self {
            Open { .. } => None,
            Empty | UnknownMagic { .. } => Some(0),
            ShortHeader { got, .. } => Some(*got),
            Io { offset, .. }
            | TruncatedHeader { offset, .. }
            | Truncated { offset, .. }
            | Oversized { offset, .. }
            | Corrupt { offset, .. }
            | UnsupportedVersion { offset, .. }
            | UnknownInterface { offset, .. } => Some(*offset),
        }
    }
}

/// Sequential reader of pcap or pcapng records.
pub struct CaptureReader<R: Read> {
    input: Input<R>,
    format: Format,
    /// Frame bytes (pcap) or a whole block (pcapng) when reading a stream.
    /// It grows to the largest record seen and is then reused, so
    /// steady-state reading allocates nothing. Unused for a mapped file.
    buf: Vec<u8>,
    state: State,
}

enum State {
    Pcap(pcap::Header),
    PcapNg(pcapng::Section),
}

/// Where a frame lies in the reader's buffer or map. Record readers return
/// this rather than a `Frame` because a borrow of the buffer handed out from
/// inside their block-skipping loops would outlive the loop for the borrow
/// checker.
struct Record {
    ts_ns: u64,
    linktype: u32,
    data: Span,
    orig_len: u32,
    interface: u32,
    offset: u64,
}

impl<R: Read> CaptureReader<R> {
    /// Reads the file header and detects the format from its magic bytes;
    /// file names lie (pcapng files called `.pcap` are common).
    pub fn new(r: R) -> Result<Self, CaptureError> {
        Self::with_source(Source::Stream(BufReader::with_capacity(READ_BUFFER_LEN, r)))
    }

    fn with_source(source: Source<R>) -> Result<Self, CaptureError> {
        let mut input = Input { source, offset: 0 };
        let mut magic = [0u8; 4];
        match input.fill(&mut magic)? {
            0 => return Err(CaptureError::Empty),
            4 => {}
            n => {
                return Err(CaptureError::ShortHeader {
                    format: "capture file",
                    need: 4,
                    got: n as u64,
                });
            }
        }
        let mut buf = Vec::new();
        let (format, state) = if magic == PCAPNG_MAGIC {
            let section = pcapng::Section::first(&mut input, &mut buf)?;
            (Format::PcapNg, State::PcapNg(section))
        } else {
            let header = pcap::Header::read(&mut input, magic)?;
            (header.format(), State::Pcap(header))
        };
        Ok(CaptureReader {
            input,
            format,
            buf,
            state,
        })
    }

    pub fn format(&self) -> Format {
        self.format
    }

    /// The next frame, or `Ok(None)` when the file ends cleanly between
    /// records. After an error the reader's position is unspecified; callers
    /// should stop.
    pub fn next_frame(&mut self) -> Result<Option<Frame<'_>>, CaptureError> {
        // The previous frame's borrow has ended, so what lies before this
        // record will not be looked at again.
        if let Source::Memory(m) = &mut self.input.source {
            m.consumed(self.input.offset as usize);
        }
        let record = match &mut self.state {
            State::Pcap(header) => header.next_record(&mut self.input, &mut self.buf)?,
            State::PcapNg(section) => section.next_record(&mut self.input, &mut self.buf)?,
        };
        Ok(record.map(|r| Frame {
            ts_ns: r.ts_ns,
            linktype: r.linktype,
            data: self.input.slice(&self.buf, &r.data),
            orig_len: r.orig_len,
            interface: r.interface,
            offset: r.offset,
        }))
    }

    /// Bytes consumed so far.
    pub fn offset(&self) -> u64 {
        self.input.offset
    }
}

impl CaptureReader<io::Empty> {
    /// Reads a capture already in memory; frames borrow from `bytes`.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self, CaptureError> {
        Self::with_source(Source::Memory(map::Memory::owned(bytes)))
    }
}

/// Opens a capture file; `-` reads standard input, so tcpmon can sit at the
/// end of a pipe (`tcpdump -w - | tcpmon ...`). A regular file is mapped
/// into memory; anything else (stdin, a FIFO, `/dev/stdin`) is read.
pub fn open(path: &Path) -> Result<CaptureReader<Box<dyn Read>>, CaptureError> {
    if path.as_os_str() == "-" {
        return CaptureReader::new(Box::new(io::stdin().lock()));
    }
    let open_error = |source| CaptureError::Open {
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(open_error)?;
    match map::Memory::map(&file).map_err(open_error)? {
        Some(memory) => CaptureReader::with_source(Source::Memory(memory)),
        None => CaptureReader::new(Box::new(file)),
    }
}

/// Human name of a link type, for messages such as "link type 239 (NFLOG) is
/// not supported".
pub fn linktype_name(linktype: u32) -> &'static str {
    match linktype {
        0 => "BSD loopback (NULL)",
        1 => "Ethernet",
        9 => "PPP",
        101 => "raw IP",
        105 => "IEEE 802.11",
        108 => "OpenBSD loopback (LOOP)",
        113 => "Linux SLL",
        117 => "OpenBSD pflog",
        127 => "IEEE 802.11 radiotap",
        192 => "PPI",
        195 => "IEEE 802.15.4",
        220 => "Linux USB",
        228 => "raw IPv4",
        229 => "raw IPv6",
        239 => "NFLOG",
        249 => "Linux netlink",
        274 => "Ethernet mPackets (802.3br)",
        276 => "Linux SLL2",
        _ => "unknown link type",
    }
}

fn unknown_magic(magic: [u8; 4]) -> CaptureError {
    let hint = match magic {
        [0x1f, 0x8b, ..] => "; this looks gzip-compressed, decompress it first",
        [0xa1, 0xb2, 0xcd, 0x34] | [0x34, 0xcd, 0xb2, 0xa1] => {
            "; this is Kuznetzov's modified pcap, convert it with editcap first"
        }
        _ => "",
    };
    CaptureError::UnknownMagic {
        magic: u32::from_be_bytes(magic),
        hint,
    }
}

/// The input and how far into it we are, which every error message and
/// [`Frame::offset`] needs.
struct Input<R> {
    source: Source<R>,
    offset: u64,
}

enum Source<R> {
    Stream(BufReader<R>),
    /// The whole file in memory; `Input::offset` is the position in it.
    Memory(map::Memory),
}

/// Where a record's bytes are: at the front of the reader's buffer (stream)
/// or in the file's memory (mapped), as a range of either.
#[derive(Debug, Clone)]
enum Span {
    Buf(Range<usize>),
    Memory(Range<usize>),
}

impl Span {
    fn len(&self) -> usize {
        let (Span::Buf(r) | Span::Memory(r)) = self;
        r.len()
    }

    /// The part `r` of this span, `r` counting from its start.
    fn sub(&self, r: Range<usize>) -> Span {
        let (Span::Buf(s) | Span::Memory(s)) = self;
        let r = s.start + r.start..s.start + r.end;
        match self {
            Span::Buf(_) => Span::Buf(r),
            Span::Memory(_) => Span::Memory(r),
        }
    }
}

impl<R: Read> Input<R> {
    /// Reads until `dst` is full or the input ends and says how many bytes
    /// came. Unlike `read_exact`, a short count tells a truncated file apart
    /// from an I/O error and says how much of the record was there.
    #[inline]
    fn fill(&mut self, dst: &mut [u8]) -> Result<usize, CaptureError> {
        match &mut self.source {
            Source::Stream(_) => self.fill_from_stream(dst),
            Source::Memory(m) => {
                // Inlined, so a fixed-size header is copied without a call.
                let rest = m.bytes().get(self.offset as usize..).unwrap_or_default();
                let got = rest.len().min(dst.len());
                dst[..got].copy_from_slice(&rest[..got]);
                self.offset += got as u64;
                Ok(got)
            }
        }
    }

    fn fill_from_stream(&mut self, dst: &mut [u8]) -> Result<usize, CaptureError> {
        let Source::Stream(inner) = &mut self.source else {
            unreachable!("called for streams only");
        };
        let mut got = 0;
        while got < dst.len() {
            match inner.read(&mut dst[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(CaptureError::Io {
                        offset: self.offset + got as u64,
                        source,
                    });
                }
            }
        }
        self.offset += got as u64;
        Ok(got)
    }

    /// Takes the next `len` bytes, or as many as there are: from memory they
    /// are only pointed at, from a stream they are read into the front of
    /// `buf`. Callers compare the span's length with `len`.
    fn take(&mut self, buf: &mut Vec<u8>, len: usize) -> Result<Span, CaptureError> {
        match &self.source {
            Source::Memory(m) => {
                let start = self.offset as usize;
                let got = len.min(m.bytes().len().saturating_sub(start));
                self.offset += got as u64;
                Ok(Span::Memory(start..start + got))
            }
            Source::Stream(_) => self.read_to_buf(buf, len).map(|got| Span::Buf(0..got)),
        }
    }

    /// The bytes of a span that [`Input::take`] returned.
    #[inline]
    fn slice<'a>(&'a self, buf: &'a [u8], span: &Span) -> &'a [u8] {
        match (span, &self.source) {
            (Span::Buf(r), _) => &buf[r.clone()],
            (Span::Memory(r), Source::Memory(m)) => &m.bytes()[r.clone()],
            (Span::Memory(_), Source::Stream(_)) => unreachable!("memory span from a stream"),
        }
    }

    /// Reads `len` bytes into the front of `buf`, returning how many came.
    /// The buffer grows by doubling as bytes arrive, to at most twice what
    /// came (or 128 KiB), so a length field in a cut or corrupt file cannot
    /// make us allocate what it claims.
    fn read_to_buf(&mut self, buf: &mut Vec<u8>, len: usize) -> Result<usize, CaptureError> {
        if buf.len() >= len {
            return self.fill(&mut buf[..len]);
        }
        let mut got = 0;
        while got < len {
            let want = len.min(buf.len().max(64 * 1024) * 2);
            if buf.len() < want {
                buf.resize(want, 0);
            }
            let n = self.fill(&mut buf[got..want])?;
            got += n;
            if got < want {
                break;
            }
        }
        Ok(got)
    }

    /// Consumes `len` bytes without keeping them; returns how many there were.
    fn skip(&mut self, len: u64) -> Result<u64, CaptureError> {
        let skipped = match &mut self.source {
            Source::Memory(m) => len.min((m.bytes().len() as u64).saturating_sub(self.offset)),
            Source::Stream(inner) => {
                io::copy(&mut inner.take(len), &mut io::sink()).map_err(|source| {
                    CaptureError::Io {
                        offset: self.offset,
                        source,
                    }
                })?
            }
        };
        self.offset += skipped;
        Ok(skipped)
    }
}

/// Byte order of the file (pcap) or of the current section (pcapng). Callers
/// check lengths first; these accessors then index within bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endian {
    Little,
    Big,
}

impl Endian {
    fn u16(self, b: &[u8], at: usize) -> u16 {
        let a = [b[at], b[at + 1]];
        match self {
            Endian::Little => u16::from_le_bytes(a),
            Endian::Big => u16::from_be_bytes(a),
        }
    }

    fn u32(self, b: &[u8], at: usize) -> u32 {
        let a = [b[at], b[at + 1], b[at + 2], b[at + 3]];
        match self {
            Endian::Little => u32::from_le_bytes(a),
            Endian::Big => u32::from_be_bytes(a),
        }
    }

    fn u64(self, b: &[u8], at: usize) -> u64 {
        let (first, second) = (u64::from(self.u32(b, at)), u64::from(self.u32(b, at + 4)));
        match self {
            Endian::Little => (second << 32) | first,
            Endian::Big => (first << 32) | second,
        }
    }
}
