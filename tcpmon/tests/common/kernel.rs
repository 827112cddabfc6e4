//! Helpers for the tests that have the kernel run its programs on crafted
//! packets (BPF_PROG_TEST_RUN): addresses, frames, an `__sk_buff` context,
//! and one test run of a TC or XDP program with its pass-value check.

use aya::programs::{Program, ProgramError, TestRun, TestRunOptions, TestRunResult};
use tcpmon::backend::ebpf::{EbpfBackend, PROG_BENCH_EMPTY_TC, PROG_TC};

/// TC_ACT_UNSPEC (-1) as the kernel reports it.
pub const TC_ACT_UNSPEC: u32 = u32::MAX;
pub const XDP_PASS: u32 = 2;

/// `2001:db8::<last>`.
pub fn v6(last: u8) -> [u8; 16] {
    let mut a = [0u8; 16];
    a[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
    a[15] = last;
    a
}

/// Inserts a PPPoE session header (and PPP protocol) before the IP header
/// of an untagged Ethernet frame.
pub fn pppoe(frame: &[u8], ppp_proto: u16) -> Vec<u8> {
    let mut f = frame[..12].to_vec();
    f.extend_from_slice(&0x8864u16.to_be_bytes());
    let ip_len = (frame.len() - 14 + 2) as u16;
    f.extend_from_slice(&[0x11, 0x00, 0x12, 0x34]);
    f.extend_from_slice(&ip_len.to_be_bytes());
    f.extend_from_slice(&ppp_proto.to_be_bytes());
    f.extend_from_slice(&frame[14..]);
    f
}

/// A 192-byte `struct __sk_buff` for ctx_in, all zero but the GSO fields
/// (a `gso_size` of 0 leaves that one zero too).
pub fn skb_ctx(gso_segs: u32, gso_size: u32) -> Vec<u8> {
    const SIZE: usize = 192;
    const GSO_SEGS: usize = 164;
    const GSO_SIZE: usize = 176;
    let mut ctx = vec![0u8; SIZE];
    ctx[GSO_SEGS..GSO_SEGS + 4].copy_from_slice(&gso_segs.to_ne_bytes());
    ctx[GSO_SIZE..GSO_SIZE + 4].copy_from_slice(&gso_size.to_ne_bytes());
    ctx
}

/// What `prog` returns for a packet it lets through.
pub fn pass_value(prog: &str) -> u32 {
    if prog == PROG_TC || prog == PROG_BENCH_EMPTY_TC {
        TC_ACT_UNSPEC
    } else {
        XDP_PASS
    }
}

/// Has the kernel run `prog` (TC or XDP) `repeat` times on `data`.
pub fn try_run(
    be: &EbpfBackend,
    prog: &str,
    data: &[u8],
    ctx: Option<&[u8]>,
    repeat: u32,
) -> Result<TestRunResult, ProgramError> {
    let opts = TestRunOptions {
        data_in: Some(data),
        ctx_in: ctx,
        repeat,
        ..TestRunOptions::default()
    };
    match be.ebpf().program(prog).expect("program in the object") {
        Program::SchedClassifier(p) => p.test_run(opts),
        Program::Xdp(p) => p.test_run(opts),
        _ => panic!("{prog} is neither TC nor XDP"),
    }
}

/// Checks that a run of `prog` let the packet through.
pub fn assert_passed(prog: &str, r: &TestRunResult) {
    assert_eq!(
        r.return_value,
        pass_value(prog),
        "{prog} must never change traffic"
    );
}

/// Runs `prog` once on `data` and checks that it let the packet through.
pub fn run_passes(be: &EbpfBackend, prog: &str, data: &[u8], ctx: Option<&[u8]>) {
    let r = try_run(be, prog, data, ctx, 1)
        .unwrap_or_else(|e| panic!("test run of {prog} on {} bytes: {e}", data.len()));
    assert_passed(prog, &r);
}
