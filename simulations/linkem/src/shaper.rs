//! [`Shaper`]: what a link does to one direction of traffic, sans-IO. Given a packet's arrival
//! time and size it says when the packet leaves the far end, or why it is dropped:
//!
//! - **rate**: packets are serialised one after another at `rate_bps` (IP bytes × 8);
//! - **queue**: a drop-tail queue of `queue_bytes` in front of the serialiser;
//! - **delay + jitter**: one-way propagation `delay` plus a uniform `0..=jitter`, never reordering
//!   (a later packet never arrives before an earlier one, as on a real single path);
//! - **loss**: each packet that was serialised is lost with probability `loss` (it still used its
//!   link time, as a packet corrupted in flight does);
//! - **outages**: a packet that arrives or would be on the link during an outage is dropped;
//! - **rate changes** ([`RateChange`], optional): from a given time on the link serialises at
//!   another rate (rain fade, a shared beam), until the next change.
//!
//! The clock is passed in, so tests and the forwarder drive the same code.

use std::time::Duration;

/// A window of time during which the link carries nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outage {
    pub from: Duration,
    pub to: Duration,
}

impl Outage {
    fn covers(&self, t: Duration) -> bool {
        self.from <= t && t < self.to
    }
}

/// From `at` (from the link's start) on, the link serialises at `rate_bps`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateChange {
    pub at: Duration,
    pub rate_bps: u64,
}

/// Checks a list of rate changes: each rate positive, times strictly increasing.
pub fn validate_rate_changes(changes: &[RateChange]) -> Result<(), String> {
    if let Some(c) = changes.iter().find(|c| c.rate_bps == 0) {
        return Err(format!("the rate from {:?} must be positive", c.at));
    }
    if let Some(w) = changes.windows(2).find(|w| w[1].at <= w[0].at) {
        return Err(format!(
            "rate changes out of order: {:?} after {:?} (list them in time order, one per time)",
            w[1].at, w[0].at
        ));
    }
    Ok(())
}

/// The rate in force at `t`: the last change at or before `t`, else `base_bps`.
pub fn rate_at(base_bps: u64, changes: &[RateChange], t: Duration) -> u64 {
    changes
        .iter()
        .take_while(|c| c.at <= t)
        .last()
        .map_or(base_bps, |c| c.rate_bps)
}

/// One direction of an emulated link.
#[derive(Debug, Clone, PartialEq)]
pub struct LinkSpec {
    pub rate_bps: u64,
    pub delay: Duration,
    pub jitter: Duration,
    /// Probability in [0, 1].
    pub loss: f64,
    pub queue_bytes: u64,
    pub outages: Vec<Outage>,
}

impl LinkSpec {
    /// A satellite link: 1 Mbps, 300 ms each way, a queue of one second of traffic.
    pub fn satellite() -> Self {
        LinkSpec {
            rate_bps: 1_000_000,
            delay: Duration::from_millis(300),
            jitter: Duration::ZERO,
            loss: 0.0,
            queue_bytes: 125_000,
            outages: Vec::new(),
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.rate_bps == 0 {
            return Err("rate must be positive".into());
        }
        if !(0.0..=1.0).contains(&self.loss) {
            return Err(format!("loss {} is not a probability", self.loss));
        }
        if self.queue_bytes < 1500 {
            return Err("queue must hold at least one 1500-byte packet".into());
        }
        if let Some(o) = self.outages.iter().find(|o| o.to <= o.from) {
            return Err(format!("outage {:?}..{:?} is empty", o.from, o.to));
        }
        Ok(())
    }
}

/// What happens to a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Leaves the far end at this time.
    Deliver(Duration),
    QueueFull,
    Lost,
    Outage,
}

/// The state of one direction.
#[derive(Debug, Clone)]
pub struct Shaper {
    spec: LinkSpec,
    rate_changes: Vec<RateChange>,
    busy_until: Duration,
    last_delivery: Duration,
    rng: u64,
}

impl Shaper {
    pub fn new(spec: LinkSpec, seed: u64) -> Self {
        Shaper {
            spec,
            rate_changes: Vec::new(),
            busy_until: Duration::ZERO,
            last_delivery: Duration::ZERO,
            // xorshift64* must not start at zero.
            rng: seed | 1,
        }
    }

    /// The same, with the rate changing over time (see [`validate_rate_changes`]).
    pub fn with_rate_changes(
        spec: LinkSpec,
        rate_changes: Vec<RateChange>,
        seed: u64,
    ) -> Result<Self, String> {
        validate_rate_changes(&rate_changes)?;
        let mut s = Shaper::new(spec, seed);
        s.rate_changes = rate_changes;
        Ok(s)
    }

    pub fn spec(&self) -> &LinkSpec {
        &self.spec
    }

    /// The rate in force at `t`.
    pub fn rate_bps_at(&self, t: Duration) -> u64 {
        rate_at(self.spec.rate_bps, &self.rate_changes, t)
    }

    fn next_unit(&mut self) -> f64 {
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        let x = self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d);
        (x >> 11) as f64 / (1u64 << 53) as f64
    }

    fn in_outage(&self, t: Duration) -> bool {
        self.spec.outages.iter().any(|o| o.covers(t))
    }

    /// Offers a packet of `len` IP bytes arriving at `now`.
    pub fn offer(&mut self, now: Duration, len: usize) -> Verdict {
        if self.in_outage(now) {
            return Verdict::Outage;
        }
        let start = self.busy_until.max(now);
        // The backlog drains at today's rate; this packet goes out at the rate in force when its
        // serialisation starts (a validated rate is never zero).
        let backlog =
            (start - now).as_nanos() * u128::from(self.rate_bps_at(now)) / 8 / 1_000_000_000;
        if backlog + len as u128 > u128::from(self.spec.queue_bytes) {
            return Verdict::QueueFull;
        }
        let rate = u128::from(self.rate_bps_at(start).max(1));
        let tx_ns = (len as u128 * 8 * 1_000_000_000).div_ceil(rate);
        self.busy_until = start + Duration::from_nanos(u64::try_from(tx_ns).unwrap_or(u64::MAX));
        if self.spec.loss > 0.0 && self.next_unit() < self.spec.loss {
            return Verdict::Lost;
        }
        if self.in_outage(self.busy_until) {
            return Verdict::Outage;
        }
        let jitter = if self.spec.jitter.is_zero() {
            Duration::ZERO
        } else {
            self.spec.jitter.mul_f64(self.next_unit())
        };
        let at = (self.busy_until + self.spec.delay + jitter).max(self.last_delivery);
        self.last_delivery = at;
        Verdict::Deliver(at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(rate: u64) -> LinkSpec {
        LinkSpec {
            rate_bps: rate,
            delay: Duration::from_millis(300),
            jitter: Duration::ZERO,
            loss: 0.0,
            queue_bytes: 1 << 20,
            outages: Vec::new(),
        }
    }

    #[test]
    fn serialises_at_the_rate_plus_delay() {
        let mut s = Shaper::new(spec(1_000_000), 1);
        // 100 packets of 1250 bytes at once: 10 ms each at 1 Mbps.
        let mut last = Duration::ZERO;
        for _ in 0..100 {
            match s.offer(Duration::ZERO, 1250) {
                Verdict::Deliver(at) => last = at,
                v => panic!("{v:?}"),
            }
        }
        assert_eq!(last, Duration::from_millis(1000 + 300));
    }

    #[test]
    fn drop_tail_queue() {
        let mut sp = spec(1_000_000);
        sp.queue_bytes = 5000;
        let mut s = Shaper::new(sp, 1);
        let verdicts: Vec<_> = (0..6).map(|_| s.offer(Duration::ZERO, 1250)).collect();
        assert!(matches!(verdicts[3], Verdict::Deliver(_)));
        assert_eq!(verdicts[4], Verdict::QueueFull);
        // Once the queue drains, packets pass again.
        assert!(matches!(
            s.offer(Duration::from_millis(50), 1250),
            Verdict::Deliver(_)
        ));
    }

    #[test]
    fn loss_rate_is_close_to_the_setting() {
        let mut sp = spec(1_000_000_000);
        sp.loss = 0.02;
        let mut s = Shaper::new(sp, 7);
        let n = 100_000;
        let lost = (0..n)
            .filter(|i| s.offer(Duration::from_micros(*i), 100) == Verdict::Lost)
            .count();
        // ±5σ of a binomial(n, 0.02).
        let sigma = (n as f64 * 0.02 * 0.98).sqrt();
        assert!((lost as f64 - 2000.0).abs() < 5.0 * sigma, "{lost}");
    }

    #[test]
    fn outage_drops_and_then_recovers() {
        let mut sp = spec(1_000_000);
        sp.outages = vec![Outage {
            from: Duration::from_secs(10),
            to: Duration::from_secs(40),
        }];
        let mut s = Shaper::new(sp, 1);
        assert!(matches!(
            s.offer(Duration::from_secs(5), 100),
            Verdict::Deliver(_)
        ));
        assert_eq!(s.offer(Duration::from_secs(20), 100), Verdict::Outage);
        assert!(matches!(
            s.offer(Duration::from_secs(41), 100),
            Verdict::Deliver(_)
        ));
    }

    #[test]
    fn jitter_never_reorders() {
        let mut sp = spec(100_000_000);
        sp.jitter = Duration::from_millis(50);
        let mut s = Shaper::new(sp, 3);
        let mut prev = Duration::ZERO;
        for i in 0..10_000u64 {
            if let Verdict::Deliver(at) = s.offer(Duration::from_micros(i * 10), 1000) {
                assert!(at >= prev);
                prev = at;
            }
        }
    }

    #[test]
    fn rate_changes_take_effect_at_their_time_and_recover() {
        let ch = |at, rate_bps| RateChange {
            at: Duration::from_secs(at),
            rate_bps,
        };
        let mut s =
            Shaper::with_rate_changes(spec(1_000_000), vec![ch(10, 500_000), ch(20, 1_000_000)], 1)
                .unwrap();
        // Delivery time of one 1250-byte packet offered to an idle link at `at`, minus the delay.
        let mut serialised = |at: Duration| match s.offer(at, 1250) {
            Verdict::Deliver(d) => d - at - Duration::from_millis(300),
            v => panic!("{v:?}"),
        };
        assert_eq!(
            serialised(Duration::from_secs(5)),
            Duration::from_millis(10)
        );
        assert_eq!(
            serialised(Duration::from_secs(15)),
            Duration::from_millis(20)
        );
        assert_eq!(
            serialised(Duration::from_secs(25)),
            Duration::from_millis(10)
        );
        // A second of back-to-back packets at half rate carries half as many.
        let mut s = Shaper::with_rate_changes(spec(1_000_000), vec![ch(10, 500_000)], 1).unwrap();
        let t0 = Duration::from_secs(10);
        let delivered = (0..200)
            .filter(|_| matches!(s.offer(t0, 1250), Verdict::Deliver(at) if at <= t0 + Duration::from_millis(1300)))
            .count();
        assert_eq!(delivered, 50);
    }

    #[test]
    fn rate_changes_are_checked() {
        let ch = |at, rate_bps| RateChange {
            at: Duration::from_secs(at),
            rate_bps,
        };
        assert!(validate_rate_changes(&[ch(1, 5), ch(2, 6)]).is_ok());
        assert!(validate_rate_changes(&[ch(2, 5), ch(1, 6)]).is_err());
        assert!(validate_rate_changes(&[ch(2, 5), ch(2, 6)]).is_err());
        assert!(validate_rate_changes(&[ch(2, 0)]).is_err());
        assert!(Shaper::with_rate_changes(spec(1), vec![ch(1, 0)], 1).is_err());
        assert_eq!(rate_at(7, &[ch(1, 5), ch(2, 6)], Duration::ZERO), 7);
        assert_eq!(rate_at(7, &[ch(1, 5), ch(2, 6)], Duration::from_secs(1)), 5);
        assert_eq!(rate_at(7, &[ch(1, 5), ch(2, 6)], Duration::from_secs(9)), 6);
    }

    #[test]
    fn validation() {
        assert!(spec(1).validate().is_ok());
        assert!(spec(0).validate().is_err());
        let mut sp = spec(1);
        sp.loss = 1.5;
        assert!(sp.validate().is_err());
    }
}
