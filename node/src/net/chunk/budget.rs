//! What the chunk server lets a peer cost it. Requests for manifests and have-bitmaps are counted
//! per peer and per subnet ([`RequestBudget`], token buckets: identities are free, so a crowd of
//! them from one subnet shares one budget); over it, the answer is `Busy`. Response bodies in
//! flight — a chunk or a manifest being written to a peer that may read slowly — are bounded in
//! bytes for the whole node ([`InFlight`]); when the bound is reached, a request is answered
//! `Busy` instead of loading more into memory.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use libp2p::PeerId;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use zdn_protocol::sync::TokenBucket;

use crate::net::peers::Subnet;

/// Manifest and have-bitmap requests per second, and the burst, for one peer and for one subnet.
/// A fetch asks each peer once or twice per object (a soup: once or twice per component).
pub const PEER_REQUESTS: (u64, u64) = (10, 60);
pub const SUBNET_REQUESTS: (u64, u64) = (40, 240);
/// Buckets kept per kind before idle ones are dropped.
const MAX_BUCKETS: usize = 4096;
/// Bytes of response bodies in flight, all peers together.
pub const MAX_IN_FLIGHT: usize = 256 << 20;
/// What a peer over its budget is told to wait.
pub const BUSY_RETRY_MS: u32 = 1_000;

#[derive(Debug)]
struct Buckets<K> {
    rate: (u64, u64),
    map: HashMap<K, TokenBucket>,
}

impl<K: std::hash::Hash + Eq + Copy> Buckets<K> {
    fn take(&mut self, key: K, now: Duration) -> bool {
        if !self.map.contains_key(&key) && self.map.len() >= MAX_BUCKETS {
            // Full ones have not been used for a while: they would be full again anyway.
            let burst = self.rate.1;
            self.map.retain(|_, b| b.available(now) < burst);
        }
        match self.map.entry(key) {
            std::collections::hash_map::Entry::Occupied(mut e) => e.get_mut().try_take(now, 1),
            std::collections::hash_map::Entry::Vacant(v) => {
                match TokenBucket::new(self.rate.0, self.rate.1, now) {
                    Ok(b) => v.insert(b).try_take(now, 1),
                    Err(_) => true,
                }
            }
        }
    }
}

/// Per-peer and per-subnet budgets for cheap requests with costly answers.
#[derive(Debug)]
pub(crate) struct RequestBudget {
    start: Instant,
    peers: Mutex<Buckets<PeerId>>,
    subnets: Mutex<Buckets<Subnet>>,
}

impl Default for RequestBudget {
    fn default() -> Self {
        RequestBudget {
            start: Instant::now(),
            peers: Mutex::new(Buckets {
                rate: PEER_REQUESTS,
                map: HashMap::new(),
            }),
            subnets: Mutex::new(Buckets {
                rate: SUBNET_REQUESTS,
                map: HashMap::new(),
            }),
        }
    }
}

impl RequestBudget {
    /// Takes one request from the peer's budget and its subnet's; `false` = over budget.
    pub fn take(&self, peer: PeerId, subnet: Option<Subnet>) -> bool {
        let now = self.start.elapsed();
        let peer_ok = self
            .peers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take(peer, now);
        peer_ok
            && subnet.is_none_or(|s| {
                self.subnets
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .take(s, now)
            })
    }
}

/// The node-wide bound on response bytes in flight.
#[derive(Debug, Clone)]
pub(crate) struct InFlight(Arc<Semaphore>);

impl Default for InFlight {
    fn default() -> Self {
        InFlight(Arc::new(Semaphore::new(MAX_IN_FLIGHT >> 10)))
    }
}

impl InFlight {
    /// A hold on `bytes` of the budget until dropped; `None` when it is spent.
    pub fn hold(&self, bytes: usize) -> Option<OwnedSemaphorePermit> {
        let kib = u32::try_from(bytes.div_ceil(1024)).ok()?;
        self.0.clone().try_acquire_many_owned(kib.max(1)).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_crowd_of_identities_shares_its_subnets_budget() {
        let b = RequestBudget::default();
        let net = Some(Subnet::of("10.0.0.1".parse().unwrap()));
        let one = PeerId::random();
        let mut granted = 0;
        for _ in 0..1000 {
            granted += u64::from(b.take(one, net));
        }
        assert!(granted <= PEER_REQUESTS.1 + 1, "one peer: {granted}");
        let mut crowd = 0;
        for _ in 0..1000 {
            crowd += u64::from(b.take(PeerId::random(), net));
        }
        assert!(
            crowd + granted <= SUBNET_REQUESTS.1 + 2,
            "a crowd of identities in one subnet: {crowd}"
        );
        assert!(b.take(
            PeerId::random(),
            Some(Subnet::of("10.0.1.1".parse().unwrap()))
        ));
    }

    #[test]
    fn bytes_in_flight_are_bounded() {
        let f = InFlight::default();
        let a = f.hold(MAX_IN_FLIGHT - 1024).unwrap();
        assert!(f.hold(4096).is_none());
        drop(a);
        assert!(f.hold(4096).is_some());
    }
}
