//! The Kademlia DHT: who has an object. A node publishes a provider record (key = the manifest
//! hash) for every object it holds complete, at start and after each fetch; a fetch that finds
//! no connected peer with the object asks the DHT for providers and dials them.
//!
//! Our own protocol name (`/zdn/kad/1.0.0`) keeps zdn nodes out of the public IPFS DHT. Only
//! provider records are used: value records from others are never stored, and a provider record
//! is stored only when its key is a 32-byte hash. The profile's [`DhtTuning`] decides whether a
//! node serves the DHT (datacenter) or only asks it (field and edge: no inbound DHT traffic, no
//! periodic bootstrap).
//!
//! [`Dht`] is the event loop's part of this: the publication queue (bounded, so a node with many
//! objects does not start a query per object at once) and the provider lookups waiting for their
//! dials.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::num::NonZeroUsize;
use std::sync::Arc;

use libp2p::kad::{self, store::RecordStore};
use libp2p::multiaddr::Protocol;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::{Multiaddr, PeerId, StreamProtocol, Swarm};
use tokio::sync::oneshot;
use zdn_protocol::Hash;

use crate::net::peers::{PeerScores, PeerTable};
use crate::net::profile::DhtTuning;
use crate::net::swarm::behaviour::NodeBehaviour;
use crate::net::swarm::providers::ProviderStore;

/// The DHT's protocol: ours, not the public IPFS one.
pub const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/zdn/kad/1.0.0");

/// The kad configuration a profile stands for.
pub fn kad_config(t: &DhtTuning) -> kad::Config {
    let mut c = kad::Config::new(KAD_PROTOCOL);
    c.set_periodic_bootstrap_interval(t.periodic_bootstrap)
        .set_provider_publication_interval(Some(t.provider_republish))
        .set_provider_record_ttl(Some(t.provider_ttl))
        // Value records are not used: nothing to replicate or re-publish.
        .set_replication_interval(None)
        .set_publication_interval(None)
        // Inbound records come to us as events: provider records are checked and stored, value
        // records dropped.
        .set_record_filtering(kad::StoreInserts::FilterBoth)
        .set_caching(kad::Caching::Disabled)
        .set_query_timeout(t.query_timeout)
        .set_substreams_timeout(t.substream_timeout)
        .set_parallelism(NonZeroUsize::new(t.parallelism).unwrap_or(NonZeroUsize::MIN));
    c
}

/// The kad behaviour for a node with the given settings.
pub fn behaviour(
    local: PeerId,
    t: &DhtTuning,
    server: bool,
    table: Arc<PeerTable>,
) -> kad::Behaviour<ProviderStore> {
    let store = ProviderStore::new(local, table);
    let mut k = kad::Behaviour::with_config(local, store, kad_config(t));
    // Fixed, not automatic: a mode flip changes the advertised protocols, which sends identify
    // pushes, and loopback or NATed nodes would never confirm an external address anyway.
    k.set_mode(Some(if server {
        kad::Mode::Server
    } else {
        kad::Mode::Client
    }));
    k
}

fn key(h: &Hash) -> kad::RecordKey {
    kad::RecordKey::new(h.as_bytes())
}

/// An address without its trailing `/p2p/<id>` (kad keys addresses by peer already).
fn without_peer(addr: &Multiaddr) -> Multiaddr {
    addr.iter()
        .filter(|p| !matches!(p, Protocol::P2p(_)))
        .collect()
}

/// Whether a peer's address is only reachable from its own machine.
pub(crate) fn is_loopback(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| match p {
        Protocol::Ip4(ip) => ip.is_loopback(),
        Protocol::Ip6(ip) => ip.is_loopback(),
        _ => false,
    })
}

pub(crate) type ProvidersReply = oneshot::Sender<Vec<PeerId>>;

/// A provider lookup of a fetch: the providers found, the dials to them under way.
struct Lookup {
    reply: Option<ProvidersReply>,
    providers: Vec<PeerId>,
    dialing: HashSet<PeerId>,
    finished: bool,
}

/// What the event loop keeps for the DHT. All methods are no-ops when the DHT is off.
#[derive(Default)]
pub(crate) struct Dht {
    /// Objects to publish, in order.
    queue: VecDeque<Hash>,
    queued: HashSet<Hash>,
    publishing: HashMap<kad::QueryId, Hash>,
    /// Publications that reached no peer: tried again when a new peer enters the routing table.
    parked: BTreeSet<Hash>,
    max_publishing: usize,
    /// Whether this node announces what it holds: only one that listens can be dialed by those
    /// who find its records (a `zdn fetch` without a running node does not).
    publish: bool,
    lookups: HashMap<kad::QueryId, Lookup>,
}

/// What a kad event means to the program.
pub(crate) enum DhtNews {
    /// A provider record of ours reached at least one peer.
    Provided(Hash),
}

impl Dht {
    pub fn new(max_publishing: usize, publish: bool) -> Self {
        Dht {
            max_publishing: max_publishing.max(1),
            publish,
            ..Default::default()
        }
    }

    /// Publishes a provider record for `hash` (queued; see [`Dht::pump`]).
    pub fn provide(&mut self, swarm: &mut Swarm<NodeBehaviour>, hash: Hash) {
        if self.publish && swarm.behaviour().kad.is_enabled() && self.queued.insert(hash) {
            self.parked.remove(&hash);
            self.queue.push_back(hash);
            self.pump(swarm);
        }
    }

    /// Starts queued publications while the routing table has a peer to send them to.
    fn pump(&mut self, swarm: &mut Swarm<NodeBehaviour>) {
        let Some(k) = swarm.behaviour_mut().kad.as_mut() else {
            return;
        };
        let known = k.kbuckets().map(|b| b.num_entries()).sum::<usize>();
        while known > 0 && self.publishing.len() < self.max_publishing {
            let Some(h) = self.queue.pop_front() else {
                break;
            };
            self.queued.remove(&h);
            // Fails only when the record store is full: that object is not announced.
            if let Ok(id) = k.start_providing(key(&h)) {
                self.publishing.insert(id, h);
            }
        }
    }

    /// A peer given by address (`--peer`, `--bootstrap`, node.toml): a DHT entry point.
    pub fn add_address(
        &mut self,
        swarm: &mut Swarm<NodeBehaviour>,
        peer: PeerId,
        addr: &Multiaddr,
    ) {
        if let Some(k) = swarm.behaviour_mut().kad.as_mut() {
            k.add_address(&peer, without_peer(addr));
        }
    }

    /// Identify told us a peer's protocols and listen addresses: a DHT server goes into the
    /// routing table (a peer that connected to us is not added by kad itself: it does not know
    /// where the peer listens). Loopback addresses count only from a peer on this machine.
    pub fn on_identify(
        &mut self,
        swarm: &mut Swarm<NodeBehaviour>,
        peer: PeerId,
        info: &libp2p::identify::Info,
        local_peer: bool,
    ) {
        if !info.protocols.contains(&KAD_PROTOCOL) {
            return;
        }
        if let Some(k) = swarm.behaviour_mut().kad.as_mut() {
            for a in info
                .listen_addrs
                .iter()
                .filter(|a| local_peer || !is_loopback(a))
                .take(8)
            {
                k.add_address(&peer, without_peer(a));
            }
        }
    }

    /// Starts a provider lookup; `reply` gets the providers this node is connected to at the end.
    pub fn find_providers(
        &mut self,
        swarm: &mut Swarm<NodeBehaviour>,
        hash: Hash,
        reply: ProvidersReply,
    ) {
        let Some(k) = swarm.behaviour_mut().kad.as_mut() else {
            let _ = reply.send(Vec::new());
            return;
        };
        let id = k.get_providers(key(&hash));
        self.lookups.insert(
            id,
            Lookup {
                reply: Some(reply),
                providers: Vec::new(),
                dialing: HashSet::new(),
                finished: false,
            },
        );
    }

    /// A dial ended (connected or failed): lookups waiting for it may answer.
    pub fn on_dial_result(&mut self, swarm: &Swarm<NodeBehaviour>, peer: PeerId) {
        let mut ready = Vec::new();
        for (id, l) in &mut self.lookups {
            if l.dialing.remove(&peer) {
                ready.push(*id);
            }
        }
        for id in ready {
            self.maybe_answer(swarm, id);
        }
    }

    /// Answers a lookup once its query has finished and its dials have ended (or one succeeded:
    /// a dial to a dead address may take minutes, a fetch should not).
    fn maybe_answer(&mut self, swarm: &Swarm<NodeBehaviour>, id: kad::QueryId) {
        let Some(l) = self.lookups.get_mut(&id) else {
            return;
        };
        let connected: Vec<PeerId> = l
            .providers
            .iter()
            .copied()
            .filter(|p| swarm.is_connected(p))
            .collect();
        if l.finished && (l.dialing.is_empty() || !connected.is_empty()) {
            if let Some(r) = l.reply.take() {
                let _ = r.send(connected);
            }
            self.lookups.remove(&id);
        }
    }

    pub fn on_event(
        &mut self,
        swarm: &mut Swarm<NodeBehaviour>,
        scores: &PeerScores,
        ev: kad::Event,
    ) -> Option<DhtNews> {
        match ev {
            kad::Event::OutboundQueryProgressed {
                id, result, step, ..
            } if self.lookups.contains_key(&id) => {
                if let kad::QueryResult::GetProviders(Ok(kad::GetProvidersOk::FoundProviders {
                    providers,
                    ..
                })) = result
                {
                    let local = *swarm.local_peer_id();
                    for p in providers {
                        if p == local || scores.is_banned(&p) {
                            continue;
                        }
                        self.dial_provider(swarm, id, p);
                    }
                }
                if step.last {
                    if let Some(l) = self.lookups.get_mut(&id) {
                        l.finished = true;
                    }
                }
                self.maybe_answer(swarm, id);
                None
            }
            kad::Event::OutboundQueryProgressed {
                id,
                result: kad::QueryResult::StartProviding(_),
                stats,
                ..
            } => {
                let h = self.publishing.remove(&id)?;
                let news = if stats.num_successes() > 0 {
                    Some(DhtNews::Provided(h))
                } else {
                    self.parked.insert(h);
                    None
                };
                self.pump(swarm);
                news
            }
            kad::Event::RoutingUpdated {
                is_new_peer: true, ..
            } => {
                for h in std::mem::take(&mut self.parked) {
                    if self.queued.insert(h) {
                        self.queue.push_back(h);
                    }
                }
                self.pump(swarm);
                None
            }
            kad::Event::InboundRequest {
                request:
                    kad::InboundRequest::AddProvider {
                        record: Some(record),
                    },
            } => {
                // Only manifest hashes are keys here; kad has checked that the record names
                // the peer that sent it. The store applies its caps (see providers.rs).
                if record.key.as_ref().len() == 32 && !scores.is_banned(&record.provider) {
                    if let Some(k) = swarm.behaviour_mut().kad.as_mut() {
                        let _ = k.store_mut().add_provider(record);
                    }
                }
                None
            }
            _ => None,
        }
    }

    /// This node fetched `hash` from `peer`: its provider record, if this node keeps one, is
    /// preferred from now on.
    pub fn verified(&mut self, swarm: &mut Swarm<NodeBehaviour>, hash: Hash, peer: PeerId) {
        if let Some(k) = swarm.behaviour_mut().kad.as_mut() {
            k.store_mut().verified(&key(&hash), &peer);
        }
    }

    /// Dials a provider while its query runs (kad hands the swarm the addresses the query
    /// learned; they are gone once it ends).
    fn dial_provider(&mut self, swarm: &mut Swarm<NodeBehaviour>, id: kad::QueryId, p: PeerId) {
        let Some(l) = self.lookups.get_mut(&id) else {
            return;
        };
        if l.providers.contains(&p) {
            return;
        }
        l.providers.push(p);
        if swarm.is_connected(&p) {
            return;
        }
        let opts = DialOpts::peer_id(p)
            .condition(PeerCondition::DisconnectedAndNotDialing)
            .allocate_new_port()
            .build();
        match swarm.dial(opts) {
            Ok(()) | Err(libp2p::swarm::DialError::DialPeerConditionFalse(_)) => {
                l.dialing.insert(p);
            }
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::Profile;

    #[test]
    fn field_kad_config_has_no_short_periodic_timers() {
        // kad::Config's fields are private; its Debug output shows what was set.
        let c = format!("{:?}", kad_config(&Profile::Field.tuning().dht));
        for want in [
            "periodic_bootstrap_interval: None",
            "record_replication_interval: None",
            "record_publication_interval: None",
            "provider_publication_interval: Some(86400s)",
            "timeout: 120s",
            "record_filtering: FilterBoth",
        ] {
            assert!(c.contains(want), "{want:?} not in {c}");
        }
        assert!(c.contains("/zdn/kad/1.0.0"), "{c}");
        let d = format!("{:?}", kad_config(&Profile::Datacenter.tuning().dht));
        assert!(d.contains("periodic_bootstrap_interval: Some(300s)"), "{d}");
    }

    #[test]
    fn addresses() {
        let id = PeerId::random();
        let a: Multiaddr = format!("/ip4/127.0.0.1/tcp/4801/p2p/{id}").parse().unwrap();
        assert_eq!(without_peer(&a).to_string(), "/ip4/127.0.0.1/tcp/4801");
        assert!(is_loopback(&a));
        let b: Multiaddr = "/ip4/10.0.0.1/tcp/4801".parse().unwrap();
        assert!(!is_loopback(&b));
    }
}
