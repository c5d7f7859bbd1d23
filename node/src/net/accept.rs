//! The accept loop of the node's stream servers (the chunk protocol and the paced lane): every
//! incoming stream needs a place among all the streams being served and among the streams of its
//! peer; one without is reset at once, before a byte is read, so no peer — and no swarm of fresh
//! identities short of the node-wide cap — can hold more than its share.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use libp2p::{PeerId, Stream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use crate::net::streams::Incoming;

/// How many streams a server takes at once.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StreamLimits {
    /// All peers together.
    pub total: usize,
    /// One peer.
    pub per_peer: usize,
}

/// A stream's places; given back when dropped.
#[derive(Debug)]
pub(crate) struct Admitted {
    _total: OwnedSemaphorePermit,
    _peer: OwnedSemaphorePermit,
}

struct Admission {
    limits: StreamLimits,
    total: Arc<Semaphore>,
    peers: Mutex<HashMap<PeerId, Arc<Semaphore>>>,
}

impl Admission {
    fn new(limits: StreamLimits) -> Self {
        Admission {
            limits,
            total: Arc::new(Semaphore::new(limits.total)),
            peers: Mutex::new(HashMap::new()),
        }
    }

    fn admit(&self, peer: PeerId) -> Option<Admitted> {
        let total = self.total.clone().try_acquire_owned().ok()?;
        let peer_sem = {
            let mut map = self.peers.lock().unwrap_or_else(|e| e.into_inner());
            // Forget peers with nothing in flight (their semaphore is only in the map); bounded
            // by the node-wide cap, since each entry kept holds at least one stream.
            if map.len() > self.limits.total {
                map.retain(|_, s| Arc::strong_count(s) > 1);
            }
            map.entry(peer)
                .or_insert_with(|| Arc::new(Semaphore::new(self.limits.per_peer)))
                .clone()
        };
        let peer = peer_sem.try_acquire_owned().ok()?;
        Some(Admitted {
            _total: total,
            _peer: peer,
        })
    }
}

/// Accepts streams until `stop` changes or the swarm goes away, serving each admitted one in a
/// task of its own with `serve`; on stop, the tasks are aborted and awaited.
pub(crate) async fn accept_loop<F, Fut>(
    mut incoming: Incoming,
    mut stop: watch::Receiver<bool>,
    limits: StreamLimits,
    serve: F,
) where
    F: Fn(PeerId, Stream, Admitted) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let admission = Admission::new(limits);
    let mut tasks = JoinSet::new();
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            next = incoming.next() => {
                let Some((peer, stream)) = next else { break };
                // Without a place the stream is dropped, which resets it; the peer may retry.
                let Some(admitted) = admission.admit(peer) else { continue };
                tasks.spawn(serve(peer, stream, admitted));
            }
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    tasks.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_bounded_per_peer_and_in_all_and_given_back() {
        let a = Admission::new(StreamLimits {
            total: 3,
            per_peer: 2,
        });
        let (p, q, r) = (PeerId::random(), PeerId::random(), PeerId::random());
        let p1 = a.admit(p).unwrap();
        let _p2 = a.admit(p).unwrap();
        assert!(a.admit(p).is_none(), "a third stream of one peer");
        let _q1 = a.admit(q).unwrap();
        assert!(a.admit(r).is_none(), "over the node-wide cap");
        drop(p1);
        assert!(a.admit(r).is_some(), "a place given back is taken again");
    }
}
