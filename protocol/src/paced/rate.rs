//! [`RateControl`]: the sender's pacing rate, found from the receiver's measurements
//! ([`super::LinkGauge`]) rather than told.
//!
//! The signal is **queueing delay**, not loss: on a satellite link loss is mostly corruption and
//! says nothing about the rate, while a sender above the link's rate builds a queue in front of it,
//! and the one-way delay grows with that queue whatever the loss. While a queue stands, the rate at
//! which transmissions arrive (lost ones counted) is the link's rate: that is the estimate
//! (`bottleneck`).
//!
//! - **Start**: with a stated rate (`--link-rate`) the sender starts at it; without one it sends a
//!   first burst of [`START_BURST`] packets (the link spreads them out, and the receiver's first
//!   acknowledgement measures the spread: the link's rate, one round trip in) and paces from a
//!   low rate that doubles every round trip until a queue appears.
//! - **Track**: the rate is the bottleneck estimate corrected by how far the queue is from a small
//!   target (`rate = bottleneck × (1 + G·(target − queue)/rtt)`, bounded): the link stays busy with
//!   a short standing queue, and a queue that grows (the link slowed: rain fade, a shared beam)
//!   brings the rate down within a round trip.
//! - **Probe**: when the queue stays empty for whole round trips while the sender had data to
//!   send, the link has room: the rate climbs by a quarter, then more each round trip, until a
//!   queue appears again (the link got faster).
//!
//! Never above the ceiling (the stated rate, or the sender's own cap), never below [`MIN_RATE`].
//! Silence (an outage) changes nothing: no feedback, no change.

use std::time::Duration;

/// The rate never drops below this (bits per second).
pub(crate) const MIN_RATE: u64 = 32_000;
/// Packets sent at once at the start of a session without a stated rate (as TCP's initial window).
pub(crate) const START_BURST: u32 = 10;
/// The queue the rate aims to keep: at least this, or two packets' link time.
const QUEUE_TARGET_MIN: Duration = Duration::from_millis(15);
/// A queue above this (or one packet's link time) means the link is saturated.
const QUEUE_BUSY_MIN: Duration = Duration::from_millis(4);
/// The proportional gain on the queue's distance from its target, per round trip.
const GAIN: f64 = 0.5;
/// Bounds of the tracking correction.
const TRACK_LOW: f64 = 0.7;
const TRACK_HIGH: f64 = 1.1;
/// Growth per quiet round trip while probing, and its most.
const PROBE_STEP: f64 = 1.25;
const PROBE_MAX: f64 = 2.0;
/// Rounds are at least this long (acks come every 40 ms).
const MIN_ROUND: Duration = Duration::from_millis(80);
/// Loss this much above the random loss seen without a queue means drops before the link.
const OVERFLOW_LOSS: f64 = 0.2;

/// What one acknowledgement says about the link.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Feedback {
    pub queue: Duration,
    /// Bits per second; 0 = not known.
    pub arrival_bps: u64,
    /// Share of transmissions lost lately.
    pub loss: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Doubling every round until a queue appears.
    Startup,
    Track,
}

#[derive(Debug, Clone)]
pub(crate) struct RateControl {
    ceiling: u64,
    rate: u64,
    /// The link's rate as measured; 0 = not known yet.
    bottleneck: u64,
    mode: Mode,
    /// IP bits of a full packet.
    packet_bits: u64,
    round_start: Duration,
    /// This round saw a queue, and the sender ran out of data to send in it.
    round_busy: bool,
    round_limited: bool,
    /// Rounds in a row with no queue while the sender had data.
    quiet_rounds: u32,
    /// The share of transmissions lost when no queue stood (random loss).
    random_loss: f64,
}

impl RateControl {
    /// A controller starting at `stated` (bits/s) when the receiver stated its link's rate, else
    /// from a low rate; never above `ceiling`. `packet_bits`: IP bits of a full packet; `rtt`: a
    /// first round-trip guess.
    pub fn new(stated: Option<u64>, ceiling: u64, packet_bits: u64, rtt: Duration) -> Self {
        let ceiling = ceiling.max(MIN_RATE);
        let (rate, mode) = match stated {
            Some(r) => (r.clamp(MIN_RATE, ceiling), Mode::Track),
            None => {
                // The burst's worth per round trip.
                let per_rtt = u128::from(packet_bits) * u128::from(START_BURST) * 1_000_000
                    / rtt.max(MIN_ROUND).as_micros().max(1);
                ((per_rtt as u64).clamp(MIN_RATE, ceiling), Mode::Startup)
            }
        };
        RateControl {
            ceiling,
            rate,
            bottleneck: if stated.is_some() { rate } else { 0 },
            mode,
            packet_bits: packet_bits.max(8),
            round_start: Duration::ZERO,
            round_busy: false,
            round_limited: false,
            quiet_rounds: 0,
            random_loss: 0.0,
        }
    }

    pub fn rate(&self) -> u64 {
        self.rate
    }

    pub fn bottleneck(&self) -> u64 {
        self.bottleneck
    }

    /// Tracks from `bottleneck_bps` at once: the link's rate as an earlier session to the same
    /// receiver found it moments ago (no first burst, no start-up).
    pub fn resume(&mut self, bottleneck_bps: u64) {
        self.bottleneck = bottleneck_bps.clamp(MIN_RATE, self.ceiling);
        self.rate = self.bottleneck;
        self.mode = Mode::Track;
    }

    /// The link's rate once found (tracking), `None` while starting up.
    pub fn found(&self) -> Option<u64> {
        (self.mode == Mode::Track && self.bottleneck > 0).then_some(self.bottleneck)
    }

    /// In start-up, the most bits that may be in flight (sent, not yet acknowledged): the first
    /// burst until a rate is measured, then twice what the measured rate carries in a round trip
    /// (so a start from nothing never floods a slow link while its feedback is on the way).
    /// `None` once the rate is found.
    pub fn startup_inflight_bits(&self, srtt: Duration) -> Option<u64> {
        if self.mode != Mode::Startup {
            return None;
        }
        let burst = self.packet_bits * u64::from(START_BURST);
        let bdp = (u128::from(self.bottleneck) * srtt.as_micros() / 1_000_000) as u64;
        Some(burst.max(bdp.saturating_mul(2)))
    }

    /// The ceiling now: the receiver's stated rate share, or the sender's cap.
    pub fn set_ceiling(&mut self, ceiling: u64) {
        self.ceiling = ceiling.max(MIN_RATE);
        self.rate = self.rate.min(self.ceiling);
    }

    /// The sender had nothing to send (everything out, waiting for acknowledgements).
    pub fn on_idle(&mut self) {
        self.round_limited = true;
    }

    /// Link time of one packet at `rate`.
    fn packet_time(&self, rate: u64) -> Duration {
        Duration::from_micros(self.packet_bits * 1_000_000 / rate.max(1))
    }

    fn queue_target(&self) -> Duration {
        let at = self.bottleneck.max(MIN_RATE);
        QUEUE_TARGET_MIN.max(self.packet_time(at) * 2)
    }

    /// A queue above this means the link is saturated: a packet's link time at the fastest
    /// rate known (a queue of one packet is no queue), and at least [`QUEUE_BUSY_MIN`].
    fn queue_busy(&self, arrival_bps: u64) -> Duration {
        let at = self.bottleneck.max(self.rate).max(arrival_bps);
        QUEUE_BUSY_MIN.max(self.packet_time(at))
    }

    /// An acknowledgement's measurements, at `now`, with the smoothed round trip `srtt`.
    pub fn on_feedback(&mut self, now: Duration, f: Feedback, srtt: Duration) {
        // Loss well above the random loss seen without a queue: a queue overflowing (or a
        // policer dropping): the link is full.
        let overflow = f.arrival_bps > 0 && f.loss > self.random_loss + OVERFLOW_LOSS;
        let queued = f.queue > self.queue_busy(f.arrival_bps);
        let busy = queued || overflow;
        if f.arrival_bps > 0 {
            if busy {
                // Transmissions arrive at the link's rate; when some were dropped before the
                // link, only what got through (and the random share) used it.
                let sample = if overflow {
                    (f.arrival_bps as f64 * (1.0 - f.loss) / (1.0 - self.random_loss).max(0.5))
                        as u64
                } else {
                    f.arrival_bps
                };
                self.bottleneck = if self.bottleneck == 0 || sample < self.bottleneck {
                    sample
                } else {
                    (self.bottleneck + sample) / 2
                };
            } else {
                // The link carries at least what arrives.
                self.bottleneck = self.bottleneck.max(f.arrival_bps);
            }
            if !queued {
                self.random_loss = 0.9 * self.random_loss + 0.1 * f.loss.clamp(0.0, 0.5);
            }
        }
        if busy && self.mode == Mode::Startup && self.bottleneck > 0 {
            self.mode = Mode::Track;
        }
        self.round_busy |= busy;
        if now >= self.round_start + srtt.max(MIN_ROUND) {
            self.end_round(now);
        }
        self.set_rate(f.queue, srtt);
    }

    fn end_round(&mut self, now: Duration) {
        if self.round_busy {
            self.quiet_rounds = 0;
        } else if !self.round_limited {
            self.quiet_rounds += 1;
        }
        self.round_start = now;
        self.round_busy = false;
        self.round_limited = false;
    }

    fn set_rate(&mut self, queue: Duration, srtt: Duration) {
        if self.mode == Mode::Startup {
            // Twice what arrives (which is what was sent a round trip ago): doubling every
            // round trip until a queue appears.
            self.rate = self
                .rate
                .max(self.bottleneck.saturating_mul(2))
                .min(self.ceiling);
            return;
        }
        let rtt = srtt.max(MIN_ROUND).as_secs_f64();
        let target = self.queue_target().as_secs_f64();
        let track =
            (1.0 + GAIN * (target - queue.as_secs_f64()) / rtt).clamp(TRACK_LOW, TRACK_HIGH);
        // Quiet rounds while there was data to send: the link has room; climb.
        let gain = if self.quiet_rounds >= 2 {
            PROBE_STEP
                .powi(self.quiet_rounds as i32 - 1)
                .min(PROBE_MAX)
                .max(track)
        } else {
            track
        };
        let base = self.bottleneck.max(MIN_RATE) as f64;
        self.rate = ((base * gain) as u64).clamp(MIN_RATE, self.ceiling);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PKT: u64 = 1496 * 8;

    fn fb(queue_ms: u64, arrival_bps: u64) -> Feedback {
        Feedback {
            queue: Duration::from_millis(queue_ms),
            arrival_bps,
            loss: 0.0,
        }
    }

    #[test]
    fn a_stated_rate_is_the_start_and_the_ceiling() {
        // The sender's ceiling is the stated rate (or its cap, if lower).
        let mut c = RateControl::new(Some(1_000_000), 1_000_000, PKT, Duration::from_millis(600));
        assert_eq!(c.rate(), 1_000_000);
        // No queue for many rounds: it may not climb past what was stated.
        for i in 0..100 {
            c.on_feedback(
                Duration::from_millis(i * 100),
                fb(0, 1_000_000),
                Duration::from_millis(600),
            );
        }
        assert!(c.rate() <= 1_000_000);
        // Without a stated rate it starts low and only the first burst goes out unmeasured.
        let c = RateControl::new(None, 100_000_000, PKT, Duration::from_millis(600));
        assert!(c.rate() < 1_000_000);
        assert_eq!(
            c.startup_inflight_bits(Duration::from_millis(600)),
            Some(PKT * u64::from(START_BURST))
        );
    }

    #[test]
    fn a_rate_that_rises_is_found_within_a_few_round_trips() {
        // Tracking a 1 Mbit/s link; then the queue empties and what was sent all arrives (the
        // link doubled): the rate climbs each round trip until a queue stands again.
        let rtt = Duration::from_millis(600);
        let mut c = RateControl::new(Some(1_000_000), 100_000_000, PKT, rtt);
        let mut t = Duration::ZERO;
        for _ in 0..50 {
            t += Duration::from_millis(40);
            c.on_feedback(t, fb(15, 1_000_000), rtt);
        }
        let start = t;
        while c.rate() < 2_000_000 {
            t += Duration::from_millis(40);
            // What arrives is what was sent a round trip ago, no queue (the link is faster).
            let sent = c.rate();
            c.on_feedback(t, fb(0, sent), rtt);
            assert!(t - start < rtt * 8, "{c:?}");
        }
    }

    #[test]
    fn a_queue_brings_the_rate_to_the_arrival_rate_at_once() {
        let mut c = RateControl::new(
            Some(2_000_000),
            100_000_000,
            PKT,
            Duration::from_millis(600),
        );
        c.on_feedback(
            Duration::from_millis(700),
            fb(200, 1_000_000),
            Duration::from_millis(600),
        );
        assert!(c.bottleneck() == 1_000_000, "{c:?}");
        assert!(c.rate() < 1_000_000, "draining: {}", c.rate());
    }

    #[test]
    fn random_loss_does_not_lower_the_rate() {
        let mut c = RateControl::new(
            Some(1_000_000),
            100_000_000,
            PKT,
            Duration::from_millis(600),
        );
        for i in 0..200 {
            let f = Feedback {
                queue: Duration::from_millis(15),
                arrival_bps: 1_000_000,
                loss: 0.05,
            };
            c.on_feedback(Duration::from_millis(i * 40), f, Duration::from_millis(615));
        }
        assert!(c.rate() >= 990_000, "{}", c.rate());
    }
}
