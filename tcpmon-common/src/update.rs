//! The update rule: one TCP segment applied to one flow record. The kernel
//! runs it on the value inside its LRU map, the pcap backend on a user-space
//! map, so both produce the same records and the same events.
//!
//! States follow tcptrack: SYN_SENT after a SYN, SYN|ACK-ACK after the
//! SYN+ACK, ESTABLISHED on the client's ACK, CLOSING on a FIN, CLOSED once
//! both FINs are acknowledged, RESET on an RST in any state but CLOSED.
//! FINs and their ACKs are matched by direction (address and port), never by
//! address alone, so two endpoints on one host (loopback) work. A SYN or
//! SYN+ACK on a tuple that has a connection continues its handshake, is a
//! stray packet of it, or starts a new connection: see `syn_role`.

use crate::event::EventKind;
use crate::flow::{ClientHow, FlowRecord, State, bits};
use crate::tcp::{Segment, flags, seq_before};

/// What applying a segment asks of the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Update {
    Nothing,
    Emit(EventKind),
    /// The segment opens a new connection on this 4-tuple. The record was not
    /// touched: the caller reports it as finished, empties it and applies the
    /// segment again (`apply` does exactly that).
    Restart,
}

/// Applies `seg` to `rec` and reports the event, if any, to `emit` along
/// with the record it concerns. At most two calls: `Superseded` with the old
/// connection's final record, then the new connection's event.
#[inline(always)]
pub fn apply<F: FnMut(EventKind, &FlowRecord)>(rec: &mut FlowRecord, seg: &Segment, mut emit: F) {
    let mut outcome = update(rec, seg);
    if outcome == Update::Restart {
        emit(EventKind::Superseded, rec);
        *rec = FlowRecord::EMPTY;
        outcome = update(rec, seg);
    }
    if let Update::Emit(kind) = outcome {
        emit(kind, rec);
    }
}

/// Flags that can move a record's state or its handshake bookkeeping.
const SHAPING: u8 = flags::SYN | flags::FIN | flags::RST;

/// The common case: a segment without SYN, FIN or RST on an ESTABLISHED
/// record with no FIN outstanding. Applying it moves only the counters,
/// `last_ns`, `flags_seen`, `vlan` and the sequence tracking, and never
/// emits an event; `update` then takes a short path with the same result
/// as the general one (tested below). Public so that a backend can pick a
/// cheaper clock for these segments, whose time only lands in `last_ns`.
#[inline(always)]
pub fn is_steady(rec: &FlowRecord, seg_flags: u8) -> bool {
    seg_flags & SHAPING == 0
        && rec.state == State::Established
        && rec.bits & (bits::fin(0) | bits::fin(1)) == 0
}

/// Applies `seg` to `rec`; see `Update` for what the caller must do next.
#[inline(always)]
pub fn update(rec: &mut FlowRecord, seg: &Segment) -> Update {
    if is_steady(rec, seg.flags) {
        steady(rec, seg);
        Update::Nothing
    } else {
        general(rec, seg)
    }
}

/// `general` restricted to what it does when `is_steady` holds.
#[inline(always)]
fn steady(rec: &mut FlowRecord, seg: &Segment) {
    steady_with::<Shared>(rec, seg);
}

/// A steady segment (`is_steady`) applied to a cache slot's shadow (see
/// `cache` and `shadow`): the steady rule, with plain adds and stores, as
/// only its own CPU writes a slot.
#[inline(always)]
pub fn shadowed(shadow: &mut FlowRecord, seg: &Segment) {
    steady_with::<Own>(shadow, seg);
}

#[inline(always)]
fn steady_with<M: Memory>(rec: &mut FlowRecord, seg: &Segment) {
    let d = (seg.dir & 1) as usize;
    M::add(&mut rec.packets[d], seg.wire_packets as u64);
    M::add(&mut rec.bytes[d], seg.payload_len as u64);
    rec.last_ns = seg.ts_ns;
    rec.flags_seen[d] |= seg.flags;
    rec.vlan[d] = seg.vlan;
    track_sequence::<M>(rec, seg, d, false, false);
}

/// How the rule writes what CPUs may update at once: a record in the
/// kernel's map or a cache index (`Shared`), or memory only one CPU writes
/// (`Own`: a cache slot's shadow, or any record in user space).
pub trait Memory {
    fn add(counter: &mut u64, n: u64);
    fn add32(counter: &mut u32, n: u32);
    /// Raises `marks[d]` to `hi` unless it is already at or after it.
    fn raise(marks: &mut [u32; 2], d: usize, hi: u32);
}

pub struct Own;

impl Memory for Own {
    #[inline(always)]
    fn add(counter: &mut u64, n: u64) {
        *counter += n;
    }

    #[inline(always)]
    fn add32(counter: &mut u32, n: u32) {
        *counter += n;
    }

    #[inline(always)]
    fn raise(marks: &mut [u32; 2], d: usize, hi: u32) {
        if seq_before(marks[d], hi) {
            marks[d] = hi;
        }
    }
}

/// In the kernel one flow's record is updated from several CPUs at once:
/// its RX and TX run on different ones, and so can one direction's
/// segments (two threads writing one socket, a sender's process and the
/// softirq that sends what incoming ACKs opened, two CPUs folding their
/// cache slots). So counters are atomic adds there, else concurrent packets
/// would be lost from the count, and a sequence mark moves forward only by
/// compare-and-exchange, else a CPU that read an older mark could store it
/// back over a newer one and resends below the true mark would then pass as
/// new data. State changes stay plain stores: handshake and teardown
/// segments are a round trip apart.
pub struct Shared;

/// Set to 0 by the loader on kernels before 5.12, whose verifier refuses
/// every atomic operation but add ("BPF_STX uses reserved fields"). A
/// read-only global like the programs' other switches: the verifier prunes
/// the branch not taken, so the object loads on both. Without it, marks and
/// bits are plain stores: two CPUs racing on one mark can lower it (a
/// retransmission missed), two acknowledging both FINs at once can leave
/// one bit unset (the close seen at the next segment).
#[cfg(target_arch = "bpf")]
#[unsafe(no_mangle)]
static FULL_ATOMICS: u8 = 1;

/// Whether the kernel has compare-and-exchange and atomic OR (see
/// `FULL_ATOMICS`).
#[cfg(target_arch = "bpf")]
#[inline(always)]
fn full_atomics() -> bool {
    // SAFETY: a read of a global nothing writes after load; volatile, so
    // that the compiler does not fold in the default.
    unsafe { core::ptr::read_volatile(&FULL_ATOMICS) != 0 }
}

impl Memory for Shared {
    #[inline(always)]
    fn add(counter: &mut u64, n: u64) {
        // The BPF target has no compare-and-swap in Rust's eyes, so
        // `fetch_add` is not offered there, but LLVM lowers this intrinsic
        // to BPF's atomic add.
        #[cfg(target_arch = "bpf")]
        {
            use core::intrinsics::{AtomicOrdering, atomic_xadd};
            // SAFETY: `counter` is a valid, aligned u64 inside the map value.
            unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(counter, n) };
        }
        #[cfg(not(target_arch = "bpf"))]
        Own::add(counter, n);
    }

    #[inline(always)]
    fn add32(counter: &mut u32, n: u32) {
        #[cfg(target_arch = "bpf")]
        {
            use core::intrinsics::{AtomicOrdering, atomic_xadd};
            // SAFETY: as in `add`, for an aligned u32 (BPF's 32-bit XADD).
            unsafe { atomic_xadd::<u32, u32, { AtomicOrdering::Relaxed }>(counter, n) };
        }
        #[cfg(not(target_arch = "bpf"))]
        Own::add32(counter, n);
    }

    /// Compare-and-exchange on the 8-byte word holding both directions'
    /// marks (BPF has 32-bit CAS only with ALU32, which we do not build
    /// for). A failed exchange means another CPU wrote either mark
    /// meanwhile: try again on what it wrote. Bounded, as the verifier
    /// requires: four CPUs moving one flow's marks in the same few
    /// nanoseconds, four times over, would leave this one where they put it.
    #[inline(always)]
    fn raise(marks: &mut [u32; 2], d: usize, hi: u32) {
        #[cfg(target_arch = "bpf")]
        if full_atomics() {
            use core::intrinsics::{AtomicOrdering, atomic_cxchg};
            const _: () = assert!(cfg!(target_endian = "little"));
            let word = marks.as_mut_ptr().cast::<u64>();
            let shift = (d as u64 & 1) * 32;
            // SAFETY: `marks` is 8-aligned wherever it is shared (asserted
            // at `MARKS_ALIGNED`); a volatile read, as other CPUs write it.
            let mut old = unsafe { core::ptr::read_volatile(word) };
            for _ in 0..4 {
                if !seq_before((old >> shift) as u32, hi) {
                    return;
                }
                let new = (old & !(0xffff_ffff << shift)) | (hi as u64) << shift;
                // SAFETY: as above; a full barrier.
                let (seen, done) = unsafe {
                    atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(
                        word, old, new,
                    )
                };
                if done {
                    return;
                }
                old = seen;
            }
            return;
        }
        Own::raise(marks, d, hi);
    }
}

/// Shared marks are exchanged as one u64: they must sit on an 8-byte
/// boundary in the record and in the cache index.
const MARKS_ALIGNED: () = assert!(
    core::mem::offset_of!(FlowRecord, seq_hi) % 8 == 0
        && core::mem::offset_of!(crate::cache::CacheIndex, seq_hi) % 8 == 0
        && core::mem::align_of::<FlowRecord>() >= 8
        && core::mem::align_of::<crate::cache::CacheIndex>() >= 8
);
#[allow(clippy::let_unit_value)]
const _: () = MARKS_ALIGNED;

/// A steady record's shadow for a cache slot: a copy with its counters
/// zeroed, so that the steady rule finds the state, sequence marks and
/// times it would find in the record, and the counters say what the record
/// does not have yet.
#[inline(always)]
pub fn shadow(rec: &FlowRecord) -> FlowRecord {
    let mut s = *rec;
    s.packets = [0; 2];
    s.bytes = [0; 2];
    s.retransmits = [0; 2];
    s
}

/// Folds a shadow taken from `rec` (`shadow`, then `shadowed` segments)
/// into `rec`, which may have moved on meanwhile through other CPUs: the
/// counters add up, the latest time and the highest sequence mark win.
#[inline(always)]
pub fn absorb(rec: &mut FlowRecord, shadow: &FlowRecord) {
    absorb_side(rec, shadow, 0);
    absorb_side(rec, shadow, 1);
    if shadow.last_ns > rec.last_ns {
        rec.last_ns = shadow.last_ns;
    }
}

#[inline(always)]
fn absorb_side(rec: &mut FlowRecord, shadow: &FlowRecord, d: usize) {
    Shared::add(&mut rec.packets[d], shadow.packets[d]);
    Shared::add(&mut rec.bytes[d], shadow.bytes[d]);
    Shared::add32(&mut rec.retransmits[d], shadow.retransmits[d]);
    rec.flags_seen[d] |= shadow.flags_seen[d];
    if shadow.packets[d] != 0 {
        rec.vlan[d] = shadow.vlan[d];
    }
    if shadow.bits & bits::seq_valid(d) != 0 {
        raise_mark::<Shared>(rec, d, shadow.seq_hi[d]);
    }
}

/// Raises `rec`'s sequence mark of direction `d` to `hi` if `rec` has none
/// or an earlier one: wherever a copy of a flow's mark comes from, the mark
/// only moves forward.
#[inline(always)]
pub fn raise_mark<M: Memory>(rec: &mut FlowRecord, d: usize, hi: u32) {
    let valid = bits::seq_valid(d);
    if rec.bits & valid == 0 {
        rec.seq_hi[d] = hi;
        set_bit(rec, valid);
    } else {
        M::raise(&mut rec.seq_hi, d, hi);
    }
}

/// Every case, the steady one included.
#[inline(always)]
fn general(rec: &mut FlowRecord, seg: &Segment) -> Update {
    let d = (seg.dir & 1) as usize;
    let other = d ^ 1;
    let syn = seg.flags & flags::SYN != 0;
    let ack = seg.flags & flags::ACK != 0;
    let fin = seg.flags & flags::FIN != 0;
    let rst = seg.flags & flags::RST != 0;
    let from_client = d == rec.client as usize;
    let opening = rec.state == State::None;

    let mut stray = false;
    if syn && !opening {
        match syn_role(rec, seg, d, ack) {
            SynRole::New => return Update::Restart,
            SynRole::Stray => stray = true,
            SynRole::Handshake => {}
        }
    }

    // Counters, the same for every segment.
    Shared::add(&mut rec.packets[d], seg.wire_packets as u64);
    Shared::add(&mut rec.bytes[d], seg.payload_len as u64);
    if opening {
        rec.first_ns = seg.ts_ns;
    }
    rec.last_ns = seg.ts_ns;
    rec.flags_seen[d] |= seg.flags;
    rec.vlan[d] = seg.vlan;
    if stray {
        // The receiver drops it (RFC 9293, 3.10.7.4), so it moves nothing:
        // its ISN is not this direction's sequence space, and tracking it
        // would make the data that follows look retransmitted.
        return Update::Nothing;
    }
    track_sequence::<Shared>(rec, seg, d, syn, fin);

    let before = rec.state;
    let mut dup = None;

    // Handshake.
    if opening {
        open(rec, seg, d, syn, ack);
    } else if syn && !ack {
        if from_client {
            rec.syn_count += 1;
            // A late duplicate after the handshake completed did not restart
            // it: the handshake RTT stays measured from the SYN it answered.
            if rec.established_ns == 0 {
                rec.syn_last_ns = seg.ts_ns;
            }
            dup = Some(EventKind::SynDup);
        } else {
            set_bit(rec, bits::SIMULTANEOUS);
        }
    } else if syn && ack {
        if rec.state == State::SynSent {
            rec.state = State::SynAckAck;
            rec.synack_first_ns = seg.ts_ns;
            rec.synack_seq = seg.seq;
            rec.synack_count = 1;
        } else if rec.synack_count > 0 && seg.seq == rec.synack_seq && d == rec.server() {
            rec.synack_count += 1;
            dup = Some(EventKind::SynAckDup);
        }
    } else if ack
        && !rst
        && rec.state == State::SynAckAck
        && (from_client || rec.bits & bits::SIMULTANEOUS != 0)
    {
        rec.state = State::Established;
        rec.established_ns = seg.ts_ns;
    }

    // Teardown.
    if ack && rec.bits & bits::fin(other) != 0 && !seq_before(seg.ack, rec.fin_seq[other]) {
        set_bit(rec, bits::fin_acked(other));
    }
    let state = rec.state;
    if rst {
        if state != State::Closed {
            rec.state = State::Reset;
        }
    } else if fin
        && (state == State::SynSent || state == State::SynAckAck || state == State::Established)
    {
        rec.state = State::Closing;
    }
    let both_acked = bits::fin_acked(0) | bits::fin_acked(1);
    if rec.state == State::Closing && rec.bits & both_acked == both_acked {
        rec.state = State::Closed;
    }

    if opening {
        Update::Emit(EventKind::Opened)
    } else if rec.state != before {
        Update::Emit(EventKind::entering(rec.state))
    } else if let Some(kind) = dup {
        Update::Emit(kind)
    } else {
        Update::Nothing
    }
}

/// What a segment with SYN is to a record that holds a connection.
#[derive(Clone, Copy, PartialEq, Eq)]
enum SynRole {
    /// Part of this connection's opening: the answer to its SYN, a
    /// retransmission (same ISN), the other side of a simultaneous open.
    Handshake,
    /// Of this connection but opening nothing (RFC 9293, 3.10.7.4: in a
    /// synchronized state an unexpected SYN is answered with an ACK and
    /// dropped): a packet of the connection, and nothing more.
    Stray,
    /// Opens a new connection on the 4-tuple (`Update::Restart`).
    New,
}

/// The rule for SYN and SYN+ACK on a 4-tuple that already has a connection.
/// A segment is first recognised by the ISNs the record knows; the state
/// decides for any other.
///
/// Recognised in every state:
/// - the client's SYN with its ISN (`syn_seq`): a retransmission
///   (`syn_retransmits`), also after an RST or a close, as tshark keeps it
///   in the same stream;
/// - the server's SYN with its ISN (`synack_seq`): stray;
/// - in SYN_SENT, the server's SYN (simultaneous open) and any SYN+ACK (the
///   answer);
/// - a SYN+ACK with the ISN of the first (`synack_seq`), from the server or
///   in a simultaneous open: a retransmission (`synack_retransmits`);
/// - in SYN|ACK-ACK of a simultaneous open, the second SYN+ACK;
/// - a SYN+ACK from the server with another ISN that acknowledges the
///   client's SYN: a second answer to it (another path, a middlebox) that
///   the client does not take, having taken the first: stray.
///
/// Any other SYN or SYN+ACK, by state:
///
/// | state                  | SYN (ISN `s`)                | SYN+ACK (acknowledging `a`)    |
/// |------------------------|------------------------------|--------------------------------|
/// | SYN_SENT, SYN\|ACK-ACK | new: a new attempt           | new                            |
/// | ESTABLISHED, CLOSING   | new if `s` >= sender's `seq_hi`, else stray | new if `a - 1` >= receiver's `seq_hi`, else stray |
/// | CLOSED, RESET          | new                          | new                            |
///
/// (`>=` in sequence-number order; `seq_hi` is one past the highest
/// sequence number the direction used.)
///
/// In ESTABLISHED and CLOSING a SYN starts a new connection only beyond
/// the old connection's sequence space in its direction (or where that
/// direction sent nothing yet), as an endpoint in TIME-WAIT accepts one
/// (RFC 9293, 3.6.1): the capture may have missed the old connection's end.
/// A SYN+ACK is judged by the SYN it answers, its own ISN being the other
/// side's choice. A stray segment counts as a packet (and bytes) of the
/// connection and changes nothing else: no state, no event, no sequence
/// mark, no retransmission.
#[inline(always)]
fn syn_role(rec: &FlowRecord, seg: &Segment, d: usize, ack: bool) -> SynRole {
    let state = rec.state;
    let from_client = d == rec.client as usize;
    let simultaneous = rec.bits & bits::SIMULTANEOUS != 0;
    if !ack {
        let again = from_client && rec.syn_count > 0 && seg.seq == rec.syn_seq;
        let crossing = state == State::SynSent && !from_client;
        if again || crossing {
            return SynRole::Handshake;
        }
        if !from_client && rec.synack_count > 0 && seg.seq == rec.synack_seq {
            return SynRole::Stray;
        }
    } else {
        let answer = state == State::SynSent;
        let again =
            rec.synack_count > 0 && seg.seq == rec.synack_seq && (!from_client || simultaneous);
        let crossing = simultaneous && state == State::SynAckAck;
        if answer || again || crossing {
            return SynRole::Handshake;
        }
        if !from_client && rec.syn_count > 0 && seg.ack == rec.syn_seq.wrapping_add(1) {
            return SynRole::Stray;
        }
    }
    if state == State::Established || state == State::Closing {
        // The direction whose new ISN this segment carries or answers.
        let (side, isn) = if ack {
            (d ^ 1, seg.ack.wrapping_sub(1))
        } else {
            (d, seg.seq)
        };
        let known = rec.bits & bits::seq_valid(side) != 0;
        if known && seq_before(isn, rec.seq_hi[side]) {
            return SynRole::Stray;
        }
    }
    SynRole::New
}

/// The first segment of a connection decides who the client is.
#[inline(always)]
fn open(rec: &mut FlowRecord, seg: &Segment, d: usize, syn: bool, ack: bool) {
    if syn && !ack {
        rec.client = d as u8;
        rec.client_how = ClientHow::Syn;
        rec.state = State::SynSent;
        rec.syn_count = 1;
        rec.syn_seq = seg.seq;
        rec.syn_first_ns = seg.ts_ns;
        rec.syn_last_ns = seg.ts_ns;
    } else if syn {
        rec.client = (d ^ 1) as u8;
        rec.client_how = ClientHow::SynAck;
        rec.state = State::SynAckAck;
        rec.synack_count = 1;
        rec.synack_seq = seg.seq;
        rec.synack_first_ns = seg.ts_ns;
    } else {
        rec.client = seg.guess & 1;
        rec.client_how = ClientHow::Guessed;
        // Mid-stream: an RST or FIN moves it on in the teardown step.
        rec.state = State::Established;
    }
}

/// `bits` is shared by both directions, which the kernel may apply on two
/// CPUs at once: when both ends close together, one CPU sets the server's
/// FIN bit while the other sets the client's. A plain `|=` rewrites the
/// whole byte, so one of the two bits could be lost and the connection
/// would stay CLOSING forever (seen on 2-CPU guests). In the kernel the bit
/// is therefore set with an atomic OR on the aligned 64-bit word that holds
/// the byte (BPF has 32-bit atomics only with ALU32, which we do not build
/// for); the OR is a full barrier, so of two CPUs acknowledging the two FINs
/// at once, the second one reads both bits and closes the connection.
/// Writing only when a bit is new keeps the data path off `bits` altogether.
#[inline(always)]
pub(crate) fn set_bit(rec: &mut FlowRecord, bit: u8) {
    if rec.bits & bit != 0 {
        return;
    }
    #[cfg(target_arch = "bpf")]
    if full_atomics() {
        use core::intrinsics::{AtomicOrdering, atomic_or};
        const OFF: usize = core::mem::offset_of!(FlowRecord, bits);
        const WORD: usize = OFF & !7;
        const _: () = assert!(cfg!(target_endian = "little"));
        let word = (rec as *mut FlowRecord).cast::<u8>().wrapping_add(WORD);
        // SAFETY: an 8-aligned u64 inside the record (the record is 8-aligned
        // and WORD a multiple of 8); OR-ing zeros into its other bytes leaves
        // them as any concurrent writer left them.
        unsafe {
            atomic_or::<u64, u64, { AtomicOrdering::SeqCst }>(
                word.cast::<u64>(),
                (bit as u64) << ((OFF - WORD) * 8),
            )
        };
        return;
    }
    rec.bits |= bit;
}

/// Retransmission detection and FIN bookkeeping on the sequence space of
/// direction `d`. SYN and FIN each occupy one sequence number. A
/// retransmission is counted in wire segments, as the sender's kernel
/// counts them (`TcpRetransSegs`): a resent GSO super-packet is as many
/// retransmissions as it has segments (a sender resends whole packets of
/// old data; counting only the segments below the mark made the verifier
/// walk twice as many instructions, for super-packets that GRO on a
/// receiver could, rarely, merge from a resend and the new data after it).
#[inline(always)]
fn track_sequence<M: Memory>(rec: &mut FlowRecord, seg: &Segment, d: usize, syn: bool, fin: bool) {
    let data_start = seg.seq.wrapping_add(syn as u32);
    let end = data_start
        .wrapping_add(seg.payload_len)
        .wrapping_add(fin as u32);
    let valid = rec.bits & bits::seq_valid(d) != 0;
    let hi = rec.seq_hi[d];
    if valid && seg.payload_len > 0 && seq_before(data_start, hi) {
        M::add32(&mut rec.retransmits[d], seg.wire_packets);
    }
    if !valid || seq_before(hi, end) {
        raise_mark::<M>(rec, d, end);
    }
    if fin {
        rec.fin_seq[d] = end;
        set_bit(rec, bits::fin(d));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tcp::flags::*;

    /// A conversation between endpoint 0 and endpoint 1 of some key; the
    /// guessed client (higher port) is endpoint 1 unless a test says otherwise.
    struct Conv {
        rec: FlowRecord,
        t: u64,
        events: [Option<EventKind>; 2],
    }

    impl Conv {
        fn new() -> Conv {
            Conv {
                rec: FlowRecord::EMPTY,
                t: 1_000,
                events: [None; 2],
            }
        }

        fn seg(&mut self, dir: u8, fl: u8, seq: u32, ack: u32, len: u32) -> &mut Conv {
            self.t += 1_000;
            let seg = Segment {
                ts_ns: self.t,
                seq,
                ack,
                payload_len: len,
                wire_packets: 1,
                flags: fl,
                dir,
                guess: 1,
                vlan: 7,
                ..Segment::default()
            };
            let mut events = [None; 2];
            let mut n = 0;
            apply(&mut self.rec, &seg, |k, _| {
                events[n] = Some(k);
                n += 1;
            });
            self.events = events;
            self
        }

        fn state(&self) -> State {
            self.rec.state
        }

        fn event(&self) -> Option<EventKind> {
            self.events[0]
        }

        /// Client 0 (ISN 100) connects to server 1 (ISN 500).
        fn handshake(&mut self) -> &mut Conv {
            self.seg(0, SYN, 100, 0, 0)
                .seg(1, SYN | ACK, 500, 101, 0)
                .seg(0, ACK, 101, 501, 0)
        }
    }

    #[test]
    fn three_way_handshake_walks_the_states() {
        let mut c = Conv::new();
        c.seg(0, SYN, 100, 0, 0);
        assert_eq!(c.state(), State::SynSent);
        assert_eq!(c.event(), Some(EventKind::Opened));
        assert_eq!(c.rec.client, 0);
        assert_eq!(c.rec.client_how, ClientHow::Syn);
        c.seg(1, SYN | ACK, 500, 101, 0);
        assert_eq!(c.state(), State::SynAckAck);
        assert_eq!(c.event(), Some(EventKind::SynAck));
        c.seg(0, ACK, 101, 501, 0);
        assert_eq!(c.state(), State::Established);
        assert_eq!(c.event(), Some(EventKind::Established));
        assert_eq!(c.rec.syn_count, 1);
        assert_eq!(c.rec.synack_count, 1);
        // SYN at t=2000, ACK at t=4000.
        assert_eq!(c.rec.handshake_rtt_ns(), Some(2_000));
        assert_eq!(c.rec.packets, [2, 1]);
        // Data does not emit events.
        c.seg(0, ACK | PSH, 101, 501, 10);
        assert_eq!(c.event(), None);
        assert_eq!(c.rec.bytes, [10, 0]);
    }

    #[test]
    fn orderly_close_needs_both_fins_acknowledged() {
        let mut c = Conv::new();
        c.handshake().seg(0, FIN | ACK, 101, 501, 0);
        assert_eq!(c.state(), State::Closing);
        assert_eq!(c.event(), Some(EventKind::Closing));
        c.seg(1, ACK, 501, 102, 0);
        assert_eq!(c.state(), State::Closing);
        c.seg(1, FIN | ACK, 501, 102, 0);
        assert_eq!(c.state(), State::Closing);
        c.seg(0, ACK, 102, 502, 0);
        assert_eq!(c.state(), State::Closed);
        assert_eq!(c.event(), Some(EventKind::Closed));
    }

    #[test]
    fn an_ack_short_of_the_fin_does_not_close() {
        let mut c = Conv::new();
        c.handshake()
            .seg(0, FIN | ACK, 101, 501, 0)
            .seg(1, FIN | ACK, 501, 101, 0); // acks data before the FIN only
        assert_eq!(c.state(), State::Closing);
        c.seg(0, ACK, 102, 502, 0);
        assert_eq!(c.state(), State::Closing, "client's FIN still unacked");
        c.seg(1, ACK, 502, 102, 0);
        assert_eq!(c.state(), State::Closed);
    }

    #[test]
    fn fins_match_by_direction_not_address() {
        // Loopback: both endpoints share an address; only the direction
        // (address and port) tells the FINs apart. A FIN and its ACK from
        // the same direction must not close.
        let mut c = Conv::new();
        c.handshake()
            .seg(0, FIN | ACK, 101, 501, 0)
            .seg(0, ACK, 102, 501, 0)
            .seg(0, ACK, 102, 501, 0);
        assert_eq!(c.state(), State::Closing);
        assert_eq!(c.rec.bits & bits::fin_acked(0), 0);
    }

    #[test]
    fn rst_resets_every_state_but_closed() {
        let setups: [&dyn Fn(&mut Conv); 5] = [
            &|c| {
                c.seg(0, SYN, 100, 0, 0);
            },
            &|c| {
                c.seg(0, SYN, 100, 0, 0).seg(1, SYN | ACK, 500, 101, 0);
            },
            &|c| {
                c.handshake();
            },
            &|c| {
                c.handshake().seg(0, FIN | ACK, 101, 501, 0);
            },
            &|c| {
                c.handshake().seg(0, RST, 101, 0, 0);
            },
        ];
        for (i, setup) in setups.iter().enumerate() {
            let mut c = Conv::new();
            setup(&mut c);
            c.seg(1, RST | ACK, 501, 101, 0);
            assert_eq!(c.state(), State::Reset, "setup {i}");
        }
        let mut closed = Conv::new();
        closed
            .handshake()
            .seg(0, FIN | ACK, 101, 501, 0)
            .seg(1, FIN | ACK, 501, 102, 0)
            .seg(0, ACK, 102, 502, 0);
        assert_eq!(closed.state(), State::Closed);
        closed.seg(1, RST, 502, 0, 0);
        assert_eq!(closed.state(), State::Closed);
        assert_eq!(closed.event(), None);
    }

    #[test]
    fn refused_connection_is_reset_with_no_rtt() {
        let mut c = Conv::new();
        c.seg(0, SYN, 100, 0, 0).seg(1, RST | ACK, 0, 101, 0);
        assert_eq!(c.state(), State::Reset);
        assert_eq!(c.event(), Some(EventKind::Reset));
        assert_eq!(c.rec.handshake_rtt_ns(), None);
    }

    #[test]
    fn first_packet_rst_or_fin_is_a_guessed_connection() {
        let mut c = Conv::new();
        c.seg(0, RST, 1, 0, 0);
        assert_eq!(c.state(), State::Reset);
        assert_eq!(c.event(), Some(EventKind::Opened));
        assert_eq!(c.rec.client_how, ClientHow::Guessed);
        let mut c = Conv::new();
        c.seg(0, FIN | ACK, 1, 1, 0);
        assert_eq!(c.state(), State::Closing);
        assert_eq!(c.event(), Some(EventKind::Opened));
    }

    #[test]
    fn retransmitted_syn_and_synack_are_counted() {
        let mut c = Conv::new();
        c.seg(0, SYN, 100, 0, 0).seg(0, SYN, 100, 0, 0);
        assert_eq!(c.event(), Some(EventKind::SynDup));
        assert_eq!(c.rec.syn_count, 2);
        assert_eq!(c.state(), State::SynSent);
        c.seg(1, SYN | ACK, 500, 101, 0)
            .seg(1, SYN | ACK, 500, 101, 0);
        assert_eq!(c.event(), Some(EventKind::SynAckDup));
        assert_eq!(c.rec.synack_count, 2);
        c.seg(0, ACK, 101, 501, 0);
        assert_eq!(c.state(), State::Established);
        // RTT from the last SYN (t=3000) to the ACK (t=6000).
        assert_eq!(c.rec.handshake_rtt_ns(), Some(3_000));
        // The server resends its SYN+ACK after the ACK was lost.
        c.seg(1, SYN | ACK, 500, 101, 0);
        assert_eq!(c.event(), Some(EventKind::SynAckDup));
        assert_eq!(c.state(), State::Established);
        assert_eq!(c.rec.synack_count, 3);
    }

    #[test]
    fn new_syn_on_a_closed_or_reset_tuple_starts_a_new_connection() {
        for reset in [false, true] {
            let mut c = Conv::new();
            c.handshake().seg(0, ACK, 101, 501, 40);
            if reset {
                c.seg(1, RST, 501, 0, 0);
            } else {
                c.seg(0, FIN | ACK, 141, 501, 0)
                    .seg(1, FIN | ACK, 501, 142, 0)
                    .seg(0, ACK, 142, 502, 0);
            }
            let old = c.rec;
            c.seg(0, SYN, 9_000, 0, 0);
            assert_eq!(c.events[0], Some(EventKind::Superseded));
            assert_eq!(c.events[1], Some(EventKind::Opened));
            assert_eq!(c.state(), State::SynSent);
            assert_eq!(c.rec.packets, [1, 0], "new connection counts afresh");
            assert_eq!(c.rec.bytes, [0, 0]);
            assert_ne!(old.packets, c.rec.packets);
        }
    }

    #[test]
    fn a_different_isn_restarts_even_while_syn_sent() {
        let mut c = Conv::new();
        c.seg(0, SYN, 100, 0, 0).seg(0, SYN, 7_777, 0, 0);
        assert_eq!(c.events[0], Some(EventKind::Superseded));
        assert_eq!(c.rec.syn_count, 1);
        assert_eq!(c.rec.syn_seq, 7_777);
    }

    /// What a SYN or SYN+ACK did to the record (see `syn_role`).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Want {
        /// The first segment of a connection.
        Opens,
        /// Part of the handshake, with this event.
        Handshake(Option<EventKind>),
        /// A retransmitted SYN or SYN+ACK (same ISN), counted as one.
        Dup,
        /// A packet of the connection that changes nothing else.
        Stray,
        /// A new connection on the tuple.
        New,
    }

    /// Client 0 (ISN 100) and server 1 (ISN 500) brought to each state;
    /// once established, each sent data: `seq_hi` is [201, 701].
    fn in_state(state: State) -> Conv {
        let mut c = Conv::new();
        if state == State::None {
            return c;
        }
        c.seg(0, SYN, 100, 0, 0);
        if state == State::SynSent {
            return c;
        }
        c.seg(1, SYN | ACK, 500, 101, 0);
        if state == State::SynAckAck {
            return c;
        }
        c.seg(0, ACK, 101, 501, 0)
            .seg(0, ACK | PSH, 101, 501, 100)
            .seg(1, ACK | PSH, 501, 201, 200);
        match state {
            State::Closing => {
                c.seg(0, FIN | ACK, 201, 701, 0);
            }
            State::Closed => {
                c.seg(0, FIN | ACK, 201, 701, 0)
                    .seg(1, FIN | ACK, 701, 202, 0)
                    .seg(0, ACK, 202, 702, 0);
            }
            State::Reset => {
                c.seg(1, RST, 701, 0, 0);
            }
            _ => {}
        }
        assert_eq!(c.state(), state);
        c
    }

    /// Applies one segment to a record in `state` and checks that it did
    /// what `want` says, and nothing more.
    fn check(state: State, (dir, fl, seq, ack): (u8, u8, u32, u32), want: Want) {
        let mut c = in_state(state);
        let before = c.rec;
        c.seg(dir, fl, seq, ack, 0);
        let d = dir as usize;
        // Flags, sender, seq, ack, the state before, the record after.
        let what = (fl, dir, seq, ack, state, c.rec);
        match want {
            Want::Opens => {
                assert_eq!(c.events, [Some(EventKind::Opened), None], "{what:#x?}");
                let client = if fl & ACK == 0 { dir } else { dir ^ 1 };
                assert_eq!(c.rec.client, client, "{what:#x?}");
            }
            Want::Handshake(event) => {
                assert_eq!(c.events, [event, None], "{what:#x?}");
                assert_eq!(c.rec.packets[d], before.packets[d] + 1, "{what:#x?}");
            }
            Want::Dup => {
                let (kind, counts) = match fl & ACK {
                    0 => (
                        EventKind::SynDup,
                        (before.syn_count + 1, before.synack_count),
                    ),
                    _ => (
                        EventKind::SynAckDup,
                        (before.syn_count, before.synack_count + 1),
                    ),
                };
                assert_eq!(c.events, [Some(kind), None], "{what:#x?}");
                assert_eq!((c.rec.syn_count, c.rec.synack_count), counts, "{what:#x?}");
                assert_eq!(c.rec.state, before.state, "{what:#x?}");
                assert_eq!(c.rec.seq_hi, before.seq_hi, "{what:#x?}");
                assert_eq!(c.rec.retransmits, before.retransmits, "{what:#x?}");
                assert_eq!(
                    c.rec.handshake_rtt_ns(),
                    before.handshake_rtt_ns(),
                    "{what:#x?}"
                );
            }
            Want::Stray => {
                assert_eq!(c.events, [None, None], "{what:#x?}");
                let mut expect = before;
                expect.packets[d] += 1;
                expect.last_ns = c.t;
                expect.flags_seen[d] |= fl;
                expect.vlan[d] = 7;
                assert_eq!(c.rec, expect, "{what:#x?}");
            }
            Want::New => {
                assert_eq!(
                    c.events,
                    [Some(EventKind::Superseded), Some(EventKind::Opened)],
                    "{what:#x?}"
                );
                let mut fresh = Conv::new();
                fresh.t = c.t - 1_000;
                fresh.seg(dir, fl, seq, ack, 0);
                assert_eq!(c.rec, fresh.rec, "{what:#x?}");
            }
        }
    }

    #[test]
    fn syn_and_synack_in_every_state() {
        use Want::*;
        const SYNACK: Option<EventKind> = Some(EventKind::SynAck);
        // Client 0's ISN is 100, server 1's 500; `seq_hi` once data flowed
        // is [201, 701]: 150 and 600 lie inside each side's sequence space,
        // 90_000 beyond both.
        let segments = [
            (0, SYN, 100, 0),              // the client's SYN again
            (0, SYN, 150, 0),              // client, new ISN inside its space
            (0, SYN, 90_000, 0),           // client, new ISN beyond its space
            (1, SYN, 500, 0),              // the server's ISN
            (1, SYN, 600, 0),              // server, new ISN inside its space
            (1, SYN, 90_000, 0),           // server, new ISN beyond its space
            (1, SYN | ACK, 500, 101),      // the server's SYN+ACK again
            (1, SYN | ACK, 7_000, 101),    // new ISN, answers the client's SYN
            (1, SYN | ACK, 7_000, 151),    // answers a SYN inside the client's space
            (1, SYN | ACK, 7_000, 90_001), // answers a SYN beyond it
        ];
        let sim = Handshake(None); // the other side of a simultaneous open
        #[rustfmt::skip]
        let table = [
            (State::None,        [Opens, Opens, Opens, Opens, Opens, Opens, Opens, Opens, Opens, Opens]),
            (State::SynSent,     [Dup, New, New, sim, sim, sim, Handshake(SYNACK), Handshake(SYNACK), Handshake(SYNACK), Handshake(SYNACK)]),
            (State::SynAckAck,   [Dup, New, New, Stray, New, New, Dup, Stray, New, New]),
            (State::Established, [Dup, Stray, New, Stray, Stray, New, Dup, Stray, Stray, New]),
            (State::Closing,     [Dup, Stray, New, Stray, Stray, New, Dup, Stray, Stray, New]),
            (State::Closed,      [Dup, New, New, Stray, New, New, Dup, Stray, New, New]),
            (State::Reset,       [Dup, New, New, Stray, New, New, Dup, Stray, New, New]),
        ];
        for (state, wants) in table {
            for (seg, want) in segments.into_iter().zip(wants) {
                check(state, seg, want);
            }
        }
    }

    /// Issue 17: after the handshake and data, a second SYN+ACK with
    /// another ISN answers the client's SYN; both sides go on with the
    /// original numbers. One connection, no retransmission.
    #[test]
    fn a_second_synack_with_another_isn_is_not_a_new_connection() {
        let mut c = Conv::new();
        c.handshake()
            .seg(0, ACK | PSH, 101, 501, 100)
            .seg(1, ACK | PSH, 501, 201, 200);
        let rtt = c.rec.handshake_rtt_ns();
        c.seg(1, SYN | ACK, 3_000_000_000, 101, 0);
        assert_eq!(c.events, [None, None]);
        c.seg(0, ACK, 201, 701, 0)
            .seg(0, ACK | PSH, 201, 701, 50)
            .seg(1, ACK | PSH, 701, 251, 300)
            .seg(0, FIN | ACK, 251, 1_001, 0)
            .seg(1, FIN | ACK, 1_001, 252, 0)
            .seg(0, ACK, 252, 1_002, 0);
        assert_eq!(c.state(), State::Closed);
        assert_eq!(c.rec.client_how, ClientHow::Syn);
        assert_eq!(c.rec.retransmits, [0, 0]);
        assert_eq!((c.rec.syn_count, c.rec.synack_count), (1, 1));
        assert_eq!(c.rec.packets, [7, 5]);
        assert_eq!(c.rec.bytes, [150, 500]);
        assert_eq!(c.rec.seq_hi, [252, 1_002]);
        assert_eq!(c.rec.handshake_rtt_ns(), rtt);
        assert!(rtt.is_some());
    }

    #[test]
    fn a_second_synack_before_the_ack_leaves_the_handshake_alone() {
        let mut c = Conv::new();
        c.seg(0, SYN, 100, 0, 0)
            .seg(1, SYN | ACK, 500, 101, 0)
            .seg(1, SYN | ACK, 9_999, 101, 0);
        assert_eq!(c.events, [None, None]);
        assert_eq!((c.rec.synack_seq, c.rec.synack_count), (500, 1));
        c.seg(0, ACK, 101, 501, 0);
        assert_eq!(c.event(), Some(EventKind::Established));
        assert_eq!(c.rec.handshake_rtt_ns(), Some(3_000));
        c.seg(1, ACK | PSH, 501, 101, 10);
        assert_eq!(c.rec.retransmits, [0, 0]);
    }

    #[test]
    fn a_late_duplicate_syn_keeps_the_handshake_rtt() {
        let mut c = Conv::new();
        c.handshake();
        assert_eq!(c.rec.handshake_rtt_ns(), Some(2_000));
        c.seg(0, SYN, 100, 0, 0);
        assert_eq!(c.event(), Some(EventKind::SynDup));
        assert_eq!(c.rec.syn_count, 2);
        assert_eq!(c.rec.handshake_rtt_ns(), Some(2_000));
    }

    #[test]
    fn a_guessed_connection_judges_a_syn_by_what_its_sender_sent() {
        let mut c = Conv::new();
        c.seg(0, ACK, 5_000, 9, 100).seg(1, ACK, 9, 5_100, 0);
        assert_eq!(c.rec.client_how, ClientHow::Guessed);
        c.seg(0, SYN, 4_000, 0, 0);
        assert_eq!(c.events, [None, None], "inside what endpoint 0 sent");
        c.seg(0, SYN, 6_000, 0, 0);
        assert_eq!(c.events[0], Some(EventKind::Superseded));
        assert_eq!(c.rec.client_how, ClientHow::Syn);
    }

    #[test]
    fn simultaneous_open_establishes_without_restart() {
        let mut c = Conv::new();
        c.seg(0, SYN, 100, 0, 0).seg(1, SYN, 500, 0, 0);
        assert_eq!(c.event(), None);
        assert_ne!(c.rec.bits & bits::SIMULTANEOUS, 0);
        c.seg(0, SYN | ACK, 100, 501, 0);
        assert_eq!(c.state(), State::SynAckAck);
        c.seg(1, SYN | ACK, 500, 101, 0);
        assert_eq!(c.events[0], None, "second SYN+ACK is part of the open");
        assert_eq!(c.state(), State::SynAckAck);
        c.seg(1, ACK, 501, 101, 0);
        assert_eq!(c.state(), State::Established);
        assert_eq!(c.rec.client, 0);
    }

    #[test]
    fn capture_starting_at_the_synack_knows_the_client() {
        let mut c = Conv::new();
        c.seg(1, SYN | ACK, 500, 101, 0);
        assert_eq!(c.state(), State::SynAckAck);
        assert_eq!(c.rec.client, 0);
        assert_eq!(c.rec.client_how, ClientHow::SynAck);
        c.seg(0, ACK, 101, 501, 0);
        assert_eq!(c.state(), State::Established);
        assert_eq!(c.rec.handshake_rtt_ns(), None, "no SYN seen");
    }

    #[test]
    fn mid_stream_pickup_guesses_the_higher_port() {
        let mut c = Conv::new();
        c.seg(0, ACK, 5, 9, 100);
        assert_eq!(c.state(), State::Established);
        assert_eq!(c.rec.client, 1);
        assert_eq!(c.rec.client_how, ClientHow::Guessed);
        // A SYN on a guessed connection is a new connection.
        c.seg(1, SYN, 42, 0, 0);
        assert_eq!(c.events[0], Some(EventKind::Superseded));
        assert_eq!(c.rec.client, 1);
        assert_eq!(c.rec.client_how, ClientHow::Syn);
    }

    #[test]
    fn data_retransmissions_are_counted_per_direction() {
        let mut c = Conv::new();
        c.handshake()
            .seg(0, ACK, 101, 501, 100)
            .seg(0, ACK, 201, 501, 100)
            .seg(0, ACK, 101, 501, 100) // resent
            .seg(0, ACK, 150, 501, 100) // overlaps what was sent
            .seg(0, ACK, 301, 501, 0) // pure ACK: never a retransmission
            .seg(1, ACK, 501, 301, 50);
        assert_eq!(c.rec.retransmits, [2, 0]);
        assert_eq!(c.rec.seq_hi[0], 301);
    }

    #[test]
    fn sequence_numbers_wrap_around() {
        let mut c = Conv::new();
        let isn = u32::MAX - 10;
        c.seg(0, SYN, isn, 0, 0)
            .seg(1, SYN | ACK, 500, isn.wrapping_add(1), 0)
            .seg(0, ACK, isn.wrapping_add(1), 501, 0)
            .seg(0, ACK, isn.wrapping_add(1), 501, 100) // crosses 2^32
            .seg(0, ACK, 90, 501, 100); // after the wrap: new data
        assert_eq!(c.rec.retransmits[0], 0);
        assert_eq!(c.rec.seq_hi[0], 190);
        c.seg(0, ACK, isn.wrapping_add(1), 501, 100);
        assert_eq!(c.rec.retransmits[0], 1);
        // FIN sent after the wrap is acknowledged by an ACK after the wrap.
        c.seg(0, FIN | ACK, 190, 501, 0)
            .seg(1, FIN | ACK, 501, 191, 0)
            .seg(0, ACK, 191, 502, 0);
        assert_eq!(c.state(), State::Closed);
    }

    #[test]
    fn syn_with_data_and_fin_occupy_sequence_space() {
        // TCP Fast Open: the SYN carries 4 bytes; then a FIN.
        let mut c = Conv::new();
        c.seg(0, SYN, 1_000, 0, 4);
        assert_eq!(c.rec.bytes[0], 4);
        assert_eq!(c.rec.seq_hi[0], 1_005);
        c.seg(0, FIN, 1_005, 0, 0);
        assert_eq!(c.state(), State::Closing);
        assert_eq!(c.rec.fin_seq[0], 1_006);
        assert_eq!(c.rec.retransmits[0], 0);
    }

    #[test]
    fn gso_segments_count_as_wire_packets() {
        let mut rec = FlowRecord::EMPTY;
        let seg = Segment {
            ts_ns: 1,
            seq: 1,
            payload_len: 64_000,
            wire_packets: 45,
            flags: ACK,
            ..Segment::default()
        };
        apply(&mut rec, &seg, |_, _| {});
        assert_eq!(rec.packets[0], 45);
        assert_eq!(rec.bytes[0], 64_000);
    }

    /// xorshift64*: deterministic, no dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
            xs[(self.next() % xs.len() as u64) as usize]
        }
    }

    /// The steady path of `update` gives exactly what the general path
    /// gives, on records reached by random conversations (sequence numbers
    /// near each other and near the wrap, all flag mixes) and on random
    /// segments; and it is taken often enough for that to mean something.
    #[test]
    fn steady_path_equals_the_general_rule() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let all_flags = [
            ACK,
            ACK | PSH,
            ACK | PSH | ECE | CWR | URG,
            0,
            PSH,
            SYN,
            SYN | ACK,
            FIN | ACK,
            RST,
            RST | ACK,
            FIN | PSH | ACK,
        ];
        let seqs = [0u32, 1, 100, 101, 500, 501, u32::MAX - 3, u32::MAX, 7_000];
        let (mut steady_seen, mut compared) = (0, 0);
        for _ in 0..2_000 {
            let mut rec = FlowRecord::EMPTY;
            let mut t = 1u64;
            for _ in 0..(rng.next() % 12) {
                t += 1 + rng.next() % 100;
                let seg = Segment {
                    ts_ns: t,
                    seq: rng.pick(&seqs).wrapping_add((rng.next() % 300) as u32),
                    ack: rng.pick(&seqs).wrapping_add((rng.next() % 300) as u32),
                    payload_len: rng.pick(&[0, 0, 1, 100, 1448]),
                    wire_packets: rng.pick(&[1, 1, 3]),
                    flags: rng.pick(&all_flags),
                    dir: (rng.next() & 1) as u8,
                    guess: (rng.next() & 1) as u8,
                    vlan: rng.pick(&[0, 5]),
                    ..Segment::default()
                };
                let (mut a, mut b) = (rec, rec);
                let got = update(&mut a, &seg);
                let want = general(&mut b, &seg);
                assert_eq!((got, a), (want, b), "{seg:?} on {rec:?}");
                compared += 1;
                if is_steady(&rec, seg.flags) {
                    steady_seen += 1;
                    assert_eq!(got, Update::Nothing);
                }
                apply(&mut rec, &seg, |_, _| {});
            }
        }
        assert!(steady_seen > compared / 20, "{steady_seen} of {compared}");
    }

    /// One CPU's cache (`shadow`, `shadowed`, `absorb`) gives the record
    /// that applying every segment to the record gives, whenever the slot
    /// is filled and folded back: random conversations as above, a slot
    /// filled at random while the record is steady and folded back on a
    /// segment that is not steady or at random (the kernel's flush).
    #[test]
    fn a_cached_flow_ends_as_the_record_would() {
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        let plain = [ACK, ACK | PSH, ACK | ECE, 0, PSH];
        let shaping = [SYN, SYN | ACK, FIN | ACK, RST, RST | ACK];
        let (mut shadowed_segments, mut total) = (0, 0);
        for _ in 0..2_000 {
            let (mut direct, mut cached) = (FlowRecord::EMPTY, FlowRecord::EMPTY);
            let mut slot: Option<FlowRecord> = None;
            let mut t = 1u64;
            let mut seq = [rng.next() as u32, rng.next() as u32];
            for i in 0..(rng.next() % 40) {
                t += 1 + rng.next() % 100;
                // Mostly a handshake first, so that there is something to cache.
                let opening = [(0, SYN), (1, SYN | ACK), (0, ACK)];
                let handshake = i < 3 && !rng.next().is_multiple_of(4);
                let dir = match handshake {
                    true => opening[i as usize].0,
                    false => (rng.next() & 1) as usize,
                };
                let len = rng.pick(&[0, 0, 1, 100, 1448]);
                // Mostly in order, sometimes a step back (a retransmission).
                let start = match rng.next() % 5 {
                    0 => seq[dir].wrapping_sub(len + 50),
                    _ => seq[dir],
                };
                seq[dir] = seq[dir].max(start.wrapping_add(len));
                let seg = Segment {
                    ts_ns: t,
                    seq: start,
                    ack: seq[dir ^ 1],
                    payload_len: len,
                    wire_packets: rng.pick(&[1, 1, 3]),
                    flags: match handshake {
                        true => opening[i as usize].1,
                        false if rng.next().is_multiple_of(12) => rng.pick(&shaping),
                        false => rng.pick(&plain),
                    },
                    dir: dir as u8,
                    guess: 1,
                    vlan: rng.pick(&[0, 5]),
                    ..Segment::default()
                };
                apply(&mut direct, &seg, |_, _| {});
                total += 1;
                match &mut slot {
                    Some(s) if is_steady(s, seg.flags) && !rng.next().is_multiple_of(8) => {
                        shadowed(s, &seg);
                        shadowed_segments += 1;
                        continue;
                    }
                    Some(s) => {
                        absorb(&mut cached, s);
                        slot = None;
                    }
                    None => {}
                }
                apply(&mut cached, &seg, |_, _| {});
                if is_steady(&cached, 0) && rng.next().is_multiple_of(2) {
                    slot = Some(shadow(&cached));
                }
            }
            if let Some(s) = slot {
                absorb(&mut cached, &s);
            }
            assert_eq!(cached, direct);
        }
        assert!(
            shadowed_segments > total / 5,
            "{shadowed_segments} of {total}"
        );
    }

    #[test]
    fn absorb_adds_counters_and_keeps_the_latest_marks() {
        let mut c = Conv::new();
        c.handshake().seg(0, ACK | PSH, 101, 501, 100);
        let mut s = shadow(&c.rec);
        assert_eq!(
            (s.packets, s.bytes, s.retransmits),
            ([0; 2], [0; 2], [0; 2])
        );
        let seg = |seq, len, ts| Segment {
            ts_ns: ts,
            seq,
            ack: 501,
            payload_len: len,
            wire_packets: 2,
            flags: ACK,
            dir: 0,
            vlan: 9,
            ..Segment::default()
        };
        shadowed(&mut s, &seg(201, 50, 90_000));
        shadowed(&mut s, &seg(150, 20, 91_000)); // before seq_hi: retransmitted
        // Meanwhile another CPU moved the record on in the other direction.
        c.seg(1, ACK | PSH, 501, 101, 10);
        let before = c.rec;
        absorb(&mut c.rec, &s);
        assert_eq!(c.rec.packets, [before.packets[0] + 4, before.packets[1]]);
        assert_eq!(c.rec.bytes, [170, 10]);
        // Both wire segments of the resent super-packet (size unknown).
        assert_eq!(c.rec.retransmits, [2, 0]);
        assert_eq!(c.rec.seq_hi, [251, 511]);
        assert_eq!(c.rec.last_ns, 91_000);
        assert_eq!(c.rec.vlan, [9, 7]);
    }

    /// The sender's kernel counts a resent GSO super-packet as its
    /// segments (`TcpRetransSegs`); so does the rule.
    #[test]
    fn resent_super_packets_count_their_segments() {
        let mut c = Conv::new();
        c.handshake();
        let mut gso = |seq: u32, len: u32, wire: u32| {
            c.t += 1_000;
            let seg = Segment {
                ts_ns: c.t,
                seq,
                ack: 501,
                payload_len: len,
                wire_packets: wire,
                flags: ACK,
                dir: 0,
                ..Segment::default()
            };
            apply(&mut c.rec, &seg, |_, _| {});
            c.rec.retransmits[0]
        };
        assert_eq!(gso(101, 3000, 3,), 0, "new data");
        assert_eq!(gso(101, 3000, 3), 3, "all three again");
        assert_eq!(gso(3101, 2000, 2), 3, "new again");
        assert_eq!(gso(2101, 1000, 1), 4, "one packet");
        assert_eq!(c.rec.seq_hi[0], 5101);
    }

    #[test]
    fn steady_needs_established_and_no_shaping_flags() {
        let mut c = Conv::new();
        c.seg(0, SYN, 100, 0, 0);
        assert!(!is_steady(&c.rec, ACK));
        c.seg(1, SYN | ACK, 500, 101, 0);
        assert!(!is_steady(&c.rec, ACK), "this ACK completes the handshake");
        c.seg(0, ACK, 101, 501, 0);
        assert!(is_steady(&c.rec, ACK));
        assert!(is_steady(&c.rec, ACK | PSH | ECE));
        for f in [SYN, FIN | ACK, RST, RST | ACK, SYN | ACK] {
            assert!(!is_steady(&c.rec, f), "{f:#x}");
        }
        c.seg(1, FIN | ACK, 501, 101, 0);
        assert!(!is_steady(&c.rec, ACK), "an ACK may acknowledge the FIN");
    }

    #[test]
    fn flags_seen_are_kept_per_direction() {
        let mut c = Conv::new();
        c.handshake().seg(1, ACK | PSH | ECE, 501, 101, 1);
        assert_eq!(c.rec.flags_seen[0], SYN | ACK);
        assert_eq!(c.rec.flags_seen[1], SYN | ACK | PSH | ECE);
        assert_eq!(c.rec.vlan, [7, 7]);
    }
}
