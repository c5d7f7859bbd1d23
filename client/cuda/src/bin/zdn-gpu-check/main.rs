//! zdn-gpu-check: the GPU path's proof, run on a machine with an NVIDIA GPU (scripts/gpu-check.sh).
//!
//! 1. Bit-exactness: the kernels' output against the CPU reference (`zdn_protocol`'s reconstruct),
//!    byte for byte, for every base dtype × target dtype × bits × scale granularity over odd shapes
//!    with NaN/Inf/subnormal/extreme inputs, and sweeps of every f16/bf16 value and f32 rounding
//!    boundary; whole fine_tunes switched on the device against `decode_model`; with `--zdn`, the
//!    `zdn delta apply --device cuda:N` output file against the CPU one.
//! 2. Bandwidth: reconstruction bytes moved ÷ device time, as a ratio to a device-to-device copy in
//!    the same run.
//! 3. A Llama-2-7B-shaped model (bf16, 1-bit row-scaled deltas): the fine-tune switch time, every tensor
//!    reconstructed in place from the resident base.
//!
//! Prints the details, then one summary; exits 1 when any bit-exactness check fails (or the GPU
//! cannot be used), 0 otherwise. Benchmark goals are reported, not enforced.

mod bench;
mod cases;
mod cli;
mod exact;
mod llama;

use std::path::PathBuf;
use std::process::ExitCode;

use zdn_cuda::gpu::driver_present;
use zdn_cuda::kernel::PTX;
use zdn_cuda::Gpu;

const USAGE: &str = "usage: zdn-gpu-check [--device N] [--zdn PATH] [--skip-7b] [--quick]
  --device N   CUDA device ordinal (default 0)
  --zdn PATH   also compare `zdn delta apply --device cuda:N` with the CPU (a zdn built with --features cuda)
  --skip-7b    skip the 7B-shaped switch benchmark (needs ~30 GB of GPU memory)
  --quick      fewer benchmark repetitions";

#[derive(Debug, Default)]
pub struct Options {
    pub device: usize,
    pub zdn: Option<PathBuf>,
    pub skip_7b: bool,
    pub quick: bool,
}

fn parse(args: impl Iterator<Item = String>) -> Result<Options, String> {
    let mut o = Options::default();
    let mut args = args.peekable();
    while let Some(a) = args.next() {
        match a.as_str() {
            "--device" => {
                let v = args.next().ok_or("--device needs a number")?;
                o.device = v
                    .parse()
                    .map_err(|_| format!("--device {v}: not a number"))?;
            }
            "--zdn" => o.zdn = Some(PathBuf::from(args.next().ok_or("--zdn needs a path")?)),
            "--skip-7b" => o.skip_7b = true,
            "--quick" => o.quick = true,
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    Ok(o)
}

/// The summary: one line per check, and whether every exactness check passed.
#[derive(Debug, Default)]
pub struct Summary {
    lines: Vec<String>,
    failed: bool,
}

impl Summary {
    pub fn line(&mut self, s: impl Into<String>) {
        let s = s.into();
        println!("{s}");
        self.lines.push(s);
    }

    /// An exactness check: `ok` or a failure that makes the run fail.
    pub fn check(&mut self, what: &str, ok: bool, detail: impl std::fmt::Display) {
        self.failed |= !ok;
        self.line(format!(
            "{what:<22} {} {detail}",
            if ok { "PASS" } else { "FAIL" }
        ));
    }

    /// A check that could not run at all.
    pub fn error(&mut self, what: &str, e: impl std::fmt::Display) {
        self.failed = true;
        self.line(format!("{what:<22} ERROR {e}"));
    }
}

fn main() -> ExitCode {
    let o = match parse(std::env::args().skip(1)) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let mut s = Summary::default();
    // The commit it was built from is in target-gpu/COMMIT (scripts/gpu-check.sh prints it).
    println!("zdn-gpu-check (zdn-cuda {})", env!("CARGO_PKG_VERSION"));
    if !driver_present() {
        eprintln!("no CUDA driver (libcuda.so) on this machine: nothing to check");
        return ExitCode::from(1);
    }
    let gpu = match Gpu::open(o.device) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("cuda:{}: {e}", o.device);
            return ExitCode::from(1);
        }
    };
    let describe = describe(&gpu);
    println!("device: {describe}");
    let fused = PTX
        .lines()
        .filter(|l| l.trim_start().starts_with("fma"))
        .count();
    s.check(
        "ptx: no fma",
        fused == 0,
        format!("({fused} fma instructions)"),
    );

    match exact::tensors(&gpu) {
        Ok(r) => s.check("exact: tensors", r.mismatches == 0, r.describe()),
        Err(e) => s.error("exact: tensors", e),
    }
    match exact::fine_tunes(&gpu) {
        Ok(r) => s.check("exact: fine-tune switch", r.mismatches == 0, r.describe()),
        Err(e) => s.error("exact: fine-tune switch", e),
    }
    if let Some(zdn) = &o.zdn {
        match cli::apply_matches_cpu(zdn, o.device) {
            Ok(r) => s.check("exact: zdn delta apply", r.0, r.1),
            Err(e) => s.error("exact: zdn delta apply", e),
        }
    }
    match bench::bandwidth(&gpu, o.quick) {
        Ok(rows) => {
            for r in rows {
                s.check("exact: bandwidth case", r.exact, &r.label);
                s.line(format!("{:<22} {}", "bandwidth", r.describe()));
            }
        }
        Err(e) => s.error("bandwidth", e),
    }
    if o.skip_7b {
        s.line(format!("{:<22} skipped (--skip-7b)", "7B switch"));
    } else {
        match llama::switch_7b(&gpu, o.quick) {
            Ok(r) => {
                s.check(
                    "exact: 7B sample",
                    r.sample_mismatches == 0,
                    r.sample_describe(),
                );
                s.line(format!("{:<22} {}", "7B switch", r.describe()));
            }
            Err(e) => s.error("7B switch", e),
        }
    }
    finish(&s, &describe)
}

fn describe(gpu: &Gpu) -> String {
    let cc = gpu
        .compute_capability()
        .map(|(a, b)| format!("compute {a}.{b}"))
        .unwrap_or_else(|e| format!("compute ? ({e})"));
    let driver = gpu
        .driver_version()
        .map(|v| format!("driver CUDA {}.{}", v / 1000, v % 1000 / 10))
        .unwrap_or_else(|e| format!("driver ? ({e})"));
    let mem = gpu
        .memory()
        .map(|(_, t)| format!("{:.1} GiB", t as f64 / (1u64 << 30) as f64))
        .unwrap_or_default();
    format!(
        "cuda:{} {}, {cc}, {driver}, {mem}",
        gpu.ordinal(),
        gpu.name()
    )
}

fn finish(s: &Summary, describe: &str) -> ExitCode {
    println!();
    println!("== zdn-gpu-check summary ==");
    println!("device: {describe}");
    for l in &s.lines {
        println!("{l}");
    }
    let verdict = if s.failed { "FAIL" } else { "PASS" };
    println!("RESULT: {verdict} (bit-exactness; benchmark goals are reported above, not enforced)");
    if s.failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
