//! One tensor of several `.bitdelta` inputs made against one base: each input's delta decoded in f32
//! (reconstructed − base), and the combined result turned back into a tensor to encode.

use half::{bf16, f16};
use zdn_protocol::bitdelta::{
    check_inputs, reconstruct, BitDeltaFile, IndexEntry, ReconstructError, TensorData,
};
use zdn_protocol::DType;

/// The inputs' view of one tensor.
#[derive(Debug)]
pub enum TensorDeltas {
    /// A floating-point tensor with a base tensor of the same shape: one f32 delta per input.
    Float {
        deltas: Vec<Vec<f32>>,
        /// Whether any input stores it quantized (then the output is quantized too; otherwise it is
        /// stored losslessly).
        quantized: bool,
    },
    /// A tensor that has no delta to combine (no base tensor, or not floating point): every input
    /// reconstructs these same bytes.
    Fixed(Vec<u8>),
}

#[derive(Debug, thiserror::Error)]
pub enum TensorError {
    #[error("input {input}: {cause}")]
    Reconstruct {
        input: String,
        cause: ReconstructError,
    },
    #[error("tensor {name:?} has no delta to combine ({why}), and input {input} reconstructs it differently from input {first}")]
    NotCombinable {
        name: String,
        why: &'static str,
        first: String,
        input: String,
    },
}

/// Reads a float tensor's elements as f32 (exact for F32, F16 and BF16). `None` for other dtypes.
pub fn to_f32(dtype: DType, bytes: &[u8]) -> Option<Vec<f32>> {
    let v = match dtype {
        DType::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        DType::F16 => bytes
            .chunks_exact(2)
            .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        DType::BF16 => bytes
            .chunks_exact(2)
            .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        _ => return None,
    };
    Some(v)
}

/// Writes f32 values as `dtype` (round to nearest even for F16/BF16). `None` for other dtypes.
pub fn from_f32(dtype: DType, values: &[f32]) -> Option<Vec<u8>> {
    let v = match dtype {
        DType::F32 => values.iter().flat_map(|x| x.to_le_bytes()).collect(),
        DType::F16 => values
            .iter()
            .flat_map(|&x| f16::from_f32(x).to_le_bytes())
            .collect(),
        DType::BF16 => values
            .iter()
            .flat_map(|&x| bf16::from_f32(x).to_le_bytes())
            .collect(),
        _ => return None,
    };
    Some(v)
}

/// Reconstructs tensor `index` of every input (all inputs have the same index, checked by the
/// caller) and returns their deltas against `base`, or the one shared value of a tensor without a
/// delta. `labels[i]` names input `i` in errors.
pub fn tensor_deltas(
    inputs: &[BitDeltaFile<'_>],
    labels: &[String],
    index: usize,
    base: Option<&TensorData<'_>>,
) -> Result<TensorDeltas, TensorError> {
    let Some(first) = inputs.first() else {
        return Ok(TensorDeltas::Fixed(Vec::new()));
    };
    let entry: &IndexEntry = &first.entries[index];
    let base_f32 = base
        .filter(|b| b.shape == entry.shape.as_slice() && entry.dtype.is_quantizable())
        .and_then(|b| to_f32(b.dtype, b.bytes));
    let quantized = inputs
        .iter()
        .any(|f| f.entries[index].encoding.bits().is_some());
    let mut deltas = Vec::with_capacity(inputs.len());
    let mut fixed: Option<Vec<u8>> = None;
    let mut buf = Vec::new();
    for (i, f) in inputs.iter().enumerate() {
        let e = &f.entries[index];
        let label = || labels.get(i).cloned().unwrap_or_else(|| format!("#{i}"));
        let err = |cause| TensorError::Reconstruct {
            input: label(),
            cause,
        };
        // Before allocating: the output size is then backed by the block or the base tensor.
        check_inputs(e, f.block(index), base).map_err(err)?;
        buf.clear();
        // byte_len is capped by the parser (MAX_TENSOR_BYTES).
        buf.resize(e.byte_len() as usize, 0);
        reconstruct(e, f.block(index), base, &mut buf).map_err(err)?;
        match (&base_f32, to_f32(e.dtype, &buf)) {
            (Some(b), Some(t)) => {
                deltas.push(t.iter().zip(b).map(|(t, b)| t - b).collect::<Vec<f32>>());
            }
            _ => match &fixed {
                None => fixed = Some(buf.clone()),
                Some(v) if *v == buf => {}
                Some(_) => {
                    return Err(TensorError::NotCombinable {
                        name: e.name.clone(),
                        why: if base.is_none() {
                            "the base model lacks it"
                        } else {
                            "not a float tensor of the base's shape"
                        },
                        first: labels.first().cloned().unwrap_or_default(),
                        input: label(),
                    })
                }
            },
        }
    }
    Ok(match fixed {
        Some(v) => TensorDeltas::Fixed(v),
        None => TensorDeltas::Float { deltas, quantized },
    })
}

/// The target tensor `base + delta` (one f32 addition per element, rounded to `dtype`).
pub fn target_bytes(dtype: DType, base: &TensorData<'_>, delta: &[f32]) -> Option<Vec<u8>> {
    let b = to_f32(base.dtype, base.bytes)?;
    let t: Vec<f32> = b.iter().zip(delta).map(|(b, d)| b + d).collect();
    from_f32(dtype, &t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions_round_trip() {
        let v = [0.0f32, -1.5, 3.25, 1e-3];
        for d in [DType::F32, DType::F16, DType::BF16] {
            let b = from_f32(d, &v).unwrap();
            assert_eq!(b.len(), v.len() * d.size());
            let back = to_f32(d, &b).unwrap();
            assert_eq!(back[..3], v[..3]);
        }
        assert!(to_f32(DType::I64, &[0; 8]).is_none());
        assert!(from_f32(DType::U8, &v).is_none());
    }
}
