//! [`LinkGauge`]: what the receiver measures of the link from the data it gets, for the sender's
//! rate control (`rate.rs`). Every data packet carries its send time on the sender's clock; the
//! receiver's clock at arrival minus that is the **one-way delay** plus an unknown constant (the
//! clocks' offset). The smallest seen is the empty link; anything above it is **queueing delay**,
//! the signal that the sender is above the link's rate — random loss does not change it.
//!
//! Each acknowledgement also echoes the newest packet's send time and arrival time, and counts the
//! packets received, so the sender can tell how fast its bytes crossed the link (`meter.rs`).
//!
//! Only packets sent after every one measured before count, so a reordered or replayed datagram
//! cannot move the figures. The clocks' offset does not matter; their drift does (a few ppm on
//! clocks kept by NTP: milliseconds an hour).

use std::time::Duration;

/// The queueing delay reported is the smallest over this many newest packets (receive-side
/// scheduling noise only ever adds delay).
const QUEUE_OF_LAST: usize = 3;

/// The receiver's view of the link.
#[derive(Debug, Clone, Default)]
pub struct LinkGauge {
    /// The newest packet's send time (sender clock, unwrapped, µs) and arrival (receiver, µs).
    newest: Option<(i64, i64)>,
    /// Smallest one-way delay seen (receiver clock − sender clock), µs.
    base_us: Option<i64>,
    /// Queueing delays of the newest packets, newest last.
    recent: [i64; QUEUE_OF_LAST],
    recent_len: usize,
    /// Data datagrams received, duplicates included.
    received: u64,
}

/// What one acknowledgement reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkReport {
    pub queue_us: u32,
    pub echo_sent_us: u32,
    pub echo_recv_us: u32,
    pub received: u32,
}

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX / 4)
}

impl LinkGauge {
    pub fn new() -> Self {
        Self::default()
    }

    /// A data packet sent at `sent_us` (sender clock, wrapping) arrived at `now` (receiver clock).
    pub fn on_data(&mut self, now: Duration, sent_us: u32) {
        self.received += 1;
        let now_us = micros(now);
        // The sender's time, unwrapped next to where the last delay puts it.
        let sender_us = match self.newest {
            None => i64::from(sent_us),
            Some((s, r)) => {
                let expect = now_us - (r - s);
                expect + i64::from(sent_us.wrapping_sub(expect as u32) as i32)
            }
        };
        if self.newest.is_some_and(|(s, _)| sender_us <= s) {
            return;
        }
        self.newest = Some((sender_us, now_us));
        let owd = now_us - sender_us;
        let base = self.base_us.map_or(owd, |b| b.min(owd));
        self.base_us = Some(base);
        if self.recent_len == QUEUE_OF_LAST {
            self.recent.rotate_left(1);
            self.recent_len -= 1;
        }
        self.recent[self.recent_len] = owd - base;
        self.recent_len += 1;
    }

    /// The figures for an acknowledgement.
    pub fn report(&self) -> LinkReport {
        let queue = self.recent[..self.recent_len]
            .iter()
            .copied()
            .min()
            .unwrap_or(0);
        let (sent, recv) = self.newest.unwrap_or_default();
        LinkReport {
            queue_us: queue.clamp(0, i64::from(u32::MAX)) as u32,
            echo_sent_us: sent as u32,
            echo_recv_us: recv as u32,
            received: self.received as u32,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(x: u64) -> Duration {
        Duration::from_millis(x)
    }

    #[test]
    fn queue_is_the_delay_above_the_least_and_old_packets_do_not_count() {
        let mut g = LinkGauge::new();
        // Sent 6 ms apart into a link that delivers one every 12 ms: the queue grows 6 ms a packet.
        for i in 0..10u64 {
            g.on_data(ms(300 + i * 12), (i * 6_000) as u32);
        }
        let r = g.report();
        // The least of the newest three (packets 7, 8, 9): 7 × 6 ms.
        assert_eq!(r.queue_us, 42_000);
        assert_eq!(r.echo_sent_us, 54_000);
        assert_eq!(r.echo_recv_us, 408_000);
        assert_eq!(r.received, 10);
        // A replay of packet 2 arriving late: counted as received, not measured.
        g.on_data(ms(900), 12_000);
        let r2 = g.report();
        assert_eq!(r2.queue_us, r.queue_us);
        assert_eq!(r2.echo_sent_us, r.echo_sent_us);
        assert_eq!(r2.received, 11);
    }

    #[test]
    fn the_senders_clock_unwraps() {
        let mut g = LinkGauge::new();
        // The sender's 32-bit microsecond clock wraps (every 71.6 minutes) mid-session, and a
        // 45-minute silence between two packets is not taken for a wrap.
        let start = u64::from(u32::MAX) - 50_000;
        g.on_data(ms(0), start as u32);
        g.on_data(ms(100), (start + 100_000) as u32);
        assert_eq!(g.report().queue_us, 0);
        let later = 45 * 60 * 1000;
        g.on_data(ms(later), (start + later * 1000) as u32);
        g.on_data(ms(later + 20), (start + later * 1000 + 20_000) as u32);
        assert_eq!(g.report().queue_us, 0);
        assert_eq!(g.report().received, 4);
    }
}
