//! Reading the kernel's bytes back as typed values. The enum fields
//! (`FlowRecord::state` and `client_how`, `Event::kind`) hold only their
//! variants, so bytes from a map or the ring buffer are checked before they
//! become a record or an event: an object built from other types than this
//! build of user space fails here, naming the field, instead of passing for
//! a record in state NONE.

use bytemuck::{CheckedBitPattern, NoUninit};

/// A byte the kernel wrote into an enum field that names none of its
/// variants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnknownValue {
    pub field: &'static str,
    pub value: u8,
}

impl core::fmt::Display for UnknownValue {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "the kernel wrote {} into `{}`, which names no value this build of tcpmon knows: \
             the eBPF object was built from other types (rebuild it with `cargo xtask build-ebpf`)",
            self.value, self.field
        )
    }
}

impl core::error::Error for UnknownValue {}

/// A type whose bytes the kernel writes, with the field that makes a bit
/// pattern invalid named (bytemuck's `CheckedBitPattern` says only that
/// one is).
pub trait Checked: CheckedBitPattern {
    /// The first field of `bits` that holds no value of its type; `None`
    /// exactly when `is_valid_bit_pattern` holds.
    fn unknown(bits: &Self::Bits) -> Option<UnknownValue>;

    /// Clears what the kernel keeps in a value for itself alone
    /// (`flow::bits::CACHED`).
    fn settle(&mut self) {}
}

/// `bits` as a `T`, once checked.
pub fn decode<T: Checked>(bits: T::Bits) -> Result<T, UnknownValue>
where
    T::Bits: NoUninit,
{
    match T::unknown(&bits) {
        Some(unknown) => Err(unknown),
        None => {
            // Cannot panic: the check above is `is_valid_bit_pattern`.
            let mut value: T = bytemuck::checked::cast(bits);
            value.settle();
            Ok(value)
        }
    }
}

/// Whether the byte at `at` of `bytes` is an invalid `T`, for the `Checked`
/// impls.
pub(crate) fn unknown_byte<T: CheckedBitPattern<Bits = u8>>(
    field: &'static str,
    bytes: &[u8],
    at: usize,
) -> Option<UnknownValue> {
    let value = bytes[at];
    (!T::is_valid_bit_pattern(&value)).then_some(UnknownValue { field, value })
}

#[cfg(test)]
mod tests {
    use crate::{ClientHow, Event, EventKind, FlowKey, FlowRecord, State};

    use super::*;

    #[test]
    fn records_with_known_values_decode_unchanged() {
        let mut rec = FlowRecord::EMPTY;
        rec.state = State::Reset;
        rec.client_how = ClientHow::Guessed;
        rec.packets = [3, 4];
        let bits: crate::FlowRecordBits = bytemuck::cast(rec);
        assert_eq!(decode::<FlowRecord>(bits), Ok(rec));
    }

    #[test]
    fn the_kernels_own_bit_is_cleared() {
        let mut rec = FlowRecord::EMPTY;
        rec.bits = crate::flow::bits::CACHED | crate::flow::bits::seq_valid(1);
        let bits: crate::FlowRecordBits = bytemuck::cast(rec);
        let read = decode::<FlowRecord>(bits).expect("a record");
        assert_eq!(read.bits, crate::flow::bits::seq_valid(1));
        let event = Event {
            key: FlowKey::default(),
            kind: EventKind::Unreach,
            _pad: [0; 7],
            rec,
        };
        let bits: crate::EventBits = bytemuck::cast(event);
        assert_eq!(decode::<Event>(bits).map(|e| e.rec), Ok(read));
    }

    #[test]
    fn unknown_values_are_named() {
        let state_at = core::mem::offset_of!(FlowRecord, state);
        let how_at = core::mem::offset_of!(FlowRecord, client_how);
        let mut bits: crate::FlowRecordBits = bytemuck::cast(FlowRecord::EMPTY);
        bytemuck::bytes_of_mut(&mut bits)[how_at] = 4;
        assert_eq!(
            decode::<FlowRecord>(bits),
            Err(UnknownValue {
                field: "client_how",
                value: 4
            })
        );
        bytemuck::bytes_of_mut(&mut bits)[state_at] = 7;
        assert_eq!(
            decode::<FlowRecord>(bits).map_err(|u| u.field),
            Err("state")
        );

        let event = Event {
            key: FlowKey::default(),
            kind: EventKind::Unreach,
            _pad: [0; 7],
            rec: FlowRecord::EMPTY,
        };
        let mut bits: crate::EventBits = bytemuck::cast(event);
        assert_eq!(
            decode::<Event>(bits).map(|e| e.kind),
            Ok(EventKind::Unreach)
        );
        let kind_at = core::mem::offset_of!(Event, kind);
        bytemuck::bytes_of_mut(&mut bits)[kind_at] = 0;
        assert_eq!(
            decode::<Event>(bits).map(|e| e.kind),
            Err(UnknownValue {
                field: "kind",
                value: 0
            })
        );
        bytemuck::bytes_of_mut(&mut bits)[kind_at] = 1;
        bytemuck::bytes_of_mut(&mut bits)[core::mem::offset_of!(Event, rec) + state_at] = 9;
        assert_eq!(
            decode::<Event>(bits).map(|e| e.kind).map_err(|u| u.field),
            Err("state")
        );
    }
}
