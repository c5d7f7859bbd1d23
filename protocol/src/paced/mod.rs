//! The paced lane: bulk chunk transfer over UDP, paced at the link's rate as measured from queueing
//! delay (never above a rate the receiver states), for links whose loss is not congestion (a
//! satellite terminal). Sans-IO: message encodings, the sender's and the receiver's state
//! machines, the rate control; the node runs them over sockets.
//!
//! Why it exists: over one TCP connection a 1 Mbit/s, 600 ms, 1 % loss link gives about 0.87 of
//! its rate (BBR's 10 s ProbeRTT and retransmission back-off after an outage leave it idle; loss-based
//! congestion controls do far worse), and the field goal is 0.95. A sender that paces at the link's
//! own rate, retransmits exactly what the receiver's acknowledgements say is missing, and keeps
//! sending through an outage fills the link from the moment it is back (the same idea as Aspera's
//! FASP or UDT). The lane carries only stored chunk bytes: the receiver verifies every chunk's
//! BLAKE3 against the signed manifest before storing it, as on the TCP path.
//!
//! Every datagram is sealed (ChaCha20-Poly1305) under a key the sender sends in `Ready` over the
//! authenticated libp2p stream ([`SenderSeal`], [`ReceiverSeal`]): a datagram from anyone else opens to nothing and is
//! dropped, so no one on the path can forge an Ack, a Done or a chunk byte, or read what is sent.
//! Data goes only to an address that proved it receives: it answered a challenge ([`PathValidator`]); a
//! forged source address draws at most one challenge no bigger than what was sent in its name.
//! The session lives as long as the libp2p stream that opened it is open; when that stream breaks
//! (the connection was lost in an outage) the sender parks the session: it sends nothing until its
//! receiver's sealed datagram comes from an address that answers a fresh challenge.
//!
//! ```text
//! receiver ── PacedRequest (libp2p stream /zdn/paced/3) ──▶ sender     object, wanted chunks,
//!                                                     held byte ranges, stated rate (or 0)
//!          ◀── PacedResponse: Ready(port, key, chunk layout) ──
//!          ── Hello (UDP, to that port; repeated until data arrives) ──▶
//!          ◀── Challenge(nonce) ── (to the address the Hello came from)
//!          ── Response(nonce) ──▶  (that address is now where data goes)
//!          ◀── Data: packet n, its send time (paced at the rate found) ──
//!          ── Ack: received ranges, queueing delay, arrival rate (every ~40 ms) ──▶
//!          ── Probe (while nothing arrives: every 0.5 s, then every 4 s) ──▶
//!          ── Done (UDP, three times), then the stream is closed ──▶
//!          ◀── Ended(reason) on the stream, when the sender stops first ──
//! ```
//!
//! The session's byte stream is, chunk after chunk, the stored bytes each chunk still needs (a
//! chunk partly received in an earlier session contributes only what the receiver lacks; see
//! `layout.rs`), cut into packets of `payload` bytes (the last one shorter).

mod gauge;
mod layout;
mod message;
mod meter;
mod path;
mod ranges;
mod rate;
mod receiver;
mod seal;
mod sender;

pub use gauge::{LinkGauge, LinkReport};
pub use layout::{can_resume, segments, to_send, Segment};
pub use message::{
    EndReason, HeldChunk, PacedRequest, PacedResponse, SessionChunk, ToReceiver, ToSender,
    MAX_ACK_RANGES, MAX_CONTROL_LEN, MAX_HELD_CHUNKS, MAX_HELD_RANGES, MAX_HELD_TOTAL,
    MAX_PACED_REQUEST, MAX_PACED_RESPONSE, MAX_PAYLOAD, MAX_SESSION_BYTES, MAX_SESSION_CHUNKS,
    MIN_PAYLOAD, PACED_PROTOCOL,
};
pub use path::{PathAction, PathValidator, CHALLENGE_LEN};
pub use ranges::ByteRanges;
pub use receiver::{Arrival, Completed, Fresh, PacedReceiver, Partial, ReceiverStats};
pub use seal::{
    FromSender, ReceiverSeal, SenderSeal, DATA_HEAD, DATA_OVERHEAD, NUMBER_LEN, SEAL_OVERHEAD,
    TAG_LEN,
};
pub use sender::{PacedSender, SenderPoll, SenderStats, Transmission, VOID};

/// Why a paced-lane message or session is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PacedError {
    #[error(transparent)]
    Wire(#[from] crate::wire::WireError),
    #[error("paced session: {0}")]
    Session(&'static str),
    #[error("paced datagram does not open under the session's key")]
    Unsealed,
    #[error("paced control datagram replayed or too old")]
    Replayed,
}

/// Packets of `payload` bytes needed for `total` bytes.
pub(crate) fn packet_count(total: u64, payload: u32) -> u32 {
    total
        .div_ceil(u64::from(payload.max(1)))
        .min(u64::from(u32::MAX)) as u32
}

/// Length of packet `seq` (the last one is shorter); 0 past the end.
pub(crate) fn packet_len(total: u64, payload: u32, seq: u32) -> usize {
    let start = u64::from(seq) * u64::from(payload);
    total.saturating_sub(start).min(u64::from(payload)) as usize
}

/// A fixed-size bit set over packet numbers.
#[derive(Debug, Clone)]
pub(crate) struct Bits(Vec<u64>);

impl Bits {
    pub fn new(n: u32) -> Self {
        Bits(vec![0; (n as usize).div_ceil(64)])
    }
    pub fn get(&self, i: u32) -> bool {
        self.0
            .get(i as usize / 64)
            .is_some_and(|w| w & (1 << (i % 64)) != 0)
    }
    pub fn set(&mut self, i: u32) {
        if let Some(w) = self.0.get_mut(i as usize / 64) {
            *w |= 1 << (i % 64);
        }
    }
}

#[cfg(test)]
mod link_tests;
