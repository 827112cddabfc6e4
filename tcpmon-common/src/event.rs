//! What the kernel tells user space through the ring buffer: never one event
//! per data packet, only the moments a connection's story changes.

use crate::flow::{FlowKey, FlowRecord, State};

#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(
    feature = "user",
    derive(bytemuck::NoUninit, bytemuck::CheckedBitPattern)
)]
pub enum EventKind {
    /// First segment of a connection (see `FlowRecord::client_how`).
    Opened = 1,
    /// The server's SYN+ACK moved the handshake on.
    SynAck = 2,
    /// A retransmitted SYN (same sequence number).
    SynDup = 3,
    /// A retransmitted SYN+ACK (same sequence number).
    SynAckDup = 4,
    Established = 5,
    Closing = 6,
    Closed = 7,
    Reset = 8,
    /// A new connection took over this 4-tuple; the record is the old
    /// connection's final state.
    Superseded = 9,
    /// An ICMP or ICMPv6 destination-unreachable quoted this connection's
    /// tuple; the record is the connection's, unchanged by the ICMP packet.
    Unreach = 10,
}

impl EventKind {
    /// The event announcing that a record entered `state`.
    pub(crate) fn entering(state: State) -> EventKind {
        match state {
            State::SynAckAck => EventKind::SynAck,
            State::Established => EventKind::Established,
            State::Closing => EventKind::Closing,
            State::Closed => EventKind::Closed,
            State::Reset => EventKind::Reset,
            State::None | State::SynSent => EventKind::Opened,
        }
    }
}

/// One ring-buffer entry: the key, the kind, and the record after the change.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Event {
    pub key: FlowKey,
    pub kind: EventKind,
    pub _pad: [u8; 7],
    pub rec: FlowRecord,
}

#[cfg(feature = "user")]
mod pod {
    use super::{Event, EventKind};
    use crate::decode::{Checked, UnknownValue, unknown_byte};
    use crate::flow::record_unknown;

    // SAFETY: repr(C), explicit padding (size asserted), integer fields and
    // repr(u8) enums; `kind` has no variant 0, so zero bytes are no event
    // (no `Zeroable`), and the ring buffer's bytes go through `Checked`.
    unsafe impl bytemuck::NoUninit for Event {}
    unsafe impl bytemuck::CheckedBitPattern for Event {
        type Bits = EventBits;
        fn is_valid_bit_pattern(bits: &EventBits) -> bool {
            Event::unknown(bits).is_none()
        }
    }

    /// An `Event`'s bytes as the kernel wrote them, unchecked.
    pub type EventBits = [u64; core::mem::size_of::<Event>() / 8];

    impl Checked for Event {
        fn unknown(bits: &EventBits) -> Option<UnknownValue> {
            let bytes = bytemuck::bytes_of(bits);
            unknown_byte::<EventKind>("kind", bytes, core::mem::offset_of!(Event, kind))
                .or_else(|| record_unknown(&bytes[core::mem::offset_of!(Event, rec)..]))
        }

        fn settle(&mut self) {
            self.rec.settle();
        }
    }
}

#[cfg(feature = "user")]
pub use pod::EventBits;

const _: () = assert!(core::mem::size_of::<Event>() == 184);
