//! Reconstruction: the one definition of the arithmetic (docs/format.md § Reconstruction).
//!
//! For a quantized tensor, element i of group k is `round_T(f32(base[i]) + s_k · level(code_i))`: the
//! product and the sum are each one f32 operation rounded to nearest even (never fused), and round_T is
//! round-to-nearest-even into the target dtype; any NaN result is written as the canonical quiet NaN.

use super::format::{matrix_of, scale_count, Encoding, Granularity, IndexEntry};
use super::lossless;
use super::quantize::{groups, level};
use super::tensor::TensorData;
use crate::dtype::{DType, FloatElem, BF16, F16, F32};

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
    let b = base.ok_or_else(|| ReconstructError::BaseMissing(name()))?;
    if b.shape != entry.shape.as_slice() {
        return Err(ReconstructError::BaseShape {
            name: name(),
            base: b.shape.to_vec(),
            delta: entry.shape.clone(),
        });
    }
    let dtype_ok = match entry.encoding.bits() {
        Some(_) => b.dtype.is_quantizable(),
        None => b.dtype == entry.dtype,
    };
    if !dtype_ok {
        return Err(ReconstructError::BaseDtype {
            name: name(),
            base: b.dtype,
            target: entry.dtype,
            encoding: entry.encoding.name(),
        });
    }
    Ok(Some(b))
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
    let name = || entry.name.clone();
    if out.len() as u64 != entry.byte_len() {
        return Err(ReconstructError::Output {
            name: name(),
            got: out.len(),
            want: entry.byte_len(),
        });
    }
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
        (enc, Some(b)) => match enc.bits() {
            Some(bits) => reconstruct_quantized(entry, bits, block, b, out),
            None => Err(ReconstructError::BaseMissing(name())),
        },
        (_, None) => Err(ReconstructError::BaseMissing(name())),
    }
}

fn reconstruct_quantized(
    entry: &IndexEntry,
    bits: u32,
    block: &[u8],
    base: &TensorData<'_>,
    out: &mut [u8],
) -> Result<(), ReconstructError> {
    let (rows, cols) = matrix_of(&entry.shape);
    // The index was validated (MAX_TENSOR_BYTES), so these fit in usize.
    let n_scales = scale_count(rows, cols, entry.granularity).unwrap_or(0) as usize;
    let (scale_bytes, packed) = block.split_at(n_scales * 4);
    let scales: Vec<f32> = scale_bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    if let Some((index, v)) = scales.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        return Err(ReconstructError::Scale {
            name: entry.name.clone(),
            index,
            value: v.to_string(),
        });
    }
    let numel = (rows * cols) as usize;
    let used_bits = numel * bits as usize;
    if used_bits % 8 != 0 {
        if let Some(&last) = packed.last() {
            if last >> (used_bits % 8) != 0 {
                return Err(ReconstructError::Padding {
                    name: entry.name.clone(),
                });
            }
        }
    }
    let q = Quantized {
        rows: rows as usize,
        cols: cols as usize,
        granularity: entry.granularity,
        bits,
        scales: &scales,
        packed,
    };
    macro_rules! go {
        ($b:ty, $t:ty) => {
            q.apply::<$b, $t>(base.bytes, out)
        };
    }
    match (base.dtype, entry.dtype) {
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
                base: base.dtype,
                target: entry.dtype,
                encoding: entry.encoding.name(),
            })
        }
    }
    Ok(())
}

struct Quantized<'a> {
    rows: usize,
    cols: usize,
    granularity: Granularity,
    bits: u32,
    scales: &'a [f32],
    packed: &'a [u8],
}

impl Quantized<'_> {
    fn apply<B: FloatElem, T: FloatElem>(&self, base: &[u8], out: &mut [u8]) {
        let bits = self.bits;
        let mask = (1u32 << bits) - 1;
        let per_byte = 8 / bits as usize;
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
                let (lo, hi) = (lut[0], lut[1]);
                let bytes = &self.packed[start / 8..(end).div_ceil(8)];
                for ((bc, oc), &byte) in b
                    .chunks(8 * B::SIZE)
                    .zip(o.chunks_mut(8 * T::SIZE))
                    .zip(bytes)
                {
                    for (j, (be, oe)) in bc
                        .chunks_exact(B::SIZE)
                        .zip(oc.chunks_exact_mut(T::SIZE))
                        .enumerate()
                    {
                        let d = if (byte >> j) & 1 == 1 { hi } else { lo };
                        T::write(B::read(be) + d, oe);
                    }
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
