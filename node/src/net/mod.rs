//! The network: a rust-libp2p node that serves the store's objects and fetches others' (issue 5).
//!
//! - [`Node::spawn`] builds the swarm (TCP+Noise+Yamux and QUIC; identify, ping, gossipsub, mDNS,
//!   Kademlia, libp2p-stream) and runs it in one event-loop task; [`NodeHandle`] is how everything
//!   else talks to it.
//! - The chunk protocol (`/zdn/chunk/1`, messages in `zdn_protocol::wire`) runs on raw streams,
//!   with caps checked before reading and progress timeouts instead of whole-response deadlines
//!   ([`frame`]).
//! - [`fetch()`] drives the sans-IO `SyncScheduler` over real streams and the store; it asks the
//!   DHT for providers when no connected peer has the object, and re-dials a peer lost midway.
//! - The paced lane (`/zdn/paced/1` + UDP, `zdn_protocol::paced`): a node given its link's rate
//!   (`NodeConfig::link_rate`) has chunks sent to it as datagrams paced at that rate, which keeps a
//!   lossy satellite link full; every node serves it (`paced_server.rs`).
//! - The DHT (`dht.rs`): provider records per manifest hash, our own protocol name, server or
//!   client by profile.

mod behaviour;
mod chunk_pipe;
mod chunk_server;
mod config;
mod dht;
mod error;
mod event_loop;
mod fetch;
mod fetch_chunks;
mod fetch_manifest;
mod fetch_paced;
mod fetch_peers;
pub mod frame;
mod handle;
mod paced_receive;
mod paced_server;
mod profile;
mod rate_limit;
mod redial;

pub use behaviour::{ANNOUNCE_TOPIC, MAX_GOSSIP_LEN};
pub use chunk_server::{MAX_QUEUED_PER_PEER, MAX_STREAMS};
pub use config::{AutoFetchRule, Fault, NodeConfig};
pub use dht::KAD_PROTOCOL;
pub use error::{FetchError, NetError};
pub use event_loop::{Node, NodeEvent};
pub use fetch::{fetch, FetchOptions, FetchProgress, FetchReport, PeerReport};
pub use handle::{NodeHandle, PeerInfo, Traffic};
pub use paced_receive::{PacedLane, PacedReport};
pub use paced_server::{MAX_SESSIONS as MAX_PACED_SESSIONS, SILENCE as PACED_SILENCE};
pub use profile::{DhtTuning, Profile, Tuning};
pub use rate_limit::RateLimiter;

pub use libp2p::identity::Keypair;
pub use libp2p::{Multiaddr, PeerId};
