//! How user space learns which flow records changed, so that each tick it
//! reads those and not every record the kernel keeps.
//!
//! User space numbers its reads (epochs, from 1) and writes the current one
//! into the kernel's one-entry `EPOCH` array before each read. Whenever the
//! kernel changes a record in its flow map, it compares the record's
//! `epoch` with the current one; the first change in an epoch stores the
//! epoch in the record and pushes a `Change` with the key into the
//! `CHANGES` ring buffer. Later changes in the same epoch push nothing, so
//! the ring carries at most one entry per changed flow and tick, and a data
//! packet pays one array load and a compare (the array lookup is inlined
//! by the verifier).
//!
//! A record changed in the new epoch before user space read it is read with
//! that change, but a later change in the same epoch pushes nothing: so
//! user space reads the keys that came with the current epoch again at the
//! next tick. What a CPU's cache slot counts changes no record until the
//! slot is folded back (at the latest `CACHE_FLUSH_NS` later, on the flow's
//! next segment); user space reads the slots on every tick and treats a
//! slot that moved as a change of its flow. A full ring costs a push:
//! `Counter::ChangesLost` says so, and user space then reads every record.

use crate::flow::FlowKey;

/// One entry of the `CHANGES` ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Change {
    pub key: FlowKey,
    /// The epoch of the change.
    pub epoch: u32,
    pub _pad: u32,
}

const _: () = assert!(core::mem::size_of::<Change>() == 48);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C), the Pod key and two u32s, no padding (size asserted).
    unsafe impl bytemuck::Zeroable for super::Change {}
    unsafe impl bytemuck::Pod for super::Change {}
}
