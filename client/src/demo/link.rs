//! The demo's network hop over the packet-level satellite-link emulator: the datacenter node and
//! the field station run as separate `zdn` processes in two network namespaces joined through
//! zdn-linkem's forwarder (1 Mbit/s, 300 ms each way, 0.5 % loss), so real TCP runs over real
//! delay and loss. Needs root, `ip` and /dev/net/tun; [`unavailable`] says what is missing.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
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

/// Serves `dc_home`'s store from a datacenter node in one namespace and runs `zdn fetch hash` for
/// `field_home` in the other, through the emulated link.
pub fn fetch_over_emulated_link(
    dc_home: &Path,
    field_home: &Path,
    hash: Hash,
    publisher: Hash,
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
    let result = run_hop(&exe, &pair, dc_home, field_home, hash, publisher);
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

fn run_hop(
    exe: &Path,
    pair: &NetnsPair,
    dc_home: &Path,
    field_home: &Path,
    hash: Hash,
    publisher: Hash,
) -> anyhow::Result<(FetchReport, f64)> {
    let listen = format!("/ip4/{}/tcp/4801", pair.addr_a);
    let mut dc = Command::new("ip")
        .args(["netns", "exec", &pair.ns_a])
        .arg(exe)
        .arg("--home")
        .arg(dc_home)
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
        .stderr(Stdio::null())
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
    let deadline = Instant::now() + Duration::from_secs(60);
    let addr = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let l = rx
            .recv_timeout(left)
            .context("the datacenter node did not start listening")?;
        if let Some(a) = l.strip_prefix("listening ") {
            break a.to_string();
        }
    };
    let t0 = Instant::now();
    let fetch = Command::new("ip")
        .args(["netns", "exec", &pair.ns_b])
        .arg(exe)
        .arg("--home")
        .arg(field_home)
        .args(["fetch", &hash.to_hex(), "--peer", &addr, "--trust"])
        .arg(publisher.to_hex())
        .args(["--profile", "field", "--no-mdns", "--json"])
        // The station knows its link's rate: the paced UDP lane keeps it full.
        .arg("--link-rate")
        .arg(format!("{}bit", demo_link().rate_bps))
        .output()
        .context("running zdn fetch at the field station")?;
    let wall = t0.elapsed().as_secs_f64();
    anyhow::ensure!(
        fetch.status.success(),
        "zdn fetch at the field station failed: {}",
        String::from_utf8_lossy(&fetch.stderr).trim()
    );
    let report: FetchReport =
        serde_json::from_slice(&fetch.stdout).context("reading zdn fetch --json")?;
    // A clean stop of the datacenter node (SIGTERM); Reaped kills it if that does not work.
    let _ = Command::new("kill")
        .args(["-TERM", &dc.0.id().to_string()])
        .status();
    let mut dc = dc;
    let _ = dc.0.wait();
    Ok((report, wall))
}
