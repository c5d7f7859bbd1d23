//! [`Elem`]: eight elements of one dtype as eight f32 lanes, loaded and stored exactly (the
//! conversions of the parent module's bit-exactness notes).

use super::*;

/// Eight elements of one dtype as eight f32 lanes.
pub(super) trait Elem {
    const SIZE: usize;
    const IS_BF16: bool = false;
    /// Loads 8 elements from `p`, exactly converted to f32.
    ///
    /// # Safety
    /// `p` is valid for reads of `8·SIZE` bytes; the CPU has AVX2 and F16C.
    unsafe fn load8(p: *const u8) -> __m256;
    /// Stores 8 lanes rounded to nearest even into this dtype. NaN lanes must be 0x7fc0_0000.
    ///
    /// # Safety
    /// `p` is valid for writes of `8·SIZE` bytes; the CPU has AVX2 and F16C.
    unsafe fn store8(v: __m256, p: *mut u8);
}

pub(super) struct F32;
pub(super) struct F16;
pub(super) struct BF16;

impl Elem for F32 {
    const SIZE: usize = 4;
    #[inline(always)]
    unsafe fn load8(p: *const u8) -> __m256 {
        // SAFETY: the caller guarantees 32 readable bytes and AVX; loadu has no alignment needs.
        unsafe { _mm256_loadu_ps(p.cast()) }
    }
    #[inline(always)]
    unsafe fn store8(v: __m256, p: *mut u8) {
        // SAFETY: the caller guarantees 32 writable bytes and AVX; storeu has no alignment needs.
        unsafe { _mm256_storeu_ps(p.cast(), v) }
    }
}

impl Elem for F16 {
    const SIZE: usize = 2;
    #[inline(always)]
    unsafe fn load8(p: *const u8) -> __m256 {
        // SAFETY: the caller guarantees 16 readable bytes and F16C; the load is unaligned.
        unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p.cast())) }
    }
    #[inline(always)]
    unsafe fn store8(v: __m256, p: *mut u8) {
        // SAFETY: the caller guarantees 16 writable bytes and F16C. Immediate 0 = round to nearest
        // even, independent of MXCSR.
        unsafe { _mm_storeu_si128(p.cast(), _mm256_cvtps_ph::<0>(v)) }
    }
}

impl Elem for BF16 {
    const SIZE: usize = 2;
    const IS_BF16: bool = true;
    #[inline(always)]
    unsafe fn load8(p: *const u8) -> __m256 {
        // SAFETY: the caller guarantees 16 readable bytes and AVX2; the load is unaligned. bf16 is
        // the top half of an f32: the 8 values in both 128-bit lanes, then each lane's four moved
        // to the top halves of its 32-bit slots, zeros below.
        unsafe {
            let v = _mm256_broadcastsi128_si256(_mm_loadu_si128(p.cast()));
            let z = -128;
            let to_top = _mm256_setr_epi8(
                z, z, 0, 1, z, z, 2, 3, z, z, 4, 5, z, z, 6, 7, //
                z, z, 8, 9, z, z, 10, 11, z, z, 12, 13, z, z, 14, 15,
            );
            _mm256_castsi256_ps(_mm256_shuffle_epi8(v, to_top))
        }
    }
    #[inline(always)]
    unsafe fn store8(v: __m256, p: *mut u8) {
        // SAFETY: the caller guarantees 16 writable bytes and AVX2. Round to nearest even as the
        // portable code does, then keep the top 16 bits: a lane is then < 2^16, so the
        // unsigned-saturating pack keeps it as it is.
        unsafe {
            let r = _mm256_srli_epi32::<16>(bf16_round_high(v));
            let packed =
                _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256::<1>(r));
            _mm_storeu_si128(p.cast(), packed);
        }
    }
}
