//! [`Handler`]: one connection's side of [`super::StreamBehaviour`]. Inbound: any of the routed
//! protocols, each negotiated stream handed to its accept loop. Outbound: each open request
//! becomes its own substream request, carrying its reply, so opens on one connection do not wait
//! for each other.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::{ready, Ready};
use std::io;
use std::sync::Arc;
use std::task::{Context, Poll};

use libp2p::core::upgrade::ReadyUpgrade;
use libp2p::core::{InboundUpgrade, UpgradeInfo};
use libp2p::swarm::handler::{
    ConnectionEvent, DialUpgradeError, FullyNegotiatedInbound, FullyNegotiatedOutbound,
};
use libp2p::swarm::{
    ConnectionHandler, ConnectionHandlerEvent, Stream, StreamUpgradeError, SubstreamProtocol,
};
use libp2p::{PeerId, StreamProtocol};
use tokio::sync::oneshot;

use super::{InboundRoutes, OpenRequest, OpenStreamError};

type Reply = oneshot::Sender<Result<Stream, OpenStreamError>>;

pub struct Handler {
    remote: PeerId,
    routes: Arc<InboundRoutes>,
    /// Requests not yet handed to the connection.
    queue: VecDeque<OpenRequest>,
    /// Substream requests under negotiation.
    negotiating: usize,
}

impl Handler {
    pub(super) fn new(remote: PeerId, routes: Arc<InboundRoutes>) -> Self {
        Handler {
            remote,
            routes,
            queue: VecDeque::new(),
            negotiating: 0,
        }
    }
}

/// Accepts a stream of any of the listed protocols and says which.
#[derive(Debug, Clone)]
pub struct AnyOf(Vec<StreamProtocol>);

impl UpgradeInfo for AnyOf {
    type Info = StreamProtocol;
    type InfoIter = std::vec::IntoIter<StreamProtocol>;

    fn protocol_info(&self) -> Self::InfoIter {
        self.0.clone().into_iter()
    }
}

impl InboundUpgrade<Stream> for AnyOf {
    type Output = (Stream, StreamProtocol);
    type Error = Infallible;
    type Future = Ready<Result<Self::Output, Self::Error>>;

    fn upgrade_inbound(self, stream: Stream, protocol: StreamProtocol) -> Self::Future {
        ready(Ok((stream, protocol)))
    }
}

impl ConnectionHandler for Handler {
    type FromBehaviour = OpenRequest;
    type ToBehaviour = Infallible;
    type InboundProtocol = AnyOf;
    type OutboundProtocol = ReadyUpgrade<StreamProtocol>;
    type InboundOpenInfo = ();
    type OutboundOpenInfo = (StreamProtocol, Reply);

    fn listen_protocol(&self) -> SubstreamProtocol<Self::InboundProtocol, ()> {
        SubstreamProtocol::new(AnyOf(self.routes.protocols()), ())
    }

    fn connection_keep_alive(&self) -> bool {
        // Open streams keep the connection alive by themselves; requests on their way too.
        !self.queue.is_empty() || self.negotiating > 0
    }

    fn poll(
        &mut self,
        _: &mut Context<'_>,
    ) -> Poll<
        ConnectionHandlerEvent<Self::OutboundProtocol, Self::OutboundOpenInfo, Self::ToBehaviour>,
    > {
        match self.queue.pop_front() {
            Some(req) => {
                self.negotiating += 1;
                let upgrade = ReadyUpgrade::new(req.protocol.clone());
                Poll::Ready(ConnectionHandlerEvent::OutboundSubstreamRequest {
                    protocol: SubstreamProtocol::new(upgrade, (req.protocol, req.reply)),
                })
            }
            None => Poll::Pending,
        }
    }

    fn on_behaviour_event(&mut self, req: OpenRequest) {
        self.queue.push_back(req);
    }

    fn on_connection_event(
        &mut self,
        event: ConnectionEvent<
            Self::InboundProtocol,
            Self::OutboundProtocol,
            Self::InboundOpenInfo,
            Self::OutboundOpenInfo,
        >,
    ) {
        match event {
            ConnectionEvent::FullyNegotiatedInbound(FullyNegotiatedInbound {
                protocol: (stream, protocol),
                ..
            }) => self.routes.deliver(self.remote, &protocol, stream),
            ConnectionEvent::FullyNegotiatedOutbound(FullyNegotiatedOutbound {
                protocol: stream,
                info: (_, reply),
            }) => {
                self.negotiating = self.negotiating.saturating_sub(1);
                let _ = reply.send(Ok(stream));
            }
            ConnectionEvent::DialUpgradeError(DialUpgradeError {
                info: (protocol, reply),
                error,
            }) => {
                self.negotiating = self.negotiating.saturating_sub(1);
                let error = match error {
                    StreamUpgradeError::NegotiationFailed => {
                        OpenStreamError::UnsupportedProtocol(protocol)
                    }
                    StreamUpgradeError::Timeout => {
                        OpenStreamError::Io(io::Error::from(io::ErrorKind::TimedOut))
                    }
                    StreamUpgradeError::Io(e) => OpenStreamError::Io(e),
                    StreamUpgradeError::Apply(never) => match never {},
                };
                let _ = reply.send(Err(error));
            }
            _ => {}
        }
    }
}
