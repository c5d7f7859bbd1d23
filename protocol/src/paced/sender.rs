//! [`PacedSender`]: which packet goes out next, and when.
//!
//! Packets leave at the rate [`RateControl`] finds (bounded by what the receiver stated, if it
//! stated a rate), counted in IP bytes (payload, the packet header, the tag and the UDP/IP
//! headers), so the link's queue neither empties nor overflows. A packet not acknowledged one
//! retransmission timeout after it was sent is sent again, oldest first, ahead of new data. Loss is
//! not taken as congestion: the sender keeps its rate through random loss and through the start of
//! an outage (where it sends into the void, so the link is full again the moment it returns).
//! While no acknowledgement comes it sends new data rather than retransmissions (what it sent
//! just before the silence may have arrived: an ack will say). After [`VOID`] without a word
//! from the receiver it stops and waits; the first datagram from the receiver (its probes come
//! every few seconds, see the node's session) starts it again.

use std::collections::VecDeque;
use std::time::Duration;

use super::message::ToSender;
use super::meter::ArrivalMeter;
use super::rate::{Feedback, RateControl, MIN_RATE, START_BURST};
use super::seal::DATA_OVERHEAD;
use super::{packet_count, packet_len, Bits};

/// How far pacing may catch up after the caller woke late.
const MAX_BURST: Duration = Duration::from_millis(10);
/// Added to the round trip: the receiver acknowledges every ~40 ms, plus timer slack.
const ACK_ALLOWANCE: Duration = Duration::from_millis(80);
const MIN_RTO: Duration = Duration::from_millis(200);
/// The sender stops after this long without a datagram from the receiver (and at least
/// `VOID_RTTS` round trips), and sends again when one comes.
pub const VOID: Duration = Duration::from_secs(30);
const VOID_RTTS: u32 = 8;
/// Acknowledgements this recent (or within two round trips) say what is missing well enough to
/// retransmit it.
const ACKS_LATELY: Duration = Duration::from_secs(1);
/// How often a stopped sender looks again.
const PAUSED_POLL: Duration = Duration::from_millis(500);
/// One transmission: which packet, and its send time (with the packet number, the datagram's
/// nonce).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transmission {
    pub seq: u32,
    /// The sender's clock, microseconds since the session started (wrapping); strictly
    /// increasing from one transmission to the next.
    pub sent_us: u32,
}

/// What to do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SenderPoll {
    /// Send this transmission now.
    Send(Transmission),
    /// Nothing to send before this time (or before a datagram arrives).
    Wait(Duration),
    /// Every packet is acknowledged.
    Done,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SenderStats {
    pub packets: u32,
    pub acked: u32,
    /// Datagrams sent, first sends and retransmissions.
    pub sent: u64,
    pub retransmitted: u64,
    /// The rate now, bits per second.
    pub rate_bps: u64,
    /// The link's rate as measured (0 = not yet).
    pub bottleneck_bps: u64,
    pub srtt_ms: u64,
    /// Times the sender stopped for want of a word from the receiver.
    pub pauses: u32,
}

/// The sending side of one session. Times are durations since the session started.
#[derive(Debug)]
pub struct PacedSender {
    total: u64,
    payload: u32,
    packets: u32,
    /// IP and UDP header bytes per datagram, counted in the pacing.
    overhead: u32,
    acked: Bits,
    retransmitted: Bits,
    acked_count: u32,
    /// Every packet below this one is acknowledged.
    cum: u32,
    last_sent: Vec<Duration>,
    /// Transmissions in the order they were made; stale entries are skipped when met.
    log: VecDeque<(u32, Duration)>,
    next_new: u32,
    /// The last transmission's send time, µs.
    last_sent_us: Option<u64>,
    meter: ArrivalMeter,
    control: RateControl,
    /// The sender's own ceiling (its cap); the receiver's stated rate may lower it.
    cap_bps: u64,
    /// Packets still to go out back to back at the start.
    burst: u32,
    next_at: Duration,
    srtt: Duration,
    rttvar: Duration,
    last_ack: Option<Duration>,
    /// When the receiver was last heard from (any datagram).
    last_heard: Duration,
    paused: bool,
    stats: SenderStats,
}

impl PacedSender {
    /// A session of `total` bytes in packets of `payload` bytes, never above `cap_bps`; `stated`
    /// is the rate the receiver stated for its link (the start and a ceiling), `None` to find it.
    /// `overhead`: IP and UDP header bytes per datagram; `rtt`: a first round-trip guess (the
    /// connection's ping).
    pub fn new(
        total: u64,
        payload: u16,
        stated: Option<u64>,
        cap_bps: u64,
        overhead: u32,
        rtt: Duration,
    ) -> Self {
        let payload = u32::from(payload.max(1));
        let packets = packet_count(total, payload);
        let cap_bps = cap_bps.max(MIN_RATE);
        let packet_bits = u64::from(payload + DATA_OVERHEAD as u32 + overhead) * 8;
        let ceiling = stated.map_or(cap_bps, |s| s.min(cap_bps));
        PacedSender {
            total,
            payload,
            packets,
            overhead,
            acked: Bits::new(packets),
            retransmitted: Bits::new(packets),
            acked_count: 0,
            cum: 0,
            last_sent: vec![Duration::ZERO; packets as usize],
            log: VecDeque::new(),
            next_new: 0,
            last_sent_us: None,
            meter: ArrivalMeter::default(),
            control: RateControl::new(stated, ceiling, packet_bits, rtt),
            cap_bps,
            burst: if stated.is_some() { 0 } else { START_BURST },
            next_at: Duration::ZERO,
            srtt: rtt,
            rttvar: rtt / 2,
            last_ack: None,
            last_heard: Duration::ZERO,
            paused: false,
            stats: SenderStats {
                packets,
                ..SenderStats::default()
            },
        }
    }

    pub fn packets(&self) -> u32 {
        self.packets
    }

    /// Starts at `link`, the link's rate (bits per second) and round trip an earlier session to
    /// the same receiver measured moments ago ([`PacedSender::link`]), instead of finding them
    /// again from a first burst. For a receiver that stated no rate (a stated rate is the start
    /// already).
    pub fn resume(&mut self, (rate_bps, srtt): (u64, Duration)) {
        self.control.resume(rate_bps);
        self.burst = 0;
        self.srtt = srtt;
        self.rttvar = srtt / 2;
    }

    /// The link's rate (bits per second) and smoothed round trip, once the rate is found.
    pub fn link(&self) -> Option<(u64, Duration)> {
        self.control.found().map(|r| (r, self.srtt))
    }

    /// Byte offset and length of packet `seq` in the session's byte stream.
    pub fn span(&self, seq: u32) -> (u64, usize) {
        (
            u64::from(seq) * u64::from(self.payload),
            packet_len(self.total, self.payload, seq),
        )
    }

    pub fn rate_bps(&self) -> u64 {
        self.control.rate()
    }

    pub fn is_done(&self) -> bool {
        self.acked_count == self.packets
    }

    /// When the last acknowledgement arrived.
    pub fn last_ack(&self) -> Option<Duration> {
        self.last_ack
    }

    /// Stopped for want of a word from the receiver.
    pub fn is_paused(&self) -> bool {
        self.paused
    }

    pub fn stats(&self) -> SenderStats {
        SenderStats {
            acked: self.acked_count,
            rate_bps: self.rate_bps(),
            bottleneck_bps: self.control.bottleneck(),
            srtt_ms: self.srtt.as_millis() as u64,
            ..self.stats.clone()
        }
    }

    fn rto(&self) -> Duration {
        (self.srtt + (self.rttvar * 4).max(Duration::from_millis(20)) + ACK_ALLOWANCE).max(MIN_RTO)
    }

    /// A datagram from the receiver opened (any kind: an ack, a probe, a hello).
    pub fn on_heard(&mut self, now: Duration) {
        self.last_heard = self.last_heard.max(now);
        if self.paused {
            self.paused = false;
            // Pacing restarts now, not where it stopped.
            self.next_at = now;
        }
    }

    pub fn poll(&mut self, now: Duration) -> SenderPoll {
        if self.is_done() {
            return SenderPoll::Done;
        }
        let void = VOID.max(self.srtt * VOID_RTTS);
        if !self.paused && now.saturating_sub(self.last_heard) > void {
            self.paused = true;
            self.stats.pauses += 1;
        }
        if self.paused {
            return SenderPoll::Wait(now + PAUSED_POLL);
        }
        if now < self.next_at {
            return SenderPoll::Wait(self.next_at);
        }
        while let Some(&(seq, at)) = self.log.front() {
            if self.acked.get(seq) || self.last_sent[seq as usize] != at {
                self.log.pop_front();
            } else {
                break;
            }
        }
        let rto = self.rto();
        // Without recent acknowledgements (an outage, a restart after one) what is unacknowledged
        // may well have arrived: new data first, retransmissions once an ack says what is
        // missing (or when nothing new is left).
        let acked_lately = self
            .last_ack
            .is_some_and(|a| now.saturating_sub(a) <= (self.srtt * 2).max(ACKS_LATELY));
        let retransmit_now = acked_lately || self.next_new >= self.packets;
        if let Some(&(seq, at)) = self.log.front() {
            if at + rto <= now && retransmit_now {
                self.log.pop_front();
                self.retransmitted.set(seq);
                self.stats.retransmitted += 1;
                return self.sent(seq, now);
            }
        }
        if self.next_new < self.packets {
            if let Some(cap) = self.control.startup_inflight_bits(self.srtt) {
                // Start-up from nothing: no more in flight than the rate measured so far allows.
                let inflight = self.inflight_packets(now, rto);
                if inflight * self.packet_bits() >= cap {
                    return SenderPoll::Wait(now + self.srtt / 8);
                }
            }
            let seq = self.next_new;
            self.next_new += 1;
            return self.sent(seq, now);
        }
        // Everything is out: the rest waits for acknowledgements (the link is not the limit).
        self.control.on_idle();
        match self.log.front() {
            Some(&(_, at)) => SenderPoll::Wait(at + rto),
            None => SenderPoll::Wait(now + rto),
        }
    }

    /// IP bits of a full packet.
    fn packet_bits(&self) -> u64 {
        u64::from(self.payload + DATA_OVERHEAD as u32 + self.overhead) * 8
    }

    /// Transmissions sent within the last retransmission timeout whose packet is not yet
    /// acknowledged (counted from the newest back: start-up only, when they are few).
    fn inflight_packets(&self, now: Duration, rto: Duration) -> u64 {
        let from = now.saturating_sub(rto);
        self.log
            .iter()
            .rev()
            .take_while(|&&(_, at)| at >= from)
            .filter(|&&(seq, at)| !self.acked.get(seq) && self.last_sent[seq as usize] == at)
            .count() as u64
    }

    fn sent(&mut self, seq: u32, now: Duration) -> SenderPoll {
        self.last_sent[seq as usize] = now;
        self.log.push_back((seq, now));
        self.stats.sent += 1;
        let wire = packet_len(self.total, self.payload, seq) as u64
            + DATA_OVERHEAD as u64
            + u64::from(self.overhead);
        let gap = if self.burst > 0 {
            self.burst -= 1;
            Duration::ZERO
        } else {
            let nanos = u128::from(wire * 8) * 1_000_000_000 / u128::from(self.rate_bps().max(1));
            Duration::from_nanos(nanos.min(u128::from(u64::MAX)) as u64)
        };
        self.next_at = self.next_at.max(now.saturating_sub(MAX_BURST)) + gap;
        let now_us = u64::try_from(now.as_micros()).unwrap_or(u64::MAX / 2);
        let at_us = self.last_sent_us.map_or(now_us, |l| now_us.max(l + 1));
        self.last_sent_us = Some(at_us);
        self.meter.on_sent(at_us, wire);
        SenderPoll::Send(Transmission {
            seq,
            sent_us: at_us as u32,
        })
    }

    /// An acknowledgement (other messages are ignored): every packet before `cumulative` and
    /// those in `ranges` arrived; the receiver's ceiling and measurements of the link. Parts past
    /// the last packet are ignored.
    pub fn on_ack(&mut self, now: Duration, ack: &ToSender) {
        let ToSender::Ack {
            rate_bps,
            cumulative,
            queue_us,
            echo_sent_us,
            echo_recv_us,
            received,
            ranges,
        } = ack
        else {
            return;
        };
        self.on_heard(now);
        self.last_ack = Some(now);
        self.control.set_ceiling(if *rate_bps == 0 {
            self.cap_bps
        } else {
            (*rate_bps).min(self.cap_bps)
        });
        let mut newest: Option<u32> = None;
        let cumulative = (*cumulative).min(self.packets);
        for seq in self.cum..cumulative {
            if self.mark(seq) {
                newest = Some(seq);
            }
        }
        self.cum = self.cum.max(cumulative);
        for &(start, len) in ranges {
            let end = (u64::from(start) + u64::from(len)).min(u64::from(self.packets)) as u32;
            for seq in start.min(end)..end {
                if self.mark(seq) {
                    newest = Some(newest.map_or(seq, |n| n.max(seq)));
                }
            }
        }
        let echo = self
            .meter
            .on_echo(now, *echo_sent_us, *echo_recv_us, *received);
        // A round trip from the echoed transmission (unambiguous, retransmissions too); else, as
        // Karn, only from a packet sent once.
        let sample = match echo {
            Some(e) => Some(now.saturating_sub(Duration::from_micros(e.sent_us))),
            None => newest
                .filter(|&s| !self.retransmitted.get(s))
                .map(|s| now.saturating_sub(self.last_sent[s as usize])),
        };
        if let Some(sample) = sample {
            let diff = self.srtt.abs_diff(sample);
            self.rttvar = (self.rttvar * 3 + diff) / 4;
            self.srtt = (self.srtt * 7 + sample) / 8;
        }
        let arrival = echo.and_then(|e| e.arrival);
        let feedback = Feedback {
            queue: Duration::from_micros(u64::from(*queue_us)),
            arrival_bps: arrival.map_or(0, |a| a.bits_per_sec),
            loss: arrival.map_or(0.0, |a| a.loss),
        };
        self.control.on_feedback(now, feedback, self.srtt);
    }

    fn mark(&mut self, seq: u32) -> bool {
        if self.acked.get(seq) {
            return false;
        }
        self.acked.set(seq);
        self.acked_count += 1;
        true
    }
}
