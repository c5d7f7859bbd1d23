//! The yardstick: the same payload over one plain TCP connection through a fresh link with the
//! same settings, started at the same offset from the link's start as zdn's first fetch, so the
//! same outages hit it. Its ends run as processes of the helper binary (`zdn-sim tcp-sink` and
//! `tcp-send`) inside the link's two namespaces.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use zdn_linkem::netns::{LinkEnd, Netns};
use zdn_linkem::shaper::{LinkSpec, RateChange};

use super::error::ScenarioError;
use super::link::EmulatedLink;
use super::process::Reaped;
use super::report::{goodput_between, up_seconds, ReferenceReport};
use super::topology::prefix;

const SINK: &str = "10.211.0.2:9000";

/// What to send, and how.
#[derive(Debug)]
pub struct ReferenceRun<'a> {
    pub spec: &'a LinkSpec,
    pub rate_changes: &'a [RateChange],
    pub seed: u64,
    pub bytes: u64,
    /// Offset from the link's start at which the sender starts.
    pub start_at: Duration,
    pub sample_every: Duration,
    /// Give up this long after the link's start.
    pub timeout: Duration,
    /// The executable with the `tcp-sink` and `tcp-send` subcommands.
    pub helper: &'a Path,
    pub logs: &'a Path,
    pub stop: &'a AtomicBool,
}

impl ReferenceRun<'_> {
    pub fn run(&self) -> Result<ReferenceReport, ScenarioError> {
        let p = prefix();
        let a = Netns::create(&format!("{p}-ref-a"))?;
        let b = Netns::create(&format!("{p}-ref-b"))?;
        let epoch = Instant::now();
        let (dev_a, dev_b) = (format!("{p}ra"), format!("{p}rb"));
        let mut link = EmulatedLink::start(
            LinkEnd {
                ns: &a,
                dev: &dev_a,
                addr: "10.211.0.1",
            },
            LinkEnd {
                ns: &b,
                dev: &dev_b,
                addr: "10.211.0.2",
            },
            self.spec,
            self.rate_changes,
            self.seed,
            epoch,
        )?;
        let helper = |ns: &Netns, args: &[String], log: &str| {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", &ns.name])
                .arg(self.helper)
                .args(args);
            Reaped::spawn(c, &self.logs.join(log), "the TCP reference")
        };
        let accept = format!("{}s", self.timeout.as_secs());
        let mut sink = helper(
            &b,
            &[
                "tcp-sink".into(),
                SINK.into(),
                "--accept-within".into(),
                accept,
            ],
            "reference-sink",
        )?;
        let mut r = ReferenceReport {
            bytes: self.bytes,
            started_s: 0.0,
            finished_s: None,
            seconds: None,
            link_up_seconds: None,
            goodput: None,
            completed: false,
            down_ip_bytes: 0,
            up_ip_bytes: 0,
            t: Vec::new(),
            received: Vec::new(),
        };
        // The sink must listen before the sender dials.
        let start_at = self.start_at.max(Duration::from_millis(500));
        let mut sender: Option<Reaped> = None;
        let mut next_sample = Duration::ZERO;
        loop {
            let now = epoch.elapsed();
            if now >= next_sample {
                r.t.push(now.as_secs_f64());
                r.received.push(link.delivered().0);
                next_sample += self.sample_every;
            }
            if sender.is_none() && now >= start_at {
                r.started_s = now.as_secs_f64();
                let args = ["tcp-send".into(), SINK.into(), self.bytes.to_string()];
                sender = Some(helper(&a, &args, "reference-send")?);
            }
            if let Some(status) = sink.try_wait() {
                if status.success() && sender.is_some() {
                    let end = now.as_secs_f64();
                    let up = up_seconds(&self.spec.outages, r.started_s, end);
                    let got = sink_bytes(&sink.stdout());
                    r.completed = got == Some(self.bytes);
                    r.finished_s = Some(end);
                    r.seconds = Some(end - r.started_s);
                    r.link_up_seconds = Some(up);
                    r.goodput = goodput_between(
                        got.unwrap_or(0),
                        self.spec,
                        self.rate_changes,
                        r.started_s,
                        end,
                    );
                }
                break;
            }
            if now >= self.timeout || self.stop.load(Ordering::Relaxed) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // One last sample: the final counters.
        r.t.push(epoch.elapsed().as_secs_f64());
        (r.down_ip_bytes, r.up_ip_bytes) = link.delivered();
        r.received.push(r.down_ip_bytes);
        link.stop();
        drop(sender);
        drop(sink);
        Ok(r)
    }
}

/// The `bytes` of the sink's JSON line.
fn sink_bytes(out: &str) -> Option<u64> {
    let v: serde_json::Value = serde_json::from_str(out.trim()).ok()?;
    v.get("bytes")?.as_u64()
}
