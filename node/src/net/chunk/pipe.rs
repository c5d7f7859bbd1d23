//! [`ChunkPipe`]: one pipelined chunk stream per peer. Requests are written one after another on
//! a single stream without waiting for answers; the server answers them in order (it serves one
//! chunk at a time per peer anyway). Opening a libp2p stream costs a round trip and libp2p-stream
//! opens one at a time per connection, so a stream per request would allow about one request per
//! round trip — 600 ms on a satellite link. With one stream the scheduler's window alone decides
//! how many requests are outstanding.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::AsyncReadExt;
use libp2p::PeerId;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use zdn_protocol::wire::{max_stored_len, Request, Response};
use zdn_protocol::Hash;

use crate::net::frame::{FrameError, FrameIo};
use crate::net::handle::{NodeHandle, CHUNK_STREAM};

/// What became of one chunk request.
#[derive(Debug)]
pub(crate) enum Outcome {
    Chunk(Vec<u8>),
    NotFound,
    Busy(Duration),
    /// The stream broke, stalled or could not be opened.
    Io,
    /// The answer came below the floor rate (trickling): the peer's doing.
    Slow,
    /// The peer answered something other than the chunk asked for.
    Wrong,
}

/// A result: which peer, which chunk (the caller's index), what happened.
pub(crate) type PipeResult = (PeerId, u32, Outcome);

/// A request: the caller's chunk index, the chunk's id and its uncompressed length (which bounds
/// the answer's size, and so how long it may take).
type Ask = (u32, Hash, u32);

/// The sending side of a peer's pipe. Dropping it (or aborting) ends the stream.
#[derive(Debug)]
pub(crate) struct ChunkPipe {
    requests: mpsc::UnboundedSender<Ask>,
    task: AbortHandle,
}

impl ChunkPipe {
    pub fn spawn(
        node: NodeHandle,
        peer: PeerId,
        object: Hash,
        results: mpsc::UnboundedSender<PipeResult>,
        received: Arc<AtomicU64>,
    ) -> ChunkPipe {
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(run(node, peer, object, rx, results, received)).abort_handle();
        ChunkPipe { requests: tx, task }
    }

    /// Queues a request; `false` when the pipe has ended (the caller starts a new one).
    pub fn send(&self, chunk: u32, id: Hash, len: u32) -> bool {
        self.requests.send((chunk, id, len)).is_ok()
    }

    pub fn abort(&self) {
        self.task.abort();
    }
}

impl Drop for ChunkPipe {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn run(
    node: NodeHandle,
    peer: PeerId,
    object: Hash,
    mut requests: mpsc::UnboundedReceiver<Ask>,
    results: mpsc::UnboundedSender<PipeResult>,
    received: Arc<AtomicU64>,
) {
    let (order_tx, mut order_rx) = mpsc::unbounded_channel::<Ask>();
    if let Ok(stream) = node.control.clone().open_stream(peer, CHUNK_STREAM).await {
        let (mut rd, mut wr) = stream.split();
        let io = FrameIo::new(node.tuning.progress_timeout);
        let rio = io.clone().with_limiter(node.download_limit.clone());
        let traffic = node.traffic.clone();
        let writer = async {
            while let Some((ci, id, len)) = requests.recv().await {
                let _ = order_tx.send((ci, id, len));
                let req = Request::GetChunk { object, id }.encode();
                if io.write(&mut wr, "request", &req).await.is_err() {
                    break;
                }
            }
        };
        let reader = async {
            while let Some((ci, want, len)) = order_rx.recv().await {
                let body = rio
                    .read(
                        &mut rd,
                        "response",
                        1 + 32 + max_stored_len(len),
                        &mut |n| {
                            // The node's total and this transfer's own count.
                            traffic
                                .chunk_bytes_received
                                .fetch_add(n as u64, Ordering::Relaxed);
                            received.fetch_add(n as u64, Ordering::Relaxed);
                        },
                    )
                    .await;
                let outcome = match body.as_deref().map(Response::decode) {
                    Ok(Ok(Response::Chunk { id, stored })) if id == want => Outcome::Chunk(stored),
                    Ok(Ok(Response::NotFound(_))) => Outcome::NotFound,
                    Ok(Ok(Response::Busy { retry_after_ms })) => {
                        Outcome::Busy(Duration::from_millis(retry_after_ms.min(60_000).into()))
                    }
                    Ok(_) => Outcome::Wrong,
                    Err(FrameError::TooSlow { .. }) => Outcome::Slow,
                    Err(_) => Outcome::Io,
                };
                let broken = matches!(outcome, Outcome::Io | Outcome::Wrong | Outcome::Slow);
                if results.send((peer, ci, outcome)).is_err() || broken {
                    // Out of step with the server: nothing more on this stream can be trusted.
                    break;
                }
            }
        };
        tokio::select! {
            _ = writer => {}
            _ = reader => {}
        }
    }
    // Whatever was asked and not answered failed; refuse new requests so none is lost.
    requests.close();
    while let Ok((ci, ..)) = order_rx.try_recv() {
        let _ = results.send((peer, ci, Outcome::Io));
    }
    while let Ok((ci, ..)) = requests.try_recv() {
        let _ = results.send((peer, ci, Outcome::Io));
    }
}
