//! `zdn delta eval`: how far the delta-applied weights are from the fine-tune, per tensor and in total.

use std::path::PathBuf;

use zdn_protocol::bitdelta::{check_inputs, reconstruct, BitDeltaFile, Encoding};
use zdn_protocol::dtype::read_f32;
use zdn_protocol::DType;

use crate::delta::apply::DeltaApplyError;
use crate::fs::mapped_file::MappedFile;
use crate::fs::progress::Progress;
use crate::model::file::ModelFile;

#[derive(Debug, Clone)]
pub struct EvalJob {
    pub base: PathBuf,
    pub finetuned: PathBuf,
    pub delta: PathBuf,
    pub progress: bool,
}

/// Squared-norm sums for one tensor or a total (floating-point tensors only).
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct ErrorSums {
    /// Σ (R − F)²: reconstruction vs fine-tune.
    pub err_sq: f64,
    /// Σ F².
    pub target_sq: f64,
    /// Σ (F − B)²: the fine-tune's delta.
    pub delta_sq: f64,
}

impl ErrorSums {
    fn add(&mut self, o: &ErrorSums) {
        self.err_sq += o.err_sq;
        self.target_sq += o.target_sq;
        self.delta_sq += o.delta_sq;
    }

    /// ‖R − F‖ / ‖F‖.
    pub fn rel_error(&self) -> f64 {
        sqrt_ratio(self.err_sq, self.target_sq)
    }

    /// ‖R − F‖ / ‖F − B‖: the share of the fine-tune's change not captured (0 = exact, 1 = no better
    /// than the base).
    pub fn rel_delta_error(&self) -> f64 {
        sqrt_ratio(self.err_sq, self.delta_sq)
    }

    /// ‖B − F‖ / ‖F‖: the error of using the base as is (the floor to beat).
    pub fn base_rel_error(&self) -> f64 {
        sqrt_ratio(self.delta_sq, self.target_sq)
    }
}

fn sqrt_ratio(a: f64, b: f64) -> f64 {
    if b == 0.0 {
        if a == 0.0 {
            0.0
        } else {
            f64::INFINITY
        }
    } else {
        (a / b).sqrt()
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct TensorEval {
    pub name: String,
    pub encoding: Encoding,
    pub numel: u64,
    pub rel_error: f64,
    pub rel_delta_error: f64,
    pub base_rel_error: f64,
    /// Elements whose reconstructed bits differ from the fine-tune's.
    pub mismatched: u64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct EvalReport {
    pub tensors: Vec<TensorEval>,
    /// Over all floating-point tensors.
    pub total: ErrorSums,
    pub rel_error: f64,
    pub rel_delta_error: f64,
    pub base_rel_error: f64,
    /// Over the quantized tensors only.
    pub quantized_rel_delta_error: f64,
    /// Tensors reconstructed bit-exactly.
    pub exact_tensors: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum DeltaEvalError {
    #[error(transparent)]
    Delta(#[from] DeltaApplyError),
    #[error("tensor {0:?} is in the delta but not in the fine-tune")]
    MissingInFinetune(String),
    #[error("tensor {name:?}: the fine-tune has {finetuned}{shape:?}, the delta {delta_dtype}{delta_shape:?}")]
    Layout {
        name: String,
        finetuned: DType,
        shape: Vec<u64>,
        delta_dtype: DType,
        delta_shape: Vec<u64>,
    },
}

pub fn eval(job: &EvalJob) -> Result<EvalReport, DeltaEvalError> {
    let delta_map = MappedFile::open(&job.delta).map_err(DeltaApplyError::from)?;
    let delta =
        BitDeltaFile::parse(delta_map.bytes()).map_err(|cause| DeltaApplyError::Format {
            path: job.delta.clone(),
            cause,
        })?;
    let base = ModelFile::open(&job.base).map_err(DeltaApplyError::from)?;
    let fine = ModelFile::open(&job.finetuned).map_err(DeltaApplyError::from)?;
    let progress = Progress::new(
        delta.entries.iter().map(|e| e.byte_len()).sum(),
        "eval",
        job.progress,
    );
    let mut tensors = Vec::with_capacity(delta.entries.len());
    let mut total = ErrorSums::default();
    let mut quantized = ErrorSums::default();
    let mut buf = Vec::new();
    for (i, e) in delta.entries.iter().enumerate() {
        let f = fine
            .get(&e.name)
            .ok_or_else(|| DeltaEvalError::MissingInFinetune(e.name.clone()))?;
        if f.dtype != e.dtype || f.shape != e.shape {
            return Err(DeltaEvalError::Layout {
                name: e.name.clone(),
                finetuned: f.dtype,
                shape: f.shape.clone(),
                delta_dtype: e.dtype,
                delta_shape: e.shape.clone(),
            });
        }
        let b = base.get(&e.name);
        let bdata = b.map(|b| base.data(b));
        check_inputs(e, delta.block(i), bdata.as_ref()).map_err(DeltaApplyError::from)?;
        buf.clear();
        buf.resize(e.byte_len() as usize, 0);
        reconstruct(e, delta.block(i), bdata.as_ref(), &mut buf).map_err(DeltaApplyError::from)?;
        let fbytes = fine.data(f).bytes;
        let size = e.dtype.size();
        let mismatched = buf
            .chunks_exact(size)
            .zip(fbytes.chunks_exact(size))
            .filter(|(a, b)| a != b)
            .count() as u64;
        let mut sums = ErrorSums::default();
        if e.dtype.is_quantizable() {
            let bd = bdata.filter(|b| b.dtype.is_quantizable() && b.shape == e.shape.as_slice());
            for j in 0..(e.numel() as usize) {
                let r = f64::from(read_f32(e.dtype, &buf, j).unwrap_or(0.0));
                let t = f64::from(read_f32(e.dtype, fbytes, j).unwrap_or(0.0));
                let bv = bd.map_or(0.0, |b| {
                    f64::from(read_f32(b.dtype, b.bytes, j).unwrap_or(0.0))
                });
                sums.err_sq += (r - t) * (r - t);
                sums.target_sq += t * t;
                sums.delta_sq += (t - bv) * (t - bv);
            }
            total.add(&sums);
            if e.encoding.bits().is_some() {
                quantized.add(&sums);
            }
        }
        tensors.push(TensorEval {
            name: e.name.clone(),
            encoding: e.encoding,
            numel: e.numel(),
            rel_error: sums.rel_error(),
            rel_delta_error: sums.rel_delta_error(),
            base_rel_error: sums.base_rel_error(),
            mismatched,
        });
        fine.release(f);
        if let Some(b) = b {
            base.release(b);
        }
        progress.inc(e.byte_len());
    }
    progress.finish();
    Ok(EvalReport {
        exact_tensors: tensors.iter().filter(|t| t.mismatched == 0).count(),
        tensors,
        rel_error: total.rel_error(),
        rel_delta_error: total.rel_delta_error(),
        base_rel_error: total.base_rel_error(),
        quantized_rel_delta_error: quantized.rel_delta_error(),
        total,
    })
}
