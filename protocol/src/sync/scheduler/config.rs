//! [`SchedulerConfig`]: the scheduler's tuning and its defaults.

use std::time::Duration;

/// Tuning of the scheduler. The defaults fit a 1 Mbps × 600 ms satellite link and a 1 Gbps LAN.
#[derive(Debug, Clone, PartialEq)]
pub struct SchedulerConfig {
    /// Requests in flight per peer never fall below this while work remains.
    pub min_in_flight: usize,
    /// Requests in flight per peer before its rate is known.
    pub initial_in_flight: usize,
    /// Hard cap on requests in flight per peer.
    pub max_in_flight: usize,
    /// Hard cap on bytes in flight per peer.
    pub max_window_bytes: u64,
    /// Consecutive failures after which a peer is dropped from this transfer.
    pub max_failures: u32,
    /// First back-off after a failure; doubles with each further failure in a row.
    pub backoff: Duration,
    /// End game: duplicate a request once it has taken this many times its expected time.
    pub late_factor: f64,
    /// Whether end-game duplicates are made at all.
    pub endgame: bool,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            min_in_flight: 2,
            initial_in_flight: 4,
            max_in_flight: 64,
            max_window_bytes: 64 << 20,
            max_failures: 5,
            backoff: Duration::from_millis(500),
            late_factor: 3.0,
            endgame: true,
        }
    }
}
