//! Lossless compression of base-model weights (docs/benchmarks.md "Lossless codec"): ratio and single-core decode speed of
//! plain zstd, byte planes + zstd, field planes + zstd and the planes codec (`zdn_protocol::planes`).
//!
//! `zdn-planes-bench FILE.safetensors [--rounds N] [--zstd-level L]`: every float tensor of FILE is
//! converted (round to nearest even) to bf16, f16 and f32; each tensor is encoded on its own (1 MiB
//! blocks, as the chunk store cuts at tensor starts), every encoding is decoded and checked
//! byte-for-byte, and decoding all tensors is timed on one thread, best and median of N rounds.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use half::{bf16, f16};
use zdn::fs::mapped_file::MappedFile;
use zdn_bench::timing::mb_per_sec;
use zdn_protocol::dtype::read_f32;
use zdn_protocol::planes::{self, BlockKind, EncodeOptions, Layout, Strategy};
use zdn_protocol::DType;

struct Args {
    file: PathBuf,
    rounds: usize,
    zstd_level: i32,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut file = None;
    let mut rounds = 5;
    let mut zstd_level = 3;
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut val = |name: &str| it.next().with_context(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--rounds" => rounds = val("--rounds")?.parse()?,
            "--zstd-level" => zstd_level = val("--zstd-level")?.parse()?,
            "-h" | "--help" => {
                println!("zdn-planes-bench FILE.safetensors [--rounds N] [--zstd-level L]");
                std::process::exit(0);
            }
            f => file = Some(PathBuf::from(f)),
        }
    }
    anyhow::ensure!(rounds > 0, "--rounds must be at least 1");
    Ok(Args {
        file: file.context("usage: zdn-planes-bench FILE.safetensors [--rounds N]")?,
        rounds,
        zstd_level,
    })
}

/// The float tensors of the file as f32 values.
fn float_tensors(bytes: &[u8]) -> anyhow::Result<(Vec<Vec<f32>>, usize)> {
    let header = zdn_protocol::safetensors::parse(bytes)?;
    let mut out = Vec::new();
    let mut skipped = 0;
    for t in &header.tensors {
        if !t.dtype.is_quantizable() {
            skipped += 1;
            continue;
        }
        let data = &bytes[t.range.clone()];
        let n = data.len() / t.dtype.size();
        let v: Option<Vec<f32>> = (0..n).map(|i| read_f32(t.dtype, data, i)).collect();
        out.push(v.context("tensor does not read as floats")?);
    }
    Ok((out, skipped))
}

fn convert(values: &[f32], dtype: DType) -> Vec<u8> {
    match dtype {
        DType::BF16 => values
            .iter()
            .flat_map(|&v| bf16::from_f32(v).to_le_bytes())
            .collect(),
        DType::F16 => values
            .iter()
            .flat_map(|&v| f16::from_f32(v).to_le_bytes())
            .collect(),
        _ => values.iter().flat_map(|&v| v.to_le_bytes()).collect(),
    }
}

struct Row {
    method: &'static str,
    encoded: usize,
    encode_mbps: f64,
    decode_best: f64,
    decode_median: f64,
    kinds: String,
}

/// Block kinds of a set of encodings, e.g. "fields r=5: 40, planes [huffman raw]: 2".
fn kinds(encodings: &[Vec<u8>]) -> anyhow::Result<String> {
    let mut counts: std::collections::BTreeMap<String, usize> = Default::default();
    for e in encodings {
        for (kind, _) in planes::inspect(e)?.blocks {
            let k = match kind {
                BlockKind::Fields { raw_bits } => format!("fields r={raw_bits}"),
                BlockKind::Planes { codecs, .. } => format!("planes [{}]", codecs.join(" ")),
            };
            *counts.entry(k).or_default() += 1;
        }
    }
    Ok(counts
        .iter()
        .map(|(k, n)| format!("{k}: {n}"))
        .collect::<Vec<_>>()
        .join(", "))
}

fn measure(
    method: &'static str,
    dtype: DType,
    tensors: &[Vec<u8>],
    opts: &EncodeOptions,
    rounds: usize,
) -> anyhow::Result<Row> {
    let raw: usize = tensors.iter().map(Vec::len).sum();
    let start = Instant::now();
    let encodings: Vec<Vec<u8>> = tensors
        .iter()
        .map(|t| planes::encode_with(dtype, t, opts))
        .collect::<Result<_, _>>()?;
    let encode_time = start.elapsed();
    for (e, t) in encodings.iter().zip(tensors) {
        anyhow::ensure!(
            planes::decode(e, t.len())? == *t,
            "{method}: round trip differs"
        );
    }
    // Decode into one reused buffer, so page faults of fresh allocations are not timed.
    let mut out = Vec::with_capacity(tensors.iter().map(Vec::len).max().unwrap_or(0));
    let mut times = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let start = Instant::now();
        for (e, t) in encodings.iter().zip(tensors) {
            planes::decode_into(e, t.len(), &mut out)?;
            std::hint::black_box(&out);
        }
        times.push(start.elapsed());
    }
    times.sort();
    Ok(Row {
        method,
        encoded: encodings.iter().map(Vec::len).sum(),
        encode_mbps: mb_per_sec(raw, encode_time),
        decode_best: mb_per_sec(raw, times[0]),
        decode_median: mb_per_sec(raw, times[times.len() / 2]),
        kinds: kinds(&encodings)?,
    })
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let mapped = MappedFile::open(&args.file)?;
    let (values, skipped) = float_tensors(mapped.bytes())?;
    let n: usize = values.iter().map(Vec::len).sum();
    println!(
        "file {} ({} bytes): {} float tensors, {n} values ({} non-float tensors skipped)",
        args.file.display(),
        mapped.len(),
        values.len(),
        skipped
    );
    println!(
        "each tensor encoded on its own, 1 MiB blocks, zstd level {}; decode: one thread, {} rounds",
        args.zstd_level, args.rounds
    );
    println!();
    println!(
        "| dtype | method | bytes | encoded | ratio | encode MB/s | decode MB/s best | median | blocks |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---|");
    let methods: [(&'static str, Strategy); 4] = [
        ("zstd", Strategy::PlanesZstd(Layout::Bytes)),
        (
            "byte planes + zstd",
            Strategy::PlanesZstd(Layout::BytePlanes),
        ),
        (
            "field planes + zstd",
            Strategy::PlanesZstd(Layout::FieldPlanes),
        ),
        ("planes codec", Strategy::Auto),
    ];
    let mut hashes = Vec::new();
    for dtype in [DType::BF16, DType::F16, DType::F32] {
        let tensors: Vec<Vec<u8>> = values.iter().map(|v| convert(v, dtype)).collect();
        let raw: usize = tensors.iter().map(Vec::len).sum();
        let hash = {
            let mut h = blake3::Hasher::new();
            tensors.iter().for_each(|t| {
                h.update(t);
            });
            h.finalize()
        };
        for (method, strategy) in methods {
            let opts = EncodeOptions {
                zstd_level: args.zstd_level,
                strategy,
                ..EncodeOptions::default()
            };
            let row = measure(method, dtype, &tensors, &opts, args.rounds)?;
            println!(
                "| {dtype} | {} | {raw} | {} | {:.3}x | {:.0} | {:.0} | {:.0} | {} |",
                row.method,
                row.encoded,
                raw as f64 / row.encoded.max(1) as f64,
                row.encode_mbps,
                row.decode_best,
                row.decode_median,
                if strategy == Strategy::Auto {
                    row.kinds.as_str()
                } else {
                    ""
                }
            );
        }
        hashes.push(format!("{dtype} input BLAKE3 {hash}"));
    }
    println!();
    println!("every encoding decodes to its input byte for byte; inputs:");
    for h in hashes {
        println!("  {h}");
    }
    Ok(())
}
