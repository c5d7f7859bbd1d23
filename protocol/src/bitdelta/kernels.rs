//! Runtime-selected kernels for the codec's 1-bit hot loops.
//!
//! The portable code (plain Rust that the compiler vectorises for the build's baseline target, SSE2 on
//! x86-64) is the reference and the fallback. On x86-64 CPUs with AVX2 and F16C, detected at run time,
//! the same loops run as explicit 8-lane AVX2 code with the hardware f16 conversions (`vcvtph2ps`,
//! `vcvtps2ph` rounding to nearest even). Every kernel gives the same bits as the portable path: the
//! arithmetic is the same IEEE f32 operations (no fused multiply-add, no flush-to-zero), the
//! conversions are exact or round to nearest even exactly as `dtype.rs` does, and NaN results are made
//! canonical before they are converted. `protocol/tests/kernels.rs` checks this on random inputs.
//!
//! [`Kernel::selected`] is what [`reconstruct`](super::reconstruct) and [`quantize`](super::quantize)
//! use: the best kernel the CPU supports, unless the environment variable `ZDN_KERNEL=portable` asks
//! for the portable one (read once). [`reconstruct_with`] and [`quantize_with`] take the kernel as an
//! argument, for tests and benchmarks; asking for a kernel the CPU lacks runs the portable code.

use crate::dtype::DType;

pub use super::quantize::quantize_with;
pub use super::reconstruct::reconstruct_with;

#[cfg(target_arch = "x86_64")]
mod avx2;

/// An implementation of the hot loops.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kernel {
    /// Portable Rust, vectorised for the build's target: the reference.
    Portable,
    /// x86-64 AVX2 + F16C intrinsics (runs only where the CPU has both).
    Avx2F16c,
}

impl Kernel {
    /// Every kernel, the reference first.
    pub const ALL: [Kernel; 2] = [Kernel::Portable, Kernel::Avx2F16c];

    /// A short name for reports.
    pub const fn name(self) -> &'static str {
        match self {
            Kernel::Portable => "portable",
            Kernel::Avx2F16c => "avx2+f16c",
        }
    }

    /// Whether this CPU can run the kernel.
    pub fn is_available(self) -> bool {
        match self {
            Kernel::Portable => true,
            Kernel::Avx2F16c => avx2_available(),
        }
    }

    /// The fastest kernel this CPU can run.
    pub fn best() -> Kernel {
        if Kernel::Avx2F16c.is_available() {
            Kernel::Avx2F16c
        } else {
            Kernel::Portable
        }
    }

    /// The kernel the codec uses: [`Kernel::best`], or the portable one when the environment variable
    /// `ZDN_KERNEL` is `portable` (read on first use).
    pub fn selected() -> Kernel {
        static SELECTED: std::sync::OnceLock<Kernel> = std::sync::OnceLock::new();
        *SELECTED.get_or_init(|| match std::env::var("ZDN_KERNEL").as_deref() {
            Ok("portable") => Kernel::Portable,
            _ => Kernel::best(),
        })
    }
}

impl std::fmt::Display for Kernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(target_arch = "x86_64")]
fn avx2_available() -> bool {
    std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("f16c")
}

#[cfg(not(target_arch = "x86_64"))]
fn avx2_available() -> bool {
    false
}

/// 1-bit reconstruction of whole code bytes: for `i < 8·k`, `out[i] = round_T(base[i] ± hi)` with
/// `+hi` where bit `i` of `signs` is set and `−hi` (`hi` with its sign bit flipped) where it is clear,
/// `k` the number of whole bytes all three slices hold. Returns how many elements it wrote: `8·k`, or
/// 0 when `kernel` is the portable one (the caller's portable loop then does everything).
pub(crate) fn sign1_apply(
    kernel: Kernel,
    base_dtype: DType,
    out_dtype: DType,
    base: &[u8],
    signs: &[u8],
    hi: f32,
    out: &mut [u8],
) -> usize {
    #[cfg(target_arch = "x86_64")]
    if kernel == Kernel::Avx2F16c && avx2_available() {
        return avx2::sign1_apply(base_dtype, out_dtype, base, signs, hi, out);
    }
    let _ = (kernel, base_dtype, out_dtype, base, signs, hi, out);
    0
}

/// Scale groups laid out regularly: `rows` rows of `row_len` elements, each row cut into runs of
/// `width` (the last one shorter); groups, and their scales, in row-major order. Tensor granularity is
/// one row of the whole tensor; row granularity has `width = row_len`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct GroupLayout {
    pub rows: usize,
    pub row_len: usize,
    pub width: usize,
}

/// 1-bit reconstruction of a whole tensor (`base`, `signs`, `out` exactly its elements, code bytes
/// and outputs; `scales` one per group of `layout`), in one call, when every group holds whole code
/// bytes: `row_len` a multiple of 8, and `width` too unless it covers the row. Element `i` of group
/// `k` is `round_T(base[i] ± s_k·1)` as in [`sign1_apply`]. Returns false, having written nothing,
/// for the portable kernel or any other layout; the caller then goes group by group.
#[allow(clippy::too_many_arguments)]
pub(crate) fn sign1_apply_groups(
    kernel: Kernel,
    base_dtype: DType,
    out_dtype: DType,
    base: &[u8],
    signs: &[u8],
    scales: &[f32],
    layout: GroupLayout,
    out: &mut [u8],
) -> bool {
    #[cfg(target_arch = "x86_64")]
    if kernel == Kernel::Avx2F16c && avx2_available() {
        return avx2::sign1_apply_groups(base_dtype, out_dtype, base, signs, scales, layout, out);
    }
    let _ = (
        kernel, base_dtype, out_dtype, base, signs, scales, layout, out,
    );
    false
}

/// The 1-bit encoder's batch: eight consecutive chunks of `chunk` elements (`chunk` a multiple of 8;
/// `base` and `target` hold exactly `8·chunk` elements, `packed` exactly `chunk` bytes, all zero: the
/// kernel may store whole bytes rather than OR bits in).
/// Sets bit `i` of `packed` where `Δ_i = target_i − base_i ≥ 0` and returns each chunk's f32 sum of
/// `|Δ|` in element order from +0. `None` when `kernel` is the portable one (nothing written).
pub(crate) fn sign1_batch(
    kernel: Kernel,
    base_dtype: DType,
    target_dtype: DType,
    base: &[u8],
    target: &[u8],
    chunk: usize,
    packed: &mut [u8],
) -> Option<[f32; 8]> {
    #[cfg(target_arch = "x86_64")]
    if kernel == Kernel::Avx2F16c && avx2_available() {
        return avx2::sign1_batch(base_dtype, target_dtype, base, target, chunk, packed);
    }
    let _ = (
        kernel,
        base_dtype,
        target_dtype,
        base,
        target,
        chunk,
        packed,
    );
    None
}

/// `out[i] = target_i − base_i` in f32 for the first `8·⌊n/8⌋` elements, `n = out.len()` (`base` and
/// `target` hold at least `n` elements). Returns how many it wrote (0 for the portable kernel).
pub(crate) fn delta(
    kernel: Kernel,
    base_dtype: DType,
    target_dtype: DType,
    base: &[u8],
    target: &[u8],
    out: &mut [f32],
) -> usize {
    #[cfg(target_arch = "x86_64")]
    if kernel == Kernel::Avx2F16c && avx2_available() {
        return avx2::delta(base_dtype, target_dtype, base, target, out);
    }
    let _ = (kernel, base_dtype, target_dtype, base, target, out);
    0
}
