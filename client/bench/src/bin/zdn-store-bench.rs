//! Ingest throughput of the store against raw BLAKE3 on the same bytes (docs/benchmarks.md).
//!
//! `zdn-store-bench [FILE] [--rounds N] [--chunk-size N] [--zstd-level L]`: without FILE, a generated
//! 256 MiB f32 model. Each round adds the file to a fresh rocksdb store in a temp dir (chunking,
//! zstd, BLAKE3 of chunks and object, rocksdb writes, signed manifest, synced commit) and, in
//! alternation, hashes the same mapped bytes with BLAKE3 — the least any ingest must do — and writes
//! them to a file in the same directory with one fsync — the least a durable ingest must do on this
//! disk, so `durable write ÷ BLAKE3` is the ceiling of `ingest ÷ BLAKE3` here.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use zdn::fs::mapped_file::MappedFile;
use zdn::model::synthetic::{write_pair, SyntheticSpec};
use zdn_bench::timing::{best_median, mb_per_sec};
use zdn_node::store::{AddOptions, ObjectStore, StoreLimits};
use zdn_protocol::manifest::{Kind, PublisherKey};

struct Args {
    file: Option<PathBuf>,
    rounds: usize,
    chunk_size: u32,
    zstd_level: i32,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut a = Args {
        file: None,
        rounds: 5,
        chunk_size: 1 << 20,
        zstd_level: 3,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut val = |name: &str| it.next().with_context(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--rounds" => a.rounds = val("--rounds")?.parse()?,
            "--chunk-size" => a.chunk_size = val("--chunk-size")?.parse()?,
            "--zstd-level" => a.zstd_level = val("--zstd-level")?.parse()?,
            "-h" | "--help" => {
                println!("zdn-store-bench [FILE] [--rounds N] [--chunk-size N] [--zstd-level L]");
                std::process::exit(0);
            }
            f => a.file = Some(PathBuf::from(f)),
        }
    }
    anyhow::ensure!(a.rounds > 0, "--rounds must be at least 1");
    Ok(a)
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let tmp = tempfile::tempdir()?;
    let file = match &args.file {
        Some(f) => f.clone(),
        None => generated_model(tmp.path())?,
    };
    let mapped = MappedFile::open(&file)?;
    let bytes = mapped.bytes();
    let key = PublisherKey::from_seed(&[1; 32]);
    let mut opts = AddOptions::new(Kind::Base, "bench");
    opts.chunk_size = args.chunk_size;
    opts.zstd_level = args.zstd_level;

    // Warm-up: page the file in, one untimed add.
    let _ = blake3::hash(bytes);
    let (mut t_hash, mut t_add, mut t_write) = (Vec::new(), Vec::new(), Vec::new());
    let mut stored = 0;
    for round in 0..=args.rounds {
        let r = one_round(bytes, tmp.path(), round, &opts, &key)?;
        stored = r.stored_bytes;
        if round > 0 {
            t_hash.push(r.hash);
            t_add.push(r.add);
            t_write.push(r.write);
        }
    }
    let hash = best_median(t_hash);
    let add = best_median(t_add);
    let write = best_median(t_write);
    println!("file        {} ({} bytes)", file.display(), bytes.len());
    println!(
        "settings    chunk size {} B, zstd level {}, {} rounds, {} threads available",
        args.chunk_size,
        args.zstd_level,
        args.rounds,
        std::thread::available_parallelism().map_or(1, usize::from)
    );
    print_results(bytes.len(), hash, add, write, stored);
    Ok(())
}

/// The default input: a generated 256 MiB f32 model in `dir`.
fn generated_model(dir: &Path) -> anyhow::Result<PathBuf> {
    let base = dir.join("base.safetensors");
    let fine = dir.join("fine.safetensors");
    let spec = SyntheticSpec {
        layers: 12,
        hidden: 1024,
        intermediate: 4096,
        vocab: 8192,
        ..SyntheticSpec::small()
    };
    write_pair(&spec, &base, &fine)?;
    Ok(base)
}

/// One round's times.
struct Round {
    hash: Duration,
    write: Duration,
    add: Duration,
    /// What the store kept of the object.
    stored_bytes: u64,
}

/// Hashes `bytes`, writes them to a file in `tmp` with one fsync, and adds them to a fresh store
/// in `tmp`; the file and the store are removed after.
fn one_round(
    bytes: &[u8],
    tmp: &Path,
    round: usize,
    opts: &AddOptions,
    key: &PublisherKey,
) -> anyhow::Result<Round> {
    let start = Instant::now();
    let h = blake3::hash(bytes);
    let th = start.elapsed();
    std::hint::black_box(h);

    let copy = tmp.join(format!("copy{round}"));
    let start = Instant::now();
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&copy)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    let tw = start.elapsed();
    std::fs::remove_file(&copy)?;

    let dir = tmp.join(format!("store{round}"));
    let store = ObjectStore::open(&dir, StoreLimits::default())?;
    let start = Instant::now();
    let (_, report) = store.add(bytes, opts, key)?;
    let ta = start.elapsed();
    drop(store);
    std::fs::remove_dir_all(&dir)?;
    Ok(Round {
        hash: th,
        write: tw,
        add: ta,
        stored_bytes: report.stored_bytes,
    })
}

/// Throughputs and ratios of the (best, median) times of `len` bytes.
fn print_results(
    len: usize,
    (hb, hm): (Duration, Duration),
    (ab, am): (Duration, Duration),
    (wb, wm): (Duration, Duration),
    stored: u64,
) {
    println!(
        "blake3      best {:>8.1} MB/s  median {:>8.1} MB/s  (one thread, blake3::hash)",
        mb_per_sec(len, hb),
        mb_per_sec(len, hm)
    );
    println!(
        "ingest      best {:>8.1} MB/s  median {:>8.1} MB/s  (ObjectStore::add into rocksdb)",
        mb_per_sec(len, ab),
        mb_per_sec(len, am)
    );
    println!(
        "write+sync  best {:>8.1} MB/s  median {:>8.1} MB/s  (the same bytes to one file, fsync)",
        mb_per_sec(len, wb),
        mb_per_sec(len, wm)
    );
    println!(
        "ratio       ingest ÷ blake3 throughput: best {:.3}, median {:.3}  (goal ≥ 0.5)",
        hb.as_secs_f64() / ab.as_secs_f64(),
        hm.as_secs_f64() / am.as_secs_f64()
    );
    println!(
        "ceiling     write+sync ÷ blake3: best {:.3}, median {:.3}  (no durable ingest on this disk does better)",
        hb.as_secs_f64() / wb.as_secs_f64(),
        hm.as_secs_f64() / wm.as_secs_f64()
    );
    println!(
        "vs disk     ingest ÷ write+sync: best {:.3}, median {:.3}",
        wb.as_secs_f64() / ab.as_secs_f64(),
        wm.as_secs_f64() / am.as_secs_f64()
    );
    println!(
        "stored      {} bytes ({:.3}x)",
        stored,
        len as f64 / stored.max(1) as f64
    );
}
