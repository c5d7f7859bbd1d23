//! Who a fetch asks: the peers it was given, those connected, providers found in the DHT, and
//! what each of them holds.

use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use libp2p::{Multiaddr, PeerId};
use tokio::time::Instant;
use zdn_protocol::wire::{ChunkBitmap, Request, Response};
use zdn_protocol::Hash;

use crate::net::error::{FetchError, NetError};
use crate::net::fetch::manifest::answer_name;
use crate::net::fetch::redial::Backoff;
use crate::net::fetch::FetchProgress;
use crate::net::frame::{FrameError, FrameIo};
use crate::net::handle::{NodeHandle, CHUNK_STREAM};
use crate::net::peers::Offence;

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
    /// Dials the given peers and adds those already connected. When none of them could be
    /// dialed and no peer is connected, dials them again with the re-dial's back-off for the
    /// profile's dial patience (a field station's link may be down when its fetch starts),
    /// saying so through `progress`.
    pub async fn connect(
        node: &NodeHandle,
        addrs: &[Multiaddr],
        progress: &mut (dyn FnMut(&FetchProgress) + Send),
    ) -> Result<Self, FetchError> {
        let give_up = Instant::now() + node.tuning.dial_patience;
        let mut backoff = Backoff::new(&node.tuning);
        loop {
            let src = Sources::dial(node, addrs).await?;
            let Some(problem) = src.dial_error.as_ref().filter(|_| src.peers.is_empty()) else {
                return Ok(src);
            };
            let Some(wait) = backoff.next_wait_before(give_up) else {
                return Ok(src);
            };
            progress(&FetchProgress {
                waiting_for_peers_s: wait.as_secs().max(1) as u32,
                dial_problem: problem.to_string(),
                ..Default::default()
            });
            tokio::time::sleep(wait).await;
        }
    }

    /// One try of [`Sources::connect`].
    async fn dial(node: &NodeHandle, addrs: &[Multiaddr]) -> Result<Self, FetchError> {
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
        // The cleanest first: a peer with a penalty is asked last (a banned one is not connected).
        peers.sort_by(|a, b| node.penalty(a).total_cmp(&node.penalty(b)));
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

/// How long the other peers' have-bitmaps are waited for once one has come: as long again as the
/// first took, plus this. A peer slower than that is left out of the transfer (noted in
/// `problems`): the fetch races the peers rather than waiting for the slowest.
const HAVE_GRACE: Duration = Duration::from_secs(2);

/// What each of `peers` holds of object `hash` (those that answer with a have-bitmap), asked
/// all at once: on a 600 ms link, one after another would cost two round trips each. Peers that
/// could not be asked, answered wrongly or too late are added to `problems` with the reason; a
/// wrong or trickled answer is counted against its peer.
pub(super) async fn holdings_of(
    node: &NodeHandle,
    hash: Hash,
    peers: &[PeerId],
    have_max: usize,
    problems: &mut Vec<String>,
) -> HaveRound {
    let request = &Request::GetHave(hash);
    let t0 = Instant::now();
    let mut asks: FuturesUnordered<_> = peers
        .iter()
        .filter(|p| !node.is_banned(p))
        .map(|&p| async move { (p, ask(node, p, request, have_max).await) })
        .collect();
    let mut waiting: Vec<PeerId> = peers.to_vec();
    let mut round = HaveRound::default();
    let mut deadline: Option<Instant> = None;
    loop {
        let next = match deadline {
            None => asks.next().await,
            Some(d) => tokio::time::timeout_at(d, asks.next()).await.ok().flatten(),
        };
        let Some((p, a)) = next else { break };
        waiting.retain(|w| *w != p);
        match a {
            Ok(Response::Have { object, held: h }) if object == hash => {
                round.held.push((p, h));
                deadline.get_or_insert_with(|| Instant::now() + t0.elapsed() + HAVE_GRACE);
            }
            Ok(Response::NotFound(_)) => round.without.push(p),
            Ok(other) => {
                node.penalise(p, Offence::WrongAnswer).await;
                problems.push(format!("{p}: unexpected answer {}", answer_name(&other)))
            }
            Err(e) => {
                if e.slow {
                    node.penalise(p, Offence::Trickle).await;
                }
                problems.push(format!("{p}: {e}"))
            }
        }
    }
    let secs = t0.elapsed().as_secs_f32();
    for p in waiting.into_iter().filter(|p| !node.is_banned(p)) {
        problems.push(format!(
            "{p}: no have-bitmap after {secs:.1} s, when the others had answered"
        ));
    }
    round
}

/// The answers to one round of have-bitmap requests.
#[derive(Debug, Default)]
pub(super) struct HaveRound {
    pub held: Vec<(PeerId, ChunkBitmap)>,
    /// Those that said they do not have the object.
    pub without: Vec<PeerId>,
}

/// Tries of one request whose connection broke under it, or that the peer answered `Busy`.
const ASK_TRIES: u32 = 3;
/// The longest `Busy` wait honoured.
const BUSY_WAIT_MAX: Duration = Duration::from_secs(5);

/// Why a request got no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AskError {
    pub message: String,
    /// The answer came below the floor rate: the peer's doing.
    pub slow: bool,
}

impl std::fmt::Display for AskError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// One request (a manifest or a have-bitmap) on a stream of its own; the response frame may be
/// at most `max` bytes. A request whose stream or connection broke before the answer (a
/// connection closing as the request went out, a link that dropped) is asked again, after a
/// short wait and a re-dial when the peer is no longer connected, up to [`ASK_TRIES`] times in
/// all, and so is one the peer answered `Busy` (after the wait it asked for, at most
/// [`BUSY_WAIT_MAX`]); a wrong, stalled or trickled answer is not.
pub(crate) async fn ask(
    node: &NodeHandle,
    peer: PeerId,
    req: &Request,
    max: usize,
) -> Result<Response, AskError> {
    let mut tries = 0;
    loop {
        tries += 1;
        let wait = match ask_once(node, peer, req, max).await {
            Ok(Response::Busy { retry_after_ms }) if tries < ASK_TRIES => {
                Duration::from_millis(retry_after_ms.into()).min(BUSY_WAIT_MAX)
            }
            Ok(r) => return Ok(r),
            Err((e, broken)) if !broken || tries >= ASK_TRIES => return Err(e),
            Err(_) => {
                node.traffic
                    .asks_retried
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Duration::from_millis(250 * u64::from(tries))
            }
        };
        tokio::time::sleep(wait).await;
        if !node.is_connected(peer).await.unwrap_or(true) {
            let _ = node.redial(peer).await;
        }
    }
}

/// One try; the error says whether the stream broke (worth another try).
async fn ask_once(
    node: &NodeHandle,
    peer: PeerId,
    req: &Request,
    max: usize,
) -> Result<Response, (AskError, bool)> {
    let fail = |e: FrameError| {
        let broken = matches!(e, FrameError::Io { .. } | FrameError::Truncated { .. });
        let slow = matches!(e, FrameError::TooSlow { .. });
        let message = e.to_string();
        (AskError { message, slow }, broken)
    };
    let control = node.control.clone();
    let mut stream = control.open_stream(peer, CHUNK_STREAM).await.map_err(|e| {
        let message = e.to_string();
        (
            AskError {
                message,
                slow: false,
            },
            true,
        )
    })?;
    let io = FrameIo::new(node.tuning.progress_timeout);
    io.write(&mut stream, "request", &req.encode())
        .await
        .map_err(fail)?;
    let io = io.with_limiter(node.download_limit.clone());
    // Manifests and have-bitmaps: not chunk bytes, not counted as such.
    let body = io
        .read(&mut stream, "response", max, &mut |_| {})
        .await
        .map_err(fail)?;
    Response::decode(&body).map_err(|e| {
        let message = e.to_string();
        (
            AskError {
                message,
                slow: false,
            },
            false,
        )
    })
}
