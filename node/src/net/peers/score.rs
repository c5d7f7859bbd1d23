//! [`PeerScores`]: one node-wide score per peer, covering everything a peer can do wrong — chunks
//! on the streams and on the paced lane, manifests, announcements, DHT answers, trickling. Each
//! [`Offence`] adds its weight to the peer's penalty; the penalty halves every [`HALF_LIFE`]; a
//! peer whose penalty is at least [`BAN_AT`] is banned: disconnected, refused at the door, never
//! dialed and never asked, by every transfer, until the penalty has decayed below the line. One
//! piece of provably bad data (a chunk or manifest that fails verification) bans at once, for
//! about [`HALF_LIFE`]; a second offence after that bans for longer. At most [`MAX_TRACKED`] peers
//! are remembered; when full, the most forgiven one is forgotten first.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use libp2p::PeerId;

/// Penalty at which a peer is banned.
pub const BAN_AT: f64 = 100.0;
/// How fast a penalty is forgiven.
pub const HALF_LIFE: Duration = Duration::from_secs(30 * 60);
/// Peers with a penalty remembered at once.
pub const MAX_TRACKED: usize = 4096;
/// Penalties below this are forgotten.
const NEGLIGIBLE: f64 = 0.5;

/// Something a peer did wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offence {
    /// Data that failed verification: a chunk (streams or the authenticated lane), a manifest
    /// that does not hash to the name asked for or whose signature does not verify.
    BadData,
    /// An announcement that is malformed, wrongly signed or over the size limit. (A valid one
    /// from a publisher this node does not trust is not an offence.)
    InvalidAnnouncement,
    /// An answer sent below the floor rate (a byte now and then to keep a request alive).
    Trickle,
    /// An answer of the wrong kind or for something else than was asked.
    WrongAnswer,
    /// A DHT provider that, asked, did not have the object.
    FalseProvider,
}

impl Offence {
    pub fn weight(self) -> f64 {
        match self {
            Offence::BadData => 2.0 * BAN_AT,
            Offence::InvalidAnnouncement => 40.0,
            Offence::Trickle => 25.0,
            Offence::WrongAnswer => 50.0,
            Offence::FalseProvider => 20.0,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Offence::BadData => "data that failed verification",
            Offence::InvalidAnnouncement => "an invalid announcement",
            Offence::Trickle => "trickling below the floor rate",
            Offence::WrongAnswer => "a wrong answer",
            Offence::FalseProvider => "a false DHT provider record",
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Penalty {
    value: f64,
    at: Instant,
}

impl Penalty {
    fn now(&self, now: Instant) -> f64 {
        let halves = now.saturating_duration_since(self.at).as_secs_f64() / HALF_LIFE.as_secs_f64();
        self.value * 0.5f64.powf(halves)
    }
}

#[derive(Debug, Default)]
pub(crate) struct PeerScores {
    map: Mutex<HashMap<PeerId, Penalty>>,
}

impl PeerScores {
    /// Adds `offence` to `peer`'s penalty; `true` when this made it banned (it was not before).
    pub fn penalise(&self, peer: PeerId, offence: Offence) -> bool {
        self.penalise_at(peer, offence, Instant::now())
    }

    fn penalise_at(&self, peer: PeerId, offence: Offence, now: Instant) -> bool {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if !map.contains_key(&peer) && map.len() >= MAX_TRACKED {
            forget_most_forgiven(&mut map, now);
        }
        let before = map.get(&peer).map_or(0.0, |p| p.now(now));
        let after = before + offence.weight();
        map.insert(
            peer,
            Penalty {
                value: after,
                at: now,
            },
        );
        before < BAN_AT && after >= BAN_AT
    }

    pub fn is_banned(&self, peer: &PeerId) -> bool {
        self.penalty_at(peer, Instant::now()) >= BAN_AT
    }

    /// The peer's penalty now (0 = clean).
    pub fn penalty(&self, peer: &PeerId) -> f64 {
        self.penalty_at(peer, Instant::now())
    }

    fn penalty_at(&self, peer: &PeerId, now: Instant) -> f64 {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.get(peer).map_or(0.0, |p| p.now(now))
    }
}

/// Drops the entries that have decayed to nothing, and if none has, the smallest penalty.
fn forget_most_forgiven(map: &mut HashMap<PeerId, Penalty>, now: Instant) {
    map.retain(|_, p| p.now(now) >= NEGLIGIBLE);
    if map.len() < MAX_TRACKED {
        return;
    }
    let least = map
        .iter()
        .min_by(|a, b| a.1.now(now).total_cmp(&b.1.now(now)))
        .map(|(k, _)| *k);
    if let Some(k) = least {
        map.remove(&k);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_data_bans_at_once_and_the_ban_decays() {
        let s = PeerScores::default();
        let p = PeerId::random();
        let t0 = Instant::now();
        assert!(s.penalise_at(p, Offence::BadData, t0));
        assert!(s.penalty_at(&p, t0) >= BAN_AT);
        // Still banned just before one half-life, free after it.
        assert!(s.penalty_at(&p, t0 + HALF_LIFE - Duration::from_secs(60)) >= BAN_AT);
        assert!(s.penalty_at(&p, t0 + HALF_LIFE + Duration::from_secs(60)) < BAN_AT);
    }

    #[test]
    fn small_offences_add_up_to_a_ban_once() {
        let s = PeerScores::default();
        let p = PeerId::random();
        let t0 = Instant::now();
        assert!(!s.penalise_at(p, Offence::InvalidAnnouncement, t0));
        assert!(!s.penalise_at(p, Offence::InvalidAnnouncement, t0));
        assert!(s.penalise_at(p, Offence::InvalidAnnouncement, t0), "third");
        assert!(
            !s.penalise_at(p, Offence::InvalidAnnouncement, t0),
            "already banned"
        );
    }

    #[test]
    fn the_map_is_bounded() {
        let s = PeerScores::default();
        let t0 = Instant::now();
        let worst = PeerId::random();
        s.penalise_at(worst, Offence::BadData, t0);
        for _ in 0..MAX_TRACKED + 10 {
            s.penalise_at(PeerId::random(), Offence::FalseProvider, t0);
        }
        assert!(s.map.lock().unwrap().len() <= MAX_TRACKED);
        assert!(s.penalty_at(&worst, t0) >= BAN_AT, "the worst is kept");
    }
}
