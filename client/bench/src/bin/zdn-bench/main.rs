//! `zdn-bench`: throughput and memory benchmarks of the BitDelta codec and of the `zdn` CLI.
//!
//! Every ratio is measured against a reference taken in the same run, on the same buffers:
//!
//! * `apply`  — `reconstruct` of a 1-bit tensor vs a `copy_from_slice` of the same output bytes;
//! * `encode` — `encode_tensor` (1-bit, tensor scale) vs reading (summing) both input tensors;
//! * `rss`    — the real `zdn delta encode` / `zdn delta apply` on a multi-GiB generated model: peak
//!   resident set and wall time of each child process;
//! * `folder` — two Llama-2-7B-shaped model folders through folder-delta encode, add and apply;
//! * `soup-folder` — a soup of two folder deltas of such a folder, mixed by `zdn soup mix -o`;
//! * `minilm` — the same CLI runs on the real MiniLM pair, when it is installed under `models/`;
//! * `all`    — all of the above.
//!
//! Build with `cargo build --release -p zdn -p zdn-bench` (the `rss` and `minilm` runs call the `zdn` binary next
//! to this one). Results and how to read them: docs/benchmarks.md.
//!
//! The codec picks its kernel at run time (AVX2 + F16C where the CPU has them); `ZDN_KERNEL=portable`
//! forces the portable one. Every table and the JSON name the kernel that ran.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod folder;
mod folder_facts;
mod kernels;
mod machine;
mod minilm;
mod rss;
mod soup_folder;

use std::fs::File;
use std::hint::black_box;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use half::{bf16, f16};
use serde::Serialize;
use zdn::model::synthetic::{write_pair, Rng, SyntheticSpec};
use zdn_bench::timing::{gbps, goal, mib, paired, time, Stats};
use zdn_protocol::bitdelta::kernels::Kernel;
use zdn_protocol::bitdelta::{
    encode_tensor, quantize, reconstruct, Choice, EncodeOptions, Encoding, Granularity, IndexEntry,
    QuantSpec, TensorData,
};
use zdn_protocol::DType;

use folder::*;
use kernels::*;
use machine::*;
use minilm::*;
use rss::*;
use soup_folder::*;

#[derive(Parser, Debug)]
#[command(
    name = "zdn-bench",
    about = "Benchmarks of the zdn codec and CLI (see docs/benchmarks.md)"
)]
struct Cli {
    /// Print one JSON document instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// `reconstruct` of a 1-bit tensor vs memcpy of the same output bytes.
    Apply(KernelArgs),
    /// `encode_tensor` (1-bit, tensor scale) vs reading both inputs.
    Encode(KernelArgs),
    /// Peak RSS and wall time of `zdn delta encode` / `zdn delta apply` on a generated multi-GiB model.
    Rss(RssArgs),
    /// Two Llama-2-7B-shaped model folders through the CLI: folder delta encode, add, apply from the
    /// store and from disk; peak RSS and wall time of each.
    Folder(FolderArgs),
    /// A soup of two folder deltas of a Llama-2-7B-shaped folder through the CLI: delta encode,
    /// add, apply of one delta, `soup mix -o` of both, apply of the soup; peak RSS and wall time.
    SoupFolder(FolderArgs),
    /// `zdn delta encode` / `zdn delta apply` on the real MiniLM pair (skipped when not installed).
    Minilm(MinilmArgs),
    /// apply, encode, rss and minilm, in that order (each with the options below).
    All {
        #[command(flatten)]
        kernel: KernelArgs,
        #[command(flatten)]
        rss: RssArgs,
        #[command(flatten)]
        minilm: MinilmArgs,
    },
}

#[derive(Args, Debug, Clone)]
struct KernelArgs {
    /// Size of each generated tensor in MiB (4096 rows; the column count reaches at least this size).
    #[arg(long, default_value_t = 64)]
    mib: u64,
    /// Timed repetitions of each operation (interleaved with its reference; best and median reported).
    #[arg(long, default_value_t = 7)]
    iters: usize,
    /// Dtypes to measure.
    #[arg(long, value_delimiter = ',', default_value = "f32,f16,bf16")]
    dtypes: Vec<Dt>,
    /// Scale granularities for `apply` (encode always uses tensor).
    #[arg(long, value_delimiter = ',', default_value = "tensor,row,group:128")]
    scales: Vec<Granularity>,
}

#[derive(Args, Debug, Clone)]
struct RssArgs {
    /// Working directory (the generated pair, delta and output; deleted afterwards unless --keep).
    #[arg(long, default_value = ".work/bench/rss")]
    dir: PathBuf,
    /// Dtype of the generated model.
    #[arg(long, default_value = "f32")]
    dtype: Dt,
    #[arg(long, default_value_t = 3)]
    layers: u32,
    #[arg(long, default_value_t = 4096)]
    hidden: u64,
    #[arg(long, default_value_t = 11008)]
    intermediate: u64,
    #[arg(long, default_value_t = 32000)]
    vocab: u64,
    /// How to measure a child's peak RSS.
    #[arg(long, value_enum, default_value_t = RssMethod::Auto)]
    method: RssMethod,
    /// The `zdn` binary (default: next to this executable).
    #[arg(long)]
    zdn: Option<PathBuf>,
    /// Keep the generated pair and delta (and reuse a pair of the same spec already there).
    #[arg(long)]
    keep: bool,
}

#[derive(Args, Debug, Clone)]
struct MinilmArgs {
    /// Directory holding the installed MiniLM pair.
    #[arg(long, default_value = "models")]
    models: PathBuf,
    /// Working directory for the delta and the output.
    #[arg(long, default_value = ".work/bench/minilm")]
    minilm_dir: PathBuf,
    /// Runs of each command (best and median reported).
    #[arg(long, default_value_t = 5)]
    runs: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
enum Dt {
    F32,
    F16,
    Bf16,
}

impl Dt {
    fn dtype(self) -> DType {
        match self {
            Dt::F32 => DType::F32,
            Dt::F16 => DType::F16,
            Dt::Bf16 => DType::BF16,
        }
    }
    fn name(self) -> &'static str {
        match self {
            Dt::F32 => "f32",
            Dt::F16 => "f16",
            Dt::Bf16 => "bf16",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum RssMethod {
    /// GNU time if /usr/bin/time works, else polling.
    Auto,
    /// `/usr/bin/time -v` (the kernel's ru_maxrss of the child).
    Time,
    /// Poll VmHWM in /proc/<pid>/status every 10 ms until the child exits (a child that lives less
    /// than that may read 0).
    Poll,
}

const APPLY_GOAL: f64 = 1.3;
const ENCODE_GOAL: f64 = 2.0;

fn main() -> Result<()> {
    let cli = Cli::parse();
    let mut doc = serde_json::Map::new();
    doc.insert("machine".into(), serde_json::to_value(machine())?);
    let say = !cli.json;
    match &cli.command {
        Cmd::Apply(a) => {
            doc.insert("apply".into(), serde_json::to_value(bench_apply(a, say)?)?);
        }
        Cmd::Encode(a) => {
            doc.insert(
                "encode".into(),
                serde_json::to_value(bench_encode(a, say)?)?,
            );
        }
        Cmd::Rss(a) => {
            doc.insert("rss".into(), serde_json::to_value(bench_rss(a, say)?)?);
        }
        Cmd::Folder(a) => {
            doc.insert(
                "folder".into(),
                serde_json::to_value(bench_folder(a, say)?)?,
            );
        }
        Cmd::SoupFolder(a) => {
            doc.insert(
                "soup_folder".into(),
                serde_json::to_value(bench_soup_folder(a, say)?)?,
            );
        }
        Cmd::Minilm(a) => {
            doc.insert(
                "minilm".into(),
                serde_json::to_value(bench_minilm(a, say)?)?,
            );
        }
        Cmd::All {
            kernel,
            rss,
            minilm,
        } => {
            doc.insert(
                "apply".into(),
                serde_json::to_value(bench_apply(kernel, say)?)?,
            );
            doc.insert(
                "encode".into(),
                serde_json::to_value(bench_encode(kernel, say)?)?,
            );
            doc.insert("rss".into(), serde_json::to_value(bench_rss(rss, say)?)?);
            doc.insert(
                "minilm".into(),
                serde_json::to_value(bench_minilm(minilm, say)?)?,
            );
        }
    }
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&doc)?);
    }
    Ok(())
}
