//! [`StreamBehaviour`]: gives every connection a [`Handler`] and routes open requests to a
//! connection of their peer.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use libp2p::core::transport::PortUse;
use libp2p::core::Endpoint;
use libp2p::swarm::behaviour::ConnectionEstablished;
use libp2p::swarm::{
    ConnectionClosed, ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, NotifyHandler,
    THandler, THandlerInEvent, THandlerOutEvent, ToSwarm,
};
use libp2p::{Multiaddr, PeerId};
use tokio::sync::mpsc;

use super::handler::Handler;
use super::{InboundRoutes, OpenRequest, OpenStreamError};

pub struct StreamBehaviour {
    routes: Arc<InboundRoutes>,
    requests: mpsc::Receiver<OpenRequest>,
    /// Open connections per peer.
    connections: HashMap<PeerId, usize>,
}

impl std::fmt::Debug for StreamBehaviour {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamBehaviour").finish_non_exhaustive()
    }
}

impl StreamBehaviour {
    pub(super) fn new(routes: Arc<InboundRoutes>, requests: mpsc::Receiver<OpenRequest>) -> Self {
        StreamBehaviour {
            routes,
            requests,
            connections: HashMap::new(),
        }
    }
}

impl NetworkBehaviour for StreamBehaviour {
    type ConnectionHandler = Handler;
    type ToSwarm = Infallible;

    fn handle_established_inbound_connection(
        &mut self,
        _: ConnectionId,
        peer: PeerId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(Handler::new(peer, self.routes.clone()))
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        peer: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(Handler::new(peer, self.routes.clone()))
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        match event {
            FromSwarm::ConnectionEstablished(ConnectionEstablished { peer_id, .. }) => {
                *self.connections.entry(peer_id).or_default() += 1;
            }
            FromSwarm::ConnectionClosed(ConnectionClosed { peer_id, .. }) => {
                if let Some(n) = self.connections.get_mut(&peer_id) {
                    *n -= 1;
                    if *n == 0 {
                        self.connections.remove(&peer_id);
                    }
                }
            }
            _ => {}
        }
    }

    fn on_connection_handler_event(
        &mut self,
        _: PeerId,
        _: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {}
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        while let Poll::Ready(Some(req)) = self.requests.poll_recv(cx) {
            if self.connections.contains_key(&req.peer) {
                return Poll::Ready(ToSwarm::NotifyHandler {
                    peer_id: req.peer,
                    handler: NotifyHandler::Any,
                    event: req,
                });
            }
            let _ = req.reply.send(Err(OpenStreamError::NotConnected));
        }
        Poll::Pending
    }
}
