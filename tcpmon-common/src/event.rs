//! What the kernel tells user space through the ring buffer: never one event
//! per data packet, only the moments a connection's story changes.

use crate::flow::{FlowKey, FlowRecord, State};

#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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
    pub fn from_u8(v: u8) -> Option<EventKind> {
        Some(match v {
            1 => EventKind::Opened,
            2 => EventKind::SynAck,
            3 => EventKind::SynDup,
            4 => EventKind::SynAckDup,
            5 => EventKind::Established,
            6 => EventKind::Closing,
            7 => EventKind::Closed,
            8 => EventKind::Reset,
            9 => EventKind::Superseded,
            10 => EventKind::Unreach,
            _ => return None,
        })
    }

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
    /// `EventKind` as u8.
    pub kind: u8,
    pub _pad: [u8; 7],
    pub rec: FlowRecord,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C), integer fields only, explicit padding (size asserted).
    unsafe impl bytemuck::Zeroable for super::Event {}
    unsafe impl bytemuck::Pod for super::Event {}
}

const _: () = assert!(core::mem::size_of::<Event>() == 184);
