//! Crafted capture files: each format feature, and every way of being cut or
//! corrupted that the reader must survive.

use std::io::Cursor;

use super::*;

// ---- builders ----------------------------------------------------------

fn put16(out: &mut Vec<u8>, e: Endian, v: u16) {
    out.extend_from_slice(&match e {
        Endian::Little => v.to_le_bytes(),
        Endian::Big => v.to_be_bytes(),
    });
}

fn put32(out: &mut Vec<u8>, e: Endian, v: u32) {
    out.extend_from_slice(&match e {
        Endian::Little => v.to_le_bytes(),
        Endian::Big => v.to_be_bytes(),
    });
}

fn put64(out: &mut Vec<u8>, e: Endian, v: u64) {
    out.extend_from_slice(&match e {
        Endian::Little => v.to_le_bytes(),
        Endian::Big => v.to_be_bytes(),
    });
}

fn pad4(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

/// A classic pcap file; records are (seconds, fraction, data, orig_len).
fn pcap(e: Endian, nanos: bool, network: u32, records: &[(u32, u32, &[u8], u32)]) -> Vec<u8> {
    let mut out = Vec::new();
    put32(&mut out, e, if nanos { 0xa1b2_3c4d } else { 0xa1b2_c3d4 });
    put16(&mut out, e, 2);
    put16(&mut out, e, 4);
    put32(&mut out, e, 0);
    put32(&mut out, e, 0);
    put32(&mut out, e, 65535);
    put32(&mut out, e, network);
    for &(secs, frac, data, orig_len) in records {
        put32(&mut out, e, secs);
        put32(&mut out, e, frac);
        put32(&mut out, e, data.len() as u32);
        put32(&mut out, e, orig_len);
        out.extend_from_slice(data);
    }
    out
}

/// Appends pcapng blocks in one byte order.
struct Ng {
    e: Endian,
    out: Vec<u8>,
    /// Where each block ends: the places a cut file may end cleanly.
    ends: Vec<usize>,
}

impl Ng {
    fn new(e: Endian) -> Ng {
        let mut ng = Ng {
            e,
            out: Vec::new(),
            ends: Vec::new(),
        };
        ng.shb();
        ng
    }

    fn block(&mut self, block_type: u32, body: &[u8]) -> &mut Ng {
        let mut padded = body.to_vec();
        pad4(&mut padded);
        let len = 12 + padded.len() as u32;
        put32(&mut self.out, self.e, block_type);
        put32(&mut self.out, self.e, len);
        self.out.extend_from_slice(&padded);
        put32(&mut self.out, self.e, len);
        self.ends.push(self.out.len());
        self
    }

    fn shb(&mut self) -> &mut Ng {
        let e = self.e;
        let mut body = Vec::new();
        put32(&mut body, e, 0x1a2b_3c4d);
        put16(&mut body, e, 1);
        put16(&mut body, e, 0);
        put64(&mut body, e, u64::MAX);
        self.block(0x0a0d_0d0a, &body)
    }

    /// Options are (code, value).
    fn idb(&mut self, linktype: u16, snaplen: u32, options: &[(u16, &[u8])]) -> &mut Ng {
        let e = self.e;
        let mut body = Vec::new();
        put16(&mut body, e, linktype);
        put16(&mut body, e, 0);
        put32(&mut body, e, snaplen);
        for &(code, value) in options {
            put16(&mut body, e, code);
            put16(&mut body, e, value.len() as u16);
            body.extend_from_slice(value);
            pad4(&mut body);
        }
        if !options.is_empty() {
            put32(&mut body, e, 0);
        }
        self.block(1, &body)
    }

    fn epb(&mut self, interface: u32, units: u64, data: &[u8], orig_len: u32) -> &mut Ng {
        let e = self.e;
        let mut body = Vec::new();
        put32(&mut body, e, interface);
        put32(&mut body, e, (units >> 32) as u32);
        put32(&mut body, e, units as u32);
        put32(&mut body, e, data.len() as u32);
        put32(&mut body, e, orig_len);
        body.extend_from_slice(data);
        self.block(6, &body)
    }

    fn pb(&mut self, interface: u16, units: u64, data: &[u8], orig_len: u32) -> &mut Ng {
        let e = self.e;
        let mut body = Vec::new();
        put16(&mut body, e, interface);
        put16(&mut body, e, 0);
        put32(&mut body, e, (units >> 32) as u32);
        put32(&mut body, e, units as u32);
        put32(&mut body, e, data.len() as u32);
        put32(&mut body, e, orig_len);
        body.extend_from_slice(data);
        self.block(2, &body)
    }

    fn spb(&mut self, orig_len: u32, data: &[u8]) -> &mut Ng {
        let mut body = Vec::new();
        put32(&mut body, self.e, orig_len);
        body.extend_from_slice(data);
        self.block(3, &body)
    }

    /// Continues in a new section, possibly of the other byte order.
    fn section(&mut self, e: Endian) -> &mut Ng {
        self.e = e;
        self.shb()
    }

    fn bytes(&self) -> Vec<u8> {
        self.out.clone()
    }
}

/// Owned copy of a frame, so a whole file can be collected.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Owned {
    ts_ns: u64,
    linktype: u32,
    data: Vec<u8>,
    orig_len: u32,
    interface: u32,
    offset: u64,
    /// Where the reader stood after the frame: the end of its record.
    end: u64,
}

/// Every frame until the end or the first error. The file is read both as a
/// stream and from memory (the path mapped files take), which must agree on
/// every frame, offset and error.
fn read_all(bytes: &[u8]) -> (Vec<Owned>, Result<(), CaptureError>) {
    let streamed = read_with(bytes, CaptureReader::new(Cursor::new(bytes)));
    let in_memory = read_with(bytes, CaptureReader::from_bytes(bytes.to_vec()));
    assert_eq!(streamed.0, in_memory.0, "frames, stream vs memory");
    assert_eq!(
        streamed.1.as_ref().map_err(|e| e.to_string()),
        in_memory.1.as_ref().map_err(|e| e.to_string()),
        "end, stream vs memory"
    );
    streamed
}

fn read_with<R: Read>(
    bytes: &[u8],
    reader: Result<CaptureReader<R>, CaptureError>,
) -> (Vec<Owned>, Result<(), CaptureError>) {
    let mut frames = Vec::new();
    let mut reader = match reader {
        Ok(r) => r,
        Err(e) => return (frames, Err(e)),
    };
    loop {
        match reader.next_frame() {
            Ok(Some(f)) => {
                let mut frame = Owned {
                    ts_ns: f.ts_ns,
                    linktype: f.linktype,
                    data: f.data.to_vec(),
                    orig_len: f.orig_len,
                    interface: f.interface,
                    offset: f.offset,
                    end: 0,
                };
                frame.end = reader.offset();
                frames.push(frame);
            }
            Ok(None) => {
                assert_eq!(reader.offset(), bytes.len() as u64);
                return (frames, Ok(()));
            }
            Err(e) => return (frames, Err(e)),
        }
    }
}

fn read_ok(bytes: &[u8]) -> Vec<Owned> {
    let (frames, end) = read_all(bytes);
    end.unwrap();
    frames
}

fn read_err(bytes: &[u8]) -> (Vec<Owned>, CaptureError) {
    let (frames, end) = read_all(bytes);
    (frames, end.unwrap_err())
}

const SEC: u64 = 1_000_000_000;

// ---- pcap --------------------------------------------------------------

#[test]
fn pcap_little_endian_microseconds() {
    let bytes = pcap(
        Endian::Little,
        false,
        1,
        &[
            (1_700_000_000, 123_456, b"abcd", 60),
            (1_700_000_001, 0, b"", 0),
        ],
    );
    let reader = CaptureReader::new(Cursor::new(&bytes)).unwrap();
    assert_eq!(
        reader.format(),
        Format::Pcap {
            nanos: false,
            big_endian: false
        }
    );
    let frames = read_ok(&bytes);
    assert_eq!(frames.len(), 2);
    assert_eq!(frames[0].ts_ns, 1_700_000_000 * SEC + 123_456_000);
    assert_eq!(frames[0].data, b"abcd");
    assert_eq!(frames[0].orig_len, 60);
    assert_eq!(frames[0].linktype, 1);
    assert_eq!(frames[0].interface, 0);
    assert_eq!(frames[0].offset, 24);
    assert_eq!(frames[1].offset, 24 + 16 + 4);
    assert_eq!(frames[1].ts_ns, 1_700_000_001 * SEC);
}

#[test]
fn pcap_big_endian_nanoseconds() {
    let bytes = pcap(Endian::Big, true, 113, &[(7, 999_999_999, b"xyz", 3)]);
    let reader = CaptureReader::new(Cursor::new(&bytes)).unwrap();
    assert_eq!(
        reader.format(),
        Format::Pcap {
            nanos: true,
            big_endian: true
        }
    );
    let frames = read_ok(&bytes);
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0].ts_ns, 7 * SEC + 999_999_999);
    assert_eq!(frames[0].linktype, 113);
    assert_eq!(frames[0].data, b"xyz");
}

#[test]
fn pcap_little_endian_nanoseconds_and_big_endian_microseconds() {
    let le = read_ok(&pcap(Endian::Little, true, 1, &[(1, 5, b"a", 1)]));
    assert_eq!(le[0].ts_ns, SEC + 5);
    let be = read_ok(&pcap(Endian::Big, false, 1, &[(1, 5, b"a", 1)]));
    assert_eq!(be[0].ts_ns, SEC + 5_000);
}

#[test]
fn pcap_linktype_fcs_bits_are_masked() {
    // F bit set and an FCS length of 2 (in 16-bit words) on Ethernet.
    let network = (1 << 28) | (2 << 26) | 1;
    let frames = read_ok(&pcap(Endian::Little, false, network, &[(0, 0, b"a", 1)]));
    assert_eq!(frames[0].linktype, 1);
}

#[test]
fn frame_data_is_captured_bytes_not_wire_length() {
    let frames = read_ok(&pcap(Endian::Little, false, 1, &[(0, 0, b"cut", 1500)]));
    assert_eq!(frames[0].data, b"cut");
    assert_eq!(frames[0].orig_len, 1500);
}

// ---- pcapng ------------------------------------------------------------

#[test]
fn pcapng_two_interfaces_with_different_linktypes_and_resolutions() {
    let mut ng = Ng::new(Endian::Little);
    ng.idb(1, 65535, &[])
        .idb(113, 262144, &[(OPT_TSRESOL, &[9])])
        .idb(
            101,
            0,
            &[
                (OPT_TSRESOL, &[0x80 | 20]),
                (OPT_TSOFFSET, &10u64.to_le_bytes()),
            ],
        )
        .idb(228, 0, &[(OPT_TSRESOL, &[12])])
        .epb(0, 1_700_000_000_123_456, b"eth", 100)
        .epb(1, 1_700_000_000_123_456_789, b"sll", 3)
        .epb(2, (3 << 20) | (1 << 19), b"raw", 3)
        .epb(3, 5_000_000_000_007, b"v4", 2);
    let bytes = ng.bytes();
    assert_eq!(
        CaptureReader::new(Cursor::new(&bytes)).unwrap().format(),
        Format::PcapNg
    );
    let frames = read_ok(&bytes);
    let summary: Vec<_> = frames
        .iter()
        .map(|f| {
            (
                f.interface,
                f.linktype,
                f.ts_ns,
                f.data.as_slice(),
                f.orig_len,
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (0, 1, 1_700_000_000_123_456_000, &b"eth"[..], 100),
            (1, 113, 1_700_000_000_123_456_789, &b"sll"[..], 3),
            // 3.5 s in units of 2^-20 s, plus if_tsoffset of 10 s.
            (2, 101, 13_500_000_000, &b"raw"[..], 3),
            // Picoseconds, truncated to nanoseconds.
            (3, 228, 5 * SEC, &b"v4"[..], 2),
        ]
    );
    // Blocks: SHB 28, IDBs 20, 32, 44, 32; each EPB 32 + 4 of padded data.
    assert_eq!(frames[0].offset, 28 + 20 + 32 + 44 + 32);
    assert_eq!(frames[1].offset, frames[0].offset + 36);
}

const OPT_TSRESOL: u16 = 9;
const OPT_TSOFFSET: u16 = 14;

#[test]
fn pcapng_big_endian_then_little_endian_section_restarts_interface_ids() {
    let mut ng = Ng::new(Endian::Big);
    ng.idb(1, 0, &[])
        .idb(113, 0, &[])
        .epb(1, 1_000_000, b"first", 5)
        .section(Endian::Little)
        .idb(276, 0, &[(OPT_TSRESOL, &[9])])
        .epb(0, 2 * SEC, b"second", 6);
    let frames = read_ok(&ng.bytes());
    assert_eq!(frames.len(), 2);
    assert_eq!(
        (frames[0].interface, frames[0].linktype, frames[0].ts_ns),
        (1, 113, SEC)
    );
    assert_eq!(
        (frames[1].interface, frames[1].linktype, frames[1].ts_ns),
        (0, 276, 2 * SEC)
    );
    assert_eq!(frames[1].data, b"second");

    // The second section's ids start again: interface 1 no longer exists.
    let mut ng = Ng::new(Endian::Big);
    ng.idb(1, 0, &[]).idb(113, 0, &[]);
    let section = ng.out.len() as u64;
    ng.section(Endian::Little).idb(1, 0, &[]);
    let at = ng.out.len() as u64;
    ng.epb(1, 0, b"x", 1);
    let (frames, err) = read_err(&ng.bytes());
    assert!(frames.is_empty());
    assert!(
        matches!(err, CaptureError::UnknownInterface { offset, interface: 1, described: 1, section: s, .. } if offset == at && s == section),
        "{err:?}"
    );
}

#[test]
fn pcapng_timestamps_beyond_u64_nanoseconds_wrap_and_keep_intervals() {
    // A negative time in microseconds stored as unsigned, as in
    // PcapPlusPlus's pcapng-example.
    let units = 505_425_287u64.wrapping_neg();
    let mut ng = Ng::new(Endian::Little);
    ng.idb(113, 0, &[])
        .epb(0, units, b"a", 1)
        .epb(0, units + 9, b"b", 1);
    let frames = read_ok(&ng.bytes());
    assert_eq!(frames[0].ts_ns, 505_425_287_000u64.wrapping_neg());
    assert_eq!(frames[1].ts_ns - frames[0].ts_ns, 9_000);
}

#[test]
fn pcapng_simple_packet_block_uses_interface_zero() {
    let mut ng = Ng::new(Endian::Little);
    ng.idb(1, 4, &[])
        .epb(0, 42, b"a", 1)
        .spb(10, b"abcdefghij")
        .spb(2, b"ab");
    let frames = read_ok(&ng.bytes());
    assert_eq!(frames.len(), 3);
    // The snap length of interface 0 caps what the block holds.
    assert_eq!(
        (frames[1].data.as_slice(), frames[1].orig_len),
        (&b"abcd"[..], 10)
    );
    assert_eq!(
        (frames[2].data.as_slice(), frames[2].orig_len),
        (&b"ab"[..], 2)
    );
    assert_eq!((frames[1].interface, frames[1].linktype), (0, 1));
    // No timestamp in the block: the previous packet's time is kept.
    assert_eq!(frames[1].ts_ns, 42_000);
}

#[test]
fn pcapng_simple_packet_block_without_interface_is_an_error() {
    let mut ng = Ng::new(Endian::Little);
    ng.spb(1, b"a");
    let (_, err) = read_err(&ng.bytes());
    assert!(
        matches!(
            err,
            CaptureError::UnknownInterface {
                offset: 28,
                interface: 0,
                described: 0,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("at byte 28"), "{err}");
}

#[test]
fn pcapng_obsolete_packet_block() {
    let mut ng = Ng::new(Endian::Big);
    ng.idb(1, 0, &[])
        .idb(0, 0, &[])
        .pb(1, 3_000_000, b"old", 70);
    let frames = read_ok(&ng.bytes());
    assert_eq!(frames.len(), 1);
    assert_eq!(
        (frames[0].interface, frames[0].linktype, frames[0].ts_ns),
        (1, 0, 3 * SEC)
    );
    assert_eq!(
        (frames[0].data.as_slice(), frames[0].orig_len),
        (&b"old"[..], 70)
    );
}

#[test]
fn pcapng_other_blocks_are_skipped() {
    let mut ng = Ng::new(Endian::Little);
    ng.block(4, &[0; 8]) // name resolution
        .idb(1, 0, &[])
        .block(5, &[0; 20]) // interface statistics
        .block(0x1234_5678, b"whatever this is")
        .block(0x4000_0bad, &[1, 2, 3])
        .block(0x8000_0001, &[]) // local use, empty body
        .epb(0, 0, b"pkt", 3);
    let frames = read_ok(&ng.bytes());
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0].data, b"pkt");
}

#[test]
fn pcapng_unknown_interface_is_an_error_with_offset() {
    let mut ng = Ng::new(Endian::Little);
    ng.idb(1, 0, &[]).idb(1, 0, &[]).epb(0, 0, b"ok", 2);
    let at = ng.out.len() as u64;
    ng.epb(3, 0, b"bad", 3);
    let (frames, err) = read_err(&ng.bytes());
    assert_eq!(frames.len(), 1);
    assert!(
        matches!(err, CaptureError::UnknownInterface { interface: 3, described: 2, section: 0, offset, .. } if offset == at),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("at byte {at}")) && msg.contains("interface 3"),
        "{msg}"
    );
}

// ---- damage ------------------------------------------------------------

/// Cuts `bytes` at every length and checks the reader yields exactly the
/// frames wholly before the cut, then ends cleanly only where a record
/// (`clean_ends`) ends and otherwise fails naming a byte before the cut.
fn check_every_truncation(bytes: &[u8], header_len: usize, clean_ends: &[usize]) {
    let all = read_ok(bytes);
    for cut in 0..=bytes.len() {
        let (frames, end) = read_all(&bytes[..cut]);
        let complete = all.iter().filter(|f| f.end <= cut as u64).count();
        assert_eq!(frames, all[..complete], "cut at {cut}");
        match end {
            Ok(()) => assert!(
                clean_ends.contains(&cut),
                "clean end inside a record at cut {cut}"
            ),
            Err(e) => {
                assert!(
                    !clean_ends.contains(&cut),
                    "cut {cut} is a record boundary: {e}"
                );
                let at = e.offset().unwrap();
                assert!(at <= cut as u64, "cut {cut}: error names byte {at}: {e}");
                if cut == 0 {
                    assert!(matches!(e, CaptureError::Empty), "{e:?}");
                } else if cut < header_len {
                    assert!(
                        matches!(e, CaptureError::ShortHeader { .. }),
                        "cut {cut}: {e:?}"
                    );
                } else {
                    assert!(e.to_string().contains("at byte"), "{e}");
                }
            }
        }
    }
}

#[test]
fn pcap_truncated_at_every_offset() {
    let bytes = pcap(
        Endian::Little,
        false,
        1,
        &[(1, 2, b"hello", 5), (3, 4, b"", 0), (5, 6, b"world!", 6)],
    );
    let mut clean_ends = vec![24];
    clean_ends.extend(read_ok(&bytes).iter().map(|f| f.end as usize));
    assert_eq!(clean_ends, [24, 45, 61, 83]);
    check_every_truncation(&bytes, 24, &clean_ends);
}

#[test]
fn pcapng_truncated_at_every_offset() {
    let mut ng = Ng::new(Endian::Big);
    ng.idb(1, 0, &[(OPT_TSRESOL, &[9])])
        .block(4, &[0; 8])
        .epb(0, 1, b"hello", 5)
        .spb(3, b"abc")
        .section(Endian::Little)
        .idb(113, 0, &[])
        .pb(0, 2, b"x", 1)
        .epb(0, 3, b"", 0);
    check_every_truncation(&ng.bytes(), 28, &ng.ends);
}

#[test]
fn truncated_record_message_names_offset_and_lengths() {
    let bytes = pcap(
        Endian::Little,
        false,
        1,
        &[(0, 0, b"ok", 2), (0, 0, &[7; 60], 60)],
    );
    let cut = 24 + 16 + 2 + 16 + 12;
    let (frames, err) = read_err(&bytes[..cut]);
    assert_eq!(frames.len(), 1);
    assert_eq!(
        err.to_string(),
        "truncated packet record at byte 42: header says 60 bytes, 12 left"
    );
}

#[test]
fn oversized_lengths_are_corrupt_and_not_allocated() {
    let mut bytes = pcap(
        Endian::Little,
        false,
        1,
        &[(0, 0, b"ok", 2), (0, 0, b"big", 3)],
    );
    // Second record's caplen.
    bytes[24 + 16 + 2 + 8..][..4].copy_from_slice(&0x7000_0000u32.to_le_bytes());
    let (frames, err) = read_err(&bytes);
    assert_eq!(frames.len(), 1);
    assert!(
        matches!(
            err,
            CaptureError::Oversized {
                offset: 42,
                len: 0x7000_0000,
                ..
            }
        ),
        "{err:?}"
    );

    // Within the limit but far beyond the file: the buffer must not grow to
    // what the record claims.
    bytes[24 + 16 + 2 + 8..][..4].copy_from_slice(&(200u32 << 20).to_le_bytes());
    let mut reader = CaptureReader::new(Cursor::new(&bytes)).unwrap();
    reader.next_frame().unwrap().unwrap();
    let err = reader.next_frame().map(|_| ()).unwrap_err();
    assert!(
        matches!(err, CaptureError::Truncated { got: 3, .. }),
        "{err:?}"
    );
    assert!(
        reader.buf.len() <= 1 << 20,
        "buffer grew to {}",
        reader.buf.len()
    );

    let mut ng = Ng::new(Endian::Little);
    ng.idb(1, 0, &[]);
    let at = ng.out.len();
    ng.epb(0, 0, b"x", 1);
    ng.out[at + 4..][..4].copy_from_slice(&0xffff_fff0u32.to_le_bytes());
    let (_, err) = read_err(&ng.bytes());
    assert!(matches!(err, CaptureError::Oversized { .. }), "{err:?}");
    assert_eq!(err.offset(), Some(at as u64));
}

#[test]
fn bad_block_lengths_are_corrupt() {
    let base = || {
        let mut ng = Ng::new(Endian::Little);
        ng.idb(1, 0, &[]);
        ng
    };
    let at = base().out.len();
    for (len, expect) in [
        (33u32, "not a multiple of 4"),
        (28, "shorter than the 32 bytes"),
        (8, "shorter than the 32 bytes"),
        (0, "shorter than the 32 bytes"),
    ] {
        let mut ng = base();
        ng.epb(0, 0, b"x", 1);
        ng.out[at + 4..][..4].copy_from_slice(&len.to_le_bytes());
        let (frames, err) = read_err(&ng.bytes());
        assert!(frames.is_empty());
        let msg = err.to_string();
        assert!(
            msg.contains(expect) && msg.contains(&format!("at byte {at}")),
            "length {len}: {msg}"
        );
    }

    // An unknown block shorter than any block can be.
    let mut ng = base();
    ng.block(0x99, &[]);
    ng.out[at + 4..][..4].copy_from_slice(&4u32.to_le_bytes());
    let (_, err) = read_err(&ng.bytes());
    assert!(
        err.to_string().contains("shorter than the 12 bytes"),
        "{err}"
    );
}

#[test]
fn mismatched_trailing_length_is_corrupt() {
    let mut ng = Ng::new(Endian::Little);
    ng.idb(1, 0, &[]).epb(0, 0, b"abcd", 4);
    let end = ng.out.len();
    ng.out[end - 4..].copy_from_slice(&40u32.to_le_bytes());
    let (_, err) = read_err(&ng.bytes());
    assert!(
        err.to_string()
            .contains("36 at the start but 40 at the end"),
        "{err}"
    );

    // Same for a skipped block.
    let mut ng = Ng::new(Endian::Little);
    ng.block(0x77, &[0; 8]);
    let end = ng.out.len();
    ng.out[end - 4] = 0;
    let (_, err) = read_err(&ng.bytes());
    assert!(
        matches!(err, CaptureError::Corrupt { offset: 28, .. }),
        "{err:?}"
    );
}

#[test]
fn captured_length_beyond_block_is_corrupt() {
    let mut ng = Ng::new(Endian::Little);
    ng.idb(1, 0, &[]);
    let at = ng.out.len();
    ng.epb(0, 0, b"abcd", 4);
    ng.out[at + 8 + 12..][..4].copy_from_slice(&5u32.to_le_bytes());
    let (_, err) = read_err(&ng.bytes());
    assert!(
        err.to_string()
            .contains("captured length 5 does not fit in the 4 bytes"),
        "{err}"
    );
}

#[test]
fn section_header_problems() {
    let mut ng = Ng::new(Endian::Little);
    ng.out[12] = 2; // major version
    let (_, err) = read_err(&ng.bytes());
    assert!(
        matches!(
            err,
            CaptureError::UnsupportedVersion {
                offset: 0,
                major: 2,
                minor: 0
            }
        ),
        "{err:?}"
    );

    let mut ng = Ng::new(Endian::Little);
    ng.section(Endian::Little);
    ng.out[28 + 8..][..4].copy_from_slice(b"nope");
    let (_, err) = read_err(&ng.bytes());
    assert!(
        err.to_string().contains("byte-order magic 6e6f7065"),
        "{err}"
    );
    assert_eq!(err.offset(), Some(28));
}

#[test]
fn empty_short_and_unknown_files_have_their_own_messages() {
    let err = CaptureReader::new(Cursor::new(&[] as &[u8])).err().unwrap();
    assert!(matches!(err, CaptureError::Empty));
    assert!(err.to_string().contains("empty"), "{err}");

    let bytes = pcap(Endian::Little, false, 1, &[]);
    let err = CaptureReader::new(Cursor::new(&bytes[..10])).err().unwrap();
    assert_eq!(
        err.to_string(),
        "file too short: it ends at byte 10, inside the pcap file header that needs 24 bytes"
    );
    let err = CaptureReader::new(Cursor::new(&bytes[..3])).err().unwrap();
    assert!(
        matches!(
            err,
            CaptureError::ShortHeader {
                got: 3,
                need: 4,
                ..
            }
        ),
        "{err:?}"
    );

    let ng = Ng::new(Endian::Big).bytes();
    let err = CaptureReader::new(Cursor::new(&ng[..20])).err().unwrap();
    assert!(
        matches!(
            err,
            CaptureError::ShortHeader {
                got: 20,
                need: 28,
                ..
            }
        ),
        "{err:?}"
    );

    let err = CaptureReader::new(Cursor::new(b"\xde\xad\xbe\xefmore"))
        .err()
        .unwrap();
    let msg = err.to_string();
    assert!(
        msg.contains("deadbeef") && msg.contains("pcapng") && msg.contains("a1b2c3d4"),
        "{msg}"
    );

    let err = CaptureReader::new(Cursor::new(b"\x1f\x8b\x08\x00...."))
        .err()
        .unwrap();
    assert!(err.to_string().contains("gzip"), "{err}");
}

#[test]
fn io_errors_name_the_offset() {
    /// Hands out `data` a few bytes at a time, then fails.
    struct Failing {
        data: Vec<u8>,
        pos: usize,
    }
    impl Read for Failing {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.pos >= self.data.len() {
                return Err(io::Error::other("disk on fire"));
            }
            let n = buf.len().min(self.data.len() - self.pos).min(7);
            buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
            self.pos += n;
            Ok(n)
        }
    }
    let data = pcap(Endian::Little, false, 1, &[(0, 0, b"abc", 3)]);
    let mut reader = CaptureReader::new(Failing { data, pos: 0 }).unwrap();
    assert!(reader.next_frame().unwrap().is_some());
    let err = reader.next_frame().map(|_| ()).unwrap_err();
    assert_eq!(err.to_string(), "read error at byte 43");
    let cause = std::error::Error::source(&err).expect("the I/O error is the cause");
    assert_eq!(cause.to_string(), "disk on fire");
}

/// Random damage must give errors, never panics or huge allocations.
#[test]
fn corrupted_bytes_never_panic() {
    let mut ng = Ng::new(Endian::Little);
    ng.idb(1, 8, &[(OPT_TSRESOL, &[0x85]), (OPT_TSOFFSET, &[1; 8])])
        .epb(0, u64::MAX, b"hello", 5)
        .spb(30, b"abcdefgh")
        .pb(0, 9, b"old", 3)
        .block(5, &[0; 16]);
    let files = [
        ng.bytes(),
        pcap(
            Endian::Big,
            true,
            1,
            &[(1, 2, b"abc", 3), (4, 5, b"defg", 4)],
        ),
    ];
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut rand = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for file in &files {
        for _ in 0..3000 {
            let mut bytes = file.clone();
            for _ in 0..1 + rand() % 4 {
                let at = (rand() as usize) % bytes.len();
                bytes[at] = rand() as u8;
            }
            let cut = bytes.len() - (rand() as usize) % 8;
            let mut reader = match CaptureReader::new(Cursor::new(&bytes[..cut])) {
                Ok(r) => r,
                Err(_) => continue,
            };
            while let Ok(Some(_)) = reader.next_frame() {}
            assert!(reader.buf.len() <= 1 << 20);
            if let Ok(mut reader) = CaptureReader::from_bytes(bytes[..cut].to_vec()) {
                while let Ok(Some(_)) = reader.next_frame() {}
            }
        }
    }
}

#[test]
fn open_maps_a_regular_file_as_it_was_when_opened() {
    use std::io::Write;
    let frame = [7u8; 60];
    let bytes = pcap(
        Endian::Little,
        false,
        1,
        &[(1, 2, &frame, 60), (3, 4, &frame, 60)],
    );
    let path = std::env::temp_dir().join(format!("tcpmon-map-{}.pcap", std::process::id()));
    std::fs::write(&path, &bytes).unwrap();
    let mut reader = open(&path).unwrap();
    assert!(matches!(reader.input.source, Source::Memory(_)));
    // Appended after open: outside the map, so not read.
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    file.write_all(&bytes[24..]).unwrap();
    let mut n = 0;
    while let Some(f) = reader.next_frame().unwrap() {
        assert_eq!(f.data, &frame);
        n += 1;
    }
    assert_eq!((n, reader.offset()), (2, bytes.len() as u64));
    std::fs::remove_file(&path).unwrap();

    // An empty file is not mapped, and says so the usual way.
    std::fs::write(&path, b"").unwrap();
    assert!(matches!(open(&path).err().unwrap(), CaptureError::Empty));
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn linktype_names() {
    assert_eq!(linktype_name(1), "Ethernet");
    assert_eq!(linktype_name(113), "Linux SLL");
    assert_eq!(linktype_name(276), "Linux SLL2");
    assert_eq!(linktype_name(239), "NFLOG");
    assert_eq!(linktype_name(60_000), "unknown link type");
}
