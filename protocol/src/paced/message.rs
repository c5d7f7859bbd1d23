//! The paced lane's messages and their bytes.
//!
//! ```text
//! PacedRequest  (libp2p stream, one frame)
//!   version u8 = 4 | object 32 | rate_bps u64 | payload u16 | udp_port u16
//!   | n u32 | wanted bitmap ⌈n/8⌉   (over the object's distinct chunks in first-seen order)
//!   | h u16 | h × held             (byte ranges of wanted chunks the receiver already holds)
//!   held      chunk u32 | r u16 | r × (start u32 | len u32)
//! PacedResponse (libp2p stream, frames)
//!   1 Ready     udp_port u16 | payload u16 | session key 32 | count u32
//!               | count × (chunk u32 | stored_len u32 | resumed u8)
//!   2 NotFound  object 32
//!   3 Busy      retry_after_ms u32
//!   4 Ended     reason u8      (after Ready: the sender stopped; see EndReason)
//! Datagrams (UDP), each sealed (see seal.rs): number u32 | ciphertext | tag 16
//!   data, sender → receiver       the packet's payload (number = packet number; the send
//!                                 time goes in the clear after it, see seal.rs)
//!   ToReceiver, sender → receiver tag u8 | body
//!     5 Challenge  nonce 8
//!   ToSender, receiver → sender   tag u8 | body
//!     1 Hello      31 zero bytes (so a Hello is bigger than the challenge it draws)
//!     2 Ack        rate_bps u64 | cumulative u32 | queue_us u32 | echo_sent_us u32
//!                  | echo_recv_us u32 | received u32 | n u16 | n × (start u32 | len u32)
//!     3 Done
//!     4 Response   nonce 8       (the nonce of a challenge, from the address it was sent to)
//!     5 Probe      8 zero bytes  (the receiver is there; sent while nothing arrives)
//! ```
//! Integers little-endian. `rate_bps` (request and ack) is the most the receiver wants, IP bits per
//! second (its link's stated rate, shared by its sessions); 0 = no rate stated: the sender finds
//! the link's rate itself. `held` lists wanted chunks (strictly ascending, at most
//! [`MAX_HELD_CHUNKS`]) with canonical byte ranges of their stored bytes (ascending, non-empty, a
//! gap between neighbours; at most [`MAX_HELD_RANGES`] per chunk and [`MAX_HELD_TOTAL`] in all).
//! `Ready` lists the chunks the sender will send, strictly ascending, each one the receiver asked
//! for; `resumed` = 1 when the sender skips the ranges the request said were held (it sends only
//! the rest), 0 when it sends the chunk whole. The chunks' stored lengths add up to at most
//! [`MAX_SESSION_BYTES`] (the receiver asks again for the rest). A data packet carries the
//! sender's clock when it was sent (microseconds, wrapping); with it the receiver measures the
//! queueing delay (see `gauge.rs`) and reports in each ack: `queue_us` the queueing delay now,
//! `echo_sent_us` the send time of the newest packet it got and `echo_recv_us` its own clock when
//! that packet came (µs, wrapping), `received` the data datagrams it got so far (wrapping). From
//! two acks the sender knows how many of its bytes crossed the link in how long, lost ones
//! included (`rate.rs`). An ack's ranges are the received runs after `cumulative` (every packet before it has
//! arrived), ascending and disjoint; at most [`MAX_ACK_RANGES`] of them. The session lives as long
//! as the libp2p stream that opened it; when that stream breaks (not when it is closed) the sender
//! parks the session (see the server).

use crate::hash::Hash;
use crate::wire::{ChunkBitmap, WireError, MAX_STORED_CHUNK};

use super::ranges::ByteRanges;

/// The libp2p protocol name that opens a paced session.
pub const PACED_PROTOCOL: &str = "/zdn/paced/4";
/// The request's version byte.
const VERSION: u8 = 4;
/// Smallest and largest payload per datagram. 1440 fills a 1500-byte IPv4 packet.
pub const MIN_PAYLOAD: u16 = 512;
pub const MAX_PAYLOAD: u16 = 8952;
/// Largest session: the sender holds its bytes in memory for retransmission.
pub const MAX_SESSION_BYTES: u64 = 64 << 20;
/// Most chunks in one session.
pub const MAX_SESSION_CHUNKS: u32 = 65_536;
/// Most distinct chunks a request's bitmap may cover.
pub const MAX_WANTED: u32 = 1 << 21;
/// Most partly held chunks one request names, byte ranges per chunk, and byte ranges in all.
pub const MAX_HELD_CHUNKS: usize = 64;
pub const MAX_HELD_RANGES: usize = 256;
pub const MAX_HELD_TOTAL: usize = 4096;
pub const MAX_PACED_REQUEST: usize = 1
    + 32
    + 8
    + 2
    + 2
    + 4
    + (MAX_WANTED as usize / 8)
    + 2
    + MAX_HELD_CHUNKS * 6
    + MAX_HELD_TOTAL * 8;
pub const MAX_PACED_RESPONSE: usize = 1 + 2 + 2 + 32 + 4 + 9 * MAX_SESSION_CHUNKS as usize;
/// Most received ranges one ack lists (so it fits one small datagram).
pub const MAX_ACK_RANGES: usize = 160;
/// Largest plaintext of a control datagram.
pub const MAX_CONTROL_LEN: usize = 1 + 8 + 4 + 4 + 4 + 4 + 4 + 2 + 8 * MAX_ACK_RANGES;
/// Zero bytes after a Hello's tag.
const HELLO_PAD: usize = 31;
/// Zero bytes after a Probe's tag: a probe is exactly as big as a challenge.
const PROBE_PAD: usize = 8;

/// Asks a peer to send the `wanted` chunks of `object` over UDP, at most at `rate_bps` (IP bits
/// per second; 0 = no rate stated). Where to: the address that answers the sender's challenge
/// (see `path.rs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PacedRequest {
    pub object: Hash,
    pub rate_bps: u64,
    pub payload: u16,
    /// The UDP port the receiver listens on, as it sees it (0 = not said): the sender challenges
    /// that port of the connection's address at once, saving the round trip of a challenge
    /// drawn by the receiver's first Hello. Behind a NAT the port seen outside differs; that
    /// challenge is then lost and the Hello's goes as before.
    pub udp_port: u16,
    pub wanted: ChunkBitmap,
    /// Byte ranges of wanted chunks already held (a chunk partly received before).
    pub held: Vec<HeldChunk>,
}

/// The byte ranges of one chunk's stored bytes that the receiver already has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldChunk {
    pub chunk: u32,
    pub ranges: ByteRanges,
}

/// One chunk of a session: its index among the object's distinct chunks and its stored length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionChunk {
    pub chunk: u32,
    pub stored_len: u32,
    /// The sender skips the byte ranges the request said were held, and sends only the rest.
    pub resumed: bool,
}

/// Why a sender ended a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// Every packet acknowledged, or the receiver said Done.
    Complete,
    /// The receiver was silent too long.
    Silent,
    /// The session sent its byte budget.
    Budget,
    /// The sender is shutting down.
    Shutdown,
    /// No address answered a challenge in time.
    Unreachable,
    /// Anything else (a local failure).
    Other,
    /// The session sat idle (its receiver silent, or its stream broken) and a new request took its
    /// slot.
    Replaced,
}

impl EndReason {
    pub const fn code(self) -> u8 {
        match self {
            EndReason::Complete => 1,
            EndReason::Silent => 2,
            EndReason::Budget => 3,
            EndReason::Shutdown => 4,
            EndReason::Unreachable => 5,
            EndReason::Other => 6,
            EndReason::Replaced => 7,
        }
    }

    pub fn from_code(c: u8) -> Option<Self> {
        [
            EndReason::Complete,
            EndReason::Silent,
            EndReason::Budget,
            EndReason::Shutdown,
            EndReason::Unreachable,
            EndReason::Other,
            EndReason::Replaced,
        ]
        .into_iter()
        .find(|r| r.code() == c)
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            EndReason::Complete => "complete",
            EndReason::Silent => "the receiver was silent",
            EndReason::Budget => "the session's byte budget is spent",
            EndReason::Shutdown => "the sender is shutting down",
            EndReason::Unreachable => "no address of ours answered the sender's challenge",
            EndReason::Other => "the sender failed",
            EndReason::Replaced => "the session sat idle and a newer request took its place",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PacedResponse {
    Ready {
        udp_port: u16,
        payload: u16,
        /// The session key (from the sender's CSPRNG); it travels only on the encrypted stream.
        key: [u8; 32],
        chunks: Vec<SessionChunk>,
    },
    NotFound(Hash),
    Busy {
        retry_after_ms: u32,
    },
    Ended(EndReason),
}

/// A control datagram from the receiver to the sender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToSender {
    Hello,
    Ack {
        rate_bps: u64,
        cumulative: u32,
        /// Queueing delay now, microseconds.
        queue_us: u32,
        /// The newest packet received (by send time): its send time, sender's clock, and when it
        /// arrived, receiver's clock (µs, wrapping; both 0 before any).
        echo_sent_us: u32,
        echo_recv_us: u32,
        /// Data datagrams received so far, duplicates included (wrapping).
        received: u32,
        ranges: Vec<(u32, u32)>,
    },
    Done,
    Response {
        nonce: [u8; 8],
    },
    Probe,
}

/// A control datagram from the sender to the receiver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToReceiver {
    Challenge { nonce: [u8; 8] },
}

mod reader;
use reader::{invalid, too_large, Reader};

impl PacedRequest {
    pub fn encode(&self) -> Vec<u8> {
        let bits = self.wanted.as_bytes();
        let mut out = Vec::with_capacity(49 + bits.len());
        out.push(VERSION);
        out.extend_from_slice(self.object.as_bytes());
        out.extend_from_slice(&self.rate_bps.to_le_bytes());
        out.extend_from_slice(&self.payload.to_le_bytes());
        out.extend_from_slice(&self.udp_port.to_le_bytes());
        out.extend_from_slice(&self.wanted.len().to_le_bytes());
        out.extend_from_slice(bits);
        out.extend_from_slice(&(self.held.len() as u16).to_le_bytes());
        for h in &self.held {
            out.extend_from_slice(&h.chunk.to_le_bytes());
            out.extend_from_slice(&(h.ranges.len() as u16).to_le_bytes());
            for &(s, l) in h.ranges.as_slice() {
                out.extend_from_slice(&s.to_le_bytes());
                out.extend_from_slice(&l.to_le_bytes());
            }
        }
        out
    }

    /// Decodes a request: every count checked against its cap before anything is allocated.
    pub fn decode(b: &[u8]) -> Result<Self, WireError> {
        const WHAT: &str = "paced request";
        too_large(WHAT, b.len(), MAX_PACED_REQUEST)?;
        let mut r = Reader::new(b, WHAT);
        if r.u8()? != VERSION {
            return Err(invalid(WHAT, "unknown version"));
        }
        let object = r.hash()?;
        let rate_bps = r.u64()?;
        let payload = r.u16()?;
        let udp_port = r.u16()?;
        let n = r.u32()?;
        if !(MIN_PAYLOAD..=MAX_PAYLOAD).contains(&payload) {
            return Err(invalid(WHAT, "payload size outside 512..=8952"));
        }
        if n > MAX_WANTED {
            return Err(invalid(WHAT, "more chunks than a request may cover"));
        }
        let wanted = ChunkBitmap::from_bytes(n, r.take((n as usize).div_ceil(8))?)?;
        let h = usize::from(r.u16()?);
        if h > MAX_HELD_CHUNKS {
            return Err(invalid(WHAT, "more than 64 partly held chunks"));
        }
        let mut held = Vec::with_capacity(h);
        let mut total = 0usize;
        for _ in 0..h {
            let chunk = r.u32()?;
            let k = usize::from(r.u16()?);
            total += k;
            if k == 0 || k > MAX_HELD_RANGES || total > MAX_HELD_TOTAL {
                return Err(invalid(WHAT, "held ranges: none, or over the caps"));
            }
            if !wanted.get(chunk) || held.last().is_some_and(|p: &HeldChunk| p.chunk >= chunk) {
                return Err(invalid(
                    WHAT,
                    "held chunks not wanted or not strictly ascending",
                ));
            }
            let mut ranges = Vec::with_capacity(k);
            for _ in 0..k {
                ranges.push((r.u32()?, r.u32()?));
            }
            let ranges = ByteRanges::from_canonical(ranges, MAX_STORED_CHUNK as u32)
                .ok_or(invalid(WHAT, "held ranges not canonical"))?;
            held.push(HeldChunk { chunk, ranges });
        }
        r.end()?;
        Ok(PacedRequest {
            object,
            rate_bps,
            payload,
            udp_port,
            wanted,
            held,
        })
    }
}

impl PacedResponse {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            PacedResponse::Ready {
                udp_port,
                payload,
                key,
                chunks,
            } => {
                out.reserve(41 + 9 * chunks.len());
                out.push(1);
                out.extend_from_slice(&udp_port.to_le_bytes());
                out.extend_from_slice(&payload.to_le_bytes());
                out.extend_from_slice(key);
                out.extend_from_slice(&(chunks.len() as u32).to_le_bytes());
                for c in chunks {
                    out.extend_from_slice(&c.chunk.to_le_bytes());
                    out.extend_from_slice(&c.stored_len.to_le_bytes());
                    out.push(u8::from(c.resumed));
                }
            }
            PacedResponse::NotFound(h) => {
                out.push(2);
                out.extend_from_slice(h.as_bytes());
            }
            PacedResponse::Busy { retry_after_ms } => {
                out.push(3);
                out.extend_from_slice(&retry_after_ms.to_le_bytes());
            }
            PacedResponse::Ended(reason) => {
                out.push(4);
                out.push(reason.code());
            }
        }
        out
    }

    /// Decodes a response; `Ready` is checked for order, size and caps, not against the request
    /// (the receiver does that: [`super::PacedReceiver::new`]).
    pub fn decode(b: &[u8]) -> Result<Self, WireError> {
        const WHAT: &str = "paced response";
        too_large(WHAT, b.len(), MAX_PACED_RESPONSE)?;
        let mut r = Reader::new(b, WHAT);
        let out = match r.u8()? {
            1 => {
                let udp_port = r.u16()?;
                let payload = r.u16()?;
                let mut key = [0u8; 32];
                key.copy_from_slice(r.take(32)?);
                let count = r.u32()?;
                if udp_port == 0 {
                    return Err(invalid(WHAT, "UDP port 0"));
                }
                if !(MIN_PAYLOAD..=MAX_PAYLOAD).contains(&payload) {
                    return Err(invalid(WHAT, "payload size outside 512..=8952"));
                }
                if count == 0 || count > MAX_SESSION_CHUNKS {
                    return Err(invalid(WHAT, "chunk count outside 1..=65536"));
                }
                let mut chunks = Vec::with_capacity(count as usize);
                let mut total: u64 = 0;
                for _ in 0..count {
                    let c = SessionChunk {
                        chunk: r.u32()?,
                        stored_len: r.u32()?,
                        resumed: match r.u8()? {
                            0 => false,
                            1 => true,
                            _ => return Err(invalid(WHAT, "resumed flag not 0 or 1")),
                        },
                    };
                    if chunks
                        .last()
                        .is_some_and(|p: &SessionChunk| p.chunk >= c.chunk)
                    {
                        return Err(invalid(WHAT, "chunks not strictly ascending"));
                    }
                    if c.stored_len == 0 || c.stored_len as usize > MAX_STORED_CHUNK {
                        return Err(invalid(WHAT, "chunk length outside 1..=MAX_STORED_CHUNK"));
                    }
                    total += u64::from(c.stored_len);
                    if total > MAX_SESSION_BYTES {
                        return Err(invalid(WHAT, "session over 64 MiB"));
                    }
                    chunks.push(c);
                }
                PacedResponse::Ready {
                    udp_port,
                    payload,
                    key,
                    chunks,
                }
            }
            2 => PacedResponse::NotFound(r.hash()?),
            3 => PacedResponse::Busy {
                retry_after_ms: r.u32()?,
            },
            4 => {
                let code = r.u8()?;
                PacedResponse::Ended(
                    EndReason::from_code(code).ok_or(invalid(WHAT, "unknown end reason"))?,
                )
            }
            tag => return Err(WireError::Tag { what: WHAT, tag }),
        };
        r.end()?;
        Ok(out)
    }
}

impl ToSender {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        match self {
            ToSender::Hello => {
                out.push(1);
                out.extend_from_slice(&[0; HELLO_PAD]);
            }
            ToSender::Ack {
                rate_bps,
                cumulative,
                queue_us,
                echo_sent_us,
                echo_recv_us,
                received,
                ranges,
            } => {
                out.push(2);
                out.extend_from_slice(&rate_bps.to_le_bytes());
                out.extend_from_slice(&cumulative.to_le_bytes());
                out.extend_from_slice(&queue_us.to_le_bytes());
                out.extend_from_slice(&echo_sent_us.to_le_bytes());
                out.extend_from_slice(&echo_recv_us.to_le_bytes());
                out.extend_from_slice(&received.to_le_bytes());
                let n = ranges.len().min(MAX_ACK_RANGES);
                out.extend_from_slice(&(n as u16).to_le_bytes());
                for (s, l) in &ranges[..n] {
                    out.extend_from_slice(&s.to_le_bytes());
                    out.extend_from_slice(&l.to_le_bytes());
                }
            }
            ToSender::Done => out.push(3),
            ToSender::Response { nonce } => {
                out.push(4);
                out.extend_from_slice(nonce);
            }
            ToSender::Probe => {
                out.push(5);
                out.extend_from_slice(&[0; PROBE_PAD]);
            }
        }
        out
    }

    pub fn decode(b: &[u8]) -> Result<Self, WireError> {
        const WHAT: &str = "paced control datagram";
        too_large(WHAT, b.len(), MAX_CONTROL_LEN)?;
        let mut r = Reader::new(b, WHAT);
        let out = match r.u8()? {
            1 => {
                if r.take(HELLO_PAD)?.iter().any(|&b| b != 0) {
                    return Err(invalid(WHAT, "Hello padding is not zero"));
                }
                ToSender::Hello
            }
            2 => {
                let rate_bps = r.u64()?;
                let cumulative = r.u32()?;
                let queue_us = r.u32()?;
                let echo_sent_us = r.u32()?;
                let echo_recv_us = r.u32()?;
                let received = r.u32()?;
                let n = r.u16()? as usize;
                if n > MAX_ACK_RANGES {
                    return Err(invalid(WHAT, "more than 160 ranges"));
                }
                let mut ranges = Vec::with_capacity(n);
                let mut floor = u64::from(cumulative);
                for _ in 0..n {
                    let (s, l) = (r.u32()?, r.u32()?);
                    let end = u64::from(s) + u64::from(l);
                    // Non-empty, after the cumulative point (that packet is missing), and each
                    // past a gap after the one before (adjacent runs are one range).
                    if l == 0 || u64::from(s) <= floor {
                        return Err(invalid(
                            WHAT,
                            "ranges not ascending and disjoint after cumulative",
                        ));
                    }
                    floor = end;
                    ranges.push((s, l));
                }
                if floor > u64::from(u32::MAX) + 1 {
                    return Err(invalid(WHAT, "range past the last packet number"));
                }
                ToSender::Ack {
                    rate_bps,
                    cumulative,
                    queue_us,
                    echo_sent_us,
                    echo_recv_us,
                    received,
                    ranges,
                }
            }
            3 => ToSender::Done,
            4 => ToSender::Response { nonce: r.nonce()? },
            5 => {
                if r.take(PROBE_PAD)?.iter().any(|&b| b != 0) {
                    return Err(invalid(WHAT, "Probe padding is not zero"));
                }
                ToSender::Probe
            }
            tag => return Err(WireError::Tag { what: WHAT, tag }),
        };
        r.end()?;
        Ok(out)
    }
}

impl ToReceiver {
    /// Plaintext bytes of a challenge.
    pub const CHALLENGE_LEN: usize = 1 + 8;

    pub fn encode(&self) -> Vec<u8> {
        match self {
            ToReceiver::Challenge { nonce } => {
                let mut out = Vec::with_capacity(Self::CHALLENGE_LEN);
                out.push(5);
                out.extend_from_slice(nonce);
                out
            }
        }
    }

    pub fn decode(b: &[u8]) -> Result<Self, WireError> {
        const WHAT: &str = "paced control datagram";
        let mut r = Reader::new(b, WHAT);
        let out = match r.u8()? {
            5 => ToReceiver::Challenge { nonce: r.nonce()? },
            tag => return Err(WireError::Tag { what: WHAT, tag }),
        };
        r.end()?;
        Ok(out)
    }
}

#[cfg(test)]
#[path = "message_tests.rs"]
mod tests;
