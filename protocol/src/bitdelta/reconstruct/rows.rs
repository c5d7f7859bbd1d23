//! Rebuilding some rows of a quantized tensor: the same bytes as those rows of [`reconstruct`]'s
//! output, without the rest of the tensor in memory. A quantized tensor's rows are independent
//! (docs/spec/bitdelta.md § 4: a row's elements use their own codes and their row's or group's
//! scale), so a caller that works through a large tensor a block of rows at a time holds one block.

use std::ops::Range;

use super::{apply_quantized, quantized_block, Quantized, ReconstructError};
use crate::bitdelta::format::{Granularity, IndexEntry};
use crate::bitdelta::kernels::Kernel;
use crate::dtype::DType;

/// Rows `rows` of `entry`'s reconstruction written into `out` (exactly those rows' bytes, in the
/// entry's dtype), from `base` — the base tensor's same rows, in `base_dtype`.
///
/// `Ok(false)`, with nothing written, when the entry cannot be rebuilt by rows: it is not
/// quantized (its lossless frame decodes whole), or the first row's codes do not start on a byte
/// (then rebuild it whole with [`reconstruct`]). Rows past the tensor's, a base or an output of
/// another length, and a base dtype that is not a float are errors; the block is checked as
/// [`reconstruct`] checks it.
///
/// [`reconstruct`]: super::reconstruct
pub fn reconstruct_rows(
    entry: &IndexEntry,
    block: &[u8],
    base_dtype: DType,
    base: &[u8],
    rows: Range<u64>,
    out: &mut [u8],
) -> Result<bool, ReconstructError> {
    let name = || entry.name.clone();
    if entry.encoding.bits().is_none() {
        return Ok(false);
    }
    let Some(parts) = quantized_block(entry, block)? else {
        return Ok(false);
    };
    let (cols, bits) = (parts.cols, u64::from(parts.bits));
    if rows.start > rows.end || rows.end > parts.rows {
        return Err(ReconstructError::Output {
            name: name(),
            got: 0,
            want: parts.rows,
        });
    }
    // The first code's bit and the block's elements; every product is at most the tensor's, which
    // the block's checked length bounds.
    let first_bit = rows.start * cols * bits;
    if !first_bit.is_multiple_of(8) {
        return Ok(false);
    }
    let n = (rows.end - rows.start) * cols;
    let want_out = n * entry.dtype.size() as u64;
    if out.len() as u64 != want_out {
        return Err(ReconstructError::Output {
            name: name(),
            got: out.len(),
            want: want_out,
        });
    }
    if !base_dtype.is_quantizable() {
        return Err(ReconstructError::BaseDtype {
            name: name(),
            base: base_dtype,
            target: entry.dtype,
            encoding: entry.encoding.name(),
        });
    }
    if base.len() as u64 != n * base_dtype.size() as u64 {
        return Err(ReconstructError::BaseShape {
            name: name(),
            base: vec![base.len() as u64 / base_dtype.size() as u64],
            delta: vec![n],
        });
    }
    let scales = parts.scales();
    let scales = match parts.granularity {
        Granularity::Tensor => &scales[..],
        Granularity::Row => &scales[rows.start as usize..rows.end as usize],
        Granularity::Group(w) => {
            let per_row = cols.div_ceil(u64::from(w)) as usize;
            &scales[rows.start as usize * per_row..rows.end as usize * per_row]
        }
    };
    let packed =
        &parts.packed[(first_bit / 8) as usize..(first_bit + n * bits).div_ceil(8) as usize];
    let q = Quantized {
        kernel: Kernel::selected(),
        rows: (rows.end - rows.start) as usize,
        cols: cols as usize,
        granularity: parts.granularity,
        bits: parts.bits,
        scales,
        packed,
    };
    apply_quantized(&q, entry, base_dtype, base, out)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use proptest::prelude::*;

    use super::*;
    use crate::bitdelta::format::Encoding;
    use crate::bitdelta::reconstruct;
    use crate::bitdelta::tensor::TensorData;

    /// A quantized entry of `rows × cols` with seeded scales and codes (padding bits zero).
    fn entry_and_block(
        rows: u64,
        cols: u64,
        bits: u32,
        granularity: Granularity,
        seed: u64,
    ) -> (IndexEntry, Vec<u8>) {
        let encoding = match bits {
            1 => Encoding::Sign1,
            2 => Encoding::Bits2,
            _ => Encoding::Bits4,
        };
        let n_scales = crate::bitdelta::format::scale_count(rows, cols, granularity).unwrap();
        let mut x = seed | 1;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut block: Vec<u8> = (0..n_scales)
            .flat_map(|_| ((next() % 1000) as f32 / 997.0 - 0.5).to_le_bytes())
            .collect();
        let used = rows * cols * u64::from(bits);
        let mut packed: Vec<u8> = (0..used.div_ceil(8)).map(|_| next() as u8).collect();
        if !used.is_multiple_of(8) {
            if let Some(last) = packed.last_mut() {
                *last &= (1u8 << (used % 8)) - 1;
            }
        }
        block.extend(packed);
        let entry = IndexEntry {
            name: "w".into(),
            dtype: DType::BF16,
            shape: vec![rows, cols],
            encoding,
            granularity,
            offset: 0,
            length: block.len() as u64,
        };
        (entry, block)
    }

    proptest! {
        /// Any rows that start on a whole byte of codes: the same bytes as those rows of the
        /// whole reconstruction, for every code width, granularity and dtype pair.
        #[test]
        fn rows_are_the_rows_of_the_whole(
            rows in 1u64..9,
            cols in 1u64..70,
            bits in prop_oneof![Just(1u32), Just(2), Just(4)],
            g in prop_oneof![
                Just(Granularity::Tensor),
                Just(Granularity::Row),
                (1u32..20).prop_map(Granularity::Group),
            ],
            f32_base in any::<bool>(),
            f32_out in any::<bool>(),
            seed in any::<u64>(),
            a in 0u64..9,
            b in 0u64..9,
        ) {
            let (mut entry, block) = entry_and_block(rows, cols, bits, g, seed);
            entry.dtype = if f32_out { DType::F32 } else { DType::BF16 };
            let base_dtype = if f32_base { DType::F32 } else { DType::BF16 };
            let base_bytes: Vec<u8> = (0..rows * cols * base_dtype.size() as u64)
                .map(|i| (i.wrapping_mul(2_654_435_761) >> 7) as u8 & 0x3f)
                .collect();
            let shape = [rows, cols];
            let base = TensorData::new(base_dtype, &shape, &base_bytes).unwrap();
            let mut whole = vec![0u8; entry.byte_len() as usize];
            reconstruct(&entry, &block, Some(&base), &mut whole).unwrap();
            let (r0, r1) = (a.min(b).min(rows), a.max(b).min(rows));
            let (bs, os) = (base_dtype.size() as u64, entry.dtype.size() as u64);
            let mut out = vec![0u8; ((r1 - r0) * cols * os) as usize];
            let part = &base_bytes[(r0 * cols * bs) as usize..(r1 * cols * bs) as usize];
            let done = reconstruct_rows(&entry, &block, base_dtype, part, r0..r1, &mut out).unwrap();
            prop_assert_eq!(done, (r0 * cols * u64::from(bits)) % 8 == 0);
            if done {
                prop_assert_eq!(&out[..], &whole[(r0 * cols * os) as usize..(r1 * cols * os) as usize]);
            }
        }
    }

    #[test]
    fn what_cannot_be_rebuilt_by_rows_is_said() {
        let (entry, block) = entry_and_block(4, 8, 1, Granularity::Row, 7);
        let base = vec![0u8; 2 * 8 * 2];
        let mut out = vec![0u8; 2 * 8 * 2];
        assert!(reconstruct_rows(&entry, &block, DType::BF16, &base, 1..3, &mut out).unwrap());
        // Rows past the tensor's, outputs and bases of another length, a base that is no float.
        assert!(reconstruct_rows(&entry, &block, DType::BF16, &base, 3..5, &mut out).is_err());
        assert!(reconstruct_rows(&entry, &block, DType::BF16, &base, 1..2, &mut out).is_err());
        assert!(reconstruct_rows(&entry, &block, DType::BF16, &base[2..], 1..3, &mut out).is_err());
        assert!(reconstruct_rows(&entry, &block, DType::I16, &base, 1..3, &mut out).is_err());
        // A block of another length is checked as the whole reconstruction checks it.
        assert!(reconstruct_rows(&entry, &block[1..], DType::BF16, &base, 1..3, &mut out).is_err());
        // A lossless entry decodes whole.
        let mut raw = entry.clone();
        raw.encoding = Encoding::Raw;
        assert!(!reconstruct_rows(&raw, &block, DType::BF16, &base, 1..3, &mut out).unwrap());
    }
}
