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

fn fill<B: FloatElem, T: FloatElem>(base: &[u8], target: &[u8], start: usize, out: &mut [f32]) {
    let n = out.len();
    let b = &base[start * B::SIZE..(start + n) * B::SIZE];
    let t = &target[start * T::SIZE..(start + n) * T::SIZE];
    for ((o, bb), tb) in out
        .iter_mut()
        .zip(b.chunks_exact(B::SIZE))
        .zip(t.chunks_exact(T::SIZE))
    {
        *o = T::read(tb) - B::read(bb);
    }
}
