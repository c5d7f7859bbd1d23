//! The paced-lane phase of a fetch: before the chunk streams, a node that knows its link's rate
//! asks a peer to send the missing chunks over the paced lane ([`crate::net::paced::session`]), session
//! after session (each at most 64 MiB), and verifies and stores each chunk as it completes. It
//! gives the rest to the chunk streams when a peer does not offer the lane or has none of the
//! chunks (the next peer is asked), when a chunk fails verification (a datagram can be forged by
//! anyone on the path, so that is not proof against the peer: the lane stops, and the chunk
//! streams, where a wrong chunk does ban its sender, take over), or when a peer that served the
//! lane stays silent longer than the profile's outage patience. Until then a silent peer (a link
//! outage, a restart) is re-dialed and asked again for what is still missing: the chunks that
//! arrived are in the store, so a field station rides out a 30-minute outage in one fetch.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use libp2p::PeerId;
use tokio::sync::mpsc;
use tokio::time::Instant;
use zdn_protocol::chunk::{self, ChunkRef};
use zdn_protocol::manifest::SignedManifest;
use zdn_protocol::sync::{SyncScheduler, SyncWindows};
use zdn_protocol::wire::{ChunkBitmap, MAX_STORED_CHUNK};
use zdn_protocol::Hash;

use crate::net::error::FetchError;
use crate::net::fetch::redial::Backoff;
use crate::net::fetch::{wait_for_window, FetchProgress};
use crate::net::handle::NodeHandle;
use crate::net::paced::session::{session, PacedLane, PacedReport, SessionEnd, SessionError};

/// What the lane phase of one fetch works with.
pub(crate) struct LanePhase<'a> {
    pub node: &'a NodeHandle,
    pub lane: Arc<PacedLane>,
    pub m: &'a SignedManifest,
    pub distinct: &'a [ChunkRef],
    pub sched: &'a mut SyncScheduler<PeerId>,
    /// Chunk bytes received by the fetch.
    pub received: &'a Arc<AtomicU64>,
    pub windows: &'a SyncWindows,
}

/// How asking one peer ended.
enum PeerEnd {
    /// Nothing more from this peer (it has no more, or it stopped); the next may be asked.
    Next,
    /// A chunk failed verification: the lane stops, the chunk streams fetch the rest.
    Stop,
}

impl LanePhase<'_> {
    /// Runs the lane until it has brought every chunk or cannot bring more; `None` when no peer
    /// offered it anything.
    pub async fn run(
        mut self,
        peers: &[PeerId],
        progress: &mut (dyn FnMut(&FetchProgress) + Send),
    ) -> Result<Option<PacedReport>, FetchError> {
        let mut best: Option<PacedReport> = None;
        for (n, &peer) in peers.iter().enumerate() {
            // Only the last peer is waited for through an outage; with others left, a silent
            // peer hands over to the next at once (a dead seeder must not hold the fetch while
            // another could serve it).
            let patience = if n + 1 == peers.len() {
                self.node.tuning.outage_patience
            } else {
                Duration::ZERO
            };
            let mut report = PacedReport {
                peer: peer.to_string(),
                ..PacedReport::default()
            };
            let end = self.ask_peer(peer, patience, &mut report, progress).await?;
            if report.sessions > 0 || best.is_none() {
                best = Some(report);
            }
            if matches!(end, PeerEnd::Stop) || self.sched.is_complete() {
                break;
            }
        }
        Ok(best.filter(|r| r.sessions > 0))
    }

    /// The chunks still missing.
    fn wanted(&self) -> Option<ChunkBitmap> {
        let mut wanted = ChunkBitmap::new(self.distinct.len() as u32);
        let mut any = false;
        for i in 0..self.distinct.len() as u32 {
            if !self.sched.is_done(i) {
                wanted.set(i);
                any = true;
            }
        }
        any.then_some(wanted)
    }

    fn progress(&self, peers: usize, waiting_for_window_s: u32) -> FetchProgress {
        FetchProgress {
            name: self.m.manifest.name.clone(),
            done_bytes: self.sched.done_bytes(),
            total_bytes: self.sched.total_bytes(),
            received_bytes: self.received.load(Ordering::Relaxed),
            peers,
            waiting_for_window_s,
        }
    }

    /// Sessions with one peer, one after another, until it has sent everything it can. A peer
    /// that served the lane and goes quiet (an outage, a restart) is waited for, re-dialed and
    /// asked again, for up to `patience`.
    async fn ask_peer(
        &mut self,
        peer: PeerId,
        patience: Duration,
        report: &mut PacedReport,
        progress: &mut (dyn FnMut(&FetchProgress) + Send),
    ) -> Result<PeerEnd, FetchError> {
        // When this peer last sent lane data, and the waits before asking a silent peer again.
        let mut last_heard: Option<Instant> = None;
        let mut backoff = Backoff::new(&self.node.tuning);
        loop {
            let Some(wanted) = self.wanted() else {
                return Ok(PeerEnd::Next);
            };
            // Outside every sync window the lane sends nothing: wait for the next one.
            let this = &*self;
            wait_for_window(self.windows, &mut |w| progress(&this.progress(0, w))).await;
            let chunks_before = report.chunks;
            let (end, counts, bad) = self.one_session(peer, wanted, report, progress).await?;
            report.sessions += counts.sessions;
            report.datagrams += counts.datagrams;
            report.duplicates += counts.duplicates;
            report.payload_bytes += counts.payload_bytes;
            if counts.datagrams > 0 {
                last_heard = Some(Instant::now());
                backoff.reset();
            }
            if let Some(ci) = bad {
                report.stopped = Some(format!(
                    "chunk {ci} failed verification; the chunk streams fetch the rest"
                ));
                return Ok(PeerEnd::Stop);
            }
            match end {
                Ok(SessionEnd::Complete) if report.chunks > chunks_before => continue,
                Ok(SessionEnd::Complete) => return Ok(PeerEnd::Next),
                // The sync window closed: the sender was told to stop; wait, then the rest.
                Ok(SessionEnd::WindowClosed) => continue,
                Ok(SessionEnd::NotFound) => {
                    report.stopped = Some("the peer has none of the chunks".into());
                    return Ok(PeerEnd::Next);
                }
                Err(SessionError {
                    reason,
                    silent: true,
                }) if last_heard.is_some_and(|t| t.elapsed() + backoff.peek() < patience) => {
                    // A peer that served the lane went quiet: wait, re-dial, ask for the rest.
                    report.resumes += 1;
                    report.last_silence = Some(reason);
                    tokio::time::sleep(backoff.next_wait()).await;
                    if !self.node.is_connected(peer).await.unwrap_or(false) {
                        let _ = self.node.redial(peer).await;
                    }
                }
                Err(e) => {
                    report.stopped = Some(e.reason);
                    return Ok(PeerEnd::Next);
                }
            }
        }
    }

    /// One session with `peer` for the `wanted` chunks: each chunk that completes is verified and
    /// stored as it comes. Returns how the session ended, its counts, and the first chunk that
    /// failed verification, if one did.
    async fn one_session(
        &mut self,
        peer: PeerId,
        wanted: ChunkBitmap,
        report: &mut PacedReport,
        progress: &mut (dyn FnMut(&FetchProgress) + Send),
    ) -> Result<SessionOutcome, FetchError> {
        let (tx, mut rx) = mpsc::unbounded_channel::<(u32, Vec<u8>)>();
        let mut counts = PacedReport::default();
        let mut bad = None;
        let mut last_progress = Instant::now();
        let end = {
            let sess = session(
                self.node,
                self.lane.clone(),
                (peer, self.m.hash(), wanted),
                &tx,
                self.received,
                self.windows,
                &mut counts,
            );
            tokio::pin!(sess);
            loop {
                tokio::select! {
                    r = &mut sess => break r,
                    Some((ci, stored)) = rx.recv() => {
                        match self.take_chunk(ci, stored).await? {
                            Some(n) => report.chunks += n,
                            None => { bad = Some(ci); break Err(SessionError::fatal("")); }
                        }
                    }
                }
                if last_progress.elapsed() >= Duration::from_millis(200) {
                    last_progress = Instant::now();
                    progress(&self.progress(1, 0));
                }
            }
        };
        drop(tx);
        // Chunks that completed as the session ended.
        while bad.is_none() {
            let Ok((ci, stored)) = rx.try_recv() else {
                break;
            };
            match self.take_chunk(ci, stored).await? {
                Some(n) => report.chunks += n,
                None => bad = Some(ci),
            }
        }
        Ok((end, counts, bad))
    }

    /// Verifies and stores one chunk from the lane: `Some(1)` when it is new and good, `Some(0)`
    /// when it was here already, `None` when it does not hash to its id or decode to its length.
    async fn take_chunk(&mut self, ci: u32, stored: Vec<u8>) -> Result<Option<u64>, FetchError> {
        let Some(r) = self.distinct.get(ci as usize) else {
            return Ok(None);
        };
        if Hash::of(&stored) != r.id
            || stored.len() > MAX_STORED_CHUNK
            || chunk::decode(&stored, r).is_err()
        {
            return Ok(None);
        }
        if self.sched.is_done(ci) {
            return Ok(Some(0));
        }
        let id = r.id;
        self.node
            .store
            .call(move |s| s.put_chunks_logged(vec![(id, stored)]))
            .await?;
        self.sched.mark_done(ci);
        Ok(Some(1))
    }
}

/// How a session ended, its counts, and the chunk that failed verification, if any.
type SessionOutcome = (Result<SessionEnd, SessionError>, PacedReport, Option<u32>);
