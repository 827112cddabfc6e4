//! eBPF instructions as the kernel's `struct bpf_insn` lays them out
//! (linux/bpf.h), and the few constructors the translator needs.

/// A register, r0 to r10.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reg(pub u8);

pub const R0: Reg = Reg(0);
pub const R1: Reg = Reg(1);
pub const R2: Reg = Reg(2);
pub const R3: Reg = Reg(3);
pub const R4: Reg = Reg(4);
pub const R5: Reg = Reg(5);
pub const R6: Reg = Reg(6);
pub const R7: Reg = Reg(7);
pub const R8: Reg = Reg(8);
pub const R9: Reg = Reg(9);
/// The frame pointer: read-only, the top of the program's 512-byte stack.
pub const FP: Reg = Reg(10);

/// One instruction: 8 bytes (`ld_imm64` takes two).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Insn {
    pub code: u8,
    /// dst in the low nibble, src in the high one (little-endian hosts).
    pub regs: u8,
    pub off: i16,
    pub imm: i32,
}

// SAFETY: repr(C) integers without padding; any bit pattern is valid.
unsafe impl bytemuck::Zeroable for Insn {}
unsafe impl bytemuck::Pod for Insn {}

// Instruction classes, sizes, modes and operations.
const LD: u8 = 0x00;
const LDX: u8 = 0x01;
const ST: u8 = 0x02;
const STX: u8 = 0x03;
const ALU: u8 = 0x04;
const JMP: u8 = 0x05;
const JMP32: u8 = 0x06;
const ALU64: u8 = 0x07;
const DW: u8 = 0x18;
const MEM: u8 = 0x60;
const IMM: u8 = 0x00;
const SRC_X: u8 = 0x08;
const MOV: u8 = 0xb0;
const END: u8 = 0xd0;
const CALL: u8 = 0x80;
const EXIT: u8 = 0x90;
/// `ld_imm64`'s src when its immediate is a map's file descriptor.
const PSEUDO_MAP_FD: u8 = 1;

/// Load and store widths.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Size {
    B = 0x10,
    H = 0x08,
    W = 0x00,
    DW = 0x18,
}

impl Size {
    pub fn bytes(self) -> u32 {
        match self {
            Size::B => 1,
            Size::H => 2,
            Size::W => 4,
            Size::DW => 8,
        }
    }
}

/// ALU operations: the same values as classic BPF's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alu {
    Add = 0x00,
    Sub = 0x10,
    Mul = 0x20,
    Div = 0x30,
    Or = 0x40,
    And = 0x50,
    Lsh = 0x60,
    Rsh = 0x70,
    Neg = 0x80,
    Mod = 0x90,
    Xor = 0xa0,
}

/// Conditions of conditional jumps (unsigned comparisons).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cond {
    Eq = 0x10,
    Gt = 0x20,
    Ge = 0x30,
    Set = 0x40,
    Ne = 0x50,
    Lt = 0xa0,
    Le = 0xb0,
}

impl Cond {
    /// The condition that holds exactly when `self` does not, if eBPF has
    /// one (it has no "none of these bits set").
    pub fn negated(self) -> Option<Cond> {
        Some(match self {
            Cond::Eq => Cond::Ne,
            Cond::Ne => Cond::Eq,
            Cond::Gt => Cond::Le,
            Cond::Le => Cond::Gt,
            Cond::Ge => Cond::Lt,
            Cond::Lt => Cond::Ge,
            Cond::Set => return None,
        })
    }
}

/// Helper functions called by number (linux/bpf.h, `enum bpf_func_id`).
pub const HELPER_MAP_LOOKUP_ELEM: i32 = 1;
pub const HELPER_TAIL_CALL: i32 = 12;

fn insn(code: u8, dst: Reg, src: Reg, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: (src.0 << 4) | (dst.0 & 0x0f),
        off,
        imm,
    }
}

/// `dst = imm` in 32 bits (the upper half cleared).
pub fn mov32_imm(dst: Reg, imm: u32) -> Insn {
    insn(ALU | MOV, dst, R0, 0, imm as i32)
}

/// `dst = src` in 32 bits (the upper half cleared).
pub fn mov32(dst: Reg, src: Reg) -> Insn {
    insn(ALU | MOV | SRC_X, dst, src, 0, 0)
}

/// `dst = imm`, sign-extended to 64 bits.
pub fn mov64_imm(dst: Reg, imm: i32) -> Insn {
    insn(ALU64 | MOV, dst, R0, 0, imm)
}

/// `dst = src`, all 64 bits (pointers keep their type).
pub fn mov64(dst: Reg, src: Reg) -> Insn {
    insn(ALU64 | MOV | SRC_X, dst, src, 0, 0)
}

/// `dst op= imm` in 32 bits, as classic BPF computes.
pub fn alu32_imm(op: Alu, dst: Reg, imm: u32) -> Insn {
    insn(ALU | op as u8, dst, R0, 0, imm as i32)
}

/// `dst op= src` in 32 bits.
pub fn alu32(op: Alu, dst: Reg, src: Reg) -> Insn {
    insn(ALU | op as u8 | SRC_X, dst, src, 0, 0)
}

/// `dst op= imm` in 64 bits, imm sign-extended (pointer arithmetic).
pub fn alu64_imm(op: Alu, dst: Reg, imm: i32) -> Insn {
    insn(ALU64 | op as u8, dst, R0, 0, imm)
}

/// `dst op= src` in 64 bits.
pub fn alu64(op: Alu, dst: Reg, src: Reg) -> Insn {
    insn(ALU64 | op as u8 | SRC_X, dst, src, 0, 0)
}

/// The low `bits` (16 or 32) of `dst` from host to network order, the
/// rest cleared.
pub fn to_be(dst: Reg, bits: i32) -> Insn {
    insn(ALU | END | SRC_X, dst, R0, 0, bits)
}

/// `dst = *(size *)(src + off)`, zero-extended.
pub fn load(size: Size, dst: Reg, src: Reg, off: i16) -> Insn {
    insn(LDX | MEM | size as u8, dst, src, off, 0)
}

/// `*(size *)(dst + off) = src`.
pub fn store(size: Size, dst: Reg, off: i16, src: Reg) -> Insn {
    insn(STX | MEM | size as u8, dst, src, off, 0)
}

/// `*(size *)(dst + off) = imm`.
pub fn store_imm(size: Size, dst: Reg, off: i16, imm: i32) -> Insn {
    insn(ST | MEM | size as u8, dst, R0, off, imm)
}

/// `dst = map` (a map's file descriptor, which the kernel turns into the
/// map's address): two instruction slots.
pub fn load_map_fd(dst: Reg, fd: i32) -> [Insn; 2] {
    [
        insn(LD | DW | IMM, dst, Reg(PSEUDO_MAP_FD), 0, fd),
        Insn::default(),
    ]
}

/// `if (u32)dst cond imm goto +off`.
pub fn jump32_imm(cond: Cond, dst: Reg, imm: u32, off: i16) -> Insn {
    insn(JMP32 | cond as u8, dst, R0, off, imm as i32)
}

/// `if (u32)dst cond (u32)src goto +off`.
pub fn jump32(cond: Cond, dst: Reg, src: Reg, off: i16) -> Insn {
    insn(JMP32 | cond as u8 | SRC_X, dst, src, off, 0)
}

/// `if dst cond imm goto +off`, in 64 bits (imm sign-extended).
pub fn jump64_imm(cond: Cond, dst: Reg, imm: i32, off: i16) -> Insn {
    insn(JMP | cond as u8, dst, R0, off, imm)
}

/// `if dst cond src goto +off`, in 64 bits (packet pointers).
pub fn jump64(cond: Cond, dst: Reg, src: Reg, off: i16) -> Insn {
    insn(JMP | cond as u8 | SRC_X, dst, src, off, 0)
}

/// `goto +off`.
pub fn ja(off: i16) -> Insn {
    insn(JMP, R0, R0, off, 0)
}

pub fn call(helper: i32) -> Insn {
    insn(JMP | CALL, R0, R0, 0, helper)
}

pub fn exit() -> Insn {
    insn(JMP | EXIT, R0, R0, 0, 0)
}

/// Whether `i` jumps (and so has an offset to fix up): `ja` and the
/// conditional jumps, not calls or exits.
pub fn is_jump(i: &Insn) -> bool {
    let class = i.code & 0x07;
    let op = i.code & 0xf0;
    (class == JMP || class == JMP32) && op != CALL && op != EXIT
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings_match_the_kernels() {
        // From `bpftool prog dump xlated` / llvm-objdump of known programs.
        let bytes = |i: Insn| bytemuck::bytes_of(&i).to_vec();
        assert_eq!(bytes(mov64(R6, R1)), [0xbf, 0x16, 0, 0, 0, 0, 0, 0]);
        assert_eq!(
            bytes(load(Size::W, R7, R1, 76)),
            [0x61, 0x17, 76, 0, 0, 0, 0, 0]
        );
        assert_eq!(
            bytes(jump32_imm(Cond::Eq, R4, 0x800, 3)),
            [0x16, 0x04, 3, 0, 0, 8, 0, 0]
        );
        assert_eq!(bytes(to_be(R4, 16)), [0xdc, 0x04, 0, 0, 16, 0, 0, 0]);
        assert_eq!(bytes(exit()), [0x95, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(bytes(load_map_fd(R1, 5)[0]), [0x18, 0x11, 0, 0, 5, 0, 0, 0]);
        assert!(is_jump(&ja(1)) && !is_jump(&call(1)) && !is_jump(&exit()));
    }
}
