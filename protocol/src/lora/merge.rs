//! The merge: the one definition of the arithmetic (docs/spec/lora.md § 4).
//!
//! For element (i, j) of a base tensor W of shape `[rows, cols]`, with a_k and b_k the two factors of
//! term k (not transposed: b_k = B[i,k], a_k = A[k,j]; transposed: b_k = B[j,k], a_k = A[k,i]), every
//! value widened exactly to f32 and every operation one IEEE f32 operation rounded to nearest even
//! (never fused):
//!
//! ```text
//! d   = fl32(b_0·a_0);  d = fl32(d + fl32(b_k·a_k))  for k = 1, 2, …, r−1 in this order
//! u   = fl32(s · d)
//! y   = fl32(W[i,j] + u)
//! out = round_T(y)      // to the base dtype, nearest even; a NaN is written as the canonical NaN
//! ```
//!
//! Memory: [`LoraFactors`] holds A and B widened to f32 (r·(rows + cols) floats); base rows are merged
//! in place in any chunks, so a caller needs one tensor (or one chunk of rows) at a time.

use super::pairing::MergeShape;
use crate::dtype::{DType, FloatElem, BF16, F16, F32};

/// Why a merge cannot run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MergeError {
    #[error("{what} is {got} bytes; its shape and dtype need {want}")]
    Length {
        what: &'static str,
        got: usize,
        want: u64,
    },
    #[error("{what} is {dtype}; LoRA merges need F32, F16 or BF16")]
    Dtype { what: &'static str, dtype: DType },
    #[error("rank is 0; a LoRA pair has rank 1 or more")]
    ZeroRank,
    #[error("scale {0} is not finite")]
    Scale(String),
    #[error("shape {rows}×{cols} with rank {rank} overflows this machine's sizes")]
    Overflow { rows: u64, cols: u64, rank: u32 },
    #[error("the base rows are {got} bytes, not a whole number of {row_bytes}-byte rows")]
    RowLength { got: usize, row_bytes: usize },
    #[error("rows {first}..{first}+{count} are outside the tensor's {rows} rows")]
    Rows { first: u64, count: u64, rows: u64 },
}

/// A and B of one module, widened to f32 and laid out for merging rows of its base tensor.
#[derive(Debug, Clone)]
pub struct LoraFactors {
    shape: MergeShape,
    rank: usize,
    cols: usize,
    /// `[rows, rank]`: the coefficient of term k for row i (B[i,k], or A[k,i] transposed).
    coef: Vec<f32>,
    /// `[rank, cols]`: the vector of term k over the columns (A[k,·], or B[·,k] transposed).
    vecs: Vec<f32>,
}

impl LoraFactors {
    /// Checks the shape and the lengths of A's and B's bytes (little-endian, row-major, in the
    /// shape's dtypes), then widens them. Allocates only what A and B's bytes back.
    pub fn new(shape: MergeShape, a: &[u8], b: &[u8]) -> Result<Self, MergeError> {
        for (what, dtype) in [
            ("the base tensor", shape.base_dtype),
            ("A", shape.a_dtype),
            ("B", shape.b_dtype),
        ] {
            if !dtype.is_quantizable() {
                return Err(MergeError::Dtype { what, dtype });
            }
        }
        if shape.rank == 0 {
            return Err(MergeError::ZeroRank);
        }
        if !shape.scale.is_finite() {
            return Err(MergeError::Scale(shape.scale.to_string()));
        }
        check_len("A", a, shape.a_shape(), shape.a_dtype)?;
        check_len("B", b, shape.b_shape(), shape.b_dtype)?;
        let overflow = || MergeError::Overflow {
            rows: shape.rows,
            cols: shape.cols,
            rank: shape.rank,
        };
        // Both fit in memory now: A and B hold rank·rows and rank·cols elements between them.
        let rank = usize::try_from(shape.rank).map_err(|_| overflow())?;
        let cols = usize::try_from(shape.cols).map_err(|_| overflow())?;
        let rows = usize::try_from(shape.rows).map_err(|_| overflow())?;
        let a = widen(shape.a_dtype, a);
        let b = widen(shape.b_dtype, b);
        // Not transposed: coef = B ([rows, r]) and vecs = A ([r, cols]) as stored.
        // Transposed: coef = Aᵀ (A is [r, rows]) and vecs = Bᵀ (B is [cols, r]).
        let (coef, vecs) = if shape.transposed {
            (transpose(&a, rank, rows), transpose(&b, cols, rank))
        } else {
            (b, a)
        };
        Ok(LoraFactors {
            shape,
            rank,
            cols,
            coef,
            vecs,
        })
    }

    pub fn shape(&self) -> &MergeShape {
        &self.shape
    }

    /// Merges whole rows of the base tensor in place: `rows` holds rows `first_row..` of the base
    /// (little-endian, in the base dtype, a whole number of rows) and is overwritten with the merged
    /// rows, bit for bit as [`merge_tensor`] would write them.
    pub fn merge_rows_in_place(&self, first_row: u64, rows: &mut [u8]) -> Result<(), MergeError> {
        // cols·size fits: `vecs` holds rank·cols f32 already.
        let row_bytes = self.cols.saturating_mul(self.shape.base_dtype.size());
        let count = rows.len().checked_div(row_bytes).unwrap_or(0);
        if count.checked_mul(row_bytes) != Some(rows.len()) {
            return Err(MergeError::RowLength {
                got: rows.len(),
                row_bytes,
            });
        }
        let end = first_row.checked_add(count as u64);
        if end.is_none_or(|e| e > self.shape.rows) {
            return Err(MergeError::Rows {
                first: first_row,
                count: count as u64,
                rows: self.shape.rows,
            });
        }
        if count == 0 {
            return Ok(());
        }
        // first_row < rows, which fits in usize (coef holds rows·rank floats).
        let first = usize::try_from(first_row).map_err(|_| MergeError::Rows {
            first: first_row,
            count: count as u64,
            rows: self.shape.rows,
        })?;
        match self.shape.base_dtype {
            DType::F32 => self.merge::<F32>(first, rows),
            DType::F16 => self.merge::<F16>(first, rows),
            _ => self.merge::<BF16>(first, rows),
        }
        Ok(())
    }

    /// The update `s·B·A` of rows `first .. first + count` in f32, row-major: for every element
    /// exactly the value [`Self::merge_rows_in_place`] adds to the base element before rounding
    /// to the base dtype. Rows past the tensor's end are left out.
    pub fn update_rows(&self, first: usize, count: usize) -> Vec<f32> {
        let s = self.shape.scale;
        let rows = self.coef.len().checked_div(self.rank).unwrap_or(0);
        let end = first.saturating_add(count).min(rows);
        let mut out = vec![0f32; end.saturating_sub(first) * self.cols];
        for (i, row) in out.chunks_exact_mut(self.cols.max(1)).enumerate() {
            let coef = &self.coef[(first + i) * self.rank..][..self.rank];
            dot_row(coef, &self.vecs, row);
            for d in row.iter_mut() {
                *d *= s;
            }
        }
        out
    }

    fn merge<E: FloatElem>(&self, first: usize, rows: &mut [u8]) {
        let s = self.shape.scale;
        let mut acc = vec![0f32; self.cols];
        for (i, row) in rows.chunks_exact_mut(self.cols * E::SIZE).enumerate() {
            let coef = &self.coef[(first + i) * self.rank..][..self.rank];
            dot_row(coef, &self.vecs, &mut acc);
            for (w, &d) in row.chunks_exact_mut(E::SIZE).zip(&acc) {
                let u = s * d;
                let y = E::read(w) + u;
                E::write(y, w);
            }
        }
    }
}

/// d_j = Σₖ coef[k]·vecs[k][j], summed from k = 0 up, each product and sum one rounded f32 operation.
fn dot_row(coef: &[f32], vecs: &[f32], acc: &mut [f32]) {
    let cols = acc.len();
    let mut terms = coef.iter().zip(vecs.chunks_exact(cols.max(1)));
    if let Some((&c, v)) = terms.next() {
        for (d, &x) in acc.iter_mut().zip(v) {
            *d = c * x;
        }
    }
    for (&c, v) in terms {
        for (d, &x) in acc.iter_mut().zip(v) {
            *d += c * x;
        }
    }
}

/// Merges one whole tensor: `out` = the merged `base` (both little-endian in the base dtype).
pub fn merge_tensor(
    shape: &MergeShape,
    base: &[u8],
    a: &[u8],
    b: &[u8],
    out: &mut [u8],
) -> Result<(), MergeError> {
    check_len(
        "the base tensor",
        base,
        [shape.rows, shape.cols],
        shape.base_dtype,
    )?;
    if out.len() != base.len() {
        return Err(MergeError::Length {
            what: "the output",
            got: out.len(),
            want: base.len() as u64,
        });
    }
    let factors = LoraFactors::new(*shape, a, b)?;
    out.copy_from_slice(base);
    factors.merge_rows_in_place(0, out)
}

fn check_len(
    what: &'static str,
    bytes: &[u8],
    shape: [u64; 2],
    dtype: DType,
) -> Result<(), MergeError> {
    let want = shape[0]
        .checked_mul(shape[1])
        .and_then(|n| n.checked_mul(dtype.size() as u64));
    if want != Some(bytes.len() as u64) {
        return Err(MergeError::Length {
            what,
            got: bytes.len(),
            want: want.unwrap_or(u64::MAX),
        });
    }
    Ok(())
}

/// Every element of a float buffer, exactly, as f32.
fn widen(dtype: DType, bytes: &[u8]) -> Vec<f32> {
    fn go<E: FloatElem>(bytes: &[u8]) -> Vec<f32> {
        bytes.chunks_exact(E::SIZE).map(E::read).collect()
    }
    match dtype {
        DType::F32 => go::<F32>(bytes),
        DType::F16 => go::<F16>(bytes),
        _ => go::<BF16>(bytes),
    }
}

/// The transpose of a row-major `[rows, cols]` matrix.
fn transpose(m: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0f32; m.len()];
    for (i, row) in m.chunks_exact(cols.max(1)).take(rows).enumerate() {
        for (j, &x) in row.iter().enumerate() {
            t[j * rows + i] = x;
        }
    }
    t
}

#[cfg(test)]
#[path = "merge_tests.rs"]
mod tests;
