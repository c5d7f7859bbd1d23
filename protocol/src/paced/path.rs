//! [`PathValidator`]: where the sender may send data. Only to an address that has proven it
//! receives: the sender challenges an address with a random nonce and moves there only when the
//! nonce comes back, sealed, from that same address. Until then the address gets challenges only,
//! each in answer to a sealed datagram from it and never bigger than that datagram, so a forged
//! source address (a reflection attack) gets back at most what the attacker sent in its name.
//!
//! The first address is validated the same way (the session's first data waits one round trip);
//! an address change mid-session (a NAT rebinding after an outage) keeps data flowing to the old
//! address until the new one answers.

use std::time::Duration;

use super::message::ToReceiver;
use super::seal::SEAL_OVERHEAD;

/// Sealed size of a challenge: datagrams smaller than this never draw one.
pub const CHALLENGE_LEN: usize = SEAL_OVERHEAD + ToReceiver::CHALLENGE_LEN;
/// Addresses being validated at once; a new one replaces the one challenged longest ago.
const MAX_PENDING: usize = 4;
/// At most one challenge per address this often.
const CHALLENGE_EVERY: Duration = Duration::from_millis(200);

/// What to do after a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathAction<A> {
    Nothing,
    /// Send a challenge with this nonce to this address.
    Challenge {
        to: A,
        nonce: [u8; 8],
    },
}

#[derive(Debug, Clone)]
struct Pending<A> {
    addr: A,
    nonce: [u8; 8],
    last_challenge: Duration,
}

#[derive(Debug, Clone)]
pub struct PathValidator<A> {
    target: Option<A>,
    pending: Vec<Pending<A>>,
    /// Challenges sent, and their bytes, all addresses together.
    challenges: u64,
}

impl<A: Copy + Eq> Default for PathValidator<A> {
    fn default() -> Self {
        Self::new()
    }
}

impl<A: Copy + Eq> PathValidator<A> {
    pub fn new() -> Self {
        PathValidator {
            target: None,
            pending: Vec::new(),
            challenges: 0,
        }
    }

    /// Where data may go now.
    pub fn target(&self) -> Option<A> {
        self.target
    }

    pub fn challenges(&self) -> u64 {
        self.challenges
    }

    /// A sealed datagram of `len` bytes that opened came from `from` at `now`: challenges `from`
    /// when it is not the validated address, the datagram is at least as big as a challenge, and
    /// `from` was not challenged in the last 200 ms. `nonce` is called for a fresh random nonce.
    pub fn on_datagram(
        &mut self,
        from: A,
        len: usize,
        now: Duration,
        nonce: impl FnOnce() -> [u8; 8],
    ) -> PathAction<A> {
        if self.target == Some(from) || len < CHALLENGE_LEN {
            return PathAction::Nothing;
        }
        let i = match self.pending.iter().position(|p| p.addr == from) {
            Some(i) => {
                if now < self.pending[i].last_challenge + CHALLENGE_EVERY {
                    return PathAction::Nothing;
                }
                i
            }
            None => {
                if self.pending.len() >= MAX_PENDING {
                    let oldest = (0..self.pending.len())
                        .min_by_key(|&i| self.pending[i].last_challenge)
                        .unwrap_or(0);
                    self.pending.swap_remove(oldest);
                }
                self.pending.push(Pending {
                    addr: from,
                    nonce: [0; 8],
                    last_challenge: now,
                });
                self.pending.len() - 1
            }
        };
        let p = &mut self.pending[i];
        p.nonce = nonce();
        p.last_challenge = now;
        self.challenges += 1;
        PathAction::Challenge {
            to: from,
            nonce: p.nonce,
        }
    }

    /// The receiver's request (over the authenticated connection, from `to`'s IP address) named
    /// `to`'s port as the one it listens on: challenges `to` at once, before a datagram came
    /// from it. Once per session, and smaller than the request that asked for it.
    pub fn on_request(
        &mut self,
        to: A,
        now: Duration,
        nonce: impl FnOnce() -> [u8; 8],
    ) -> PathAction<A> {
        self.on_datagram(to, CHALLENGE_LEN, now, nonce)
    }

    /// A sealed response carrying `nonce` came from `from`: `true` when it answers the challenge
    /// sent to that very address, which becomes the target.
    pub fn on_response(&mut self, from: A, nonce: [u8; 8]) -> bool {
        let Some(i) = self
            .pending
            .iter()
            .position(|p| p.addr == from && p.nonce == nonce)
        else {
            return false;
        };
        self.pending.swap_remove(i);
        self.target = Some(from);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn data_goes_only_to_an_address_that_answered() {
        let mut p = PathValidator::<u32>::new();
        assert_eq!(p.target(), None);
        let PathAction::Challenge { to, nonce } = p.on_datagram(1, 60, MS, || [1; 8]) else {
            panic!("a first Hello draws a challenge")
        };
        assert_eq!(to, 1);
        // The answer from another address, or a wrong nonce, validates nothing.
        assert!(!p.on_response(2, nonce));
        assert!(!p.on_response(1, [9; 8]));
        assert_eq!(p.target(), None);
        assert!(p.on_response(1, nonce));
        assert_eq!(p.target(), Some(1));
        // The validated address draws no more challenges.
        assert_eq!(p.on_datagram(1, 60, 2 * MS, || [2; 8]), PathAction::Nothing);
    }

    #[test]
    fn a_new_address_is_challenged_while_data_stays_on_the_old() {
        let mut p = PathValidator::<u32>::new();
        p.on_datagram(1, 60, MS, || [1; 8]);
        assert!(p.on_response(1, [1; 8]));
        let PathAction::Challenge { nonce, .. } = p.on_datagram(7, 60, 10 * MS, || [7; 8]) else {
            panic!("a new address is challenged")
        };
        assert_eq!(p.target(), Some(1));
        assert!(p.on_response(7, nonce));
        assert_eq!(p.target(), Some(7));
        // An answer replayed later does not validate again.
        assert!(!p.on_response(7, nonce));
    }

    #[test]
    fn challenges_are_never_bigger_than_what_drew_them_and_are_rate_limited() {
        let mut p = PathValidator::<u32>::new();
        assert_eq!(
            p.on_datagram(1, CHALLENGE_LEN - 1, MS, || [1; 8]),
            PathAction::Nothing
        );
        assert!(matches!(
            p.on_datagram(1, CHALLENGE_LEN, MS, || [1; 8]),
            PathAction::Challenge { .. }
        ));
        assert_eq!(
            p.on_datagram(1, 1000, 100 * MS, || [1; 8]),
            PathAction::Nothing
        );
        assert!(matches!(
            p.on_datagram(1, 1000, 202 * MS, || [2; 8]),
            PathAction::Challenge { .. }
        ));
        // A new nonce replaces the old one.
        assert!(!p.on_response(1, [1; 8]));
        assert!(p.on_response(1, [2; 8]));
    }

    #[test]
    fn pending_addresses_are_bounded() {
        let mut p = PathValidator::<u32>::new();
        for a in 0..100u32 {
            p.on_datagram(a, 60, Duration::from_millis(u64::from(a)), || [a as u8; 8]);
        }
        assert!(p.pending.len() <= MAX_PENDING);
        // The oldest were dropped: their answers are refused; the newest is accepted.
        assert!(!p.on_response(0, [0; 8]));
        assert!(p.on_response(99, [99; 8]));
        assert_eq!(p.challenges(), 100);
    }
}
