//! Assembling the report from what a run left: per node, per object, per station (with the TCP
//! reference run here, after the zdn part), idle rates, and the plot's curves.

use std::path::Path;
use std::time::Duration;

use super::error::ScenarioError;
use super::objects::Published;
use super::plot::{Curve, Plot};
use super::reference::ReferenceRun;
use super::report::{
    goodput_between, up_seconds, FetchResult, IdleReport, NodeReport, ObjectReport, Report,
    SatelliteReport, Series,
};
use super::runner::RunOptions;
use super::spec::{Place, Scenario};
use super::topology::Topology;
use super::zdn::NodeProcess;

pub fn node_reports(
    s: &Scenario,
    topo: &Topology,
    nodes: &[Option<NodeProcess>],
    totals: &[(u64, u64)],
    stopped: Vec<Option<serde_json::Value>>,
) -> Vec<NodeReport> {
    s.nodes
        .iter()
        .zip(stopped)
        .enumerate()
        .map(|(i, (n, stopped))| NodeReport {
            name: n.name.clone(),
            place: n.place,
            profile: n.profile.clone(),
            namespace: topo.namespaces[i].name.clone(),
            addresses: topo.addresses(s, i),
            peer_id: nodes[i]
                .as_ref()
                .map(|p| p.peer_id.clone())
                .unwrap_or_default(),
            received_ip_bytes: totals[i].0,
            sent_ip_bytes: totals[i].1,
            stopped,
        })
        .collect()
}

pub fn object_reports(published: &[Published]) -> Vec<ObjectReport> {
    published
        .iter()
        .map(|p| ObjectReport {
            name: p.name.clone(),
            kind: p.kind.to_owned(),
            hash: p.add.hash.clone(),
            object_len: p.add.object_len,
            chunks: p.add.chunks,
            stored_bytes: p.add.stored_bytes,
            base_hash: p.base.as_ref().map(|b| b.hash.clone()),
            base_object_len: p.base.as_ref().map(|b| b.object_len),
        })
        .collect()
}

/// Per station: the payload its fetches carried over its satellite link, zdn's goodput over the
/// span of those fetches, and (when `reference`) the TCP reference of the same payload.
/// `down_up` is each node's uplink counters (down, up), by node index.
pub fn satellite_reports(
    s: &Scenario,
    fetches: &[FetchResult],
    down_up: &[(u64, u64)],
    reference: bool,
    o: &RunOptions,
    logs: &Path,
) -> Result<Vec<SatelliteReport>, ScenarioError> {
    let mut out = Vec::new();
    for (i, n) in s.nodes.iter().enumerate() {
        if n.place != Place::Station {
            continue;
        }
        let mine: Vec<&FetchResult> = fetches
            .iter()
            .filter(|f| f.node == n.name && f.over_satellite && f.completed)
            .collect();
        let payload: u64 = mine.iter().map(|f| f.payload_bytes).sum();
        let started = mine.iter().map(|f| f.started_s).reduce(f64::min);
        let finished = mine.iter().filter_map(|f| f.finished_s).reduce(f64::max);
        let up = match (started, finished) {
            (Some(a), Some(b)) => Some(up_seconds(&s.link.outages, a, b)),
            _ => None,
        };
        let zdn_goodput = match (started, finished) {
            (Some(a), Some(b)) => goodput_between(payload, &s.link, &s.rate_changes, a, b),
            _ => None,
        };
        let (down, upb) = down_up.get(i).copied().unwrap_or_default();
        let reference = match started {
            Some(at) if reference && s.reference_tcp && payload > 0 => {
                eprintln!(
                    "zdn-sim: TCP reference for {}: {payload} bytes through a fresh link, from {at:.1} s",
                    n.name
                );
                let r = ReferenceRun {
                    spec: &s.link,
                    rate_changes: &s.rate_changes,
                    seed: s.seed.wrapping_mul(1000).wrapping_add(i as u64),
                    bytes: payload,
                    start_at: Duration::from_secs_f64(at),
                    sample_every: s.run.sample_every,
                    timeout: s.run.timeout,
                    helper: &o.helper,
                    logs,
                    stop: o.stop,
                }
                .run()?;
                Some(r)
            }
            _ => None,
        };
        let zdn_over_tcp = match (zdn_goodput, reference.as_ref().and_then(|r| r.goodput)) {
            (Some(z), Some(t)) if t > 0.0 => Some(z / t),
            _ => None,
        };
        out.push(SatelliteReport {
            station: n.name.clone(),
            payload_bytes: payload,
            started_s: started,
            finished_s: finished,
            link_up_seconds: up,
            goodput: zdn_goodput,
            down_ip_bytes: down,
            up_ip_bytes: upb,
            down_ip_bytes_per_payload: (payload > 0).then(|| down as f64 / payload as f64),
            reference,
            zdn_over_tcp,
        });
    }
    Ok(out)
}

/// Per node, bytes per day from `idle_from` to the last sample (empty without `idle_from`).
pub fn idle_reports(s: &Scenario, series: &Series) -> Vec<IdleReport> {
    let Some(from) = s.run.idle_from else {
        return Vec::new();
    };
    let from = from.as_secs_f64();
    let (Some(a), Some(&end)) = (series.t.iter().position(|&t| t >= from), series.t.last()) else {
        return Vec::new();
    };
    let span = end - series.t[a];
    if span <= 0.0 {
        return Vec::new();
    }
    let last = series.t.len() - 1;
    let per_day = |v: &[u64]| (v[last].saturating_sub(v[a])) as f64 * 86_400.0 / span;
    series
        .nodes
        .iter()
        .map(|n| IdleReport {
            node: n.name.clone(),
            from_s: series.t[a],
            to_s: end,
            received_bytes_per_day: per_day(&n.received),
            sent_bytes_per_day: per_day(&n.sent),
        })
        .collect()
}

fn describe_link(l: &super::report::LinkReport) -> String {
    let outages: Vec<String> = l
        .outages
        .iter()
        .map(|[a, b]| format!("{a:.0}-{b:.0} s"))
        .collect();
    let changes: Vec<String> = l
        .rate_changes
        .iter()
        .map(|[at, rate]| format!("{:.0} kbit/s from {at:.0} s", rate / 1000.0))
        .collect();
    format!(
        "satellite link, each way: {} kbit/s{}, {:.0} ms delay{}, {:.1} % loss, {} B queue{}",
        l.rate_bps / 1000,
        if changes.is_empty() {
            String::new()
        } else {
            format!(" ({})", changes.join(", "))
        },
        l.delay_ms,
        if l.jitter_ms > 0.0 {
            format!(" + up to {:.0} ms jitter", l.jitter_ms)
        } else {
            String::new()
        },
        l.loss * 100.0,
        l.queue_bytes,
        if outages.is_empty() {
            String::new()
        } else {
            format!("; outages {}", outages.join(", "))
        }
    )
}

/// The plot of a report: each node's received bytes, each TCP reference dashed.
pub fn plot_of(r: &Report) -> Plot {
    let mut curves: Vec<Curve> = r
        .series
        .nodes
        .iter()
        .zip(&r.nodes)
        .map(|(s, n)| Curve {
            label: format!("{} ({})", s.name, n.profile),
            t: r.series.t.clone(),
            bytes: s.received.clone(),
            dashed: false,
        })
        .collect();
    let mut subtitle = vec![describe_link(&r.link)];
    for sat in r.satellite.iter().filter(|s| s.payload_bytes > 0) {
        if let Some(rf) = &sat.reference {
            curves.push(Curve {
                label: format!("plain TCP, same bytes, to {}", sat.station),
                t: rf.t.clone(),
                bytes: rf.received.clone(),
                dashed: true,
            });
        }
        let f = |v: Option<f64>| v.map_or("-".to_owned(), |g| format!("{g:.3}"));
        subtitle.push(format!(
            "{}: payload {:.2} MB; goodput zdn {}, TCP {}, zdn/TCP {}; satellite bytes down / payload {}",
            sat.station,
            sat.payload_bytes as f64 / 1e6,
            f(sat.goodput),
            f(sat.reference.as_ref().and_then(|x| x.goodput)),
            f(sat.zdn_over_tcp),
            f(sat.down_ip_bytes_per_payload),
        ));
    }
    Plot {
        title: format!("{}: IP bytes received per node, cumulative", r.scenario),
        subtitle,
        curves,
        outages: r.link.outages.iter().map(|[a, b]| (*a, *b)).collect(),
    }
}
