//! libpcap's classic BPF translated into eBPF, so the kernel runs a filter
//! as native code instead of interpreting it instruction by instruction.
//!
//! Classic BPF only jumps forward, so a program is a graph of basic blocks
//! without loops, and each becomes straight eBPF code with the same jumps:
//!
//! - **One bounds check a block.** Every load at a constant offset in a block
//!   is covered by one check of the furthest byte it reads against the end
//!   of the packet, at the block's start (cloudflare's cbpfc does the same).
//!   Rejecting there rather than at the failing load changes nothing: a
//!   block runs straight through, has no effect but on registers, and a
//!   load outside the packet ends the program with a rejection anyway.
//!   Loads through `X` are checked on their own.
//! - **Classic semantics** where eBPF differs: a division by a zero `X`
//!   rejects, shifts by 32 or more give 0, comparisons are unsigned in 32
//!   bits (JMP32), `A`, `X` and `M[]` start at zero.
//! - **The outer VLAN tag where it was on the wire.** On TC the kernel may
//!   have moved it into skb metadata; libpcap's programs expect it after the
//!   MAC addresses. The TC translation holds the program twice: as is, and
//!   for a tagged packet with every wire offset from 16 on read 4 bytes
//!   earlier in the buffer, and the first 16 wire bytes (MACs and tag) from
//!   a copy on the stack. A prologue picks one; the verifier walks each for
//!   its own packets, and neither pays for the other at run time.
//!
//! What the program does with its verdict is the caller's choice (`Exit`):
//! the hooks go on by a tail call or count a rejection; tests and
//! benchmarks get the verdict as the return value.

pub mod insn;

use tcpmon_common::cbpf::{self, MEM_WORDS, op};

use insn::{
    Alu, Cond, FP, HELPER_MAP_LOOKUP_ELEM, HELPER_TAIL_CALL, Insn, R0, R1, R2, R3, R4, R5, R6, R7,
    R8, R9, Reg, Size,
};

/// Where the translation runs: where it finds the packet, and whether the
/// outer VLAN tag may be in skb metadata.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    Tc,
    Xdp,
}

/// What the translated program does with its verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// The hooks' way. A kept packet goes on by a tail call to entry 0 of
    /// the program array `rest` (a map's file descriptor); a rejected one
    /// is counted at index `filtered` of the per-CPU `u64` array
    /// `counters`, and so is one whose tail call failed, at `untracked`.
    /// Every path returns `pass`: the monitor never changes traffic.
    /// With `rejected` (a program array's file descriptor), a rejected
    /// packet goes first by a tail call to its entry 0, which counts and
    /// logs it (`--kernel-log debug`); it is counted here only if that
    /// call fails.
    Hook {
        rest: i32,
        counters: i32,
        filtered: u32,
        untracked: u32,
        pass: i32,
        rejected: Option<i32>,
    },
    /// Returns 1 for a kept packet, 0 for a rejected one.
    Verdict,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TranslateError {
    #[error("the filter program is not valid classic BPF ({0:?})")]
    Invalid(cbpf::Invalid),
    #[error(
        "the filter's translation needs a jump of {0} eBPF instructions, beyond the 32,767 \
         an instruction can reach: simplify the expression"
    )]
    TooFar(usize),
}

/// Translates the validated classic program `prog` for `hook`.
pub fn translate(prog: &[cbpf::Insn], hook: Hook, exit: Exit) -> Result<Vec<Insn>, TranslateError> {
    cbpf::validate(prog).map_err(TranslateError::Invalid)?;
    let mut t = Translation::new(prog);
    t.prologue(hook);
    match hook {
        Hook::Tc => {
            let wire = t.asm.label();
            t.tagged_prologue(wire);
            t.body(Layout::Tagged);
            t.asm.bind(wire);
            t.body(Layout::Wire);
        }
        Hook::Xdp => t.body(Layout::Wire),
    }
    t.epilogues(exit);
    t.asm.finish()
}

// Registers: the classic machine's A and X, the context, the packet's
// bounds and its length on the wire. r0-r3 are scratch.
const A: Reg = R4;
const X: Reg = R5;
const CTX: Reg = R6;
const DATA: Reg = R7;
const END: Reg = R8;
const WIRE_LEN: Reg = R9;

// The stack: M[] at the top, below it the first `HEAD` wire bytes of a
// tagged packet, below that a counter's index for the map lookup.
const MEM_AT: i16 = -(MEM_WORDS as i16) * 4;
const HEAD_AT: i16 = MEM_AT - HEAD as i16;
const KEY_AT: i16 = HEAD_AT - 8;
/// Wire bytes before the first one a tagged packet still holds at its place
/// in the buffer: 12 of MAC addresses, 4 of tag.
const HEAD: u32 = 16;
const MACS: u32 = 12;
const TAG: u32 = HEAD - MACS;

/// The furthest packet offset the verifier takes in a bounds check
/// (MAX_PACKET_OFF); no packet's linear data reaches past it.
const MAX_PACKET_OFF: u64 = 0xffff;

// `struct __sk_buff` and `struct xdp_md` fields (linux/bpf.h).
const SKB_LEN: i16 = 0;
const SKB_VLAN_PRESENT: i16 = 20;
const SKB_VLAN_TCI: i16 = 24;
const SKB_VLAN_PROTO: i16 = 28;
const SKB_DATA: i16 = 76;
const SKB_DATA_END: i16 = 80;
const XDP_DATA: i16 = 0;
const XDP_DATA_END: i16 = 4;

/// Where the packet's wire bytes are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Layout {
    /// In the buffer, at their wire offsets.
    Wire,
    /// The outer tag is in skb metadata: wire bytes from `HEAD` on are 4
    /// bytes earlier in the buffer, the first `HEAD` are on the stack.
    Tagged,
}

/// Where one wire byte of a load comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Byte {
    Packet(u64),
    Stack(i16),
}

/// How a load at a constant wire offset reads.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Plan {
    /// One load of its whole width from the buffer at this offset.
    Packet(u64),
    /// Byte by byte, most significant first.
    Bytes(Vec<Byte>),
}

impl Plan {
    fn new(layout: Layout, wire: u32, size: Size) -> Plan {
        let wire = u64::from(wire);
        match layout {
            Layout::Wire => Plan::Packet(wire),
            Layout::Tagged if wire >= u64::from(HEAD) => Plan::Packet(wire - u64::from(TAG)),
            Layout::Tagged => Plan::Bytes(
                (wire..wire + u64::from(size.bytes()))
                    .map(|b| {
                        if b < u64::from(HEAD) {
                            Byte::Stack(HEAD_AT + b as i16)
                        } else {
                            Byte::Packet(b - u64::from(TAG))
                        }
                    })
                    .collect(),
            ),
        }
    }

    /// One past the furthest buffer byte it reads, if it reads the buffer.
    fn packet_end(&self, size: Size) -> Option<u64> {
        match self {
            Plan::Packet(off) => Some(off + u64::from(size.bytes())),
            Plan::Bytes(bytes) => bytes
                .iter()
                .filter_map(|b| match b {
                    Byte::Packet(off) => Some(off + 1),
                    Byte::Stack(_) => None,
                })
                .max(),
        }
    }
}

/// A classic load from the packet at a constant offset, if `i` is one:
/// its wire offset and width (`ldx msh` reads one byte).
fn constant_load(i: &cbpf::Insn) -> Option<(u32, Size)> {
    let class = i.code & 0x07;
    match (class, i.code & 0xe0) {
        (op::LD, op::ABS) => Some((i.k, size(i.code))),
        (op::LDX, op::MSH) => Some((i.k, Size::B)),
        _ => None,
    }
}

fn size(code: u16) -> Size {
    match code & 0x18 {
        op::B => Size::B,
        op::H => Size::H,
        _ => Size::W,
    }
}

/// The basic blocks of a program: `[start, end)` ranges of instructions,
/// in order, each ending at a jump, a `ret` or the start of the next.
fn blocks(prog: &[cbpf::Insn]) -> Vec<(usize, usize)> {
    let mut leader = vec![false; prog.len() + 1];
    leader[0] = true;
    for (at, i) in prog.iter().enumerate() {
        let next = at + 1;
        match i.code & 0x07 {
            op::JMP => {
                leader[next] = true;
                for t in jump_targets(at, i) {
                    leader[t] = true;
                }
            }
            op::RET => leader[next] = true,
            _ => {}
        }
    }
    let starts: Vec<usize> = (0..prog.len()).filter(|&at| leader[at]).collect();
    starts
        .iter()
        .enumerate()
        .map(|(b, &s)| (s, starts.get(b + 1).copied().unwrap_or(prog.len())))
        .collect()
}

/// Where a (validated) jump at `at` goes: taken, then not taken.
fn jump_targets(at: usize, i: &cbpf::Insn) -> [usize; 2] {
    let next = at + 1;
    if i.code & 0xf0 == op::JA {
        [next + i.k as usize; 2]
    } else {
        [next + usize::from(i.jt), next + usize::from(i.jf)]
    }
}

/// Code under construction, with jumps to labels fixed up at the end.
struct Asm {
    code: Vec<Insn>,
    labels: Vec<Option<usize>>,
    fixups: Vec<(usize, usize)>,
}

impl Asm {
    fn label(&mut self) -> usize {
        self.labels.push(None);
        self.labels.len() - 1
    }

    /// Whether some jump goes to `label`.
    fn used(&self, label: usize) -> bool {
        self.fixups.iter().any(|&(_, l)| l == label)
    }

    fn bind(&mut self, label: usize) {
        self.labels[label] = Some(self.code.len());
    }

    fn emit(&mut self, i: Insn) {
        self.code.push(i);
    }

    /// `jump` (offset left 0) to `label`.
    fn jump(&mut self, jump: Insn, label: usize) {
        debug_assert!(insn::is_jump(&jump));
        self.fixups.push((self.code.len(), label));
        self.code.push(jump);
    }

    fn finish(mut self) -> Result<Vec<Insn>, TranslateError> {
        for &(at, label) in &self.fixups {
            let target = self.labels[label].expect("every label used is bound");
            let off = target as i64 - at as i64 - 1;
            self.code[at].off = i16::try_from(off)
                .map_err(|_| TranslateError::TooFar(off.unsigned_abs() as usize))?;
        }
        Ok(self.code)
    }
}

struct Translation<'a> {
    prog: &'a [cbpf::Insn],
    blocks: Vec<(usize, usize)>,
    asm: Asm,
    reject: usize,
    accept: usize,
}

impl<'a> Translation<'a> {
    fn new(prog: &'a [cbpf::Insn]) -> Translation<'a> {
        let mut asm = Asm {
            code: Vec::with_capacity(prog.len() * 4),
            labels: Vec::new(),
            fixups: Vec::new(),
        };
        let (reject, accept) = (asm.label(), asm.label());
        Translation {
            prog,
            blocks: blocks(prog),
            asm,
            reject,
            accept,
        }
    }

    fn prologue(&mut self, hook: Hook) {
        let a = &mut self.asm;
        a.emit(insn::mov64(CTX, R1));
        match hook {
            Hook::Tc => {
                a.emit(insn::load(Size::W, DATA, CTX, SKB_DATA));
                a.emit(insn::load(Size::W, END, CTX, SKB_DATA_END));
                a.emit(insn::load(Size::W, WIRE_LEN, CTX, SKB_LEN));
            }
            Hook::Xdp => {
                a.emit(insn::load(Size::W, DATA, CTX, XDP_DATA));
                a.emit(insn::load(Size::W, END, CTX, XDP_DATA_END));
                a.emit(insn::mov64(WIRE_LEN, END));
                a.emit(insn::alu64(Alu::Sub, WIRE_LEN, DATA));
            }
        }
        a.emit(insn::mov32_imm(A, 0));
        a.emit(insn::mov32_imm(X, 0));
        // Only the words the program reads: the verifier refuses reads of
        // stack it has not seen written.
        let mut read = [false; MEM_WORDS];
        for i in self.prog {
            if matches!(i.code & 0x07, op::LD | op::LDX) && i.code & 0xe0 == op::MEM {
                read[i.k as usize] = true;
            }
        }
        for (k, _) in read.iter().enumerate().filter(|(_, r)| **r) {
            a.emit(insn::store_imm(Size::W, FP, mem_at(k as u32), 0));
        }
    }

    /// On TC: when the kernel holds the outer tag in metadata (and the
    /// packet has its MAC addresses), the wire's first `HEAD` bytes go on
    /// the stack and the tagged body follows; else to `wire`.
    fn tagged_prologue(&mut self, wire: usize) {
        let a = &mut self.asm;
        a.emit(insn::load(Size::W, R1, CTX, SKB_VLAN_PRESENT));
        a.jump(insn::jump32_imm(Cond::Eq, R1, 0, 0), wire);
        a.emit(insn::mov64(R1, DATA));
        a.emit(insn::alu64_imm(Alu::Add, R1, MACS as i32));
        a.jump(insn::jump64(Cond::Gt, R1, END, 0), wire);
        for word in 0..(MACS / 4) as i16 {
            a.emit(insn::load(Size::W, R1, DATA, word * 4));
            a.emit(insn::store(Size::W, FP, HEAD_AT + word * 4, R1));
        }
        // vlan_proto holds the TPID in network byte order already.
        a.emit(insn::load(Size::W, R1, CTX, SKB_VLAN_PROTO));
        a.emit(insn::store(Size::H, FP, HEAD_AT + MACS as i16, R1));
        a.emit(insn::load(Size::W, R1, CTX, SKB_VLAN_TCI));
        a.emit(insn::to_be(R1, 16));
        a.emit(insn::store(Size::H, FP, HEAD_AT + MACS as i16 + 2, R1));
        a.emit(insn::alu64_imm(Alu::Add, WIRE_LEN, TAG as i32));
    }

    /// The whole program for packets of `layout`. The verifier refuses
    /// code no path reaches, so only blocks a path reaches are emitted.
    fn body(&mut self, layout: Layout) {
        let prog = self.prog;
        let block_at = |at: usize| self.blocks.partition_point(|&(start, _)| start < at);
        // Each block's successors, none when it can only reject.
        let successors: Vec<Vec<usize>> = self
            .blocks
            .iter()
            .map(|&(start, end)| {
                let last = &prog[end - 1];
                if self.packet_end(layout, start, end) > Some(MAX_PACKET_OFF) {
                    Vec::new()
                } else if last.code & 0x07 == op::JMP {
                    jump_targets(end - 1, last).map(block_at).to_vec()
                } else if last.code & 0x07 == op::RET {
                    Vec::new()
                } else {
                    vec![block_at(end)]
                }
            })
            .collect();
        let mut reached = vec![false; self.blocks.len()];
        let mut todo = vec![0];
        while let Some(b) = todo.pop() {
            if !std::mem::replace(&mut reached[b], true) {
                todo.extend(&successors[b]);
            }
        }
        let labels: Vec<usize> = self.blocks.iter().map(|_| self.asm.label()).collect();
        for (b, &(start, end)) in self.blocks.clone().iter().enumerate() {
            if !reached[b] {
                continue;
            }
            self.asm.bind(labels[b]);
            let next = reached.get(b + 1).and_then(|r| r.then(|| labels[b + 1]));
            if !self.bounds_check(layout, start, end) {
                continue;
            }
            let targets: Vec<usize> = successors[b].iter().map(|&s| labels[s]).collect();
            for i in &prog[start..end] {
                self.insn(layout, i, &targets, next);
            }
        }
    }

    /// One past the furthest buffer byte the constant-offset loads of a
    /// block read, if they read any.
    fn packet_end(&self, layout: Layout, start: usize, end: usize) -> Option<u64> {
        self.prog[start..end]
            .iter()
            .filter_map(constant_load)
            .filter_map(|(wire, size)| Plan::new(layout, wire, size).packet_end(size))
            .max()
    }

    /// One check at a block's start for all its constant-offset loads;
    /// false when one of them can never be in a packet (the block then
    /// only rejects).
    fn bounds_check(&mut self, layout: Layout, start: usize, end: usize) -> bool {
        match self.packet_end(layout, start, end) {
            None => true,
            Some(need) if need > MAX_PACKET_OFF => {
                self.asm.jump(insn::ja(0), self.reject);
                false
            }
            Some(need) => {
                self.asm.emit(insn::mov64(R1, DATA));
                self.asm.emit(insn::alu64_imm(Alu::Add, R1, need as i32));
                self.asm
                    .jump(insn::jump64(Cond::Gt, R1, END, 0), self.reject);
                true
            }
        }
    }

    /// One classic instruction; `targets` are the labels of the block's
    /// jump (taken, not taken), `next` the label of the block after it.
    fn insn(&mut self, layout: Layout, i: &cbpf::Insn, targets: &[usize], next: Option<usize>) {
        let k = i.k;
        let class = i.code & 0x07;
        match class {
            op::LD | op::LDX => {
                let dst = if class == op::LD { A } else { X };
                match i.code & 0xe0 {
                    op::IMM => self.asm.emit(insn::mov32_imm(dst, k)),
                    op::LEN => self.asm.emit(insn::mov32(dst, WIRE_LEN)),
                    op::MEM => self.asm.emit(insn::load(Size::W, dst, FP, mem_at(k))),
                    op::ABS => self.load_constant(layout, A, k, size(i.code)),
                    op::IND => self.load_indirect(layout, k, size(i.code)),
                    _ => {
                        // ldx msh: 4 * (byte & 0xf), the IPv4 header length.
                        self.load_constant(layout, X, k, Size::B);
                        self.asm.emit(insn::alu32_imm(Alu::And, X, 0xf));
                        self.asm.emit(insn::alu32_imm(Alu::Lsh, X, 2));
                    }
                }
            }
            op::ST => self.asm.emit(insn::store(Size::W, FP, mem_at(k), A)),
            op::STX => self.asm.emit(insn::store(Size::W, FP, mem_at(k), X)),
            op::ALU => self.alu(i),
            op::JMP => self.jump(i, targets, next),
            op::RET => match i.code & 0x18 {
                op::A => {
                    self.asm
                        .jump(insn::jump32_imm(Cond::Ne, A, 0, 0), self.accept);
                    self.asm.jump(insn::ja(0), self.reject);
                }
                op::K if k != 0 => self.asm.jump(insn::ja(0), self.accept),
                // `ret #0`, and `ret x`, which libpcap never emits and its
                // interpreter takes as 0, like ours.
                _ => self.asm.jump(insn::ja(0), self.reject),
            },
            _ => self.asm.emit(if i.code & 0xf8 == op::TXA {
                insn::mov32(A, X)
            } else {
                insn::mov32(X, A)
            }),
        }
    }

    /// `dst` = the `size` wire bytes at `wire`, which the block's bounds
    /// check covers.
    fn load_constant(&mut self, layout: Layout, dst: Reg, wire: u32, size: Size) {
        match Plan::new(layout, wire, size) {
            Plan::Packet(off) => {
                let (base, off) = self.packet_at(off);
                self.asm.emit(insn::load(size, dst, base, off));
                self.swap(dst, size);
            }
            Plan::Bytes(bytes) => {
                for (n, byte) in bytes.into_iter().enumerate() {
                    match byte {
                        Byte::Stack(at) => self.asm.emit(insn::load(Size::B, R0, FP, at)),
                        Byte::Packet(off) => {
                            let (base, off) = self.packet_at(off);
                            self.asm.emit(insn::load(Size::B, R0, base, off));
                        }
                    }
                    self.append_byte(dst, n);
                }
            }
        }
    }

    /// A base register and instruction offset for packet offset `off`
    /// (instruction offsets stop at 32,767).
    fn packet_at(&mut self, off: u64) -> (Reg, i16) {
        match i16::try_from(off) {
            Ok(off) => (DATA, off),
            Err(_) => {
                self.asm.emit(insn::mov64(R1, DATA));
                self.asm.emit(insn::alu64_imm(Alu::Add, R1, off as i32));
                (R1, 0)
            }
        }
    }

    /// Classic loads are big-endian.
    fn swap(&mut self, dst: Reg, size: Size) {
        match size {
            Size::H => self.asm.emit(insn::to_be(dst, 16)),
            Size::W => self.asm.emit(insn::to_be(dst, 32)),
            Size::B | Size::DW => {}
        }
    }

    /// `dst` = `dst << 8 | r0`, or `r0` for the first byte.
    fn append_byte(&mut self, dst: Reg, n: usize) {
        if n == 0 {
            self.asm.emit(insn::mov32(dst, R0));
        } else {
            self.asm.emit(insn::alu32_imm(Alu::Lsh, dst, 8));
            self.asm.emit(insn::alu32(Alu::Or, dst, R0));
        }
    }

    /// `A` = the `size` wire bytes at `X + k`, checked here.
    fn load_indirect(&mut self, layout: Layout, k: u32, size: Size) {
        let n = size.bytes();
        // In 64 bits, so `X + k` cannot wrap (libpcap rejects what would).
        self.asm.emit(insn::mov32(R2, X));
        self.asm.emit(insn::mov32_imm(R3, k));
        self.asm.emit(insn::alu64(Alu::Add, R2, R3));
        match layout {
            Layout::Wire => {
                let limit = (MAX_PACKET_OFF - u64::from(n)) as i32;
                self.asm
                    .jump(insn::jump64_imm(Cond::Gt, R2, limit, 0), self.reject);
                self.load_at(R2, size);
            }
            Layout::Tagged => {
                let (head, done) = (self.asm.label(), self.asm.label());
                self.asm.jump(
                    insn::jump64_imm(Cond::Gt, R2, MAX_PACKET_OFF as i32, 0),
                    self.reject,
                );
                self.asm
                    .jump(insn::jump64_imm(Cond::Lt, R2, HEAD as i32, 0), head);
                self.asm.emit(insn::alu64_imm(Alu::Sub, R2, TAG as i32));
                self.load_at(R2, size);
                self.asm.jump(insn::ja(0), done);
                self.asm.bind(head);
                for n in 0..n {
                    self.tagged_byte(n);
                    self.append_byte(A, n as usize);
                }
                self.asm.bind(done);
            }
        }
    }

    /// `A` = the `size` buffer bytes at offset `off` (a register the
    /// caller bounded), after checking them against the packet's end.
    fn load_at(&mut self, off: Reg, size: Size) {
        let a = &mut self.asm;
        a.emit(insn::mov64(R1, DATA));
        a.emit(insn::alu64(Alu::Add, R1, off));
        a.emit(insn::mov64(R3, R1));
        a.emit(insn::alu64_imm(Alu::Add, R3, size.bytes() as i32));
        a.jump(insn::jump64(Cond::Gt, R3, END, 0), self.reject);
        a.emit(insn::load(size, A, R1, 0));
        self.swap(A, size);
    }

    /// `r0` = wire byte `r2 + n` of a tagged packet, where `r2 < HEAD`:
    /// from the stack's copy of the head, or from the buffer past it.
    fn tagged_byte(&mut self, n: u32) {
        let (buffer, done) = (self.asm.label(), self.asm.label());
        let a = &mut self.asm;
        a.emit(insn::mov64(R3, R2));
        a.emit(insn::alu64_imm(Alu::Add, R3, n as i32));
        a.jump(insn::jump64_imm(Cond::Ge, R3, HEAD as i32, 0), buffer);
        a.emit(insn::mov64(R1, FP));
        a.emit(insn::alu64(Alu::Add, R1, R3));
        a.emit(insn::load(Size::B, R0, R1, HEAD_AT));
        a.jump(insn::ja(0), done);
        a.bind(buffer);
        a.emit(insn::alu64_imm(Alu::Sub, R3, TAG as i32));
        a.emit(insn::mov64(R1, DATA));
        a.emit(insn::alu64(Alu::Add, R1, R3));
        a.emit(insn::mov64(R0, R1));
        a.emit(insn::alu64_imm(Alu::Add, R0, 1));
        a.jump(insn::jump64(Cond::Gt, R0, END, 0), self.reject);
        a.emit(insn::load(Size::B, R0, R1, 0));
        a.bind(done);
    }

    fn alu(&mut self, i: &cbpf::Insn) {
        let op = alu_op(i.code);
        let by_x = i.code & op::X != 0;
        let a = &mut self.asm;
        match (op, by_x) {
            (Alu::Neg, _) => a.emit(insn::alu32_imm(Alu::Neg, A, 0)),
            (Alu::Lsh | Alu::Rsh, false) if i.k >= 32 => a.emit(insn::mov32_imm(A, 0)),
            (Alu::Lsh | Alu::Rsh, true) => {
                let (wide, done) = (a.label(), a.label());
                a.jump(insn::jump32_imm(Cond::Ge, X, 32, 0), wide);
                a.emit(insn::alu32(op, A, X));
                a.jump(insn::ja(0), done);
                a.bind(wide);
                a.emit(insn::mov32_imm(A, 0));
                a.bind(done);
            }
            (Alu::Div | Alu::Mod, true) => {
                a.jump(insn::jump32_imm(Cond::Eq, X, 0, 0), self.reject);
                a.emit(insn::alu32(op, A, X));
            }
            (_, true) => a.emit(insn::alu32(op, A, X)),
            (_, false) => a.emit(insn::alu32_imm(op, A, i.k)),
        }
    }

    fn jump(&mut self, i: &cbpf::Insn, targets: &[usize], next: Option<usize>) {
        let (taken, not_taken) = (targets[0], targets[1]);
        let a = &mut self.asm;
        let cond = match i.code & 0xf0 {
            op::JEQ => Cond::Eq,
            op::JGT => Cond::Gt,
            op::JGE => Cond::Ge,
            op::JSET => Cond::Set,
            _ => {
                if Some(taken) != next {
                    a.jump(insn::ja(0), taken);
                }
                return;
            }
        };
        let test = |cond: Cond| {
            if i.code & op::X != 0 {
                insn::jump32(cond, A, X, 0)
            } else {
                insn::jump32_imm(cond, A, i.k, 0)
            }
        };
        if taken == not_taken {
            if Some(taken) != next {
                a.jump(insn::ja(0), taken);
            }
        } else if let (true, Some(negated)) = (Some(taken) == next, cond.negated()) {
            a.jump(test(negated), not_taken);
        } else {
            a.jump(test(cond), taken);
            if Some(not_taken) != next {
                a.jump(insn::ja(0), not_taken);
            }
        }
    }

    /// The verdicts' code, each only where some path reaches it.
    fn epilogues(&mut self, exit: Exit) {
        let (reject, accept) = (self.reject, self.accept);
        let a = &mut self.asm;
        let (rejects, accepts) = (a.used(reject), a.used(accept));
        match exit {
            Exit::Verdict => {
                if rejects {
                    a.bind(reject);
                    a.emit(insn::mov64_imm(R0, 0));
                    a.emit(insn::exit());
                }
                if accepts {
                    a.bind(accept);
                    a.emit(insn::mov64_imm(R0, 1));
                    a.emit(insn::exit());
                }
            }
            Exit::Hook {
                rest,
                counters,
                filtered,
                untracked,
                pass,
                rejected,
            } => {
                if rejects {
                    a.bind(reject);
                    if let Some(array) = rejected {
                        tail_call(a, array);
                    }
                    count(a, counters, filtered);
                    a.emit(insn::mov64_imm(R0, pass));
                    a.emit(insn::exit());
                }
                if accepts {
                    a.bind(accept);
                    tail_call(a, rest);
                    // Only when the array is empty: never silently lost.
                    count(a, counters, untracked);
                    a.emit(insn::mov64_imm(R0, pass));
                    a.emit(insn::exit());
                }
            }
        }
    }
}

/// A tail call to entry 0 of the program array `map` with the packet's
/// context; what follows runs only if it fails (an empty array).
fn tail_call(a: &mut Asm, map: i32) {
    a.emit(insn::mov64(R1, CTX));
    for i in insn::load_map_fd(R2, map) {
        a.emit(i);
    }
    a.emit(insn::mov64_imm(R3, 0));
    a.emit(insn::call(HELPER_TAIL_CALL));
}

/// Adds one to this CPU's `index` of the per-CPU `u64` array `map`.
fn count(a: &mut Asm, map: i32, index: u32) {
    a.emit(insn::store_imm(Size::W, FP, KEY_AT, index as i32));
    for i in insn::load_map_fd(R1, map) {
        a.emit(i);
    }
    a.emit(insn::mov64(R2, FP));
    a.emit(insn::alu64_imm(Alu::Add, R2, KEY_AT.into()));
    a.emit(insn::call(HELPER_MAP_LOOKUP_ELEM));
    a.emit(insn::jump64_imm(Cond::Eq, R0, 0, 3));
    a.emit(insn::load(Size::DW, R1, R0, 0));
    a.emit(insn::alu64_imm(Alu::Add, R1, 1));
    a.emit(insn::store(Size::DW, R0, 0, R1));
}

fn mem_at(k: u32) -> i16 {
    MEM_AT + 4 * k as i16
}

fn alu_op(code: u16) -> Alu {
    match code & 0xf0 {
        op::ADD => Alu::Add,
        op::SUB => Alu::Sub,
        op::MUL => Alu::Mul,
        op::DIV => Alu::Div,
        op::OR => Alu::Or,
        op::AND => Alu::And,
        op::LSH => Alu::Lsh,
        op::RSH => Alu::Rsh,
        op::NEG => Alu::Neg,
        op::MOD => Alu::Mod,
        _ => Alu::Xor,
    }
}

#[cfg(test)]
mod tests;
