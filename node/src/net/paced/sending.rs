//! The send loop of one served lane session: paces the session's bytes out as sealed datagrams to
//! the address that answered a challenge, feeds the receiver's acknowledgements to the rate
//! control ([`PacedSender`]), and answers every new address with a challenge no bigger than what
//! came from it.
//!
//! A session whose libp2p stream is closed ends. One whose stream breaks (the connection died in
//! an outage) is **parked**: the validated address is forgotten, nothing at all is sent until a
//! sealed datagram of its receiver (a probe, an ack) comes from an address that answers a fresh
//! challenge, and a banned peer's session never resumes. The sender itself stops after
//! [`zdn_protocol::paced::VOID`] without a word from its receiver and starts again on the next
//! one. A parked or stopped session counts as idle: a new request that finds no slot free takes
//! its place (see `slots.rs`).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use libp2p::PeerId;
use tokio::net::UdpSocket;
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;
use zdn_protocol::paced::{
    EndReason, PacedSender, PathAction, PathValidator, SenderPoll, SenderSeal, ToReceiver,
    ToSender, MAX_CONTROL_LEN, SEAL_OVERHEAD,
};

use crate::net::paced::server::PacedServer;
use crate::net::paced::slots::SlotState;

/// A session that has not reached its receiver's address this long after it started ends.
const FIRST_CONTACT: Duration = Duration::from_secs(20);
/// How often a session notes its link for the peer's next session.
const NOTE_EVERY: Duration = Duration::from_millis(500);
/// Datagrams sent before the send loop yields to the runtime.
const SENDS_PER_TURN: u32 = 32;
/// Control datagrams read per turn of the send loop.
const READS_PER_TURN: u32 = 64;

/// How the session's libp2p stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Closed {
    /// Closed (or written to) by the receiver: the session is over.
    Clean,
    /// Broken: the connection was lost; the session parks.
    Broken,
}

/// One session's socket, keys, sender and bytes.
pub(crate) struct Session {
    pub socket: UdpSocket,
    pub seal: SenderSeal,
    pub tx: PacedSender,
    /// Bytes it may send, datagrams and headers counted.
    pub budget: u64,
    pub bytes: Vec<u8>,
    pub peer: PeerId,
    pub slot: Arc<SlotState>,
    /// The address the request named (the connection's IP, the port the receiver said it
    /// listens on): challenged at once, before a Hello comes.
    pub named: Option<SocketAddr>,
}

/// What the control datagrams of one turn said.
#[derive(Debug, Default)]
struct Heard {
    /// At least one opened (the receiver is there).
    something: bool,
    /// The receiver said Done.
    done: bool,
    /// An address answered its challenge (it is now where data goes).
    validated: bool,
}

/// Where the session stands between turns.
struct Turn {
    t0: Instant,
    path: PathValidator<SocketAddr>,
    /// Keys this path's challenge nonces (see [`address_nonce`]); new when the path is new.
    nonce_key: [u8; 32],
    last_heard: Option<Instant>,
    /// An address was validated at least once.
    reached: bool,
    /// The stream broke: nothing is sent until an address answers a fresh challenge.
    parked: bool,
    sent_bytes: u64,
    /// When the link was last noted for the peer's next session ([`PacedServer::links`]).
    noted: Instant,
}

impl PacedServer {
    /// The send loop of one session; returns why it ended.
    pub(crate) async fn send(
        &self,
        s: &mut Session,
        mut stop: watch::Receiver<bool>,
        closed: oneshot::Receiver<Closed>,
    ) -> EndReason {
        let mut closed = Some(closed);
        let mut t = Turn {
            t0: Instant::now(),
            path: PathValidator::new(),
            nonce_key: fresh_key(),
            last_heard: None,
            reached: false,
            parked: false,
            sent_bytes: 0,
            noted: Instant::now(),
        };
        let mut out = Vec::with_capacity(usize::from(u16::MAX));
        self.challenge_named(s, &mut t, &mut out).await;
        loop {
            // Every turn, however high the rate: the stop signal, the slot, the stream, the
            // receiver's datagrams, the deadlines.
            if stop.has_changed().unwrap_or(true) {
                return EndReason::Shutdown;
            }
            if s.slot.evicted.load(Ordering::Relaxed) {
                return EndReason::Replaced;
            }
            if let Some(c) = closed.as_mut() {
                match c.try_recv() {
                    Err(oneshot::error::TryRecvError::Empty) => {}
                    Ok(Closed::Clean) => return EndReason::Complete,
                    Ok(Closed::Broken) | Err(oneshot::error::TryRecvError::Closed) => {
                        closed = None;
                        if self.scores.is_banned(&s.peer) {
                            return EndReason::Other;
                        }
                        t.parked = true;
                        t.path = PathValidator::new();
                        t.nonce_key = fresh_key();
                    }
                }
            }
            let heard = self.read_control(s, &mut t.path, &t.nonce_key, t.t0).await;
            if heard.done {
                return EndReason::Complete;
            }
            if heard.something {
                t.last_heard = Some(Instant::now());
            }
            if heard.validated {
                if t.parked && self.scores.is_banned(&s.peer) {
                    return EndReason::Other;
                }
                t.parked = false;
                t.reached = true;
            }
            if let Some(end) = t.deadline(s) {
                return end;
            }
            self.note_link(s, &mut t);
            s.slot.set_idle(t.parked || s.tx.is_paused());
            let wake = match t.path.target() {
                Some(target) if !t.parked => {
                    match self.send_some(s, &mut t, target, &mut out).await {
                        Ok(wake) => wake,
                        Err(end) => return end,
                    }
                }
                _ => Instant::now() + Duration::from_millis(50),
            };
            if wake <= Instant::now() {
                tokio::task::yield_now().await;
                continue;
            }
            tokio::select! {
                _ = tokio::time::sleep_until(wake) => {}
                _ = stop.changed() => {}
                _ = async {
                    match closed.as_mut() {
                        Some(c) => { let _ = c.await; }
                        None => std::future::pending().await,
                    }
                }, if closed.is_some() => {}
                _ = s.socket.readable() => {}
            }
        }
    }

    /// Sends what the pacing allows now (at most [`SENDS_PER_TURN`] datagrams) to `target`;
    /// returns when to look again, or why the session is over.
    async fn send_some(
        &self,
        s: &mut Session,
        t: &mut Turn,
        target: SocketAddr,
        out: &mut Vec<u8>,
    ) -> Result<Instant, EndReason> {
        let mut sends = 0;
        loop {
            match s.tx.poll(t.t0.elapsed()) {
                SenderPoll::Done => return Err(EndReason::Complete),
                SenderPoll::Wait(at) => return Ok(t.t0 + at),
                SenderPoll::Send(x) => {
                    let (off, len) = s.tx.span(x.seq);
                    let Some(payload) = usize::try_from(off)
                        .ok()
                        .and_then(|off| s.bytes.get(off..off.checked_add(len)?))
                    else {
                        return Err(EndReason::Other);
                    };
                    s.seal.seal_data(x.seq, x.sent_us, payload, out);
                    // A send error (no route during an outage) is a lost datagram.
                    if s.socket.send_to(out, target).await.is_ok() {
                        self.traffic
                            .chunk_bytes_served
                            .fetch_add(len as u64, Ordering::Relaxed);
                    }
                    t.sent_bytes += out.len() as u64;
                    sends += 1;
                    if t.sent_bytes > s.budget {
                        return Err(EndReason::Budget);
                    }
                    if sends >= SENDS_PER_TURN {
                        return Ok(Instant::now());
                    }
                }
            }
        }
    }

    /// Reads the control datagrams waiting (at most [`READS_PER_TURN`]): acknowledgements feed the
    /// sender, responses validate their address, and every other address that sends a sealed
    /// datagram is challenged. What does not open is counted and dropped.
    async fn read_control(
        &self,
        s: &mut Session,
        path: &mut PathValidator<SocketAddr>,
        nonce_key: &[u8; 32],
        t0: Instant,
    ) -> Heard {
        let mut heard = Heard::default();
        let mut inbox = [0u8; MAX_CONTROL_LEN + SEAL_OVERHEAD + 1];
        let mut out = Vec::new();
        for _ in 0..READS_PER_TURN {
            let Ok((n, from)) = s.socket.try_recv_from(&mut inbox) else {
                break;
            };
            let now = t0.elapsed();
            let Ok(msg) = s.seal.open(&mut inbox[..n]) else {
                self.traffic.paced_refused.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            heard.something = true;
            s.tx.on_heard(now);
            let action = match msg {
                ToSender::Response { nonce } => {
                    heard.validated |= path.on_response(from, nonce);
                    PathAction::Nothing
                }
                ToSender::Done => {
                    heard.done = true;
                    return heard;
                }
                ack @ ToSender::Ack { .. } => {
                    s.tx.on_ack(now, &ack);
                    path.on_datagram(from, n, now, || address_nonce(nonce_key, from))
                }
                ToSender::Hello | ToSender::Probe => {
                    path.on_datagram(from, n, now, || address_nonce(nonce_key, from))
                }
            };
            self.challenge(s, action, &mut out).await;
        }
        heard
    }

    /// Challenges the address the request named, at once (before a Hello comes from it).
    async fn challenge_named(&self, s: &mut Session, t: &mut Turn, out: &mut Vec<u8>) {
        if let Some(to) = s.named.take() {
            let key = t.nonce_key;
            let action = t
                .path
                .on_request(to, t.t0.elapsed(), || address_nonce(&key, to));
            self.challenge(s, action, out).await;
        }
    }

    /// Notes the link as this session found it, for the peer's next session (every
    /// [`NOTE_EVERY`]).
    fn note_link(&self, s: &Session, t: &mut Turn) {
        if t.noted.elapsed() >= NOTE_EVERY {
            t.noted = Instant::now();
            if let (false, Some(link)) = (t.parked, s.tx.link()) {
                self.links.note(s.peer, link);
            }
        }
    }

    /// Sends the challenge `action` asks for, if it asks for one.
    async fn challenge(&self, s: &mut Session, action: PathAction<SocketAddr>, out: &mut Vec<u8>) {
        if let PathAction::Challenge { to, nonce } = action {
            if s.seal.seal_control(&ToReceiver::Challenge { nonce }, out) {
                let _ = s.socket.send_to(out, to).await;
            }
        }
    }
}

impl Turn {
    /// The session's limits: its byte budget, its receiver's silence, first contact.
    fn deadline(&self, s: &Session) -> Option<EndReason> {
        if self.sent_bytes > s.budget {
            return Some(EndReason::Budget);
        }
        let quiet_since = self.last_heard.unwrap_or(self.t0);
        if quiet_since.elapsed() > super::server::SILENCE {
            return Some(EndReason::Silent);
        }
        if !self.reached && self.t0.elapsed() > FIRST_CONTACT {
            return Some(EndReason::Unreachable);
        }
        None
    }
}

/// A key from the OS's CSPRNG (all zero only if it fails, which only weakens the challenges of
/// that one path: their nonces stay unknown to an off-path attacker without the session key).
fn fresh_key() -> [u8; 32] {
    let mut k = [0u8; 32];
    let _ = getrandom::getrandom(&mut k);
    k
}

/// The challenge nonce for `addr` on a path keyed by `key`: random to anyone without the key, one
/// per address, and the same for every challenge to that address. The receiver sends Hellos every
/// 250 ms until data comes and the sender challenges each (at most every 200 ms); were each
/// challenge's nonce new, it would replace the one whose answer is still in flight, and on a
/// round trip longer than that interval (every satellite link) no answer would ever match.
fn address_nonce(key: &[u8; 32], addr: SocketAddr) -> [u8; 8] {
    let mut h = blake3::Hasher::new_keyed(key);
    match addr.ip() {
        std::net::IpAddr::V4(ip) => h.update(&ip.to_ipv6_mapped().octets()),
        std::net::IpAddr::V6(ip) => h.update(&ip.octets()),
    };
    h.update(&addr.port().to_be_bytes());
    let mut n = [0u8; 8];
    n.copy_from_slice(&h.finalize().as_bytes()[..8]);
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use zdn_protocol::paced::PathValidator;

    fn addr(s: &str) -> SocketAddr {
        s.parse()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    #[test]
    fn nonces_are_per_address_and_per_key() {
        let (k1, k2) = ([1u8; 32], [2u8; 32]);
        let a = addr("10.0.0.1:4000");
        assert_eq!(address_nonce(&k1, a), address_nonce(&k1, a));
        assert_ne!(address_nonce(&k1, a), address_nonce(&k2, a));
        assert_ne!(
            address_nonce(&k1, a),
            address_nonce(&k1, addr("10.0.0.1:4001"))
        );
        assert_ne!(
            address_nonce(&k1, a),
            address_nonce(&k1, addr("10.0.0.2:4000"))
        );
        assert_ne!(fresh_key(), fresh_key());
    }

    /// A receiver 600 ms away (a satellite round trip) says Hello every 250 ms; the sender
    /// challenges each. The answer to the first challenge, arriving after later challenges went
    /// out, still validates the address.
    #[test]
    fn an_answer_in_flight_survives_later_challenges_on_a_long_round_trip() {
        let key = fresh_key();
        let rx = addr("10.210.1.2:5000");
        let mut p = PathValidator::<SocketAddr>::new();
        let ms = Duration::from_millis;
        let mut sent = Vec::new();
        // Hellos sent at 0, 250, 500, 750 ms arrive 300 ms later.
        for k in 0..4u64 {
            if let zdn_protocol::paced::PathAction::Challenge { nonce, .. } =
                p.on_datagram(rx, 100, ms(300 + 250 * k), || address_nonce(&key, rx))
            {
                sent.push(nonce);
            }
        }
        assert!(sent.len() >= 2, "each Hello 250 ms apart draws a challenge");
        // The first challenge (sent at 300 ms) is answered at 900 ms, after two more went out.
        assert!(p.on_response(rx, sent[0]));
        assert_eq!(p.target(), Some(rx));
    }
}
