//! The paced-lane phase of a fetch: before the chunk streams, a node that knows its link's rate
//! asks a peer to send the missing chunks over the paced lane ([`crate::net::paced::session`]), session
//! after session (each at most 64 MiB), and verifies and stores each chunk as it completes. It
//! gives the rest to the next peer, and then to the chunk streams, when a peer does not offer the
//! lane or has none of the chunks, when a chunk fails verification (the datagrams are sealed under
//! a key only that peer and this node hold, so a bad chunk is the peer's doing: it is banned
//! node-wide, like a peer that sends a bad chunk on a stream), or when a peer that served the
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
use crate::net::fetch::{wait_for_window, FetchProgress};
use crate::net::handle::NodeHandle;
use crate::net::paced::session::{session, PacedLane, PacedReport, SessionEnd, SessionError};
use crate::net::peers::Offence;

/// Runs the lane until it has brought every chunk or cannot bring more; `None` when no peer
/// offered it anything.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn paced_phase(
    node: &NodeHandle,
    lane: Arc<PacedLane>,
    m: &SignedManifest,
    distinct: &[ChunkRef],
    sched: &mut SyncScheduler<PeerId>,
    peers: &[PeerId],
    (received, windows): (&Arc<AtomicU64>, &SyncWindows),
    progress: &mut (dyn FnMut(&FetchProgress) + Send),
) -> Result<Option<PacedReport>, FetchError> {
    let hash = m.hash();
    let mut best: Option<PacedReport> = None;
    let mut last_progress = Instant::now() - Duration::from_secs(1);
    for (n, &peer) in peers.iter().enumerate() {
        if node.is_banned(&peer) {
            continue;
        }
        // Only the last peer is waited for through an outage; with others left, a silent peer
        // hands over to the next at once (a dead seeder must not hold the fetch while another
        // could serve it).
        let patience = if n + 1 == peers.len() {
            node.tuning.outage_patience
        } else {
            Duration::ZERO
        };
        let mut report = PacedReport {
            peer: peer.to_string(),
            ..PacedReport::default()
        };
        // When this peer last sent lane data, and the wait before asking a silent peer again.
        let mut last_heard: Option<Instant> = None;
        let mut wait = node.tuning.redial_first_wait;
        loop {
            let mut wanted = ChunkBitmap::new(distinct.len() as u32);
            let mut any = false;
            for i in 0..distinct.len() as u32 {
                if !sched.is_done(i) {
                    wanted.set(i);
                    any = true;
                }
            }
            if !any {
                break;
            }
            // Outside every sync window the lane sends nothing: wait for the next one.
            let name = &m.manifest.name;
            wait_for_window(windows, &mut |w| {
                progress(&FetchProgress {
                    name: name.clone(),
                    done_bytes: sched.done_bytes(),
                    total_bytes: sched.total_bytes(),
                    received_bytes: received.load(Ordering::Relaxed),
                    peers: 0,
                    waiting_for_window_s: w,
                })
            })
            .await;
            let (tx, mut rx) = mpsc::unbounded_channel::<(u32, Vec<u8>)>();
            let chunks_before = report.chunks;
            let mut bad = None;
            let mut counts = PacedReport::default();
            let end = {
                let sess = session(
                    node,
                    lane.clone(),
                    (peer, hash, wanted),
                    &tx,
                    received,
                    windows,
                    &mut counts,
                );
                tokio::pin!(sess);
                loop {
                    tokio::select! {
                        r = &mut sess => break r,
                        Some((ci, stored)) = rx.recv() => {
                            match take_chunk(node, distinct, sched, ci, stored).await? {
                                Some(n) => report.chunks += n,
                                None => { bad = Some(ci); break Err(SessionError::fatal("")); }
                            }
                        }
                    }
                    if last_progress.elapsed() >= Duration::from_millis(200) {
                        last_progress = Instant::now();
                        progress(&FetchProgress {
                            name: m.manifest.name.clone(),
                            done_bytes: sched.done_bytes(),
                            total_bytes: sched.total_bytes(),
                            received_bytes: received.load(Ordering::Relaxed),
                            peers: 1,
                            waiting_for_window_s: 0,
                        });
                    }
                }
            };
            drop(tx);
            report.sessions += counts.sessions;
            report.datagrams += counts.datagrams;
            report.duplicates += counts.duplicates;
            report.payload_bytes += counts.payload_bytes;
            if counts.datagrams > 0 {
                last_heard = Some(Instant::now());
                wait = node.tuning.redial_first_wait;
            }
            // Chunks that completed as the session ended.
            while bad.is_none() {
                let Ok((ci, stored)) = rx.try_recv() else {
                    break;
                };
                match take_chunk(node, distinct, sched, ci, stored).await? {
                    Some(n) => report.chunks += n,
                    None => bad = Some(ci),
                }
            }
            if let Some(ci) = bad {
                // Sealed under a key only that peer and this node hold: its doing.
                node.penalise(peer, Offence::BadData).await;
                report.stopped = Some(format!(
                    "chunk {ci} failed verification: the peer is banned; the next peer or the \
                     chunk streams bring the rest"
                ));
                break;
            }
            match end {
                Ok(SessionEnd::Complete) if report.chunks > chunks_before => continue,
                Ok(SessionEnd::Complete) => break,
                // The sync window closed: the sender was told to stop; wait, then the rest.
                Ok(SessionEnd::WindowClosed) => continue,
                Ok(SessionEnd::NotFound) => {
                    report.stopped = Some("the peer has none of the chunks".into());
                    break;
                }
                Err(SessionError {
                    reason,
                    silent: true,
                }) if last_heard.is_some_and(|t| t.elapsed() + wait < patience) => {
                    // A peer that served the lane went quiet: wait, re-dial, ask for the rest.
                    report.resumes += 1;
                    report.last_silence = Some(reason);
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(node.tuning.redial_max_wait);
                    if !node.is_connected(peer).await.unwrap_or(false) {
                        let _ = node.redial(peer).await;
                    }
                }
                Err(e) => {
                    report.stopped = Some(e.reason);
                    break;
                }
            }
        }
        if report.sessions > 0 || best.is_none() {
            best = Some(report);
        }
        if sched.is_complete() {
            break;
        }
    }
    Ok(best.filter(|r| r.sessions > 0))
}

/// Verifies and stores one chunk from the lane: `Some(1)` when it is new and good, `Some(0)` when
/// it was here already, `None` when it does not hash to its id or decode to its length.
async fn take_chunk(
    node: &NodeHandle,
    distinct: &[ChunkRef],
    sched: &mut SyncScheduler<PeerId>,
    ci: u32,
    stored: Vec<u8>,
) -> Result<Option<u64>, FetchError> {
    let Some(r) = distinct.get(ci as usize) else {
        return Ok(None);
    };
    if Hash::of(&stored) != r.id
        || stored.len() > MAX_STORED_CHUNK
        || chunk::decode(&stored, r).is_err()
    {
        return Ok(None);
    }
    if sched.is_done(ci) {
        return Ok(Some(0));
    }
    let id = r.id;
    node.store
        .call(move |s| s.put_chunks_logged(vec![(id, stored)]))
        .await?;
    sched.mark_done(ci);
    Ok(Some(1))
}
