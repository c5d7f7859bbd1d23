//! Loopback transfer benchmark of the network (docs/benchmarks.md).
//!
//! `zdn-net-bench [--mib N] [--rounds R] [--chunk-size N]`: one object of N MiB of incompressible
//! bytes (a one-tensor safetensors file, stored raw, so payload = stored bytes) is added to a
//! rocksdb store; two real nodes (libp2p TCP+Noise+Yamux on 127.0.0.1, separate stores) run in this
//! process and the second fetches the object from the first, every chunk verified and written to
//! rocksdb. In the same run and alternating with it, the same bytes are copied over a plain
//! loopback TCP connection (write all, read all). Reported: the fetch time ÷ the TCP copy time,
//! and the bytes that crossed the loopback interface during the fetch (from /proc/net/dev, both
//! directions, headers included) ÷ the payload. Nothing else should load the loopback meanwhile.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use zdn_node::net::{fetch, FetchOptions, Keypair, Node, NodeConfig, Profile};
use zdn_node::store::{AddOptions, ObjectStore, StoreHandle, StoreLimits, TrustPolicy};
use zdn_protocol::manifest::{Kind, PublisherKey};
use zdn_protocol::safetensors::{encode_header, TensorLayout};
use zdn_protocol::DType;

struct Args {
    mib: u64,
    rounds: usize,
    chunk_size: u32,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut a = Args {
        mib: 256,
        rounds: 3,
        chunk_size: 1 << 20,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut val = |name: &str| it.next().with_context(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--mib" => a.mib = val("--mib")?.parse()?,
            "--rounds" => a.rounds = val("--rounds")?.parse()?,
            "--chunk-size" => a.chunk_size = val("--chunk-size")?.parse()?,
            "-h" | "--help" => {
                println!("zdn-net-bench [--mib N] [--rounds R] [--chunk-size N]");
                std::process::exit(0);
            }
            other => anyhow::bail!("unknown argument {other:?}"),
        }
    }
    anyhow::ensure!(
        a.mib > 0 && a.rounds > 0,
        "--mib and --rounds must be positive"
    );
    Ok(a)
}

/// A safetensors file with one u8 tensor of pseudo-random (incompressible) bytes.
fn object(mib: u64) -> anyhow::Result<Vec<u8>> {
    let n = mib << 20;
    let layout = TensorLayout {
        name: "w".into(),
        dtype: DType::U8,
        shape: vec![n],
    };
    let (mut file, _) = encode_header(&[layout], &BTreeMap::new())?;
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    file.reserve(n as usize);
    for _ in 0..n / 8 {
        // xorshift64*: fast, and zstd finds nothing in it.
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        file.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    Ok(file)
}

/// Bytes counted on the loopback interface so far (received + sent).
fn lo_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/net/dev").ok()?;
    let line = s.lines().find(|l| l.trim_start().starts_with("lo:"))?;
    let f: Vec<u64> = line
        .split(':')
        .nth(1)?
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect();
    Some(f.first()? + f.get(8)?)
}

async fn tcp_copy(bytes: &[u8]) -> anyhow::Result<Duration> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let len = bytes.len();
    let reader = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await?;
        s.set_nodelay(true)?;
        let mut buf = vec![0u8; 1 << 20];
        let mut got = 0;
        while got < len {
            let n = s.read(&mut buf).await?;
            anyhow::ensure!(n > 0, "tcp copy: early end");
            got += n;
        }
        anyhow::Ok(())
    });
    let t = Instant::now();
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    s.write_all(bytes).await?;
    s.flush().await?;
    reader.await??;
    Ok(t.elapsed())
}

fn main() -> anyhow::Result<()> {
    let a = parse_args()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let bytes = object(a.mib)?;
    let key = PublisherKey::from_seed(&[7; 32]);
    let tmp = tempfile::tempdir()?;
    let seed_store = ObjectStore::open(&tmp.path().join("seed"), StoreLimits::default())?;
    let mut opts = AddOptions::new(Kind::Base, "bench");
    opts.chunk_size = a.chunk_size;
    let (m, report) = seed_store.add(&bytes, &opts, &key)?;
    let hash = m.hash();
    eprintln!(
        "object: {} bytes, {} chunks, {} stored bytes",
        report.object_len, report.chunks, report.stored_bytes
    );
    rt.block_on(async {
        let (stop_seed, rx) = tokio::sync::oneshot::channel::<()>();
        let mut c = NodeConfig::new(Keypair::generate_ed25519(), Profile::Datacenter);
        c.listen = vec!["/ip4/127.0.0.1/tcp/0".parse()?];
        c.mdns = Some(false);
        let seeder = Node::spawn(c, StoreHandle::spawn(seed_store)?, async move {
            let _ = rx.await;
        })
        .await?;
        let addr = seeder
            .handle
            .listen_addrs()
            .await?
            .into_iter()
            .next()
            .context("seeder has no address")?;
        let mut ratios = Vec::new();
        let mut overheads = Vec::new();
        println!("round  fetch_s  tcp_s  fetch/tcp  lo_bytes/payload");
        for round in 0..a.rounds {
            let dir = tmp.path().join(format!("fetch{round}"));
            let store = StoreHandle::spawn(ObjectStore::open(&dir, StoreLimits::default())?)?;
            let (stop, rx) = tokio::sync::oneshot::channel::<()>();
            let mut c = NodeConfig::new(Keypair::generate_ed25519(), Profile::Datacenter);
            c.mdns = Some(false);
            c.trust = TrustPolicy {
                trusted: vec![key.public()],
                any: false,
            };
            let node = Node::spawn(c, store, async move {
                let _ = rx.await;
            })
            .await?;
            let fo = FetchOptions {
                peers: vec![addr.clone()],
                ..Default::default()
            };
            let lo0 = lo_bytes();
            let t = Instant::now();
            let r = fetch(&node.handle, hash, &fo, &mut |_| {}).await?;
            let fetch_time = t.elapsed();
            let lo1 = lo_bytes();
            anyhow::ensure!(
                r.object_len == bytes.len() as u64,
                "fetched the wrong object"
            );
            let _ = stop.send(());
            let _ = node.task.await;
            let tcp = tcp_copy(&bytes).await?;
            let ratio = fetch_time.as_secs_f64() / tcp.as_secs_f64();
            let overhead = match (lo0, lo1) {
                // Loopback counts every byte twice (sent and received on the same interface).
                (Some(x), Some(y)) => (y - x) as f64 / 2.0 / report.stored_bytes as f64,
                _ => f64::NAN,
            };
            println!(
                "{round:>5}  {:>7.3}  {:>5.3}  {ratio:>9.2}  {overhead:>16.4}",
                fetch_time.as_secs_f64(),
                tcp.as_secs_f64()
            );
            ratios.push(ratio);
            overheads.push(overhead);
            std::fs::remove_dir_all(&dir).ok();
        }
        ratios.sort_by(f64::total_cmp);
        overheads.sort_by(f64::total_cmp);
        println!(
            "median fetch/tcp {:.2}; median loopback bytes/payload {:.4} ({} MiB, chunk {} B)",
            ratios[ratios.len() / 2],
            overheads[overheads.len() / 2],
            a.mib,
            a.chunk_size
        );
        let _ = stop_seed.send(());
        let _ = seeder.task.await;
        anyhow::Ok(())
    })
}
