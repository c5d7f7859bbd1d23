//! `TensorData`: a borrowed tensor (dtype, shape, little-endian bytes) and delta loading in f32.

use crate::dtype::{DType, FloatElem, BF16, F16, F32};

/// A tensor's bytes as stored (little-endian, row-major) with its dtype and shape.
#[derive(Debug, Clone, Copy)]
pub struct TensorData<'a> {
    pub dtype: DType,
    pub shape: &'a [u64],
    pub bytes: &'a [u8],
}

impl<'a> TensorData<'a> {
    /// Checks that `bytes` holds exactly the elements the shape and dtype describe.
    pub fn new(dtype: DType, shape: &'a [u64], bytes: &'a [u8]) -> Option<Self> {
        let n = shape
            .iter()
            .try_fold(dtype.size() as u64, |acc, &d| acc.checked_mul(d))?;
        (n == bytes.len() as u64).then_some(TensorData {
            dtype,
            shape,
            bytes,
        })
    }

    pub fn numel(&self) -> usize {
        self.bytes.len() / self.dtype.size()
    }
}

/// Writes `target[start + i] − base[start + i]` (computed in f32) into `out[i]` for every `i`.
/// Both tensors must be of quantizable dtypes and hold at least `start + out.len()` elements.
pub(crate) fn load_delta(
    base: &TensorData<'_>,
    target: &TensorData<'_>,
    start: usize,
    out: &mut [f32],
) {
    macro_rules! go {
        ($b:ty, $t:ty) => {
            fill::<$b, $t>(base.bytes, target.bytes, start, out)
        };
    }
    match (base.dtype, target.dtype) {
        (DType::F32, DType::F32) => go!(F32, F32),
        (DType::F32, DType::F16) => go!(F32, F16),
        (DType::F32, DType::BF16) => go!(F32, BF16),
        (DType::F16, DType::F32) => go!(F16, F32),
        (DType::F16, DType::F16) => go!(F16, F16),
        (DType::F16, DType::BF16) => go!(F16, BF16),
        (DType::BF16, DType::F32) => go!(BF16, F32),
        (DType::BF16, DType::F16) => go!(BF16, F16),
        (DType::BF16, DType::BF16) => go!(BF16, BF16),
        _ => out.fill(f32::NAN),
    }
}

fn fill<B: Lanes, T: Lanes>(base: &[u8], target: &[u8], start: usize, out: &mut [f32]) {
    let n = out.len();
    let b = &base[start * B::SIZE..(start + n) * B::SIZE];
    let t = &target[start * T::SIZE..(start + n) * T::SIZE];
    // Eight at a time (vectorised), then the tail one by one: the same f32 subtraction either way.
    let mut o8 = out.chunks_exact_mut(8);
    let mut b8 = b.chunks_exact(8 * B::SIZE);
    let mut t8 = t.chunks_exact(8 * T::SIZE);
    for ((o, bb), tb) in (&mut o8).zip(&mut b8).zip(&mut t8) {
        let (x, y): ([f32; 8], [f32; 8]) = (T::load(tb), B::load(bb));
        for ((o, x), y) in o.iter_mut().zip(x).zip(y) {
            *o = x - y;
        }
    }
    for ((o, bb), tb) in o8
        .into_remainder()
        .iter_mut()
        .zip(b8.remainder().chunks_exact(B::SIZE))
        .zip(t8.remainder().chunks_exact(T::SIZE))
    {
        *o = T::read(tb) - B::read(bb);
    }
}

/// Eight elements at a time, as straight-line code on arrays that the compiler vectorises (no calls,
/// no data-dependent branches). Bit-identical to [`FloatElem::read`] / [`FloatElem::write`], except that
/// `load8` of a NaN gives some NaN rather than a particular one (a NaN input never reaches an output:
/// reconstruction writes the canonical NaN, quantization rejects non-finite deltas).
pub(crate) trait Lanes: FloatElem {
    /// `bytes` is exactly 8 elements.
    fn load<const N: usize>(bytes: &[u8]) -> [f32; N];
    /// Rounds to nearest even into this type, NaN to the canonical NaN; `out` is exactly 8 elements.
    fn store<const N: usize>(v: &[f32; N], out: &mut [u8]);
}

impl Lanes for F32 {
    #[inline(always)]
    fn load<const N: usize>(bytes: &[u8]) -> [f32; N] {
        let mut v = [0f32; N];
        for (o, c) in v.iter_mut().zip(bytes[..4 * N].chunks_exact(4)) {
            *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        }
        v
    }
    #[inline(always)]
    fn store<const N: usize>(v: &[f32; N], out: &mut [u8]) {
        for (x, o) in v.iter().zip(out[..4 * N].chunks_exact_mut(4)) {
            let bits = if x.is_nan() { 0x7fc0_0000 } else { x.to_bits() };
            o.copy_from_slice(&bits.to_le_bytes());
        }
    }
}

impl Lanes for BF16 {
    #[inline(always)]
    fn load<const N: usize>(bytes: &[u8]) -> [f32; N] {
        let mut v = [0f32; N];
        for (o, c) in v.iter_mut().zip(bytes[..2 * N].chunks_exact(2)) {
            *o = f32::from_bits(u32::from(c.try_into().map_or(0, u16::from_le_bytes)) << 16);
        }
        v
    }
    #[inline(always)]
    fn store<const N: usize>(v: &[f32; N], out: &mut [u8]) {
        store16(v, out, 0x7fc0, |x| {
            let u = x.to_bits();
            // Round to nearest even: add just under half an ulp, plus one if the kept part is odd.
            (u.wrapping_add(0x7fff + ((u >> 16) & 1)) >> 16) as u16
        });
    }
}

impl Lanes for F16 {
    #[inline(always)]
    fn load<const N: usize>(bytes: &[u8]) -> [f32; N] {
        let mut v = [0f32; N];
        for (o, c) in v.iter_mut().zip(bytes[..2 * N].chunks_exact(2)) {
            *o = f16_bits_to_f32(c.try_into().map_or(0, u16::from_le_bytes));
        }
        v
    }
    #[inline(always)]
    fn store<const N: usize>(v: &[f32; N], out: &mut [u8]) {
        store16(v, out, 0x7e00, f32_to_f16_bits);
    }
}

/// Writes `round(v)` as 16-bit little-endian values, `nan` for a NaN. `round` is never given a NaN; a
/// block without NaNs (the usual case) skips the per-element select.
#[inline(always)]
fn store16<const N: usize>(v: &[f32; N], out: &mut [u8], nan: u16, round: impl Fn(f32) -> u16) {
    let out = &mut out[..2 * N];
    if v.iter().fold(false, |a, x| a | x.is_nan()) {
        for (x, o) in v.iter().zip(out.chunks_exact_mut(2)) {
            let bits = if x.is_nan() { nan } else { round(*x) };
            o.copy_from_slice(&bits.to_le_bytes());
        }
    } else {
        for (x, o) in v.iter().zip(out.chunks_exact_mut(2)) {
            o.copy_from_slice(&round(*x).to_le_bytes());
        }
    }
}

/// Exact f16 → f32 without branches on the data (F. Giesen's method). A NaN stays a NaN.
#[inline(always)]
fn f16_bits_to_f32(h: u16) -> f32 {
    let h = u32::from(h);
    const EXP: u32 = 0x7c00 << 13;
    let o = ((h & 0x7fff) << 13) + ((127 - 15) << 23);
    let exp = (h << 13) & EXP;
    let inf_nan = o + ((128 - 16) << 23);
    // Subnormal: renormalise with one exact f32 subtraction of 2^-14.
    let sub = (f32::from_bits(o + (1 << 23)) - f32::from_bits(113 << 23)).to_bits();
    let o = if exp == EXP {
        inf_nan
    } else if exp == 0 {
        sub
    } else {
        o
    };
    f32::from_bits(o | ((h & 0x8000) << 16))
}

/// f32 → f16 bits, rounding to nearest even, for a non-NaN input (F. Giesen's method).
#[inline(always)]
fn f32_to_f16_bits(v: f32) -> u16 {
    let u = v.to_bits();
    let sign = (u >> 16) & 0x8000;
    let a = u & 0x7fff_ffff;
    // Below 2^-14 the result is subnormal: adding 0.5 (ulp 2^-24, the f16 subnormal step) rounds the
    // mantissa to nearest even, and the bits of the sum above 0.5 are the f16 bits.
    const HALF: u32 = 126 << 23;
    let sub = (f32::from_bits(a) + f32::from_bits(HALF))
        .to_bits()
        .wrapping_sub(HALF);
    // Normal: rebias the exponent, round the 13 dropped bits to nearest even (a carry into the
    // exponent, up to infinity, is the right answer).
    let norm = a
        .wrapping_sub((127 - 15) << 23)
        .wrapping_add(0xfff + ((a >> 13) & 1))
        >> 13;
    let r = if a >= 0x4780_0000 {
        0x7c00 // |v| >= 65536 (or infinite): infinity
    } else if a < 0x3880_0000 {
        sub
    } else {
        norm
    };
    (r | sign) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load1<E: Lanes>(bytes: &[u8]) -> f32 {
        let mut b = bytes.repeat(8);
        b.truncate(8 * E::SIZE);
        E::load::<8>(&b)[0]
    }

    fn store1<E: Lanes>(v: f32) -> Vec<u8> {
        let mut out = vec![0u8; 8 * E::SIZE];
        E::store(&[v; 8], &mut out);
        let first = out[..E::SIZE].to_vec();
        assert!(out.chunks_exact(E::SIZE).all(|c| c == first.as_slice()));
        first
    }

    /// Every f16 and bf16 value, and f32 values around every rounding boundary.
    #[test]
    fn lanes_match_scalar_conversions() {
        for h in 0..=u16::MAX {
            let b = h.to_le_bytes();
            for (got, want) in [
                (load1::<F16>(&b), F16::read(&b)),
                (load1::<BF16>(&b), BF16::read(&b)),
            ] {
                assert!(
                    got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
                    "{h:#06x}"
                );
            }
        }
        let check = |u: u32| {
            let v = f32::from_bits(u);
            let mut want = [0u8; 4];
            F32::write(v, &mut want);
            assert_eq!(store1::<F32>(v), want, "f32 {u:#010x}");
            F16::write(v, &mut want);
            assert_eq!(store1::<F16>(v), want[..2], "f16 {u:#010x}");
            BF16::write(v, &mut want);
            assert_eq!(store1::<BF16>(v), want[..2], "bf16 {u:#010x}");
            assert_eq!(load1::<F32>(&u.to_le_bytes()).to_bits(), u);
        };
        // Every exponent and sign, with low bits at and around the halfway points of both roundings.
        let lows = [
            0u32, 1, 0xfff, 0x1000, 0x1001, 0x1fff, 0x2000, 0x3000, 0x7fff, 0x8000, 0x8001, 0xffff,
            0x1_0000, 0x1_8000, 0x7f_ffff, 0x7f_e000, 0x7f_f000, 0x40_0000,
        ];
        for hi in 0..(1u32 << 9) {
            for mid in [0u32, 1, 0x3ff, 0x155, 0x200, 0x7f] {
                for &lo in &lows {
                    check((hi << 23) | ((mid << 13) & 0x7f_ffff) | lo);
                    check((hi << 23) | ((mid << 16) & 0x7f_ffff) | lo);
                }
            }
        }
        // And a pseudo-random sample of everything else.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..1_000_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            check(x as u32);
        }
    }
}
