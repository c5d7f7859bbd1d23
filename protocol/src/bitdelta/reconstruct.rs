//! Reconstruction: the one definition of the arithmetic (docs/spec/bitdelta.md § Reconstruction).
//!
//! For a quantized tensor, element i of group k is `round_T(f32(base[i]) + s_k · level(code_i))`: the
//! product and the sum are each one f32 operation rounded to nearest even (never fused), and round_T is
//! round-to-nearest-even into the target dtype; any NaN result is written as the canonical quiet NaN.

use super::format::{
    matrix_of, quantized_block_len, scale_count, Encoding, Granularity, IndexEntry,
};
use super::kernels::{self, GroupLayout, Kernel};
use super::lossless;
use super::quantize::{groups, level};
use super::tensor::{Lanes, TensorData};
use crate::dtype::{DType, BF16, F16, F32};

/// Why a tensor cannot be reconstructed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReconstructError {
    #[error("tensor {0:?} needs the base tensor of the same name, which the base model lacks")]
    BaseMissing(String),
    #[error("tensor {name:?}: base shape {base:?} differs from the delta's {delta:?}")]
    BaseShape {
        name: String,
        base: Vec<u64>,
        delta: Vec<u64>,
    },
    #[error(
        "tensor {name:?}: base dtype {base} cannot be used for a {encoding} tensor of {target}"
    )]
    BaseDtype {
        name: String,
        base: DType,
        target: DType,
        encoding: &'static str,
    },
    #[error("tensor {name:?}: scale #{index} is {value}; scales must be finite")]
    Scale {
        name: String,
        index: usize,
        value: String,
    },
    #[error("tensor {name:?}: padding bits after the last code are not zero")]
    Padding { name: String },
    #[error("tensor {name:?}: {problem}")]
    Lossless { name: String, problem: String },
    #[error("tensor {name:?}: output buffer is {got} bytes, the tensor needs {want}")]
    Output { name: String, got: usize, want: u64 },
    #[error("tensor {name:?}: block is {got} bytes, expected {want}")]
    Block { name: String, got: usize, want: u64 },
}

/// Checks that `out` is exactly the tensor's bytes (what every reconstruction writes into).
pub fn check_output(entry: &IndexEntry, out: &[u8]) -> Result<(), ReconstructError> {
    if out.len() as u64 != entry.byte_len() {
        return Err(ReconstructError::Output {
            name: entry.name.clone(),
            got: out.len(),
            want: entry.byte_len(),
        });
    }
    Ok(())
}

/// Checks a tensor's inputs before anything is allocated for its output: the output size is then
/// backed by real data (the base tensor's bytes, the block's packed codes, or a lossless frame that
/// declares exactly that size), so a forged shape cannot make a caller allocate gigabytes.
pub fn check_inputs<'b>(
    entry: &IndexEntry,
    block: &[u8],
    base: Option<&'b TensorData<'b>>,
) -> Result<Option<&'b TensorData<'b>>, ReconstructError> {
    let name = || entry.name.clone();
    if block.len() as u64 != entry.length {
        return Err(ReconstructError::Block {
            name: name(),
            got: block.len(),
            want: entry.length,
        });
    }
    if entry.encoding == Encoding::Raw || entry.encoding == Encoding::Xor {
        lossless::check_frame_size(block, entry.byte_len()).map_err(|problem| {
            ReconstructError::Lossless {
                name: name(),
                problem,
            }
        })?;
    }
    if !entry.encoding.needs_base() {
        return Ok(None);
    }
    check_base_layout(entry, base.map(|b| (b.dtype, b.shape)))?;
    Ok(base)
}

/// The base-side part of [`check_inputs`] (docs/spec/bitdelta.md § 5, rule 7) on the base tensor's dtype and
/// shape alone, for callers whose base is not in host memory (a base resident on a GPU): a base tensor
/// exists unless the encoding is `raw`, with the entry's shape, a quantizable dtype for quantized
/// encodings and the entry's dtype for the others.
pub fn check_base_layout(
    entry: &IndexEntry,
    base: Option<(DType, &[u64])>,
) -> Result<(), ReconstructError> {
    let name = || entry.name.clone();
    if !entry.encoding.needs_base() {
        return Ok(());
    }
    let (dtype, shape) = base.ok_or_else(|| ReconstructError::BaseMissing(name()))?;
    if shape != entry.shape.as_slice() {
        return Err(ReconstructError::BaseShape {
            name: name(),
            base: shape.to_vec(),
            delta: entry.shape.clone(),
        });
    }
    let dtype_ok = match entry.encoding.bits() {
        Some(_) => dtype.is_quantizable(),
        None => dtype == entry.dtype,
    };
    if !dtype_ok {
        return Err(ReconstructError::BaseDtype {
            name: name(),
            base: dtype,
            target: entry.dtype,
            encoding: entry.encoding.name(),
        });
    }
    Ok(())
}

/// A quantized block cut into its parts (docs/spec/bitdelta.md § 4) and checked as a reader must before using
/// it (§ 5, rule 9): the exact length, every scale finite, the padding bits after the last code zero.
#[derive(Clone, Copy, Debug)]
pub struct QuantizedBlock<'a> {
    /// Bits per code: 1, 2 or 4.
    pub bits: u32,
    /// The matrix view of the shape (§ 3).
    pub rows: u64,
    pub cols: u64,
    pub granularity: Granularity,
    /// The scales as stored: `n_scales` little-endian f32, all finite.
    pub scale_bytes: &'a [u8],
    /// The packed codes, `⌈numel·bits/8⌉` bytes.
    pub packed: &'a [u8],
}

impl QuantizedBlock<'_> {
    /// The scales as f32.
    pub fn scales(&self) -> Vec<f32> {
        self.scale_bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    }
}

/// The parts of `entry`'s quantized `block`, checked; `None` for an encoding without codes.
pub fn quantized_block<'a>(
    entry: &IndexEntry,
    block: &'a [u8],
) -> Result<Option<QuantizedBlock<'a>>, ReconstructError> {
    let Some(bits) = entry.encoding.bits() else {
        return Ok(None);
    };
    let want = quantized_block_len(&entry.shape, entry.granularity, bits);
    if want != Some(block.len() as u64) {
        return Err(ReconstructError::Block {
            name: entry.name.clone(),
            got: block.len(),
            want: want.unwrap_or(u64::MAX),
        });
    }
    let (rows, cols) = matrix_of(&entry.shape);
    // The length matched, so the scale count and the element count fit in usize.
    let n_scales = scale_count(rows, cols, entry.granularity).unwrap_or(0) as usize;
    let (scale_bytes, packed) = block.split_at(n_scales * 4);
    for (index, c) in scale_bytes.chunks_exact(4).enumerate() {
        let v = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        if !v.is_finite() {
            return Err(ReconstructError::Scale {
                name: entry.name.clone(),
                index,
                value: v.to_string(),
            });
        }
    }
    let used_bits = (rows * cols) as usize * bits as usize;
    if !used_bits.is_multiple_of(8) {
        if let Some(&last) = packed.last() {
            if last >> (used_bits % 8) != 0 {
                return Err(ReconstructError::Padding {
                    name: entry.name.clone(),
                });
            }
        }
    }
    Ok(Some(QuantizedBlock {
        bits,
        rows,
        cols,
        granularity: entry.granularity,
        scale_bytes,
        packed,
    }))
}

/// Writes the reconstructed tensor of `entry` into `out` (exactly `entry.byte_len()` bytes).
/// `block` is the entry's block; `base` the base tensor of the same name, if the model has it.
/// Callers that allocate `out` from the index call [`check_inputs`] first.
pub fn reconstruct(
    entry: &IndexEntry,
    block: &[u8],
    base: Option<&TensorData<'_>>,
    out: &mut [u8],
) -> Result<(), ReconstructError> {
    reconstruct_with(Kernel::selected(), entry, block, base, out)
}

/// [`reconstruct`] with the given kernel (the portable one where the CPU lacks it). Every kernel
/// writes the same bytes.
pub fn reconstruct_with(
    kernel: Kernel,
    entry: &IndexEntry,
    block: &[u8],
    base: Option<&TensorData<'_>>,
    out: &mut [u8],
) -> Result<(), ReconstructError> {
    let name = || entry.name.clone();
    check_output(entry, out)?;
    let base = check_inputs(entry, block, base)?;
    match (entry.encoding, base) {
        (Encoding::Unchanged | Encoding::Base, Some(b)) => {
            out.copy_from_slice(b.bytes);
            Ok(())
        }
        (Encoding::Raw, _) => {
            lossless::decode(block, None, entry.dtype.size(), out).map_err(|problem| {
                ReconstructError::Lossless {
                    name: name(),
                    problem,
                }
            })
        }
        (Encoding::Xor, Some(b)) => lossless::decode(block, Some(b.bytes), entry.dtype.size(), out)
            .map_err(|problem| ReconstructError::Lossless {
                name: name(),
                problem,
            }),
        (enc, Some(b)) if enc.bits().is_some() => {
            reconstruct_quantized(kernel, entry, block, b, out)
        }
        // Raw needs no base; every other encoding was checked to have one (check_inputs).
        _ => Err(ReconstructError::BaseMissing(name())),
    }
}

fn reconstruct_quantized(
    kernel: Kernel,
    entry: &IndexEntry,
    block: &[u8],
    base: &TensorData<'_>,
    out: &mut [u8],
) -> Result<(), ReconstructError> {
    let Some(parts) = quantized_block(entry, block)? else {
        return Err(ReconstructError::BaseMissing(entry.name.clone()));
    };
    let scales = parts.scales();
    let (rows, cols, bits, packed) = (parts.rows, parts.cols, parts.bits, parts.packed);
    let q = Quantized {
        kernel,
        rows: rows as usize,
        cols: cols as usize,
        granularity: entry.granularity,
        bits,
        scales: &scales,
        packed,
    };
    apply_quantized(&q, entry, base.dtype, base.bytes, out)
}

/// `q` applied to `base` (in `base_dtype`) into `out` (in the entry's dtype).
fn apply_quantized(
    q: &Quantized<'_>,
    entry: &IndexEntry,
    base_dtype: DType,
    base: &[u8],
    out: &mut [u8],
) -> Result<(), ReconstructError> {
    macro_rules! go {
        ($b:ty, $t:ty) => {
            q.apply::<$b, $t>(base, out)
        };
    }
    match (base_dtype, entry.dtype) {
        (DType::F32, DType::F32) => go!(F32, F32),
        (DType::F32, DType::F16) => go!(F32, F16),
        (DType::F32, DType::BF16) => go!(F32, BF16),
        (DType::F16, DType::F32) => go!(F16, F32),
        (DType::F16, DType::F16) => go!(F16, F16),
        (DType::F16, DType::BF16) => go!(F16, BF16),
        (DType::BF16, DType::F32) => go!(BF16, F32),
        (DType::BF16, DType::F16) => go!(BF16, F16),
        (DType::BF16, DType::BF16) => go!(BF16, BF16),
        // Checked in `reconstruct` and at parse time.
        _ => {
            return Err(ReconstructError::BaseDtype {
                name: entry.name.clone(),
                base: base_dtype,
                target: entry.dtype,
                encoding: entry.encoding.name(),
            })
        }
    }
    Ok(())
}

/// For each nibble of 1-bit codes, the sign flip (XOR mask) of each of its four elements: bit j clear
/// means level −1.
const FLIP: [[u32; 4]; 16] = {
    let mut t = [[0u32; 4]; 16];
    let mut q = 0;
    while q < 16 {
        let mut j = 0;
        while j < 4 {
            if (q >> j) & 1 == 0 {
                t[q][j] = 0x8000_0000;
            }
            j += 1;
        }
        q += 1;
    }
    t
};

struct Quantized<'a> {
    kernel: Kernel,
    rows: usize,
    cols: usize,
    granularity: Granularity,
    bits: u32,
    scales: &'a [f32],
    packed: &'a [u8],
}

impl Quantized<'_> {
    fn apply<B: Lanes, T: Lanes>(&self, base: &[u8], out: &mut [u8]) {
        let bits = self.bits;
        let mask = (1u32 << bits) - 1;
        let per_byte = 8 / bits as usize;
        if bits == 1 {
            let n = self.rows * self.cols;
            let layout = match self.granularity {
                Granularity::Tensor => GroupLayout {
                    rows: 1,
                    row_len: n,
                    width: n,
                },
                Granularity::Row => GroupLayout {
                    rows: self.rows,
                    row_len: self.cols,
                    width: self.cols,
                },
                Granularity::Group(w) => GroupLayout {
                    rows: self.rows,
                    row_len: self.cols,
                    width: w as usize,
                },
            };
            // The runtime-selected kernel, for the whole tensor in one call when its layout allows.
            if kernels::sign1_apply_groups(
                self.kernel,
                B::DTYPE,
                T::DTYPE,
                base,
                self.packed,
                self.scales,
                layout,
                out,
            ) {
                return;
            }
        }
        for ((start, end), &s) in groups(self.rows, self.cols, self.granularity).zip(self.scales) {
            // s·level for every code: the same f32 product the definition names, computed once.
            let mut lut = [0f32; 16];
            for (q, v) in lut.iter_mut().enumerate().take(1 << bits) {
                *v = s * level(q as u32, bits);
            }
            let b = &base[start * B::SIZE..end * B::SIZE];
            let o = &mut out[start * T::SIZE..end * T::SIZE];
            if bits == 1 && start % 8 == 0 {
                // Whole bytes of signs: the common case for rows whose length is a multiple of 8.
                // 64 elements (8 code bytes) at a time, as arrays the compiler vectorises.
                let (lo, hi) = (lut[0], lut[1]);
                let bytes = &self.packed[start / 8..(end).div_ceil(8)];
                // lo = s·(−1) is exactly −hi: the sign bit of hi flipped where the code bit is 0, four
                // elements per nibble of codes.
                debug_assert_eq!(lo.to_bits(), (-hi).to_bits());
                // The runtime-selected kernel takes the whole code bytes (none for the portable one);
                // the code below does the rest.
                let done = kernels::sign1_apply(
                    self.kernel,
                    B::DTYPE,
                    T::DTYPE,
                    b,
                    &bytes[..(end - start) / 8],
                    hi,
                    o,
                );
                let (b, o, bytes) = (
                    &b[done * B::SIZE..],
                    &mut o[done * T::SIZE..],
                    &bytes[done / 8..],
                );
                let start = start + done;
                let hi_bits = hi.to_bits();
                let add = |x: &mut [f32], byte: u8| {
                    let (l, h) = (&FLIP[usize::from(byte & 15)], &FLIP[usize::from(byte >> 4)]);
                    for j in 0..4 {
                        x[j] += f32::from_bits(hi_bits ^ l[j]);
                        x[j + 4] += f32::from_bits(hi_bits ^ h[j]);
                    }
                };
                const W: usize = 64;
                let mut bw = b.chunks_exact(W * B::SIZE);
                let mut ow = o.chunks_exact_mut(W * T::SIZE);
                for ((bc, oc), sb) in (&mut bw).zip(&mut ow).zip(bytes.chunks_exact(W / 8)) {
                    let mut x: [f32; W] = B::load(bc);
                    for (x8, &byte) in x.chunks_exact_mut(8).zip(sb) {
                        add(x8, byte);
                    }
                    T::store(&x, oc);
                }
                let mut b8 = bw.remainder().chunks_exact(8 * B::SIZE);
                let mut o8 = ow.into_remainder().chunks_exact_mut(8 * T::SIZE);
                let rest = &bytes[(end - start) / W * (W / 8)..];
                for ((bc, oc), &byte) in (&mut b8).zip(&mut o8).zip(rest) {
                    let mut x: [f32; 8] = B::load(bc);
                    add(&mut x, byte);
                    T::store(&x, oc);
                }
                // The last byte's signs when the group's length is not a multiple of 8.
                let byte = bytes.get((end - start) / 8).copied().unwrap_or(0);
                for (j, (be, oe)) in b8
                    .remainder()
                    .chunks_exact(B::SIZE)
                    .zip(o8.into_remainder().chunks_exact_mut(T::SIZE))
                    .enumerate()
                {
                    let d = if (byte >> j) & 1 == 1 { hi } else { lo };
                    T::write(B::read(be) + d, oe);
                }
                continue;
            }
            for (j, (be, oe)) in b
                .chunks_exact(B::SIZE)
                .zip(o.chunks_exact_mut(T::SIZE))
                .enumerate()
            {
                let i = start + j;
                let bit = i * bits as usize;
                let code = (u32::from(self.packed[i / per_byte]) >> (bit & 7)) & mask;
                T::write(B::read(be) + lut[code as usize], oe);
            }
        }
    }
}

mod rows;
pub use rows::reconstruct_rows;

#[cfg(test)]
mod tests;
