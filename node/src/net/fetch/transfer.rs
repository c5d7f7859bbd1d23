//! [`Transfer`]: the chunks of one object, from the peers that hold them, into the store. The
//! sans-IO `SyncScheduler` decides which chunk goes to which peer; this drives it over chunk pipes,
//! checks every answer, drops a peer that sends a wrong chunk or trickles (and counts it against the
//! peer node-wide: a wrong chunk bans it from every transfer), hands a lost peer to the re-dialer,
//! and finally checks the whole object against the signed hash before the manifest is committed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use libp2p::PeerId;
use tokio::sync::mpsc;
use tokio::time::Instant;
use zdn_protocol::chunk::{self, ChunkRef};
use zdn_protocol::manifest::SignedManifest;
use zdn_protocol::sync::{Failure, Received, SyncScheduler};
use zdn_protocol::wire::{max_stored_len, ChunkBitmap};
use zdn_protocol::Hash;

use crate::net::chunk::pipe::{ChunkPipe, Outcome, PipeResult};
use crate::net::error::FetchError;
use crate::net::handle::NodeHandle;
use crate::net::paced::phase::LanePhase;
use crate::net::paced::session::PacedReport;
use crate::net::peers::Offence;

use super::announcement::keep_announcement;
use super::chunks::{distinct_chunks, holdings};
use super::peers::{holdings_of, Sources};
use super::redial::Redialer;
use super::window::second_of_day;
use super::{FetchOptions, FetchProgress, FetchReport, PeerReport};
use crate::net::swarm::behaviour::MAX_GOSSIP_LEN;

/// One object's transfer in progress.
pub(super) struct Transfer<'a> {
    node: &'a NodeHandle,
    m: &'a SignedManifest,
    hash: Hash,
    distinct: Vec<ChunkRef>,
    /// For each manifest position, the index of its distinct chunk.
    positions: Vec<u32>,
    /// Largest have-bitmap answer accepted.
    have_max: usize,
    sched: SyncScheduler<PeerId>,
    /// Chunk bytes received by this transfer (other fetches of the node may run meanwhile).
    received: Arc<AtomicU64>,
    resumed: usize,
    pipes: HashMap<PeerId, ChunkPipe>,
    /// Requests handed to each peer's pipe and not yet answered.
    outstanding: HashMap<PeerId, usize>,
    banned: Vec<PeerId>,
    /// Peers dropped for answering below the floor rate.
    trickled: Vec<PeerId>,
    /// Chunks and bytes of peers lost and re-added (the scheduler starts them afresh), and of the
    /// paced lane.
    carried: HashMap<PeerId, (u64, u64)>,
    results_tx: mpsc::UnboundedSender<PipeResult>,
}

impl<'a> Transfer<'a> {
    /// A transfer of `m`'s chunks; what the store holds already counts as done (resume).
    async fn new(
        node: &'a NodeHandle,
        m: &'a SignedManifest,
        opts: &FetchOptions,
        results_tx: mpsc::UnboundedSender<PipeResult>,
    ) -> Result<Transfer<'a>, FetchError> {
        let (distinct, positions) = distinct_chunks(m);
        let sizes = distinct.iter().map(|r| r.len).collect();
        let mut sched = SyncScheduler::new(sizes, opts.scheduler.clone());
        // Existence checks in bounded store jobs (key-only lookups).
        let ids: Vec<Hash> = distinct.iter().map(|r| r.id).collect();
        let present = node.store.present_chunks(&ids).await?;
        let mut resumed = 0;
        for (i, p) in present.iter().enumerate() {
            if *p {
                sched.mark_done(i as u32);
                resumed += 1;
            }
        }
        Ok(Transfer {
            node,
            m,
            hash: m.hash(),
            have_max: 1 + 32 + 4 + positions.len().div_ceil(8),
            distinct,
            positions,
            sched,
            received: Arc::new(AtomicU64::new(0)),
            resumed,
            pipes: HashMap::new(),
            outstanding: HashMap::new(),
            banned: Vec::new(),
            trickled: Vec::new(),
            carried: HashMap::new(),
            results_tx,
        })
    }

    fn add_peer(&mut self, p: PeerId, held: &ChunkBitmap) {
        if self.node.is_banned(&p) || self.trickled.contains(&p) {
            return;
        }
        if let Some(h) = holdings(held, &self.positions, self.distinct.len()) {
            self.sched.add_peer(p, h);
        }
    }

    /// Asks `peers` what they hold and adds those that answer; why others could not be asked goes
    /// to `problems`.
    async fn add_holders(&mut self, peers: &[PeerId], problems: &mut Vec<String>) {
        let round = holdings_of(self.node, self.hash, peers, self.have_max, problems).await;
        for (p, held) in round.held {
            self.add_peer(p, &held);
        }
    }

    /// Providers the DHT named: asked like the others, and each that says it does not have the
    /// object is counted against (a false provider record).
    async fn add_providers(&mut self, found: &[PeerId], problems: &mut Vec<String>) {
        let round = holdings_of(self.node, self.hash, found, self.have_max, problems).await;
        for p in round.without {
            self.node.penalise(p, Offence::FalseProvider).await;
        }
        for (p, held) in round.held {
            self.node.provider_verified(self.hash, p).await;
            self.add_peer(p, &held);
        }
    }

    fn progress(&self, received_bytes: u64, waiting_for_window_s: u32) -> FetchProgress {
        FetchProgress {
            name: self.m.manifest.name.clone(),
            done_bytes: self.sched.done_bytes(),
            total_bytes: self.sched.total_bytes(),
            received_bytes,
            peers: self.sched.peer_count(),
            waiting_for_window_s,
            ..Default::default()
        }
    }

    /// Hands the scheduler's next requests to the peers' pipes.
    fn send_requests(&mut self, now: Duration) {
        for a in self.sched.next_requests(now) {
            let (id, len) = {
                let r = &self.distinct[a.chunk as usize];
                (r.id, r.len)
            };
            let spawn = |t: &Transfer| {
                ChunkPipe::spawn(
                    t.node.clone(),
                    a.peer,
                    t.hash,
                    t.results_tx.clone(),
                    t.received.clone(),
                )
            };
            if !self.pipes.contains_key(&a.peer) {
                let pipe = spawn(self);
                self.pipes.insert(a.peer, pipe);
            }
            let sent = self
                .pipes
                .get(&a.peer)
                .is_some_and(|p| p.send(a.chunk, id, len));
            if !sent {
                // That pipe ended (its stream broke): a fresh one for this and later requests.
                let pipe = spawn(self);
                let sent = pipe.send(a.chunk, id, len);
                self.pipes.insert(a.peer, pipe);
                if !sent {
                    self.sched.on_failed(&a.peer, a.chunk, Failure::Io, now);
                    continue;
                }
            }
            *self.outstanding.entry(a.peer).or_default() += 1;
        }
    }

    fn idle(&self) -> bool {
        self.outstanding.values().all(|&n| n == 0)
    }

    /// Why no request is out and none can be made.
    fn stuck_reason(&self) -> String {
        if self.sched.peer_count() > 0 {
            return "no peer holds the remaining chunks".to_string();
        }
        if self.banned.is_empty() {
            "every peer failed or went away".to_string()
        } else {
            format!(
                "every peer failed or was banned ({} banned)",
                self.banned.len()
            )
        }
    }

    /// A peer's answer to a chunk request.
    async fn on_result(
        &mut self,
        (peer, ci, outcome): PipeResult,
        now: Duration,
        redial: &mut Redialer,
    ) -> Result<(), FetchError> {
        if let Some(n) = self.outstanding.get_mut(&peer) {
            *n = n.saturating_sub(1);
        }
        let r = &self.distinct[ci as usize];
        // A chunk that does not hash to its id or decode to its length counts as a wrong answer.
        let outcome = match outcome {
            Outcome::Chunk(stored)
                if Hash::of(&stored) != r.id
                    || stored.len() > max_stored_len(r.len)
                    || chunk::decode(&stored, r).is_err() =>
            {
                Outcome::Wrong
            }
            o => o,
        };
        match outcome {
            Outcome::Chunk(stored) => {
                // A duplicate still in another peer's pipe arrives later and is dropped as
                // already done: at most one per peer (the scheduler's end-game rule).
                if let Received::New { .. } = self.sched.on_received(&peer, ci, now) {
                    let id = r.id;
                    self.node
                        .store
                        .call(move |s| s.put_chunks_logged(vec![(id, stored)]))
                        .await?;
                }
            }
            Outcome::NotFound => self.sched.on_failed(&peer, ci, Failure::NotFound, now),
            Outcome::Busy(d) => self.sched.on_failed(&peer, ci, Failure::Busy(d), now),
            Outcome::Io => self.on_io_failure(peer, ci, now, redial).await,
            Outcome::Slow => {
                self.drop_peer(peer, ci);
                if !self.trickled.contains(&peer) {
                    self.trickled.push(peer);
                }
                self.node.penalise(peer, Offence::Trickle).await;
            }
            Outcome::Wrong => {
                self.drop_peer(peer, ci);
                if !self.banned.contains(&peer) {
                    self.banned.push(peer);
                }
                self.node.penalise(peer, Offence::BadData).await;
            }
        }
        Ok(())
    }

    /// A request failed on the stream. A peer dropped for failing too often, or whose connection
    /// is gone, leaves the transfer: its requests go elsewhere, and a re-dial may bring it back.
    async fn on_io_failure(&mut self, peer: PeerId, ci: u32, now: Duration, redial: &mut Redialer) {
        let before = self.sched.peer_stats(&peer);
        self.sched.on_failed(&peer, ci, Failure::Io, now);
        let Some(st) = before else { return };
        let dropped = self.sched.peer_stats(&peer).is_none();
        if dropped || !self.node.is_connected(peer).await.unwrap_or(true) {
            self.sched.remove_peer(&peer);
            self.pipes.remove(&peer);
            self.outstanding.remove(&peer);
            let c = self.carried.entry(peer).or_default();
            c.0 += st.chunks;
            c.1 += st.bytes;
            redial.lost(peer, st.chunks > 0);
        }
    }

    /// A peer sent bad data or trickled: out of this transfer, its pipe closed, its requests
    /// back in the pool (the caller counts it against the peer node-wide).
    fn drop_peer(&mut self, peer: PeerId, chunk: u32) {
        self.sched.on_corrupt(&peer, chunk);
        if let Some(p) = self.pipes.remove(&peer) {
            p.abort();
        }
        self.outstanding.remove(&peer);
    }

    /// Every chunk is verified; now the whole object against the signed hash, then the manifest is
    /// committed (the object becomes visible) — in bounded store jobs, so peers this node serves
    /// are answered meanwhile.
    async fn verify_and_commit(&self) -> Result<(), FetchError> {
        let hash = self.hash;
        match self
            .node
            .store
            .verify_and_commit(self.m.clone(), true)
            .await
        {
            Ok(()) => Ok(()),
            Err(e @ crate::store::StoreError::ObjectHash { .. }) => {
                self.node
                    .store
                    .call(move |s| s.abandon_partial(&hash))
                    .await?;
                Err(FetchError::Verification(e.to_string()))
            }
            Err(e) => Err(FetchError::Store(e)),
        }
    }

    fn report(self, src: &Sources, redial: &Redialer, paced: Option<PacedReport>) -> FetchReport {
        let mut peers: Vec<PeerReport> = src
            .peers
            .iter()
            .filter_map(|p| {
                let now = self.sched.peer_stats(p).map(|s| (s.chunks, s.bytes));
                let before = self.carried.get(p).copied();
                let banned = self.banned.contains(p) || self.node.is_banned(p);
                let trickled = self.trickled.contains(p);
                if now.is_none() && before.is_none() && !banned && !trickled {
                    return None;
                }
                let (c0, b0) = now.unwrap_or_default();
                let (c1, b1) = before.unwrap_or_default();
                Some(PeerReport {
                    peer: p.to_string(),
                    chunks: c0 + c1,
                    bytes: b0 + b1,
                    banned,
                    trickled,
                    from_dht: src.from_dht.contains(p),
                    reconnects: redial.reconnects(p),
                })
            })
            .collect();
        peers.sort_by_key(|p| std::cmp::Reverse(p.bytes));
        FetchReport {
            hash: self.hash,
            name: self.m.manifest.name.clone(),
            kind: self.m.manifest.kind,
            object_len: self.m.manifest.object_len,
            already_present: false,
            chunks: self.distinct.len(),
            chunks_resumed: self.resumed,
            bytes_received: self.received.load(Ordering::Relaxed),
            seconds: 0.0,
            peers,
            base: None,
            components: Vec::new(),
            notes: self.m.manifest.extra.clone(),
            paced,
        }
    }
}

/// Transfers the chunks of `m` from `src` into the store, verifies the object and commits it.
pub(super) async fn transfer(
    node: &NodeHandle,
    m: &SignedManifest,
    mut src: Sources,
    opts: &FetchOptions,
    progress: &mut (dyn FnMut(&FetchProgress) + Send),
) -> Result<FetchReport, FetchError> {
    let (results_tx, mut results) = mpsc::unbounded_channel::<PipeResult>();
    let mut t = Transfer::new(node, m, opts, results_tx).await?;
    let paced = t.run_lane(&src, opts, progress).await?;
    t.find_holders(&mut src).await?;
    let mut redial = Redialer::new(node.clone(), t.hash, t.have_max);
    t.run_streams(&mut src, opts, &mut results, &mut redial, progress)
        .await?;
    t.pipes.clear();
    t.verify_and_commit().await?;
    if m.as_bytes().len() > MAX_GOSSIP_LEN {
        // Needed to announce it at all: part of the fetch.
        keep_announcement(node, m, &src.peers).await;
    } else if node.serves {
        // For the peers that catch up from this node; the fetch is done without it.
        let (node, m, peers) = (node.clone(), m.clone(), src.peers.clone());
        tokio::spawn(async move { keep_announcement(&node, &m, &peers).await });
    }
    let _ = node.provide(t.hash).await;
    Ok(t.report(&src, &redial, paced))
}

impl Transfer<'_> {
    /// A node that knows its link's rate asks for the chunks over the paced lane first; what it
    /// does not bring, the chunk streams fetch.
    async fn run_lane(
        &mut self,
        src: &Sources,
        opts: &FetchOptions,
        progress: &mut (dyn FnMut(&FetchProgress) + Send),
    ) -> Result<Option<PacedReport>, FetchError> {
        let Some(lane) = self.node.paced.clone() else {
            return Ok(None);
        };
        if self.sched.is_complete() {
            return Ok(None);
        }
        let phase = LanePhase {
            node: self.node,
            lane,
            m: self.m,
            distinct: &self.distinct,
            sched: &mut self.sched,
            received: &self.received,
            windows: &opts.sync_windows,
            ids: self.distinct.iter().map(|r| r.id).collect(),
        };
        let r = phase.run(&src.peers, progress).await?;
        if let Some(r) = &r {
            if let Some(p) = src.peers.iter().find(|p| p.to_string() == r.peer) {
                self.carried.insert(*p, (r.chunks, r.payload_bytes));
            }
        }
        Ok(r)
    }

    /// Asks the peers (else the DHT's providers) which chunks they hold. A peer that could not be
    /// asked is not a peer without the object: when nobody answered, the error says why (exit 4,
    /// run again) instead of "not found".
    async fn find_holders(&mut self, src: &mut Sources) -> Result<(), FetchError> {
        if self.sched.is_complete() {
            return Ok(());
        }
        let mut problems = Vec::new();
        self.add_holders(&src.peers.clone(), &mut problems).await;
        if self.sched.peer_count() == 0 {
            let new = src.ask_dht(self.node, self.hash).await?;
            self.add_providers(&new, &mut problems).await;
        }
        if self.sched.peer_count() > 0 {
            return Ok(());
        }
        if !problems.is_empty() {
            return Err(FetchError::Incomplete {
                hash: self.hash,
                done: 0,
                total: self.distinct.len(),
                reason: format!(
                    "no peer answered which chunks it has: {}",
                    problems.join("; ")
                ),
            });
        }
        Err(FetchError::NotFound {
            what: "object",
            hash: self.hash,
            peers: src.peers.len(),
        })
    }

    /// Requests chunks over the peers' pipes until every chunk is here, inside the sync windows,
    /// bringing back lost peers through `redial` and asking the DHT once when those here cannot
    /// finish.
    async fn run_streams(
        &mut self,
        src: &mut Sources,
        opts: &FetchOptions,
        results: &mut mpsc::UnboundedReceiver<PipeResult>,
        redial: &mut Redialer,
        progress: &mut (dyn FnMut(&FetchProgress) + Send),
    ) -> Result<(), FetchError> {
        let t0 = Instant::now();
        let mut last_progress = Instant::now() - Duration::from_secs(1);
        while !self.sched.is_complete() {
            let now = t0.elapsed();
            let window_open = opts.sync_windows.is_open(second_of_day());
            if !window_open && self.idle() {
                // Outside every window: what was asked has arrived; wait for the next one.
                let wait = opts.sync_windows.wait(second_of_day());
                progress(&self.progress(0, wait));
                tokio::time::sleep(Duration::from_secs(u64::from(wait.clamp(1, 30)))).await;
                continue;
            }
            if window_open {
                self.send_requests(now);
            }
            if self.idle() {
                match self.sched.next_wakeup(now) {
                    Some(at) if self.sched.peer_count() > 0 => {
                        tokio::time::sleep(at.saturating_sub(now)).await;
                        continue;
                    }
                    // A lost peer may come back: wait for its re-dial below.
                    _ if redial.pending() > 0 => {}
                    _ => {
                        // Those here cannot finish it: the DHT may know others (once).
                        let new = src.ask_dht(self.node, self.hash).await?;
                        if !new.is_empty() {
                            self.add_providers(&new, &mut Vec::new()).await;
                            continue;
                        }
                        return Err(FetchError::Incomplete {
                            hash: self.hash,
                            done: self.sched.done_count(),
                            total: self.sched.chunk_count(),
                            reason: self.stuck_reason(),
                        });
                    }
                }
            }
            // Wake at least once a second: the end game looks for late requests by time.
            let result = tokio::select! {
                Some(r) = results.recv() => r,
                Some((p, held)) = redial.next(), if redial.pending() > 0 => {
                    if let Some(held) = held {
                        self.add_peer(p, &held);
                    }
                    continue;
                }
                _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
            };
            self.on_result(result, t0.elapsed(), redial).await?;
            if last_progress.elapsed() >= Duration::from_millis(200) || self.sched.is_complete() {
                last_progress = Instant::now();
                progress(&self.progress(self.received.load(Ordering::Relaxed), 0));
            }
        }
        Ok(())
    }
}
