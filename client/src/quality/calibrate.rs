//! `zdn delta calibrate`: BitDelta's scale distillation. The signs (levels) of every quantized tensor
//! stay as encoded; only the scales change, fitted so the delta-applied model's last hidden states match
//! the fine-tune's on a calibration corpus (masked MSE, Adam on the scales, gradients through the
//! candle forward pass of [`crate::quality::bert`]). The output is a `.bitdelta` identical to the input except for
//! the scale bytes, so it has the same size and applies with the same arithmetic.
//!
//! Scales are optimised in relative form, s = s₀·(1 + u) with u starting at 0: one learning rate suits
//! tensors whose scales differ by orders of magnitude.

use std::path::PathBuf;
use std::time::Instant;

use candle_core::{DType as CDType, Device, Tensor, Var};
use zdn_protocol::bitdelta::{
    check_inputs, matrix_of, reconstruct, scale_count, BitDeltaFile, Granularity, IndexEntry,
    TensorData,
};
use zdn_protocol::DType;

use crate::device::apply::{apply_delta, tensor_from_bytes, CandleApplyError};
use crate::fs::atomic_file::AtomicFile;
use crate::fs::mapped_file::MappedFile;
use crate::fs::progress::Progress;
use crate::model::file::ModelFile;
use crate::model::synthetic::Rng;
use crate::quality::bert::{BertConfig, BertError, BertWeights, TokenBatch};
use crate::quality::corpus::read_sentences;
use crate::quality::embedder::SentenceEmbedder;
use crate::quality::eval::{bert_weights, QualityError};

#[derive(Debug, Clone)]
pub struct CalibrateJob {
    pub base: PathBuf,
    pub finetuned: PathBuf,
    pub delta: PathBuf,
    pub corpus: PathBuf,
    pub output: PathBuf,
    pub config: Option<PathBuf>,
    pub tokenizer: Option<PathBuf>,
    /// Sentences of this corpus are never used for calibration (the held-out set).
    pub exclude_corpus: Option<PathBuf>,
    /// Calibration sentences drawn (deterministically) from the corpus.
    pub sentences: usize,
    pub steps: usize,
    pub batch: usize,
    /// Adam step size on the relative scales.
    pub learning_rate: f64,
    pub seed: u64,
    pub force: bool,
    pub progress: bool,
}

impl CalibrateJob {
    pub const DEFAULT_SENTENCES: usize = 256;
    pub const DEFAULT_STEPS: usize = 60;
    pub const DEFAULT_BATCH: usize = 16;
    pub const DEFAULT_LEARNING_RATE: f64 = 0.01;
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct CalibrateReport {
    pub output: PathBuf,
    pub tensors: usize,
    pub scales: usize,
    pub sentences: usize,
    pub steps: usize,
    /// Mean loss over the first and the last pass over the calibration batches.
    pub loss_first: f64,
    pub loss_last: f64,
    /// Largest relative change of any scale, |s/s₀ − 1|.
    pub max_relative_change: f64,
    pub seconds: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum CalibrateError {
    #[error(transparent)]
    Quality(#[from] QualityError),
    #[error("the calibration corpus has no sentence left after excluding the held-out corpus")]
    NoSentences,
    #[error("the delta has no quantized tensor used by the model: nothing to calibrate")]
    NothingToCalibrate,
    #[error("tensor {name:?}: {problem}")]
    Tensor { name: String, problem: String },
    #[error("calibration diverged at step {step} (loss {loss}); try a smaller --learning-rate")]
    Diverged { step: usize, loss: f64 },
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
}

impl From<CandleApplyError> for CalibrateError {
    fn from(e: CandleApplyError) -> Self {
        CalibrateError::Quality(QualityError::Apply(e))
    }
}
impl From<BertError> for CalibrateError {
    fn from(e: BertError) -> Self {
        CalibrateError::Quality(QualityError::Weights {
            which: "calibrated",
            source: e,
        })
    }
}

/// One quantized tensor under calibration: W(u) = B + expand(s₀ ⊙ (1 + u)) ⊙ L.
struct ScaledTensor {
    index: usize,
    name: String,
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
    fn weight(&self) -> Result<Tensor, candle_core::Error> {
        let s = self.s0.mul(&(self.u.as_tensor() + 1.0)?)?;
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
        self.base.add(&scaled)
    }
}

/// The levels (odd integers: ±1 at 1 bit) of a quantized tensor: its block reconstructed with every
/// scale set to 1 onto a zero base, through the one reconstruction routine.
fn levels_of(entry: &IndexEntry, block: &[u8], device: &Device) -> Result<Tensor, CalibrateError> {
    let err = |problem: String| CalibrateError::Tensor {
        name: entry.name.clone(),
        problem,
    };
    let (rows, cols) = matrix_of(&entry.shape);
    let n_scales = scale_count(rows, cols, entry.granularity)
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| err("scale count overflows".into()))?;
    let mut unit = block.to_vec();
    let end = n_scales
        .checked_mul(4)
        .filter(|&e| e <= unit.len())
        .ok_or_else(|| err("block shorter than its scales".into()))?;
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

fn scales_of(entry: &IndexEntry, block: &[u8]) -> Vec<f32> {
    let (rows, cols) = matrix_of(&entry.shape);
    let n = scale_count(rows, cols, entry.granularity).unwrap_or(0) as usize;
    block
        .chunks_exact(4)
        .take(n)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// Masked mean squared error between hidden states `[b, t, h]`.
fn masked_mse(x: &Tensor, target: &Tensor, mask: &Tensor) -> Result<Tensor, candle_core::Error> {
    let m = mask.unsqueeze(2)?;
    let h = x.dim(2)? as f64;
    let count = (mask.sum_all()? * h)?;
    (x - target)?
        .sqr()?
        .broadcast_mul(&m)?
        .sum_all()?
        .div(&count)
}

pub fn calibrate(job: &CalibrateJob) -> Result<CalibrateReport, CalibrateError> {
    let started = Instant::now();
    let device = Device::Cpu;
    let q = |e: QualityError| CalibrateError::Quality(e);
    let embedder = SentenceEmbedder::beside(
        &job.base,
        job.config.as_ref(),
        job.tokenizer.as_ref(),
        device.clone(),
    )
    .map_err(|e| q(e.into()))?;
    let (sentences, batches) = calibration_batches(job, &embedder)?;

    let base = ModelFile::open(&job.base).map_err(|e| q(e.into()))?;
    let fine = ModelFile::open(&job.finetuned).map_err(|e| q(e.into()))?;
    let dm = MappedFile::open(&job.delta).map_err(|e| q(e.into()))?;
    let delta = BitDeltaFile::parse(dm.bytes()).map_err(|cause| {
        q(QualityError::Format {
            path: job.delta.clone(),
            cause,
        })
    })?;
    let applied = apply_delta(&base, &delta, &device, job.force)?;
    let cfg = embedder.config().clone();
    let mut weights = BertWeights::new(applied.tensors)?;
    weights.check(&cfg)?;
    let w_fine = bert_weights(&fine, &device, "fine-tuned").map_err(q)?;
    w_fine.check(&cfg)?;
    let targets: Vec<Tensor> = batches
        .iter()
        .map(|b| embedder.encoder.hidden_states(&w_fine, b))
        .collect::<Result<_, _>>()?;
    drop(w_fine);

    let mut tensors = scaled_tensors(&delta, &base, &cfg, &device)?;
    let training = Training {
        embedder: &embedder,
        delta: &delta,
        batches: &batches,
        targets: &targets,
    };
    let (first, last) = training.run(job, &mut weights, &mut tensors)?;
    let (n_scales, max_change) = write_calibrated(job, dm.bytes(), &delta, &tensors)?;
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    Ok(CalibrateReport {
        output: job.output.clone(),
        tensors: tensors.len(),
        scales: n_scales,
        sentences,
        steps: job.steps,
        loss_first: mean(&first),
        loss_last: mean(&last),
        max_relative_change: max_change,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// The calibration sentences (the corpus less the excluded held-out text, shuffled
/// deterministically, the first N) as token batches; and how many sentences there are.
fn calibration_batches(
    job: &CalibrateJob,
    embedder: &SentenceEmbedder,
) -> Result<(usize, Vec<TokenBatch>), CalibrateError> {
    let q = |e: QualityError| CalibrateError::Quality(e);
    let mut sentences = read_sentences(&job.corpus).map_err(|e| q(e.into()))?;
    if let Some(ex) = &job.exclude_corpus {
        let held: std::collections::HashSet<String> = read_sentences(ex)
            .map_err(|e| q(e.into()))?
            .into_iter()
            .collect();
        sentences.retain(|s| !held.contains(s));
    }
    // A deterministic shuffle, then the first N: calibration text from across the corpus.
    let mut rng = Rng::new(job.seed);
    for i in (1..sentences.len()).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        sentences.swap(i, j);
    }
    sentences.truncate(job.sentences);
    if sentences.is_empty() {
        return Err(CalibrateError::NoSentences);
    }
    let mut tokens = embedder.tokenize(&sentences).map_err(|e| q(e.into()))?;
    // Similar lengths share a batch: less padding, same result.
    tokens.sort_by_key(Vec::len);
    let batches = tokens
        .chunks(job.batch.max(1))
        .map(|c| embedder.batch(c))
        .collect::<Result<_, _>>()
        .map_err(|e| q(e.into()))?;
    Ok((sentences.len(), batches))
}

/// The quantized tensors of `delta` the forward pass uses, each with its base, levels, starting
/// scales and the trainable relative change of its scales.
fn scaled_tensors(
    delta: &BitDeltaFile<'_>,
    base: &ModelFile,
    cfg: &BertConfig,
    device: &Device,
) -> Result<Vec<ScaledTensor>, CalibrateError> {
    let used: std::collections::HashSet<String> =
        BertWeights::linear_names(cfg).into_iter().collect();
    let mut tensors = Vec::new();
    for (i, e) in delta.entries.iter().enumerate() {
        let plain = e.name.strip_prefix("bert.").unwrap_or(&e.name);
        if e.encoding.bits().is_none() || !used.contains(plain) {
            continue;
        }
        let block = delta.block(i);
        let bt = base.get(&e.name).ok_or_else(|| CalibrateError::Tensor {
            name: e.name.clone(),
            problem: "the base lacks it".into(),
        })?;
        let bd = base.data(bt);
        let (rows, cols) = matrix_of(&e.shape);
        let btensor = tensor_from_bytes(&e.name, bd.dtype, bd.shape, bd.bytes, device)?
            .to_dtype(CDType::F32)?
            .reshape((rows as usize, cols as usize))?;
        let s0 = scales_of(e, block);
        let n = s0.len();
        tensors.push(ScaledTensor {
            index: i,
            name: e.name.clone(),
            base: btensor,
            levels: levels_of(e, block, device)?,
            s0: Tensor::from_vec(s0, n, device)?,
            u: Var::zeros(n, CDType::F32, device)?,
            granularity: e.granularity,
            rows: rows as usize,
            cols: cols as usize,
            m: Tensor::zeros(n, CDType::F32, device)?,
            v: Tensor::zeros(n, CDType::F32, device)?,
        });
    }
    if tensors.is_empty() {
        return Err(CalibrateError::NothingToCalibrate);
    }
    Ok(tensors)
}

/// What the training loop works on: the batches and the fine-tune's hidden states on them.
struct Training<'a> {
    embedder: &'a SentenceEmbedder,
    delta: &'a BitDeltaFile<'a>,
    batches: &'a [TokenBatch],
    targets: &'a [Tensor],
}

impl Training<'_> {
    /// Adam on the scales' relative changes, one batch per step, round robin; returns the losses
    /// of the first and of the last pass over the batches.
    fn run(
        &self,
        job: &CalibrateJob,
        weights: &mut BertWeights,
        tensors: &mut [ScaledTensor],
    ) -> Result<(Vec<f64>, Vec<f64>), CalibrateError> {
        let progress = Progress::new(job.steps as u64, "calibrate", job.progress);
        let (b1, b2, eps) = (0.9f64, 0.999f64, 1e-8f64);
        let nb = self.batches.len();
        let (mut first, mut last) = (Vec::new(), Vec::new());
        for step in 0..job.steps {
            let k = step % nb;
            for t in tensors.iter() {
                let shape = self.delta.entries[t.index]
                    .shape
                    .iter()
                    .map(|&d| d as usize)
                    .collect::<Vec<_>>();
                weights.set(&t.name, t.weight()?.reshape(shape)?);
            }
            let h = self
                .embedder
                .encoder
                .hidden_states(weights, &self.batches[k])?;
            let loss = masked_mse(&h, &self.targets[k], &self.batches[k].mask)?;
            let lv = f64::from(loss.to_scalar::<f32>()?);
            if !lv.is_finite() {
                return Err(CalibrateError::Diverged { step, loss: lv });
            }
            if step < nb {
                first.push(lv);
            }
            if step + nb >= job.steps {
                last.push(lv);
            }
            let grads = loss.backward()?;
            let tstep = (step + 1) as i32;
            let (c1, c2) = (1.0 - b1.powi(tstep), 1.0 - b2.powi(tstep));
            for t in tensors.iter_mut() {
                let Some(g) = grads.get(t.u.as_tensor()) else {
                    continue;
                };
                t.m = ((&t.m * b1)? + (g * (1.0 - b1))?)?;
                t.v = ((&t.v * b2)? + (g.sqr()? * (1.0 - b2))?)?;
                let mhat = (&t.m / c1)?;
                let vhat = (&t.v / c2)?;
                let upd = (mhat / (vhat.sqrt()? + eps)?)? * job.learning_rate;
                t.u.set(&(t.u.as_tensor() - upd?)?)?;
            }
            progress.inc(1);
        }
        progress.finish();
        Ok((first, last))
    }
}

/// Writes the input's bytes with each calibrated tensor's scales replaced; returns the scales
/// written and the largest relative change of a scale.
fn write_calibrated(
    job: &CalibrateJob,
    input: &[u8],
    delta: &BitDeltaFile<'_>,
    tensors: &[ScaledTensor],
) -> Result<(usize, f64), CalibrateError> {
    let q = |e: QualityError| CalibrateError::Quality(e);
    let mut out_bytes = input.to_vec();
    let mut n_scales = 0;
    let mut max_change = 0f64;
    for t in tensors {
        let e = &delta.entries[t.index];
        let s = t.s0.mul(&(t.u.as_tensor() + 1.0)?)?.to_vec1::<f32>()?;
        let rel = (t.u.as_tensor().abs()?.max(0)?.to_scalar::<f32>()?) as f64;
        max_change = max_change.max(rel);
        if let Some(bad) = s.iter().find(|x| !x.is_finite()) {
            return Err(CalibrateError::Tensor {
                name: e.name.clone(),
                problem: format!("calibrated scale {bad} is not finite"),
            });
        }
        let off = e.offset as usize;
        for (j, v) in s.iter().enumerate() {
            out_bytes[off + 4 * j..off + 4 * j + 4].copy_from_slice(&v.to_le_bytes());
        }
        n_scales += s.len();
    }
    // The result must still be a valid file (and it is applied exactly like the input).
    BitDeltaFile::parse(&out_bytes).map_err(|c| CalibrateError::Tensor {
        name: "(file)".into(),
        problem: c.to_string(),
    })?;
    let mut out = AtomicFile::create(&job.output)
        .map_err(|e| q(QualityError::Apply(CandleApplyError::Output(e))))?;
    out.write_all(&out_bytes)
        .and_then(|_| out.commit())
        .map_err(|e| q(QualityError::Apply(CandleApplyError::Output(e))))?;
    Ok((n_scales, max_change))
}
