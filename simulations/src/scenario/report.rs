//! What a scenario run measured (written as JSON), and the arithmetic of goodput: payload bytes ÷
//! (link rate × seconds the link was up during the transfer), so an outage is not counted against
//! the transfer but a slow restart after it is.

use serde::Serialize;

use zdn_linkem::shaper::{rate_at, LinkSpec, Outage, RateChange};

use super::spec::{Place, Transport};

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: String,
    pub description: String,
    pub file: String,
    pub zdn: String,
    pub transport: Transport,
    pub seed: u64,
    /// Every fetch completed and its copy equals the published bytes.
    pub ok: bool,
    /// Why the run stopped early, if it did.
    pub error: Option<String>,
    /// Each satellite link, each direction.
    pub link: LinkReport,
    /// Each site-network link, each direction.
    pub lan: LinkReport,
    pub nodes: Vec<NodeReport>,
    pub objects: Vec<ObjectReport>,
    pub fetches: Vec<FetchResult>,
    /// Per station: what crossed its satellite link, and the plain-TCP reference.
    pub satellite: Vec<SatelliteReport>,
    /// Per node, bytes per day from `idle_from` to the end (when the scenario asks).
    pub idle: Vec<IdleReport>,
    pub series: Series,
    /// The PNG next to this report.
    pub plot: Option<String>,
    pub wall_seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct LinkReport {
    pub rate_bps: u64,
    pub delay_ms: f64,
    pub jitter_ms: f64,
    pub loss: f64,
    pub queue_bytes: u64,
    /// `[from, to]` seconds from the link's start.
    pub outages: Vec<[f64; 2]>,
    /// `[at, rate_bps]`: from `at` seconds on, the link runs at this rate.
    pub rate_changes: Vec<[f64; 2]>,
}

impl LinkReport {
    pub fn of(s: &LinkSpec, rate_changes: &[RateChange]) -> Self {
        LinkReport {
            rate_bps: s.rate_bps,
            delay_ms: s.delay.as_secs_f64() * 1000.0,
            jitter_ms: s.jitter.as_secs_f64() * 1000.0,
            loss: s.loss,
            queue_bytes: s.queue_bytes,
            outages: s
                .outages
                .iter()
                .map(|o| [o.from.as_secs_f64(), o.to.as_secs_f64()])
                .collect(),
            rate_changes: rate_changes
                .iter()
                .map(|c| [c.at.as_secs_f64(), c.rate_bps as f64])
                .collect(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct NodeReport {
    pub name: String,
    pub place: Place,
    pub profile: String,
    pub namespace: String,
    pub addresses: Vec<String>,
    pub peer_id: String,
    /// IP bytes delivered to / from this node over its links, the whole run.
    pub received_ip_bytes: u64,
    pub sent_ip_bytes: u64,
    /// The node's own counters (`zdn node run`'s `stopped` line).
    pub stopped: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ObjectReport {
    pub name: String,
    pub kind: String,
    pub hash: String,
    pub object_len: u64,
    pub chunks: usize,
    /// Stored (compressed) chunk bytes: the payload a fetcher with none of it needs.
    pub stored_bytes: u64,
    /// A delta's base, carried beforehand.
    pub base_hash: Option<String>,
    pub base_object_len: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FetchResult {
    pub node: String,
    pub object: String,
    pub from: Vec<String>,
    /// The fetcher is a station: the bytes crossed its satellite link.
    pub over_satellite: bool,
    /// Seconds from the links' start: `zdn fetch` started and exited.
    pub started_s: f64,
    pub finished_s: Option<f64>,
    pub seconds: Option<f64>,
    pub link_up_seconds: Option<f64>,
    pub payload_bytes: u64,
    /// `zdn fetch` runs: more than one when an incomplete fetch was resumed (`retries`).
    pub attempts: u32,
    /// Why each earlier attempt stopped.
    pub failed_attempts: Vec<String>,
    /// The last attempt's exit status.
    pub exit_code: Option<i32>,
    pub completed: bool,
    /// The fetched copy equals the published file, byte for byte.
    pub verified: bool,
    /// `zdn fetch --json`'s report.
    pub zdn_report: Option<serde_json::Value>,
    pub goodput: Option<f64>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SatelliteReport {
    pub station: String,
    /// Payload of the station's fetches (stored chunk bytes).
    pub payload_bytes: u64,
    /// From the first of the station's fetches starting to the last one ending.
    pub started_s: Option<f64>,
    pub finished_s: Option<f64>,
    pub link_up_seconds: Option<f64>,
    pub goodput: Option<f64>,
    /// IP bytes the satellite link delivered each way over the whole run.
    pub down_ip_bytes: u64,
    pub up_ip_bytes: u64,
    /// Down IP bytes ÷ payload: about 1 when the link carried one copy.
    pub down_ip_bytes_per_payload: Option<f64>,
    pub reference: Option<ReferenceReport>,
    /// zdn's goodput ÷ the TCP reference's.
    pub zdn_over_tcp: Option<f64>,
}

/// One plain TCP connection carrying the same payload through a fresh link with the same settings,
/// started at the same offset from the link's start as zdn's first fetch (the same outages hit it).
#[derive(Debug, Clone, Serialize)]
pub struct ReferenceReport {
    pub bytes: u64,
    pub started_s: f64,
    pub finished_s: Option<f64>,
    pub seconds: Option<f64>,
    pub link_up_seconds: Option<f64>,
    pub goodput: Option<f64>,
    pub completed: bool,
    pub down_ip_bytes: u64,
    pub up_ip_bytes: u64,
    /// Sample times (seconds from the reference link's start) and cumulative IP bytes received.
    pub t: Vec<f64>,
    pub received: Vec<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct IdleReport {
    pub node: String,
    pub from_s: f64,
    pub to_s: f64,
    pub received_bytes_per_day: f64,
    pub sent_bytes_per_day: f64,
}

/// Cumulative IP bytes per node, sampled.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Series {
    pub interval_s: f64,
    /// Seconds from the links' start.
    pub t: Vec<f64>,
    pub nodes: Vec<NodeSeries>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct NodeSeries {
    pub name: String,
    pub received: Vec<u64>,
    pub sent: Vec<u64>,
}

/// Seconds of `[from, to]` (seconds from the link's start) outside every outage.
pub fn up_seconds(outages: &[Outage], from: f64, to: f64) -> f64 {
    if to <= from {
        return 0.0;
    }
    // Merge overlapping outages so no second is subtracted twice.
    let mut spans: Vec<(f64, f64)> = outages
        .iter()
        .map(|o| (o.from.as_secs_f64().max(from), o.to.as_secs_f64().min(to)))
        .filter(|(a, b)| b > a)
        .collect();
    spans.sort_by(|x, y| x.0.total_cmp(&y.0));
    let mut down = 0.0;
    let mut cur: Option<(f64, f64)> = None;
    for (a, b) in spans {
        cur = match cur {
            Some((ca, cb)) if a <= cb => Some((ca, cb.max(b))),
            Some((ca, cb)) => {
                down += cb - ca;
                Some((a, b))
            }
            None => Some((a, b)),
        };
    }
    if let Some((a, b)) = cur {
        down += b - a;
    }
    (to - from - down).max(0.0)
}

/// Bytes the link could carry in `[from, to]` (seconds from its start): its rate, as it
/// changes, over the seconds outside every outage.
pub fn capacity_bytes(spec: &LinkSpec, changes: &[RateChange], from: f64, to: f64) -> f64 {
    let mut cuts: Vec<f64> = vec![from];
    cuts.extend(
        changes
            .iter()
            .map(|c| c.at.as_secs_f64())
            .filter(|&t| t > from && t < to),
    );
    cuts.push(to);
    cuts.windows(2)
        .map(|w| {
            let rate = rate_at(
                spec.rate_bps,
                changes,
                std::time::Duration::from_secs_f64(w[0].max(0.0)),
            );
            rate as f64 / 8.0 * up_seconds(&spec.outages, w[0], w[1])
        })
        .sum()
}

/// Payload ÷ what the link could carry while up in `[from, to]` (see [`capacity_bytes`]).
pub fn goodput_between(
    payload: u64,
    spec: &LinkSpec,
    changes: &[RateChange],
    from: f64,
    to: f64,
) -> Option<f64> {
    let capacity = capacity_bytes(spec, changes, from, to);
    (capacity > 0.0).then(|| payload as f64 / capacity)
}

/// Payload ÷ (rate × up seconds); none for an empty window.
pub fn goodput(payload: u64, rate_bps: u64, up_seconds: f64) -> Option<f64> {
    let capacity = rate_bps as f64 / 8.0 * up_seconds;
    (capacity > 0.0).then(|| payload as f64 / capacity)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn o(a: u64, b: u64) -> Outage {
        Outage {
            from: Duration::from_secs(a),
            to: Duration::from_secs(b),
        }
    }

    #[test]
    fn up_seconds_subtracts_the_overlap_once() {
        assert_eq!(up_seconds(&[], 10.0, 20.0), 10.0);
        assert_eq!(up_seconds(&[o(12, 14)], 10.0, 20.0), 8.0);
        assert_eq!(up_seconds(&[o(0, 15)], 10.0, 20.0), 5.0);
        assert_eq!(up_seconds(&[o(12, 16), o(14, 18)], 10.0, 20.0), 4.0);
        assert_eq!(up_seconds(&[o(30, 40)], 10.0, 20.0), 10.0);
        assert_eq!(up_seconds(&[o(0, 100)], 10.0, 20.0), 0.0);
    }

    #[test]
    fn goodput_is_payload_over_capacity() {
        // 1 Mbit/s for 8 s carries 1 MB.
        assert_eq!(goodput(1_000_000, 1_000_000, 8.0), Some(1.0));
        assert_eq!(goodput(500_000, 1_000_000, 8.0), Some(0.5));
        assert_eq!(goodput(1, 1_000_000, 0.0), None);
    }

    #[test]
    fn capacity_follows_rate_changes_and_skips_outages() {
        let mut spec = LinkSpec::satellite();
        let ch = |at, rate_bps| RateChange {
            at: Duration::from_secs(at),
            rate_bps,
        };
        // No changes: rate × up seconds.
        assert_eq!(capacity_bytes(&spec, &[], 0.0, 8.0), 1_000_000.0);
        // Half rate from 10 s to 20 s: 10 s at 125 kB/s + 10 s at 62.5 kB/s + 10 s at 125 kB/s.
        let changes = [ch(10, 500_000), ch(20, 1_000_000)];
        assert_eq!(capacity_bytes(&spec, &changes, 0.0, 30.0), 3_125_000.0);
        // A window starting inside the slow span.
        assert_eq!(capacity_bytes(&spec, &changes, 15.0, 25.0), 937_500.0);
        // An outage inside the slow span counts nothing.
        spec.outages = vec![o(12, 14)];
        assert_eq!(capacity_bytes(&spec, &changes, 0.0, 30.0), 3_000_000.0);
        assert_eq!(
            goodput_between(1_500_000, &spec, &changes, 0.0, 30.0),
            Some(0.5)
        );
        assert_eq!(goodput_between(1, &spec, &changes, 13.0, 13.5), None);
    }
}
