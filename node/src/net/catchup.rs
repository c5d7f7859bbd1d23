//! Catching up on announcements missed while away. Gossip reaches only the nodes connected when a
//! manifest is announced (and its history lasts a few heartbeats), so a field station whose link
//! was down, or that starts later, would never hear of a fine-tune published meanwhile. When a
//! connection to a peer is established, this node asks it once for the signed announcements of
//! the manifests made since its last successful catch-up from that peer less a day of clock skew
//! (all, up to [`MAX_RECENT`], the first time): [`Request::GetRecent`]. When that was is kept in
//! the store, so a restarted node does not ask for everything again. Each one is decoded and its
//! publisher's signature verified before anything is done with it; a trusted one for an object
//! not here goes to the program as [`NodeEvent::AnnouncedByHash`], exactly as if it had come by
//! gossip (the program's auto-fetch rules decide, and a fetch verifies the manifest by hash).
//! A peer whose list holds a malformed or wrongly signed announcement is penalised like one that
//! gossips it, and the rest of its list is dropped. Cost: one request per peer per
//! [`ASK_EVERY`] at most, an answer of at most [`MAX_RECENT`] announcements (at most 28 KB); on a
//! reconnect, usually the few made in the last day.

use std::collections::HashMap;
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
/// A busy peer is asked once more after the time it says, within these bounds.
const BUSY_WAIT_MIN: Duration = Duration::from_secs(1);
const BUSY_WAIT_MAX: Duration = Duration::from_secs(120);
/// Peers remembered (when last asked; when last caught up from is kept by the store).
const MAX_REMEMBERED: usize = 4096;

/// The catch-up state of a node.
pub(crate) struct CatchUp {
    node: NodeHandle,
    events: mpsc::Sender<NodeEvent>,
    asked: HashMap<PeerId, Instant>,
}

impl CatchUp {
    pub(crate) fn new(node: NodeHandle, events: mpsc::Sender<NodeEvent>) -> Self {
        CatchUp {
            node,
            events,
            asked: HashMap::new(),
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
        let (node, events) = (self.node.clone(), self.events.clone());
        tokio::spawn(async move { ask_peer(&node, &events, peer).await });
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

async fn ask_peer(node: &NodeHandle, events: &mpsc::Sender<NodeEvent>, peer: PeerId) {
    let id = peer.to_bytes();
    let last = {
        let id = id.clone();
        // A store that cannot say: ask for everything (the answer is capped).
        node.store
            .call(move |s| s.caught_up_at(&id))
            .await
            .ok()
            .flatten()
    };
    let since = last.map_or(0, |t| t.saturating_sub(CLOCK_SKEW_SECS));
    let started = unix_now();
    let max = 3 + MAX_RECENT * (2 + MAX_ANNOUNCEMENT_LEN);
    let request = Request::GetRecent { since };
    let mut waited = false;
    let list = loop {
        match ask(node, peer, &request, max).await {
            Ok(Response::Recent(list)) => break list,
            // A peer answers each node once a minute (this node restarted since it last asked,
            // say): once more, when it says.
            Ok(Response::Busy { retry_after_ms }) if !waited => {
                waited = true;
                let wait = Duration::from_millis(retry_after_ms.into());
                tokio::time::sleep(wait.clamp(BUSY_WAIT_MIN, BUSY_WAIT_MAX)).await;
            }
            // Busy again, or gone, or a zdn that does not know the request: next time.
            Ok(Response::Busy { .. }) | Err(_) => return,
            Ok(_) => {
                node.penalise(peer, Offence::WrongAnswer).await;
                return;
            }
        }
    };
    // Not kept: the next catch-up asks for the same again.
    let _ = node
        .store
        .call(move |s| s.set_caught_up_at(&id, started))
        .await;
    let caught_up = NodeEvent::CaughtUp {
        peer,
        since,
        announcements: list.len(),
    };
    if events.send(caught_up).await.is_err() {
        return;
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
