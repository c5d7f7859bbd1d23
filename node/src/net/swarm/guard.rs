//! [`ConnectionGuard`]: the behaviour that decides which connections the node keeps. Inbound
//! connections are capped per address, per subnet and in all ([`InboundBook`]) — the first two
//! before the handshake; connections this node dials are never refused for room, so a node whose
//! inbound places are all taken still reaches its seeders; a banned peer is refused both ways.
//! It also keeps the [`PeerTable`] the stream servers read, and enters a connection there before
//! its handler exists: a stream the peer opens at once is classed by its subnet like the rest.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use libp2p::core::transport::PortUse;
use libp2p::core::Endpoint;
use libp2p::swarm::behaviour::{ConnectionClosed, DialFailure, ListenFailure};
use libp2p::swarm::{
    dummy, CloseConnection, ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler,
    THandlerInEvent, THandlerOutEvent, ToSwarm,
};
use libp2p::{Multiaddr, PeerId};

use crate::net::handle::Traffic;
use crate::net::peers::{ip_of, PeerScores, PeerTable};

use super::inbound::{InboundBook, InboundLimits};

/// Why a connection to or from a banned peer was refused.
#[derive(Debug, thiserror::Error)]
#[error("peer {0} is banned")]
pub(crate) struct Banned(PeerId);

pub struct ConnectionGuard {
    book: InboundBook,
    table: Arc<PeerTable>,
    scores: Arc<PeerScores>,
    traffic: Arc<Traffic>,
    /// Connections to close to make room for a newcomer.
    close: VecDeque<(PeerId, ConnectionId)>,
    /// Connections entered in the table (peer, dialed by this node), to take out when they end or
    /// another behaviour refuses them.
    entered: HashMap<ConnectionId, (PeerId, bool)>,
    waker: Option<Waker>,
}

impl ConnectionGuard {
    pub fn new(
        limits: InboundLimits,
        table: Arc<PeerTable>,
        scores: Arc<PeerScores>,
        traffic: Arc<Traffic>,
    ) -> Self {
        ConnectionGuard {
            book: InboundBook::new(limits),
            table,
            scores,
            traffic,
            close: VecDeque::new(),
            entered: HashMap::new(),
            waker: None,
        }
    }

    pub fn table(&self) -> Arc<PeerTable> {
        self.table.clone()
    }

    fn refuse(&self, e: impl std::error::Error + Send + Sync + 'static) -> ConnectionDenied {
        self.traffic
            .connections_refused
            .fetch_add(1, Ordering::Relaxed);
        ConnectionDenied::new(e)
    }

    /// Enters `id` in the peer table (once).
    fn enter(&mut self, id: ConnectionId, peer: PeerId, remote: &Multiaddr, dialed: bool) {
        if self.entered.insert(id, (peer, dialed)).is_none() {
            self.table.connected(peer, ip_of(remote), dialed);
        }
    }

    /// Takes `id` out of the peer table, if it was entered.
    fn leave(&mut self, id: ConnectionId) {
        if let Some((peer, dialed)) = self.entered.remove(&id) {
            self.table.closed(peer, dialed);
        }
    }

    fn check_banned(&self, peer: PeerId) -> Result<(), ConnectionDenied> {
        if self.scores.is_banned(&peer) {
            return Err(self.refuse(Banned(peer)));
        }
        Ok(())
    }
}

impl NetworkBehaviour for ConnectionGuard {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = Infallible;

    fn handle_pending_inbound_connection(
        &mut self,
        id: ConnectionId,
        _local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        self.book
            .pending(id, ip_of(remote))
            .map_err(|e| self.refuse(e))
    }

    fn handle_established_inbound_connection(
        &mut self,
        id: ConnectionId,
        peer: PeerId,
        _local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        if let Err(e) = self.check_banned(peer) {
            self.book.gone(id);
            return Err(e);
        }
        let privileged = self.table.is_known(&peer);
        match self.book.established(id, peer, privileged) {
            Ok(evict) => {
                if let Some(v) = evict {
                    self.traffic
                        .connections_evicted
                        .fetch_add(1, Ordering::Relaxed);
                    self.close.push_back(v);
                    if let Some(w) = self.waker.take() {
                        w.wake();
                    }
                }
                self.enter(id, peer, remote, false);
                Ok(dummy::ConnectionHandler)
            }
            Err(e) => Err(self.refuse(e)),
        }
    }

    fn handle_pending_outbound_connection(
        &mut self,
        _id: ConnectionId,
        peer: Option<PeerId>,
        _addresses: &[Multiaddr],
        _role: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        if let Some(p) = peer {
            self.check_banned(p)?;
        }
        Ok(Vec::new())
    }

    fn handle_established_outbound_connection(
        &mut self,
        id: ConnectionId,
        peer: PeerId,
        addr: &Multiaddr,
        _role: Endpoint,
        _port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.check_banned(peer)?;
        self.enter(id, peer, addr, true);
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        match event {
            FromSwarm::ConnectionClosed(ConnectionClosed { connection_id, .. }) => {
                self.book.gone(connection_id);
                self.leave(connection_id);
            }
            // Refused after this behaviour let it in (by another one): it never started.
            FromSwarm::ListenFailure(ListenFailure { connection_id, .. }) => {
                self.book.gone(connection_id);
                self.leave(connection_id);
            }
            FromSwarm::DialFailure(DialFailure { connection_id, .. }) => self.leave(connection_id),
            _ => {}
        }
    }

    fn on_connection_handler_event(
        &mut self,
        _peer: PeerId,
        _id: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        libp2p::core::util::unreachable(event)
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<ToSwarm<Infallible, THandlerInEvent<Self>>> {
        if let Some((peer_id, id)) = self.close.pop_front() {
            return Poll::Ready(ToSwarm::CloseConnection {
                peer_id,
                connection: CloseConnection::One(id),
            });
        }
        self.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}
