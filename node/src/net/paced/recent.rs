//! [`RecentLinks`]: the link to each receiver as its last lane session found it (rate and round
//! trip), kept a short while. The next session to the same peer — the next 64 MiB of a large
//! object, asked for while the last one ends — starts at that rate at once instead of finding it
//! again (a first burst, a round trip waiting for its measure, a climb). Keyed by the peer's
//! authenticated identity, filled only by sessions that reached an address which proved it
//! receives, and bounded: a peer gets no more than its own recent sessions showed its link takes.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use libp2p::PeerId;

/// How long a found link is used for the next session.
const FRESH: Duration = Duration::from_secs(30);
/// Peers remembered at most (the stale ones go first; past it, nothing new is noted).
const MAX_PEERS: usize = 1024;

/// Each peer's link as last found: when, bits per second, smoothed round trip.
#[derive(Debug, Default)]
pub(crate) struct RecentLinks {
    links: Mutex<HashMap<PeerId, (Instant, u64, Duration)>>,
}

impl RecentLinks {
    /// `peer`'s link is `(rate_bps, srtt)` now.
    pub fn note(&self, peer: PeerId, (rate_bps, srtt): (u64, Duration)) {
        let Ok(mut links) = self.links.lock() else {
            return;
        };
        if links.len() >= MAX_PEERS && !links.contains_key(&peer) {
            links.retain(|_, (at, _, _)| at.elapsed() < FRESH);
            if links.len() >= MAX_PEERS {
                return;
            }
        }
        links.insert(peer, (Instant::now(), rate_bps, srtt));
    }

    /// `peer`'s link as found within the last [`FRESH`], if it was.
    pub fn recent(&self, peer: &PeerId) -> Option<(u64, Duration)> {
        let links = self.links.lock().ok()?;
        let &(at, rate, srtt) = links.get(peer)?;
        (at.elapsed() < FRESH).then_some((rate, srtt))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_a_peer_briefly_and_a_bounded_number_of_peers() {
        let r = RecentLinks::default();
        let a = PeerId::random();
        assert_eq!(r.recent(&a), None);
        r.note(a, (10_000_000, Duration::from_millis(1400)));
        assert_eq!(
            r.recent(&a),
            Some((10_000_000, Duration::from_millis(1400)))
        );
        // Stale: not used.
        if let (Ok(mut l), Some(then)) = (r.links.lock(), Instant::now().checked_sub(FRESH)) {
            if let Some(e) = l.get_mut(&a) {
                e.0 = then;
            }
        }
        assert_eq!(r.recent(&a), None);
        // Full of fresh peers: a new one is not noted; stale ones make room.
        for _ in 0..MAX_PEERS {
            r.note(PeerId::random(), (1, Duration::ZERO));
        }
        let b = PeerId::random();
        r.note(b, (5, Duration::ZERO));
        assert_eq!(r.links.lock().map(|l| l.len()).unwrap_or(0), MAX_PEERS);
        assert_eq!(r.recent(&b), None);
    }
}
