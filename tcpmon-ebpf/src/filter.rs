//! The filter expression, in the kernel. User space translates libpcap's
//! classic BPF for it into eBPF (tcpmon's `filter::translate`) and loads the
//! translation as a program of its own per hook, at entry 0 of `FILTER_TC`
//! / `FILTER_XDP`. Loaded with a filter, the hooks tail-call it before
//! anything else; it counts a packet it rejects (`Counter::Filtered`) and
//! tail-calls one it keeps into `tcpmon_tc_rest` / `tcpmon_xdp_rest`
//! through `REST_TC` / `REST_XDP`. So a rejected packet costs the
//! translation's instructions it runs through and touches no flow.
//!
//! Without a filter the loader leaves `FILTER_ON` at 0; it is read-only to
//! the programs, so the verifier prunes this path and the hooks cost what
//! they cost before filters existed.

use aya_ebpf::{EbpfContext, macros::map, maps::ProgramArray};
use tcpmon_common::Counter;

use super::klog::klog;

/// Set by the loader when a filter is given.
#[unsafe(no_mangle)]
static FILTER_ON: u8 = 0;

/// The translated filter of each hook (one map per program type, as the
/// kernel wants).
#[map]
pub static FILTER_TC: ProgramArray = ProgramArray::with_max_entries(1, 0);
#[map]
pub static FILTER_XDP: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// Where the filter goes on with a packet it kept: entry 0 holds
/// `tcpmon_tc_rest` / `tcpmon_xdp_rest` (the loader puts them there).
#[map]
pub static REST_TC: ProgramArray = ProgramArray::with_max_entries(1, 0);
#[map]
pub static REST_XDP: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// Whether a filter was given.
#[inline(always)]
pub fn on() -> bool {
    super::setting(&FILTER_ON) != 0
}

/// Hands `ctx`'s packet to the filter in `filter` (`FILTER_TC` or
/// `FILTER_XDP`, of `ctx`'s program type). A tail call does not return; if
/// it does, the array was empty: the packet is counted as untracked, never
/// silently lost.
#[inline(always)]
pub fn screen<C: EbpfContext>(ctx: &C, filter: &ProgramArray) {
    // SAFETY: a tail call with the calling program's own context; `filter`
    // holds programs of its type.
    unsafe { filter.tail_call(ctx, 0) };
    super::count(Counter::Untracked);
    klog!(
        Warn,
        "packet not tracked: the tail call into the filter failed (its program array is empty)"
    );
}

/// With `--kernel-log debug` or above, the translation hands a packet it
/// rejected on through these (entry 0: `tcpmon_tc_rejected` /
/// `tcpmon_xdp_rejected`, loaded only then) instead of counting it itself;
/// below, the translation has no such path at all.
#[map]
pub static REJECTED_TC: ProgramArray = ProgramArray::with_max_entries(1, 0);
#[map]
pub static REJECTED_XDP: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// In `tcpmon_tc_rest` / `tcpmon_xdp_rest`: the filter kept a packet of
/// `len` bytes.
#[inline(always)]
pub fn kept(len: u32) {
    klog!(Debug, "filter kept a packet of " {len} " bytes");
}

/// In `tcpmon_tc_rejected` / `tcpmon_xdp_rejected`: the filter rejected a
/// packet of `len` bytes; counted here, as the translation would have.
#[inline(always)]
pub fn rejected(len: u32) {
    super::count(Counter::Filtered);
    klog!(Debug, "filter rejected a packet of " {len} " bytes");
}
