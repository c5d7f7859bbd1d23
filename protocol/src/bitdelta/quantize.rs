//! The quantizer: Δ = target − base (in f32) → f32 scales + packed b-bit codes.
//!
//! Codes and levels (docs/spec/bitdelta.md): with b bits and L = 2^b − 1, code q ∈ [0, 2^b) stands for the odd
//! level 2q − L, so 1 bit gives {−1, +1} (the sign, with sign(0) = +1), 2 bits {−3, −1, 1, 3} and 4 bits
//! {−15 … 15}. A value x with scale s gets the nearest level to x/s (ties toward +∞), clamped to ±L.
//!
//! Scales: the mean |Δ| of the group (after optional clipping at k·σ, σ the group's RMS) for 1 bit,
//! which is the L2-optimal scale for signs. For 2 and 4 bits the scale is the candidate
//! f·mean|Δ|, f ∈ {0.05, 0.10, …, 2.00}, with the least squared error in the group. Explicit scales
//! (from calibration) replace both.
//!
//! The work is streamed over each scale group in chunks, so memory stays at the output plus a small
//! scratch buffer whatever the tensor size.

use super::format::{matrix_of, scale_count, Granularity};
use super::kernels::{self, Kernel};
use super::tensor::{load_delta, TensorData};

const CHUNK: usize = 4096;
const CANDIDATES: usize = 40;
/// Chunks summed side by side in the 1-bit fast path (its loop is written out for eight).
const LANES: usize = 8;
const _: () = assert!(LANES == 8);

/// Quantizer settings for one tensor.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QuantSpec {
    /// 1, 2 or 4.
    pub bits: u32,
    pub granularity: Granularity,
    /// Clip Δ to ±k·σ before computing scales (None: off).
    pub clip_sigma: Option<f32>,
}

/// A quantized tensor: its block is the scales (f32 LE) followed by `packed`.
#[derive(Debug, Clone, PartialEq)]
pub struct Quantized {
    pub scales: Vec<f32>,
    pub packed: Vec<u8>,
}

impl Quantized {
    pub fn to_block(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.scales.len() * 4 + self.packed.len());
        for s in &self.scales {
            out.extend_from_slice(&s.to_le_bytes());
        }
        out.extend_from_slice(&self.packed);
        out
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum QuantizeError {
    #[error("bits must be 1, 2 or 4, got {0}")]
    Bits(u32),
    #[error("{which} is {dtype}, only F32, F16 and BF16 can be quantized")]
    Dtype {
        which: &'static str,
        dtype: crate::dtype::DType,
    },
    #[error("base shape {base:?} differs from fine-tune shape {target:?}")]
    Shape { base: Vec<u64>, target: Vec<u64> },
    #[error("non-finite delta at element {index} (base {base}, fine-tune {target}): NaN/Inf weights cannot be quantized")]
    NonFinite {
        index: usize,
        base: f32,
        target: f32,
    },
    #[error("{got} explicit scales given, {granularity} granularity needs {want}")]
    ScaleCount {
        got: usize,
        want: u64,
        granularity: Granularity,
    },
    #[error("explicit scale #{index} is {value}, scales must be finite")]
    ScaleValue { index: usize, value: f32 },
    #[error("clip must be a positive finite number of standard deviations, got {0}")]
    Clip(f32),
    #[error("tensor too large for this platform")]
    TooLarge,
}

/// Level for code `q` with `bits` bits.
#[inline(always)]
pub(crate) fn level(q: u32, bits: u32) -> f32 {
    (2 * q as i32 - ((1i32 << bits) - 1)) as f32
}

/// Code of the level nearest to `x / s` (ties toward +∞), clamped. 1 bit: the sign, sign(0) = +1.
#[inline(always)]
fn code_for(x: f32, s: f32, bits: u32) -> u32 {
    if bits == 1 {
        return u32::from(x >= 0.0);
    }
    let max = ((1u32 << bits) - 1) as f32;
    if s == 0.0 {
        // Any level reconstructs Δ = 0; +1 mirrors sign(0) = +1.
        return 1 << (bits - 1);
    }
    let t = x / s;
    let lvl = (2.0 * (t / 2.0).floor() + 1.0).clamp(-max, max);
    ((lvl + max) / 2.0) as u32
}

/// Flat index ranges of the scale groups, in order; they partition `0..rows·cols`.
pub(crate) fn groups(
    rows: usize,
    cols: usize,
    g: Granularity,
) -> impl Iterator<Item = (usize, usize)> {
    let (per_row, width) = match g {
        Granularity::Tensor => (1, rows * cols),
        Granularity::Row => (1, cols),
        Granularity::Group(n) => (cols.div_ceil(n as usize), n as usize),
    };
    let n_groups = match g {
        Granularity::Tensor => 1,
        _ => rows * per_row,
    };
    let row_len = match g {
        Granularity::Tensor => rows * cols,
        _ => cols,
    };
    (0..n_groups).map(move |k| {
        let (r, j) = (k / per_row, k % per_row);
        let start = r * row_len + j * width;
        let end = (start + width).min(r * row_len + row_len);
        (start, end)
    })
}

/// Quantizes `target − base`. `scales`, when given, are used as they are (calibration).
pub fn quantize(
    base: &TensorData<'_>,
    target: &TensorData<'_>,
    spec: &QuantSpec,
    scales: Option<&[f32]>,
) -> Result<Quantized, QuantizeError> {
    quantize_with(Kernel::selected(), base, target, spec, scales)
}

/// [`quantize`] with the given kernel (the portable one where the CPU lacks it). Every kernel gives the
/// same result.
pub fn quantize_with(
    kernel: Kernel,
    base: &TensorData<'_>,
    target: &TensorData<'_>,
    spec: &QuantSpec,
    scales: Option<&[f32]>,
) -> Result<Quantized, QuantizeError> {
    let bits = spec.bits;
    if !matches!(bits, 1 | 2 | 4) {
        return Err(QuantizeError::Bits(bits));
    }
    for (which, t) in [("base", base), ("fine-tune", target)] {
        if !t.dtype.is_quantizable() {
            return Err(QuantizeError::Dtype {
                which,
                dtype: t.dtype,
            });
        }
    }
    if base.shape != target.shape {
        return Err(QuantizeError::Shape {
            base: base.shape.to_vec(),
            target: target.shape.to_vec(),
        });
    }
    if let Some(k) = spec.clip_sigma {
        if !(k.is_finite() && k > 0.0) {
            return Err(QuantizeError::Clip(k));
        }
    }
    let (rows, cols) = matrix_of(target.shape);
    let n_scales = scale_count(rows, cols, spec.granularity).ok_or(QuantizeError::TooLarge)?;
    let rows = usize::try_from(rows).map_err(|_| QuantizeError::TooLarge)?;
    let cols = usize::try_from(cols).map_err(|_| QuantizeError::TooLarge)?;
    let numel = target.numel();
    if let Some(s) = scales {
        if s.len() as u64 != n_scales {
            return Err(QuantizeError::ScaleCount {
                got: s.len(),
                want: n_scales,
                granularity: spec.granularity,
            });
        }
        if let Some((index, &value)) = s.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(QuantizeError::ScaleValue { index, value });
        }
    }
    let packed_len = numel
        .checked_mul(bits as usize)
        .ok_or(QuantizeError::TooLarge)?
        .div_ceil(8);
    let mut packed = vec![0u8; packed_len];
    let mut out_scales = Vec::with_capacity(n_scales as usize);
    let mut scratch = vec![0f32; CHUNK.min(numel.max(1))];
    let mut batch = Vec::new();

    let mut q = GroupQuantizer {
        kernel,
        base,
        target,
        bits,
        scratch: &mut scratch,
        batch: &mut batch,
        packed: &mut packed,
    };
    for (k, (start, end)) in groups(rows, cols, spec.granularity).enumerate() {
        let s = match scales {
            Some(s) => {
                q.write_codes(start, end, s[k])?;
                s[k]
            }
            None if bits == 1 && spec.clip_sigma.is_none() => q.signs_and_mean(start, end)?,
            None => {
                let s = q.fit_scale(start, end, spec.clip_sigma)?;
                q.write_codes(start, end, s)?;
                s
            }
        };
        out_scales.push(s);
    }
    Ok(Quantized {
        scales: out_scales,
        packed,
    })
}

struct GroupQuantizer<'a, 'b> {
    kernel: Kernel,
    base: &'a TensorData<'a>,
    target: &'a TensorData<'a>,
    bits: u32,
    scratch: &'b mut [f32],
    /// [`LANES`] chunks of Δ for the 1-bit fast path (allocated on first use).
    batch: &'b mut Vec<f32>,
    packed: &'b mut [u8],
}

impl GroupQuantizer<'_, '_> {
    /// Calls `f(first_index, deltas)` over `start..end` in chunks, checking every Δ is finite.
    fn each_chunk(
        &mut self,
        start: usize,
        end: usize,
        mut f: impl FnMut(usize, &[f32], &mut [u8]),
    ) -> Result<(), QuantizeError> {
        let mut i = start;
        while i < end {
            let n = (end - i).min(self.scratch.len());
            let buf = &mut self.scratch[..n];
            load(self.kernel, self.base, self.target, i, buf);
            check_finite(self.base, self.target, i, buf)?;
            f(i, buf, self.packed);
            i += n;
        }
        Ok(())
    }

    /// 1-bit fast path: one pass writes the signs and returns mean|Δ|.
    ///
    /// The sum is that of [`Self::each_chunk`]'s chunks, each summed in f32 in order and added in f64
    /// in order. The chunks' f32 sums are independent, so whole chunks are summed [`LANES`] at a time,
    /// side by side: the same additions, without each one waiting for the one before.
    fn signs_and_mean(&mut self, start: usize, end: usize) -> Result<f32, QuantizeError> {
        let chunk = self.scratch.len();
        let mut sum = 0f64;
        let mut i = start;
        // Δ of a whole batch, for the portable path and to find a non-finite Δ (allocated on use).
        let mut batch = std::mem::take(self.batch);
        while end - i >= LANES * chunk {
            let (bs, ts) = (self.base.dtype.size(), self.target.dtype.size());
            let n = LANES * chunk;
            // From a byte boundary the batch's code bytes are its own, still zero.
            let fast = if i.is_multiple_of(8) {
                kernels::sign1_batch(
                    self.kernel,
                    self.base.dtype,
                    self.target.dtype,
                    &self.base.bytes[i * bs..(i + n) * bs],
                    &self.target.bytes[i * ts..(i + n) * ts],
                    chunk,
                    &mut self.packed[i / 8..(i + n) / 8],
                )
            } else {
                None
            };
            let p = match fast {
                Some(p) => p,
                None => {
                    batch.resize(n, 0.0);
                    load_delta(self.base, self.target, i, &mut batch);
                    let mut c = batch.chunks_exact(chunk);
                    let mut lane = || c.next().unwrap_or_default().iter();
                    let lanes = lane().zip(lane()).zip(lane()).zip(lane());
                    let lanes = lanes.zip(lane()).zip(lane()).zip(lane()).zip(lane());
                    let mut p = [0f32; LANES];
                    for (((((((a, b), c), d), e), f), g), h) in lanes {
                        p[0] += a.abs();
                        p[1] += b.abs();
                        p[2] += c.abs();
                        p[3] += d.abs();
                        p[4] += e.abs();
                        p[5] += f.abs();
                        p[6] += g.abs();
                        p[7] += h.abs();
                    }
                    pack_signs(i, &batch, self.packed);
                    p
                }
            };
            // A NaN or infinite Δ makes its chunk's sum non-finite (as may an overflow of finite
            // ones): only then is every Δ checked, which finds the first bad one if there is one.
            if !p.iter().fold(true, |ok, x| ok & x.is_finite()) {
                batch.resize(n, 0.0);
                load(self.kernel, self.base, self.target, i, &mut batch);
                check_finite(self.base, self.target, i, &batch)?;
            }
            for p in p {
                sum += f64::from(p);
            }
            i += n;
        }
        *self.batch = batch;
        self.each_chunk(i, end, |first, d, packed| {
            pack_signs(first, d, packed);
            let mut part = 0f32;
            for &x in d {
                part += x.abs();
            }
            sum += f64::from(part);
        })?;
        Ok(mean(sum, end - start))
    }

    fn write_codes(&mut self, start: usize, end: usize, s: f32) -> Result<(), QuantizeError> {
        let bits = self.bits;
        self.each_chunk(start, end, |first, d, packed| {
            for (j, &x) in d.iter().enumerate() {
                let bit = (first + j) * bits as usize;
                packed[bit >> 3] |= (code_for(x, s, bits) as u8) << (bit & 7);
            }
        })
    }

    fn fit_scale(
        &mut self,
        start: usize,
        end: usize,
        clip: Option<f32>,
    ) -> Result<f32, QuantizeError> {
        let n = end - start;
        let limit = match clip {
            Some(k) => {
                let mut sq = 0f64;
                self.each_chunk(start, end, |_, d, _| {
                    sq += d.iter().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>();
                })?;
                let sigma = if n == 0 { 0.0 } else { (sq / n as f64).sqrt() };
                (f64::from(k) * sigma) as f32
            }
            None => f32::INFINITY,
        };
        let mut sum = 0f64;
        self.each_chunk(start, end, |_, d, _| {
            sum += d
                .iter()
                .map(|&x| f64::from(x.abs().min(limit)))
                .sum::<f64>();
        })?;
        let m = mean(sum, n);
        if self.bits == 1 || m == 0.0 {
            return Ok(m);
        }
        let bits = self.bits;
        let mut err = [0f64; CANDIDATES];
        self.each_chunk(start, end, |_, d, _| {
            for (c, e) in err.iter_mut().enumerate() {
                let s = m * 0.05 * (c + 1) as f32;
                let mut part = 0f32;
                for &x in d {
                    let r = s * level(code_for(x, s, bits), bits) - x;
                    part += r * r;
                }
                *e += f64::from(part);
            }
        })?;
        // First minimum wins, so the choice is deterministic.
        let best = err
            .iter()
            .enumerate()
            .fold(
                (0, f64::INFINITY),
                |acc, (c, &e)| if e < acc.1 { (c, e) } else { acc },
            )
            .0;
        Ok(m * 0.05 * (best + 1) as f32)
    }
}

/// `out[j] = Δ` of element `first + j`: the kernel's whole blocks of 8, then the portable code (all of
/// it for the portable kernel). The same values either way.
fn load(
    kernel: Kernel,
    base: &TensorData<'_>,
    target: &TensorData<'_>,
    first: usize,
    out: &mut [f32],
) {
    let done = kernels::delta(
        kernel,
        base.dtype,
        target.dtype,
        base.bytes
            .get(first * base.dtype.size()..)
            .unwrap_or_default(),
        target
            .bytes
            .get(first * target.dtype.size()..)
            .unwrap_or_default(),
        out,
    );
    load_delta(base, target, first + done, &mut out[done..]);
}

/// Errors with the first element of `d` (elements `first..` of the tensors) whose Δ is not finite.
fn check_finite(
    base: &TensorData<'_>,
    target: &TensorData<'_>,
    first: usize,
    d: &[f32],
) -> Result<(), QuantizeError> {
    // A test that vectorises first; the position only when it fails.
    if d.iter().fold(true, |ok, x| ok & x.is_finite()) {
        return Ok(());
    }
    let idx = first + d.iter().position(|x| !x.is_finite()).unwrap_or(0);
    Err(QuantizeError::NonFinite {
        index: idx,
        base: crate::dtype::read_f32(base.dtype, base.bytes, idx).unwrap_or(f32::NAN),
        target: crate::dtype::read_f32(target.dtype, target.bytes, idx).unwrap_or(f32::NAN),
    })
}

/// Sets bit `first + j` of `packed` for every `d[j] >= 0` (sign(0) = +1), whole bytes at a time where
/// the elements start on a byte.
fn pack_signs(first: usize, d: &[f32], packed: &mut [u8]) {
    let head = ((8 - first % 8) % 8).min(d.len());
    let (h, rest) = d.split_at(head);
    for (j, &x) in h.iter().enumerate() {
        let i = first + j;
        packed[i >> 3] |= u8::from(x >= 0.0) << (i & 7);
    }
    let at = (first + head) / 8;
    let mut bytes = rest.chunks_exact(8);
    for (p, c) in packed[at..].iter_mut().zip(&mut bytes) {
        let mut byte = 0u8;
        for (k, &x) in c.iter().enumerate() {
            byte |= u8::from(x >= 0.0) << k;
        }
        *p |= byte;
    }
    let tail = bytes.remainder();
    let at = first + d.len() - tail.len();
    for (j, &x) in tail.iter().enumerate() {
        let i = at + j;
        packed[i >> 3] |= u8::from(x >= 0.0) << (i & 7);
    }
}

fn mean(sum: f64, n: usize) -> f32 {
    if n == 0 {
        0.0
    } else {
        (sum / n as f64) as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_levels() {
        assert_eq!(code_for(0.0, 1.0, 1), 1);
        assert_eq!(code_for(-0.0, 1.0, 1), 1);
        assert_eq!(code_for(-1e-30, 1.0, 1), 0);
        assert_eq!(level(1, 1), 1.0);
        assert_eq!(level(0, 1), -1.0);
        // 2 bits: levels -3,-1,1,3
        assert_eq!(level(code_for(0.0, 1.0, 2), 2), 1.0);
        assert_eq!(level(code_for(2.0, 1.0, 2), 2), 3.0); // tie between 1 and 3 goes up
        assert_eq!(level(code_for(-2.0, 1.0, 2), 2), -1.0);
        assert_eq!(level(code_for(100.0, 1.0, 2), 2), 3.0);
        assert_eq!(level(code_for(-100.0, 1.0, 2), 2), -3.0);
        assert_eq!(level(code_for(-4.5, 1.0, 4), 4), -5.0);
        assert_eq!(level(code_for(1e30, 1e-30, 4), 4), 15.0);
    }

    /// The 1-bit fast path (several chunks summed side by side, signs packed a byte at a time) against
    /// the definition written out element by element, on tensors long enough to use it.
    #[test]
    fn one_bit_fast_path_matches_definition() {
        use crate::dtype::DType;
        fn reference(d: &[f32]) -> (f32, Vec<u8>) {
            let mut packed = vec![0u8; d.len().div_ceil(8)];
            let mut sum = 0f64;
            for (c, chunk) in d.chunks(CHUNK).enumerate() {
                let mut part = 0f32;
                for (j, &x) in chunk.iter().enumerate() {
                    let i = c * CHUNK + j;
                    packed[i >> 3] |= u8::from(x >= 0.0) << (i & 7);
                    part += x.abs();
                }
                sum += f64::from(part);
            }
            (mean(sum, d.len()), packed)
        }
        let spec = QuantSpec {
            bits: 1,
            granularity: Granularity::Tensor,
            clip_sigma: None,
        };
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        };
        for n in [
            LANES * CHUNK,
            2 * LANES * CHUNK + 3 * CHUNK + 77,
            3 * LANES * CHUNK - 1,
        ] {
            let shape = [1u64, n as u64];
            let b: Vec<f32> = (0..n).map(|_| next()).collect();
            let mut t: Vec<f32> = b.iter().map(|v| v + 0.01 * next()).collect();
            // Zero deltas, −0 deltas (sign +1) and a run of huge ones (chunk sums overflow to +inf).
            t[5] = b[5];
            let (b, t): (Vec<f32>, Vec<f32>) = b
                .iter()
                .zip(&t)
                .enumerate()
                .map(|(i, (&b, &t))| match i {
                    9 => (0.0, -0.0),
                    i if (CHUNK..CHUNK + 40).contains(&i) && n > LANES * CHUNK => (0.0, 3e38),
                    _ => (b, t),
                })
                .unzip();
            let bb: Vec<u8> = b.iter().flat_map(|v| v.to_le_bytes()).collect();
            let tb: Vec<u8> = t.iter().flat_map(|v| v.to_le_bytes()).collect();
            let base = TensorData::new(DType::F32, &shape, &bb).unwrap();
            let target = TensorData::new(DType::F32, &shape, &tb).unwrap();
            let d: Vec<f32> = b.iter().zip(&t).map(|(b, t)| t - b).collect();
            let (scale, packed) = reference(&d);
            let q = quantize(&base, &target, &spec, None).unwrap();
            assert_eq!(q.scales.len(), 1);
            assert_eq!(q.scales[0].to_bits(), scale.to_bits(), "n = {n}");
            assert_eq!(q.packed, packed, "n = {n}");

            // A NaN and an infinity: the first one is reported, wherever the batches fall.
            for bad in [n - 1, LANES * CHUNK + 5, 3 * CHUNK + 1]
                .into_iter()
                .filter(|&i| i < n)
            {
                let mut tb = tb.clone();
                tb[4 * bad..4 * bad + 4].copy_from_slice(&f32::NAN.to_le_bytes());
                let later = (bad + 2 * CHUNK).min(n - 1);
                if later > bad {
                    tb[4 * later..4 * later + 4].copy_from_slice(&f32::INFINITY.to_le_bytes());
                }
                let target = TensorData::new(DType::F32, &shape, &tb).unwrap();
                match quantize(&base, &target, &spec, None) {
                    Err(QuantizeError::NonFinite { index, .. }) => assert_eq!(index, bad),
                    other => panic!("n = {n}, bad = {bad}: {other:?}"),
                }
            }
        }
    }

    #[test]
    fn groups_partition_rows() {
        let g: Vec<_> = groups(2, 5, Granularity::Group(2)).collect();
        assert_eq!(g, vec![(0, 2), (2, 4), (4, 5), (5, 7), (7, 9), (9, 10)]);
        let g: Vec<_> = groups(2, 5, Granularity::Row).collect();
        assert_eq!(g, vec![(0, 5), (5, 10)]);
        let g: Vec<_> = groups(2, 5, Granularity::Tensor).collect();
        assert_eq!(g, vec![(0, 10)]);
        assert_eq!(groups(0, 5, Granularity::Row).count(), 0);
    }
}
