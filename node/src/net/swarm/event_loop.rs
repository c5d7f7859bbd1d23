//! The node's event loop: the one task that owns the libp2p `Swarm`. It answers [`Command`]s from
//! handles, validates gossip before anything is forwarded, dials what mDNS finds, and keeps the
//! per-peer facts `zdn peers` shows. [`super::spawn`] builds it.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::dial_opts::DialOpts;
use libp2p::swarm::{ConnectionId, SwarmEvent};
use libp2p::{gossipsub, identify, mdns, ping, Multiaddr, PeerId, Swarm};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use zdn_protocol::manifest;
use zdn_protocol::wire::{Announcement, ANNOUNCE_MAGIC};

use crate::net::handle::{Command, PeerInfo, Traffic};
use crate::net::peers::{Offence, PeerScores};
use crate::net::NetError;
use crate::store::TrustPolicy;

use super::behaviour::{NodeBehaviour, NodeBehaviourEvent, MAX_GOSSIP_LEN};
use super::dht::{Dht, DhtNews};
use super::kept::KeptPeers;
use super::seen::{Seen, SeenAnnouncements};
use super::spawn::NodeEvent;

/// How long an announcement waits for a subscribed peer before the caller is told it failed.
const ANNOUNCE_PATIENCE: Duration = Duration::from_secs(120);
pub(super) const EVENT_QUEUE: usize = 64;
/// Addresses remembered per peer for re-dials, and peers remembered.
const DIALABLE_PER_PEER: usize = 4;
const DIALABLE_PEERS: usize = 4096;
/// Addresses listed per connected peer (one per connection; a peer may open several).
const ADDRS_PER_PEER: usize = 8;

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
    pub(super) scores: Arc<PeerScores>,
    pub(super) traffic: Arc<Traffic>,
    /// Announcements already acted on (a replay is not acted on again).
    pub(super) seen: SeenAnnouncements,
    pub(super) pending_announce: Vec<PendingAnnouncement>,
    pub(super) events: mpsc::Sender<NodeEvent>,
    /// Asks each newly connected peer for what was announced while this node was away.
    pub(super) catchup: Option<crate::net::catchup::CatchUp>,
    /// The configured peers, dialed again whenever they are not connected.
    pub(super) kept: KeptPeers,
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
                _ = retry.tick(), if !self.pending_announce.is_empty() || !self.kept.is_empty() => {
                    self.retry_announcements();
                    self.dial_kept();
                }
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
                    Some(p) => DialOpts::peer_id(p)
                        .addresses(vec![addr.clone()])
                        .allocate_new_port()
                        .build(),
                    None => DialOpts::unknown_peer_id()
                        .address(addr.clone())
                        .allocate_new_port()
                        .build(),
                };
                self.dial(peer, opts, addr.to_string(), reply)
            }
            Command::Redial { peer, reply } => {
                if self.scores.is_banned(&peer) {
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
                    .allocate_new_port()
                    .build();
                self.dial(Some(peer), opts, peer.to_string(), reply)
            }
            Command::IsConnected { peer, reply } => {
                let _ = reply.send(self.swarm.is_connected(&peer));
            }
            Command::Provide { hash } => self.dht.provide(&mut self.swarm, hash),
            Command::FindProviders { hash, reply } => {
                self.dht.find_providers(&mut self.swarm, hash, reply)
            }
            Command::Peers { reply } => {
                let _ = reply.send(self.peer_infos());
            }
            Command::ListenAddrs { reply } => {
                if !self.silent_listeners.is_empty() {
                    self.listen_waiters.push(reply);
                } else {
                    let _ = reply.send(self.listen_addrs.clone());
                }
            }
            Command::Announce { gossip, reply } => self.announce(gossip, reply),
            Command::Ban { peer, reason } => self.ban(peer, reason),
            Command::ProviderVerified { hash, peer } => {
                self.dht.verified(&mut self.swarm, hash, peer)
            }
        }
    }

    /// The connected peers as `zdn peers` shows them. A banned peer that connects again is
    /// disconnected as soon as the connection is up, but it is listed as connected until the close
    /// completes: never a peer.
    fn peer_infos(&self) -> Vec<PeerInfo> {
        self.swarm
            .connected_peers()
            .filter(|p| !self.scores.is_banned(p))
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
                penalty: self.scores.penalty(p),
            })
            .collect()
    }

    /// Publishes `gossip` (a manifest, or a manifest's announcement) on the topic; retried until
    /// a peer subscribes or [`ANNOUNCE_PATIENCE`] passes.
    fn announce(&mut self, gossip: Vec<u8>, reply: oneshot::Sender<Result<(), NetError>>) {
        use crate::net::config::Fault;
        let deadline = Instant::now() + ANNOUNCE_PATIENCE;
        let gossip = match self.fault {
            Some(Fault::BogusAnnouncements) => {
                for i in 0u8..10 {
                    let garbage = blake3::hash(&[i]).as_bytes().repeat(4);
                    let (tx, _) = oneshot::channel();
                    self.pending_announce.push((garbage, deadline, tx));
                }
                let mut broken = gossip;
                if let Some(b) = broken.last_mut() {
                    *b ^= 1;
                }
                broken
            }
            Some(Fault::ForgedAnnouncements) => forged(&gossip).unwrap_or(gossip),
            _ => gossip,
        };
        self.pending_announce.push((gossip, deadline, reply));
        self.retry_announcements();
    }

    /// A peer crossed the ban line: disconnected now; the guard refuses it from now on.
    fn ban(&mut self, peer: PeerId, reason: String) {
        self.traffic.peers_banned.fetch_add(1, Ordering::Relaxed);
        let _ = self.swarm.disconnect_peer_id(peer);
        let _ = self.events.try_send(NodeEvent::Banned { peer, reason });
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
            } => self.on_connected(peer_id, connection_id, &endpoint),
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established: 0,
                ..
            } => {
                self.addrs.remove(&peer_id);
                self.rtts.remove(&peer_id);
                self.kept.lost(&peer_id, Instant::now());
            }
            SwarmEvent::OutgoingConnectionError {
                connection_id,
                peer_id,
                error,
            } => self.on_dial_failed(connection_id, peer_id, &error),
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
                let news = self.dht.on_event(&mut self.swarm, &self.scores, ev);
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
                    if !self.swarm.is_connected(&peer) && !self.scores.is_banned(&peer) {
                        let _ = self.swarm.dial(new_port_dial(peer, addr));
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

    /// A connection is up: dials and those waiting for the peer hear of it; a peer banned while
    /// its handshake ran goes now.
    fn on_connected(
        &mut self,
        peer_id: PeerId,
        connection_id: ConnectionId,
        endpoint: &libp2p::core::ConnectedPoint,
    ) {
        self.kept.connected(&peer_id);
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
        // The guard refuses banned peers; one banned while its handshake ran goes now.
        if self.scores.is_banned(&peer_id) {
            let _ = self.swarm.disconnect_peer_id(peer_id);
            return;
        }
        let addr = endpoint.get_remote_address().clone();
        let list = self.addrs.entry(peer_id).or_default();
        if !list.contains(&addr) && list.len() < ADDRS_PER_PEER {
            list.push(addr);
        }
        if let Some(c) = &mut self.catchup {
            c.on_connected(peer_id);
        }
    }

    /// A dial failed: its caller, and those waiting for the peer if it is not connected otherwise,
    /// hear why.
    /// Dials the configured peers whose next try is due. A banned one is not dialed but looked
    /// at again after the next wait (a ban may end).
    fn dial_kept(&mut self) {
        let now = Instant::now();
        for (peer, addr) in self.kept.due(now) {
            if self.swarm.is_connected(&peer) {
                self.kept.connected(&peer);
            } else if self.scores.is_banned(&peer)
                // A dial that cannot even start counts as failed: tried again after the next wait.
                || self.swarm.dial(new_port_dial(peer, addr)).is_err()
            {
                self.kept.lost(&peer, now);
            }
        }
    }

    fn on_dial_failed(
        &mut self,
        connection_id: ConnectionId,
        peer_id: Option<PeerId>,
        error: &libp2p::swarm::DialError,
    ) {
        if let Some(p) = peer_id {
            if !self.swarm.is_connected(&p) {
                self.kept.lost(&p, Instant::now());
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

    /// Checks an announcement before it may travel further: a manifest that decodes and whose
    /// signature verifies, from a trusted publisher, not seen before. Only that is forwarded and
    /// acted on. What is malformed, wrongly signed or too big is rejected and counted against the
    /// peer that sent it; a valid manifest from a publisher this node does not trust, or one it
    /// has seen (a replay), is ignored without blame — a hub forwards its other publishers'
    /// announcements in normal operation.
    fn on_gossip(&mut self, from: PeerId, id: gossipsub::MessageId, message: gossipsub::Message) {
        let acceptance = if message.data.starts_with(ANNOUNCE_MAGIC) {
            self.on_announcement(from, &message.data)
        } else {
            self.on_gossiped_manifest(from, &message.data)
        };
        self.swarm
            .behaviour_mut()
            .gossipsub
            .report_message_validation_result(&id, &from, acceptance);
    }

    /// An announcement by hash: well-formed, naming a trusted publisher, not seen before. The
    /// program fetches the manifest by hash if it wants the object; the fetch verifies it.
    fn on_announcement(&mut self, from: PeerId, data: &[u8]) -> gossipsub::MessageAcceptance {
        match Announcement::decode(data) {
            Ok(a) if !self.trust.allows(&a.publisher) => gossipsub::MessageAcceptance::Ignore,
            // Announced by hash only when the manifest cannot travel itself.
            Ok(a) if a.manifest_len as usize <= MAX_GOSSIP_LEN => {
                self.reject(from, "a small manifest announced by hash".into())
            }
            // Only its publisher can make it: a claim checked before anything is done with it.
            Ok(a) if a.verify().is_err() => {
                self.reject(from, "an announcement its publisher did not sign".into())
            }
            Ok(a) => match self.seen.check(a.manifest) {
                Seen::Again => gossipsub::MessageAcceptance::Ignore,
                Seen::First => {
                    let _ = self.events.try_send(NodeEvent::AnnouncedByHash {
                        announcement: Box::new(a),
                        from,
                    });
                    gossipsub::MessageAcceptance::Accept
                }
            },
            Err(e) => self.reject(from, e.to_string()),
        }
    }

    /// Counts a malformed gossip message against its sender (banned past the line).
    fn reject(&mut self, from: PeerId, why: String) -> gossipsub::MessageAcceptance {
        if self.scores.penalise(from, Offence::InvalidAnnouncement) {
            self.ban(from, format!("invalid announcements, last: {why}"));
        }
        gossipsub::MessageAcceptance::Reject
    }

    fn on_gossiped_manifest(&mut self, from: PeerId, data: &[u8]) -> gossipsub::MessageAcceptance {
        let verdict = if data.len() > MAX_GOSSIP_LEN {
            Err("over the size limit".to_string())
        } else {
            manifest::decode(data).map_err(|e| e.to_string())
        };
        match verdict {
            Ok(m) if self.trust.check(&m).is_err() => gossipsub::MessageAcceptance::Ignore,
            Ok(m) => match self.seen.check(m.hash()) {
                Seen::Again => gossipsub::MessageAcceptance::Ignore,
                Seen::First => {
                    // A full queue means the program is not keeping up: the announcement is
                    // still forwarded, the program just does not act on it.
                    let _ = self.events.try_send(NodeEvent::Announced {
                        manifest: Box::new(m),
                        from,
                    });
                    gossipsub::MessageAcceptance::Accept
                }
            },
            Err(why) => self.reject(from, why),
        }
    }
}

/// For [`Fault::ForgedAnnouncements`](crate::net::config::Fault): the announcement by hash
/// `gossip` with its manifest hash replaced by a made-up one, a new one each time (gossip drops a
/// message it has seen); its signature is then not the publisher's. `None` for a manifest.
fn forged(gossip: &[u8]) -> Option<Vec<u8>> {
    let mut a = Announcement::decode(gossip).ok()?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    a.manifest =
        zdn_protocol::Hash::of(&[a.manifest.as_bytes(), &nanos.to_le_bytes()[..]].concat());
    a.encode().ok()
}

/// A dial from a fresh local port. Dialing from the listening port (libp2p's default) collides
/// with a connection of the same four addresses still in TIME_WAIT after a restart (the dial fails
/// with "address already in use" for up to a minute); zdn has no use for the listening port as the
/// source (no hole punching).
pub(super) fn new_port_dial(peer: PeerId, addr: Multiaddr) -> DialOpts {
    DialOpts::peer_id(peer)
        .addresses(vec![addr])
        .allocate_new_port()
        .build()
}

/// The peer id at the end of an address (`/p2p/<id>`), if any.
pub(super) fn peer_of(addr: &Multiaddr) -> Option<PeerId> {
    addr.iter().find_map(|p| match p {
        Protocol::P2p(id) => Some(id),
        _ => None,
    })
}
