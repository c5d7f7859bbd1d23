//! Runs a scenario: publish the objects at the datacenter, build the namespaces and links, start a
//! `zdn node run` per node, run the fetches while sampling every link's counters, stop, verify the
//! copies, run the TCP reference, and assemble the report (JSON and PNG, see [`write()`]).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::error::ScenarioError;
use super::objects::{publish, same_bytes, Published};
use super::process::Reaped;
use super::report::{goodput_between, up_seconds, FetchResult, NodeSeries, Report, Series};
use super::spec::{Place, Scenario, Transport};
use super::summary::{node_reports, object_reports, plot_of, satellite_reports};
use super::topology::Topology;
use super::zdn::{FetchReport, NodeProcess, Zdn};

/// How to run.
#[derive(Debug)]
pub struct RunOptions {
    /// The scenario file, as named in the report.
    pub file: String,
    /// The zdn binary (default: next to the running executable).
    pub zdn: Option<PathBuf>,
    /// The executable with the `tcp-sink` and `tcp-send` subcommands (zdn-sim itself).
    pub helper: PathBuf,
    /// Scratch directory for the nodes' homes, objects and logs (default: a new one in the
    /// system's temporary directory, removed at the end unless `keep_work`).
    pub work: Option<PathBuf>,
    pub keep_work: bool,
    /// Set (by a signal handler) to stop early; the report says so.
    pub stop: &'static AtomicBool,
}

/// Says why scenarios cannot run here, if they cannot.
pub fn check_available() -> Result<(), ScenarioError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(ScenarioError::Unavailable(
            "not root (network namespaces need it)".into(),
        ));
    }
    if !Path::new("/dev/net/tun").exists() {
        return Err(ScenarioError::Unavailable("no /dev/net/tun".into()));
    }
    let ip = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output();
    if !ip.is_ok_and(|o| o.status.success()) {
        return Err(ScenarioError::Unavailable(
            "`ip netns` does not work here (iproute2 missing?)".into(),
        ));
    }
    Ok(())
}

fn say(msg: &str) {
    eprintln!("zdn-sim: {msg}");
}

/// The scratch directory; removed on drop unless kept.
struct Work {
    dir: PathBuf,
    keep: bool,
}

impl Drop for Work {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn multiaddr(t: Transport, ip: &str) -> String {
    match t {
        Transport::Tcp => format!("/ip4/{ip}/tcp/4801"),
        Transport::Quic => format!("/ip4/{ip}/udp/4801/quic-v1"),
    }
}

/// Cumulative bytes per node, sampled every `every`.
struct Sampler {
    every: Duration,
    next: Duration,
    series: Series,
}

impl Sampler {
    fn tick(&mut self, s: &Scenario, topo: &Topology, force: bool) {
        let now = topo.epoch.elapsed();
        if !force && now < self.next {
            return;
        }
        self.next = now + self.every;
        self.series.t.push(now.as_secs_f64());
        for (i, n) in self.series.nodes.iter_mut().enumerate() {
            let (rx, tx) = topo.node_bytes(s, i);
            n.received.push(rx);
            n.sent.push(tx);
        }
    }
}

/// One fetch as it runs.
struct Running {
    process: Option<Reaped>,
    output: PathBuf,
    result: FetchResult,
}

/// Runs `s`; the report is complete even when a fetch failed or the run timed out (`ok` false and
/// `error` say so). Errors are for runs that could not happen at all.
pub fn run(s: &Scenario, o: &RunOptions) -> Result<Report, ScenarioError> {
    check_available()?;
    let zdn = Zdn::locate(o.zdn.clone())?;
    let wall = Instant::now();
    let dir = match &o.work {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("zdn-sim-{}-{}", s.name, std::process::id())),
    };
    let _ = std::fs::remove_dir_all(&dir);
    let work = Work {
        dir,
        keep: o.keep_work,
    };
    for d in ["nodes", "logs", "fetched"] {
        let p = work.dir.join(d);
        std::fs::create_dir_all(&p).map_err(|e| ScenarioError::io("creating", p, e))?;
    }
    let logs = work.dir.join("logs");
    let homes: Vec<PathBuf> = s
        .nodes
        .iter()
        .map(|n| work.dir.join("nodes").join(&n.name))
        .collect();
    let dc = s.datacenter();
    // A fresh home has no publisher key; the nodes trust this one.
    zdn.run(&homes[dc], &["key", "generate"])?;
    let key = zdn.publisher_key(&homes[dc])?;
    say(&format!(
        "publishing {} object(s) at the datacenter",
        s.objects.len()
    ));
    let published = publish(&zdn, s, &homes, &work.dir.join("objects"))?;

    let mut topo = Topology::build(s)?;
    let mut nodes: Vec<Option<NodeProcess>> = s.nodes.iter().map(|_| None).collect();
    let mut order: Vec<usize> = (0..s.nodes.len()).collect();
    order.sort_by_key(|&i| match s.nodes[i].place {
        Place::Datacenter => 0,
        Place::Station => 1,
        Place::Lan => 2,
    });
    for &i in &order {
        let n = &s.nodes[i];
        let mut args: Vec<String> = [
            "--profile",
            n.profile.as_str(),
            "--no-mdns",
            "--trust",
            key.as_str(),
        ]
        .map(String::from)
        .into();
        for a in topo.addresses(s, i) {
            args.extend(["--listen".into(), multiaddr(s.transport, &a)]);
        }
        if let Some(up) = s.uplink_peer(i) {
            let (Some(addr), Some(p)) = (topo.address(s, up, i), &nodes[up]) else {
                // Unreachable: uplink peers start first (`order`).
                return Err(ScenarioError::Stopped(format!(
                    "{}'s uplink peer is not running",
                    n.name
                )));
            };
            let peer = format!("{}/p2p/{}", multiaddr(s.transport, addr), p.peer_id);
            args.extend(["--peer".into(), peer]);
        }
        args.extend(n.args.iter().cloned());
        let log = logs.join(format!("node-{}", n.name));
        let ns = &topo.namespaces[i].name;
        nodes[i] = Some(NodeProcess::start(
            &zdn,
            ns,
            &homes[i],
            &args,
            &log,
            Duration::from_secs(60),
        )?);
    }
    say(&format!(
        "{} node(s) up at {:.1} s; fetching",
        s.nodes.len(),
        topo.epoch.elapsed().as_secs_f64()
    ));

    let mut sampler = Sampler {
        every: s.run.sample_every,
        next: Duration::ZERO,
        series: Series {
            interval_s: s.run.sample_every.as_secs_f64(),
            t: Vec::new(),
            nodes: s
                .nodes
                .iter()
                .map(|n| NodeSeries {
                    name: n.name.clone(),
                    ..Default::default()
                })
                .collect(),
        },
    };
    let fetches_from = topo.epoch.elapsed() + s.run.warmup;
    let mut runs: Vec<Running> = Vec::new();
    let mut active: Vec<usize> = Vec::new();
    let mut error = None;
    let mut all_done: Option<Duration> = None;
    loop {
        sampler.tick(s, &topo, false);
        let now = topo.epoch.elapsed();
        if o.stop.load(Ordering::Relaxed) {
            error = Some("interrupted".to_owned());
            break;
        }
        if now >= s.run.timeout {
            error = Some(format!("timed out after {:?}", s.run.timeout));
            break;
        }
        let ctx = Ctx {
            s,
            zdn: &zdn,
            topo: &topo,
            nodes: &nodes,
            homes: &homes,
            published: &published,
            work: &work.dir,
        };
        let mut still = Vec::new();
        for k in std::mem::take(&mut active) {
            if ctx.poll(k, &mut runs[k])? {
                still.push(k);
            }
        }
        active = still;
        if active.is_empty() && runs.len() < s.fetches.len() && now >= fetches_from {
            loop {
                let k = runs.len();
                runs.push(ctx.start(k)?);
                active.push(k);
                if !s.fetches.get(k + 1).is_some_and(|f| f.concurrent) {
                    break;
                }
            }
        }
        if active.is_empty() && runs.len() == s.fetches.len() {
            let done = *all_done.get_or_insert(now);
            if now >= done + s.run.cooldown && now >= s.run.min_duration {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for r in &mut runs {
        if r.result.finished_s.is_none() {
            r.result.error = Some("did not finish".into());
            r.process = None;
        }
    }
    let mut stopped = vec![None; s.nodes.len()];
    for &i in order.iter().rev() {
        if let Some(n) = nodes[i].as_mut() {
            stopped[i] = n.stop();
        }
    }
    // Stopped links count no more: the last sample is the final count.
    topo.stop_links();
    sampler.tick(s, &topo, true);
    let totals: Vec<(u64, u64)> = (0..s.nodes.len()).map(|i| topo.node_bytes(s, i)).collect();
    let down_up: Vec<(u64, u64)> = topo
        .uplinks
        .iter()
        .map(|l| l.as_ref().map(|l| l.delivered()).unwrap_or_default())
        .collect();
    let node_reports = node_reports(s, &topo, &nodes, &totals, stopped);
    drop(nodes);
    drop(topo);

    let mut fetches = Vec::new();
    for (k, mut r) in runs.into_iter().enumerate() {
        if let Some(p) = r.process.take() {
            let obj = &published[s.fetches[k].object];
            finish_fetch(&mut r, &p.stdout(), &p.stderr(), obj, s)?;
        }
        fetches.push(r.result);
    }
    let satellite = satellite_reports(s, &fetches, &down_up, error.is_none(), o, &logs)?;
    let ok = error.is_none() && fetches.iter().all(|f| f.completed && f.verified);
    let mut report = Report {
        scenario: s.name.clone(),
        description: s.description.clone(),
        file: o.file.clone(),
        zdn: zdn.exe.display().to_string(),
        transport: s.transport,
        seed: s.seed,
        ok,
        error,
        link: super::report::LinkReport::of(&s.link, &s.rate_changes),
        lan: super::report::LinkReport::of(&s.lan, &[]),
        nodes: node_reports,
        objects: object_reports(&published),
        fetches,
        satellite,
        idle: Vec::new(),
        series: sampler.series,
        plot: None,
        wall_seconds: wall.elapsed().as_secs_f64(),
    };
    report.idle = super::summary::idle_reports(s, &report.series);
    Ok(report)
}

/// What starting a fetch needs.
struct Ctx<'a> {
    s: &'a Scenario,
    zdn: &'a Zdn,
    topo: &'a Topology,
    nodes: &'a [Option<NodeProcess>],
    homes: &'a [PathBuf],
    published: &'a [Published],
    work: &'a Path,
}

impl Ctx<'_> {
    /// Starts `zdn fetch` for fetch `k` (attempt `attempt`, counting from 1).
    fn spawn_fetch(&self, k: usize, attempt: u32, output: &Path) -> Result<Reaped, ScenarioError> {
        let (s, f) = (self.s, &self.s.fetches[k]);
        let obj = &self.published[f.object];
        let node = &s.nodes[f.node].name;
        let mut args = vec!["fetch".to_owned(), obj.add.hash.clone()];
        for &p in &f.from {
            if let (Some(addr), Some(n)) = (self.topo.address(s, p, f.node), &self.nodes[p]) {
                let peer = format!("{}/p2p/{}", multiaddr(s.transport, addr), n.peer_id);
                args.extend(["--peer".into(), peer]);
            }
        }
        args.extend(["-o".into(), output.display().to_string(), "--json".into()]);
        let log = self
            .work
            .join("logs")
            .join(format!("fetch-{k}-{node}-{attempt}"));
        let ns = &self.topo.namespaces[f.node].name;
        let p = self.zdn.spawn_in(ns, &self.homes[f.node], &args, &log)?;
        say(&format!(
            "{node} fetches {} at {:.1} s{}",
            obj.name,
            self.topo.epoch.elapsed().as_secs_f64(),
            if attempt > 1 {
                format!(" (attempt {attempt})")
            } else {
                String::new()
            }
        ));
        Ok(p)
    }

    fn start(&self, k: usize) -> Result<Running, ScenarioError> {
        let (s, f) = (self.s, &self.s.fetches[k]);
        let obj = &self.published[f.object];
        let node = &s.nodes[f.node].name;
        let output = self
            .work
            .join("fetched")
            .join(format!("{k}-{node}-{}", obj.name));
        let started = self.topo.epoch.elapsed().as_secs_f64();
        let process = self.spawn_fetch(k, 1, &output)?;
        Ok(Running {
            process: Some(process),
            output,
            result: FetchResult {
                node: node.clone(),
                object: obj.name.clone(),
                from: f.from.iter().map(|&p| s.nodes[p].name.clone()).collect(),
                over_satellite: s.nodes[f.node].place == Place::Station,
                started_s: started,
                finished_s: None,
                seconds: None,
                link_up_seconds: None,
                payload_bytes: obj.add.stored_bytes,
                attempts: 1,
                failed_attempts: Vec::new(),
                exit_code: None,
                completed: false,
                verified: false,
                zdn_report: None,
                goodput: None,
                error: None,
            },
        })
    }

    /// Checks fetch `k`: true while it runs. An incomplete fetch (zdn's exit status 4: run again
    /// to resume) with retries left is started again at once, as an operator or a timer would.
    fn poll(&self, k: usize, r: &mut Running) -> Result<bool, ScenarioError> {
        let Some(p) = r.process.as_mut() else {
            return Ok(false);
        };
        let Some(status) = p.try_wait() else {
            return Ok(true);
        };
        let end = self.topo.epoch.elapsed().as_secs_f64();
        let res = &mut r.result;
        if status.code() == Some(4) && res.attempts <= self.s.fetches[k].retries {
            let why = p.stderr().trim().lines().last().unwrap_or("").to_owned();
            say(&format!("{} {}: {why}", res.node, res.object));
            res.failed_attempts
                .push(format!("exit 4 at {end:.1} s: {why}"));
            res.attempts += 1;
            r.process = Some(self.spawn_fetch(k, res.attempts, &r.output)?);
            return Ok(true);
        }
        res.finished_s = Some(end);
        res.seconds = Some(end - res.started_s);
        res.exit_code = status.code();
        res.completed = status.success();
        say(&format!(
            "{} fetched {} in {:.1} s{}",
            res.node,
            res.object,
            end - res.started_s,
            if status.success() { "" } else { " (failed)" }
        ));
        Ok(false)
    }
}

/// Reads the fetch's report, checks the copy against the published bytes, computes goodput.
fn finish_fetch(
    r: &mut Running,
    stdout: &str,
    stderr: &str,
    obj: &Published,
    s: &Scenario,
) -> Result<(), ScenarioError> {
    let res = &mut r.result;
    if !res.completed {
        res.error = Some(stderr.trim().lines().last().unwrap_or("failed").to_owned());
        return Ok(());
    }
    res.zdn_report = serde_json::from_str(stdout).ok();
    if let Ok(z) = serde_json::from_str::<FetchReport>(stdout) {
        if z.already_present {
            res.payload_bytes = 0;
        }
    }
    res.verified = r.output.exists() && same_bytes(&r.output, &obj.file)?;
    if !res.verified {
        res.error = Some("the fetched copy differs from the published file".into());
    }
    let _ = std::fs::remove_file(&r.output);
    if let Some(end) = res.finished_s {
        let (link, changes): (_, &[_]) = if res.over_satellite {
            (&s.link, &s.rate_changes)
        } else {
            (&s.lan, &[])
        };
        let up = up_seconds(&link.outages, res.started_s, end);
        res.link_up_seconds = Some(up);
        res.goodput = goodput_between(res.payload_bytes, link, changes, res.started_s, end);
    }
    Ok(())
}

/// Writes `<out>/<name>.json` and `<out>/<name>.png`; returns their paths.
pub fn write(report: &mut Report, out: &Path) -> Result<(PathBuf, PathBuf), ScenarioError> {
    std::fs::create_dir_all(out).map_err(|e| ScenarioError::io("creating", out, e))?;
    let png = out.join(format!("{}.png", report.scenario));
    plot_of(report).write_png(&png)?;
    report.plot = png.file_name().map(|n| n.to_string_lossy().into_owned());
    let json = out.join(format!("{}.json", report.scenario));
    let text =
        serde_json::to_string_pretty(report).map_err(|e| ScenarioError::Encode(e.to_string()))?;
    std::fs::write(&json, text + "\n").map_err(|e| ScenarioError::io("writing", &json, e))?;
    Ok((json, png))
}
