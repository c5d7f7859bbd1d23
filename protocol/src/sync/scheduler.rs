//! The multi-source chunk scheduler: which chunk to ask which peer for, and when.
//!
//! Sans-IO: the caller tells it what happened (a peer appeared, a chunk arrived and verified, a peer
//! sent garbage, a request failed) and the time, and asks it for the next requests. The node's fetch
//! loop and the discrete-event simulation drive the same code.
//!
//! Policy, in order of importance:
//! - **Verified chunks are never asked for again.** Resume marks chunks the store already holds as
//!   done before the first request.
//! - **Rarest first**: among the chunks a peer can serve, the one the fewest peers hold, so a chunk
//!   that only one (possibly slow or leaving) peer has is fetched while that peer is here.
//! - **Windows sized by rate × latency**: each peer gets enough requests in flight to cover its
//!   bandwidth-delay product plus one chunk, at least `min_in_flight`. A faster peer drains its
//!   window sooner and so receives more work; nothing else is needed to share load.
//! - **End game**: when nothing is left unassigned, an idle peer may duplicate a request that is
//!   late on another peer (elapsed > `late_factor` × its expected time) or that it would clearly
//!   finish sooner. At most one duplicate per peer at a time, so the waste is bounded by one chunk
//!   per peer.
//! - **Bans**: a peer that serves a chunk whose hash does not match is banned for the rest of the
//!   transfer; its requests go back to the pool. Ordinary failures back off exponentially and a
//!   peer is dropped after `max_failures` in a row.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::wire::ChunkBitmap;

mod config;
pub use config::SchedulerConfig;

/// What a peer can serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holdings {
    /// Every chunk (a seeder of the complete object).
    All,
    /// The chunks set in the bitmap (a peer that is itself downloading).
    Some(ChunkBitmap),
}

impl Holdings {
    fn has(&self, chunk: u32) -> bool {
        match self {
            Holdings::All => true,
            Holdings::Some(b) => chunk < b.len() && b.get(chunk),
        }
    }
}

/// One request the caller should send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment<P> {
    pub peer: P,
    pub chunk: u32,
    /// An end-game copy of a request already in flight on another peer.
    pub duplicate: bool,
}

/// Why a request did not produce a chunk (other than a hash mismatch, see [`SyncScheduler::on_corrupt`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The peer does not have the chunk after all: never ask it for that chunk again.
    NotFound,
    /// The peer is busy; ask again after this long.
    Busy(Duration),
    /// The stream broke, stalled or timed out.
    Io,
}

/// What a verified chunk means to the transfer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received<P> {
    /// New: store it. The listed peers hold duplicate requests for it that can be cancelled.
    New { cancel: Vec<P> },
    /// Already done (a late duplicate): discard it.
    AlreadyDone,
}

/// Per-peer numbers, for `zdn status` and the simulations.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PeerStats {
    pub chunks: u64,
    pub bytes: u64,
    pub in_flight: usize,
    pub in_flight_bytes: u64,
    /// Measured rate in bytes per second (0 until the first chunk).
    pub rate: f64,
    pub failures: u32,
}

#[derive(Debug, Clone)]
struct PeerState {
    holdings: Holdings,
    /// Chunks this peer said it does not have after all.
    refused: BTreeSet<u32>,
    in_flight: BTreeMap<u32, Duration>,
    in_flight_bytes: u64,
    rate: f64,
    min_latency: Option<Duration>,
    last_completion: Option<Duration>,
    failures: u32,
    retry_at: Duration,
    stats_chunks: u64,
    stats_bytes: u64,
}

impl PeerState {
    fn can_serve(&self, chunk: u32) -> bool {
        self.holdings.has(chunk) && !self.refused.contains(&chunk)
    }

    /// Expected seconds to deliver `bytes` once asked; `None` before the first measurement.
    fn expected_secs(&self, bytes: u64) -> Option<f64> {
        let lat = self.min_latency?;
        if self.rate <= 0.0 {
            return None;
        }
        Some(lat.as_secs_f64().max(bytes as f64 / self.rate))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    Pending,
    InFlight,
    Done,
}

/// The scheduler for one object's chunks. `P` identifies a peer (a libp2p `PeerId`, or an integer in
/// a simulation).
#[derive(Debug, Clone)]
pub struct SyncScheduler<P: Ord + Clone> {
    config: SchedulerConfig,
    sizes: Vec<u32>,
    state: Vec<ChunkState>,
    /// How many usable peers hold each chunk.
    availability: Vec<u32>,
    /// Pending chunks ordered by (availability, index): rarest first.
    pending: BTreeSet<(u32, u32)>,
    /// Which peers have a request in flight for each in-flight chunk.
    holders: BTreeMap<u32, Vec<P>>,
    peers: BTreeMap<P, PeerState>,
    banned: BTreeSet<P>,
    done: u32,
    done_bytes: u64,
    total_bytes: u64,
    avg_chunk: u64,
}

impl<P: Ord + Clone> SyncScheduler<P> {
    /// A scheduler for chunks of the given sizes (bytes on the wire, or the best estimate), none done.
    pub fn new(sizes: Vec<u32>, config: SchedulerConfig) -> Self {
        let n = sizes.len();
        let total_bytes: u64 = sizes.iter().map(|&s| u64::from(s)).sum();
        let avg_chunk = if n == 0 {
            1
        } else {
            (total_bytes / n as u64).max(1)
        };
        let pending = (0..n as u32).map(|i| (0, i)).collect();
        SyncScheduler {
            config,
            sizes,
            state: vec![ChunkState::Pending; n],
            availability: vec![0; n],
            pending,
            holders: BTreeMap::new(),
            peers: BTreeMap::new(),
            banned: BTreeSet::new(),
            done: 0,
            done_bytes: 0,
            total_bytes,
            avg_chunk,
        }
    }

    /// Whether `chunk` is done (received and verified, or held before).
    pub fn is_done(&self, chunk: u32) -> bool {
        matches!(self.state.get(chunk as usize), Some(ChunkState::Done))
    }

    /// Resume: the store already holds `chunk`, verified. Out-of-range indices are ignored.
    pub fn mark_done(&mut self, chunk: u32) {
        let Some(st) = self.state.get(chunk as usize).copied() else {
            return;
        };
        match st {
            ChunkState::Done => {}
            ChunkState::Pending => {
                self.pending
                    .remove(&(self.availability[chunk as usize], chunk));
                self.finish(chunk);
            }
            ChunkState::InFlight => {
                self.release_holders(chunk);
                self.finish(chunk);
            }
        }
    }

    fn finish(&mut self, chunk: u32) {
        self.state[chunk as usize] = ChunkState::Done;
        self.done += 1;
        self.done_bytes += u64::from(self.sizes[chunk as usize]);
    }

    /// Takes every in-flight record of `chunk` off its peers; returns those peers.
    fn release_holders(&mut self, chunk: u32) -> Vec<P> {
        let size = u64::from(self.sizes[chunk as usize]);
        let holders = self.holders.remove(&chunk).unwrap_or_default();
        for p in &holders {
            if let Some(ps) = self.peers.get_mut(p) {
                if ps.in_flight.remove(&chunk).is_some() {
                    ps.in_flight_bytes = ps.in_flight_bytes.saturating_sub(size);
                }
            }
        }
        holders
    }

    /// Adds (or re-adds) a peer. A banned peer stays banned: returns false.
    pub fn add_peer(&mut self, peer: P, holdings: Holdings) -> bool {
        if self.banned.contains(&peer) {
            return false;
        }
        if self.peers.contains_key(&peer) {
            self.update_holdings(&peer, holdings);
            return true;
        }
        let ps = PeerState {
            holdings,
            refused: BTreeSet::new(),
            in_flight: BTreeMap::new(),
            in_flight_bytes: 0,
            rate: 0.0,
            min_latency: None,
            last_completion: None,
            failures: 0,
            retry_at: Duration::ZERO,
            stats_chunks: 0,
            stats_bytes: 0,
        };
        self.adjust_availability(&ps, 1);
        self.peers.insert(peer, ps);
        true
    }

    /// A peer's holdings changed (a new `have` bitmap).
    pub fn update_holdings(&mut self, peer: &P, holdings: Holdings) {
        let Some(mut ps) = self.peers.remove(peer) else {
            return;
        };
        self.adjust_availability(&ps, -1);
        ps.holdings = holdings;
        self.adjust_availability(&ps, 1);
        self.peers.insert(peer.clone(), ps);
    }

    fn adjust_availability(&mut self, ps: &PeerState, delta: i32) {
        for i in 0..self.sizes.len() as u32 {
            if !ps.can_serve(i) {
                continue;
            }
            self.set_availability(i, delta);
        }
    }

    fn set_availability(&mut self, chunk: u32, delta: i32) {
        let old = self.availability[chunk as usize];
        let new = old.saturating_add_signed(delta);
        if self.state[chunk as usize] == ChunkState::Pending {
            self.pending.remove(&(old, chunk));
            self.pending.insert((new, chunk));
        }
        self.availability[chunk as usize] = new;
    }

    /// The peer left (disconnected, or dropped by the caller). Its requests return to the pool.
    pub fn remove_peer(&mut self, peer: &P) {
        let Some(ps) = self.peers.remove(peer) else {
            return;
        };
        self.adjust_availability(&ps, -1);
        for &chunk in ps.in_flight.keys() {
            self.drop_holder(chunk, peer);
        }
    }

    /// `peer` no longer has a request for `chunk`; if nobody does, the chunk is pending again.
    fn drop_holder(&mut self, chunk: u32, peer: &P) {
        if let Some(hs) = self.holders.get_mut(&chunk) {
            hs.retain(|h| h != peer);
            if hs.is_empty() {
                self.holders.remove(&chunk);
                if self.state[chunk as usize] == ChunkState::InFlight {
                    self.state[chunk as usize] = ChunkState::Pending;
                    self.pending
                        .insert((self.availability[chunk as usize], chunk));
                }
            }
        }
    }

    fn take_request(&mut self, peer: &P, chunk: u32, now: Duration) -> Option<bool> {
        let size = u64::from(*self.sizes.get(chunk as usize)?);
        let ps = self.peers.get_mut(peer)?;
        ps.in_flight.insert(chunk, now);
        ps.in_flight_bytes += size;
        let hs = self.holders.entry(chunk).or_default();
        let duplicate = !hs.is_empty();
        hs.push(peer.clone());
        if self.state[chunk as usize] == ChunkState::Pending {
            self.pending
                .remove(&(self.availability[chunk as usize], chunk));
            self.state[chunk as usize] = ChunkState::InFlight;
        }
        Some(duplicate)
    }

    /// Whether the peer's window has room for another request of about `next` bytes.
    fn has_room(&self, ps: &PeerState, now: Duration) -> bool {
        if ps.retry_at > now {
            return false;
        }
        let n = ps.in_flight.len();
        if n >= self.config.max_in_flight || ps.in_flight_bytes >= self.config.max_window_bytes {
            return false;
        }
        if n < self.config.min_in_flight {
            return true;
        }
        match (ps.min_latency, ps.rate > 0.0) {
            (Some(lat), true) => {
                // Bandwidth-delay product plus one chunk queued behind it at the server.
                let bdp = (ps.rate * lat.as_secs_f64()) as u64;
                ps.in_flight_bytes < bdp.saturating_add(self.avg_chunk)
            }
            _ => n < self.config.initial_in_flight,
        }
    }

    /// The requests to send now, filling every peer's window. Call after each event.
    pub fn next_requests(&mut self, now: Duration) -> Vec<Assignment<P>> {
        let mut out = Vec::new();
        let peers: Vec<P> = self.peers.keys().cloned().collect();
        // Round-robin one request per peer per pass, so that rarest-first choices are spread.
        loop {
            let mut progressed = false;
            for p in &peers {
                let Some(ps) = self.peers.get(p) else {
                    continue;
                };
                if !self.has_room(ps, now) {
                    continue;
                }
                let pick = self
                    .pending
                    .iter()
                    .find(|&&(_, c)| ps.can_serve(c))
                    .map(|&(_, c)| c);
                if let Some(c) = pick {
                    if self.take_request(p, c, now).is_some() {
                        out.push(Assignment {
                            peer: p.clone(),
                            chunk: c,
                            duplicate: false,
                        });
                        progressed = true;
                    }
                }
            }
            if !progressed {
                break;
            }
        }
        if self.config.endgame && self.pending.is_empty() {
            for p in &peers {
                if let Some(c) = self.endgame_pick(p, now) {
                    if self.take_request(p, c, now).is_some() {
                        out.push(Assignment {
                            peer: p.clone(),
                            chunk: c,
                            duplicate: true,
                        });
                    }
                }
            }
        }
        out
    }

    /// An in-flight chunk that `peer` should duplicate, if any.
    fn endgame_pick(&self, peer: &P, now: Duration) -> Option<u32> {
        let ps = self.peers.get(peer)?;
        // Only an idle peer duplicates, one request at a time: the waste is at most one chunk.
        if !ps.in_flight.is_empty() || !self.has_room(ps, now) {
            return None;
        }
        let mut best: Option<(f64, u32)> = None;
        for (&chunk, hs) in &self.holders {
            if hs.len() >= 2 || hs.contains(peer) || !ps.can_serve(chunk) {
                continue;
            }
            let size = u64::from(self.sizes[chunk as usize]);
            let Some(orig) = hs.first().and_then(|h| self.peers.get(h)) else {
                continue;
            };
            let Some(&sent) = orig.in_flight.get(&chunk) else {
                continue;
            };
            let elapsed = now.saturating_sub(sent).as_secs_f64();
            let late = match orig.expected_secs(size) {
                Some(exp) => {
                    let queued = orig.in_flight.len() as f64;
                    let late = elapsed > self.config.late_factor * exp * queued.max(1.0);
                    let mine = ps.expected_secs(size);
                    let remaining = (exp * queued.max(1.0) - elapsed).max(0.0);
                    late || mine.is_some_and(|m| 2.0 * m < remaining)
                }
                // The original peer has never delivered: duplicate once it has had a few seconds.
                None => elapsed > 5.0,
            };
            if late && best.is_none_or(|(e, _)| elapsed > e) {
                best = Some((elapsed, chunk));
            }
        }
        best.map(|(_, c)| c)
    }

    /// `peer` delivered `chunk` and its hash matched.
    pub fn on_received(&mut self, peer: &P, chunk: u32, now: Duration) -> Received<P> {
        let Some(&size) = self.sizes.get(chunk as usize) else {
            return Received::AlreadyDone;
        };
        if let Some(ps) = self.peers.get_mut(peer) {
            if let Some(sent) = ps.in_flight.remove(&chunk) {
                ps.in_flight_bytes = ps.in_flight_bytes.saturating_sub(u64::from(size));
                let latency = now.saturating_sub(sent);
                ps.min_latency = Some(ps.min_latency.map_or(latency, |l| l.min(latency)));
                // Service time: from when this request could start being served (it was sent, and
                // the previous response had finished) to now.
                let start = ps.last_completion.map_or(sent, |l| l.max(sent));
                let service = now.saturating_sub(start).as_secs_f64().max(1e-6);
                let sample = f64::from(size) / service;
                ps.rate = if ps.rate <= 0.0 {
                    sample
                } else {
                    0.75 * ps.rate + 0.25 * sample
                };
                ps.last_completion = Some(now);
                ps.failures = 0;
                ps.stats_chunks += 1;
                ps.stats_bytes += u64::from(size);
            }
        }
        if self.state[chunk as usize] == ChunkState::Done {
            return Received::AlreadyDone;
        }
        if self.state[chunk as usize] == ChunkState::Pending {
            self.pending
                .remove(&(self.availability[chunk as usize], chunk));
        }
        let mut cancel = self.release_holders(chunk);
        cancel.retain(|p| p != peer);
        self.finish(chunk);
        Received::New { cancel }
    }

    /// `peer` sent bytes for `chunk` whose hash does not match: it is banned for this transfer and
    /// every request it held goes back to the pool (or to the other peer already asked).
    pub fn on_corrupt(&mut self, peer: &P, _chunk: u32) {
        self.remove_peer(peer);
        self.banned.insert(peer.clone());
    }

    /// A request failed without a verdict on the peer's honesty.
    pub fn on_failed(&mut self, peer: &P, chunk: u32, failure: Failure, now: Duration) {
        let size = self.sizes.get(chunk as usize).map_or(0, |&s| u64::from(s));
        let mut drop_peer = false;
        let mut lost_holding = false;
        if let Some(ps) = self.peers.get_mut(peer) {
            if ps.in_flight.remove(&chunk).is_some() {
                ps.in_flight_bytes = ps.in_flight_bytes.saturating_sub(size);
            }
            match failure {
                Failure::NotFound => {
                    lost_holding = ps.can_serve(chunk);
                    ps.refused.insert(chunk);
                }
                Failure::Busy(wait) => ps.retry_at = ps.retry_at.max(now + wait),
                Failure::Io => {
                    ps.failures += 1;
                    let shift = ps.failures.saturating_sub(1).min(10);
                    ps.retry_at = now + self.config.backoff * (1u32 << shift);
                    drop_peer = ps.failures >= self.config.max_failures;
                }
            }
        }
        if lost_holding {
            self.set_availability(chunk, -1);
        }
        self.drop_holder(chunk, peer);
        if drop_peer {
            self.remove_peer(peer);
        }
    }

    /// When a backed-off peer becomes usable again (so the caller can sleep until then).
    pub fn next_wakeup(&self, now: Duration) -> Option<Duration> {
        self.peers
            .values()
            .map(|p| p.retry_at)
            .filter(|&t| t > now)
            .min()
    }

    /// Whether every chunk is done.
    pub fn is_complete(&self) -> bool {
        self.done as usize == self.sizes.len()
    }

    /// Whether some pending chunk has no usable peer that holds it (the caller should find peers).
    pub fn has_unavailable(&self) -> bool {
        self.pending.first().is_some_and(|&(a, _)| a == 0)
    }

    pub fn chunk_count(&self) -> usize {
        self.sizes.len()
    }

    pub fn done_count(&self) -> u32 {
        self.done
    }

    pub fn done_bytes(&self) -> u64 {
        self.done_bytes
    }

    pub fn total_bytes(&self) -> u64 {
        self.total_bytes
    }

    pub fn in_flight(&self) -> usize {
        self.peers.values().map(|p| p.in_flight.len()).sum()
    }

    pub fn is_banned(&self, peer: &P) -> bool {
        self.banned.contains(peer)
    }

    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }

    pub fn peer_stats(&self, peer: &P) -> Option<PeerStats> {
        self.peers.get(peer).map(|p| PeerStats {
            chunks: p.stats_chunks,
            bytes: p.stats_bytes,
            in_flight: p.in_flight.len(),
            in_flight_bytes: p.in_flight_bytes,
            rate: p.rate,
            failures: p.failures,
        })
    }
}

#[cfg(test)]
#[path = "scheduler_tests.rs"]
mod tests;
