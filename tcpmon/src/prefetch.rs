//! A cache hint for the replay path, which touches a new flow and new file
//! bytes with nearly every packet: asking for them early hides memory waits.

/// Asks the CPU to bring the cache line at `p` closer; a no-op elsewhere.
#[inline(always)]
pub(crate) fn prefetch(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint; it never faults, whatever the address.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}
