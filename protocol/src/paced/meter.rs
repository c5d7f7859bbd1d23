//! [`ArrivalMeter`]: how fast the sender's bytes cross the link, measured at the receiver.
//!
//! Every acknowledgement echoes the send time of the newest packet the receiver got and the
//! receiver's clock when it came. The sender knows how many bytes it had sent up to each of its
//! transmissions, so two echoes give the bytes that went into the link between two packets and how
//! long the far end took to see them: the **arrival rate**, lost packets included (on a lossy link
//! they used their link time before being corrupted). While a queue stands in front of the link,
//! that is the link's rate, whatever the loss. The receiver's count of packets received gives the
//! share lost on the way.

use std::collections::VecDeque;
use std::time::Duration;

/// Transmissions remembered, by age and by count.
const HISTORY: Duration = Duration::from_secs(10);
const MAX_SENT: usize = 1 << 18;
/// The rate's window spans at least this long and this many packets when it can...
const SPAN: Duration = Duration::from_millis(100);
const SPAN_PACKETS: u64 = 4;
/// ... and the loss's window (a share of a few packets says little) at least this long and this
/// many.
const LOSS_SPAN: Duration = Duration::from_millis(500);
const LOSS_PACKETS: u64 = 32;
/// ... never further back than this, and never across a silence longer than [`GAP`] (after an
/// outage it starts afresh).
const HORIZON: Duration = Duration::from_secs(2);
const GAP: Duration = Duration::from_secs(3);
/// Shorter windows give no rate (a burst received at once would look infinitely fast).
const MIN_SPAN: Duration = Duration::from_millis(8);
const MAX_POINTS: usize = 256;

#[derive(Debug, Clone, Copy)]
struct Sent {
    at_us: u64,
    /// Wire bytes and transmissions up to and including this one.
    bytes: u64,
    count: u64,
}

#[derive(Debug, Clone, Copy)]
struct Point {
    /// Receiver clock, unwrapped.
    recv_us: i64,
    sent_us: u64,
    bytes: u64,
    count: u64,
    received: u64,
    /// Sender clock when the echo came.
    heard: Duration,
}

/// The link's rate as the receiver sees it arrive.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Arrival {
    pub bits_per_sec: u64,
    /// Share of transmissions that did not arrive.
    pub loss: f64,
}

/// What a new echo says.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Echo {
    /// When the echoed transmission left (sender clock, µs): its round trip is unambiguous,
    /// even for a retransmission.
    pub sent_us: u64,
    /// The arrival rate over the latest window, when there is one.
    pub arrival: Option<Arrival>,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct ArrivalMeter {
    sent: VecDeque<Sent>,
    bytes: u64,
    count: u64,
    points: VecDeque<Point>,
}

impl ArrivalMeter {
    /// A transmission of `wire` IP bytes left at `at_us` (sender clock, strictly increasing).
    pub fn on_sent(&mut self, at_us: u64, wire: u64) {
        self.bytes += wire;
        self.count += 1;
        self.sent.push_back(Sent {
            at_us,
            bytes: self.bytes,
            count: self.count,
        });
        let horizon = at_us.saturating_sub(HISTORY.as_micros() as u64);
        while self.sent.len() > MAX_SENT || self.sent.front().is_some_and(|s| s.at_us < horizon) {
            self.sent.pop_front();
        }
    }

    /// An acknowledgement heard at `now` echoes the packet sent at `echo_sent_us`, received at
    /// `echo_recv_us` (receiver clock), after `received` packets in all. `None` when the echo is
    /// of nothing sent lately or of nothing newer than the last one.
    pub fn on_echo(
        &mut self,
        now: Duration,
        echo_sent_us: u32,
        echo_recv_us: u32,
        received: u32,
    ) -> Option<Echo> {
        if received == 0 {
            // Nothing has arrived: the echo is of nothing.
            return None;
        }
        let newest = self.sent.back()?.at_us;
        let sent_us = newest.checked_sub(u64::from((newest as u32).wrapping_sub(echo_sent_us)))?;
        let i = self.sent.binary_search_by_key(&sent_us, |s| s.at_us).ok()?;
        let s = self.sent[i];
        if let Some(last) = self.points.back() {
            if sent_us <= last.sent_us {
                // Nothing newer arrived since.
                return None;
            }
            if now.saturating_sub(last.heard) > GAP {
                self.points.clear();
            }
        }
        let (recv_us, received) = match self.points.back() {
            Some(p) => (
                p.recv_us + i64::from(echo_recv_us.wrapping_sub(p.recv_us as u32) as i32),
                p.received + u64::from(received.wrapping_sub(p.received as u32)),
            ),
            None => (i64::from(echo_recv_us), u64::from(received)),
        };
        if self.points.back().is_some_and(|p| recv_us < p.recv_us) {
            self.points.clear();
        }
        self.points.push_back(Point {
            recv_us,
            sent_us,
            bytes: s.bytes,
            count: s.count,
            received,
            heard: now,
        });
        if self.points.len() > MAX_POINTS {
            self.points.pop_front();
        }
        Some(Echo {
            sent_us,
            arrival: self.window(),
        })
    }

    fn window(&self) -> Option<Arrival> {
        let n = self.points.back()?;
        let horizon = n.recv_us - HORIZON.as_micros() as i64;
        let enough = |p: &Point, span: Duration, packets: u64| {
            n.count - p.count >= packets && n.recv_us - p.recv_us >= span.as_micros() as i64
        };
        let (mut rate_from, mut loss_from) = (None, None);
        for p in self.points.iter().rev().skip(1) {
            if p.recv_us < horizon {
                break;
            }
            if rate_from.is_none_or(|r: &Point| !enough(r, SPAN, SPAN_PACKETS)) {
                rate_from = Some(p);
            }
            loss_from = Some(p);
            if enough(p, LOSS_SPAN, LOSS_PACKETS) {
                break;
            }
        }
        let (o, l) = (rate_from?, loss_from?);
        let span = n.recv_us - o.recv_us;
        if span < MIN_SPAN.as_micros() as i64 || n.count <= o.count {
            return None;
        }
        let bits_per_sec = (n.bytes - o.bytes) as f64 * 8.0 * 1e6 / span as f64;
        let sent = (n.count - l.count) as f64;
        let got = n.received.saturating_sub(l.received) as f64;
        Some(Arrival {
            bits_per_sec: bits_per_sec as u64,
            loss: (1.0 - got / sent).clamp(0.0, 1.0),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_lost_packets_as_link_time() {
        let mut m = ArrivalMeter::default();
        // 1500-byte packets sent every 6 ms (2 Mbit/s) into a 1 Mbit/s link (12 ms each), one in
        // five lost after its link time; an ack per arrival.
        let mut got = 0u32;
        let mut last = None;
        for i in 0..60u64 {
            m.on_sent(i * 6_000, 1500);
            if i % 5 == 4 {
                continue;
            }
            got += 1;
            let arrived = 300_000 + i * 12_000;
            let heard = Duration::from_micros(arrived + 300_000);
            last = m
                .on_echo(heard, (i * 6_000) as u32, arrived as u32, got)
                .and_then(|e| e.arrival)
                .or(last);
        }
        let a = last.unwrap();
        assert!(
            (990_000..=1_010_000).contains(&a.bits_per_sec),
            "the link's rate, loss counted: {a:?}"
        );
        assert!((0.15..0.25).contains(&a.loss), "{a:?}");
    }

    #[test]
    fn an_echo_of_nothing_sent_or_nothing_new_gives_nothing() {
        let mut m = ArrivalMeter::default();
        assert!(m.on_echo(Duration::ZERO, 5, 5, 1).is_none());
        m.on_sent(1_000, 1500);
        assert!(
            m.on_echo(Duration::ZERO, 1_000, 5, 0).is_none(),
            "nothing received"
        );
        assert!(m.on_echo(Duration::ZERO, 999, 5, 1).is_none(), "never sent");
        m.on_echo(Duration::from_millis(1), 1_000, 5, 1);
        assert!(m.on_echo(Duration::from_millis(2), 1_000, 9, 2).is_none());
    }
}
