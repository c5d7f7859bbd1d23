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

use candle_core::{Device, Tensor};
use zdn_protocol::bitdelta::BitDeltaFile;

use crate::device::apply::{apply_delta, CandleApplyError};
use crate::fs::atomic_file::AtomicFile;
use crate::fs::mapped_file::MappedFile;
use crate::model::file::ModelFile;
use crate::quality::bert::{BertConfig, BertError, BertWeights, TokenBatch};
use crate::quality::corpus::read_sentences;
use crate::quality::embedder::SentenceEmbedder;
use crate::quality::eval::{bert_weights, QualityError};
use crate::quality::scales::{calibrated_bytes, mean, Fit, ScaledTensor, ScalesError};

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
    #[error(transparent)]
    Scales(#[from] ScalesError),
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
    crate::quality::corpus::draw(&mut sentences, job.seed, job.sentences);
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
        let bt = base.get(&e.name).ok_or_else(|| ScalesError::Tensor {
            name: e.name.clone(),
            problem: "the base lacks it".into(),
        })?;
        tensors.push(ScaledTensor::new(delta, i, base.data(bt), device)?);
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
    /// The calibration's steps on the BERT forward pass; the losses of the first and last pass.
    fn run(
        &self,
        job: &CalibrateJob,
        weights: &mut BertWeights,
        tensors: &mut [ScaledTensor],
    ) -> Result<(Vec<f64>, Vec<f64>), CalibrateError> {
        let fit = Fit {
            steps: job.steps,
            batches: self.batches.len(),
            learning_rate: job.learning_rate,
            progress: job.progress,
        };
        fit.run(tensors, |k, tensors| {
            for t in tensors {
                let shape = self.delta.entries[t.index]
                    .shape
                    .iter()
                    .map(|&d| d as usize)
                    .collect::<Vec<_>>();
                weights.set(&t.name, t.weight(&shape)?);
            }
            let h = self
                .embedder
                .encoder
                .hidden_states(weights, &self.batches[k])?;
            Ok(masked_mse(&h, &self.targets[k], &self.batches[k].mask)?)
        })
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
    let (out_bytes, n_scales, max_change) = calibrated_bytes(input, delta, tensors)?;
    let mut out = AtomicFile::create(&job.output)
        .map_err(|e| q(QualityError::Apply(CandleApplyError::Output(e))))?;
    out.write_all(&out_bytes)
        .and_then(|_| out.commit())
        .map_err(|e| q(QualityError::Apply(CandleApplyError::Output(e))))?;
    Ok((n_scales, max_change))
}
