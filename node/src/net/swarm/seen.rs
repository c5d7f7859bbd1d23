//! [`SeenAnnouncements`]: the manifests this node has acted on, so that an announcement replayed
//! later (gossipsub itself forgets a message after a minute) starts nothing new and travels no
//! further. Bounded by count, not by time: an entry is forgotten only when
//! [`MAX_SEEN`] newer ones have arrived, which at one announcement a minute is over a week —
//! longer than any sync window a station waits through.

use std::collections::{HashSet, VecDeque};

use zdn_protocol::Hash;

/// Manifest hashes remembered.
pub const MAX_SEEN: usize = 16_384;

/// Whether an announcement is new.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Seen {
    First,
    Again,
}

#[derive(Debug, Default)]
pub(crate) struct SeenAnnouncements {
    order: VecDeque<Hash>,
    set: HashSet<Hash>,
}

impl SeenAnnouncements {
    /// Records `hash`; says whether it was new.
    pub fn check(&mut self, hash: Hash) -> Seen {
        if !self.set.insert(hash) {
            return Seen::Again;
        }
        self.order.push_back(hash);
        if self.order.len() > MAX_SEEN {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        Seen::First
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replay_is_seen_and_the_set_is_bounded() {
        let mut s = SeenAnnouncements::default();
        let h = |i: u32| Hash::of(&i.to_le_bytes());
        assert_eq!(s.check(h(0)), Seen::First);
        assert_eq!(s.check(h(0)), Seen::Again);
        for i in 1..=MAX_SEEN as u32 {
            s.check(h(i));
        }
        assert_eq!(s.set.len(), MAX_SEEN);
        assert_eq!(s.check(h(0)), Seen::First, "the oldest was forgotten");
    }
}
