//! [`Slots`]: the sessions a node serves at once, all peers together and per peer. A session whose
//! receiver has gone quiet (an outage: the sender stopped sending and waits for a probe) or whose
//! stream broke (parked) still holds its slot — it resumes the moment its receiver is heard — but a
//! new request that finds no slot free ends the one idle longest (the same peer's first) instead of
//! being turned away.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use libp2p::PeerId;
use tokio::time::Instant;

/// One session's place, as the registry sees it.
#[derive(Debug, Default)]
pub(crate) struct SlotState {
    /// Set when a new request took this slot: the session ends at its next turn.
    pub evicted: AtomicBool,
    /// Since when the session has sent nothing for want of its receiver (`None`: active).
    idle_since: Mutex<Option<Instant>>,
}

impl SlotState {
    pub fn set_idle(&self, idle: bool) {
        let mut s = self.idle_since.lock().unwrap_or_else(|e| e.into_inner());
        match (idle, *s) {
            (true, None) => *s = Some(Instant::now()),
            (false, Some(_)) => *s = None,
            _ => {}
        }
    }

    fn idle_since(&self) -> Option<Instant> {
        *self.idle_since.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[derive(Default)]
struct Registry {
    held: Vec<(PeerId, Arc<SlotState>)>,
}

impl Registry {
    fn of(&self, peer: &PeerId) -> usize {
        self.held.iter().filter(|(p, _)| p == peer).count()
    }

    /// Ends the session idle longest among those `which` picks; whether one was.
    fn evict(&mut self, which: impl Fn(&PeerId) -> bool) -> bool {
        let oldest = self
            .held
            .iter()
            .enumerate()
            .filter(|(_, (p, _))| which(p))
            .filter_map(|(i, (_, s))| Some((i, s.idle_since()?)))
            .min_by_key(|&(_, since)| since);
        let Some((i, _)) = oldest else {
            return false;
        };
        let (_, s) = self.held.swap_remove(i);
        s.evicted.store(true, Ordering::Relaxed);
        true
    }
}

/// The sessions running, shared by the server's tasks.
#[derive(Clone, Default)]
pub(crate) struct Slots {
    inner: Arc<Mutex<Registry>>,
    total: usize,
    per_peer: usize,
}

/// A session's slot; given back when dropped.
pub(crate) struct Slot {
    slots: Slots,
    pub state: Arc<SlotState>,
}

impl Slots {
    pub fn new(total: usize, per_peer: usize) -> Self {
        Slots {
            inner: Arc::default(),
            total,
            per_peer,
        }
    }

    /// A slot for a session of `peer`: free, or taken from an idle session (that peer's own first
    /// when it is the peer's limit that is reached); `None` when every session is active.
    pub fn take(&self, peer: PeerId) -> Option<Slot> {
        let mut r = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if r.of(&peer) >= self.per_peer && !r.evict(|p| *p == peer) {
            return None;
        }
        if r.held.len() >= self.total && !r.evict(|_| true) {
            return None;
        }
        let state = Arc::new(SlotState::default());
        r.held.push((peer, state.clone()));
        Some(Slot {
            slots: self.clone(),
            state,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut r = self.slots.inner.lock().unwrap_or_else(|e| e.into_inner());
        r.held.retain(|(_, s)| !Arc::ptr_eq(s, &self.state));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn limits_hold_and_idle_sessions_give_way() {
        let slots = Slots::new(3, 2);
        let (a, b) = (PeerId::random(), PeerId::random());
        let a1 = slots.take(a).unwrap();
        let a2 = slots.take(a).unwrap();
        // A's limit: no third while both are active.
        assert!(slots.take(a).is_none());
        // One of A's goes idle: A's new request takes its place.
        a1.state.set_idle(true);
        let a3 = slots.take(a).unwrap();
        assert!(a1.state.evicted.load(Ordering::Relaxed));
        assert!(!a2.state.evicted.load(Ordering::Relaxed));
        drop(a1);
        let b1 = slots.take(b).unwrap();
        // Full (a2, a3, b1), all active.
        assert!(slots.take(b).is_none());
        a2.state.set_idle(true);
        let _b2 = slots.take(b).unwrap();
        assert!(a2.state.evicted.load(Ordering::Relaxed));
        drop((a2, a3, b1));
        // An active-again session is not evicted.
        let c = slots.take(a).unwrap();
        c.state.set_idle(true);
        c.state.set_idle(false);
        let _d = slots.take(a).unwrap();
        // Full (b2, c, d), all active: nothing given way.
        assert!(slots.take(b).is_none());
        assert!(!c.state.evicted.load(Ordering::Relaxed));
    }
}
