//! Serving the chunk protocol (`/zdn/chunk/1`): one request per stream, answered from the store.
//!
//! Limits, so a peer cannot take the node down: a request frame is at most
//! [`MAX_REQUEST_LEN`] bytes and must arrive within the progress timeout; at most
//! [`MAX_STREAMS`] streams are served at once and [`MAX_QUEUED_PER_PEER`] per peer (more are reset
//! before anything is read); chunk bodies go out one at a time per peer, so a transfer cut off mid-way wastes at
//! most one chunk per peer, and a slow reader holds only its own slot.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::AsyncWriteExt;
use libp2p::{PeerId, Stream};
use tokio::sync::{watch, Semaphore};
use zdn_protocol::wire::{ChunkBitmap, Request, Response, MAX_REQUEST_LEN};

use crate::store::StoreHandle;

use crate::net::accept::{accept_loop, StreamLimits};
use crate::net::config::Fault;
use crate::net::frame::FrameIo;
use crate::net::handle::Traffic;
use crate::net::rate_limit::RateLimiter;
use crate::net::streams::Incoming;

/// Streams served at once, all peers together.
pub const MAX_STREAMS: usize = 512;
/// Streams one peer may have open (waiting or being served); more are reset.
pub const MAX_QUEUED_PER_PEER: usize = 96;
/// How long a stream may sit between two requests.
const REQUEST_IDLE: Duration = Duration::from_secs(300);

pub(crate) struct ChunkServer {
    pub store: StoreHandle,
    pub progress_timeout: Duration,
    pub limiter: Option<Arc<RateLimiter>>,
    pub traffic: Arc<Traffic>,
    pub fault: Option<Fault>,
}

impl ChunkServer {
    pub async fn run(self, incoming: Incoming, stop: watch::Receiver<bool>) {
        let this = Arc::new(self);
        // One chunk body at a time per peer.
        let bodies: Arc<Mutex<HashMap<PeerId, Arc<Semaphore>>>> = Arc::default();
        let limits = StreamLimits {
            total: MAX_STREAMS,
            per_peer: MAX_QUEUED_PER_PEER,
        };
        accept_loop(incoming, stop, limits, move |peer, stream, admitted| {
            let serve = {
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
                this.serve(stream, serve).await;
            }
        })
        .await;
    }

    fn io(&self) -> FrameIo {
        FrameIo {
            progress_timeout: self.progress_timeout,
            limiter: None,
        }
    }

    /// Answers one request. Errors end the stream: the peer sees a reset and its scheduler
    /// decides what to do; nothing here can fail the node.
    async fn serve(&self, mut stream: Stream, serving: Arc<Semaphore>) {
        // A stream carries any number of requests, answered in order (a fetch pipelines its chunk
        // requests on one stream). Between requests the peer may be quiet for a while.
        let wait = FrameIo {
            progress_timeout: self.progress_timeout.max(REQUEST_IDLE),
            limiter: None,
        };
        loop {
            let Ok(request) = wait
                .read(&mut stream, "request", MAX_REQUEST_LEN, &mut |_| {})
                .await
            else {
                break;
            };
            let Ok(request) = Request::decode(&request) else {
                break;
            };
            if !self.answer(&mut stream, request, &serving).await {
                break;
            }
        }
        let _ = stream.close().await;
    }

    /// Answers one request; `false` when the stream is no longer usable.
    async fn answer(
        &self,
        stream: &mut Stream,
        request: Request,
        serving: &Arc<Semaphore>,
    ) -> bool {
        let response = match request {
            Request::GetManifest(h) => self
                .store
                .call(move |s| {
                    Ok(match s.manifest(&h)? {
                        Some(m) => Some(m),
                        None => s.partial(&h)?,
                    })
                })
                .await
                .ok()
                .flatten()
                .map_or(Response::NotFound(h), |m| {
                    Response::Manifest(m.as_bytes().to_vec())
                }),
            Request::GetHave(h) => self
                .store
                .call(move |s| {
                    if let Some(m) = s.manifest(&h)? {
                        return Ok(Some(ChunkBitmap::full(m.manifest.chunks.len() as u32)));
                    }
                    let Some(m) = s.partial(&h)? else {
                        return Ok(None);
                    };
                    let mut held = ChunkBitmap::new(m.manifest.chunks.len() as u32);
                    for (i, c) in m.manifest.chunks.iter().enumerate() {
                        if s.has_chunk(&c.id)? {
                            held.set(i as u32);
                        }
                    }
                    Ok(Some(held))
                })
                .await
                .ok()
                .flatten()
                .map_or(Response::NotFound(h), |held| Response::Have {
                    object: h,
                    held,
                }),
            Request::GetChunk { id, .. } => {
                // One body at a time per peer: wait for the peer's previous chunk to finish.
                let Ok(_serving) = serving.clone().acquire_owned().await else {
                    return false;
                };
                let stored = self.store.call(move |s| s.chunk(&id)).await.ok().flatten();
                let Some(mut stored) = stored else {
                    return self
                        .io()
                        .write(stream, "response", &Response::NotFound(id).encode())
                        .await
                        .is_ok();
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
                    Some(Fault::BogusAnnouncements) | None => {}
                }
                let n = stored.len() as u64;
                let body = Response::Chunk { id, stored }.encode();
                let io = FrameIo {
                    limiter: self.limiter.clone(),
                    ..self.io()
                };
                if io.write(stream, "response", &body).await.is_err() {
                    return false;
                }
                self.traffic
                    .chunk_bytes_served
                    .fetch_add(n, Ordering::Relaxed);
                self.traffic.chunks_served.fetch_add(1, Ordering::Relaxed);
                return true;
            }
        };
        self.io()
            .write(stream, "response", &response.encode())
            .await
            .is_ok()
    }
}
