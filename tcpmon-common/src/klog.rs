//! The kernel log's rate limit (`--kernel-log`, tcpmon-ebpf's klog.rs):
//! what each CPU keeps in `KLOG_BUDGET`, which user space reads for the
//! lines the limit refused.

/// The `log` target of the kernel's lines (aya-log's record carries it).
pub const TARGET: &str = "tcpmon::kernel";

/// Lines each CPU may log per second; beyond, lines are counted, not sent.
pub const LINES_PER_SECOND: u32 = 100;

/// One CPU's budget: the second (CLOCK_MONOTONIC, whole seconds) it counts
/// lines in, how many it sent in it, and how many it refused since the
/// programs were loaded.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Budget {
    pub second: u64,
    pub lines: u32,
    pub dropped: u32,
}

const _: () = assert!(core::mem::size_of::<Budget>() == 16);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C), a u64 then two u32: no padding (size asserted above).
    unsafe impl aya::Pod for super::Budget {}
}
