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
use zdn_protocol::chunk::{self, ChunkRef};
use zdn_protocol::manifest::{self, Kind, SignedManifest};
use zdn_protocol::sync::{
    Failure, Holdings, Received, SchedulerConfig, SyncScheduler, SyncWindows,
};
use zdn_protocol::wire::{ChunkBitmap, Request, Response, MAX_STORED_CHUNK};
use zdn_protocol::Hash;

use super::chunk_pipe::{ChunkPipe, Outcome, PipeResult};
use super::error::FetchError;
use super::frame::FrameIo;
use super::handle::{NodeHandle, CHUNK_STREAM};

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
    /// The manifest's signed notes (e.g. `quality`: the delta's measured quality report, JSON).
    #[serde(default)]
    pub notes: Vec<(String, String)>,
}

/// Fetches `hash` (and, for a delta, its base when missing) into the node's store.
pub async fn fetch(
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
            notes: m.manifest.extra.clone(),
        });
    }
    wait_for_window(&opts.sync_windows, &mut |w| {
        progress(&FetchProgress {
            waiting_for_window_s: w,
            ..Default::default()
        })
    })
    .await;
    let peers = connect(node, &opts.peers).await?;
    let m = obtain_manifest(node, hash, &peers).await?;

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

    let mut report = transfer(node, &m, &peers, opts, progress).await?;
    report.seconds = t0.elapsed().as_secs_f64();
    report.base = base_report;
    Ok(report)
}

/// The current second of the day, UTC.
fn second_of_day() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| (d.as_secs() % 86_400) as u32)
}

/// Sleeps until a sync window is open, reporting the wait now and then.
async fn wait_for_window(w: &SyncWindows, report: &mut (dyn FnMut(u32) + Send)) {
    loop {
        let wait = w.wait(second_of_day());
        if wait == 0 {
            return;
        }
        report(wait);
        tokio::time::sleep(Duration::from_secs(u64::from(wait.min(30)))).await;
    }
}

/// Dials the given peers and adds those already connected. Fails only when there is nobody.
async fn connect(node: &NodeHandle, addrs: &[Multiaddr]) -> Result<Vec<PeerId>, FetchError> {
    let mut peers = Vec::new();
    let mut last_err = None;
    for a in addrs {
        match node.dial(a.clone()).await {
            Ok(p) => {
                if !peers.contains(&p) {
                    peers.push(p)
                }
            }
            Err(e) => last_err = Some(e),
        }
    }
    for p in node.peers().await? {
        if let Ok(id) = p.peer.parse::<PeerId>() {
            if !peers.contains(&id) {
                peers.push(id);
            }
        }
    }
    match (peers.is_empty(), last_err) {
        (false, _) => Ok(peers),
        (true, Some(e)) => Err(e.into()),
        (true, None) => Err(FetchError::NoPeers),
    }
}

/// One request (a manifest or a have-bitmap) on a stream of its own; the response frame may be at most `max` bytes.
async fn ask(
    node: &NodeHandle,
    peer: PeerId,
    req: &Request,
    max: usize,
) -> Result<Response, String> {
    let mut control = node.control.clone();
    let mut stream = control
        .open_stream(peer, CHUNK_STREAM)
        .await
        .map_err(|e| e.to_string())?;
    let io = FrameIo {
        progress_timeout: node.tuning.progress_timeout,
        limiter: None,
    };
    io.write(&mut stream, "request", &req.encode())
        .await
        .map_err(|e| e.to_string())?;
    let io = FrameIo {
        limiter: node.download_limit.clone(),
        ..io
    };
    // Manifests and have-bitmaps: not chunk bytes, not counted as such.
    let body = io
        .read(&mut stream, "response", max, &mut |_| {})
        .await
        .map_err(|e| e.to_string())?;
    Response::decode(&body).map_err(|e| e.to_string())
}

/// The manifest named `hash`: from a download in progress here, else from the first peer that
/// gives one that hashes to `hash`, verifies and is from a trusted publisher.
async fn obtain_manifest(
    node: &NodeHandle,
    hash: Hash,
    peers: &[PeerId],
) -> Result<SignedManifest, FetchError> {
    if let Some(m) = node.store.call(move |s| s.partial(&hash)).await? {
        return Ok(m);
    }
    let mut untrusted = None;
    let mut problems = Vec::new();
    for &p in peers {
        let max = 1 + manifest::MAX_MANIFEST_LEN;
        let bytes = match ask(node, p, &Request::GetManifest(hash), max).await {
            Ok(Response::Manifest(b)) => b,
            Ok(Response::NotFound(_)) => continue,
            Ok(other) => {
                problems.push(format!("{p}: unexpected answer {}", answer_name(&other)));
                continue;
            }
            Err(e) => {
                problems.push(format!("{p}: {e}"));
                continue;
            }
        };
        if Hash::of(&bytes) != hash {
            problems.push(format!("{p}: sent a manifest that does not hash to {hash}"));
            continue;
        }
        let m = match manifest::decode(&bytes) {
            Ok(m) => m,
            Err(e) => {
                problems.push(format!("{p}: invalid manifest: {e}"));
                continue;
            }
        };
        if node.trust.check(&m).is_err() {
            untrusted = Some(m.publisher_hex());
            continue;
        }
        let limit = node.store.call(|s| Ok(s.limits())).await?;
        if m.manifest.object_len > limit.max_object_size {
            return Err(FetchError::Verification(format!(
                "object of {} bytes is over this store's {}-byte limit",
                m.manifest.object_len, limit.max_object_size
            )));
        }
        chunk::check_coverage(&m.manifest.chunks, m.manifest.object_len)
            .map_err(|e| FetchError::Verification(format!("manifest {hash}: {e}")))?;
        let stored = m.clone();
        node.store.call(move |s| s.begin_partial(&stored)).await?;
        return Ok(m);
    }
    if let Some(publisher) = untrusted {
        return Err(FetchError::Untrusted { hash, publisher });
    }
    if !problems.is_empty() && problems.len() == peers.len() {
        return Err(FetchError::Incomplete {
            hash,
            done: 0,
            total: 0,
            reason: format!("no peer gave a valid manifest: {}", problems.join("; ")),
        });
    }
    Err(FetchError::NotFound {
        what: "manifest",
        hash,
        peers: peers.len(),
    })
}

fn answer_name(r: &Response) -> &'static str {
    match r {
        Response::Manifest(_) => "manifest",
        Response::Chunk { .. } => "chunk",
        Response::Have { .. } => "have",
        Response::NotFound(_) => "not-found",
        Response::Busy { .. } => "busy",
    }
}

/// The distinct chunks of a manifest (an object may repeat a chunk), in first-seen order, and
/// for each manifest position the index of its distinct chunk.
fn distinct_chunks(m: &SignedManifest) -> (Vec<ChunkRef>, Vec<u32>) {
    let mut index: HashMap<Hash, u32> = HashMap::new();
    let mut distinct = Vec::new();
    let mut positions = Vec::with_capacity(m.manifest.chunks.len());
    for r in &m.manifest.chunks {
        let i = *index.entry(r.id).or_insert_with(|| {
            distinct.push(r.clone());
            (distinct.len() - 1) as u32
        });
        positions.push(i);
    }
    (distinct, positions)
}

/// A peer's have-bitmap over manifest positions, as holdings over distinct chunks.
fn holdings(held: &ChunkBitmap, positions: &[u32], distinct: usize) -> Option<Holdings> {
    if held.len() as usize != positions.len() {
        return None;
    }
    if held.count() == held.len() {
        return Some(Holdings::All);
    }
    let mut b = ChunkBitmap::new(distinct as u32);
    for (pos, &d) in positions.iter().enumerate() {
        if held.get(pos as u32) {
            b.set(d);
        }
    }
    Some(Holdings::Some(b))
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
    peers: &[PeerId],
    opts: &FetchOptions,
    progress: &mut (dyn FnMut(&FetchProgress) + Send),
) -> Result<FetchReport, FetchError> {
    let hash = m.hash();
    let (distinct, positions) = distinct_chunks(m);
    let sizes = distinct.iter().map(|r| r.len).collect();
    let mut sched: SyncScheduler<PeerId> = SyncScheduler::new(sizes, opts.scheduler.clone());

    // Resume: whatever verified chunk the store holds is done already.
    let ids: Vec<Hash> = distinct.iter().map(|r| r.id).collect();
    let present = node
        .store
        .call(move |s| {
            ids.iter()
                .map(|id| s.has_chunk(id))
                .collect::<Result<Vec<_>, _>>()
        })
        .await?;
    let mut resumed = 0;
    for (i, p) in present.iter().enumerate() {
        if *p {
            sched.mark_done(i as u32);
            resumed += 1;
        }
    }

    let have_max = 1 + 32 + 4 + positions.len().div_ceil(8);
    // Every peer at once: on a 600 ms link, one after another would cost two round trips each.
    let request = &Request::GetHave(hash);
    let answers = futures::future::join_all(
        peers
            .iter()
            .map(|&p| async move { (p, ask(node, p, request, have_max).await) }),
    )
    .await;
    let mut problems = Vec::new();
    for (p, answer) in answers {
        match answer {
            Ok(Response::Have { object, held }) if object == hash => {
                if let Some(h) = holdings(&held, &positions, distinct.len()) {
                    sched.add_peer(p, h);
                }
            }
            Ok(Response::NotFound(_)) => {}
            Ok(other) => problems.push(format!("{p}: unexpected answer {}", answer_name(&other))),
            Err(e) => problems.push(format!("{p}: {e}")),
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
            peers: peers.len(),
        });
    }

    let t0 = Instant::now();
    // This transfer's own count (other fetches of the same node may run meanwhile).
    let received = Arc::new(AtomicU64::new(0));
    let (results_tx, mut results) = mpsc::unbounded_channel::<PipeResult>();
    let mut pipes: HashMap<PeerId, ChunkPipe> = HashMap::new();
    // Requests handed to each peer's pipe and not yet answered.
    let mut outstanding: HashMap<PeerId, usize> = HashMap::new();
    let mut banned: Vec<PeerId> = Vec::new();
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
                _ => {
                    return Err(FetchError::Incomplete {
                        hash,
                        done: sched.done_count(),
                        total: sched.chunk_count(),
                        reason,
                    })
                }
            }
        }
        // Wake at least once a second: the end game looks for late requests by time.
        let Ok(Some((peer, ci, outcome))) =
            tokio::time::timeout(Duration::from_secs(1), results.recv()).await
        else {
            continue;
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
            Outcome::Io => sched.on_failed(&peer, ci, Failure::Io, now),
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

    // Every chunk verified; now the whole object against the signed hash, then make it visible.
    let m2 = m.clone();
    node.store
        .call(move |s| {
            let mut hasher = blake3::Hasher::new();
            for r in &m2.manifest.chunks {
                hasher.update(&s.read_chunk(&hash, r)?);
            }
            let actual = Hash::from(hasher.finalize());
            if actual != m2.manifest.object_hash {
                s.abandon_partial(&hash)?;
                return Err(crate::store::StoreError::ObjectHash {
                    hash,
                    expected: m2.manifest.object_hash,
                    actual,
                });
            }
            s.commit(&m2, true)
        })
        .await
        .map_err(|e| match e {
            e @ crate::store::StoreError::ObjectHash { .. } => {
                FetchError::Verification(e.to_string())
            }
            e => FetchError::Store(e),
        })?;

    let mut peer_reports: Vec<PeerReport> = peers
        .iter()
        .filter_map(|p| {
            let s = sched.peer_stats(p);
            let banned = banned.contains(p);
            match s {
                Some(s) => Some(PeerReport {
                    peer: p.to_string(),
                    chunks: s.chunks,
                    bytes: s.bytes,
                    banned,
                }),
                None if banned => Some(PeerReport {
                    peer: p.to_string(),
                    chunks: 0,
                    bytes: 0,
                    banned,
                }),
                None => None,
            }
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
        notes: m.manifest.extra.clone(),
    })
}
