//! [`PacedReceiver`]: puts a session's datagrams back into chunks and says what has arrived.
//!
//! Every datagram is checked against the session's layout (its number in range, its length exactly
//! that packet's length) before a byte is copied. A chunk is handed out once every packet over it
//! has arrived; the caller verifies it against the manifest before storing it. Memory is the
//! chunks partly received, at most the session ([`super::MAX_SESSION_BYTES`]).

use crate::wire::{ChunkBitmap, WireError};

use super::message::{SessionChunk, ToSender, MAX_ACK_RANGES, MAX_SESSION_BYTES};
use super::{packet_count, packet_len, Bits, PacedError};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReceiverStats {
    pub packets: u32,
    pub received: u32,
    /// Datagrams that carried a packet already here.
    pub duplicates: u64,
    /// Datagrams refused (bad number or length).
    pub rejected: u64,
    /// Payload bytes of every datagram accepted, duplicates included.
    pub payload_bytes: u64,
}

/// What one data packet did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Arrival {
    /// It was not here before (a duplicate is not progress).
    pub new: bool,
    /// The chunks it completed, with their bytes (unverified).
    pub completed: Vec<(SessionChunk, Vec<u8>)>,
}

#[derive(Debug)]
pub struct PacedReceiver {
    chunks: Vec<SessionChunk>,
    /// Offset of each chunk in the byte stream, then the total.
    starts: Vec<u64>,
    total: u64,
    payload: u32,
    packets: u32,
    got: Bits,
    /// Packets over each chunk still missing.
    missing: Vec<u32>,
    buffers: Vec<Option<Vec<u8>>>,
    cum: u32,
    /// One past the highest packet number seen.
    high: u32,
    stats: ReceiverStats,
}

impl PacedReceiver {
    /// The receiving side of a session whose `Ready` listed `chunks`; each must be one the
    /// request `wanted`.
    pub fn new(
        chunks: Vec<SessionChunk>,
        payload: u16,
        wanted: &ChunkBitmap,
    ) -> Result<Self, PacedError> {
        if chunks.is_empty() {
            return Err(PacedError::Session("the sender offered no chunk"));
        }
        if chunks.iter().any(|c| !wanted.get(c.chunk)) {
            return Err(PacedError::Session(
                "the sender offered a chunk not asked for",
            ));
        }
        if !(super::MIN_PAYLOAD..=super::MAX_PAYLOAD).contains(&payload) {
            return Err(PacedError::Session("payload size out of range"));
        }
        let mut starts = Vec::with_capacity(chunks.len() + 1);
        let mut total: u64 = 0;
        for c in &chunks {
            starts.push(total);
            total = total
                .checked_add(u64::from(c.stored_len))
                .filter(|&t| t <= MAX_SESSION_BYTES)
                .ok_or(PacedError::Session("session over 64 MiB"))?;
        }
        starts.push(total);
        let payload = u32::from(payload);
        let packets = packet_count(total, payload);
        let p = u64::from(payload);
        let missing = chunks
            .iter()
            .zip(&starts)
            .map(|(c, &s)| {
                let end = s + u64::from(c.stored_len);
                ((end - 1) / p - s / p + 1) as u32
            })
            .collect();
        Ok(PacedReceiver {
            buffers: vec![None; chunks.len()],
            chunks,
            starts,
            total,
            payload,
            packets,
            got: Bits::new(packets),
            missing,
            cum: 0,
            high: 0,
            stats: ReceiverStats {
                packets,
                ..ReceiverStats::default()
            },
        })
    }

    pub fn total_bytes(&self) -> u64 {
        self.total
    }

    pub fn is_complete(&self) -> bool {
        self.cum == self.packets
    }

    pub fn stats(&self) -> ReceiverStats {
        self.stats.clone()
    }

    /// Takes packet `seq` (opened from its sealed datagram); returns whether it was new and the
    /// chunks it completed (their bytes, unverified). A packet that does not fit the session is an
    /// error and changes nothing; one already here is a duplicate (not progress).
    pub fn on_data(&mut self, seq: u32, bytes: &[u8]) -> Result<Arrival, PacedError> {
        if seq >= self.packets || bytes.len() != packet_len(self.total, self.payload, seq) {
            self.stats.rejected += 1;
            return Err(WireError::Invalid {
                what: "paced data datagram",
                problem: "packet number or length does not fit the session",
            }
            .into());
        }
        self.stats.payload_bytes += bytes.len() as u64;
        if self.got.get(seq) {
            self.stats.duplicates += 1;
            return Ok(Arrival {
                new: false,
                completed: Vec::new(),
            });
        }
        self.got.set(seq);
        self.stats.received += 1;
        self.high = self.high.max(seq + 1);
        while self.cum < self.packets && self.got.get(self.cum) {
            self.cum += 1;
        }
        let a = u64::from(seq) * u64::from(self.payload);
        let b = a + bytes.len() as u64;
        let mut done = Vec::new();
        // The chunk holding byte `a`, then those after it that start before `b`.
        let mut k = self.starts.partition_point(|&s| s <= a).saturating_sub(1);
        while k < self.chunks.len() && self.starts[k] < b {
            let (cs, ce) = (self.starts[k], self.starts[k + 1]);
            let (from, to) = (a.max(cs), b.min(ce));
            if from < to {
                let len = self.chunks[k].stored_len as usize;
                let buf = self.buffers[k].get_or_insert_with(|| vec![0; len]);
                buf[(from - cs) as usize..(to - cs) as usize]
                    .copy_from_slice(&bytes[(from - a) as usize..(to - a) as usize]);
                self.missing[k] -= 1;
                if self.missing[k] == 0 {
                    if let Some(buf) = self.buffers[k].take() {
                        done.push((self.chunks[k], buf));
                    }
                }
            }
            k += 1;
        }
        Ok(Arrival {
            new: true,
            completed: done,
        })
    }

    /// The acknowledgement to send now: what has arrived, and the rate wanted.
    pub fn ack(&self, rate_bps: u64) -> ToSender {
        let mut ranges = Vec::new();
        let mut i = self.cum;
        while i < self.high && ranges.len() < MAX_ACK_RANGES {
            if !self.got.get(i) {
                i += 1;
                continue;
            }
            let start = i;
            while i < self.high && self.got.get(i) {
                i += 1;
            }
            ranges.push((start, i - start));
        }
        ToSender::Ack {
            rate_bps,
            cumulative: self.cum,
            ranges,
        }
    }
}
