//! Catching up on announcements missed while away. Gossip reaches only the nodes connected when a
//! manifest is announced (and its history lasts a few heartbeats), so a field station whose link
//! was down, or that starts later, would never hear of a fine-tune published meanwhile. When a
//! connection to a peer is established, this node asks it once for the signed announcements of
//! the manifests made since its last successful catch-up from that peer less a day of clock skew
//! (all, up to [`MAX_RECENT`], the first time): [`Request::GetRecent`]. Each one is decoded and its
//! publisher's signature verified before anything is done with it; a trusted one for an object
//! not here goes to the program as [`NodeEvent::AnnouncedByHash`], exactly as if it had come by
//! gossip (the program's auto-fetch rules decide, and a fetch verifies the manifest by hash).
//! A peer whose list holds a malformed or wrongly signed announcement is penalised like one that
//! gossips it, and the rest of its list is dropped. Cost: one request per peer per
//! [`ASK_EVERY`] at most, an answer of at most [`MAX_RECENT`] announcements (at most 28 KB); on a
//! reconnect, usually the few made in the last day.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use libp2p::PeerId;
use tokio::sync::mpsc;
use zdn_protocol::wire::{Announcement, Request, Response, MAX_ANNOUNCEMENT_LEN, MAX_RECENT};

use crate::net::fetch::peers::ask;
use crate::net::handle::NodeHandle;
use crate::net::peers::Offence;
use crate::net::swarm::spawn::NodeEvent;

/// A peer is asked at most this often (a flapping link does not repeat the request).
pub const ASK_EVERY: Duration = Duration::from_secs(600);
/// How far before the last catch-up the next one reaches back: publishers' clocks may be off.
pub const CLOCK_SKEW_SECS: u64 = 86_400;
/// Peers remembered (when last asked, when last caught up from).
const MAX_REMEMBERED: usize = 4096;

/// The catch-up state of a node.
pub(crate) struct CatchUp {
    node: NodeHandle,
    events: mpsc::Sender<NodeEvent>,
    asked: HashMap<PeerId, Instant>,
    /// Per peer, unix seconds of the start of the last catch-up it answered (none: ask for all).
    caught_up_at: Arc<Mutex<HashMap<PeerId, u64>>>,
}

impl CatchUp {
    pub(crate) fn new(node: NodeHandle, events: mpsc::Sender<NodeEvent>) -> Self {
        CatchUp {
            node,
            events,
            asked: HashMap::new(),
            caught_up_at: Arc::default(),
        }
    }

    /// A connection to `peer` is up: asks it what was announced since, unless it was asked
    /// within [`ASK_EVERY`].
    pub(crate) fn on_connected(&mut self, peer: PeerId) {
        let now = Instant::now();
        if self
            .asked
            .get(&peer)
            .is_some_and(|t| now.duration_since(*t) < ASK_EVERY)
        {
            return;
        }
        if self.asked.len() > MAX_REMEMBERED {
            self.asked.retain(|_, t| now.duration_since(*t) < ASK_EVERY);
        }
        self.asked.insert(peer, now);
        let (node, events, at) = (
            self.node.clone(),
            self.events.clone(),
            self.caught_up_at.clone(),
        );
        tokio::spawn(async move { ask_peer(&node, &events, peer, &at).await });
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

async fn ask_peer(
    node: &NodeHandle,
    events: &mpsc::Sender<NodeEvent>,
    peer: PeerId,
    caught_up_at: &Mutex<HashMap<PeerId, u64>>,
) {
    let last = caught_up_at
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&peer)
        .copied();
    let since = last.map_or(0, |t| t.saturating_sub(CLOCK_SKEW_SECS));
    let started = unix_now();
    let max = 3 + MAX_RECENT * (2 + MAX_ANNOUNCEMENT_LEN);
    let list = match ask(node, peer, &Request::GetRecent { since }, max).await {
        Ok(Response::Recent(list)) => list,
        // Busy after its retries, or gone, or a zdn that does not know the request: next time.
        Ok(Response::Busy { .. }) | Err(_) => return,
        Ok(_) => {
            node.penalise(peer, Offence::WrongAnswer).await;
            return;
        }
    };
    {
        let mut at = caught_up_at.lock().unwrap_or_else(|e| e.into_inner());
        if at.len() > MAX_REMEMBERED {
            // The oldest half forgotten: those peers are asked for everything next time.
            let mut times: Vec<u64> = at.values().copied().collect();
            times.sort_unstable();
            let cut = times[times.len() / 2];
            at.retain(|_, t| *t > cut);
        }
        at.insert(peer, started);
    }
    for bytes in list {
        let a = match Announcement::decode(&bytes) {
            Ok(a) if a.verify().is_ok() => a,
            _ => {
                node.penalise(peer, Offence::InvalidAnnouncement).await;
                return;
            }
        };
        if !node.trust.allows(&a.publisher) {
            continue;
        }
        let hash = a.manifest;
        let here = node.store.call(move |s| s.manifest(&hash)).await;
        if !matches!(here, Ok(None)) {
            continue;
        }
        let event = NodeEvent::AnnouncedByHash {
            announcement: Box::new(a),
            from: peer,
        };
        if events.send(event).await.is_err() {
            return;
        }
    }
}
