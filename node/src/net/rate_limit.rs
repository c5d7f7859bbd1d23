//! [`RateLimiter`]: the sans-IO [`TokenBucket`] on the tokio clock, shared by every transfer of one
//! direction (upload or download), so `--max-rate` caps the node as a whole.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;
use zdn_protocol::sync::{TokenBucket, TokenBucketError};

use crate::net::frame::STEP;

/// A byte-rate cap for async code.
#[derive(Debug)]
pub struct RateLimiter {
    bucket: Mutex<TokenBucket>,
    start: Instant,
}

impl RateLimiter {
    /// `rate` bytes per second; the burst is a quarter second of traffic but at least one frame
    /// step, so a take of one step can always be granted.
    pub fn new(rate: u64) -> Result<Self, TokenBucketError> {
        let burst = (rate / 4).max(STEP as u64);
        Ok(RateLimiter {
            bucket: Mutex::new(TokenBucket::new(rate, burst, Duration::ZERO)?),
            start: Instant::now(),
        })
    }

    pub fn rate(&self) -> u64 {
        self.bucket.lock().map(|b| b.rate()).unwrap_or(0)
    }

    /// Waits until `bytes` (at most one step) may pass, and takes them.
    pub async fn take(&self, bytes: u64) {
        loop {
            let wait = {
                let Ok(mut b) = self.bucket.lock() else {
                    return;
                };
                let now = self.start.elapsed();
                let bytes = bytes.min(b.burst());
                if b.try_take(now, bytes) {
                    return;
                }
                b.time_until(now, bytes)
                    .unwrap_or(Duration::from_millis(10))
            };
            tokio::time::sleep(wait.max(Duration::from_millis(1))).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn caps_the_rate() {
        // 300 kB at 1 MB/s with a 250 kB burst: the first 250 kB pass at once, the rest take
        // 50 ms; more than 250 kB must not pass instantly.
        let l = RateLimiter::new(1_000_000).unwrap();
        let t0 = Instant::now();
        for _ in 0..(300_000 / 10_000) {
            l.take(10_000).await;
        }
        let secs = t0.elapsed().as_secs_f64();
        assert!((0.045..=0.5).contains(&secs), "{secs}");
    }
}
