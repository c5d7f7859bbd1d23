//! [`PacedReceiver`]: puts a session's datagrams back into chunks and says what has arrived.
//!
//! Every datagram is checked against the session's layout (its number in range, its length exactly
//! that packet's length) before a byte is copied. A chunk is handed out once all its bytes are
//! here — those that arrived and, for a resumed chunk, those held from before (loaded with
//! [`PacedReceiver::load_held`]); the caller verifies it against the manifest before storing it.
//! What arrived of chunks not yet complete can be read back ([`PacedReceiver::partials`],
//! [`PacedReceiver::take_fresh`]) to be kept across sessions. Memory is the chunks partly
//! received, at most the session ([`super::MAX_SESSION_BYTES`]).

use std::time::Duration;

use crate::wire::{ChunkBitmap, WireError};

use super::gauge::{LinkGauge, LinkReport};
use super::layout::{segments, Segment};
use super::message::{HeldChunk, SessionChunk, ToSender, MAX_ACK_RANGES, MAX_SESSION_BYTES};
use super::ranges::ByteRanges;
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

/// A chunk whose bytes are all here (unverified).
#[derive(Debug, PartialEq, Eq)]
pub struct Completed {
    pub chunk: SessionChunk,
    pub bytes: Vec<u8>,
}

/// What one data packet did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Arrival {
    /// It was not here before (a duplicate is not progress).
    pub new: bool,
    /// The chunks it completed.
    pub completed: Vec<Completed>,
}

/// Bytes of a chunk that arrived since the last [`PacedReceiver::take_fresh`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fresh {
    /// The chunk's index in the layout.
    pub k: usize,
    pub offset: u32,
    pub len: u32,
}

/// A chunk partly here: what of it is held (from before and received).
#[derive(Debug)]
pub struct Partial<'a> {
    pub k: usize,
    pub chunk: SessionChunk,
    pub held: &'a ByteRanges,
    /// The chunk's bytes (meaningful only inside `held`).
    pub bytes: &'a [u8],
}

#[derive(Debug)]
pub struct PacedReceiver {
    chunks: Vec<SessionChunk>,
    segments: Vec<Segment>,
    total: u64,
    payload: u32,
    packets: u32,
    got: Bits,
    /// Bytes of each chunk still missing.
    missing: Vec<u64>,
    /// What each chunk has: held ranges from before and bytes received.
    have: Vec<ByteRanges>,
    buffers: Vec<Option<Vec<u8>>>,
    fresh: Vec<Fresh>,
    cum: u32,
    /// One past the highest packet number seen.
    high: u32,
    gauge: LinkGauge,
    stats: ReceiverStats,
}

impl PacedReceiver {
    /// The receiving side of a session whose `Ready` listed `chunks`; each must be one the
    /// request `wanted`, and each resumed one must be one the request said it partly `held`.
    pub fn new(
        chunks: Vec<SessionChunk>,
        payload: u16,
        wanted: &ChunkBitmap,
        held: &[HeldChunk],
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
        let stored: u64 = chunks.iter().map(|c| u64::from(c.stored_len)).sum();
        if stored > MAX_SESSION_BYTES {
            return Err(PacedError::Session("session over 64 MiB"));
        }
        let (segments, total) = segments(&chunks, held)?;
        let mut missing = vec![0u64; chunks.len()];
        for s in &segments {
            missing[s.chunk] += u64::from(s.len);
        }
        let have = chunks
            .iter()
            .map(|c| {
                if c.resumed {
                    super::layout::held_for(held, c.chunk)
                        .cloned()
                        .unwrap_or_default()
                } else {
                    ByteRanges::new()
                }
            })
            .collect();
        let payload = u32::from(payload);
        let packets = packet_count(total, payload);
        Ok(PacedReceiver {
            buffers: vec![None; chunks.len()],
            chunks,
            segments,
            total,
            payload,
            packets,
            got: Bits::new(packets),
            missing,
            have,
            fresh: Vec::new(),
            cum: 0,
            high: 0,
            gauge: LinkGauge::new(),
            stats: ReceiverStats {
                packets,
                ..ReceiverStats::default()
            },
        })
    }

    /// Bytes the stream carries (what is missing of the session's chunks).
    pub fn total_bytes(&self) -> u64 {
        self.total
    }

    pub fn chunks(&self) -> &[SessionChunk] {
        &self.chunks
    }

    pub fn is_complete(&self) -> bool {
        self.cum == self.packets
    }

    pub fn stats(&self) -> ReceiverStats {
        self.stats.clone()
    }

    /// The bytes held from before of resumed chunk `k` (the chunk's stored length; only the held
    /// ranges are read). Bytes of another length are ignored: the chunk then fails verification
    /// when complete, and is asked for whole next time.
    pub fn load_held(&mut self, k: usize, bytes: Vec<u8>) {
        let (Some(c), Some(slot)) = (self.chunks.get(k), self.buffers.get_mut(k)) else {
            return;
        };
        if !c.resumed || bytes.len() != c.stored_len as usize {
            return;
        }
        match slot {
            Some(buf) => {
                // Some of it arrived already: copy only what the stream does not carry.
                let mut carried = ByteRanges::new();
                for g in self.segments.iter().filter(|g| g.chunk == k) {
                    carried.insert(g.offset, g.offset + g.len);
                }
                for &(s, l) in carried.missing(c.stored_len).as_slice() {
                    let (s, e) = (s as usize, (s + l) as usize);
                    buf[s..e].copy_from_slice(&bytes[s..e]);
                }
            }
            None => *slot = Some(bytes),
        }
    }

    /// Takes packet `seq` (sent at `sent_us` on the sender's clock), opened at `now` (the
    /// receiver's clock since the session started); returns whether it was new and the chunks it
    /// completed. A packet that does not fit the session is an error and changes nothing; one
    /// already here is a duplicate (not progress).
    pub fn on_data(
        &mut self,
        now: Duration,
        (seq, sent_us): (u32, u32),
        bytes: &[u8],
    ) -> Result<Arrival, PacedError> {
        if seq >= self.packets || bytes.len() != packet_len(self.total, self.payload, seq) {
            self.stats.rejected += 1;
            return Err(WireError::Invalid {
                what: "paced data datagram",
                problem: "packet number or length does not fit the session",
            }
            .into());
        }
        self.gauge.on_data(now, sent_us);
        self.stats.payload_bytes += bytes.len() as u64;
        if self.got.get(seq) {
            self.stats.duplicates += 1;
            return Ok(Arrival::default());
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
        // The segment holding byte `a`, then those after it that start before `b`.
        let mut i = self
            .segments
            .partition_point(|g| g.stream <= a)
            .saturating_sub(1);
        while i < self.segments.len() && self.segments[i].stream < b {
            let g = self.segments[i];
            i += 1;
            let (gs, ge) = (g.stream, g.stream + u64::from(g.len));
            let (from, to) = (a.max(gs), b.min(ge));
            if from >= to {
                continue;
            }
            let k = g.chunk;
            let len = self.chunks[k].stored_len as usize;
            let off = (g.offset as u64 + (from - gs)) as usize;
            let n = (to - from) as usize;
            let buf = self.buffers[k].get_or_insert_with(|| vec![0; len]);
            buf[off..off + n].copy_from_slice(&bytes[(from - a) as usize..(to - a) as usize]);
            self.have[k].insert(off as u32, (off + n) as u32);
            self.fresh.push(Fresh {
                k,
                offset: off as u32,
                len: n as u32,
            });
            self.missing[k] -= n as u64;
            if self.missing[k] == 0 {
                if let Some(bytes) = self.buffers[k].take() {
                    done.push(Completed {
                        chunk: self.chunks[k],
                        bytes,
                    });
                }
            }
        }
        Ok(Arrival {
            new: true,
            completed: done,
        })
    }

    /// The chunks partly here (a buffer, bytes still missing), with what of them is held.
    pub fn partials(&self) -> impl Iterator<Item = Partial<'_>> {
        self.buffers.iter().enumerate().filter_map(|(k, b)| {
            let bytes = b.as_deref()?;
            (self.missing[k] > 0).then(|| Partial {
                k,
                chunk: self.chunks[k],
                held: &self.have[k],
                bytes,
            })
        })
    }

    /// The pieces that arrived since the last call (of chunks complete or not).
    pub fn take_fresh(&mut self) -> Vec<Fresh> {
        std::mem::take(&mut self.fresh)
    }

    /// The link's figures now.
    pub fn link(&self) -> LinkReport {
        self.gauge.report()
    }

    /// The acknowledgement to send now: what has arrived, the link's figures, and the most the
    /// receiver wants (`rate_bps`, 0 = no rate stated).
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
        let link = self.gauge.report();
        ToSender::Ack {
            rate_bps,
            cumulative: self.cum,
            queue_us: link.queue_us,
            echo_sent_us: link.echo_sent_us,
            echo_recv_us: link.echo_recv_us,
            received: link.received,
            ranges,
        }
    }
}
