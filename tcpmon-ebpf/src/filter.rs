//! The filter expression, in the kernel: libpcap's classic-BPF program for
//! it (compiled in user space for Ethernet) sits in the one-entry `FILTER`
//! array, and `tcpmon_common::cbpf::step` runs it on every packet before
//! anything else, so a packet it rejects costs one lookup and the program,
//! and touches no flow.
//!
//! A packet it keeps goes on in another program, `tcpmon_tc_rest` or
//! `tcpmon_xdp_rest`, by a tail call through `REST_TC` / `REST_XDP`. In one
//! program, the verifier would walk everything after the interpreter once
//! for each way out of its loop; Linux 6.1's verifier, which prunes those
//! paths poorly, then ran out of its budget even for a 20-instruction
//! filter. Apart, each part is walked once (the tail call costs a few ns,
//! and only with a filter).
//!
//! Without a filter the loader leaves `FILTER_ROUNDS` at 0; it is read-only
//! to the programs, so the verifier prunes this whole path and the hooks
//! cost what they cost before filters existed.
//!
//! The interpreter is a loop that ends at the program's `ret`: classic BPF
//! jumps only forward, so a program of `len` instructions takes at most
//! `len` steps. The loader sets `FILTER_ROUNDS` to that `len`, and the
//! verifier, which sees the read-only value as a constant, walks `len`
//! rounds rather than `cbpf::MAX_INSNS`, so everyday expressions load in a
//! fraction of the time (on 6.18: 51k verified instructions for 20 rounds
//! against 321k for 128 on TC).
//!
//! The verifier walks such a loop round by round, and prunes a round's
//! paths only where their states match an earlier one. Registers A, X and
//! the program counter kept on the stack or in registers carry a different
//! range after each opcode, so every round multiplied the paths: 256 rounds
//! passed the verifier's budget of a million instructions (E2BIG). So they
//! live in a per-CPU map value, written and read back with volatile
//! accesses between rounds: a value loaded from a map is just "some u32"
//! to the verifier, every path of a round ends in the same state, and a
//! round costs the verifier one pass over the interpreter. The same goes
//! for whether the packet lost its VLAN tag to skb metadata (see `Wire`).
//! (`bpf_loop` would need BTF function info, which tcpmon's object does not
//! carry.)

use aya_ebpf::{
    EbpfContext,
    macros::map,
    maps::{Array, PerCpuArray, ProgramArray},
    programs::{TcContext, XdpContext},
};
use tcpmon_common::{
    Counter,
    cbpf::{self, Bytes, MEM_WORDS, Mem, Program, Regs},
};

/// What the filter reads of a packet: its bytes, its length, and on TC the
/// outer VLAN tag the kernel may hold in skb metadata.
pub struct Frame {
    data: usize,
    end: usize,
    /// Whole packet length (paged data included on TC).
    len: u32,
    /// The tag in metadata as it was on the wire, TPID << 16 | TCI; 0 when
    /// the frame holds all its tags.
    tag: u32,
}

impl Frame {
    /// Computed without a branch: the hooks run the filter before anything
    /// branches on the packet, so the verifier walks the interpreter's
    /// loop for one state, not one per combination of earlier branches it
    /// later needs exactly (a tag or none).
    #[inline(always)]
    pub fn tc(ctx: &TcContext) -> Frame {
        // SAFETY: `ctx.skb.skb` is the __sk_buff the kernel passed in; these
        // fields are readable by TC programs.
        let (len, vlan_present, vlan_proto, tci) = unsafe {
            let s = &*ctx.skb.skb;
            (s.len, s.vlan_present, s.vlan_proto, s.vlan_tci)
        };
        // vlan_proto holds the TPID in network byte order; vlan_present is
        // 0 or 1.
        let tpid = u16::from_be(vlan_proto as u16) as u32;
        let present = 0u32.wrapping_sub(vlan_present & 1);
        Frame {
            data: ctx.data(),
            end: ctx.data_end(),
            len,
            tag: ((tpid << 16) | (tci & 0xffff)) & present,
        }
    }

    /// XDP frames are the buffer, tags included (no multi-buffer support).
    #[inline(always)]
    pub fn xdp(ctx: &XdpContext) -> Frame {
        let (data, end) = (ctx.data(), ctx.data_end());
        Frame {
            data,
            end,
            len: (end - data) as u32,
            tag: 0,
        }
    }
}

#[map]
pub static FILTER: Array<Program> = Array::with_max_entries(1, 0);

/// The interpreter's registers and scratch memory during a run.
#[repr(C)]
pub struct Scratch {
    regs: Regs,
    mem: Mem,
    head: [u8; HEAD],
    /// `Wire::head_len` and `Wire::shift`, laundered like the registers.
    geometry: [u32; 2],
    verdict: u32,
}

#[map]
pub static FILTER_SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// Set by the loader to the filter program's length when a filter is given,
/// 0 without one (see the module comment).
#[unsafe(no_mangle)]
static FILTER_ROUNDS: u32 = 0;

/// Where the hooks go on with a packet the filter kept: entry 0 holds
/// `tcpmon_tc_rest` / `tcpmon_xdp_rest` (the loader puts them there). One
/// map per program type, as the kernel wants.
#[map]
pub static REST_TC: ProgramArray = ProgramArray::with_max_entries(1, 0);
#[map]
pub static REST_XDP: ProgramArray = ProgramArray::with_max_entries(1, 0);

#[inline(always)]
fn rounds() -> usize {
    super::setting(&FILTER_ROUNDS) as usize
}

/// Whether a filter was given.
#[inline(always)]
pub fn on() -> bool {
    rounds() != 0
}

/// Runs the filter on `frame`, `ctx`'s packet: a packet it rejects is
/// counted, one it keeps goes on in entry 0 of `rest` (`REST_TC` or
/// `REST_XDP`, of `ctx`'s program type). A tail call does not return; if it
/// does, the array was empty: the packet is counted as untracked, never
/// silently lost.
#[inline(always)]
pub fn screen<C: EbpfContext>(ctx: &C, frame: &Frame, rest: &ProgramArray) {
    if rejects(frame, rounds().min(cbpf::MAX_INSNS)) {
        super::count(Counter::Filtered);
        return;
    }
    // SAFETY: a tail call with the calling program's own context; `rest`
    // holds programs of its type.
    unsafe { rest.tail_call(ctx, 0) };
    super::count(Counter::Untracked);
}

/// Whether the filter rejects `pkt`, running at most `rounds` of its
/// instructions (only called when it is `on`).
#[inline(always)]
fn rejects(pkt: &Frame, rounds: usize) -> bool {
    // One-entry arrays always have entry 0.
    let (Some(prog), Some(s)) = (FILTER.get(0), FILTER_SCRATCH.get_ptr_mut(0)) else {
        return false;
    };
    // SAFETY: this CPU's entry, for the length of this program run (BPF
    // programs do not migrate or nest on a CPU's hook).
    let s = unsafe { &mut *s };
    // Word by word: a whole-array assignment becomes a call to a byte-loop
    // memset, which cost more than the rest of a short program.
    let mut i = 0;
    while i < MEM_WORDS {
        // SAFETY: i < MEM_WORDS, a field of this CPU's map value.
        unsafe { core::ptr::write_volatile(&mut s.mem[i], 0) };
        i += 1;
    }
    let regs: *mut Regs = &mut s.regs;
    // SAFETY: `regs` points into the map value above.
    unsafe { core::ptr::write_volatile(regs, Regs::default()) };
    let wire = Wire::new(pkt, &mut s.head, &mut s.geometry);
    let mut round = 0;
    while round < rounds {
        // SAFETY: as above.
        let mut r = unsafe { core::ptr::read_volatile(regs) };
        if let Some(verdict) = cbpf::step(&mut r, &mut s.mem, prog, &wire) {
            return verdict == 0;
        }
        // SAFETY: as above.
        unsafe { core::ptr::write_volatile(regs, r) };
        round += 1;
    }
    // Out of rounds without a `ret`: rejected, as in user space (validated
    // programs no longer than `FILTER_ROUNDS` never get here).
    true
}

/// Largest packet offset the programs read (beyond it a load fails, and the
/// program rejects the packet): the verifier needs variable offsets into the
/// packet bounded, and gives no range to a check whose offset could pass
/// 0xffff. 32 KiB is far past any header an expression asks about.
const OFF_LIMIT: usize = 0x7fff;

/// The packet as it was on the wire, which is what libpcap's programs for
/// Ethernet expect: on TC the kernel may have taken the outer VLAN tag out of
/// the frame into skb metadata, so its four bytes are put back, virtually,
/// after the MAC addresses. A tagged packet's first 16 wire bytes (MACs and
/// tag) are copied into `head` once; later bytes are read at `off - shift`.
/// So a byte load has two paths (head or packet) rather than one per case
/// of the tag, which is what the verifier pays for in every round.
struct Wire<'a> {
    pkt: &'a Frame,
    head: &'a [u8; HEAD],
    /// `HEAD` when tagged, else 0.
    head_len: usize,
    /// 4 when tagged, else 0.
    shift: usize,
}

/// Wire bytes before the first one a tagged packet still holds at its
/// place: 12 bytes of MAC addresses, 4 of VLAN tag.
const HEAD: usize = 16;

impl<'a> Wire<'a> {
    #[inline(always)]
    fn new(pkt: &'a Frame, head: &'a mut [u8; HEAD], geometry: &mut [u32; 2]) -> Wire<'a> {
        let tag = pkt.tag;
        let mut tagged = false;
        if tag != 0 && pkt.data + 12 <= pkt.end {
            let mut i = 0;
            while i < 12 {
                // SAFETY: i < 12 and the packet has 12 bytes (checked above).
                head[i] = unsafe { *((pkt.data + i) as *const u8) };
                i += 1;
            }
            head[12..].copy_from_slice(&tag.to_be_bytes());
            tagged = true;
        }
        // Through memory the verifier does not follow (see `Scratch`), so
        // tagged and untagged packets go on as one state, not two.
        let (head_len, shift) = if tagged { (HEAD, 4) } else { (0, 0) };
        // SAFETY: writes and reads of fields of this CPU's map value.
        let (head_len, shift) = unsafe {
            core::ptr::write_volatile(&mut geometry[0], head_len as u32);
            core::ptr::write_volatile(&mut geometry[1], shift);
            (
                core::ptr::read_volatile(&geometry[0]) as usize,
                core::ptr::read_volatile(&geometry[1]) as usize,
            )
        };
        Wire {
            pkt,
            head,
            head_len,
            shift,
        }
    }
}

impl Bytes for Wire<'_> {
    #[inline(always)]
    fn wire_len(&self) -> u32 {
        self.pkt.len + self.shift as u32
    }

    #[inline(always)]
    fn byte(&self, off: u32) -> Option<u8> {
        let off = off as usize;
        if off < self.head_len {
            return Some(self.head[off & (HEAD - 1)]);
        }
        // LLVM turns `p + 1 > end` into `p >= end`, from which the verifier
        // learns no range; a 1 it cannot see through keeps the +1.
        // SAFETY: a read of a local.
        let one: usize = unsafe { core::ptr::read_volatile(&1) };
        let p = self.at(off, one)?;
        // SAFETY: `at` checked the byte against the end of the packet.
        Some(unsafe { *(p as *const u8) })
    }

    // Words: one bounds check, not one per byte.
    #[inline(always)]
    fn be16(&self, off: u32) -> Option<u32> {
        if (off as usize) < self.head_len {
            return cbpf::bytes_be16(self, off);
        }
        let p = self.at(off as usize, 2)?;
        // SAFETY: `at` checked both bytes against the end of the packet.
        let b = unsafe { [*(p as *const u8), *((p + 1) as *const u8)] };
        Some(u16::from_be_bytes(b) as u32)
    }

    #[inline(always)]
    fn be32(&self, off: u32) -> Option<u32> {
        if (off as usize) < self.head_len {
            return cbpf::bytes_be32(self, off);
        }
        let p = self.at(off as usize, 4)?;
        // SAFETY: `at` checked the four bytes against the end of the packet.
        let b = unsafe { core::ptr::read_unaligned(p as *const [u8; 4]) };
        Some(u32::from_be_bytes(b))
    }
}

impl Wire<'_> {
    /// The address of `n` bytes at wire offset `off` (past the head), if
    /// the packet has them.
    #[inline(always)]
    fn at(&self, off: usize, n: usize) -> Option<usize> {
        let at = off.wrapping_sub(self.shift);
        if at > OFF_LIMIT {
            return None;
        }
        // LLVM drops the mask where the test above already bounds `at`, but
        // the verifier does not follow that: a mask it cannot see through.
        // SAFETY: a read of a local.
        let mask: usize = unsafe { core::ptr::read_volatile(&OFF_LIMIT) };
        let p = self.pkt.data + (at & mask);
        if p + n > self.pkt.end {
            return None;
        }
        Some(p)
    }
}
