//! The accept loop of the node's stream servers (the chunk protocol and the paced lane). Every
//! incoming stream needs a place ([`StreamPlaces`]) before a byte of it is read; one without is
//! reset at once. Places are shared fairly: a peer has at most `per_peer`; when all `total` are
//! taken, a stream from a subnet holding fewer places than the subnet holding the most takes the
//! place of that subnet's newest stream, so no crowd of identities — fresh ones are free to make —
//! can keep others out for longer than it takes them to ask. `reserved` more places are only for
//! privileged peers (those this node dialed itself, and the operator's configured peers), which
//! are never evicted.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use libp2p::{PeerId, Stream};
use tokio::sync::watch;
use tokio::task::{AbortHandle, JoinSet};

use crate::net::handle::Traffic;
use crate::net::peers::{PeerClass, PeerTable, Subnet};

use crate::net::streams::Incoming;

/// How many streams a server takes at once.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StreamLimits {
    /// All peers together.
    pub total: usize,
    /// One peer.
    pub per_peer: usize,
    /// More, for privileged peers only.
    pub reserved: usize,
}

#[derive(Debug, Clone, Copy)]
struct Place {
    peer: PeerId,
    subnet: Option<Subnet>,
    reserved: bool,
}

#[derive(Debug, Default)]
struct Book {
    places: HashMap<u64, Place>,
    next: u64,
}

/// The places of one server.
#[derive(Debug)]
pub(crate) struct StreamPlaces {
    limits: StreamLimits,
    book: Mutex<Book>,
}

/// A stream's place; given back when dropped (or when the stream is evicted).
#[derive(Debug)]
pub(crate) struct Admitted {
    id: u64,
    places: Arc<StreamPlaces>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut b = self.places.book.lock().unwrap_or_else(|e| e.into_inner());
        b.places.remove(&self.id);
    }
}

impl StreamPlaces {
    pub fn new(limits: StreamLimits) -> Arc<Self> {
        Arc::new(StreamPlaces {
            limits,
            book: Mutex::default(),
        })
    }

    /// A place for a stream of `peer`, and the place (stream) to evict for it, if one must go.
    pub fn admit(
        self: &Arc<Self>,
        peer: PeerId,
        class: PeerClass,
    ) -> Option<(Admitted, Option<u64>)> {
        let mut b = self.book.lock().unwrap_or_else(|e| e.into_inner());
        let mine = b.places.values().filter(|p| p.peer == peer).count();
        if mine >= self.limits.per_peer {
            return None;
        }
        let reserved_used = b.places.values().filter(|p| p.reserved).count();
        let general_used = b.places.len() - reserved_used;
        let (reserved, evict) = if general_used < self.limits.total {
            (false, None)
        } else if class.privileged && reserved_used < self.limits.reserved {
            (true, None)
        } else {
            (false, Some(victim(&b, class.subnet)?))
        };
        if let Some(v) = evict {
            b.places.remove(&v);
        }
        b.next += 1;
        let id = b.next;
        let place = Place {
            peer,
            subnet: class.subnet,
            reserved,
        };
        b.places.insert(id, place);
        let admitted = Admitted {
            id,
            places: self.clone(),
        };
        Some((admitted, evict))
    }
}

/// The newest unreserved stream of the subnet holding the most general places, if it holds at
/// least two more than `mine` does; else none (the newcomer is refused).
fn victim(b: &Book, mine: Option<Subnet>) -> Option<u64> {
    let mut per: HashMap<Option<Subnet>, (usize, u64)> = HashMap::new();
    for (&id, p) in b.places.iter().filter(|(_, p)| !p.reserved) {
        let e = per.entry(p.subnet).or_insert((0, id));
        e.0 += 1;
        e.1 = e.1.max(id);
    }
    let held = per.get(&mine).map_or(0, |e| e.0);
    let (_, &(most, newest)) = per.iter().max_by_key(|(s, e)| (e.0, **s))?;
    (most >= held + 2).then_some(newest)
}

/// Accepts streams until `stop` changes or the swarm goes away, serving each admitted one in a
/// task of its own with `serve`; on stop, the tasks are aborted and awaited.
pub(crate) async fn accept_loop<F, Fut>(
    mut incoming: Incoming,
    mut stop: watch::Receiver<bool>,
    (limits, table, traffic): (StreamLimits, Arc<PeerTable>, Arc<Traffic>),
    serve: F,
) where
    F: Fn(PeerId, Stream, Admitted) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let places = StreamPlaces::new(limits);
    let mut tasks = JoinSet::new();
    let mut running: HashMap<u64, AbortHandle> = HashMap::new();
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            next = incoming.next() => {
                let Some((peer, stream)) = next else { break };
                // Without a place the stream is dropped, which resets it; the peer may retry.
                let Some((admitted, evict)) = places.admit(peer, table.class(&peer)) else {
                    traffic.streams_refused.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                if let Some(task) = evict.and_then(|v| running.remove(&v)) {
                    traffic.streams_evicted.fetch_add(1, Ordering::Relaxed);
                    task.abort();
                }
                let id = admitted.id;
                running.retain(|_, t| !t.is_finished());
                running.insert(id, tasks.spawn(serve(peer, stream, admitted)));
            }
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    tasks.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(net: u8, privileged: bool) -> PeerClass {
        PeerClass {
            subnet: Some(Subnet::of(std::net::IpAddr::from([10, 0, net, 1]))),
            privileged,
        }
    }

    #[test]
    fn places_are_bounded_per_peer_and_shared_fairly() {
        let a = StreamPlaces::new(StreamLimits {
            total: 4,
            per_peer: 3,
            reserved: 1,
        });
        let (p, q, r, s) = (
            PeerId::random(),
            PeerId::random(),
            PeerId::random(),
            PeerId::random(),
        );
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(a.admit(p, class(1, false)).unwrap());
        }
        assert!(
            a.admit(p, class(1, false)).is_none(),
            "a fourth stream of one peer"
        );
        held.push(a.admit(q, class(1, false)).unwrap());
        // Full: one of subnet 1's newest streams makes room for subnet 2.
        let (_r1, evicted) = a.admit(r, class(2, false)).unwrap();
        assert_eq!(evicted, Some(held[3].0.id));
        // 3 vs 1: room once more, then 2 vs 2: refused.
        let (_r2, evicted) = a.admit(r, class(2, false)).unwrap();
        assert!(evicted.is_some());
        assert!(a.admit(r, class(2, false)).is_none());
        // A privileged peer gets the reserved place, never evicted.
        let (_s1, evicted) = a.admit(s, class(3, true)).unwrap();
        assert_eq!(evicted, None);
        drop(held);
        assert!(
            a.admit(q, class(1, false)).is_some(),
            "places given back are taken again"
        );
    }
}
