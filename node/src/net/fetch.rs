//! `fetch`: get one object from peers into the store, every byte verified.
//!
//! The order of checks is what makes this safe against lying peers: the manifest must hash to the
//! name the user typed and carry a valid signature from a trusted publisher; each chunk must hash
//! to its id in that manifest and decode to its declared length; the whole object must hash to the
//! manifest's object hash before the manifest is committed (the moment it becomes visible). A
//! peer that sends a chunk whose hash does not match is banned for the transfer and its chunks
//! come from elsewhere. Chunks are stored as they arrive (logged writes), so a killed fetch
//! resumes where it stopped and never downloads a verified chunk again.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use libp2p::{Multiaddr, PeerId};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::time::Instant;
use zdn_protocol::chunk;
use zdn_protocol::manifest::{Kind, SignedManifest};
use zdn_protocol::sync::{Failure, Received, SchedulerConfig, SyncScheduler, SyncWindows};
use zdn_protocol::wire::{ChunkBitmap, MAX_STORED_CHUNK};
use zdn_protocol::Hash;

use super::chunk_pipe::{ChunkPipe, Outcome, PipeResult};
use super::error::FetchError;
use super::fetch_chunks::{distinct_chunks, holdings};
use super::fetch_manifest::obtain_manifest;
use super::fetch_paced::paced_phase;
use super::fetch_peers::{holdings_of, Sources};
use super::handle::NodeHandle;
use super::paced_receive::PacedReport;
use super::redial::Redialer;

/// What to fetch from and how.
#[derive(Clone, Debug)]
pub struct FetchOptions {
    /// Peers to dial and ask, besides those already connected.
    pub peers: Vec<Multiaddr>,
    /// Fetch a missing base of a delta first (else fail with [`FetchError::MissingBase`]).
    pub fetch_base: bool,
    pub scheduler: SchedulerConfig,
    /// When the link may be used (UTC); empty = always. Outside them nothing new is requested.
    pub sync_windows: SyncWindows,
}

impl Default for FetchOptions {
    fn default() -> Self {
        FetchOptions {
            peers: Vec::new(),
            fetch_base: true,
            scheduler: SchedulerConfig::default(),
            sync_windows: SyncWindows::default(),
        }
    }
}

/// Where a transfer stands, for progress bars.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct FetchProgress {
    pub name: String,
    pub done_bytes: u64,
    pub total_bytes: u64,
    pub received_bytes: u64,
    pub peers: usize,
    /// Seconds until the next sync window opens; 0 while transferring.
    #[serde(default)]
    pub waiting_for_window_s: u32,
}

/// One peer's part in a transfer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PeerReport {
    pub peer: String,
    pub chunks: u64,
    pub bytes: u64,
    pub banned: bool,
    /// Found through the DHT (a provider record), not given or connected.
    #[serde(default)]
    pub from_dht: bool,
    /// Times its connection was lost during the transfer and re-dialed successfully.
    #[serde(default)]
    pub reconnects: u32,
}

/// What a fetch did.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FetchReport {
    pub hash: Hash,
    pub name: String,
    pub kind: Kind,
    pub object_len: u64,
    /// The object was already in the store: nothing was transferred.
    pub already_present: bool,
    /// Distinct chunks in the object.
    pub chunks: usize,
    /// Chunks that were already in the store (resume, or shared with another object).
    pub chunks_resumed: usize,
    /// Stored (compressed) chunk bytes received from peers, duplicates and rejects included.
    pub bytes_received: u64,
    pub seconds: f64,
    pub peers: Vec<PeerReport>,
    /// The base fetched first, for a delta whose base was missing.
    pub base: Option<Box<FetchReport>>,
    /// A soup's component deltas, fetched after the recipe (those already present included).
    #[serde(default)]
    pub components: Vec<FetchReport>,
    /// The manifest's signed notes (e.g. `quality`: the delta's measured quality report, JSON).
    #[serde(default)]
    pub notes: Vec<(String, String)>,
    /// What the paced lane brought, when the node knows its link's rate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paced: Option<PacedReport>,
}

/// Fetches `hash` into the node's store: for a delta or a soup its base first when missing, for a
/// soup then its component deltas. A soup already present still gets its missing components, so a
/// fetch interrupted between the recipe and a component completes when run again.
pub async fn fetch(
    node: &NodeHandle,
    hash: Hash,
    opts: &FetchOptions,
    progress: &mut (dyn FnMut(&FetchProgress) + Send),
) -> Result<FetchReport, FetchError> {
    let t0 = Instant::now();
    let mut report = fetch_object(node, hash, opts, progress).await?;
    if report.kind == Kind::Soup {
        let m = node.store.call(move |s| s.require_manifest(&hash)).await?;
        let base = m.manifest.base;
        let deps = node.store.call(move |s| s.dependencies(&m)).await?;
        for d in deps.into_iter().filter(|d| Some(*d) != base) {
            let r = Box::pin(fetch(node, d, opts, progress)).await?;
            report.components.push(r);
        }
        if !report.already_present || report.components.iter().any(|c| !c.already_present) {
            report.seconds = t0.elapsed().as_secs_f64();
        }
    }
    Ok(report)
}

/// Fetches the object itself (after its base, for a delta or a soup).
async fn fetch_object(
    node: &NodeHandle,
    hash: Hash,
    opts: &FetchOptions,
    progress: &mut (dyn FnMut(&FetchProgress) + Send),
) -> Result<FetchReport, FetchError> {
    let t0 = Instant::now();
    if let Some(m) = node.store.call(move |s| s.manifest(&hash)).await? {
        return Ok(FetchReport {
            hash,
            name: m.manifest.name.clone(),
            kind: m.manifest.kind,
            object_len: m.manifest.object_len,
            already_present: true,
            chunks: m.manifest.chunks.len(),
            chunks_resumed: m.manifest.chunks.len(),
            bytes_received: 0,
            seconds: 0.0,
            peers: Vec::new(),
            base: None,
            components: Vec::new(),
            notes: m.manifest.extra.clone(),
            paced: None,
        });
    }
    wait_for_window(&opts.sync_windows, &mut |w| {
        progress(&FetchProgress {
            waiting_for_window_s: w,
            ..Default::default()
        })
    })
    .await;
    let mut src = Sources::connect(node, &opts.peers).await?;
    let m = match obtain_manifest(node, hash, &src.peers).await {
        // Nobody here has it (or nobody is here): ask the DHT who does.
        Err(FetchError::NotFound { .. }) => {
            src.ask_dht(node, hash).await?;
            if src.peers.is_empty() {
                return Err(src.no_peers());
            }
            obtain_manifest(node, hash, &src.peers).await?
        }
        r => r?,
    };
    if src.peers.is_empty() {
        // A download in progress gave the manifest; the chunks need someone.
        src.ask_dht(node, hash).await?;
        if src.peers.is_empty() {
            return Err(src.no_peers());
        }
    }

    let mut base_report = None;
    if let (Kind::Delta | Kind::Soup, Some(base)) = (m.manifest.kind, m.manifest.base) {
        let have_base = node.store.call(move |s| s.manifest(&base)).await?.is_some();
        if !have_base {
            if !opts.fetch_base {
                return Err(FetchError::MissingBase { delta: hash, base });
            }
            let r = Box::pin(fetch(node, base, opts, progress)).await?;
            base_report = Some(Box::new(r));
        }
    }

    let mut report = transfer(node, &m, src, opts, progress).await?;
    report.seconds = t0.elapsed().as_secs_f64();
    report.base = base_report;
    Ok(report)
}

/// The current second of the day, UTC.
pub(super) fn second_of_day() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| (d.as_secs() % 86_400) as u32)
}

/// Sleeps until a sync window is open, reporting the wait now and then.
pub(super) async fn wait_for_window(w: &SyncWindows, report: &mut (dyn FnMut(u32) + Send)) {
    loop {
        let wait = w.wait(second_of_day());
        if wait == 0 {
            return;
        }
        report(wait);
        tokio::time::sleep(Duration::from_secs(u64::from(wait.min(30)))).await;
    }
}

/// A peer sent bad data: banned for this transfer, its pipe closed, its requests back in the pool.
fn ban(
    sched: &mut SyncScheduler<PeerId>,
    banned: &mut Vec<PeerId>,
    pipes: &mut HashMap<PeerId, ChunkPipe>,
    outstanding: &mut HashMap<PeerId, usize>,
    peer: PeerId,
    chunk: u32,
) {
    sched.on_corrupt(&peer, chunk);
    if !banned.contains(&peer) {
        banned.push(peer);
    }
    if let Some(p) = pipes.remove(&peer) {
        p.abort();
    }
    outstanding.remove(&peer);
}

async fn transfer(
    node: &NodeHandle,
    m: &SignedManifest,
    mut src: Sources,
    opts: &FetchOptions,
    progress: &mut (dyn FnMut(&FetchProgress) + Send),
) -> Result<FetchReport, FetchError> {
    let hash = m.hash();
    let (distinct, positions) = distinct_chunks(m);
    let sizes = distinct.iter().map(|r| r.len).collect();
    let mut sched: SyncScheduler<PeerId> = SyncScheduler::new(sizes, opts.scheduler.clone());

    // Resume: whatever verified chunk the store holds is done already.
    let ids: Vec<Hash> = distinct.iter().map(|r| r.id).collect();
    let present = node.store.present_chunks(&ids).await?;
    let mut resumed = 0;
    for (i, p) in present.iter().enumerate() {
        if *p {
            sched.mark_done(i as u32);
            resumed += 1;
        }
    }

    let have_max = 1 + 32 + 4 + positions.len().div_ceil(8);
    let add = |sched: &mut SyncScheduler<PeerId>, p: PeerId, held: &ChunkBitmap| {
        if let Some(h) = holdings(held, &positions, distinct.len()) {
            sched.add_peer(p, h);
        }
    };
    // This transfer's own count (other fetches of the same node may run meanwhile).
    let received = Arc::new(AtomicU64::new(0));
    // A node that knows its link's rate asks for the chunks over the paced lane first; what it
    // does not bring, the chunk streams below fetch.
    let mut carried: HashMap<PeerId, (u64, u64)> = HashMap::new();
    let paced = match node.paced.clone() {
        Some(lane) if !sched.is_complete() => {
            let r = paced_phase(
                node,
                lane,
                m,
                &distinct,
                &mut sched,
                &src.peers,
                (&received, &opts.sync_windows),
                progress,
            )
            .await?;
            if let Some(r) = &r {
                if let Some(p) = src.peers.iter().find(|p| p.to_string() == r.peer) {
                    carried.insert(*p, (r.chunks, r.payload_bytes));
                }
            }
            r
        }
        _ => None,
    };
    // A peer that could not be asked is not a peer without the object: the reasons are kept.
    let mut problems = Vec::new();
    if !sched.is_complete() {
        for (p, held) in holdings_of(node, hash, &src.peers, have_max, &mut problems).await {
            add(&mut sched, p, &held);
        }
    }
    if sched.peer_count() == 0 && !sched.is_complete() {
        let new = src.ask_dht(node, hash).await?;
        for (p, held) in holdings_of(node, hash, &new, have_max, &mut problems).await {
            add(&mut sched, p, &held);
        }
    }
    if sched.peer_count() == 0 && !sched.is_complete() {
        // A peer that could not be asked is not a peer without the object: say why (exit 4, run
        // again) instead of "not found".
        if !problems.is_empty() {
            return Err(FetchError::Incomplete {
                hash,
                done: 0,
                total: distinct.len(),
                reason: format!(
                    "no peer answered which chunks it has: {}",
                    problems.join("; ")
                ),
            });
        }
        return Err(FetchError::NotFound {
            what: "object",
            hash,
            peers: src.peers.len(),
        });
    }

    let t0 = Instant::now();
    let (results_tx, mut results) = mpsc::unbounded_channel::<PipeResult>();
    let mut pipes: HashMap<PeerId, ChunkPipe> = HashMap::new();
    // Requests handed to each peer's pipe and not yet answered.
    let mut outstanding: HashMap<PeerId, usize> = HashMap::new();
    let mut banned: Vec<PeerId> = Vec::new();
    let mut redial = Redialer::new(node.clone(), hash, have_max);
    // `carried`: chunks and bytes of peers lost and re-added (the scheduler starts them afresh),
    // and of the paced lane.
    let mut last_progress = Instant::now() - Duration::from_secs(1);
    let name = m.manifest.name.clone();

    while !sched.is_complete() {
        let now = t0.elapsed();
        let window_open = opts.sync_windows.is_open(second_of_day());
        if !window_open && outstanding.values().all(|&n| n == 0) {
            // Outside every window: what was asked has arrived; wait for the next one.
            let wait = opts.sync_windows.wait(second_of_day());
            progress(&FetchProgress {
                name: name.clone(),
                done_bytes: sched.done_bytes(),
                total_bytes: sched.total_bytes(),
                received_bytes: 0,
                peers: sched.peer_count(),
                waiting_for_window_s: wait,
            });
            tokio::time::sleep(Duration::from_secs(u64::from(wait.clamp(1, 30)))).await;
            continue;
        }
        let assignments = if window_open {
            sched.next_requests(now)
        } else {
            Vec::new()
        };
        for a in assignments {
            let id = distinct[a.chunk as usize].id;
            let pipe = pipes.entry(a.peer).or_insert_with(|| {
                ChunkPipe::spawn(
                    node.clone(),
                    a.peer,
                    hash,
                    results_tx.clone(),
                    received.clone(),
                )
            });
            if !pipe.send(a.chunk, id) {
                // That pipe ended (its stream broke): a fresh one for this and later requests.
                *pipe = ChunkPipe::spawn(
                    node.clone(),
                    a.peer,
                    hash,
                    results_tx.clone(),
                    received.clone(),
                );
                if !pipe.send(a.chunk, id) {
                    sched.on_failed(&a.peer, a.chunk, Failure::Io, now);
                    continue;
                }
            }
            *outstanding.entry(a.peer).or_default() += 1;
        }
        if outstanding.values().all(|&n| n == 0) {
            let reason = if sched.peer_count() == 0 {
                if banned.is_empty() {
                    "every peer failed or went away".to_string()
                } else {
                    format!("every peer failed or was banned ({} banned)", banned.len())
                }
            } else {
                "no peer holds the remaining chunks".to_string()
            };
            match sched.next_wakeup(now) {
                Some(at) if sched.peer_count() > 0 => {
                    tokio::time::sleep(at.saturating_sub(now)).await;
                    continue;
                }
                // A lost peer may come back: wait for its re-dial below.
                _ if redial.pending() > 0 => {}
                _ => {
                    // Those here cannot finish it: the DHT may know others (once).
                    let new = src.ask_dht(node, hash).await?;
                    if !new.is_empty() {
                        for (p, held) in
                            holdings_of(node, hash, &new, have_max, &mut Vec::new()).await
                        {
                            add(&mut sched, p, &held);
                        }
                        continue;
                    }
                    return Err(FetchError::Incomplete {
                        hash,
                        done: sched.done_count(),
                        total: sched.chunk_count(),
                        reason,
                    });
                }
            }
        }
        // Wake at least once a second: the end game looks for late requests by time.
        let (peer, ci, outcome) = tokio::select! {
            Some(r) = results.recv() => r,
            Some((p, held)) = redial.next(), if redial.pending() > 0 => {
                if let Some(held) = held {
                    add(&mut sched, p, &held);
                }
                continue;
            }
            _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
        };
        if let Some(n) = outstanding.get_mut(&peer) {
            *n = n.saturating_sub(1);
        }
        let now = t0.elapsed();
        let r = &distinct[ci as usize];
        // A chunk that does not hash to its id or decode to its length counts as a wrong answer.
        let outcome = match outcome {
            Outcome::Chunk(stored)
                if Hash::of(&stored) != r.id
                    || stored.len() > MAX_STORED_CHUNK
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
                if let Received::New { .. } = sched.on_received(&peer, ci, now) {
                    let id = r.id;
                    node.store
                        .call(move |s| s.put_chunks_logged(vec![(id, stored)]))
                        .await?;
                }
            }
            Outcome::NotFound => sched.on_failed(&peer, ci, Failure::NotFound, now),
            Outcome::Busy(d) => sched.on_failed(&peer, ci, Failure::Busy(d), now),
            Outcome::Io => {
                let before = sched.peer_stats(&peer);
                sched.on_failed(&peer, ci, Failure::Io, now);
                if let Some(st) = before {
                    // Dropped for failing too often, or its connection is gone: its requests
                    // go elsewhere, and a re-dial may bring it back.
                    let dropped = sched.peer_stats(&peer).is_none();
                    if dropped || !node.is_connected(peer).await.unwrap_or(true) {
                        sched.remove_peer(&peer);
                        pipes.remove(&peer);
                        outstanding.remove(&peer);
                        let c = carried.entry(peer).or_default();
                        c.0 += st.chunks;
                        c.1 += st.bytes;
                        redial.lost(peer, st.chunks > 0);
                    }
                }
            }
            Outcome::Wrong => ban(
                &mut sched,
                &mut banned,
                &mut pipes,
                &mut outstanding,
                peer,
                ci,
            ),
        }
        if last_progress.elapsed() >= Duration::from_millis(200) || sched.is_complete() {
            last_progress = Instant::now();
            progress(&FetchProgress {
                name: name.clone(),
                done_bytes: sched.done_bytes(),
                total_bytes: sched.total_bytes(),
                received_bytes: received.load(Ordering::Relaxed),
                peers: sched.peer_count(),
                waiting_for_window_s: 0,
            });
        }
    }
    drop(pipes);

    // Every chunk verified; now the whole object against the signed hash, then make it visible,
    // in bounded store jobs so that peers are served meanwhile.
    match node.store.verify_and_commit(m.clone(), true).await {
        Ok(()) => {}
        Err(e @ crate::store::StoreError::ObjectHash { .. }) => {
            node.store.call(move |s| s.abandon_partial(&hash)).await?;
            return Err(FetchError::Verification(e.to_string()));
        }
        Err(e) => return Err(FetchError::Store(e)),
    }

    let _ = node.provide(hash).await;

    let mut peer_reports: Vec<PeerReport> = src
        .peers
        .iter()
        .filter_map(|p| {
            let now = sched.peer_stats(p).map(|s| (s.chunks, s.bytes));
            let before = carried.get(p).copied();
            let banned = banned.contains(p);
            if now.is_none() && before.is_none() && !banned {
                return None;
            }
            let (c0, b0) = now.unwrap_or_default();
            let (c1, b1) = before.unwrap_or_default();
            Some(PeerReport {
                peer: p.to_string(),
                chunks: c0 + c1,
                bytes: b0 + b1,
                banned,
                from_dht: src.from_dht.contains(p),
                reconnects: redial.reconnects(p),
            })
        })
        .collect();
    peer_reports.sort_by_key(|p| std::cmp::Reverse(p.bytes));
    Ok(FetchReport {
        hash,
        name,
        kind: m.manifest.kind,
        object_len: m.manifest.object_len,
        already_present: false,
        chunks: distinct.len(),
        chunks_resumed: resumed,
        bytes_received: received.load(Ordering::Relaxed),
        seconds: 0.0,
        peers: peer_reports,
        base: None,
        components: Vec::new(),
        notes: m.manifest.extra.clone(),
        paced,
    })
}
