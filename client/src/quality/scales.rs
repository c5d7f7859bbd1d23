//! The trainable scales of a `.bitdelta` (BitDelta's scale distillation, shared by the BERT and the
//! decoder calibration): for one quantized tensor, W(u) = B + expand(s₀ ⊙ (1 + u)) ⊙ L with the
//! base B, the levels L (odd integers, ±1 at 1 bit) and the encoded scales s₀ fixed, and u (the
//! relative change of each scale, starting at 0) the only trainable variable; Adam steps on u; and
//! the input file's bytes with the fitted scales written over the old ones.
//!
//! Relative form: one learning rate suits tensors whose scales differ by orders of magnitude.

use candle_core::{DType as CDType, Device, Tensor, Var};
use zdn_protocol::bitdelta::{
    check_inputs, matrix_of, reconstruct, scale_count, BitDeltaFile, Granularity, IndexEntry,
    TensorData,
};
use zdn_protocol::DType;

use crate::device::apply::{tensor_from_bytes, CandleApplyError};

#[derive(Debug, thiserror::Error)]
pub enum ScalesError {
    #[error("tensor {name:?}: {problem}")]
    Tensor { name: String, problem: String },
    #[error(transparent)]
    Load(#[from] CandleApplyError),
    #[error("calibration diverged at step {step} (loss {loss}); try a smaller --learning-rate")]
    Diverged { step: usize, loss: f64 },
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
}

/// Adam's moment decay rates and its ε, as BitDelta uses them (PyTorch's defaults).
const BETA1: f64 = 0.9;
const BETA2: f64 = 0.999;
const EPS: f64 = 1e-8;

/// One quantized tensor under calibration. See the module documentation.
#[derive(Debug)]
pub struct ScaledTensor {
    /// Its position in the delta's index.
    pub index: usize,
    pub name: String,
    base: Tensor,
    levels: Tensor,
    s0: Tensor,
    u: Var,
    granularity: Granularity,
    rows: usize,
    cols: usize,
    m: Tensor,
    v: Tensor,
}

impl ScaledTensor {
    /// The tensor of entry `index` of `delta`, over `base` (its base tensor, any float dtype, of
    /// the entry's shape).
    pub fn new(
        delta: &BitDeltaFile<'_>,
        index: usize,
        base: TensorData<'_>,
        device: &Device,
    ) -> Result<Self, ScalesError> {
        let e = &delta.entries[index];
        let block = delta.block(index);
        let err = |problem: String| ScalesError::Tensor {
            name: e.name.clone(),
            problem,
        };
        if e.encoding.bits().is_none() {
            return Err(err("it is stored exactly: no scales".into()));
        }
        if base.shape != e.shape.as_slice() {
            return Err(err(format!(
                "the base tensor has shape {:?}, the delta {:?}",
                base.shape, e.shape
            )));
        }
        let (rows, cols) = matrix_of(&e.shape);
        let (rows, cols) = (rows as usize, cols as usize);
        let btensor = tensor_from_bytes(&e.name, base.dtype, base.shape, base.bytes, device)?
            .to_dtype(CDType::F32)?
            .reshape((rows, cols))?;
        let s0 = scales_of(e, block)?;
        let n = s0.len();
        Ok(ScaledTensor {
            index,
            name: e.name.clone(),
            base: btensor,
            levels: levels_of(e, block, device)?,
            s0: Tensor::from_vec(s0, n, device)?,
            u: Var::zeros(n, CDType::F32, device)?,
            granularity: e.granularity,
            rows,
            cols,
            m: Tensor::zeros(n, CDType::F32, device)?,
            v: Tensor::zeros(n, CDType::F32, device)?,
        })
    }

    /// The tensor's weight at the current scales, f32, in the entry's shape.
    pub fn weight(&self, shape: &[usize]) -> Result<Tensor, candle_core::Error> {
        let s = self.scales()?;
        let (r, c) = (self.rows, self.cols);
        let scaled = match self.granularity {
            Granularity::Tensor => self.levels.broadcast_mul(&s.reshape(())?)?,
            Granularity::Row => self.levels.broadcast_mul(&s.reshape((r, 1))?)?,
            Granularity::Group(n) => {
                let n = n as usize;
                let g = c.div_ceil(n);
                if c.is_multiple_of(n) {
                    self.levels
                        .reshape((r, g, n))?
                        .broadcast_mul(&s.reshape((r, g, 1))?)?
                        .reshape((r, c))?
                } else {
                    // Ragged last group: expand by index (scale k of row i covers columns k·n…).
                    let idx: Vec<u32> = (0..r * c)
                        .map(|i| ((i / c) * g + (i % c) / n) as u32)
                        .collect();
                    let idx = Tensor::from_vec(idx, r * c, s.device())?;
                    self.levels
                        .mul(&s.index_select(&idx, 0)?.reshape((r, c))?)?
                }
            }
        };
        self.base.add(&scaled)?.reshape(shape)
    }

    /// s₀ ⊙ (1 + u).
    fn scales(&self) -> Result<Tensor, candle_core::Error> {
        self.s0.mul(&(self.u.as_tensor() + 1.0)?)
    }

    /// The trainable variable, to look its gradient up.
    pub fn variable(&self) -> &Tensor {
        self.u.as_tensor()
    }

    /// One Adam step (the `step`-th, from 1) on u with gradient `g`.
    pub fn adam_step(
        &mut self,
        g: &Tensor,
        step: usize,
        learning_rate: f64,
    ) -> Result<(), candle_core::Error> {
        let t = i32::try_from(step).unwrap_or(i32::MAX);
        let (c1, c2) = (1.0 - BETA1.powi(t), 1.0 - BETA2.powi(t));
        self.m = ((&self.m * BETA1)? + (g * (1.0 - BETA1))?)?;
        self.v = ((&self.v * BETA2)? + (g.sqr()? * (1.0 - BETA2))?)?;
        let mhat = (&self.m / c1)?;
        let vhat = (&self.v / c2)?;
        let upd = (mhat / (vhat.sqrt()? + EPS)?)? * learning_rate;
        self.u.set(&(self.u.as_tensor() - upd?)?)
    }
}

/// The levels (odd integers: ±1 at 1 bit) of a quantized tensor: its block reconstructed with every
/// scale set to 1 onto a zero base, through the one reconstruction routine.
fn levels_of(entry: &IndexEntry, block: &[u8], device: &Device) -> Result<Tensor, ScalesError> {
    let err = |problem: String| ScalesError::Tensor {
        name: entry.name.clone(),
        problem,
    };
    let (rows, cols) = matrix_of(&entry.shape);
    let end = scale_bytes(entry)?;
    let mut unit = block.to_vec();
    if end > unit.len() {
        return Err(err("block shorter than its scales".into()));
    }
    for s in unit[..end].chunks_exact_mut(4) {
        s.copy_from_slice(&1f32.to_le_bytes());
    }
    let mut e = entry.clone();
    e.dtype = DType::F32;
    let zeros = vec![0u8; e.byte_len() as usize];
    let zero = TensorData {
        dtype: DType::F32,
        shape: &entry.shape,
        bytes: &zeros,
    };
    check_inputs(&e, &unit, Some(&zero)).map_err(|c| err(c.to_string()))?;
    let mut out = vec![0u8; e.byte_len() as usize];
    reconstruct(&e, &unit, Some(&zero), &mut out).map_err(|c| err(c.to_string()))?;
    Ok(
        tensor_from_bytes(&entry.name, DType::F32, &entry.shape, &out, device)?
            .reshape((rows as usize, cols as usize))?,
    )
}

/// Bytes of the scales at the start of a quantized tensor's block (f32 each).
fn scale_bytes(entry: &IndexEntry) -> Result<usize, ScalesError> {
    let (rows, cols) = matrix_of(&entry.shape);
    scale_count(rows, cols, entry.granularity)
        .and_then(|n| usize::try_from(n).ok())
        .and_then(|n| n.checked_mul(4))
        .ok_or_else(|| ScalesError::Tensor {
            name: entry.name.clone(),
            problem: "scale count overflows".into(),
        })
}

fn scales_of(entry: &IndexEntry, block: &[u8]) -> Result<Vec<f32>, ScalesError> {
    let end = scale_bytes(entry)?;
    let bytes = block.get(..end).ok_or_else(|| ScalesError::Tensor {
        name: entry.name.clone(),
        problem: "block shorter than its scales".into(),
    })?;
    Ok(bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect())
}

/// The input's bytes with each calibrated tensor's scales written over the encoded ones (checked
/// to parse again), the number of scales written and the largest relative change |s/s₀ − 1|.
pub fn calibrated_bytes(
    input: &[u8],
    delta: &BitDeltaFile<'_>,
    tensors: &[ScaledTensor],
) -> Result<(Vec<u8>, usize, f64), ScalesError> {
    let mut out = input.to_vec();
    let mut n_scales = 0;
    let mut max_change = 0f64;
    for t in tensors {
        let e = &delta.entries[t.index];
        let s = t.scales()?.to_vec1::<f32>()?;
        let rel = f64::from(t.u.as_tensor().abs()?.max(0)?.to_scalar::<f32>()?);
        max_change = max_change.max(rel);
        let err = |problem: String| ScalesError::Tensor {
            name: e.name.clone(),
            problem,
        };
        if let Some(bad) = s.iter().find(|x| !x.is_finite()) {
            return Err(err(format!("calibrated scale {bad} is not finite")));
        }
        let off = usize::try_from(e.offset).map_err(|_| err("offset overflows".into()))?;
        let end = off
            .checked_add(4 * s.len())
            .filter(|&end| end <= out.len())
            .ok_or_else(|| err("scales run past the file".into()))?;
        for (dst, v) in out[off..end].chunks_exact_mut(4).zip(&s) {
            dst.copy_from_slice(&v.to_le_bytes());
        }
        n_scales += s.len();
    }
    // The result must still be a valid file (and it is applied exactly like the input).
    BitDeltaFile::parse(&out).map_err(|c| ScalesError::Tensor {
        name: "(file)".into(),
        problem: c.to_string(),
    })?;
    Ok((out, n_scales, max_change))
}

/// How a calibration runs: Adam steps of `learning_rate` on the scales' relative changes, one batch
/// per step, round robin over `batches`.
#[derive(Debug, Clone, Copy)]
pub struct Fit {
    pub steps: usize,
    pub batches: usize,
    pub learning_rate: f64,
    pub progress: bool,
}

impl Fit {
    /// Runs the steps: `loss(batch, tensors)` computes the (scalar) loss of the model with the
    /// tensors' current weights on batch number `batch`. Returns the losses of the first and of the
    /// last pass over the batches.
    pub fn run<E, F>(
        &self,
        tensors: &mut [ScaledTensor],
        mut loss: F,
    ) -> Result<(Vec<f64>, Vec<f64>), E>
    where
        E: From<ScalesError> + From<candle_core::Error>,
        F: FnMut(usize, &[ScaledTensor]) -> Result<Tensor, E>,
    {
        let progress =
            crate::fs::progress::Progress::new(self.steps as u64, "calibrate", self.progress);
        let nb = self.batches.max(1);
        let (mut first, mut last) = (Vec::new(), Vec::new());
        for step in 0..self.steps {
            let l = loss(step % nb, tensors)?;
            let lv = f64::from(l.to_scalar::<f32>()?);
            if !lv.is_finite() {
                return Err(ScalesError::Diverged { step, loss: lv }.into());
            }
            if step < nb {
                first.push(lv);
            }
            if step + nb >= self.steps {
                last.push(lv);
            }
            let grads = l.backward()?;
            for t in tensors.iter_mut() {
                if let Some(g) = grads.get(t.variable()) {
                    t.adam_step(g, step + 1, self.learning_rate)?;
                }
            }
            progress.inc(1);
        }
        progress.finish();
        Ok((first, last))
    }
}

/// Mean of a list of losses (0 for none).
pub fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use zdn_protocol::bitdelta::{
        encode_model, EncodeOptions, Metadata, ModelTensor, QuantSpec, Selection,
    };

    /// At u = 0 the trainable weight is the protocol's reconstruction (in f32, before rounding to
    /// the output dtype), for every granularity, ragged groups included; the calibrated bytes of
    /// an untouched tensor are the input's.
    #[test]
    fn weight_at_start_is_the_reconstruction() {
        let (rows, cols) = (6usize, 10usize);
        let base: Vec<f32> = (0..rows * cols).map(|i| (i as f32 * 0.37).sin()).collect();
        let fine: Vec<f32> = base
            .iter()
            .enumerate()
            .map(|(i, b)| b + 0.05 * ((i * 7 % 11) as f32 - 5.0))
            .collect();
        let bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let (bb, fb) = (bytes(&base), bytes(&fine));
        for granularity in [Granularity::Tensor, Granularity::Row, Granularity::Group(4)] {
            let shape = [rows as u64, cols as u64];
            let meta = Metadata {
                base_hash: zdn_protocol::Hash::ZERO,
                n_params: 0,
                n_quantized: 0,
                bits: 1,
                granularity,
                clip_sigma: 0.0,
                embeddings: 0,
                model_name: "t".into(),
            };
            let view = |bytes| ModelTensor {
                name: "w",
                data: TensorData {
                    dtype: DType::F32,
                    shape: &shape,
                    bytes,
                },
            };
            let opts = EncodeOptions {
                spec: QuantSpec {
                    bits: 1,
                    granularity,
                    clip_sigma: None,
                },
                ..EncodeOptions::default()
            };
            let file = encode_model(
                meta,
                &[view(&bb)],
                &[view(&fb)],
                &Selection::default(),
                &opts,
            )
            .unwrap();
            let delta = BitDeltaFile::parse(&file).unwrap();
            let data = TensorData {
                dtype: DType::F32,
                shape: &shape,
                bytes: &bb,
            };
            let t = ScaledTensor::new(&delta, 0, data, &Device::Cpu).unwrap();
            let w = t.weight(&[rows, cols]).unwrap().flatten_all().unwrap();
            let mut want = vec![0u8; rows * cols * 4];
            reconstruct(&delta.entries[0], delta.block(0), Some(&data), &mut want).unwrap();
            let want: Vec<f32> = want
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            let got: Vec<f32> = w.to_vec1().unwrap();
            for (g, w) in got.iter().zip(&want) {
                assert!(
                    (g - w).abs() <= 1e-6 * w.abs().max(1.0),
                    "{granularity:?}: {g} vs {w}"
                );
            }
            let (out, n, change) = calibrated_bytes(&file, &delta, &[t]).unwrap();
            assert_eq!(out, file);
            assert_eq!(change, 0.0);
            assert_eq!(
                n,
                scale_count(rows as u64, cols as u64, granularity).unwrap() as usize
            );
        }
    }
}
