//! The paced lane's messages and their bytes.
//!
//! ```text
//! PacedRequest  (libp2p stream, one frame)
//!   version u8 = 1 | object 32 | token 8 | rate_bps u64 | payload u16 | udp_port u16
//!   | n u32 | wanted bitmap ⌈n/8⌉   (over the object's distinct chunks in first-seen order)
//! PacedResponse (libp2p stream, one frame)
//!   1 Ready     udp_port u16 | payload u16 | count u32 | count × (chunk u32 | stored_len u32)
//!   2 NotFound  object 32
//!   3 Busy      retry_after_ms u32
//! Data          (UDP, sender → receiver)   seq u32 | payload bytes
//! Control       (UDP, receiver → sender)   tag u8 | token 8 | body
//!   1 Hello
//!   2 Ack       rate_bps u64 | cumulative u32 | n u16 | n × (start u32 | len u32)
//!   3 Done
//! ```
//! Integers little-endian. `Ready` lists the chunks the sender will send, strictly ascending, each
//! one the receiver asked for; the session is at most [`MAX_SESSION_BYTES`] (the receiver asks
//! again for the rest). An ack's ranges are the received runs after `cumulative` (every packet
//! before it has arrived), ascending and disjoint; at most [`MAX_ACK_RANGES`] of them.

use crate::hash::Hash;
use crate::wire::{ChunkBitmap, WireError, MAX_STORED_CHUNK};

/// The libp2p protocol name that opens a paced session.
pub const PACED_PROTOCOL: &str = "/zdn/paced/1";
/// Bytes in front of every data datagram's payload (its sequence number).
pub const DATA_HEADER: usize = 4;
/// Smallest and largest payload per datagram. 1464 fills a 1500-byte IPv4 packet.
pub const MIN_PAYLOAD: u16 = 512;
pub const MAX_PAYLOAD: u16 = 8952;
/// Largest session: the sender holds its bytes in memory for retransmission.
pub const MAX_SESSION_BYTES: u64 = 64 << 20;
/// Most chunks in one session.
pub const MAX_SESSION_CHUNKS: u32 = 65_536;
/// Most distinct chunks a request's bitmap may cover.
pub const MAX_WANTED: u32 = 1 << 21;
pub const MAX_PACED_REQUEST: usize = 1 + 32 + 8 + 8 + 2 + 2 + 4 + (MAX_WANTED as usize / 8);
pub const MAX_PACED_RESPONSE: usize = 1 + 2 + 2 + 4 + 8 * MAX_SESSION_CHUNKS as usize;
/// Most received ranges one ack lists (so it fits one small datagram).
pub const MAX_ACK_RANGES: usize = 160;
pub const MAX_CONTROL_LEN: usize = 1 + 8 + 8 + 4 + 2 + 8 * MAX_ACK_RANGES;

/// Asks a peer to send the `wanted` chunks of `object` over UDP at `rate_bps` (IP bits per
/// second) to `udp_port` at the address the connection comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PacedRequest {
    pub object: Hash,
    /// Names the session in control datagrams.
    pub token: [u8; 8],
    pub rate_bps: u64,
    pub payload: u16,
    pub udp_port: u16,
    pub wanted: ChunkBitmap,
}

/// One chunk of a session: its index among the object's distinct chunks and its stored length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionChunk {
    pub chunk: u32,
    pub stored_len: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PacedResponse {
    Ready {
        udp_port: u16,
        payload: u16,
        chunks: Vec<SessionChunk>,
    },
    NotFound(Hash),
    Busy {
        retry_after_ms: u32,
    },
}

/// A datagram from the receiver to the sender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    Hello {
        token: [u8; 8],
    },
    Ack {
        token: [u8; 8],
        rate_bps: u64,
        cumulative: u32,
        ranges: Vec<(u32, u32)>,
    },
    Done {
        token: [u8; 8],
    },
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn new(b: &'a [u8], what: &'static str) -> Self {
        Reader { b, at: 0, what }
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        let end = self
            .at
            .checked_add(n)
            .ok_or(WireError::Truncated(self.what))?;
        let s = self
            .b
            .get(self.at..end)
            .ok_or(WireError::Truncated(self.what))?;
        self.at = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, WireError> {
        let s = self.take(2)?;
        Ok(u16::from_le_bytes([s[0], s[1]]))
    }
    fn u32(&mut self) -> Result<u32, WireError> {
        let s = self.take(4)?;
        Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }
    fn u64(&mut self) -> Result<u64, WireError> {
        let s = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        Ok(u64::from_le_bytes(a))
    }
    fn token(&mut self) -> Result<[u8; 8], WireError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(a)
    }
    fn hash(&mut self) -> Result<Hash, WireError> {
        let mut a = [0u8; 32];
        a.copy_from_slice(self.take(32)?);
        Ok(Hash::from_bytes(a))
    }
    fn end(&self) -> Result<(), WireError> {
        if self.at == self.b.len() {
            Ok(())
        } else {
            Err(WireError::Trailing(self.what))
        }
    }
}

fn too_large(what: &'static str, len: usize, max: usize) -> Result<(), WireError> {
    if len > max {
        return Err(WireError::TooLarge { what, len, max });
    }
    Ok(())
}

fn invalid(what: &'static str, problem: &'static str) -> WireError {
    WireError::Invalid { what, problem }
}

impl PacedRequest {
    pub fn encode(&self) -> Vec<u8> {
        let bits = self.wanted.as_bytes();
        let mut out = Vec::with_capacity(61 + bits.len());
        out.push(1);
        out.extend_from_slice(self.object.as_bytes());
        out.extend_from_slice(&self.token);
        out.extend_from_slice(&self.rate_bps.to_le_bytes());
        out.extend_from_slice(&self.payload.to_le_bytes());
        out.extend_from_slice(&self.udp_port.to_le_bytes());
        out.extend_from_slice(&self.wanted.len().to_le_bytes());
        out.extend_from_slice(bits);
        out
    }

    pub fn decode(b: &[u8]) -> Result<Self, WireError> {
        const WHAT: &str = "paced request";
        too_large(WHAT, b.len(), MAX_PACED_REQUEST)?;
        let mut r = Reader::new(b, WHAT);
        if r.u8()? != 1 {
            return Err(invalid(WHAT, "unknown version"));
        }
        let object = r.hash()?;
        let token = r.token()?;
        let rate_bps = r.u64()?;
        let payload = r.u16()?;
        let udp_port = r.u16()?;
        let n = r.u32()?;
        if rate_bps == 0 {
            return Err(invalid(WHAT, "rate 0"));
        }
        if !(MIN_PAYLOAD..=MAX_PAYLOAD).contains(&payload) {
            return Err(invalid(WHAT, "payload size outside 512..=8952"));
        }
        if udp_port == 0 {
            return Err(invalid(WHAT, "UDP port 0"));
        }
        if n > MAX_WANTED {
            return Err(invalid(WHAT, "more chunks than a request may cover"));
        }
        let bits = r.take((n as usize).div_ceil(8))?;
        r.end()?;
        Ok(PacedRequest {
            object,
            token,
            rate_bps,
            payload,
            udp_port,
            wanted: ChunkBitmap::from_bytes(n, bits)?,
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
                chunks,
            } => {
                out.reserve(9 + 8 * chunks.len());
                out.push(1);
                out.extend_from_slice(&udp_port.to_le_bytes());
                out.extend_from_slice(&payload.to_le_bytes());
                out.extend_from_slice(&(chunks.len() as u32).to_le_bytes());
                for c in chunks {
                    out.extend_from_slice(&c.chunk.to_le_bytes());
                    out.extend_from_slice(&c.stored_len.to_le_bytes());
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
                    chunks,
                }
            }
            2 => PacedResponse::NotFound(r.hash()?),
            3 => PacedResponse::Busy {
                retry_after_ms: r.u32()?,
            },
            tag => return Err(WireError::Tag { what: WHAT, tag }),
        };
        r.end()?;
        Ok(out)
    }
}

impl Control {
    pub fn token(&self) -> [u8; 8] {
        match self {
            Control::Hello { token } | Control::Ack { token, .. } | Control::Done { token } => {
                *token
            }
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        match self {
            Control::Hello { token } => {
                out.push(1);
                out.extend_from_slice(token);
            }
            Control::Ack {
                token,
                rate_bps,
                cumulative,
                ranges,
            } => {
                out.push(2);
                out.extend_from_slice(token);
                out.extend_from_slice(&rate_bps.to_le_bytes());
                out.extend_from_slice(&cumulative.to_le_bytes());
                let n = ranges.len().min(MAX_ACK_RANGES);
                out.extend_from_slice(&(n as u16).to_le_bytes());
                for (s, l) in &ranges[..n] {
                    out.extend_from_slice(&s.to_le_bytes());
                    out.extend_from_slice(&l.to_le_bytes());
                }
            }
            Control::Done { token } => {
                out.push(3);
                out.extend_from_slice(token);
            }
        }
        out
    }

    pub fn decode(b: &[u8]) -> Result<Self, WireError> {
        const WHAT: &str = "paced control datagram";
        too_large(WHAT, b.len(), MAX_CONTROL_LEN)?;
        let mut r = Reader::new(b, WHAT);
        let tag = r.u8()?;
        let token = r.token()?;
        let out = match tag {
            1 => Control::Hello { token },
            2 => {
                let rate_bps = r.u64()?;
                let cumulative = r.u32()?;
                let n = r.u16()? as usize;
                if n > MAX_ACK_RANGES {
                    return Err(invalid(WHAT, "more than 160 ranges"));
                }
                let mut ranges = Vec::with_capacity(n);
                let mut floor = u64::from(cumulative);
                for _ in 0..n {
                    let (s, l) = (r.u32()?, r.u32()?);
                    let end = u64::from(s) + u64::from(l);
                    // Ascending, disjoint, non-empty, after the cumulative point.
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
                Control::Ack {
                    token,
                    rate_bps,
                    cumulative,
                    ranges,
                }
            }
            3 => Control::Done { token },
            tag => return Err(WireError::Tag { what: WHAT, tag }),
        };
        r.end()?;
        Ok(out)
    }
}

/// A data datagram: the packet's number and its payload.
pub fn encode_data(seq: u32, payload: &[u8], out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(payload);
}

/// Splits a data datagram into its number and payload.
pub fn decode_data(b: &[u8]) -> Result<(u32, &[u8]), WireError> {
    let h = b
        .get(..DATA_HEADER)
        .ok_or(WireError::Truncated("paced data datagram"))?;
    Ok((
        u32::from_le_bytes([h[0], h[1], h[2], h[3]]),
        &b[DATA_HEADER..],
    ))
}

#[cfg(test)]
#[path = "message_tests.rs"]
mod tests;
