//! Sealing the lane's datagrams: every datagram of a session is encrypted and authenticated with
//! ChaCha20-Poly1305 under keys derived from the session key, which the sender drew from the OS
//! CSPRNG and sent in `Ready` over the authenticated, encrypted libp2p stream. Only the two ends
//! of that stream can make a datagram that opens; anything else is dropped and counted, never acted
//! on. Chunk bytes and control messages are unreadable on the path.
//!
//! ```text
//! data datagram     seq u32 | sent_us u32 | ciphertext | tag 16
//!   seq             bit 31 clear: the packet number
//!   sent_us         the sender's clock when this transmission left (µs, wrapping)
//!   nonce           seq | sent_us | 4 zero bytes (little-endian)
//! control datagram  number u32 | ciphertext | tag 16
//!   number          bit 31 set: the sending side's control counter
//!   nonce           number | 8 zero bytes
//! keys              BLAKE3 derive_key("zdn paced v3 to-receiver", K)  datagrams to the receiver
//!                   BLAKE3 derive_key("zdn paced v3 to-sender", K)    datagrams to the sender
//! ```
//! A data packet's plaintext is its payload; a control datagram's plaintext is a [`ToSender`] or
//! [`ToReceiver`] message. The send time is authenticated (it is part of the nonce) and lets the
//! receiver measure queueing delay (`gauge.rs`). A packet's payload never changes within a session,
//! so even two transmissions of one packet in the same microsecond (they are never closer than a
//! retransmission timeout) would be the same datagram twice: no nonce is ever used for two
//! different plaintexts. A replayed data datagram is only a duplicate packet, and too old to move
//! the delay measurement. Control datagrams carry a fresh counter each; a counter already seen (a
//! replay) or more than 64 behind the newest is refused.

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce, Tag};

use super::message::{ToReceiver, ToSender};
use super::PacedError;

/// Bytes of the number in front of every sealed datagram.
pub const NUMBER_LEN: usize = 4;
/// Bytes in front of a data datagram's ciphertext: the packet number and the send time.
pub const DATA_HEAD: usize = 8;
/// Bytes of the authentication tag at the end.
pub const TAG_LEN: usize = 16;
/// What sealing adds to a datagram's plaintext.
pub const SEAL_OVERHEAD: usize = NUMBER_LEN + TAG_LEN;
/// What sealing adds to a data packet's payload.
pub const DATA_OVERHEAD: usize = DATA_HEAD + TAG_LEN;
/// Bit 31 of the number marks a control datagram.
const CONTROL: u32 = 1 << 31;
const TO_RECEIVER: &str = "zdn paced v3 to-receiver";
const TO_SENDER: &str = "zdn paced v3 to-sender";

fn cipher(context: &str, session_key: &[u8; 32]) -> ChaCha20Poly1305 {
    let key = blake3::derive_key(context, session_key);
    ChaCha20Poly1305::new(Key::from_slice(&key))
}

fn nonce(number: u32, sent_us: u32) -> Nonce {
    let mut n = [0u8; 12];
    n[..4].copy_from_slice(&number.to_le_bytes());
    n[4..8].copy_from_slice(&sent_us.to_le_bytes());
    *Nonce::from_slice(&n)
}

/// Appends `head | seal(plaintext) | tag` to a cleared `out`, under the nonce of `number` and
/// `sent_us`; `head` is what goes in the clear in front (the number, and a data packet's time).
fn seal(
    c: &ChaCha20Poly1305,
    (number, sent_us): (u32, u32),
    head: &[u8],
    plaintext: &[u8],
    out: &mut Vec<u8>,
) {
    out.clear();
    out.extend_from_slice(head);
    let at = out.len();
    out.extend_from_slice(plaintext);
    // Encryption in place cannot fail for a datagram-sized buffer (the limit is 2^38 bytes).
    let tag = c
        .encrypt_in_place_detached(&nonce(number, sent_us), b"", &mut out[at..])
        .unwrap_or_default();
    out.extend_from_slice(&tag);
}

/// What a datagram opened to: its number, the send time of a data packet (0 for control), and
/// its plaintext.
type Opened<'a> = (u32, u32, &'a [u8]);

/// Opens a sealed datagram in place.
fn open<'a>(c: &ChaCha20Poly1305, datagram: &'a mut [u8]) -> Result<Opened<'a>, PacedError> {
    if datagram.len() < SEAL_OVERHEAD {
        return Err(PacedError::Unsealed);
    }
    let (head, rest) = datagram.split_at_mut(NUMBER_LEN);
    let number = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
    let (sent_us, rest) = if number & CONTROL == 0 {
        if rest.len() < DATA_HEAD - NUMBER_LEN + TAG_LEN {
            return Err(PacedError::Unsealed);
        }
        let (t, rest) = rest.split_at_mut(DATA_HEAD - NUMBER_LEN);
        (u32::from_le_bytes([t[0], t[1], t[2], t[3]]), rest)
    } else {
        (0, rest)
    };
    let (body, tag) = rest.split_at_mut(rest.len() - TAG_LEN);
    c.decrypt_in_place_detached(&nonce(number, sent_us), b"", body, Tag::from_slice(tag))
        .map_err(|_| PacedError::Unsealed)?;
    Ok((number, sent_us, body))
}

/// Control counters seen lately: refuses a replay and anything more than 64 behind the newest.
#[derive(Debug, Default, Clone)]
pub(crate) struct ReplayWindow {
    /// One past the newest counter accepted (0: none yet).
    next: u32,
    /// Bit i: counter `next - 1 - i` was accepted.
    seen: u64,
}

impl ReplayWindow {
    /// Whether `counter` is new; records it when it is.
    pub fn accept(&mut self, counter: u32) -> bool {
        if counter >= self.next {
            let shift = counter - self.next + 1;
            self.seen = if shift >= 64 { 0 } else { self.seen << shift };
            self.seen |= 1;
            self.next = counter + 1;
            return true;
        }
        let back = self.next - 1 - counter;
        if back >= 64 || self.seen & (1 << back) != 0 {
            return false;
        }
        self.seen |= 1 << back;
        true
    }
}

/// Next control counter, with bit 31 set; `None` once 2^31 have been used (the session ends).
fn next_counter(counter: &mut u32) -> Option<u32> {
    if *counter >= CONTROL {
        return None;
    }
    let n = *counter | CONTROL;
    *counter += 1;
    Some(n)
}

/// The sending side's keys and counters.
#[derive(Clone)]
pub struct SenderSeal {
    out: ChaCha20Poly1305,
    inbound: ChaCha20Poly1305,
    counter: u32,
    replay: ReplayWindow,
}

impl std::fmt::Debug for SenderSeal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SenderSeal")
            .field("counter", &self.counter)
            .finish_non_exhaustive()
    }
}

impl SenderSeal {
    pub fn new(session_key: &[u8; 32]) -> Self {
        SenderSeal {
            out: cipher(TO_RECEIVER, session_key),
            inbound: cipher(TO_SENDER, session_key),
            counter: 0,
            replay: ReplayWindow::default(),
        }
    }

    /// Seals packet `seq` (below 2^31: a session has at most 2^17 packets), sent at `sent_us` on
    /// the sender's clock.
    pub fn seal_data(&self, seq: u32, sent_us: u32, payload: &[u8], out: &mut Vec<u8>) {
        let seq = seq & !CONTROL;
        let mut head = [0u8; DATA_HEAD];
        head[..4].copy_from_slice(&seq.to_le_bytes());
        head[4..].copy_from_slice(&sent_us.to_le_bytes());
        seal(&self.out, (seq, sent_us), &head, payload, out);
    }

    /// Seals a control message to the receiver; `false` when the counters are used up.
    pub fn seal_control(&mut self, msg: &ToReceiver, out: &mut Vec<u8>) -> bool {
        let Some(n) = next_counter(&mut self.counter) else {
            return false;
        };
        seal(&self.out, (n, 0), &n.to_le_bytes(), &msg.encode(), out);
        true
    }

    /// Opens a datagram from the receiver: refused when it does not open under the session's key,
    /// is a replay, or does not parse.
    pub fn open(&mut self, datagram: &mut [u8]) -> Result<ToSender, PacedError> {
        let (number, _, body) = open(&self.inbound, datagram)?;
        if number & CONTROL == 0 || !self.replay.accept(number & !CONTROL) {
            return Err(PacedError::Replayed);
        }
        Ok(ToSender::decode(body)?)
    }
}

/// What the sender sent, opened.
#[derive(Debug, PartialEq, Eq)]
pub enum FromSender<'a> {
    Data {
        seq: u32,
        /// The sender's clock when it was sent, microseconds (wrapping).
        sent_us: u32,
        payload: &'a [u8],
    },
    Control(ToReceiver),
}

/// The receiving side's keys and counters.
#[derive(Clone)]
pub struct ReceiverSeal {
    out: ChaCha20Poly1305,
    inbound: ChaCha20Poly1305,
    counter: u32,
    replay: ReplayWindow,
}

impl std::fmt::Debug for ReceiverSeal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReceiverSeal")
            .field("counter", &self.counter)
            .finish_non_exhaustive()
    }
}

impl ReceiverSeal {
    pub fn new(session_key: &[u8; 32]) -> Self {
        ReceiverSeal {
            out: cipher(TO_SENDER, session_key),
            inbound: cipher(TO_RECEIVER, session_key),
            counter: 0,
            replay: ReplayWindow::default(),
        }
    }

    /// Seals a control message to the sender; `false` when the counters are used up.
    pub fn seal(&mut self, msg: &ToSender, out: &mut Vec<u8>) -> bool {
        let Some(n) = next_counter(&mut self.counter) else {
            return false;
        };
        seal(&self.out, (n, 0), &n.to_le_bytes(), &msg.encode(), out);
        true
    }

    /// Opens a datagram from the sender, in place. A data packet may come again (a
    /// retransmission, or a replay: the receiver counts it as a duplicate); a control datagram
    /// may not.
    pub fn open<'a>(&mut self, datagram: &'a mut [u8]) -> Result<FromSender<'a>, PacedError> {
        let (number, sent_us, body) = open(&self.inbound, datagram)?;
        if number & CONTROL == 0 {
            return Ok(FromSender::Data {
                seq: number,
                sent_us,
                payload: body,
            });
        }
        if !self.replay.accept(number & !CONTROL) {
            return Err(PacedError::Replayed);
        }
        Ok(FromSender::Control(ToReceiver::decode(body)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const KEY: [u8; 32] = [9; 32];

    #[test]
    fn data_and_control_round_trip_and_nothing_else_opens() {
        let tx = SenderSeal::new(&KEY);
        let mut rx = ReceiverSeal::new(&KEY);
        let mut d = Vec::new();
        tx.seal_data(7, 900, b"payload", &mut d);
        assert_eq!(d.len(), 7 + DATA_HEAD + TAG_LEN);
        assert!(
            !d.windows(7).any(|w| w == b"payload"),
            "sealed bytes are not in the clear"
        );
        let mut again = Vec::new();
        tx.seal_data(7, 900, b"payload", &mut again);
        assert_eq!(
            d, again,
            "the same packet at the same time is the same datagram"
        );
        tx.seal_data(7, 901, b"payload", &mut again);
        assert_ne!(
            d[DATA_HEAD..],
            again[DATA_HEAD..],
            "a retransmission is sealed under its own nonce"
        );
        let mut copy = d.clone();
        assert_eq!(
            rx.open(&mut copy).unwrap(),
            FromSender::Data {
                seq: 7,
                sent_us: 900,
                payload: b"payload"
            }
        );
        // Every single-bit flip is refused.
        for i in 0..d.len() * 8 {
            let mut bad = d.clone();
            bad[i / 8] ^= 1 << (i % 8);
            assert!(rx.open(&mut bad).is_err(), "bit {i} flipped still opened");
        }
        // Another session's key, and the other direction's key, do not open it.
        let mut other = ReceiverSeal::new(&[8; 32]);
        assert!(other.open(&mut d.clone()).is_err());
        let mut tx2 = SenderSeal::new(&KEY);
        assert!(tx2.open(&mut d.clone()).is_err());
    }

    #[test]
    fn control_replays_are_refused() {
        let mut tx = SenderSeal::new(&KEY);
        let mut rx = ReceiverSeal::new(&KEY);
        let mut hello = Vec::new();
        assert!(rx.seal(&ToSender::Hello, &mut hello));
        assert_eq!(tx.open(&mut hello.clone()).unwrap(), ToSender::Hello);
        assert_eq!(
            tx.open(&mut hello.clone()),
            Err(PacedError::Replayed),
            "the same Hello twice"
        );
        let mut c = Vec::new();
        assert!(tx.seal_control(&ToReceiver::Challenge { nonce: [3; 8] }, &mut c));
        assert_eq!(
            rx.open(&mut c.clone()).unwrap(),
            FromSender::Control(ToReceiver::Challenge { nonce: [3; 8] })
        );
        assert_eq!(rx.open(&mut c), Err(PacedError::Replayed));
    }

    #[test]
    fn replay_window_accepts_late_but_new_and_refuses_old() {
        let mut w = ReplayWindow::default();
        assert!(w.accept(5));
        assert!(w.accept(3), "late but new");
        assert!(!w.accept(3));
        assert!(!w.accept(5));
        assert!(w.accept(100));
        assert!(!w.accept(36), "more than 64 behind");
        assert!(w.accept(37));
        assert!(w.accept(1000));
        assert!(!w.accept(100));
    }

    proptest! {
        #[test]
        fn sealed_data_round_trips(
            seq in 0u32..(1 << 31), sent_us in any::<u32>(),
            payload in proptest::collection::vec(any::<u8>(), 0..2000)
        ) {
            let tx = SenderSeal::new(&KEY);
            let mut rx = ReceiverSeal::new(&KEY);
            let mut d = Vec::new();
            tx.seal_data(seq, sent_us, &payload, &mut d);
            let opened = rx.open(&mut d).unwrap();
            prop_assert_eq!(opened, FromSender::Data { seq, sent_us, payload: &payload[..] });
        }

        #[test]
        fn arbitrary_bytes_never_open(mut junk in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut rx = ReceiverSeal::new(&KEY);
            prop_assert!(rx.open(&mut junk.clone()).is_err());
            let mut tx = SenderSeal::new(&KEY);
            prop_assert!(tx.open(&mut junk).is_err());
        }
    }
}
