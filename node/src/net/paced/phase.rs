//! The paced-lane phase of a fetch: before the chunk streams, a node with the lane on asks a peer
//! to send the missing chunks over the paced lane ([`crate::net::paced::session`]), session after
//! session (each at most 64 MiB), and verifies and stores each chunk as it completes. Each request
//! names the byte ranges of partly received chunks kept on disk
//! ([`crate::net::paced::partial`]), so only what never arrived is sent again. It gives the rest
//! to the next peer, and then to the chunk streams, when a peer does not offer the lane or has
//! none of the chunks, when a chunk fails verification (the datagrams are sealed under a key only
//! that peer and this node hold, so a bad chunk is the peer's doing: it is banned node-wide, like
//! a peer that sends a bad chunk on a stream; a chunk completed from bytes held on disk that fails
//! is only dropped and asked for whole), or when a peer that served the lane stays silent longer
//! than the profile's outage patience. A session rides out an outage itself (probing the sender);
//! a peer whose session ended (it restarted, say) is re-dialed and asked again for what is still
//! missing, so a field station rides out a 30-minute outage in one fetch.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use libp2p::PeerId;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
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
use crate::net::paced::lane::PacedLane;
use crate::net::paced::partial::PartialChunks;
use crate::net::paced::session::{session, Ask, LaneChunk, PacedReport, SessionEnd, SessionError};
use crate::net::peers::Offence;
use zdn_protocol::paced::{HeldChunk, MAX_HELD_CHUNKS, MAX_HELD_TOTAL, MAX_SESSION_BYTES};

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
    /// The distinct chunks' ids (where partly received chunks are kept).
    pub ids: Arc<[Hash]>,
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
            if self.node.is_banned(&peer) {
                continue;
            }
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
            self.ask_peer(peer, patience, &mut report, progress).await?;
            if report.sessions > 0 || best.is_none() {
                best = Some(report);
            }
            if self.sched.is_complete() {
                break;
            }
        }
        Ok(best.filter(|r| r.sessions > 0))
    }

    /// The byte ranges held on disk of the `wanted` chunks (within the request's caps, and at most
    /// a session's worth of chunks).
    async fn held(&self, wanted: &ChunkBitmap) -> Vec<HeldChunk> {
        let Some(partial) = self.lane.partial.clone() else {
            return Vec::new();
        };
        let mine: std::collections::HashMap<Hash, u32> = self
            .distinct
            .iter()
            .enumerate()
            .filter(|(i, _)| wanted.get(*i as u32))
            .map(|(i, r)| (r.id, i as u32))
            .collect();
        tokio::task::spawn_blocking(move || held_ranges(&partial, &mine))
            .await
            .unwrap_or_default()
    }

    /// The chunks still missing, less those a running session carries (`carried`).
    fn wanted(&self, carried: &[u32]) -> Option<ChunkBitmap> {
        let n = self.distinct.len();
        let mut skip = vec![false; n];
        for &c in carried {
            if let Some(s) = skip.get_mut(c as usize) {
                *s = true;
            }
        }
        let mut wanted = ChunkBitmap::new(n as u32);
        let mut any = false;
        for (i, skip) in skip.into_iter().enumerate() {
            if !skip && !self.sched.is_done(i as u32) {
                wanted.set(i as u32);
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
            ..Default::default()
        }
    }

    /// Sessions with one peer, one after another, until it has sent everything it can. A peer
    /// that served the lane and goes quiet (an outage, a restart) is waited for, re-dialed and
    /// asked again, for up to `patience`. The next session is asked for while one ends (see
    /// [`Tail`](crate::net::paced::receiving::Tail)), so a large object's sessions follow each
    /// other without the link idling for a setup in between.
    async fn ask_peer(
        &mut self,
        peer: PeerId,
        patience: Duration,
        report: &mut PacedReport,
        progress: &mut (dyn FnMut(&FetchProgress) + Send),
    ) -> Result<(), FetchError> {
        // When this peer last sent lane data, and the waits before asking a silent peer again.
        let mut last_heard: Option<Instant> = None;
        let mut backoff = Backoff::new(&self.node.tuning);
        let (tx, mut rx) = mpsc::unbounded_channel::<LaneChunk>();
        let mut next: Option<Running> = None;
        loop {
            let current = match next.take() {
                Some(r) => r,
                None => {
                    let Some(wanted) = self.wanted(&[]) else {
                        return Ok(());
                    };
                    // Outside every sync window the lane sends nothing: wait for the next one.
                    let this = &*self;
                    wait_for_window(self.windows, &mut |w| progress(&this.progress(0, w))).await;
                    // A session outlives a lost connection, the next one needs it: dial again.
                    if !self.node.is_connected(peer).await.unwrap_or(false) {
                        let _ = self.node.redial(peer).await;
                    }
                    self.start(peer, wanted, patience, &tx).await
                }
            };
            let chunks_before = report.chunks;
            let run = self
                .drive(current, (peer, patience), (&tx, &mut rx), report, progress)
                .await?;
            next = run.next;
            let counts = run.counts;
            report.sessions += counts.sessions;
            report.datagrams += counts.datagrams;
            report.duplicates += counts.duplicates;
            report.payload_bytes += counts.payload_bytes;
            report.held_bytes += counts.held_bytes;
            report.detached += counts.detached;
            if counts.datagrams > 0 {
                last_heard = Some(Instant::now());
                backoff.reset();
            }
            if let Some(ci) = run.bad {
                // Sealed under a key only that peer and this node hold: its doing.
                self.node.penalise(peer, Offence::BadData).await;
                report.stopped = Some(format!(
                    "chunk {ci} failed verification: the peer is banned; the next peer or the \
                     chunk streams bring the rest"
                ));
                return Ok(());
            }
            match run.end {
                // The next session is under way already.
                Ok(SessionEnd::Complete) if next.is_some() => continue,
                Ok(SessionEnd::Complete) if report.chunks > chunks_before => continue,
                Ok(SessionEnd::Complete) => return Ok(()),
                // The sync window closed: the sender was told to stop; wait, then the rest.
                Ok(SessionEnd::WindowClosed) => next = None,
                Ok(SessionEnd::NotFound) if next.is_some() => continue,
                Ok(SessionEnd::NotFound) => {
                    report.stopped = Some("the peer has none of the chunks".into());
                    return Ok(());
                }
                Err(SessionError {
                    reason,
                    silent: true,
                }) if last_heard.is_some_and(|t| t.elapsed() + backoff.peek() < patience) => {
                    // A peer that served the lane went quiet: wait, re-dial, ask for the rest
                    // (a next session asked for meanwhile is dropped: it went quiet too).
                    next = None;
                    report.resumes += 1;
                    report.last_silence = Some(reason);
                    tokio::time::sleep(backoff.next_wait()).await;
                }
                Err(e) => {
                    report.stopped = Some(e.reason);
                    return Ok(());
                }
            }
        }
    }

    /// Starts a session with `peer` for the `wanted` chunks, as its own task; its chunks go to
    /// `chunks`.
    async fn start(
        &self,
        peer: PeerId,
        wanted: ChunkBitmap,
        patience: Duration,
        chunks: &mpsc::UnboundedSender<LaneChunk>,
    ) -> Running {
        let held = self.held(&wanted).await;
        let (tail_tx, tail) = oneshot::channel();
        let (node, lane, ids) = (self.node.clone(), self.lane.clone(), self.ids.clone());
        let (chunks, received) = (chunks.clone(), self.received.clone());
        let (object, windows) = (self.m.hash(), self.windows.clone());
        let task = tokio::spawn(async move {
            let mut counts = PacedReport::default();
            let ask = Ask {
                peer,
                object,
                wanted,
                held,
                ids: &ids,
                patience,
                tail: Some(tail_tx),
            };
            let end = session(
                &node,
                lane,
                ask,
                (&chunks, &received),
                &windows,
                &mut counts,
            )
            .await;
            (end, counts)
        });
        Running {
            task,
            tail: Some(tail),
        }
    }

    /// Runs `current` to its end, verifying and storing each chunk that completes (the next
    /// session's too, once it runs), and starts the next session when `current` says its end is
    /// near and chunks are left that it does not carry.
    async fn drive(
        &mut self,
        mut current: Running,
        (peer, patience): (PeerId, Duration),
        (tx, rx): (
            &mpsc::UnboundedSender<LaneChunk>,
            &mut mpsc::UnboundedReceiver<LaneChunk>,
        ),
        report: &mut PacedReport,
        progress: &mut (dyn FnMut(&FetchProgress) + Send),
    ) -> Result<Driven, FetchError> {
        let mut bad = None;
        let mut next = None;
        let mut last_progress = Instant::now();
        let mut tail = current.tail.take();
        let (end, counts) = loop {
            tokio::select! {
                r = &mut current.task => {
                    break r.unwrap_or_else(|e| {
                        (Err(SessionError::fatal(format!("the session failed: {e}"))), PacedReport::default())
                    });
                }
                Some((ci, stored, resumed)) = rx.recv() => {
                    match self.take_chunk(ci, stored, resumed, report).await? {
                        Some(n) => report.chunks += n,
                        None => {
                            bad = Some(ci);
                            current.task.abort();
                            break (Err(SessionError::fatal("")), PacedReport::default());
                        }
                    }
                }
                Ok(carried) = async {
                    match tail.as_mut() {
                        Some(t) => t.await,
                        None => std::future::pending().await,
                    }
                }, if tail.is_some() => {
                    tail = None;
                    if let Some(wanted) = self.wanted(&carried) {
                        next = Some(self.start(peer, wanted, patience, tx).await);
                        report.overlapped += 1;
                    }
                }
            }
            if last_progress.elapsed() >= Duration::from_millis(200) {
                last_progress = Instant::now();
                progress(&self.progress(1, 0));
            }
        };
        // Chunks that completed as the session ended.
        while bad.is_none() {
            let Ok((ci, stored, resumed)) = rx.try_recv() else {
                break;
            };
            match self.take_chunk(ci, stored, resumed, report).await? {
                Some(n) => report.chunks += n,
                None => bad = Some(ci),
            }
        }
        Ok(Driven {
            end,
            counts,
            bad,
            next: if bad.is_none() { next } else { None },
        })
    }

    /// Verifies and stores one chunk from the lane: `Some(1)` when it is new and good, `Some(0)`
    /// when it was here already or was completed from bytes held on disk that turned out wrong
    /// (dropped: it is asked for whole next time), `None` when it does not hash to its id or
    /// decode to its length.
    async fn take_chunk(
        &mut self,
        ci: u32,
        stored: Vec<u8>,
        resumed: bool,
        report: &mut PacedReport,
    ) -> Result<Option<u64>, FetchError> {
        let Some(r) = self.distinct.get(ci as usize) else {
            return Ok(None);
        };
        let id = r.id;
        if Hash::of(&stored) != r.id
            || stored.len() > MAX_STORED_CHUNK
            || chunk::decode(&stored, r).is_err()
        {
            if let (true, Some(p)) = (resumed, self.lane.partial.clone()) {
                report.held_rejected += 1;
                let _ = tokio::task::spawn_blocking(move || p.remove(&id)).await;
                return Ok(Some(0));
            }
            return Ok(None);
        }
        if self.sched.is_done(ci) {
            return Ok(Some(0));
        }
        self.node
            .store
            .call(move |s| s.put_chunks_logged(vec![(id, stored)]))
            .await?;
        self.sched.mark_done(ci);
        if let Some(p) = self.lane.partial.clone() {
            let _ = tokio::task::spawn_blocking(move || p.remove(&id)).await;
        }
        Ok(Some(1))
    }
}

/// The held ranges on disk of the chunks in `wanted` (id → index among the distinct chunks),
/// ascending by index, within the request's caps and at most a session's bytes.
fn held_ranges(
    partial: &PartialChunks,
    wanted: &std::collections::HashMap<Hash, u32>,
) -> Vec<HeldChunk> {
    let mut out: Vec<(HeldChunk, u32)> = partial
        .ids()
        .into_iter()
        .filter_map(|id| {
            let chunk = *wanted.get(&id)?;
            let h = partial.held(&id)?;
            Some((
                HeldChunk {
                    chunk,
                    ranges: h.ranges,
                },
                h.stored_len,
            ))
        })
        .collect();
    out.sort_by_key(|(h, _)| h.chunk);
    let (mut ranges, mut bytes) = (0usize, 0u64);
    out.into_iter()
        .take(MAX_HELD_CHUNKS)
        .take_while(|(h, len)| {
            ranges += h.ranges.len();
            bytes += u64::from(*len);
            ranges <= MAX_HELD_TOTAL && bytes <= MAX_SESSION_BYTES
        })
        .map(|(h, _)| h)
        .collect()
}

/// A session running as its own task (aborted when dropped), with its counts at the end.
struct Running {
    task: JoinHandle<(Result<SessionEnd, SessionError>, PacedReport)>,
    /// Its chunks, when its end is near.
    tail: Option<oneshot::Receiver<Vec<u32>>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// How a session ended, its counts, the chunk that failed verification (if one did), and the
/// next session if it was started.
struct Driven {
    end: Result<SessionEnd, SessionError>,
    counts: PacedReport,
    bad: Option<u32>,
    next: Option<Running>,
}
