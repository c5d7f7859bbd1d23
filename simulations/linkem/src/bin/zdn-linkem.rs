//! `zdn-linkem`: a packet-level satellite-link emulator in user space, and the small traffic tools
//! its tests measure it with.
//!
//! ```text
//! zdn-linkem up NAME [--rate 1mbit] [--delay 300ms] [--jitter 0ms] [--loss 0.01]
//!                    [--queue BYTES] [--outage 10s-40s]... [--subnet K] [--secs N] [--seed S]
//!                    [--stats-every 10s]
//!     make netns NAME-a (10.201.K.1) and NAME-b (10.201.K.2) joined through this process;
//!     the settings apply to each direction; runs until SIGINT/SIGTERM or --secs, then removes
//!     the namespaces and prints per-direction counters as JSON. Needs root and /dev/net/tun.
//! zdn-linkem udp-sink BIND SECS         count UDP packets; print JSON
//! zdn-linkem udp-blast TO BITS_PER_S SECS SIZE
//! zdn-linkem udp-echo BIND SECS
//! zdn-linkem udp-ping TO COUNT          print the round trips (ms) as JSON
//! zdn-linkem tcp-sink BIND              receive one TCP connection; print bytes and seconds
//! zdn-linkem tcp-send TO BYTES          send BYTES over one TCP connection (the bulk reference)
//! ```

use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use zdn_linkem::units::{parse_bits_per_sec, parse_duration, parse_outage};
use zdn_linkem::{bulk, spawn_direction, DirectionStats, LinkSpec, NetnsPair, Shaper};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

fn arg<T>(
    it: &mut impl Iterator<Item = String>,
    what: &str,
    f: impl Fn(&str) -> Result<T, String>,
) -> Result<T, String> {
    let v = it.next().ok_or_else(|| format!("{what} needs a value"))?;
    f(&v)
}

fn up(mut it: impl Iterator<Item = String>) -> Result<(), String> {
    let name = it.next().ok_or("up needs a NAME")?;
    let mut spec = LinkSpec::satellite();
    let mut subnet = 1u8;
    let mut secs = None;
    let mut seed = 1u64;
    let mut stats_every: Option<Duration> = None;
    while let Some(a) = it.next() {
        match a.as_str() {
            "--rate" => spec.rate_bps = arg(&mut it, "--rate", parse_bits_per_sec)?,
            "--delay" => spec.delay = arg(&mut it, "--delay", parse_duration)?,
            "--jitter" => spec.jitter = arg(&mut it, "--jitter", parse_duration)?,
            "--loss" => {
                spec.loss = arg(&mut it, "--loss", |s| {
                    s.parse().map_err(|_| format!("bad loss {s:?}"))
                })?
            }
            "--queue" => {
                spec.queue_bytes = arg(&mut it, "--queue", |s| {
                    s.parse().map_err(|_| format!("bad queue {s:?}"))
                })?
            }
            "--outage" => {
                let o = arg(&mut it, "--outage", parse_outage)?;
                spec.outages.push(o);
            }
            "--subnet" => {
                subnet = arg(&mut it, "--subnet", |s| {
                    s.parse().map_err(|_| format!("bad subnet {s:?}"))
                })?
            }
            "--secs" => secs = Some(arg(&mut it, "--secs", parse_duration)?),
            "--seed" => {
                seed = arg(&mut it, "--seed", |s| {
                    s.parse().map_err(|_| format!("bad seed {s:?}"))
                })?
            }
            "--stats-every" => stats_every = Some(arg(&mut it, "--stats-every", parse_duration)?),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    spec.validate()?;
    // SAFETY: installing an async-signal-safe handler (it only stores to an atomic).
    unsafe {
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
    }
    let (pair, tun_a, tun_b) = NetnsPair::create(&name, subnet).map_err(|e| e.to_string())?;
    let epoch = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let ab = Arc::new(DirectionStats::default());
    let ba = Arc::new(DirectionStats::default());
    let io = |e: std::io::Error| e.to_string();
    let mut threads = Vec::new();
    let (r, w) = spawn_direction(
        tun_a.try_clone().map_err(io)?,
        tun_b.try_clone().map_err(io)?,
        Shaper::new(spec.clone(), seed),
        epoch,
        stop.clone(),
        ab.clone(),
    )
    .map_err(io)?;
    threads.extend([r, w]);
    let (r, w) = spawn_direction(
        tun_b,
        tun_a,
        Shaper::new(spec, seed.wrapping_add(1)),
        epoch,
        stop.clone(),
        ba.clone(),
    )
    .map_err(io)?;
    threads.extend([r, w]);
    println!("a {} {}", pair.ns_a, pair.addr_a);
    println!("b {} {}", pair.ns_b, pair.addr_b);
    println!("ready");
    let mut next_stats = stats_every;
    while !STOP.load(Ordering::Relaxed) && secs.is_none_or(|s| epoch.elapsed() < s) {
        std::thread::sleep(Duration::from_millis(50));
        if let (Some(at), Some(every)) = (next_stats, stats_every) {
            if epoch.elapsed() >= at {
                use std::io::Write as _;
                let _ = writeln!(
                    std::io::stdout(),
                    "{{\"t\":{:.1},\"a_to_b\":{},\"b_to_a\":{}}}",
                    epoch.elapsed().as_secs_f64(),
                    ab.to_json(),
                    ba.to_json()
                );
                let _ = std::io::stdout().flush();
                next_stats = Some(at + every);
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    // Whoever started us may have stopped reading: never fail (and skip the cleanup) over that.
    use std::io::Write as _;
    let _ = writeln!(
        std::io::stdout(),
        "{{\"a_to_b\":{},\"b_to_a\":{}}}",
        ab.to_json(),
        ba.to_json()
    );
    drop(pair);
    Ok(())
}

fn udp_sink(bind: &str, secs: Duration) -> Result<(), String> {
    let s = UdpSocket::bind(bind).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .map_err(|e| e.to_string())?;
    let t0 = Instant::now();
    let (mut packets, mut ip_bytes) = (0u64, 0u64);
    let (mut first, mut last) = (None, Duration::ZERO);
    let mut buf = vec![0u8; 65_536];
    while t0.elapsed() < secs {
        if let Ok(n) = s.recv(&mut buf) {
            let now = t0.elapsed();
            first.get_or_insert(now);
            last = now;
            packets += 1;
            ip_bytes += n as u64 + 28; // IPv4 + UDP headers: what the link carries
        }
    }
    let first = first.unwrap_or_default();
    println!(
        "{{\"packets\":{packets},\"ip_bytes\":{ip_bytes},\"first_s\":{},\"last_s\":{}}}",
        first.as_secs_f64(),
        last.as_secs_f64()
    );
    Ok(())
}

fn udp_blast(to: &str, bps: u64, secs: Duration, size: usize) -> Result<(), String> {
    let s = UdpSocket::bind("0.0.0.0:0").map_err(|e| e.to_string())?;
    let pkt = vec![0x5au8; size];
    let interval = Duration::from_secs_f64((size + 28) as f64 * 8.0 / bps as f64);
    let t0 = Instant::now();
    let mut next = t0;
    let mut sent = 0u64;
    while t0.elapsed() < secs {
        let _ = s.send_to(&pkt, to);
        sent += 1;
        next += interval;
        if let Some(d) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
    }
    println!("{{\"sent\":{sent}}}");
    Ok(())
}

fn udp_echo(bind: &str, secs: Duration) -> Result<(), String> {
    let s = UdpSocket::bind(bind).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .map_err(|e| e.to_string())?;
    let t0 = Instant::now();
    let mut buf = [0u8; 2048];
    while t0.elapsed() < secs {
        if let Ok((n, from)) = s.recv_from(&mut buf) {
            let _ = s.send_to(&buf[..n], from);
        }
    }
    Ok(())
}

fn udp_ping(to: &str, count: u32) -> Result<(), String> {
    let s = UdpSocket::bind("0.0.0.0:0").map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let mut rtts = Vec::new();
    let mut buf = [0u8; 64];
    for i in 0..count {
        let t = Instant::now();
        s.send_to(&i.to_le_bytes(), to).map_err(|e| e.to_string())?;
        loop {
            match s.recv(&mut buf) {
                Ok(4) if buf[..4] == i.to_le_bytes() => {
                    rtts.push(t.elapsed().as_secs_f64() * 1000.0);
                    break;
                }
                Ok(_) => continue,
                Err(_) => break,
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let list: Vec<String> = rtts.iter().map(|r| format!("{r:.3}")).collect();
    println!("{{\"rtts_ms\":[{}]}}", list.join(","));
    Ok(())
}

/// Receives one TCP connection's bytes; prints the byte count and the seconds from accept to end.
fn tcp_sink(bind: &str) -> Result<(), String> {
    let r = bulk::tcp_sink(bind, Duration::from_secs(3600)).map_err(|e| e.to_string())?;
    println!("{}", r.to_json());
    Ok(())
}

/// Sends `bytes` zero bytes over one TCP connection.
fn tcp_send(to: &str, bytes: u64) -> Result<(), String> {
    bulk::tcp_send(to, bytes).map_err(|e| e.to_string())
}

fn main() {
    let mut it = std::env::args().skip(1);
    let r = match it.next().as_deref() {
        Some("up") => up(it),
        Some("udp-sink") => (|| {
            let bind = it.next().ok_or("BIND")?;
            udp_sink(&bind, arg(&mut it, "SECS", parse_duration)?)
        })(),
        Some("udp-blast") => (|| {
            let to = it.next().ok_or("TO")?;
            let bps = arg(&mut it, "BITS_PER_S", parse_bits_per_sec)?;
            let secs = arg(&mut it, "SECS", parse_duration)?;
            let size = arg(&mut it, "SIZE", |s| s.parse::<usize>().map_err(|_| format!("bad size {s:?}")))?;
            udp_blast(&to, bps, secs, size.clamp(1, 1472))
        })(),
        Some("udp-echo") => (|| {
            let bind = it.next().ok_or("BIND")?;
            udp_echo(&bind, arg(&mut it, "SECS", parse_duration)?)
        })(),
        Some("udp-ping") => (|| {
            let to = it.next().ok_or("TO")?;
            udp_ping(&to, arg(&mut it, "COUNT", |s| s.parse::<u32>().map_err(|_| format!("bad count {s:?}")))?)
        })(),
        Some("tcp-sink") => (|| tcp_sink(&it.next().ok_or("BIND")?))(),
        Some("tcp-send") => (|| {
            let to = it.next().ok_or("TO")?;
            tcp_send(&to, arg(&mut it, "BYTES", |s| s.parse::<u64>().map_err(|_| format!("bad byte count {s:?}")))?)
        })(),
        _ => Err("usage: zdn-linkem up NAME [options] | udp-sink | udp-blast | udp-echo | udp-ping (see the source header)".to_string()),
    };
    if let Err(e) = r {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
