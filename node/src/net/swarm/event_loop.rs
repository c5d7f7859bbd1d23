//! The node's event loop: the one task that owns the libp2p `Swarm`. It answers [`Command`]s from
//! handles, validates gossip before anything is forwarded, dials what mDNS finds, and keeps the
//! per-peer facts `zdn peers` shows. [`super::spawn`] builds it.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::time::Duration;

use futures::StreamExt;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::dial_opts::DialOpts;
use libp2p::swarm::{ConnectionId, SwarmEvent};
use libp2p::{gossipsub, identify, mdns, ping, Multiaddr, PeerId, Swarm};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use zdn_protocol::manifest;

use crate::net::handle::{Command, PeerInfo};
use crate::net::NetError;
use crate::store::TrustPolicy;

use super::behaviour::{NodeBehaviour, NodeBehaviourEvent, MAX_GOSSIP_LEN};
use super::dht::{Dht, DhtNews};
use super::spawn::NodeEvent;

/// Invalid announcements after which a peer is disconnected and refused for the node's lifetime.
const MAX_INVALID_ANNOUNCEMENTS: u32 = 3;
/// How long an announcement waits for a subscribed peer before the caller is told it failed.
const ANNOUNCE_PATIENCE: Duration = Duration::from_secs(120);
pub(super) const EVENT_QUEUE: usize = 64;
/// Addresses remembered per peer for re-dials, and peers remembered.
const DIALABLE_PER_PEER: usize = 4;
const DIALABLE_PEERS: usize = 4096;

pub(super) type DialReply = oneshot::Sender<Result<PeerId, NetError>>;
pub(super) type PendingAnnouncement = (Vec<u8>, Instant, oneshot::Sender<Result<(), NetError>>);

pub(super) struct EventLoop {
    pub(super) swarm: Swarm<NodeBehaviour>,
    pub(super) topic: gossipsub::IdentTopic,
    pub(super) trust: TrustPolicy,
    /// Listeners that have not reported an address yet: `listen_addrs` waits for all of them.
    pub(super) silent_listeners: HashSet<libp2p::core::transport::ListenerId>,
    pub(super) listen_addrs: Vec<Multiaddr>,
    pub(super) listen_waiters: Vec<oneshot::Sender<Vec<Multiaddr>>>,
    /// Dials asked for by handles, with what to call them in an error.
    pub(super) pending_dials: HashMap<ConnectionId, (String, DialReply)>,
    /// Dials that found one to the same peer under way: answered when that one ends.
    pub(super) waiting_for_peer: HashMap<PeerId, Vec<(String, DialReply)>>,
    pub(super) dht: Dht,
    /// Addresses this node reached each peer at (for re-dials after a connection is lost).
    pub(super) dialable: HashMap<PeerId, Vec<Multiaddr>>,
    pub(super) rtts: HashMap<PeerId, Duration>,
    pub(super) addrs: HashMap<PeerId, Vec<Multiaddr>>,
    pub(super) invalid: HashMap<PeerId, u32>,
    pub(super) banned: HashSet<PeerId>,
    pub(super) pending_announce: Vec<PendingAnnouncement>,
    pub(super) events: mpsc::Sender<NodeEvent>,
    pub(super) max_peers: usize,
    pub(super) fault: Option<crate::net::config::Fault>,
}

impl EventLoop {
    pub(super) async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        shutdown: impl Future<Output = ()> + Send,
    ) {
        tokio::pin!(shutdown);
        let mut retry = tokio::time::interval(Duration::from_secs(1));
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                cmd = commands.recv() => match cmd {
                    Some(c) => self.on_command(c),
                    None => break,
                },
                ev = self.swarm.select_next_some() => self.on_swarm_event(ev),
                _ = retry.tick(), if !self.pending_announce.is_empty() => self.retry_announcements(),
            }
        }
        // Close connections politely so peers see a clean end rather than a timeout.
        let peers: Vec<PeerId> = self.swarm.connected_peers().copied().collect();
        for p in peers {
            let _ = self.swarm.disconnect_peer_id(p);
        }
    }

    fn on_command(&mut self, c: Command) {
        match c {
            Command::Dial { addr, reply } => {
                let peer = peer_of(&addr);
                if let Some(p) = peer {
                    self.dht.add_address(&mut self.swarm, p, &addr);
                }
                let opts = match peer {
                    Some(p) => DialOpts::peer_id(p).addresses(vec![addr.clone()]).build(),
                    None => DialOpts::unknown_peer_id().address(addr.clone()).build(),
                };
                self.dial(peer, opts, addr.to_string(), reply)
            }
            Command::Redial { peer, reply } => {
                if self.banned.contains(&peer) {
                    let _ = reply.send(Err(NetError::Dial {
                        addr: peer.to_string(),
                        reason: "banned".into(),
                    }));
                    return;
                }
                let addrs = self.dialable.get(&peer).cloned().unwrap_or_default();
                let opts = DialOpts::peer_id(peer)
                    .addresses(addrs)
                    .extend_addresses_through_behaviour()
                    .build();
                self.dial(Some(peer), opts, peer.to_string(), reply)
            }
            Command::IsConnected { peer, reply } => {
                let _ = reply.send(self.swarm.is_connected(&peer));
            }
            Command::IsBanned { peer, reply } => {
                let _ = reply.send(self.banned.contains(&peer));
            }
            Command::Provide { hash } => self.dht.provide(&mut self.swarm, hash),
            Command::FindProviders { hash, reply } => {
                self.dht.find_providers(&mut self.swarm, hash, reply)
            }
            Command::Peers { reply } => {
                // A banned peer that connects again is disconnected as soon as the connection is
                // up, but it is listed as connected until the close completes: never a peer.
                let peers = self
                    .swarm
                    .connected_peers()
                    .filter(|p| !self.banned.contains(p))
                    .map(|p| PeerInfo {
                        peer: p.to_string(),
                        addresses: self
                            .addrs
                            .get(p)
                            .map(|a| a.iter().map(|a| a.to_string()).collect())
                            .unwrap_or_default(),
                        rtt_ms: self
                            .rtts
                            .get(p)
                            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
                    })
                    .collect();
                let _ = reply.send(peers);
            }
            Command::ListenAddrs { reply } => {
                if !self.silent_listeners.is_empty() {
                    self.listen_waiters.push(reply);
                } else {
                    let _ = reply.send(self.listen_addrs.clone());
                }
            }
            Command::Announce { manifest, reply } => {
                if manifest.len() > MAX_GOSSIP_LEN {
                    let _ = reply.send(Err(NetError::Announce(format!(
                        "manifest of {} bytes is over the {MAX_GOSSIP_LEN}-byte gossip limit; peers can still fetch it by hash",
                        manifest.len()
                    ))));
                    return;
                }
                let deadline = Instant::now() + ANNOUNCE_PATIENCE;
                if self.fault == Some(crate::net::config::Fault::BogusAnnouncements) {
                    for i in 0u8..10 {
                        let garbage = blake3::hash(&[i]).as_bytes().repeat(4);
                        let (tx, _) = oneshot::channel();
                        self.pending_announce.push((garbage, deadline, tx));
                    }
                    let mut broken = manifest;
                    if let Some(b) = broken.last_mut() {
                        *b ^= 1;
                    }
                    self.pending_announce.push((broken, deadline, reply));
                } else {
                    self.pending_announce.push((manifest, deadline, reply));
                }
                self.retry_announcements();
            }
        }
    }

    /// Dials (unless already connected to `peer`); `reply` gets the outcome.
    fn dial(&mut self, peer: Option<PeerId>, opts: DialOpts, label: String, reply: DialReply) {
        if let Some(p) = peer {
            if self.swarm.is_connected(&p) {
                let _ = reply.send(Ok(p));
                return;
            }
        }
        let id = opts.connection_id();
        match self.swarm.dial(opts) {
            Ok(()) => {
                self.pending_dials.insert(id, (label, reply));
            }
            Err(libp2p::swarm::DialError::DialPeerConditionFalse(_)) if peer.is_some() => {
                if let Some(p) = peer {
                    self.waiting_for_peer
                        .entry(p)
                        .or_default()
                        .push((label, reply));
                }
            }
            Err(e) => {
                let _ = reply.send(Err(NetError::Dial {
                    addr: label,
                    reason: e.to_string(),
                }));
            }
        }
    }

    /// Remembers where a peer was reached, for re-dials.
    fn remember_dialable(&mut self, peer: PeerId, addr: Multiaddr) {
        if !self.dialable.contains_key(&peer) && self.dialable.len() >= DIALABLE_PEERS {
            return;
        }
        let list = self.dialable.entry(peer).or_default();
        list.retain(|a| a != &addr);
        list.insert(0, addr);
        list.truncate(DIALABLE_PER_PEER);
    }

    fn retry_announcements(&mut self) {
        let now = Instant::now();
        let pending = std::mem::take(&mut self.pending_announce);
        for (data, deadline, reply) in pending {
            match self
                .swarm
                .behaviour_mut()
                .gossipsub
                .publish(self.topic.clone(), data.clone())
            {
                Ok(_) | Err(gossipsub::PublishError::Duplicate) => {
                    let _ = reply.send(Ok(()));
                }
                Err(gossipsub::PublishError::NoPeersSubscribedToTopic) if now < deadline => {
                    self.pending_announce.push((data, deadline, reply));
                }
                Err(e) => {
                    let _ = reply.send(Err(NetError::Announce(e.to_string())));
                }
            }
        }
    }

    /// Once every listener has an address (or has closed), the `listen_addrs` waiters get them.
    fn listener_reported(&mut self, id: libp2p::core::transport::ListenerId) {
        self.silent_listeners.remove(&id);
        if self.silent_listeners.is_empty() {
            for w in self.listen_waiters.drain(..) {
                let _ = w.send(self.listen_addrs.clone());
            }
        }
    }

    fn on_swarm_event(&mut self, ev: SwarmEvent<NodeBehaviourEvent>) {
        match ev {
            SwarmEvent::NewListenAddr {
                address,
                listener_id,
            } => {
                let full = address
                    .clone()
                    .with_p2p(*self.swarm.local_peer_id())
                    .unwrap_or(address);
                self.listen_addrs.push(full);
                self.listener_reported(listener_id);
            }
            // A listener that failed before reporting must not hold the waiters forever.
            SwarmEvent::ListenerClosed { listener_id, .. } => self.listener_reported(listener_id),
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                ..
            } => {
                if let Some((_, reply)) = self.pending_dials.remove(&connection_id) {
                    let _ = reply.send(Ok(peer_id));
                }
                for (_, reply) in self.waiting_for_peer.remove(&peer_id).unwrap_or_default() {
                    let _ = reply.send(Ok(peer_id));
                }
                self.dht.on_dial_result(&self.swarm, peer_id);
                if endpoint.is_dialer() {
                    self.remember_dialable(peer_id, endpoint.get_remote_address().clone());
                }
                let too_many = self.swarm.connected_peers().count() > self.max_peers;
                if self.banned.contains(&peer_id) || too_many {
                    let _ = self.swarm.disconnect_peer_id(peer_id);
                    return;
                }
                let addr = endpoint.get_remote_address().clone();
                let list = self.addrs.entry(peer_id).or_default();
                if !list.contains(&addr) {
                    list.push(addr);
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established: 0,
                ..
            } => {
                self.addrs.remove(&peer_id);
                self.rtts.remove(&peer_id);
            }
            SwarmEvent::OutgoingConnectionError {
                connection_id,
                peer_id,
                error,
            } => {
                if let Some(p) = peer_id {
                    if !self.swarm.is_connected(&p) {
                        for (addr, reply) in self.waiting_for_peer.remove(&p).unwrap_or_default() {
                            let _ = reply.send(Err(NetError::Dial {
                                addr,
                                reason: error.to_string(),
                            }));
                        }
                    }
                    self.dht.on_dial_result(&self.swarm, p);
                }
                if let Some((addr, reply)) = self.pending_dials.remove(&connection_id) {
                    let _ = reply.send(Err(NetError::Dial {
                        addr,
                        reason: error.to_string(),
                    }));
                }
            }
            SwarmEvent::Behaviour(NodeBehaviourEvent::Ping(ping::Event {
                peer,
                result: Ok(rtt),
                ..
            })) => {
                self.rtts.insert(peer, rtt);
            }
            SwarmEvent::Behaviour(NodeBehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) => {
                let local_peer = self
                    .addrs
                    .get(&peer_id)
                    .is_some_and(|a| a.iter().any(crate::net::swarm::dht::is_loopback));
                self.dht
                    .on_identify(&mut self.swarm, peer_id, &info, local_peer);
            }
            SwarmEvent::Behaviour(NodeBehaviourEvent::Kad(ev)) => {
                let news = self.dht.on_event(&mut self.swarm, &self.banned, ev);
                // Only into the first half of the queue: a start-up that publishes thousands of
                // objects must not crowd out an announcement.
                if let Some(DhtNews::Provided(hash)) = news {
                    if self.events.capacity() > EVENT_QUEUE / 2 {
                        let _ = self.events.try_send(NodeEvent::Provided { hash });
                    }
                }
            }
            SwarmEvent::Behaviour(NodeBehaviourEvent::Mdns(mdns::Event::Discovered(found))) => {
                for (peer, addr) in found {
                    if !self.swarm.is_connected(&peer) && !self.banned.contains(&peer) {
                        let _ = self
                            .swarm
                            .dial(DialOpts::peer_id(peer).addresses(vec![addr]).build());
                    }
                }
            }
            SwarmEvent::Behaviour(NodeBehaviourEvent::Gossipsub(gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            })) => self.on_gossip(propagation_source, message_id, message),
            _ => {}
        }
    }

    /// Checks an announcement before it may travel further: a manifest that decodes, whose
    /// signature verifies, from a trusted publisher. Anything else is rejected (not forwarded)
    /// and counted against the peer that sent it.
    fn on_gossip(&mut self, from: PeerId, id: gossipsub::MessageId, message: gossipsub::Message) {
        let verdict = if message.data.len() > MAX_GOSSIP_LEN {
            Err("over the size limit".to_string())
        } else {
            manifest::decode(&message.data)
                .map_err(|e| e.to_string())
                .and_then(|m| self.trust.check(&m).map(|()| m).map_err(|e| e.to_string()))
        };
        let acceptance = match verdict {
            Ok(m) => {
                // A full queue means the program is not keeping up: the announcement is still
                // forwarded, the program just does not act on it.
                let _ = self.events.try_send(NodeEvent::Announced {
                    manifest: Box::new(m),
                    from,
                });
                gossipsub::MessageAcceptance::Accept
            }
            Err(why) => {
                let n = self.invalid.entry(from).or_default();
                *n += 1;
                if *n >= MAX_INVALID_ANNOUNCEMENTS && self.banned.insert(from) {
                    let _ = self.swarm.disconnect_peer_id(from);
                    let _ = self.events.try_send(NodeEvent::Banned {
                        peer: from,
                        reason: format!("{n} invalid announcements, last: {why}"),
                    });
                }
                gossipsub::MessageAcceptance::Reject
            }
        };
        self.swarm
            .behaviour_mut()
            .gossipsub
            .report_message_validation_result(&id, &from, acceptance);
    }
}

/// The peer id at the end of an address (`/p2p/<id>`), if any.
pub(super) fn peer_of(addr: &Multiaddr) -> Option<PeerId> {
    addr.iter().find_map(|p| match p {
        Protocol::P2p(id) => Some(id),
        _ => None,
    })
}
