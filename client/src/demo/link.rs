//! The demo's network hop over the packet-level satellite-link emulator: the datacenter node and
//! the field station run as separate `zdn` processes in two network namespaces joined through
//! zdn-linkem's forwarder (1 Mbit/s, 300 ms each way, 0.5 % loss), so real TCP runs over real
//! delay and loss. Needs root, `ip` and /dev/net/tun; [`unavailable`] says what is missing.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use zdn_linkem::{spawn_direction, DirectionStats, LinkSpec, NetnsPair, Shaper};
use zdn_node::net::FetchReport;
use zdn_protocol::Hash;

/// The link the demo emulates, each direction.
pub fn demo_link() -> LinkSpec {
    LinkSpec {
        rate_bps: 1_000_000,
        delay: Duration::from_millis(300),
        jitter: Duration::ZERO,
        loss: 0.005,
        queue_bytes: 125_000,
        outages: Vec::new(),
    }
}

/// Why the emulator cannot run here, if it cannot.
pub fn unavailable() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root: network namespaces need it".into());
    }
    if !Path::new("/dev/net/tun").exists() {
        return Some("no /dev/net/tun".into());
    }
    if !Command::new("ip")
        .args(["netns", "list"])
        .output()
        .is_ok_and(|o| o.status.success())
    {
        return Some("`ip netns` does not work here".into());
    }
    None
}

/// What crossed the emulated link.
#[derive(Debug, Clone)]
pub struct LinkHop {
    pub fetch: FetchReport,
    pub description: String,
    /// IP bytes delivered datacenter → field and back (headers, requests and handshakes included).
    pub ip_bytes_down: u64,
    pub ip_bytes_up: u64,
    pub wall_seconds: f64,
}

/// Kills the child on drop (a failed demo leaves no node behind).
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// How long the demo's fetch may take: a fixed allowance for start-up plus ten times the object's
/// time at the link's rate. A fetch that has not ended by then is stopped and reported, with its
/// log, instead of leaving the demo waiting.
pub fn fetch_deadline(object_bytes: u64) -> Duration {
    let at_rate = object_bytes as f64 * 8.0 / demo_link().rate_bps as f64;
    Duration::from_secs(120) + Duration::from_secs_f64((10.0 * at_rate).min(86_400.0))
}

/// Serves `dc_home`'s store from a datacenter node in one namespace and runs `zdn fetch hash` for
/// `field_home` in the other, through the emulated link; a fetch that outlives `deadline` is
/// killed and is an error. The two processes' stderr go to `node.log` and `fetch.log` in their homes.
pub fn fetch_over_emulated_link(
    dc_home: &Path,
    field_home: &Path,
    hash: Hash,
    publisher: Hash,
    deadline: Duration,
) -> anyhow::Result<LinkHop> {
    let exe = std::env::current_exe().context("finding the zdn binary")?;
    let spec = demo_link();
    // Names and subnet from the pid, so two demos at once do not take each other's namespaces.
    let pid = std::process::id();
    let (pair, tun_a, tun_b) =
        NetnsPair::create(&format!("zd{}", pid % 1_000_000), (pid % 200 + 50) as u8)?;
    let epoch = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let down = Arc::new(DirectionStats::default());
    let up = Arc::new(DirectionStats::default());
    let mut threads = Vec::new();
    let (r, w) = spawn_direction(
        tun_a.try_clone()?,
        tun_b.try_clone()?,
        Shaper::new(spec.clone(), 1),
        epoch,
        stop.clone(),
        down.clone(),
    )?;
    threads.extend([r, w]);
    let (r, w) = spawn_direction(
        tun_b,
        tun_a,
        Shaper::new(spec.clone(), 2),
        epoch,
        stop.clone(),
        up.clone(),
    )?;
    threads.extend([r, w]);
    let homes = Homes {
        dc: dc_home,
        field: field_home,
    };
    let result = run_hop(&exe, &pair, &homes, hash, publisher, deadline);
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    drop(pair);
    let (fetch, wall_seconds) = result?;
    Ok(LinkHop {
        fetch,
        description: format!(
            "emulated satellite link (two network namespaces joined by TUN devices through zdn-linkem's shaper): {} kbit/s, {} ms each way, {:.1} % loss",
            spec.rate_bps / 1000,
            spec.delay.as_millis(),
            spec.loss * 100.0
        ),
        ip_bytes_down: down.bytes_delivered.load(Ordering::Relaxed),
        ip_bytes_up: up.bytes_delivered.load(Ordering::Relaxed),
        wall_seconds,
    })
}

/// The two nodes' homes.
struct Homes<'a> {
    dc: &'a Path,
    field: &'a Path,
}

fn run_hop(
    exe: &Path,
    pair: &NetnsPair,
    homes: &Homes<'_>,
    hash: Hash,
    publisher: Hash,
    deadline: Duration,
) -> anyhow::Result<(FetchReport, f64)> {
    let listen = format!("/ip4/{}/tcp/4801", pair.addr_a);
    let dc_log = homes.dc.join("node.log");
    let mut dc = Command::new("ip")
        .args(["netns", "exec", &pair.ns_a])
        .arg(exe)
        .arg("--home")
        .arg(homes.dc)
        .args([
            "node",
            "run",
            "--profile",
            "datacenter",
            "--no-mdns",
            "--listen",
            &listen,
        ])
        .stdout(Stdio::piped())
        .stderr(log_file(&dc_log)?)
        .spawn()
        .context("starting the datacenter node")?;
    let out = dc.stdout.take().context("datacenter node stdout")?;
    let dc = Reaped(dc);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    let listen_by = Instant::now() + Duration::from_secs(60);
    let addr = loop {
        let left = listen_by.saturating_duration_since(Instant::now());
        let l = rx.recv_timeout(left).with_context(|| {
            format!(
                "the datacenter node did not start listening (its log: {})",
                dc_log.display()
            )
        })?;
        if let Some(a) = l.strip_prefix("listening ") {
            break a.to_string();
        }
    };
    let t0 = Instant::now();
    let fetch_log = homes.field.join("fetch.log");
    let fetch = Command::new("ip")
        .args(["netns", "exec", &pair.ns_b])
        .arg(exe)
        .arg("--home")
        .arg(homes.field)
        .args(["fetch", &hash.to_hex(), "--peer", &addr, "--trust"])
        .arg(publisher.to_hex())
        .args(["--profile", "field", "--no-mdns", "--json"])
        // The station knows its link's rate: the paced UDP lane keeps it full.
        .arg("--link-rate")
        .arg(format!("{}bit", demo_link().rate_bps))
        .stdout(Stdio::piped())
        .stderr(log_file(&fetch_log)?)
        .spawn()
        .context("running zdn fetch at the field station")?;
    let (status, stdout) = wait_until(Reaped(fetch), deadline).with_context(|| {
        format!(
            "zdn fetch at the field station (its log: {}; the datacenter node's: {})",
            fetch_log.display(),
            dc_log.display()
        )
    })?;
    let wall = t0.elapsed().as_secs_f64();
    anyhow::ensure!(
        status.success(),
        "zdn fetch at the field station failed: {}",
        std::fs::read_to_string(&fetch_log)
            .unwrap_or_default()
            .trim()
    );
    let report: FetchReport =
        serde_json::from_slice(&stdout).context("reading zdn fetch --json")?;
    stop_node(dc, &dc_log);
    Ok((report, wall))
}

/// A clean stop of the datacenter node (SIGTERM), waited for at most [`STOP_WAIT`]; a node still
/// running then is killed (by `Reaped`) and that is said on stderr, naming its log.
fn stop_node(mut node: Reaped, log: &Path) {
    let _ = Command::new("kill")
        .args(["-TERM", &node.0.id().to_string()])
        .status();
    if !matches!(exit_within(&mut node.0, STOP_WAIT), Ok(None)) {
        return;
    }
    eprintln!(
        "  the datacenter node did not stop within {} s of SIGTERM; killed (its log: {})",
        STOP_WAIT.as_secs(),
        log.display()
    );
}

/// How long a node may take to stop after SIGTERM (it is tested to take under 5 s).
const STOP_WAIT: Duration = Duration::from_secs(10);

/// Polls `child` until it exits or `within` has passed: its exit status, or `None` while it still
/// runs.
fn exit_within(child: &mut Child, within: Duration) -> std::io::Result<Option<ExitStatus>> {
    let end = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= end {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn log_file(path: &Path) -> anyhow::Result<std::fs::File> {
    std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))
}

/// Waits for `child` to exit, collecting its stdout; after `deadline` it is killed (by `Reaped`)
/// and that is an error.
fn wait_until(mut child: Reaped, deadline: Duration) -> anyhow::Result<(ExitStatus, Vec<u8>)> {
    let mut out = child.0.stdout.take().context("the child's stdout")?;
    let reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut out, &mut v).map(|_| v)
    });
    let status = exit_within(&mut child.0, deadline)?
        .with_context(|| format!("did not finish in {} s; stopped", deadline.as_secs()))?;
    let stdout = reader
        .join()
        .map_err(|_| anyhow::anyhow!("the stdout reader panicked"))??;
    Ok((status, stdout))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_past_its_deadline_is_stopped_and_reported() {
        let child = Command::new("sleep")
            .arg("30")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id();
        let t0 = Instant::now();
        let err = wait_until(Reaped(child), Duration::from_millis(300)).unwrap_err();
        assert!(err.to_string().contains("did not finish in 0 s"), "{err}");
        assert!(t0.elapsed() < Duration::from_secs(5));
        // Reaped killed and waited for it: the pid is gone.
        assert!(!Path::new(&format!("/proc/{pid}")).exists());
    }

    #[test]
    fn a_child_within_its_deadline_gives_its_output() {
        let child = Command::new("echo")
            .arg("done")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let (status, out) = wait_until(Reaped(child), Duration::from_secs(30)).unwrap();
        assert!(status.success());
        assert_eq!(out, b"done\n");
    }

    #[test]
    fn the_deadline_grows_with_the_object() {
        // 1.4 MB at 1 Mbit/s is 11.2 s of link: 120 s + 10 × that.
        assert_eq!(fetch_deadline(1_400_000).as_secs(), 232);
        assert!(fetch_deadline(0) == Duration::from_secs(120));
        assert!(fetch_deadline(u64::MAX) <= Duration::from_secs(120 + 86_400));
    }
}
