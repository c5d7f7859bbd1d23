//! The libp2p behaviours a zdn node runs, combined, and how a profile configures them.

use libp2p::kad;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::NetworkBehaviour;
use libp2p::{gossipsub, identify, identity, mdns, ping};

use crate::net::profile::Tuning;
use crate::net::NetError;

use super::guard::ConnectionGuard;
use super::providers::ProviderStore;

/// Gossip topic for signed manifests of new objects.
pub const ANNOUNCE_TOPIC: &str = "/zdn/announce/1";
/// Identify protocol version string.
pub const IDENTIFY_VERSION: &str = "/zdn/1";
/// Largest gossip message: a signed manifest of a delta (tensor index + chunk list) fits easily;
/// a base model's manifest may not, and is then not gossiped (peers fetch it by hash).
pub const MAX_GOSSIP_LEN: usize = 256 * 1024;

#[derive(NetworkBehaviour)]
pub struct NodeBehaviour {
    /// First: it decides whether a connection is kept before any other behaviour sees it.
    pub guard: ConnectionGuard,
    pub identify: identify::Behaviour,
    pub ping: ping::Behaviour,
    pub gossipsub: gossipsub::Behaviour,
    pub mdns: Toggle<mdns::tokio::Behaviour>,
    pub kad: Toggle<kad::Behaviour<ProviderStore>>,
    pub stream: crate::net::streams::StreamBehaviour,
}

impl std::fmt::Debug for NodeBehaviour {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeBehaviour").finish_non_exhaustive()
    }
}

impl NodeBehaviour {
    /// `dht`: `None` = no Kademlia; `Some(server)` = Kademlia in server or client mode.
    pub fn new(
        key: &identity::Keypair,
        guard: ConnectionGuard,
        t: &Tuning,
        mdns_on: bool,
        dht: Option<bool>,
        stream: crate::net::streams::StreamBehaviour,
    ) -> Result<Self, NetError> {
        let identify = identify::Behaviour::new(
            identify::Config::new(IDENTIFY_VERSION.into(), key.public())
                .with_interval(t.identify_interval)
                // Listen addresses are sent once per connection, not pushed on every change.
                .with_push_listen_addr_updates(false),
        );
        let ping = ping::Behaviour::new(
            ping::Config::new()
                .with_interval(t.ping_interval)
                .with_timeout(t.ping_timeout),
        );
        let gossip_config = gossipsub::ConfigBuilder::default()
            .heartbeat_interval(t.gossip_heartbeat)
            .mesh_n(t.mesh_n)
            .mesh_n_low(t.mesh_n_low)
            .mesh_n_high(t.mesh_n_high)
            .mesh_outbound_min(t.mesh_outbound_min)
            .gossip_lazy(t.gossip_lazy)
            .max_transmit_size(MAX_GOSSIP_LEN + 1024)
            // Anonymous messages (the manifest inside is what is signed), deduplicated by content.
            .validation_mode(gossipsub::ValidationMode::Anonymous)
            .message_id_fn(|m: &gossipsub::Message| {
                gossipsub::MessageId::from(blake3::hash(&m.data).as_bytes().to_vec())
            })
            // Nothing is forwarded before the node has checked the signature and the publisher.
            .validate_messages()
            .build()
            .map_err(|e| NetError::Config(format!("gossipsub: {e}")))?;
        let gossipsub =
            gossipsub::Behaviour::new(gossipsub::MessageAuthenticity::Anonymous, gossip_config)
                .map_err(|e| NetError::Config(format!("gossipsub: {e}")))?;
        let mdns = if mdns_on {
            Some(
                mdns::tokio::Behaviour::new(mdns::Config::default(), key.public().to_peer_id())
                    .map_err(|e| NetError::Config(format!("mdns: {e}")))?,
            )
        } else {
            None
        };
        let guard_table = guard.table();
        Ok(NodeBehaviour {
            guard,
            identify,
            ping,
            gossipsub,
            mdns: mdns.into(),
            kad: dht
                .map(|server| {
                    let local = key.public().to_peer_id();
                    crate::net::swarm::dht::behaviour(local, &t.dht, server, guard_table)
                })
                .into(),
            stream,
        })
    }
}
