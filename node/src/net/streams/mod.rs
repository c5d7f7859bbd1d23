//! Raw streams for zdn's own protocols (the chunk protocol and the paced lane), in place of the
//! libp2p-stream crate, whose inbound streams pass through a channel of one: when two peers open
//! a stream in the same turn of the swarm, the second is reset ("Channel is full, dropping inbound
//! stream") and the peer sees `connection is closed` on its first write — what made several site
//! devices fetching from a station at once fail now and then. Here:
//!
//! - inbound streams of each protocol queue up to [`INBOUND_QUEUE`] deep for the server's accept
//!   loop (which admits or resets each one at once, so the queue only fills under a flood; past it a
//!   stream is reset and counted: `streams_dropped` in the node's traffic);
//! - outbound opens are concurrent on a connection (each carries its own reply), not one at a
//!   time;
//! - opening a stream to a peer that is not connected fails at once ([`OpenStreamError::NotConnected`]):
//!   callers dial first, so a stream never dials behind their back.

mod behaviour;
mod handler;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use libp2p::swarm::Stream;
use libp2p::{PeerId, StreamProtocol};
use tokio::sync::{mpsc, oneshot};

pub use behaviour::StreamBehaviour;

/// Inbound streams of one protocol waiting for its accept loop.
pub const INBOUND_QUEUE: usize = 256;
/// Open requests waiting for the swarm (a full queue makes `open_stream` wait).
const REQUEST_QUEUE: usize = 256;

/// Why a stream could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenStreamError {
    #[error("the peer does not support {0}")]
    UnsupportedProtocol(StreamProtocol),
    #[error("not connected to the peer")]
    NotConnected,
    #[error("the node is stopping")]
    Stopped,
    #[error("opening the stream: {0}")]
    Io(#[from] std::io::Error),
}

/// A request to open a stream, from a [`StreamControl`] through the behaviour to a connection.
#[derive(Debug)]
pub struct OpenRequest {
    pub peer: PeerId,
    pub protocol: StreamProtocol,
    pub reply: oneshot::Sender<Result<Stream, OpenStreamError>>,
}

/// Opens outbound streams; cloneable, used from any task.
#[derive(Clone, Debug)]
pub struct StreamControl {
    requests: mpsc::Sender<OpenRequest>,
}

impl StreamControl {
    /// A new stream of `protocol` to `peer`, on a connection that exists.
    pub async fn open_stream(
        &self,
        peer: PeerId,
        protocol: StreamProtocol,
    ) -> Result<Stream, OpenStreamError> {
        let (reply, rx) = oneshot::channel();
        self.requests
            .send(OpenRequest {
                peer,
                protocol,
                reply,
            })
            .await
            .map_err(|_| OpenStreamError::Stopped)?;
        rx.await.map_err(|_| OpenStreamError::Stopped)?
    }
}

/// The inbound streams of one protocol.
#[derive(Debug)]
pub struct Incoming {
    rx: mpsc::Receiver<(PeerId, Stream)>,
}

impl Incoming {
    /// The next stream; `None` when the swarm is gone.
    pub async fn next(&mut self) -> Option<(PeerId, Stream)> {
        self.rx.recv().await
    }
}

/// Where each protocol's inbound streams go (shared by every connection's handler).
#[derive(Debug)]
pub struct InboundRoutes {
    routes: HashMap<StreamProtocol, mpsc::Sender<(PeerId, Stream)>>,
    /// Streams reset because their queue was full.
    dropped: Arc<AtomicU64>,
}

impl InboundRoutes {
    fn protocols(&self) -> Vec<StreamProtocol> {
        let mut p: Vec<StreamProtocol> = self.routes.keys().cloned().collect();
        p.sort_by(|a, b| a.as_ref().cmp(b.as_ref()));
        p
    }

    /// Hands a negotiated inbound stream to its accept loop, or resets it when the queue is full
    /// (or the accept loop is gone).
    fn deliver(&self, peer: PeerId, protocol: &StreamProtocol, stream: Stream) {
        if let Some(tx) = self.routes.get(protocol) {
            if tx.try_send((peer, stream)).is_err() {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// The behaviour for `protocols`, its control, and each protocol's inbound streams (in the order
/// given); streams reset for a full queue are counted in `dropped`.
pub(crate) fn streams(
    protocols: &[StreamProtocol],
    dropped: Arc<AtomicU64>,
) -> (StreamBehaviour, StreamControl, Vec<Incoming>) {
    let mut routes = HashMap::new();
    let mut incoming = Vec::new();
    for p in protocols {
        let (tx, rx) = mpsc::channel(INBOUND_QUEUE);
        routes.insert(p.clone(), tx);
        incoming.push(Incoming { rx });
    }
    let (requests, requests_rx) = mpsc::channel(REQUEST_QUEUE);
    let routes = InboundRoutes { routes, dropped };
    let behaviour = StreamBehaviour::new(Arc::new(routes), requests_rx);
    (behaviour, StreamControl { requests }, incoming)
}

#[cfg(test)]
mod tests;
