//! Who a fetch asks: the peers it was given, those connected, providers found in the DHT, and
//! what each of them holds.

use libp2p::{Multiaddr, PeerId};
use zdn_protocol::wire::{ChunkBitmap, Request, Response};
use zdn_protocol::Hash;

use crate::net::error::{FetchError, NetError};
use crate::net::fetch::manifest::answer_name;
use crate::net::frame::{FrameError, FrameIo};
use crate::net::handle::{NodeHandle, CHUNK_STREAM};

/// The peers a fetch asks, and where they came from.
pub(super) struct Sources {
    pub peers: Vec<PeerId>,
    /// Those found through the DHT.
    pub from_dht: Vec<PeerId>,
    asked_dht: bool,
    /// Why the last given address could not be dialed (reported when nobody has the object).
    dial_error: Option<NetError>,
}

impl Sources {
    /// Dials the given peers and adds those already connected.
    pub async fn connect(node: &NodeHandle, addrs: &[Multiaddr]) -> Result<Self, FetchError> {
        let mut peers = Vec::new();
        let mut dial_error = None;
        for a in addrs {
            match node.dial(a.clone()).await {
                Ok(p) => {
                    if !peers.contains(&p) {
                        peers.push(p)
                    }
                }
                Err(e) => dial_error = Some(e),
            }
        }
        for p in node.peers().await? {
            if let Ok(id) = p.peer.parse::<PeerId>() {
                if !peers.contains(&id) {
                    peers.push(id);
                }
            }
        }
        Ok(Sources {
            peers,
            from_dht: Vec::new(),
            asked_dht: false,
            dial_error,
        })
    }

    /// Asks the DHT who provides `hash` (once per fetch); returns the providers it connected to
    /// that were not among the peers yet, now added.
    pub async fn ask_dht(
        &mut self,
        node: &NodeHandle,
        hash: Hash,
    ) -> Result<Vec<PeerId>, FetchError> {
        if std::mem::replace(&mut self.asked_dht, true) {
            return Ok(Vec::new());
        }
        let mut new = Vec::new();
        for p in node.find_providers(hash).await? {
            if p != node.local && !self.peers.contains(&p) {
                self.peers.push(p);
                self.from_dht.push(p);
                new.push(p);
            }
        }
        Ok(new)
    }

    /// The error for "nobody to ask": the dial failure if there was one.
    pub fn no_peers(&mut self) -> FetchError {
        match self.dial_error.take() {
            Some(e) => e.into(),
            None => FetchError::NoPeers,
        }
    }
}

/// What each of `peers` holds of object `hash` (those that answer with a have-bitmap), asked
/// all at once: on a 600 ms link, one after another would cost two round trips each. Peers that
/// could not be asked, or answered wrongly, are added to `problems` with the reason.
pub(super) async fn holdings_of(
    node: &NodeHandle,
    hash: Hash,
    peers: &[PeerId],
    have_max: usize,
    problems: &mut Vec<String>,
) -> Vec<(PeerId, ChunkBitmap)> {
    let request = &Request::GetHave(hash);
    let answers = futures::future::join_all(
        peers
            .iter()
            .map(|&p| async move { (p, ask(node, p, request, have_max).await) }),
    )
    .await;
    let mut held = Vec::new();
    for (p, a) in answers {
        match a {
            Ok(Response::Have { object, held: h }) if object == hash => held.push((p, h)),
            Ok(Response::NotFound(_)) => {}
            Ok(other) => problems.push(format!("{p}: unexpected answer {}", answer_name(&other))),
            Err(e) => problems.push(format!("{p}: {e}")),
        }
    }
    held
}

/// Tries of one request whose connection broke under it before an answer came.
const ASK_TRIES: u32 = 3;

/// One request (a manifest or a have-bitmap) on a stream of its own; the response frame may be
/// at most `max` bytes. A request whose stream or connection broke before the answer (a
/// connection closing as the request went out, a link that dropped) is asked again, after a
/// short wait and a re-dial when the peer is no longer connected, up to [`ASK_TRIES`] times in
/// all; a wrong or stalled answer is not.
pub(super) async fn ask(
    node: &NodeHandle,
    peer: PeerId,
    req: &Request,
    max: usize,
) -> Result<Response, String> {
    let mut tries = 0;
    loop {
        tries += 1;
        match ask_once(node, peer, req, max).await {
            Ok(r) => return Ok(r),
            Err((e, broken)) if !broken || tries >= ASK_TRIES => return Err(e),
            Err(_) => {
                node.traffic
                    .asks_retried
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(std::time::Duration::from_millis(250 * u64::from(tries))).await;
                if !node.is_connected(peer).await.unwrap_or(true) {
                    let _ = node.redial(peer).await;
                }
            }
        }
    }
}

/// One try; the error says whether the stream broke (worth another try).
async fn ask_once(
    node: &NodeHandle,
    peer: PeerId,
    req: &Request,
    max: usize,
) -> Result<Response, (String, bool)> {
    let broke = |e: FrameError| {
        let broken = matches!(e, FrameError::Io { .. } | FrameError::Truncated { .. });
        (e.to_string(), broken)
    };
    let control = node.control.clone();
    let mut stream = control
        .open_stream(peer, CHUNK_STREAM)
        .await
        .map_err(|e| (e.to_string(), true))?;
    let io = FrameIo {
        progress_timeout: node.tuning.progress_timeout,
        limiter: None,
    };
    io.write(&mut stream, "request", &req.encode())
        .await
        .map_err(broke)?;
    let io = FrameIo {
        limiter: node.download_limit.clone(),
        ..io
    };
    // Manifests and have-bitmaps: not chunk bytes, not counted as such.
    let body = io
        .read(&mut stream, "response", max, &mut |_| {})
        .await
        .map_err(broke)?;
    Response::decode(&body).map_err(|e| (e.to_string(), false))
}
