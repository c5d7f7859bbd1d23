//! [`NodeHandle`]: how the rest of the program talks to the node. The swarm is owned by the event
//! loop task; the handle sends it commands over a bounded channel and awaits replies on oneshots.
//! Chunk streams are opened through libp2p-stream's `Control`, which is built for use outside the
//! swarm task, so transfers never wait behind swarm events.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use libp2p::{Multiaddr, PeerId, StreamProtocol};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use zdn_protocol::wire::CHUNK_PROTOCOL;
use zdn_protocol::Hash;

use crate::store::{StoreHandle, TrustPolicy};

use crate::net::peers::{Offence, PeerScores, PeerTable};
use crate::net::profile::Tuning;
use crate::net::rate_limit::RateLimiter;
use crate::net::swarm::behaviour::MAX_GOSSIP_LEN;
use crate::net::NetError;

pub(crate) const CHUNK_STREAM: StreamProtocol = StreamProtocol::new(CHUNK_PROTOCOL);

/// A connected peer, as `zdn peers` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct PeerInfo {
    pub peer: String,
    pub addresses: Vec<String>,
    /// Last ping round trip in milliseconds.
    pub rtt_ms: Option<u64>,
    /// Its misbehaviour penalty now (0 = clean; banned at 100; halves every 30 minutes).
    pub penalty: f64,
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
    /// Publish on the topic: a signed manifest, or the signed announcement of one.
    Announce {
        gossip: Vec<u8>,
        reply: oneshot::Sender<Result<(), NetError>>,
    },
    /// A peer's penalty just crossed the ban line: disconnect it and say so.
    Ban { peer: PeerId, reason: String },
    /// A fetch got `hash` from `peer`, found through the DHT: its provider record is verified.
    ProviderVerified { hash: Hash, peer: PeerId },
}

/// Counters of the node's traffic and of what its defences did, shared by the servers, the
/// swarm and every fetch (printed by `zdn node run` when it stops, and by `zdn status`).
#[derive(Debug, Default, Serialize)]
pub struct Traffic {
    pub chunk_bytes_served: AtomicU64,
    pub chunk_bytes_received: AtomicU64,
    pub chunks_served: AtomicU64,
    /// Paced-lane datagrams that did not open under their session's key (forged, corrupted,
    /// replayed): dropped, never acted on.
    pub paced_refused: AtomicU64,
    /// Inbound connections refused (address, subnet or total caps; banned peers).
    pub connections_refused: AtomicU64,
    /// Inbound connections closed to make room for a peer from a subnet under its share.
    pub connections_evicted: AtomicU64,
    /// Streams reset unread (no place) or closed to make room for another peer's.
    pub streams_refused: AtomicU64,
    pub streams_evicted: AtomicU64,
    /// Requests answered `Busy` because their peer asked too often.
    pub requests_busy: AtomicU64,
    /// Peers whose penalty crossed the ban line.
    pub peers_banned: AtomicU64,
    /// Manifest or have requests asked again because their stream or connection broke before the
    /// answer (a link that dropped; each is re-dialed first when the peer is gone).
    pub asks_retried: AtomicU64,
    /// Inbound streams reset because their protocol's queue was full (a flood of stream opens).
    pub streams_dropped: Arc<AtomicU64>,
}

/// A cloneable handle to a running node.
#[derive(Clone)]
pub struct NodeHandle {
    pub(crate) commands: mpsc::Sender<Command>,
    pub(crate) control: crate::net::streams::StreamControl,
    pub(crate) local: PeerId,
    pub(crate) store: StoreHandle,
    pub(crate) trust: TrustPolicy,
    pub(crate) tuning: Tuning,
    pub(crate) download_limit: Option<Arc<RateLimiter>>,
    pub(crate) traffic: Arc<Traffic>,
    pub(crate) paced: Option<Arc<crate::net::paced::lane::PacedLane>>,
    pub(crate) scores: Arc<PeerScores>,
    pub(crate) peer_table: Arc<PeerTable>,
    /// One fetch of an object at a time.
    pub(crate) fetching: Arc<crate::net::fetch::once::OneAtATime>,
    /// The node listens (serves others): it keeps the signed announcement of every object it
    /// fetches, for the peers that catch up from it (`crate::net::catchup`).
    pub(crate) serves: bool,
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

    /// Counts an offence against `peer`; one that crosses the ban line is disconnected (and from
    /// then on refused, never dialed and never asked, until the penalty decays).
    pub async fn penalise(&self, peer: PeerId, offence: Offence) {
        if self.scores.penalise(peer, offence) {
            let reason = format!("banned for {}", offence.as_str());
            let _ = self.commands.send(Command::Ban { peer, reason }).await;
        }
    }

    /// A DHT provider turned out to hold `hash` (queued; no-op without DHT).
    pub async fn provider_verified(&self, hash: Hash, peer: PeerId) {
        let _ = self
            .commands
            .send(Command::ProviderVerified { hash, peer })
            .await;
    }

    /// Whether `peer` is banned now.
    pub fn is_banned(&self, peer: &PeerId) -> bool {
        self.scores.is_banned(peer)
    }

    /// `peer`'s penalty now (0 = clean).
    pub fn penalty(&self, peer: &PeerId) -> f64 {
        self.scores.penalty(peer)
    }

    /// Gossips a signed manifest to the network: the manifest itself when it fits, else its
    /// publisher's signed [`Announcement`](zdn_protocol::wire::Announcement) (receivers fetch the manifest by hash), which this
    /// node's store must hold. Queued and retried while no peer is subscribed.
    pub async fn announce(&self, manifest: Vec<u8>) -> Result<(), NetError> {
        let gossip = if manifest.len() <= MAX_GOSSIP_LEN {
            manifest
        } else {
            // A manifest's hash is the BLAKE3 of its bytes; the store holds an announcement only
            // for a manifest it has checked.
            let (hash, len) = (Hash::of(&manifest), manifest.len());
            let a = self.store.call(move |s| s.announcement(&hash)).await?;
            let a = a.ok_or_else(|| {
                NetError::Announce(format!(
                    "manifest {hash} is {len} bytes, over gossip's {MAX_GOSSIP_LEN}, so it is \
                     announced by hash, which takes its publisher's signed announcement; this node \
                     has none (a node has the announcements of what it added with its own key, of \
                     what it received announced by hash, and of what it fetched from a peer that \
                     had one)"
                ))
            })?;
            a.encode().map_err(|e| NetError::Announce(e.to_string()))?
        };
        self.ask(|reply| Command::Announce { gossip, reply })
            .await?
    }
}
