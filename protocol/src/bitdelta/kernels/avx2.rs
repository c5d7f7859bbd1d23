//! AVX2 + F16C versions of the kernels (x86-64). Only called after `avx2_available()` said yes.
//!
//! Each entry point checks the slice lengths it relies on, then calls a `#[target_feature]` function
//! that works on raw pointers within those lengths. The `#[inline(always)]` helpers carry no target
//! feature of their own: they are only ever inlined into those functions, where AVX2 and F16C are on.
//!
//! Bit-exactness with the portable code (`tensor.rs`'s `Lanes`, `dtype.rs`'s `FloatElem`):
//! * f16 → f32 (`vcvtph2ps`) and bf16 → f32 (the 16 bits moved to the top of a zeroed lane) are
//!   exact, subnormals included. Like the portable code, this assumes MXCSR's default DAZ/FTZ off,
//!   which Rust never changes.
//! * f32 → f16 is `vcvtps2ph` with immediate 0: round to nearest even whatever MXCSR's rounding
//!   mode, overflow to ±inf, subnormal results rounded, not flushed — IEEE, as `half` does (checked
//!   on every f32 value, `tests/kernels.rs`).
//! * f32 → bf16 is the same integer rounding as the portable code (`u + 0x7fff + odd >> 16`).
//! * Any NaN lane is replaced by 0x7fc0_0000 before the conversion; each conversion maps that one to
//!   the dtype's canonical NaN (f32 0x7fc0_0000, f16 0x7e00, bf16 0x7fc0).
//! * The sums are `vaddps`/`vsubps`, one IEEE operation per element as in the scalar code, in the same
//!   order; nothing is fused.

use std::arch::x86_64::{
    __m256, __m256i, _mm256_add_epi32, _mm256_add_ps, _mm256_and_ps, _mm256_and_si256,
    _mm256_andnot_si256, _mm256_blend_epi16, _mm256_blendv_ps, _mm256_broadcastsi128_si256,
    _mm256_castps_si256, _mm256_castsi256_ps, _mm256_castsi256_si128, _mm256_cmp_ps,
    _mm256_cvtph_ps, _mm256_cvtps_ph, _mm256_extracti128_si256, _mm256_loadu_ps,
    _mm256_loadu_si256, _mm256_movemask_ps, _mm256_permute2f128_ps, _mm256_set1_epi32,
    _mm256_set1_ps, _mm256_setr_epi32, _mm256_setr_epi8, _mm256_setzero_ps, _mm256_shuffle_epi8,
    _mm256_shuffle_ps, _mm256_slli_epi32, _mm256_sllv_epi32, _mm256_srli_epi32, _mm256_storeu_ps,
    _mm256_storeu_si256, _mm256_sub_ps, _mm256_unpackhi_ps, _mm256_unpacklo_ps, _mm256_xor_ps,
    _mm_loadu_si128, _mm_packus_epi32, _mm_storeu_si128, _CMP_GE_OQ, _CMP_UNORD_Q,
};

use super::GroupLayout;
use crate::bitdelta::quantize::level;
use crate::dtype::DType;

mod elem;
use elem::{Elem, BF16, F16, F32};

/// `v` with every NaN lane replaced by the canonical quiet NaN 0x7fc0_0000.
///
/// # Safety
/// The CPU has AVX.
#[inline(always)]
unsafe fn canonical_nan(v: __m256) -> __m256 {
    // SAFETY: register-only AVX operations; the caller guarantees AVX.
    unsafe {
        let nan = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fc0_0000));
        _mm256_blendv_ps(v, nan, _mm256_cmp_ps::<_CMP_UNORD_Q>(v, v))
    }
}

/// The 8×8 transpose of `r`: lane `k` of result `m` is lane `m` of `r[k]`.
///
/// # Safety
/// The CPU has AVX.
#[inline(always)]
unsafe fn transpose8(r: [__m256; 8]) -> [__m256; 8] {
    // SAFETY: register-only AVX operations; the caller guarantees AVX.
    unsafe {
        let t0 = _mm256_unpacklo_ps(r[0], r[1]);
        let t1 = _mm256_unpackhi_ps(r[0], r[1]);
        let t2 = _mm256_unpacklo_ps(r[2], r[3]);
        let t3 = _mm256_unpackhi_ps(r[2], r[3]);
        let t4 = _mm256_unpacklo_ps(r[4], r[5]);
        let t5 = _mm256_unpackhi_ps(r[4], r[5]);
        let t6 = _mm256_unpacklo_ps(r[6], r[7]);
        let t7 = _mm256_unpackhi_ps(r[6], r[7]);
        let s0 = _mm256_shuffle_ps::<0x44>(t0, t2);
        let s1 = _mm256_shuffle_ps::<0xee>(t0, t2);
        let s2 = _mm256_shuffle_ps::<0x44>(t1, t3);
        let s3 = _mm256_shuffle_ps::<0xee>(t1, t3);
        let s4 = _mm256_shuffle_ps::<0x44>(t4, t6);
        let s5 = _mm256_shuffle_ps::<0xee>(t4, t6);
        let s6 = _mm256_shuffle_ps::<0x44>(t5, t7);
        let s7 = _mm256_shuffle_ps::<0xee>(t5, t7);
        [
            _mm256_permute2f128_ps::<0x20>(s0, s4),
            _mm256_permute2f128_ps::<0x20>(s1, s5),
            _mm256_permute2f128_ps::<0x20>(s2, s6),
            _mm256_permute2f128_ps::<0x20>(s3, s7),
            _mm256_permute2f128_ps::<0x31>(s0, s4),
            _mm256_permute2f128_ps::<0x31>(s1, s5),
            _mm256_permute2f128_ps::<0x31>(s2, s6),
            _mm256_permute2f128_ps::<0x31>(s3, s7),
        ]
    }
}

macro_rules! dispatch {
    ($f:ident, $b:expr, $t:expr, ($($arg:expr),*), $none:expr) => {
        match ($b, $t) {
            (DType::F32, DType::F32) => $f::<F32, F32>($($arg),*),
            (DType::F32, DType::F16) => $f::<F32, F16>($($arg),*),
            (DType::F32, DType::BF16) => $f::<F32, BF16>($($arg),*),
            (DType::F16, DType::F32) => $f::<F16, F32>($($arg),*),
            (DType::F16, DType::F16) => $f::<F16, F16>($($arg),*),
            (DType::F16, DType::BF16) => $f::<F16, BF16>($($arg),*),
            (DType::BF16, DType::F32) => $f::<BF16, F32>($($arg),*),
            (DType::BF16, DType::F16) => $f::<BF16, F16>($($arg),*),
            (DType::BF16, DType::BF16) => $f::<BF16, BF16>($($arg),*),
            _ => $none,
        }
    };
}

/// See `kernels::sign1_apply`. The caller has checked that the CPU has AVX2 and F16C.
pub(super) fn sign1_apply(
    base_dtype: DType,
    out_dtype: DType,
    base: &[u8],
    signs: &[u8],
    hi: f32,
    out: &mut [u8],
) -> usize {
    fn go<B: Elem, T: Elem>(base: &[u8], signs: &[u8], hi: f32, out: &mut [u8]) -> usize {
        let bytes = signs
            .len()
            .min(base.len() / (8 * B::SIZE))
            .min(out.len() / (8 * T::SIZE));
        // SAFETY: `bytes` code bytes, and 8 elements per code byte of `base` and of `out`, are within
        // the slices (computed just above); the caller checked AVX2 and F16C.
        unsafe {
            sign1_apply_avx2::<B, T>(base.as_ptr(), signs.as_ptr(), bytes, hi, out.as_mut_ptr());
        }
        8 * bytes
    }
    dispatch!(go, base_dtype, out_dtype, (base, signs, hi, out), 0)
}

/// See `kernels::sign1_apply_groups`. The caller has checked that the CPU has AVX2 and F16C.
pub(super) fn sign1_apply_groups(
    base_dtype: DType,
    out_dtype: DType,
    base: &[u8],
    signs: &[u8],
    scales: &[f32],
    layout: GroupLayout,
    out: &mut [u8],
) -> bool {
    fn go<B: Elem, T: Elem>(
        base: &[u8],
        signs: &[u8],
        scales: &[f32],
        l: GroupLayout,
        out: &mut [u8],
    ) -> bool {
        let fits = || {
            let n = l.rows.checked_mul(l.row_len)?;
            let ok = l.width > 0
                && l.row_len.is_multiple_of(8)
                && (l.width.is_multiple_of(8) || l.width >= l.row_len)
                && base.len() == n.checked_mul(B::SIZE)?
                && out.len() == n.checked_mul(T::SIZE)?
                && signs.len() == n / 8
                && scales.len() == l.rows.checked_mul(l.row_len.div_ceil(l.width))?;
            Some(ok)
        };
        if fits() != Some(true) {
            return false;
        }
        // SAFETY: every group lies within the `rows·row_len` elements of `base` and `out`, its codes
        // within `signs`, and there is one scale per group (all checked just above); every group
        // starts on a code byte and holds whole code bytes (row_len and width multiples of 8, or one
        // group per row); the caller checked AVX2 and F16C.
        unsafe {
            sign1_groups_avx2::<B, T>(
                base.as_ptr(),
                signs.as_ptr(),
                scales.as_ptr(),
                l,
                out.as_mut_ptr(),
            );
        }
        true
    }
    dispatch!(
        go,
        base_dtype,
        out_dtype,
        (base, signs, scales, layout, out),
        false
    )
}

/// # Safety
/// `signs` is readable for `bytes` bytes, `base` for `8·bytes` elements of `B`, `out` writable for
/// `8·bytes` elements of `T`; the CPU has AVX2 and F16C.
#[target_feature(enable = "avx2,f16c")]
unsafe fn sign1_apply_avx2<B: Elem, T: Elem>(
    base: *const u8,
    signs: *const u8,
    bytes: usize,
    hi: f32,
    out: *mut u8,
) {
    // SAFETY: the caller's guarantees are `whole_bytes`'s.
    unsafe { whole_bytes::<B, T>(base, signs, bytes, hi, out) }
}

/// # Safety
/// As `sign1_apply_groups` checks: `layout` describes groups of whole code bytes within `base`,
/// `signs` and `out`, with one scale per group in `scales`; the CPU has AVX2 and F16C.
#[target_feature(enable = "avx2,f16c")]
unsafe fn sign1_groups_avx2<B: Elem, T: Elem>(
    base: *const u8,
    signs: *const u8,
    scales: *const f32,
    l: GroupLayout,
    out: *mut u8,
) {
    let mut k = 0;
    for r in 0..l.rows {
        let mut c = 0;
        while c < l.row_len {
            let len = l.width.min(l.row_len - c);
            let start = r * l.row_len + c;
            // SAFETY: group k (`start … start + len`, a multiple of 8 from a multiple of 8) and its
            // scale are within the buffers, as the caller guarantees.
            unsafe {
                // s·(+1), the product the definition names for code 1.
                let hi = *scales.add(k) * level(1, 1);
                whole_bytes::<B, T>(
                    base.add(start * B::SIZE),
                    signs.add(start / 8),
                    len / 8,
                    hi,
                    out.add(start * T::SIZE),
                );
            }
            k += 1;
            c += len;
        }
    }
}

/// `out = round_T(base ± hi)` for the `8·bytes` elements of `bytes` code bytes: 32 elements (one
/// 32-bit word of codes) at a time, then 8.
///
/// # Safety
/// As for `sign1_apply_avx2`; only called from functions with AVX2 and F16C enabled.
#[inline(always)]
unsafe fn whole_bytes<B: Elem, T: Elem>(
    base: *const u8,
    signs: *const u8,
    bytes: usize,
    hi: f32,
    out: *mut u8,
) {
    // SAFETY: every pointer is `base`/`signs`/`out` offset by less than the lengths the caller
    // guarantees (elements `e < 8·bytes`, code bytes `i < bytes`); AVX2 and F16C are on.
    unsafe {
        let hi = _mm256_set1_ps(hi);
        let mut i = 0;
        while i + 4 <= bytes {
            let word = u32::from_le_bytes(signs.add(i).cast::<[u8; 4]>().read_unaligned());
            let word = _mm256_set1_epi32(word as i32);
            if B::IS_BF16 && T::IS_BF16 {
                // bf16 → bf16: even and odd elements in separate vectors (see `bf16_apply16`).
                for h in 0..2 {
                    let even = _mm256_sllv_epi32(word, shifts_even(h));
                    let odd = _mm256_sllv_epi32(word, shifts_odd(h));
                    bf16_apply16(base, out, 8 * i + 16 * h, even, odd, hi);
                }
            } else {
                for q in 0..4 {
                    let bits = _mm256_sllv_epi32(word, shifts8(q));
                    apply8::<B, T>(base, out, 8 * (i + q), bits, hi);
                }
            }
            i += 4;
        }
        while i < bytes {
            let word = _mm256_set1_epi32(i32::from(*signs.add(i)));
            apply8::<B, T>(base, out, 8 * i, _mm256_sllv_epi32(word, shifts8(0)), hi);
            i += 1;
        }
    }
}

/// Shift counts that move bit `8q + j` of a 32-bit word of codes to bit 31 of lane j.
///
/// # Safety
/// The CPU has AVX.
#[inline(always)]
unsafe fn shifts8(q: usize) -> __m256i {
    let b = 31 - 8 * q as i32;
    // SAFETY: a register constant; the caller guarantees AVX.
    unsafe { _mm256_setr_epi32(b, b - 1, b - 2, b - 3, b - 4, b - 5, b - 6, b - 7) }
}

/// Shift counts that move bit `16h + 2j` (the even elements of a run of 16) to bit 31 of lane j.
///
/// # Safety
/// The CPU has AVX.
#[inline(always)]
unsafe fn shifts_even(h: usize) -> __m256i {
    let b = 31 - 16 * h as i32;
    // SAFETY: a register constant; the caller guarantees AVX.
    unsafe { _mm256_setr_epi32(b, b - 2, b - 4, b - 6, b - 8, b - 10, b - 12, b - 14) }
}

/// Shift counts that move bit `16h + 2j + 1` (the odd elements of a run of 16) to bit 31 of lane j.
///
/// # Safety
/// The CPU has AVX.
#[inline(always)]
unsafe fn shifts_odd(h: usize) -> __m256i {
    let b = 30 - 16 * h as i32;
    // SAFETY: a register constant; the caller guarantees AVX.
    unsafe { _mm256_setr_epi32(b, b - 2, b - 4, b - 6, b - 8, b - 10, b - 12, b - 14) }
}

/// `±hi`: `hi` with its sign bit flipped in the lanes whose bit 31 of `bits` is clear (code 0, level
/// −1; s·(−1) is exactly −(s·1), as the portable code uses).
///
/// # Safety
/// The CPU has AVX2.
#[inline(always)]
unsafe fn signed(hi: __m256, bits: __m256i) -> __m256 {
    // SAFETY: register-only AVX2 operations; the caller guarantees AVX2.
    unsafe {
        let flip = _mm256_andnot_si256(bits, _mm256_set1_epi32(i32::MIN));
        _mm256_xor_ps(hi, _mm256_castsi256_ps(flip))
    }
}

/// The eight elements `e … e+7`: `out = round_T(base ± hi)`, lane j's sign from bit 31 of `bits`.
///
/// # Safety
/// Elements `e … e+7` of `base` and `out` are readable / writable; the CPU has AVX2 and F16C.
#[inline(always)]
unsafe fn apply8<B: Elem, T: Elem>(
    base: *const u8,
    out: *mut u8,
    e: usize,
    bits: __m256i,
    hi: __m256,
) {
    // SAFETY: the caller guarantees the eight elements at `e` and the CPU features.
    unsafe {
        let y = _mm256_add_ps(B::load8(base.add(e * B::SIZE)), signed(hi, bits));
        T::store8(canonical_nan(y), out.add(e * T::SIZE));
    }
}

/// bf16 → bf16, the sixteen elements `e … e+15` loaded as one 256-bit vector: the even elements are
/// its 32-bit lanes shifted left by 16, the odd ones its lanes with the low halves cleared. Each
/// result is rounded as in `BF16::store8` (its bf16 in the top half of the lane); the even results
/// shifted down and the odd ones blended in above them are the sixteen outputs in order.
///
/// # Safety
/// Elements `e … e+15` of `base` and `out` are readable / writable; the CPU has AVX2.
#[inline(always)]
unsafe fn bf16_apply16(
    base: *const u8,
    out: *mut u8,
    e: usize,
    even_bits: __m256i,
    odd_bits: __m256i,
    hi: __m256,
) {
    // SAFETY: the caller guarantees the sixteen elements at `e` and AVX2.
    unsafe {
        let x = _mm256_loadu_si256(base.add(2 * e).cast());
        let even = _mm256_castsi256_ps(_mm256_slli_epi32::<16>(x));
        let odd = _mm256_castsi256_ps(_mm256_and_si256(
            x,
            _mm256_set1_epi32(0xffff_0000_u32 as i32),
        ));
        let even = bf16_round_high(canonical_nan(_mm256_add_ps(even, signed(hi, even_bits))));
        let odd = bf16_round_high(canonical_nan(_mm256_add_ps(odd, signed(hi, odd_bits))));
        let r = _mm256_blend_epi16::<0xaa>(_mm256_srli_epi32::<16>(even), odd);
        _mm256_storeu_si256(out.add(2 * e).cast(), r);
    }
}

/// Round to nearest even to bf16, the result in the top 16 bits of each lane (the low 16 are left
/// over): `u + 0x7fff + (bit 16 of u)`. `v` holds no NaN but 0x7fc0_0000, which gives 0x7fc0.
///
/// # Safety
/// The CPU has AVX2.
#[inline(always)]
unsafe fn bf16_round_high(v: __m256) -> __m256i {
    // SAFETY: register-only AVX2 operations; the caller guarantees AVX2.
    unsafe {
        let u = _mm256_castps_si256(v);
        let odd = _mm256_and_si256(_mm256_srli_epi32::<16>(u), _mm256_set1_epi32(1));
        _mm256_add_epi32(u, _mm256_add_epi32(odd, _mm256_set1_epi32(0x7fff)))
    }
}

/// Elements of each chunk the batch kernel takes at a time.
const BLOCK: usize = 64;

/// See `kernels::sign1_batch`. The caller has checked that the CPU has AVX2 and F16C. `None` when the
/// lengths are not as documented or `chunk` is not a multiple of [`BLOCK`] (the caller then uses the
/// portable code).
pub(super) fn sign1_batch(
    base_dtype: DType,
    target_dtype: DType,
    base: &[u8],
    target: &[u8],
    chunk: usize,
    packed: &mut [u8],
) -> Option<[f32; 8]> {
    fn go<B: Elem, T: Elem>(
        base: &[u8],
        target: &[u8],
        chunk: usize,
        packed: &mut [u8],
    ) -> Option<[f32; 8]> {
        let n = chunk.checked_mul(8)?;
        let ok = chunk.is_multiple_of(BLOCK)
            && base.len() == n.checked_mul(B::SIZE)?
            && target.len() == n.checked_mul(T::SIZE)?
            && packed.len() == chunk;
        // SAFETY: the lengths are exactly those `sign1_batch_avx2` reads and writes (checked just
        // above); the caller checked AVX2 and F16C.
        ok.then(|| unsafe {
            sign1_batch_avx2::<B, T>(base.as_ptr(), target.as_ptr(), chunk, packed.as_mut_ptr())
        })
    }
    dispatch!(
        go,
        base_dtype,
        target_dtype,
        (base, target, chunk, packed),
        None
    )
}

/// Eight chunks side by side, [`BLOCK`] elements of each at a time: Δ, its sign bits and |Δ| for the
/// block of every chunk (|Δ| kept in a 2 KiB buffer that stays in L1), then the buffer transposed
/// eight by eight so that lane k of each vector added to the running sums is chunk k's next element.
/// Taking a whole block (two or more cache lines) of one chunk at a time matters: chunks are 8 or
/// 16 KiB apart, so eight of them share L1 sets.
///
/// # Safety
/// `chunk` is a multiple of [`BLOCK`]; `base` and `target` are readable for `8·chunk` elements of
/// `B` and `T`, `packed` writable for `chunk` bytes; the CPU has AVX2 and F16C.
#[target_feature(enable = "avx2,f16c")]
unsafe fn sign1_batch_avx2<B: Elem, T: Elem>(
    base: *const u8,
    target: *const u8,
    chunk: usize,
    packed: *mut u8,
) -> [f32; 8] {
    // SAFETY: element `e = k·chunk + j + 8m < 8·chunk` (k < 8, j + 8m < chunk) and code bytes
    // `e / 8 … e / 8 + 7 < chunk` (e a multiple of 64 there) stay within the lengths the caller
    // guarantees; AVX2 and F16C are enabled here.
    unsafe {
        let zero = _mm256_setzero_ps();
        let abs = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
        let mut buf = [[zero; BLOCK / 8]; 8];
        // Lane k is chunk k's running sum, started at +0 like the scalar `part`.
        let mut acc = zero;
        let mut j = 0;
        while j < chunk {
            for (k, row) in buf.iter_mut().enumerate() {
                let first = k * chunk + j;
                let mut bits = 0u64;
                for (m, slot) in row.iter_mut().enumerate() {
                    let e = first + 8 * m;
                    let d = _mm256_sub_ps(
                        T::load8(target.add(e * T::SIZE)),
                        B::load8(base.add(e * B::SIZE)),
                    );
                    // Code 1 where Δ ≥ 0 (−0 included, NaN excluded, as `x >= 0.0`).
                    let ge = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_GE_OQ>(d, zero));
                    bits |= u64::from(ge as u8) << (8 * m);
                    *slot = _mm256_and_ps(d, abs);
                }
                // Stored, not OR-ed: the bytes are the batch's own and still zero, and a fresh page
                // read first would fault twice (zero page, then copy on write).
                packed
                    .add(first / 8)
                    .cast::<[u8; 8]>()
                    .write_unaligned(bits.to_le_bytes());
            }
            // Elements j … j+BLOCK−1 of every chunk, added to each chunk's sum in element order.
            // (Indexing, not `buf.map(…)`: the latter copies the buffer and halves the speed.)
            #[allow(clippy::needless_range_loop)]
            for m in 0..BLOCK / 8 {
                let column = [
                    buf[0][m], buf[1][m], buf[2][m], buf[3][m], buf[4][m], buf[5][m], buf[6][m],
                    buf[7][m],
                ];
                for v in transpose8(column) {
                    acc = _mm256_add_ps(acc, v);
                }
            }
            j += BLOCK;
        }
        let mut sums = [0f32; 8];
        _mm256_storeu_ps(sums.as_mut_ptr(), acc);
        sums
    }
}

/// See `kernels::delta`. The caller has checked that the CPU has AVX2 and F16C.
pub(super) fn delta(
    base_dtype: DType,
    target_dtype: DType,
    base: &[u8],
    target: &[u8],
    out: &mut [f32],
) -> usize {
    fn go<B: Elem, T: Elem>(base: &[u8], target: &[u8], out: &mut [f32]) -> usize {
        let n = out
            .len()
            .min(base.len() / B::SIZE)
            .min(target.len() / T::SIZE)
            / 8
            * 8;
        // SAFETY: `n` elements are within each slice (computed just above); the caller checked AVX2
        // and F16C.
        unsafe { delta_avx2::<B, T>(base.as_ptr(), target.as_ptr(), n, out.as_mut_ptr()) };
        n
    }
    dispatch!(go, base_dtype, target_dtype, (base, target, out), 0)
}

/// # Safety
/// `n` is a multiple of 8; `base`, `target` are readable and `out` writable for `n` elements; the CPU
/// has AVX2 and F16C.
#[target_feature(enable = "avx2,f16c")]
unsafe fn delta_avx2<B: Elem, T: Elem>(
    base: *const u8,
    target: *const u8,
    n: usize,
    out: *mut f32,
) {
    // SAFETY: element `e < n` of each buffer is within the lengths the caller guarantees; AVX2 and
    // F16C are enabled here.
    unsafe {
        let mut e = 0;
        while e < n {
            let d = _mm256_sub_ps(
                T::load8(target.add(e * T::SIZE)),
                B::load8(base.add(e * B::SIZE)),
            );
            _mm256_storeu_ps(out.add(e), d);
            e += 8;
        }
    }
}
