//! [`NodeHandle`]: how the rest of the program talks to the node. The swarm is owned by the event
//! loop task; the handle sends it commands over a bounded channel and awaits replies on oneshots.
//! Chunk streams are opened through libp2p-stream's `Control`, which is built for use outside the
//! swarm task, so transfers never wait behind swarm events.

use std::sync::Arc;

use libp2p::{Multiaddr, PeerId, StreamProtocol};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use zdn_protocol::wire::CHUNK_PROTOCOL;
use zdn_protocol::Hash;

use crate::store::{StoreHandle, TrustPolicy};

use crate::net::profile::Tuning;
use crate::net::rate_limit::RateLimiter;
use crate::net::NetError;

pub(crate) const CHUNK_STREAM: StreamProtocol = StreamProtocol::new(CHUNK_PROTOCOL);

/// A connected peer, as `zdn peers` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct PeerInfo {
    pub peer: String,
    pub addresses: Vec<String>,
    /// Last ping round trip in milliseconds.
    pub rtt_ms: Option<u64>,
}

pub(crate) enum Command {
    Dial {
        addr: Multiaddr,
        reply: oneshot::Sender<Result<PeerId, NetError>>,
    },
    /// Dial a peer by id, at the addresses it was reached at before (and those kad or mDNS know).
    Redial {
        peer: PeerId,
        reply: oneshot::Sender<Result<PeerId, NetError>>,
    },
    IsConnected {
        peer: PeerId,
        reply: oneshot::Sender<bool>,
    },
    /// Whether this node banned the peer (the paced lane does not resume its parked sessions).
    IsBanned {
        peer: PeerId,
        reply: oneshot::Sender<bool>,
    },
    /// Publish a provider record for an object now held complete.
    Provide { hash: Hash },
    /// Ask the DHT who provides an object; the reply lists those now connected.
    FindProviders {
        hash: Hash,
        reply: oneshot::Sender<Vec<PeerId>>,
    },
    Peers {
        reply: oneshot::Sender<Vec<PeerInfo>>,
    },
    ListenAddrs {
        reply: oneshot::Sender<Vec<Multiaddr>>,
    },
    Announce {
        manifest: Vec<u8>,
        reply: oneshot::Sender<Result<(), NetError>>,
    },
}

/// Counters of chunk traffic, shared by the server and every fetch.
#[derive(Debug, Default)]
pub struct Traffic {
    pub chunk_bytes_served: std::sync::atomic::AtomicU64,
    pub chunk_bytes_received: std::sync::atomic::AtomicU64,
    pub chunks_served: std::sync::atomic::AtomicU64,
    /// Paced-lane datagrams that did not open under their session's key (forged, corrupted,
    /// replayed): dropped, never acted on.
    pub paced_refused: std::sync::atomic::AtomicU64,
}

/// A cloneable handle to a running node.
#[derive(Clone)]
pub struct NodeHandle {
    pub(crate) commands: mpsc::Sender<Command>,
    pub(crate) control: libp2p_stream::Control,
    pub(crate) local: PeerId,
    pub(crate) store: StoreHandle,
    pub(crate) trust: TrustPolicy,
    pub(crate) tuning: Tuning,
    pub(crate) download_limit: Option<Arc<RateLimiter>>,
    pub(crate) traffic: Arc<Traffic>,
    pub(crate) paced: Option<Arc<crate::net::paced::lane::PacedLane>>,
}

impl std::fmt::Debug for NodeHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeHandle")
            .field("local", &self.local)
            .finish_non_exhaustive()
    }
}

impl NodeHandle {
    pub fn peer_id(&self) -> PeerId {
        self.local
    }

    pub fn store(&self) -> &StoreHandle {
        &self.store
    }

    pub fn traffic(&self) -> &Traffic {
        &self.traffic
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, NetError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(make(tx))
            .await
            .map_err(|_| NetError::Stopped)?;
        rx.await.map_err(|_| NetError::Stopped)
    }

    /// Connects to `addr` and returns the peer's id once the connection is up.
    pub async fn dial(&self, addr: Multiaddr) -> Result<PeerId, NetError> {
        self.ask(|reply| Command::Dial { addr, reply }).await?
    }

    /// Connects again to a peer this node was connected to (the addresses it dialed then).
    pub async fn redial(&self, peer: PeerId) -> Result<PeerId, NetError> {
        self.ask(|reply| Command::Redial { peer, reply }).await?
    }

    pub async fn is_connected(&self, peer: PeerId) -> Result<bool, NetError> {
        self.ask(|reply| Command::IsConnected { peer, reply }).await
    }

    /// Announces in the DHT that this node holds `hash` complete (queued; no-op without DHT).
    pub async fn provide(&self, hash: Hash) -> Result<(), NetError> {
        self.commands
            .send(Command::Provide { hash })
            .await
            .map_err(|_| NetError::Stopped)
    }

    /// The providers of `hash` the DHT knows, dialed; empty when none answered in time (the
    /// profile's query timeout, plus time for the dials).
    pub async fn find_providers(&self, hash: Hash) -> Result<Vec<PeerId>, NetError> {
        let patience = self.tuning.dht.query_timeout + std::time::Duration::from_secs(30);
        match tokio::time::timeout(
            patience,
            self.ask(|reply| Command::FindProviders { hash, reply }),
        )
        .await
        {
            Ok(r) => r,
            Err(_) => Ok(Vec::new()),
        }
    }

    pub async fn peers(&self) -> Result<Vec<PeerInfo>, NetError> {
        self.ask(|reply| Command::Peers { reply }).await
    }

    /// The addresses the node listens on; waits until there is at least one when the node was
    /// told to listen.
    pub async fn listen_addrs(&self) -> Result<Vec<Multiaddr>, NetError> {
        self.ask(|reply| Command::ListenAddrs { reply }).await
    }

    /// Opens a raw chunk-protocol stream to `peer` (tools and tests that speak the protocol
    /// themselves; fetches use [`super::fetch()`]).
    pub async fn open_chunk_stream(&self, peer: PeerId) -> Result<libp2p::Stream, NetError> {
        self.control
            .clone()
            .open_stream(peer, CHUNK_STREAM)
            .await
            .map_err(|e| NetError::Dial {
                addr: peer.to_string(),
                reason: e.to_string(),
            })
    }

    /// Gossips a signed manifest to the network. Queued and retried while no peer is subscribed.
    pub async fn announce(&self, manifest: Vec<u8>) -> Result<(), NetError> {
        self.ask(|reply| Command::Announce { manifest, reply })
            .await?
    }
}
