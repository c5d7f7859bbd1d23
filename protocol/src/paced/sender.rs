//! [`PacedSender`]: which packet goes out next, and when.
//!
//! Packets leave at the rate the receiver asked for, counted in IP bytes (payload, the 4-byte
//! number, the tag and the UDP/IP headers), so the link's queue neither empties nor overflows. A packet
//! not acknowledged one retransmission timeout after it was sent is sent again, oldest first, ahead
//! of new data. Loss is not taken as congestion: the sender keeps its rate through random loss and
//! through an outage (where it sends into the void, so the link is full again the moment it
//! returns). One safety remains: when acknowledgements arrive but say that less than 3/4 of what
//! was sent got through, second after second, the rate drops to what got through (a rate set
//! above the real link's); it climbs back by 5 % a second once loss is under 10 %.

use std::collections::VecDeque;
use std::time::Duration;

use super::{packet_count, packet_len, Bits};

/// How far pacing may catch up after the caller woke late.
const MAX_BURST: Duration = Duration::from_millis(10);
/// Added to the round trip: the receiver acknowledges every ~40 ms, plus timer slack.
const ACK_ALLOWANCE: Duration = Duration::from_millis(80);
const MIN_RTO: Duration = Duration::from_millis(200);
/// The rate never drops below this (bits per second).
const MIN_RATE: u64 = 32_000;
const RATE_WINDOW: Duration = Duration::from_secs(1);

/// What to do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SenderPoll {
    /// Send this packet now.
    Send(u32),
    /// Nothing to send before this time (or before an acknowledgement arrives).
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
    pub srtt_ms: u64,
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
    requested_bps: u64,
    /// The safety limit; `u64::MAX` when not limiting.
    limit_bps: u64,
    next_at: Duration,
    srtt: Duration,
    rttvar: Duration,
    window_start: Duration,
    window_sent: u64,
    window_acked: u64,
    bad_windows: u32,
    last_ack: Option<Duration>,
    stats: SenderStats,
}

impl PacedSender {
    /// A session of `total` bytes in packets of `payload` bytes, paced at `rate_bps`, with
    /// `overhead` header bytes per datagram and a first round-trip guess (the connection's ping).
    pub fn new(total: u64, payload: u16, rate_bps: u64, overhead: u32, rtt: Duration) -> Self {
        let payload = u32::from(payload.max(1));
        let packets = packet_count(total, payload);
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
            requested_bps: rate_bps.max(MIN_RATE),
            limit_bps: u64::MAX,
            next_at: Duration::ZERO,
            srtt: rtt,
            rttvar: rtt / 2,
            window_start: Duration::ZERO,
            window_sent: 0,
            window_acked: 0,
            bad_windows: 0,
            last_ack: None,
            stats: SenderStats {
                packets,
                ..SenderStats::default()
            },
        }
    }

    pub fn packets(&self) -> u32 {
        self.packets
    }

    /// Byte offset and length of packet `seq` in the session's byte stream.
    pub fn span(&self, seq: u32) -> (u64, usize) {
        (
            u64::from(seq) * u64::from(self.payload),
            packet_len(self.total, self.payload, seq),
        )
    }

    pub fn rate_bps(&self) -> u64 {
        self.requested_bps.min(self.limit_bps)
    }

    pub fn is_done(&self) -> bool {
        self.acked_count == self.packets
    }

    /// When the last acknowledgement arrived.
    pub fn last_ack(&self) -> Option<Duration> {
        self.last_ack
    }

    pub fn stats(&self) -> SenderStats {
        SenderStats {
            acked: self.acked_count,
            rate_bps: self.rate_bps(),
            srtt_ms: self.srtt.as_millis() as u64,
            ..self.stats.clone()
        }
    }

    fn rto(&self) -> Duration {
        (self.srtt + (self.rttvar * 4).max(Duration::from_millis(20)) + ACK_ALLOWANCE).max(MIN_RTO)
    }

    pub fn poll(&mut self, now: Duration) -> SenderPoll {
        if self.is_done() {
            return SenderPoll::Done;
        }
        self.rate_tick(now);
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
        if let Some(&(seq, at)) = self.log.front() {
            if at + rto <= now {
                self.log.pop_front();
                self.retransmitted.set(seq);
                self.stats.retransmitted += 1;
                return self.sent(seq, now);
            }
        }
        if self.next_new < self.packets {
            let seq = self.next_new;
            self.next_new += 1;
            return self.sent(seq, now);
        }
        match self.log.front() {
            Some(&(_, at)) => SenderPoll::Wait(at + rto),
            None => SenderPoll::Wait(now + rto),
        }
    }

    fn sent(&mut self, seq: u32, now: Duration) -> SenderPoll {
        self.last_sent[seq as usize] = now;
        self.log.push_back((seq, now));
        self.stats.sent += 1;
        self.window_sent += 1;
        let wire = packet_len(self.total, self.payload, seq) as u64
            + super::SEAL_OVERHEAD as u64
            + u64::from(self.overhead);
        let nanos = u128::from(wire * 8) * 1_000_000_000 / u128::from(self.rate_bps().max(1));
        let gap = Duration::from_nanos(nanos.min(u128::from(u64::MAX)) as u64);
        self.next_at = self.next_at.max(now.saturating_sub(MAX_BURST)) + gap;
        SenderPoll::Send(seq)
    }

    /// An acknowledgement: every packet before `cumulative` and those in `ranges` arrived; the
    /// receiver now wants `rate_bps`. Parts past the last packet are ignored.
    pub fn on_ack(&mut self, now: Duration, rate_bps: u64, cumulative: u32, ranges: &[(u32, u32)]) {
        self.last_ack = Some(now);
        self.requested_bps = rate_bps.max(MIN_RATE);
        let mut newest: Option<u32> = None;
        let cumulative = cumulative.min(self.packets);
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
        // Karn: a round trip only from a packet sent once.
        if let Some(seq) = newest.filter(|&s| !self.retransmitted.get(s)) {
            let sample = now.saturating_sub(self.last_sent[seq as usize]);
            let diff = self.srtt.abs_diff(sample);
            self.rttvar = (self.rttvar * 3 + diff) / 4;
            self.srtt = (self.srtt * 7 + sample) / 8;
        }
    }

    fn mark(&mut self, seq: u32) -> bool {
        if self.acked.get(seq) {
            return false;
        }
        self.acked.set(seq);
        self.acked_count += 1;
        self.window_acked += 1;
        true
    }

    /// Once a second: the safety limit (see the module's description).
    fn rate_tick(&mut self, now: Duration) {
        if now < self.window_start + RATE_WINDOW {
            return;
        }
        let acks_came = self
            .last_ack
            .is_some_and(|a| a >= self.window_start && self.window_acked > 0);
        if acks_came && self.window_sent >= 20 {
            let delivered = self.window_acked as f64 / self.window_sent as f64;
            if delivered < 0.75 {
                self.bad_windows += 1;
                if self.bad_windows >= 3 {
                    let got = (self.rate_bps() as f64 * delivered * 1.05) as u64;
                    self.limit_bps = got.max(MIN_RATE);
                    self.bad_windows = 0;
                }
            } else {
                self.bad_windows = 0;
                if delivered >= 0.9 && self.limit_bps != u64::MAX {
                    let up = self.limit_bps.saturating_add(self.limit_bps / 20);
                    self.limit_bps = if up >= self.requested_bps {
                        u64::MAX
                    } else {
                        up
                    };
                }
            }
        }
        self.window_start = now;
        self.window_sent = 0;
        self.window_acked = 0;
    }
}
