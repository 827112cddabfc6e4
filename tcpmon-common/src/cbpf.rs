//! Classic BPF, the language libpcap compiles filter expressions into: its
//! instructions, their validation, and the interpreter the pcap backend runs
//! on each captured frame. The kernel programs do not interpret: user space
//! translates the same program into eBPF (`tcpmon::filter::translate`), and
//! the differential tests hold both to libpcap's own `bpf_filter`.
//!
//! Same semantics as libpcap's `bpf_filter` (which tcpdump runs on files):
//! a load outside the packet's bytes ends the program with 0 (reject), a
//! division by a zero X likewise, shifts by 32 or more give 0. `len` is the
//! length on the wire, which may exceed the captured bytes.
//!
//! Classic BPF jumps only go forward, so every step moves the counter by at
//! least one and a program of `len` instructions runs at most `len` steps.

/// Longest program accepted: the kernel's own limit for classic socket
/// filters (BPF_MAXINSNS). libpcap's programs for everyday expressions are
/// 10 to 60 instructions (`tcp port 443 or tcp port 80`: 23).
pub const MAX_INSNS: usize = 4096;

/// Scratch memory words (`M[0..16]`).
pub const MEM_WORDS: usize = 16;

/// One instruction, laid out as libpcap's `struct bpf_insn`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Insn {
    pub code: u16,
    pub jt: u8,
    pub jf: u8,
    pub k: u32,
}

// Opcode fields (linux/filter.h, pcap/bpf.h).
pub mod op {
    pub const LD: u16 = 0x00;
    pub const LDX: u16 = 0x01;
    pub const ST: u16 = 0x02;
    pub const STX: u16 = 0x03;
    pub const ALU: u16 = 0x04;
    pub const JMP: u16 = 0x05;
    pub const RET: u16 = 0x06;
    pub const MISC: u16 = 0x07;

    pub const W: u16 = 0x00;
    pub const H: u16 = 0x08;
    pub const B: u16 = 0x10;

    pub const IMM: u16 = 0x00;
    pub const ABS: u16 = 0x20;
    pub const IND: u16 = 0x40;
    pub const MEM: u16 = 0x60;
    pub const LEN: u16 = 0x80;
    pub const MSH: u16 = 0xa0;

    pub const ADD: u16 = 0x00;
    pub const SUB: u16 = 0x10;
    pub const MUL: u16 = 0x20;
    pub const DIV: u16 = 0x30;
    pub const OR: u16 = 0x40;
    pub const AND: u16 = 0x50;
    pub const LSH: u16 = 0x60;
    pub const RSH: u16 = 0x70;
    pub const NEG: u16 = 0x80;
    pub const MOD: u16 = 0x90;
    pub const XOR: u16 = 0xa0;

    pub const JA: u16 = 0x00;
    pub const JEQ: u16 = 0x10;
    pub const JGT: u16 = 0x20;
    pub const JGE: u16 = 0x30;
    pub const JSET: u16 = 0x40;

    pub const K: u16 = 0x00;
    pub const X: u16 = 0x08;
    /// `ret a` (in RET's source field).
    pub const A: u16 = 0x10;

    pub const TAX: u16 = 0x00;
    pub const TXA: u16 = 0x80;
}

/// The bytes a program reads, as each backend holds them.
pub trait Bytes {
    /// Length of the packet on the wire (`len`).
    fn wire_len(&self) -> u32;
    /// The byte at `off`, or `None` past the bytes there are.
    fn byte(&self, off: u32) -> Option<u8>;
    /// Big-endian 16 bits at `off`.
    #[inline(always)]
    fn be16(&self, off: u32) -> Option<u32> {
        bytes_be16(self, off)
    }
    /// Big-endian 32 bits at `off`.
    #[inline(always)]
    fn be32(&self, off: u32) -> Option<u32> {
        bytes_be32(self, off)
    }
}

/// Big-endian 16 bits at `off`, byte by byte: `Bytes::be16` unless a
/// backend has a faster way.
#[inline(always)]
pub fn bytes_be16<B: Bytes + ?Sized>(b: &B, off: u32) -> Option<u32> {
    let hi = b.byte(off)? as u32;
    let lo = b.byte(off.checked_add(1)?)? as u32;
    Some((hi << 8) | lo)
}

/// Big-endian 32 bits at `off`, byte by byte.
#[inline(always)]
pub fn bytes_be32<B: Bytes + ?Sized>(b: &B, off: u32) -> Option<u32> {
    let hi = bytes_be16(b, off)?;
    let lo = bytes_be16(b, off.checked_add(2)?)?;
    Some((hi << 16) | lo)
}

/// A captured frame in user space: `data` are the captured bytes.
pub struct Captured<'a> {
    pub data: &'a [u8],
    pub wire_len: u32,
}

impl Bytes for Captured<'_> {
    fn wire_len(&self) -> u32 {
        self.wire_len
    }
    fn byte(&self, off: u32) -> Option<u8> {
        self.data.get(off as usize).copied()
    }
    fn be16(&self, off: u32) -> Option<u32> {
        let b = self
            .data
            .get(off as usize..(off as usize).checked_add(2)?)?;
        Some(u16::from_be_bytes([b[0], b[1]]) as u32)
    }
    fn be32(&self, off: u32) -> Option<u32> {
        let b = self
            .data
            .get(off as usize..(off as usize).checked_add(4)?)?;
        Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
}

/// The registers between steps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Regs {
    pub a: u32,
    pub x: u32,
    /// Next instruction.
    pub pc: u32,
}

/// Scratch memory, `M[0..16]`.
pub type Mem = [u32; MEM_WORDS];

/// Runs `prog` on `pkt`: the value of the `ret` reached (0 rejects the
/// packet, anything else accepts it), or 0 when a load falls outside the
/// packet or the program is malformed.
#[inline(always)]
pub fn run<P: Bytes>(prog: &[Insn], pkt: &P) -> u32 {
    let mut r = Regs::default();
    let mut mem = [0; MEM_WORDS];
    for _ in 0..prog.len() {
        if let Some(ret) = step(&mut r, &mut mem, prog, pkt) {
            return ret;
        }
    }
    0
}

/// One instruction: `Some(verdict)` when the program ends here.
#[inline(always)]
pub fn step<P: Bytes>(r: &mut Regs, mem: &mut Mem, prog: &[Insn], pkt: &P) -> Option<u32> {
    let Some(&ins) = prog.get(r.pc as usize) else {
        return Some(0);
    };
    let pc = r.pc;
    // Forward only: every step moves on by at least one.
    let mut next = pc + 1;
    let class = ins.code & 0x07;
    match class {
        op::LD | op::LDX => {
            // A load outside the packet ends the program: reject.
            let Some(v) = load(r.x, mem, ins, pkt) else {
                return Some(0);
            };
            if class == op::LD {
                r.a = v;
            } else {
                r.x = v;
            }
        }
        op::ST => mem[ins.k as usize & (MEM_WORDS - 1)] = r.a,
        op::STX => mem[ins.k as usize & (MEM_WORDS - 1)] = r.x,
        op::ALU => match alu(r.a, r.x, ins) {
            Some(a) => r.a = a,
            None => return Some(0),
        },
        op::JMP => {
            let src = if ins.code & op::X != 0 { r.x } else { ins.k };
            let off = match ins.code & 0xf0 {
                op::JA => ins.k & 0xffff,
                op::JEQ => pick(r.a == src, ins),
                op::JGT => pick(r.a > src, ins),
                op::JGE => pick(r.a >= src, ins),
                op::JSET => pick(r.a & src != 0, ins),
                _ => return Some(0),
            };
            next += off;
        }
        op::RET => {
            return Some(match ins.code & 0x18 {
                op::K => ins.k,
                op::A => r.a,
                _ => 0,
            });
        }
        _ => match ins.code & 0xf8 {
            op::TAX => r.x = r.a,
            op::TXA => r.a = r.x,
            _ => return Some(0),
        },
    }
    r.pc = next;
    None
}

#[inline(always)]
fn pick(taken: bool, ins: Insn) -> u32 {
    if taken { ins.jt } else { ins.jf }.into()
}

/// The value an LD or LDX puts in its register; `None` ends the program
/// with 0 (a load outside the packet).
#[inline(always)]
fn load<P: Bytes>(x: u32, mem: &Mem, ins: Insn, pkt: &P) -> Option<u32> {
    let ld = ins.code & 0x07 == op::LD;
    let off = match ins.code & 0xe0 {
        op::IMM => return Some(ins.k),
        op::LEN => return Some(pkt.wire_len()),
        op::MEM => return Some(mem[ins.k as usize & (MEM_WORDS - 1)]),
        op::ABS if ld => ins.k,
        op::IND if ld => x.checked_add(ins.k)?,
        // 4 * (P[k] & 0xf): an IPv4 header length.
        op::MSH if !ld => return Some((pkt.byte(ins.k)? as u32 & 0xf) << 2),
        _ => return None,
    };
    match ins.code & 0x18 {
        op::W => pkt.be32(off),
        op::H => pkt.be16(off),
        op::B => pkt.byte(off).map(u32::from),
        _ => None,
    }
}

#[inline(always)]
fn alu(a: u32, x: u32, ins: Insn) -> Option<u32> {
    let src = if ins.code & op::X != 0 { x } else { ins.k };
    Some(match ins.code & 0xf0 {
        op::ADD => a.wrapping_add(src),
        op::SUB => a.wrapping_sub(src),
        op::MUL => a.wrapping_mul(src),
        op::DIV => a.checked_div(src)?,
        op::MOD => a.checked_rem(src)?,
        op::AND => a & src,
        op::OR => a | src,
        op::XOR => a ^ src,
        op::LSH => a.checked_shl(src).unwrap_or(0),
        op::RSH => a.checked_shr(src).unwrap_or(0),
        op::NEG => a.wrapping_neg(),
        _ => return None,
    })
}

/// Why a program is refused (the checks of libpcap's `bpf_validate`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Invalid {
    Empty,
    TooLong {
        len: usize,
    },
    /// Instruction `at` is unknown or has an invalid operand.
    BadInsn {
        at: usize,
    },
    /// Instruction `at` jumps past the end.
    BadJump {
        at: usize,
    },
    /// The last instruction is not a `ret`.
    NoReturn,
}

/// Checks a program before it is run or loaded into the kernel: every
/// instruction known, every jump inside the program, a `ret` at the end.
pub fn validate(insns: &[Insn]) -> Result<(), Invalid> {
    let len = insns.len();
    if len == 0 {
        return Err(Invalid::Empty);
    }
    if len > MAX_INSNS {
        return Err(Invalid::TooLong { len });
    }
    for (at, ins) in insns.iter().enumerate() {
        let bad = Err(Invalid::BadInsn { at });
        let next = at + 1;
        match ins.code & 0x07 {
            op::LD | op::LDX => {
                let ld = ins.code & 0x07 == op::LD;
                let size_ok = ins.code & 0x18 != 0x18;
                match ins.code & 0xe0 {
                    op::IMM | op::LEN if size_ok => {}
                    op::ABS | op::IND if ld && size_ok => {}
                    op::MSH if !ld && ins.code & 0x18 == op::B => {}
                    op::MEM if size_ok && (ins.k as usize) < MEM_WORDS => {}
                    _ => return bad,
                }
            }
            op::ST | op::STX if (ins.k as usize) < MEM_WORDS => {}
            op::ALU => match ins.code & 0xf0 {
                op::DIV | op::MOD if ins.code & op::X == 0 && ins.k == 0 => return bad,
                op::ADD
                | op::SUB
                | op::MUL
                | op::DIV
                | op::MOD
                | op::AND
                | op::OR
                | op::XOR
                | op::LSH
                | op::RSH
                | op::NEG => {}
                _ => return bad,
            },
            op::JMP => {
                let targets = match ins.code & 0xf0 {
                    op::JA => [ins.k as usize, ins.k as usize],
                    op::JEQ | op::JGT | op::JGE | op::JSET => [ins.jt as usize, ins.jf as usize],
                    _ => return bad,
                };
                if targets.iter().any(|t| next.saturating_add(*t) >= len) {
                    return Err(Invalid::BadJump { at });
                }
            }
            op::RET if ins.code & 0x18 != 0x18 => {}
            op::MISC if matches!(ins.code & 0xf8, op::TAX | op::TXA) => {}
            _ => return bad,
        }
    }
    if insns[len - 1].code & 0x07 != op::RET {
        return Err(Invalid::NoReturn);
    }
    Ok(())
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C) integers without padding; any bit pattern is valid.
    unsafe impl bytemuck::Zeroable for super::Insn {}
    unsafe impl bytemuck::Pod for super::Insn {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ins(code: u16, jt: u8, jf: u8, k: u32) -> Insn {
        Insn { code, jt, jf, k }
    }

    fn verdict(insns: &[Insn], data: &[u8]) -> u32 {
        validate(insns).expect("valid");
        run(
            insns,
            &Captured {
                data,
                wire_len: data.len() as u32 + 10,
            },
        )
    }

    #[test]
    fn loads_compare_and_return() {
        // ldh [0]; jeq #0x0102 jt 0 jf 1; ret #7; ret #0
        let p = [
            ins(op::LD | op::H | op::ABS, 0, 0, 0),
            ins(op::JMP | op::JEQ | op::K, 0, 1, 0x0102),
            ins(op::RET | op::K, 0, 0, 7),
            ins(op::RET | op::K, 0, 0, 0),
        ];
        assert_eq!(verdict(&p, &[1, 2, 3]), 7);
        assert_eq!(verdict(&p, &[1, 3, 3]), 0);
        // A load past the captured bytes rejects.
        assert_eq!(verdict(&p, &[1]), 0);
    }

    #[test]
    fn msh_indirect_len_mem_and_alu() {
        // ldx 4*([0]&0xf); ld [x+0] (byte); st M[3]; ld len; add M..; ret a
        let p = [
            ins(op::LDX | op::B | op::MSH, 0, 0, 0),
            ins(op::LD | op::B | op::IND, 0, 0, 0),
            ins(op::ST, 0, 0, 3),
            ins(op::LD | op::LEN, 0, 0, 0),
            ins(op::MISC | op::TAX, 0, 0, 0),
            ins(op::LD | op::MEM, 0, 0, 3),
            ins(op::ALU | op::ADD | op::X, 0, 0, 0),
            ins(op::RET | op::A, 0, 0, 0),
        ];
        let mut data = [0u8; 8];
        data[0] = 0x01; // x = 4
        data[4] = 9;
        assert_eq!(verdict(&p, &data), 9 + 18);
    }

    #[test]
    fn division_by_zero_x_and_wide_shifts() {
        let div = [
            ins(op::LD | op::IMM, 0, 0, 5),
            ins(op::ALU | op::DIV | op::X, 0, 0, 0),
            ins(op::RET | op::K, 0, 0, 1),
        ];
        assert_eq!(verdict(&div, &[]), 0);
        let shl = [
            ins(op::LD | op::IMM, 0, 0, 5),
            ins(op::ALU | op::LSH | op::K, 0, 0, 40),
            ins(op::RET | op::A, 0, 0, 0),
        ];
        assert_eq!(verdict(&shl, &[]), 0);
    }

    #[test]
    fn validation_refuses_what_libpcap_refuses() {
        let ret = ins(op::RET | op::K, 0, 0, 1);
        assert_eq!(validate(&[]), Err(Invalid::Empty));
        assert_eq!(
            validate(&[ins(op::LD | op::IMM, 0, 0, 0)]),
            Err(Invalid::NoReturn)
        );
        assert_eq!(
            validate(&[ins(op::JMP | op::JA, 0, 0, 1), ret]),
            Err(Invalid::BadJump { at: 0 })
        );
        assert_eq!(
            validate(&[ins(op::ALU | op::DIV | op::K, 0, 0, 0), ret]),
            Err(Invalid::BadInsn { at: 0 })
        );
        assert_eq!(
            validate(&[ins(op::ST, 0, 0, 16), ret]),
            Err(Invalid::BadInsn { at: 0 })
        );
        assert_eq!(
            validate(&[ret; MAX_INSNS + 1]),
            Err(Invalid::TooLong { len: MAX_INSNS + 1 })
        );
        assert_eq!(validate(&[ret; MAX_INSNS]), Ok(()));
    }
}
