//! How long a peer's chunk read waits on the store thread while a large object is verified and
//! committed (docs/benchmarks.md "Store thread under a large object").
//!
//! `zdn-stall-bench [--size-mib N] [--rounds R] [--probe-ms P]`: a generated bf16 safetensors
//! object of N MiB (default 1536) is added to a fresh rocksdb store, which then runs on its owner
//! thread ([`StoreHandle`]). A prober thread reads one of the object's chunks through the handle
//! every P ms (default 5), as the chunk server does for a peer, and records how long each read
//! waits. Meanwhile the object is verified (every chunk decoded, the whole-object hash checked) and
//! committed, alternately
//! - **one job**: the whole verify and commit as one closure on the store thread (what a finished
//!   fetch did before), and
//! - **batched**: [`StoreHandle::verify_object_blocking`] + [`StoreHandle::commit_blocking`]
//!   (jobs of at most 16 MiB of chunks or 4096 ids; decoding and hashing off the store thread).
//!
//! It prints, per mode and round, the phase's wall time and the probe latencies (max, p99,
//! median), and the ratio of the worst waits. The worst wait of the batched mode is what a peer
//! sees; the brief asks for under 1 s.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use zdn_node::store::{AddOptions, ObjectStore, StoreError, StoreHandle, StoreLimits};
use zdn_protocol::manifest::{Kind, PublisherKey, SignedManifest};
use zdn_protocol::safetensors::{encode_header, TensorLayout};
use zdn_protocol::{DType, Hash};

struct Args {
    size_mib: u64,
    rounds: usize,
    probe_ms: u64,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut a = Args {
        size_mib: 1536,
        rounds: 2,
        probe_ms: 5,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut val = |name: &str| it.next().with_context(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--size-mib" => a.size_mib = val("--size-mib")?.parse()?,
            "--rounds" => a.rounds = val("--rounds")?.parse()?,
            "--probe-ms" => a.probe_ms = val("--probe-ms")?.parse()?,
            "-h" | "--help" => {
                println!("zdn-stall-bench [--size-mib N] [--rounds R] [--probe-ms P]");
                std::process::exit(0);
            }
            other => anyhow::bail!("unknown argument {other:?}"),
        }
    }
    anyhow::ensure!(a.size_mib >= 64, "--size-mib must be at least 64");
    anyhow::ensure!(a.rounds > 0, "--rounds must be at least 1");
    Ok(a)
}

/// A safetensors file of 64 bf16 tensors of about `size` bytes in all, values ~ N(0, 0.02).
fn generate(size: u64) -> anyhow::Result<Vec<u8>> {
    let tensors = 64u64;
    let rows = 1024u64;
    let cols = (size / tensors / rows / 2).max(1);
    let layouts: Vec<TensorLayout> = (0..tensors)
        .map(|i| TensorLayout {
            name: format!("model.layers.{i}.mlp.down_proj.weight"),
            dtype: DType::BF16,
            shape: vec![rows, cols],
        })
        .collect();
    let (mut file, lens) = encode_header(&layouts, &Default::default())?;
    let data: u64 = lens.iter().sum();
    file.reserve(usize::try_from(data)?);
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..data / 2 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let u = ((x >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.07;
        file.extend_from_slice(&((u.to_bits() >> 16) as u16).to_le_bytes());
    }
    Ok(file)
}

/// The old finish of a fetch: every chunk read, decoded and hashed, then the commit, in one job.
fn one_job(handle: &StoreHandle, m: &SignedManifest) -> Result<(), StoreError> {
    let m = m.clone();
    handle.call_blocking(move |s| {
        let hash = m.hash();
        let mut hasher = blake3::Hasher::new();
        for r in &m.manifest.chunks {
            hasher.update(&s.read_chunk(&hash, r)?);
        }
        let actual = Hash::from(hasher.finalize());
        if actual != m.manifest.object_hash {
            return Err(StoreError::ObjectHash {
                hash,
                expected: m.manifest.object_hash,
                actual,
            });
        }
        s.commit(&m, true)
    })
}

fn batched(handle: &StoreHandle, m: &SignedManifest) -> Result<(), StoreError> {
    handle.verify_object_blocking(m)?;
    handle.commit_blocking(m, true)
}

struct Phase {
    mode: &'static str,
    round: usize,
    seconds: f64,
    probes: usize,
    max_ms: f64,
    p99_ms: f64,
    median_ms: f64,
}

/// Runs `work` while a prober reads chunks through `handle`; returns the phase's numbers.
fn measure(
    handle: &StoreHandle,
    ids: &[Hash],
    probe: Duration,
    mode: &'static str,
    round: usize,
    work: impl FnOnce() -> Result<(), StoreError>,
) -> anyhow::Result<Phase> {
    let stop = Arc::new(AtomicBool::new(false));
    let waits = Arc::new(Mutex::new(Vec::<Duration>::new()));
    let prober = {
        let (handle, ids, stop, waits) =
            (handle.clone(), ids.to_vec(), stop.clone(), waits.clone());
        std::thread::spawn(move || -> Result<(), StoreError> {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let id = ids[i % ids.len()];
                i += 7;
                let start = Instant::now();
                let got = handle.call_blocking(move |s| s.chunk(&id))?;
                let wait = start.elapsed();
                if got.is_none() {
                    return Err(StoreError::Corrupt {
                        key: format!("chunk {id}"),
                        problem: "missing".into(),
                    });
                }
                waits.lock().map_err(|_| StoreError::WorkerGone)?.push(wait);
                std::thread::sleep(probe);
            }
            Ok(())
        })
    };
    // Let the prober settle, then the work.
    std::thread::sleep(probe * 4);
    let start = Instant::now();
    work()?;
    let seconds = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    prober
        .join()
        .map_err(|_| anyhow::anyhow!("the prober panicked"))??;
    let mut w = waits
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .clone();
    w.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let at = |q: f64| ms(w[((w.len() - 1) as f64 * q).round() as usize]);
    anyhow::ensure!(!w.is_empty(), "no probe completed");
    Ok(Phase {
        mode,
        round,
        seconds,
        probes: w.len(),
        max_ms: at(1.0),
        p99_ms: at(0.99),
        median_ms: at(0.5),
    })
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let tmp = tempfile::tempdir()?;
    let bytes = generate(args.size_mib << 20)?;
    let store = ObjectStore::open(&tmp.path().join("store"), StoreLimits::default())?;
    let key = PublisherKey::from_seed(&[1; 32]);
    let mut opts = AddOptions::new(Kind::Base, "stall-bench");
    opts.zstd_level = 1;
    let start = Instant::now();
    let (m, report) = store.add(&bytes, &opts, &key)?;
    let add_s = start.elapsed().as_secs_f64();
    drop(bytes);
    let handle = StoreHandle::spawn(store)?;
    let ids: Vec<Hash> = m.manifest.chunk_ids().collect();
    let probe = Duration::from_millis(args.probe_ms);
    println!(
        "object      {} bytes in {} chunks ({} stored bytes), added in {add_s:.1} s",
        report.object_len, report.chunks, report.stored_bytes
    );
    println!(
        "settings    probe every {} ms, {} rounds, {} threads available",
        args.probe_ms,
        args.rounds,
        std::thread::available_parallelism().map_or(1, usize::from)
    );
    let mut phases = Vec::new();
    for round in 0..args.rounds {
        phases.push(measure(&handle, &ids, probe, "one job", round, || {
            one_job(&handle, &m)
        })?);
        phases.push(measure(&handle, &ids, probe, "batched", round, || {
            batched(&handle, &m)
        })?);
    }
    for p in &phases {
        println!(
            "{:<8} r{}  verify+commit {:>6.2} s  probes {:>5}  wait max {:>8.1} ms  p99 {:>8.1} ms  median {:>6.2} ms",
            p.mode, p.round, p.seconds, p.probes, p.max_ms, p.p99_ms, p.median_ms
        );
    }
    let worst = |mode: &str| {
        phases
            .iter()
            .filter(|p| p.mode == mode)
            .map(|p| p.max_ms)
            .fold(0.0f64, f64::max)
    };
    let time = |mode: &str| {
        phases
            .iter()
            .filter(|p| p.mode == mode)
            .map(|p| p.seconds)
            .sum::<f64>()
    };
    println!(
        "worst wait  one job {:.1} ms, batched {:.1} ms: ratio {:.1}x",
        worst("one job"),
        worst("batched"),
        worst("one job") / worst("batched")
    );
    println!(
        "work time   batched ÷ one job: {:.2} (the cost of the bounded jobs)",
        time("batched") / time("one job")
    );
    Ok(())
}
