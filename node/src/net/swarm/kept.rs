//! [`KeptPeers`]: a serving node keeps the peers it was configured with (`--peer …/p2p/<id>`)
//! connected. A field station's hub is where gossip and the catch-up reach it from; dialed once at
//! start, a station that boots while its satellite link is still down, or whose connection dies
//! in an outage, would hear of nothing until it was restarted. So each configured peer that is
//! not connected is dialed again with the re-dial's back-off (the profile's first wait, doubling
//! to its maximum: at most one dial a minute on a field station), from the first wait again once
//! it is connected. A banned peer is not dialed while banned (the event loop looks again after
//! each wait). Addresses without a peer id are dialed once at start only: which connection is
//! theirs cannot be told.

use std::collections::HashMap;

use libp2p::{Multiaddr, PeerId};
use tokio::time::Instant;

use crate::net::fetch::redial::Backoff;
use crate::net::profile::Tuning;

use super::event_loop::peer_of;

#[derive(Debug)]
struct Kept {
    addr: Multiaddr,
    backoff: Backoff,
    /// When to dial next; `None` while connected or while a dial is under way.
    next_try: Option<Instant>,
    connected: bool,
}

/// The configured peers and when each is dialed next.
#[derive(Debug, Default)]
pub(crate) struct KeptPeers {
    peers: HashMap<PeerId, Kept>,
}

impl KeptPeers {
    /// The peers of `addrs` that name a peer id (the first address of each), as dialed at start.
    pub fn new(addrs: &[Multiaddr], tuning: &Tuning) -> Self {
        let mut peers = HashMap::new();
        for a in addrs {
            let Some(p) = peer_of(a) else {
                continue;
            };
            peers.entry(p).or_insert_with(|| Kept {
                addr: a.clone(),
                backoff: Backoff::new(tuning),
                next_try: None,
                connected: false,
            });
        }
        KeptPeers { peers }
    }

    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// A connection to `peer` is up.
    pub fn connected(&mut self, peer: &PeerId) {
        if let Some(k) = self.peers.get_mut(peer) {
            k.connected = true;
            k.next_try = None;
            k.backoff.reset();
        }
    }

    /// The last connection to `peer` closed, or a dial to it failed while it had none: it is
    /// dialed again after the next wait (unless a try is already due).
    pub fn lost(&mut self, peer: &PeerId, now: Instant) {
        if let Some(k) = self.peers.get_mut(peer) {
            k.connected = false;
            if k.next_try.is_none() {
                k.next_try = Some(now + k.backoff.next_wait());
            }
        }
    }

    /// The peers to dial now: each is then waited for (its dial's success or failure).
    pub fn due(&mut self, now: Instant) -> Vec<(PeerId, Multiaddr)> {
        let mut out = Vec::new();
        for (p, k) in &mut self.peers {
            if !k.connected && k.next_try.is_some_and(|t| t <= now) {
                k.next_try = None;
                out.push((*p, k.addr.clone()));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::net::Profile;
    use std::time::Duration;

    fn addr(p: &PeerId) -> Multiaddr {
        format!("/ip4/10.0.0.1/tcp/4801/p2p/{p}").parse().unwrap()
    }

    #[test]
    fn a_lost_peer_is_dialed_again_with_growing_waits_until_it_is_back() {
        let t = Profile::Field.tuning();
        let (p, q) = (PeerId::random(), PeerId::random());
        let without_id: Multiaddr = "/ip4/10.0.0.2/tcp/4801".parse().unwrap();
        let mut k = KeptPeers::new(&[addr(&p), without_id, addr(&p), addr(&q)], &t);
        assert_eq!(k.peers.len(), 2, "one entry per peer id; none without one");
        let t0 = Instant::now();
        // Dialed at start: nothing due until a dial fails.
        assert!(k.due(t0 + Duration::from_secs(3600)).is_empty());
        k.lost(&p, t0);
        let first = t.redial_first_wait;
        assert!(k.due(t0 + first - Duration::from_millis(1)).is_empty());
        assert_eq!(k.due(t0 + first), [(p, addr(&p))]);
        assert!(
            k.due(t0 + first).is_empty(),
            "waited for while it is dialed"
        );
        // That dial failed: the next wait is twice as long.
        let t1 = t0 + first;
        k.lost(&p, t1);
        assert!(k.due(t1 + first).is_empty());
        assert_eq!(k.due(t1 + 2 * first).len(), 1);
        // Never more than the profile's longest wait.
        let mut now = t1 + 2 * first;
        for _ in 0..20 {
            k.lost(&p, now);
            now += t.redial_max_wait;
            assert_eq!(k.due(now).len(), 1);
        }
        // Connected: nothing due; lost again: from the first wait.
        k.connected(&p);
        assert!(k.due(now + Duration::from_secs(3600)).is_empty());
        k.lost(&p, now);
        assert_eq!(k.due(now + first).len(), 1);
        // A peer not configured is not kept.
        let stranger = PeerId::random();
        k.lost(&stranger, now);
        assert!(k
            .due(now + Duration::from_secs(3600))
            .iter()
            .all(|(x, _)| *x != stranger));
    }
}
