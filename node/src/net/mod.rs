//! The network: a rust-libp2p node that serves the store's objects and fetches others'.
//!
//! - `swarm/`: [`Node::spawn`] builds the swarm (TCP+Noise+Yamux and QUIC; identify, ping,
//!   gossipsub, mDNS, Kademlia, libp2p-stream), starts the servers and runs the swarm in one
//!   event-loop task; [`NodeHandle`] is how everything else talks to it. The DHT: provider records
//!   per manifest hash, our own protocol name, server or client by profile.
//! - `chunk/`: the chunk protocol (`/zdn/chunk/1`, messages in `zdn_protocol::wire`) on raw
//!   streams, with caps checked before reading and progress timeouts instead of whole-response
//!   deadlines ([`frame`]).
//! - [`fetch()`] drives the sans-IO `SyncScheduler` over real streams and the store; it asks the
//!   DHT for providers when no connected peer has the object, and re-dials a peer lost midway.
//! - `catchup`: a newly connected peer is asked for the signed announcements made while this
//!   node was away (gossip reaches only those connected at the time).
//! - `paced/`: the paced lane (`/zdn/paced/3` + sealed UDP datagrams): a field station, or a node
//!   given its link's rate (`NodeConfig::link_rate`, then a ceiling), has chunks sent to it as
//!   datagrams paced at the rate the sender finds from queueing delay, which keeps a lossy
//!   satellite link full; partly received chunks are kept on disk and resumed; every node serves
//!   it.

mod accept;
mod catchup;
mod chunk;
mod config;
mod error;
mod fetch;
pub mod frame;
mod handle;
mod paced;
mod peers;
mod profile;
mod rate_limit;
mod streams;
mod swarm;

pub use catchup::{ASK_EVERY as CATCHUP_ASK_EVERY, CLOCK_SKEW_SECS as CATCHUP_CLOCK_SKEW_SECS};
pub use chunk::server::{MAX_QUEUED_PER_PEER, MAX_STREAMS};
pub use config::{AutoFetchRule, Fault, NodeConfig};
pub use error::{FetchError, NetError};
pub use fetch::{fetch, FetchOptions, FetchProgress, FetchReport, PeerReport};
pub use handle::{NodeHandle, PeerInfo, Traffic};
pub use paced::lane::PacedLane;
pub use paced::server::{
    DEFAULT_MAX_RATE_BPS as PACED_DEFAULT_MAX_RATE_BPS, MAX_SESSIONS as MAX_PACED_SESSIONS,
    MAX_SESSIONS_PER_PEER as MAX_PACED_SESSIONS_PER_PEER, SILENCE as PACED_SILENCE,
};
pub use paced::session::PacedReport;
pub use peers::score::{BAN_AT, HALF_LIFE as PENALTY_HALF_LIFE};
pub use peers::Offence;
pub use profile::{DhtTuning, Profile, Tuning};
pub use rate_limit::RateLimiter;
pub use streams::{OpenStreamError, StreamControl, INBOUND_QUEUE};
pub use swarm::behaviour::{ANNOUNCE_TOPIC, MAX_GOSSIP_LEN};
pub use swarm::dht::KAD_PROTOCOL;
pub use swarm::inbound::InboundLimits;
pub use swarm::spawn::{Node, NodeEvent};

pub use libp2p::identity::Keypair;
pub use libp2p::{Multiaddr, PeerId};
