//! [`NodeConfig`]: everything a node needs to start.

use libp2p::{identity::Keypair, Multiaddr};
use zdn_protocol::glob::Glob;

use crate::store::TrustPolicy;

use crate::net::profile::Profile;
use crate::net::swarm::inbound::InboundLimits;

/// Fault injection for tests of peer misbehaviour (hidden from `--help`): the node serves bad
/// data on purpose so the other side's defences can be tested with real processes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Flip a byte in every chunk served.
    CorruptChunks,
    /// Send half of every chunk, then stall forever.
    StallChunks,
    /// Instead of each announcement, gossip a burst of invalid ones (garbage, and the manifest with
    /// its signature broken).
    BogusAnnouncements,
    /// Instead of a signed announcement by hash, gossip one that claims the same publisher for a
    /// made-up manifest hash, a new one each time (its signature then is not the publisher's);
    /// and answer a request for an announcement with one whose name was changed after signing.
    ForgedAnnouncements,
}

impl std::str::FromStr for Fault {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "corrupt-chunks" => Ok(Fault::CorruptChunks),
            "stall-chunks" => Ok(Fault::StallChunks),
            "bogus-announcements" => Ok(Fault::BogusAnnouncements),
            "forged-announcements" => Ok(Fault::ForgedAnnouncements),
            _ => Err(format!("unknown fault {s:?}")),
        }
    }
}

/// Start new deltas announced by gossip automatically when the publisher is trusted, the name
/// matches and the base is in the store.
#[derive(Clone, Debug)]
pub struct AutoFetchRule {
    /// Publisher key; `None` = any trusted publisher.
    pub publisher: Option<[u8; 32]>,
    pub name: Glob,
}

#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub keypair: Keypair,
    pub listen: Vec<Multiaddr>,
    pub profile: Profile,
    /// `None` = the profile's default.
    pub mdns: Option<bool>,
    /// Which publishers' manifests this node accepts and forwards.
    pub trust: TrustPolicy,
    /// Peers to connect to at start (and to fetch from); those with a `/p2p/` id are also DHT
    /// entry points.
    pub peers: Vec<Multiaddr>,
    /// DHT entry points (`/p2p/` id required): added to the routing table and dialed at start.
    pub bootstrap: Vec<Multiaddr>,
    /// Run Kademlia (provider records, lookups).
    pub dht: bool,
    /// Addresses others can reach this node at (a public IP, a port forward): told to peers and
    /// put in its DHT provider records.
    pub external_addresses: Vec<Multiaddr>,
    /// Bytes per second, whole node, each direction.
    pub max_upload_rate: Option<u64>,
    pub max_download_rate: Option<u64>,
    /// The rate of this node's own link as stated by its operator (bytes per second, IP bytes):
    /// the most the paced lane asks for, shared by the fetches running at once, and where a
    /// session starts. The lane finds the rate actually available below it (see
    /// `zdn_protocol::paced`). Setting it turns the lane on for any profile.
    pub link_rate: Option<u64>,
    /// Where the lane keeps what arrived of chunks not yet complete (across outages, restarts and
    /// kills): a directory beside the store. `None`: kept in memory for one session only.
    pub partial_dir: Option<std::path::PathBuf>,
    pub auto_fetch: Vec<AutoFetchRule>,
    /// Ask each newly connected peer for the signed announcements made while this node was away
    /// (`crate::net::catchup`). Off in a node started for one fetch.
    pub catch_up: bool,
    /// Caps on inbound connections (connections this node dials are never refused for room).
    pub inbound: InboundLimits,
    pub fault: Option<Fault>,
}

impl NodeConfig {
    /// Whether fetches use the paced lane: when the link's rate is stated, and on a field station
    /// without it (the lane then finds the link's rate itself).
    pub fn lane_on(&self) -> bool {
        self.link_rate.is_some() || self.profile == Profile::Field
    }

    pub fn new(keypair: Keypair, profile: Profile) -> Self {
        NodeConfig {
            keypair,
            listen: Vec::new(),
            profile,
            mdns: None,
            trust: TrustPolicy::default(),
            peers: Vec::new(),
            bootstrap: Vec::new(),
            dht: true,
            external_addresses: Vec::new(),
            max_upload_rate: None,
            max_download_rate: None,
            link_rate: None,
            partial_dir: None,
            auto_fetch: Vec::new(),
            catch_up: false,
            inbound: InboundLimits::default(),
            fault: None,
        }
    }
}
