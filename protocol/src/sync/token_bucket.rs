//! A token bucket: a bandwidth cap (`--max-rate`, upload and download alike) that allows a burst.
//!
//! Tokens are bytes. The bucket holds at most `burst` tokens and gains `rate` per second. Taking `n`
//! bytes succeeds when `n` tokens are there; otherwise the caller learns how long to wait. Time is a
//! caller-supplied monotonic [`Duration`] since any fixed origin, so tests and simulations use fake
//! time. Arithmetic is integer (nanosecond-exact, saturating): no float drift over long runs.

use std::time::Duration;

const NANOS_PER_SEC: u128 = 1_000_000_000;

/// Why a bucket cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenBucketError {
    #[error("rate must be at least 1 byte/s")]
    ZeroRate,
    #[error("burst must be at least 1 byte")]
    ZeroBurst,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenBucket {
    rate: u64,
    burst: u64,
    /// Tokens scaled by 10⁹ (byte-nanoseconds per second), so refills are exact.
    scaled: u128,
    last: Duration,
}

impl TokenBucket {
    /// A full bucket of `burst` bytes refilling at `rate` bytes per second, as of `now`.
    pub fn new(rate: u64, burst: u64, now: Duration) -> Result<Self, TokenBucketError> {
        if rate == 0 {
            return Err(TokenBucketError::ZeroRate);
        }
        if burst == 0 {
            return Err(TokenBucketError::ZeroBurst);
        }
        Ok(TokenBucket {
            rate,
            burst,
            scaled: u128::from(burst) * NANOS_PER_SEC,
            last: now,
        })
    }

    pub fn rate(&self) -> u64 {
        self.rate
    }

    pub fn burst(&self) -> u64 {
        self.burst
    }

    fn refill(&mut self, now: Duration) {
        // Time going backwards (a caller bug or a clock step) adds nothing and is not remembered.
        if now > self.last {
            let dt = (now - self.last).as_nanos();
            let add = dt.saturating_mul(u128::from(self.rate));
            let cap = u128::from(self.burst) * NANOS_PER_SEC;
            self.scaled = self.scaled.saturating_add(add).min(cap);
            self.last = now;
        }
    }

    /// Whole bytes available at `now`.
    pub fn available(&mut self, now: Duration) -> u64 {
        self.refill(now);
        u64::try_from(self.scaled / NANOS_PER_SEC).unwrap_or(u64::MAX)
    }

    /// Takes `bytes` tokens if they are there. A request larger than `burst` can never be granted
    /// whole: callers split it (or use [`Self::take_up_to`]).
    pub fn try_take(&mut self, now: Duration, bytes: u64) -> bool {
        self.refill(now);
        let need = u128::from(bytes) * NANOS_PER_SEC;
        if need <= self.scaled {
            self.scaled -= need;
            true
        } else {
            false
        }
    }

    /// Takes as many tokens as are there, up to `bytes`, and returns how many.
    pub fn take_up_to(&mut self, now: Duration, bytes: u64) -> u64 {
        let n = self.available(now).min(bytes);
        self.scaled -= u128::from(n) * NANOS_PER_SEC;
        n
    }

    /// How long from `now` until `bytes` tokens are there (zero if they already are); `None` when
    /// `bytes` exceeds the burst and so never will be.
    pub fn time_until(&mut self, now: Duration, bytes: u64) -> Option<Duration> {
        if bytes > self.burst {
            return None;
        }
        self.refill(now);
        let need = u128::from(bytes) * NANOS_PER_SEC;
        let missing = need.saturating_sub(self.scaled);
        // Round up: waiting the returned time always suffices.
        let nanos = missing.div_ceil(u128::from(self.rate));
        Some(Duration::from_nanos(
            u64::try_from(nanos).unwrap_or(u64::MAX),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn burst_then_rate() {
        // 1 Mbps = 125,000 bytes/s, 64 KiB burst.
        let mut b = TokenBucket::new(125_000, 65_536, ms(0)).unwrap();
        assert!(b.try_take(ms(0), 65_536));
        assert!(!b.try_take(ms(0), 1));
        assert_eq!(b.time_until(ms(0), 12_500), Some(ms(100)));
        assert!(!b.try_take(ms(99), 12_500));
        assert!(b.try_take(ms(100), 12_500));
        // Refill stops at the burst.
        assert_eq!(b.available(ms(100_000)), 65_536);
        assert_eq!(b.time_until(ms(100_000), 65_537), None);
        assert_eq!(b.take_up_to(ms(100_000), 1_000_000), 65_536);
    }

    #[test]
    fn bad_parameters_and_time_going_backwards() {
        assert_eq!(
            TokenBucket::new(0, 1, ms(0)),
            Err(TokenBucketError::ZeroRate)
        );
        assert_eq!(
            TokenBucket::new(1, 0, ms(0)),
            Err(TokenBucketError::ZeroBurst)
        );
        let mut b = TokenBucket::new(1000, 1000, ms(10_000)).unwrap();
        assert!(b.try_take(ms(10_000), 1000));
        assert_eq!(b.available(ms(5_000)), 0);
        assert_eq!(b.available(ms(10_500)), 500);
        // Extreme values saturate instead of overflowing.
        let mut b = TokenBucket::new(u64::MAX, u64::MAX, ms(0)).unwrap();
        assert!(b.try_take(Duration::MAX, u64::MAX));
    }

    proptest! {
        /// Over any schedule of requests, the bytes granted never exceed burst + rate × elapsed
        /// time, and a bucket drained to empty grants nothing until time passes.
        #[test]
        fn never_exceeds_the_rate(
            rate in 1u64..10_000_000,
            burst in 1u64..1_000_000,
            steps in prop::collection::vec((0u64..50_000_000, 0u64..2_000_000), 1..200),
        ) {
            let mut b = TokenBucket::new(rate, burst, Duration::ZERO).unwrap();
            let mut now = Duration::ZERO;
            let mut granted: u128 = 0;
            for (dt_ns, want) in steps {
                now += Duration::from_nanos(dt_ns);
                if b.try_take(now, want) {
                    granted += u128::from(want);
                } else if let Some(wait) = b.time_until(now, want) {
                    prop_assert!(wait > Duration::ZERO);
                    // Waiting exactly that long is enough.
                    let mut c = b.clone();
                    prop_assert!(c.try_take(now + wait, want));
                }
                let limit = u128::from(burst) + now.as_nanos() * u128::from(rate) / NANOS_PER_SEC;
                prop_assert!(granted <= limit, "granted {} > {}", granted, limit);
            }
        }
    }
}
