//! [`Redialer`]: brings back a peer whose connection died during a transfer. A satellite link
//! drops for seconds to minutes, and a seeder may restart; when that peer is the only one with
//! the object, failing over is not enough. Each lost peer gets a task that waits, dials it again
//! at the addresses it was reached at (doubling the wait, a bounded number of tries: a failed
//! dial costs bytes on a metered link), and asks what it holds; the transfer adds it back then.
//!
//! A peer is re-dialed again after a later loss only if it delivered a chunk in between, so a
//! peer that accepts connections but never serves cannot keep a transfer alive forever.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use libp2p::PeerId;
use tokio::task::JoinSet;
use zdn_protocol::wire::{ChunkBitmap, Request, Response};
use zdn_protocol::Hash;

use crate::net::fetch::peers::ask;
use crate::net::handle::NodeHandle;
use crate::net::profile::Tuning;

/// A re-dial's outcome: the peer and, if it came back, what it holds.
pub(super) type Back = (PeerId, Option<ChunkBitmap>);

#[derive(Debug)]
pub(super) struct Redialer {
    node: NodeHandle,
    object: Hash,
    have_max: usize,
    tasks: JoinSet<Back>,
    /// Peers being re-dialed, by their task.
    pending: HashMap<tokio::task::Id, PeerId>,
    /// Times each peer came back.
    reconnects: HashMap<PeerId, u32>,
    /// Peers lost without delivering anything since they last came back: not re-dialed again.
    exhausted: HashSet<PeerId>,
}

impl Redialer {
    pub fn new(node: NodeHandle, object: Hash, have_max: usize) -> Self {
        Redialer {
            node,
            object,
            have_max,
            tasks: JoinSet::new(),
            pending: HashMap::new(),
            reconnects: HashMap::new(),
            exhausted: HashSet::new(),
        }
    }

    /// `peer` was lost; `delivered` = it sent a chunk since it (last) joined this transfer.
    /// Returns whether a re-dial started.
    pub fn lost(&mut self, peer: PeerId, delivered: bool) -> bool {
        if self.is_pending(&peer) {
            return false;
        }
        let came_back = self.reconnects.contains_key(&peer);
        if came_back && !delivered {
            self.exhausted.insert(peer);
        }
        if self.exhausted.contains(&peer) {
            return false;
        }
        let task = self
            .tasks
            .spawn(redial(self.node.clone(), peer, self.object, self.have_max));
        self.pending.insert(task.id(), peer);
        true
    }

    pub fn is_pending(&self, peer: &PeerId) -> bool {
        self.pending.values().any(|p| p == peer)
    }

    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// The next re-dial to end; `None` when none is under way.
    pub async fn next(&mut self) -> Option<Back> {
        match self.tasks.join_next_with_id().await? {
            Ok((id, (peer, held))) => {
                self.pending.remove(&id);
                if held.is_some() {
                    *self.reconnects.entry(peer).or_default() += 1;
                }
                Some((peer, held))
            }
            // A task that panicked: its peer is not coming back.
            Err(e) => self.pending.remove(&e.id()).map(|peer| (peer, None)),
        }
    }

    pub fn reconnects(&self, peer: &PeerId) -> u32 {
        self.reconnects.get(peer).copied().unwrap_or(0)
    }
}

/// The waits between tries to reach a peer that went away or silent: the profile's first wait,
/// doubling up to its maximum (a failed dial costs bytes on a metered link), from the first again
/// once the peer answers. Shared by the re-dial of a lost peer, the paced lane's silent peer, a
/// fetch whose peers cannot be dialed yet and the configured peers a node keeps connected.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    first: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(t: &Tuning) -> Self {
        Backoff {
            first: t.redial_first_wait,
            max: t.redial_max_wait,
            next: t.redial_first_wait,
        }
    }

    /// The wait before the next try (the one after doubles).
    pub fn next_wait(&mut self) -> Duration {
        let w = self.next;
        self.next = (self.next * 2).min(self.max);
        w
    }

    /// The wait before the next try when tries end at `give_up`: the next wait, cut short at
    /// `give_up`; `None` once it has passed.
    pub fn next_wait_before(&mut self, give_up: tokio::time::Instant) -> Option<Duration> {
        let left = give_up.checked_duration_since(tokio::time::Instant::now())?;
        (!left.is_zero()).then(|| self.next_wait().min(left))
    }

    /// The wait the next try would take, without taking it.
    pub fn peek(&self) -> Duration {
        self.next
    }

    /// The peer answered: from the first wait again.
    pub fn reset(&mut self) {
        self.next = self.first;
    }
}

/// Waits, dials, asks for the have-bitmap; until the profile's outage patience runs out.
async fn redial(node: NodeHandle, peer: PeerId, object: Hash, have_max: usize) -> Back {
    let give_up = tokio::time::Instant::now() + node.tuning.outage_patience;
    let mut backoff = Backoff::new(&node.tuning);
    while let Some(wait) = backoff.next_wait_before(give_up) {
        tokio::time::sleep(wait).await;
        if node.redial(peer).await.is_err() {
            continue;
        }
        if let Ok(Response::Have { object: o, held }) =
            ask(&node, peer, &Request::GetHave(object), have_max).await
        {
            if o == object {
                return (peer, Some(held));
            }
        }
    }
    (peer, None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::Profile;

    #[test]
    fn waits_double_to_the_maximum_and_start_again_after_an_answer() {
        let t = Profile::Field.tuning();
        let mut b = Backoff::new(&t);
        let first = b.next_wait();
        assert_eq!(first, t.redial_first_wait);
        assert_eq!(b.next_wait(), first * 2);
        for _ in 0..20 {
            assert!(b.next_wait() <= t.redial_max_wait);
        }
        assert_eq!(b.peek(), t.redial_max_wait);
        b.reset();
        assert_eq!(b.next_wait(), first);

        // Within a deadline: the wait cut short at it, none once it has passed.
        b.reset();
        let now = tokio::time::Instant::now();
        assert_eq!(b.next_wait_before(now), None);
        let far = now + Duration::from_secs(3600);
        assert_eq!(b.next_wait_before(far), Some(first));
        let near = tokio::time::Instant::now() + first / 4;
        assert!(b.next_wait_before(near).is_some_and(|w| w <= first / 4));
    }
}
