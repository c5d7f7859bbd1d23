//! `apply` and `encode`: the codec's two hot loops on generated tensors, each against its reference.

use super::*;

// ---------------------------------------------------------------------------------------------------
// Generated tensors

pub(super) struct Pair {
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

pub(super) fn push(dtype: DType, v: f32, out: &mut Vec<u8>) {
    match dtype {
        DType::F16 => out.extend_from_slice(&f16::from_f32(v).to_le_bytes()),
        DType::BF16 => out.extend_from_slice(&bf16::from_f32(v).to_le_bytes()),
        _ => out.extend_from_slice(&v.to_le_bytes()),
    }
}

/// A 4096-row weight matrix of at least `mib` MiB and a fine-tune of it: weights ~ N(0, 0.04²), deltas
/// 1 % of that with a heavy tail (the same recipe as `synthetic_model::write_pair`).
pub(super) fn gen_pair(dt: Dt, mib: u64, seed: u64) -> Pair {
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

pub(super) fn sum_words(bytes: &[u8]) -> u64 {
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

pub(super) fn short_hash(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex()[..16].to_string()
}

// ---------------------------------------------------------------------------------------------------
// apply

#[derive(Debug, Clone, Serialize)]
pub(super) struct ApplyRow {
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

pub(super) fn bench_apply(a: &KernelArgs, say: bool) -> Result<Vec<ApplyRow>> {
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
pub(super) struct EncodeRow {
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

pub(super) fn bench_encode(a: &KernelArgs, say: bool) -> Result<Vec<EncodeRow>> {
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
