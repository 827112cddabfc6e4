//! The translation's shape; what it computes is checked in the kernel
//! against the interpreter and libpcap (tests/filter_kernel.rs).

use super::*;

fn ins(code: u16, jt: u8, jf: u8, k: u32) -> cbpf::Insn {
    cbpf::Insn { code, jt, jf, k }
}

/// ldh [12]; jeq #0x800 jt 0 jf 3; ldb [23]; jeq #6 jt 0 jf 1; ret #1; ret #0
fn ipv4_tcp() -> Vec<cbpf::Insn> {
    vec![
        ins(op::LD | op::H | op::ABS, 0, 0, 12),
        ins(op::JMP | op::JEQ | op::K, 0, 3, 0x800),
        ins(op::LD | op::B | op::ABS, 0, 0, 23),
        ins(op::JMP | op::JEQ | op::K, 0, 1, 6),
        ins(op::RET | op::K, 0, 0, 1),
        ins(op::RET | op::K, 0, 0, 0),
    ]
}

#[test]
fn blocks_end_at_jumps_and_returns() {
    assert_eq!(blocks(&ipv4_tcp()), [(0, 2), (2, 4), (4, 5), (5, 6)]);
}

#[test]
fn one_bounds_check_a_block_for_its_furthest_byte() {
    let code = translate(&ipv4_tcp(), Hook::Xdp, Exit::Verdict).expect("translates");
    // `r1 += n` right before each check: the first block reads up to byte
    // 14, the second to 24.
    let checks: Vec<i32> = code
        .windows(2)
        .filter(|w| w[1] == insn::jump64(Cond::Gt, R1, END, w[1].off))
        .map(|w| w[0].imm)
        .collect();
    assert_eq!(checks, [14, 24]);
}

#[test]
fn tagged_packets_read_past_the_head_four_bytes_earlier() {
    assert_eq!(Plan::new(Layout::Wire, 23, Size::B), Plan::Packet(23));
    assert_eq!(Plan::new(Layout::Tagged, 23, Size::B), Plan::Packet(19));
    // The TPID, from the stack's copy.
    assert_eq!(
        Plan::new(Layout::Tagged, 12, Size::H),
        Plan::Bytes(vec![Byte::Stack(HEAD_AT + 12), Byte::Stack(HEAD_AT + 13)])
    );
    // Straddling the head's end.
    let plan = Plan::new(Layout::Tagged, 14, Size::W);
    assert_eq!(
        plan,
        Plan::Bytes(vec![
            Byte::Stack(HEAD_AT + 14),
            Byte::Stack(HEAD_AT + 15),
            Byte::Packet(12),
            Byte::Packet(13)
        ])
    );
    assert_eq!(plan.packet_end(Size::W), Some(14));
}

#[test]
fn jumps_are_fixed_up_to_their_targets() {
    let code = translate(&ipv4_tcp(), Hook::Tc, Exit::Verdict).expect("translates");
    for (at, i) in code.iter().enumerate() {
        if insn::is_jump(i) {
            let target = at as i64 + 1 + i64::from(i.off);
            assert!(
                target > at as i64 && (target as usize) < code.len(),
                "{at}: {i:?}"
            );
        }
    }
    assert_eq!(code.last(), Some(&insn::exit()));
}

#[test]
fn invalid_programs_are_refused() {
    assert_eq!(
        translate(&[], Hook::Xdp, Exit::Verdict),
        Err(TranslateError::Invalid(cbpf::Invalid::Empty))
    );
}

#[test]
fn a_jump_beyond_reach_is_an_error_not_a_wrong_program() {
    // jeq #1 to 4,000 loads through X (each tens of eBPF instructions on
    // TC), else `ja` over them all to the `ret`: too far for eBPF's jump.
    let loads = 4000;
    let mut prog = vec![
        ins(op::JMP | op::JEQ | op::K, 1, 0, 1),
        ins(op::JMP | op::JA, 0, 0, loads),
    ];
    prog.extend(std::iter::repeat_n(
        ins(op::LD | op::H | op::IND, 0, 0, 20),
        loads as usize,
    ));
    prog.push(ins(op::RET | op::K, 0, 0, 1));
    assert!(matches!(
        translate(&prog, Hook::Tc, Exit::Verdict),
        Err(TranslateError::TooFar(_))
    ));
}
