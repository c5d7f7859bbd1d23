//! Serving the chunk protocol (`/zdn/chunk/1`): requests on a stream answered in order, from the
//! store.
//!
//! Limits, so a peer cannot take the node down: a request frame is at most [`MAX_REQUEST_LEN`]
//! bytes; a stream may wait [`REQUEST_IDLE`] for its next request, after which every frame moves at
//! the progress timeout and the floor rate ([`crate::net::frame`]); at most [`MAX_STREAMS`] streams
//! are served at once, [`MAX_QUEUED_PER_PEER`] per peer, shared fairly between subnets, with
//! [`RESERVED_STREAMS`] more for the peers this node dialed ([`crate::net::accept`]); manifest and
//! have-bitmap requests are budgeted per peer and per subnet, and answered from a cache of verified
//! manifests rather than by decoding and verifying again on the store's thread; chunk bodies go
//! out one at a time per peer, and response bytes in flight are bounded for the whole node, so a
//! slow reader holds only its own slot and never a copy of its own (over a budget: `Busy`).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::AsyncWriteExt;
use libp2p::{PeerId, Stream};
use tokio::sync::{watch, Semaphore};
use zdn_protocol::manifest::SignedManifest;
use zdn_protocol::wire::{
    ChunkBitmap, Request, Response, CHUNK_RESPONSE_TAG, MANIFEST_RESPONSE_TAG, MAX_RECENT,
    MAX_REQUEST_LEN,
};
use zdn_protocol::Hash;

use crate::store::{Holding, StoreHandle};

use crate::net::accept::{accept_loop, StreamLimits};
use crate::net::config::Fault;
use crate::net::frame::FrameIo;
use crate::net::handle::Traffic;
use crate::net::peers::PeerTable;
use crate::net::rate_limit::RateLimiter;
use crate::net::streams::Incoming;

use super::budget::{InFlight, RequestBudget, BUSY_RETRY_MS};
use super::cache::ManifestCache;

/// Streams served at once, all peers together (fairly shared: see `crate::net::accept`).
pub const MAX_STREAMS: usize = 512;
/// Streams one peer may have open (waiting or being served); more are reset. A fetch uses one
/// pipelined stream per peer and short ones for manifests and have-bitmaps.
pub const MAX_QUEUED_PER_PEER: usize = 32;
/// More streams, for peers this node dialed and the operator's peers only.
pub const RESERVED_STREAMS: usize = 64;
/// How long a stream may sit between two requests.
const REQUEST_IDLE: Duration = Duration::from_secs(300);

pub(crate) struct ChunkServer {
    pub store: StoreHandle,
    pub peer_table: Arc<PeerTable>,
    pub progress_timeout: Duration,
    pub limiter: Option<Arc<RateLimiter>>,
    pub traffic: Arc<Traffic>,
    pub fault: Option<Fault>,
    pub cache: ManifestCache,
    pub budget: RequestBudget,
    pub in_flight: InFlight,
    /// When each peer last asked for the recent announcements (answered once per
    /// [`RECENT_EVERY`]; an honest node asks once per connection, at most every 10 minutes).
    pub recent_asked: Mutex<HashMap<PeerId, Instant>>,
}

/// How often one peer's `GetRecent` is answered: each answer scans the store's list by time.
pub const RECENT_EVERY: Duration = Duration::from_secs(60);

/// What one stream's requests share: who asks, and its peer's one-body-at-a-time slot.
struct Asker {
    peer: PeerId,
    serving: Arc<Semaphore>,
}

impl ChunkServer {
    pub async fn run(self, incoming: Incoming, stop: watch::Receiver<bool>) {
        let this = Arc::new(self);
        // One chunk body at a time per peer.
        let bodies: Arc<Mutex<HashMap<PeerId, Arc<Semaphore>>>> = Arc::default();
        let limits = StreamLimits {
            total: MAX_STREAMS,
            per_peer: MAX_QUEUED_PER_PEER,
            reserved: RESERVED_STREAMS,
        };
        let places = (limits, this.peer_table.clone(), this.traffic.clone());
        accept_loop(incoming, stop, places, move |peer, stream, admitted| {
            let serving = {
                let mut map = bodies.lock().unwrap_or_else(|e| e.into_inner());
                if map.len() > MAX_STREAMS {
                    map.retain(|_, s| Arc::strong_count(s) > 1);
                }
                map.entry(peer)
                    .or_insert_with(|| Arc::new(Semaphore::new(1)))
                    .clone()
            };
            let this = this.clone();
            async move {
                let _admitted = admitted;
                this.serve(stream, Asker { peer, serving }).await;
            }
        })
        .await;
    }

    fn io(&self) -> FrameIo {
        FrameIo::new(self.progress_timeout)
    }

    /// Answers requests. Errors end the stream: the peer sees a reset and its scheduler decides
    /// what to do; nothing here can fail the node.
    async fn serve(&self, mut stream: Stream, asker: Asker) {
        // A stream carries any number of requests, answered in order (a fetch pipelines its chunk
        // requests on one stream). Between requests the peer may be quiet for a while.
        let idle = Some(self.progress_timeout.max(REQUEST_IDLE));
        loop {
            let Ok(request) = self
                .io()
                .read_after(&mut stream, "request", MAX_REQUEST_LEN, idle, &mut |_| {})
                .await
            else {
                break;
            };
            let Ok(request) = Request::decode(&request) else {
                break;
            };
            let ok = match request {
                Request::GetManifest(h) => self.answer_manifest(&mut stream, &asker, h).await,
                Request::GetHave(h) => self.answer_have(&mut stream, &asker, h).await,
                Request::GetChunk { id, .. } => self.answer_chunk(&mut stream, &asker, id).await,
                Request::GetAnnouncement(h) => {
                    self.answer_announcement(&mut stream, &asker, h).await
                }
                Request::GetRecent { since } => {
                    self.answer_recent(&mut stream, &asker, since).await
                }
            };
            if !ok {
                break;
            }
        }
        let _ = stream.close().await;
    }

    async fn reply(&self, stream: &mut Stream, r: Response) -> bool {
        self.io()
            .write(stream, "response", &r.encode())
            .await
            .is_ok()
    }

    async fn busy(&self, stream: &mut Stream) -> bool {
        self.traffic.requests_busy.fetch_add(1, Ordering::Relaxed);
        let busy = Response::Busy {
            retry_after_ms: BUSY_RETRY_MS,
        };
        self.reply(stream, busy).await
    }

    /// Whether `asker` may make one more manifest or have-bitmap request now.
    fn within_budget(&self, asker: &Asker) -> bool {
        let subnet = self.peer_table.class(&asker.peer).subnet;
        self.budget.take(asker.peer, subnet)
    }

    /// The verified manifest `h` (complete or being downloaded), from the cache or decoded once.
    async fn manifest(&self, h: Hash) -> Option<(Arc<SignedManifest>, Holding)> {
        let cached = self.cache.get(&h);
        let found = cached.is_some();
        let (m, holding) = self
            .store
            .call(move |s| {
                let holding = s.holding(&h)?;
                let m = match (cached, holding) {
                    (_, Holding::None) => None,
                    (Some(m), _) => Some(m),
                    (None, Holding::Complete) => s.manifest(&h)?.map(Arc::new),
                    (None, Holding::Partial) => s.partial(&h)?.map(Arc::new),
                };
                Ok((m, holding))
            })
            .await
            .ok()?;
        let m = m?;
        if !found {
            self.cache.insert(m.clone());
        }
        Some((m, holding))
    }

    async fn answer_manifest(&self, stream: &mut Stream, asker: &Asker, h: Hash) -> bool {
        if !self.within_budget(asker) {
            return self.busy(stream).await;
        }
        let Some((m, _)) = self.manifest(h).await else {
            return self.reply(stream, Response::NotFound(h)).await;
        };
        let Some(_held) = self.in_flight.hold(m.as_bytes().len()) else {
            return self.busy(stream).await;
        };
        // The shared manifest's bytes, not a copy of them.
        let parts: [&[u8]; 2] = [&[MANIFEST_RESPONSE_TAG], m.as_bytes()];
        self.io()
            .write_parts(stream, "response", &parts)
            .await
            .is_ok()
    }

    /// The publisher's signed announcement of manifest `h`, when this node keeps one (it has the
    /// object, and the manifest is too big for gossip).
    async fn answer_announcement(&self, stream: &mut Stream, asker: &Asker, h: Hash) -> bool {
        if !self.within_budget(asker) {
            return self.busy(stream).await;
        }
        let found = self.store.call(move |s| s.announcement(&h)).await;
        let forge = self.fault == Some(Fault::ForgedAnnouncements);
        let r = match found.ok().flatten().map(|mut a| {
            if forge {
                // Not what the publisher signed.
                a.name.push('!');
            }
            a.encode()
        }) {
            Some(Ok(bytes)) => Response::Announcement(bytes),
            _ => Response::NotFound(h),
        };
        self.reply(stream, r).await
    }

    /// The newest signed announcements from `since` (at most [`MAX_RECENT`]): budgeted like a
    /// manifest request, and answered once per [`RECENT_EVERY`] per peer (`Busy` otherwise).
    async fn answer_recent(&self, stream: &mut Stream, asker: &Asker, since: u64) -> bool {
        // How long until this peer may ask again; zero: now (and from now, RECENT_EVERY).
        let wait = {
            let now = Instant::now();
            let mut asked = self.recent_asked.lock().unwrap_or_else(|e| e.into_inner());
            if asked.len() > MAX_STREAMS {
                asked.retain(|_, t| now.duration_since(*t) < RECENT_EVERY);
            }
            let wait = asked.get(&asker.peer).map_or(Duration::ZERO, |t| {
                RECENT_EVERY.saturating_sub(now.duration_since(*t))
            });
            if wait.is_zero() {
                asked.insert(asker.peer, now);
            }
            wait
        };
        if !wait.is_zero() {
            // Said exactly: a node that restarted within the minute asks again then.
            self.traffic.requests_busy.fetch_add(1, Ordering::Relaxed);
            let busy = Response::Busy {
                retry_after_ms: u32::try_from(wait.as_millis()).unwrap_or(u32::MAX),
            };
            return self.reply(stream, busy).await;
        }
        if !self.within_budget(asker) {
            return self.busy(stream).await;
        }
        let found = self
            .store
            .call(move |s| s.recent_announcements(since, MAX_RECENT))
            .await
            .unwrap_or_default();
        let forge = self.fault == Some(Fault::ForgedAnnouncements);
        let list = found
            .into_iter()
            .filter_map(|mut a| {
                if forge {
                    // Not what the publisher signed.
                    a.name.push('!');
                }
                a.encode().ok()
            })
            .collect();
        self.reply(stream, Response::Recent(list)).await
    }

    async fn answer_have(&self, stream: &mut Stream, asker: &Asker, h: Hash) -> bool {
        if !self.within_budget(asker) {
            return self.busy(stream).await;
        }
        let Some((m, holding)) = self.manifest(h).await else {
            return self.reply(stream, Response::NotFound(h)).await;
        };
        let n = m.manifest.chunks.len() as u32;
        let held = match holding {
            Holding::Complete => Some(ChunkBitmap::full(n)),
            // Which chunks of a download in progress are here: point lookups, no decoding.
            _ => self
                .store
                .call(move |s| {
                    let mut held = ChunkBitmap::new(n);
                    for (i, c) in m.manifest.chunks.iter().enumerate() {
                        if s.has_chunk(&c.id)? {
                            held.set(i as u32);
                        }
                    }
                    Ok(held)
                })
                .await
                .ok(),
        };
        let r = held.map_or(Response::NotFound(h), |held| Response::Have {
            object: h,
            held,
        });
        self.reply(stream, r).await
    }

    async fn answer_chunk(&self, stream: &mut Stream, asker: &Asker, id: Hash) -> bool {
        // One body at a time per peer: wait for the peer's previous chunk to finish.
        let Ok(_serving) = asker.serving.clone().acquire_owned().await else {
            return false;
        };
        let stored = self.store.call(move |s| s.chunk(&id)).await.ok().flatten();
        let Some(mut stored) = stored else {
            return self.reply(stream, Response::NotFound(id)).await;
        };
        let Some(_held) = self.in_flight.hold(stored.len()) else {
            return self.busy(stream).await;
        };
        match self.fault {
            Some(Fault::CorruptChunks) => {
                if let Some(b) = stored.last_mut() {
                    *b ^= 0x5a;
                }
            }
            Some(Fault::StallChunks) => {
                let body = Response::Chunk { id, stored }.encode();
                let mut frame = (body.len() as u32).to_le_bytes().to_vec();
                frame.extend_from_slice(&body[..body.len() / 2]);
                let _ = stream.write_all(&frame).await;
                let _ = stream.flush().await;
                futures::future::pending::<()>().await;
                return false;
            }
            Some(Fault::BogusAnnouncements | Fault::ForgedAnnouncements) | None => {}
        }
        let n = stored.len() as u64;
        let parts: [&[u8]; 3] = [&[CHUNK_RESPONSE_TAG], id.as_bytes(), &stored];
        let io = self.io().with_limiter(self.limiter.clone());
        if io.write_parts(stream, "response", &parts).await.is_err() {
            return false;
        }
        self.traffic
            .chunk_bytes_served
            .fetch_add(n, Ordering::Relaxed);
        self.traffic.chunks_served.fetch_add(1, Ordering::Relaxed);
        true
    }
}
