//! `zdn delta calibrate` for decoder LLMs: BitDelta's scale distillation on a folder delta. The signs
//! (levels) of every quantized projection stay as encoded; only their scales change, fitted so the
//! delta-applied model's next-token distributions match the fine-tune's on calibration
//! conversations (rendered by the fine-tune's chat template): the loss is the mean next-token
//! KL(fine-tune ‖ applied), the quantity `zdn eval` reports on held-out conversations. Adam on the
//! scales' relative changes ([`crate::quality::scales`]), gradients through the candle forward pass
//! of [`super::llama`].
//!
//! What is calibrated: every quantized entry of `delta.bitdelta` that is one of the model's layer
//! projections (attention q/k/v/o, MLP gate/up/down) and has the base's shape; with `vocabulary`,
//! also the quantized rows of `embed_tokens` and `lm_head` (their exact rows and the fine-tune's new
//! rows, other entries of the delta, stay as applied: the trainable part enters as a change over the
//! applied tensor). Exact tensors are left as they are. The output is a folder delta identical to
//! the input except for scale bytes inside `delta.bitdelta`: same files, same sizes, same
//! reconstruction arithmetic.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::time::Instant;

use candle_core::{Device, Tensor, D};
use zdn_protocol::bitdelta::BitDeltaFile;
use zdn_protocol::folder::delta::DELTA_MEMBER;

use super::chat::{read_conversations, ChatMessage};
use super::config::LlamaConfig;
use super::eval::{
    encode_conversations, load, open_config, open_folder, AppliedFolder, DecoderEvalError,
};
use super::llama::{DecoderBatch, LlamaError, LlamaModel, LlamaWeights};
use super::tokenizer::{DecoderTokenizer, TokenizerError};
use crate::delta::folder::output::{OutputDir, OutputDirError};
use crate::fs::object_output::ObjectOutputError;
use crate::model::folder::ModelFolder;
use crate::quality::scales::{calibrated_bytes, mean, Fit, ScaledTensor, ScalesError};

#[derive(Debug, Clone)]
pub struct DecoderCalibrateJob {
    /// Model folders.
    pub base: PathBuf,
    pub finetuned: PathBuf,
    /// The folder delta whose scales are calibrated.
    pub delta: PathBuf,
    /// Calibration conversations (JSON lines, `{"messages": [...]}`).
    pub corpus: PathBuf,
    /// Conversations of this file are never used (the held-out set).
    pub exclude_corpus: Option<PathBuf>,
    /// The calibrated folder delta (must not exist, or be an empty folder).
    pub output: PathBuf,
    /// Conversations drawn (deterministically, by `seed`) from the corpus.
    pub conversations: usize,
    pub steps: usize,
    /// Conversations per step.
    pub batch: usize,
    pub max_tokens: usize,
    /// Adam step size on the relative scales.
    pub learning_rate: f64,
    pub seed: u64,
    /// Also calibrate the quantized rows of the vocabulary matrices.
    pub vocabulary: bool,
    /// Weight of a position where a special token matters (input, next token or the fine-tune's
    /// top-1), against 1 for the others, in the mean KL fitted (see `special_weights`).
    pub special_weight: f32,
    pub force: bool,
    pub progress: bool,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct DecoderCalibrateReport {
    pub output: PathBuf,
    pub tensors: usize,
    pub scales: usize,
    pub conversations: usize,
    /// Conversations cut at `max_tokens`.
    pub truncated: usize,
    pub steps: usize,
    /// Weight of the special-token positions in the loss (1: every position alike).
    pub special_weight: f32,
    /// Mean next-token KL(fine-tune ‖ applied), nats per position (weighted as fitted), over the
    /// first and the last pass over the calibration batches (calibration text, not held out).
    pub kl_first: f64,
    pub kl_last: f64,
    /// Largest relative change of any scale, |s/s₀ − 1|.
    pub max_relative_change: f64,
    pub seconds: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum DecoderCalibrateError {
    #[error(transparent)]
    Model(Box<DecoderEvalError>),
    #[error("{0}")]
    Input(String),
    #[error("{path}: {cause}")]
    Format {
        path: PathBuf,
        cause: zdn_protocol::bitdelta::FormatError,
    },
    #[error("the delta has no quantized layer projection: nothing to calibrate")]
    NothingToCalibrate,
    #[error(transparent)]
    Scales(#[from] ScalesError),
    #[error("writing the calibrated folder delta: {0}")]
    Output(#[from] OutputDirError),
    #[error("the calibrated folder delta fails its own check: {0}")]
    SelfCheck(zdn_protocol::folder::delta::FolderDeltaError),
    #[error("{which} model: {cause}")]
    Forward {
        which: &'static str,
        cause: Box<LlamaError>,
    },
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
}

impl DecoderCalibrateJob {
    pub const DEFAULT_CONVERSATIONS: usize = 256;
    pub const DEFAULT_STEPS: usize = 60;
    pub const DEFAULT_BATCH: usize = 8;
    pub const DEFAULT_LEARNING_RATE: f64 = 0.01;
}

impl From<DecoderEvalError> for DecoderCalibrateError {
    fn from(e: DecoderEvalError) -> Self {
        DecoderCalibrateError::Model(Box::new(e))
    }
}

fn forward(which: &'static str) -> impl Fn(LlamaError) -> DecoderCalibrateError {
    move |cause| DecoderCalibrateError::Forward {
        which,
        cause: Box::new(cause),
    }
}

pub fn calibrate(
    job: &DecoderCalibrateJob,
) -> Result<DecoderCalibrateReport, DecoderCalibrateError> {
    let started = Instant::now();
    if job.steps == 0 || job.conversations == 0 || job.batch == 0 || job.max_tokens < 2 {
        return Err(DecoderCalibrateError::Input(
            "steps, conversations and batch must be at least 1, max_tokens at least 2".into(),
        ));
    }
    // The output folder is checked (and its staging folder made) before the long work.
    let out = OutputDir::create(&job.output).map_err(|e| match e {
        OutputDirError::Destination(ObjectOutputError::NotEmpty(p)) => {
            DecoderCalibrateError::Input(format!(
                "{} exists and is not an empty folder: name a new folder for the calibrated delta",
                p.display()
            ))
        }
        e => e.into(),
    })?;
    let device = Device::Cpu;
    let cfg = open_config(&job.finetuned, "fine-tune")?;
    let tok =
        DecoderTokenizer::open(&job.finetuned).map_err(|cause| DecoderEvalError::Tokenizer {
            which: "fine-tune",
            cause,
        })?;
    if !tok.has_chat_template() {
        return Err(DecoderEvalError::Tokenizer {
            which: "fine-tune",
            cause: TokenizerError::NoTemplate(job.finetuned.display().to_string()),
        }
        .into());
    }
    let (batches, conversations, truncated) = calibration_batches(job, &tok, &cfg, &device)?;

    // The applied model (the folder delta rebuilt onto the base, checked whole on the way), the
    // fine-tune, and the projections to calibrate over the base's tensors.
    let applied_folder = AppliedFolder::rebuild(&job.base, &job.delta, job.force)?;
    let mut applied = load(
        &open_folder(&applied_folder.dir(), "applied")?,
        &cfg,
        "delta-applied",
        &device,
    )?;
    let fine = load(
        &open_folder(&job.finetuned, "fine-tune")?,
        &cfg,
        "fine-tuned",
        &device,
    )?;
    // The folder delta, read once: its `delta.bitdelta` and its layout (checked whole).
    let input =
        ModelFolder::open(&job.delta).map_err(|e| DecoderEvalError::ApplyFolder(e.into()))?;
    let members = input.members();
    let layout = zdn_protocol::folder::delta_layout(&members)
        .map_err(|e| DecoderCalibrateError::Input(format!("{}: {e}", job.delta.display())))?;
    let bitdelta = members
        .iter()
        .find(|m| m.path == DELTA_MEMBER)
        .map(|m| m.bytes)
        .unwrap_or_default();
    let delta = BitDeltaFile::parse(bitdelta).map_err(|cause| DecoderCalibrateError::Format {
        path: job.delta.join(DELTA_MEMBER),
        cause,
    })?;
    let exact: HashMap<&str, &[u64]> = layout
        .delta
        .exact_rows
        .iter()
        .map(|x| (x.name.as_str(), x.indices.as_slice()))
        .collect();
    let (mut tensors, places): (Vec<_>, Vec<_>) =
        calibrated_tensors(&delta, job, &exact, &cfg, &applied, &device)?
            .into_iter()
            .unzip();

    let training = Training {
        model: LlamaModel::new(cfg),
        fine: &fine,
        batches: &batches,
        special: tok.special_ids(),
    };
    let (first, last) = training.run(job, &mut applied, &mut tensors, &places)?;
    let (bytes, n_scales, max_change) = calibrated_bytes(bitdelta, &delta, &tensors)?;
    write_folder(&input, out, &bytes)?;
    Ok(DecoderCalibrateReport {
        output: job.output.clone(),
        tensors: tensors.len(),
        scales: n_scales,
        conversations,
        truncated,
        steps: job.steps,
        special_weight: job.special_weight,
        kl_first: mean(&first),
        kl_last: mean(&last),
        max_relative_change: max_change,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// The calibration conversations (the corpus less any held-out conversation, shuffled
/// deterministically, the first N) as token batches of similar lengths; how many conversations
/// and how many of them were cut at `max_tokens`.
fn calibration_batches(
    job: &DecoderCalibrateJob,
    tok: &DecoderTokenizer,
    cfg: &LlamaConfig,
    device: &Device,
) -> Result<(Vec<DecoderBatch>, usize, usize), DecoderCalibrateError> {
    let mut convs = read_conversations(&job.corpus).map_err(DecoderEvalError::from)?;
    if let Some(ex) = &job.exclude_corpus {
        let key = |c: &Vec<ChatMessage>| serde_json::to_string(c).unwrap_or_default();
        let held: HashSet<String> = read_conversations(ex)
            .map_err(DecoderEvalError::from)?
            .iter()
            .map(key)
            .collect();
        convs.retain(|c| !held.contains(&key(c)));
    }
    crate::quality::corpus::draw(&mut convs, job.seed, job.conversations);
    if convs.is_empty() {
        return Err(DecoderCalibrateError::Input(format!(
            "{}: no conversation left for calibration after excluding the held-out ones",
            job.corpus.display()
        )));
    }
    let max_tokens = job.max_tokens.min(cfg.max_position_embeddings);
    let (mut seqs, truncated) = encode_conversations(&convs, &job.corpus, tok, max_tokens)?;
    let n = seqs.len();
    seqs.sort_by_key(Vec::len);
    let batches = seqs
        .chunks(job.batch)
        .map(|c| DecoderBatch::new(c, 0, device))
        .collect::<Result<_, _>>()
        .map_err(forward("calibration batch"))?;
    Ok((batches, n, truncated))
}

/// How a calibrated tensor's weight enters the applied model.
enum Place {
    /// As the whole tensor (a layer projection).
    Whole,
    /// As the change of the quantized common rows of a vocabulary matrix over the applied tensor
    /// (f32): its exact rows (`keep` 0) and the fine-tune's new rows stay as applied.
    Rows {
        applied: Tensor,
        start: Tensor,
        keep: Tensor,
    },
}

impl Place {
    /// The applied model's tensor for weight `w` of the calibrated entry.
    fn tensor(&self, w: Tensor) -> Result<Tensor, candle_core::Error> {
        let Place::Rows {
            applied,
            start,
            keep,
        } = self
        else {
            return Ok(w);
        };
        let change = (w - start)?.broadcast_mul(keep)?;
        let (rows, common) = (applied.dim(0)?, change.dim(0)?);
        let change = if rows > common {
            let pad = Tensor::zeros(
                (rows - common, change.dim(1)?),
                change.dtype(),
                change.device(),
            )?;
            Tensor::cat(&[&change, &pad], 0)?
        } else {
            change.narrow(0, 0, rows)?
        };
        applied + change
    }
}

/// The names of the vocabulary matrices (input embeddings and output head).
const VOCABULARY: [&str; 2] = ["model.embed_tokens.weight", "lm_head.weight"];

/// The quantized layer projections and vocabulary matrices of `delta`, each over its base tensor
/// (a vocabulary matrix: its common rows, the exact ones left out), and where each goes.
fn calibrated_tensors(
    delta: &BitDeltaFile<'_>,
    job: &DecoderCalibrateJob,
    exact: &HashMap<&str, &[u64]>,
    cfg: &LlamaConfig,
    applied: &LlamaWeights,
    device: &Device,
) -> Result<Vec<(ScaledTensor, Place)>, DecoderCalibrateError> {
    let base = open_folder(&job.base, "base")?;
    let linears: HashSet<String> = (0..cfg.num_hidden_layers)
        .flat_map(|l| {
            cfg.layer_linears()
                .into_iter()
                .map(move |(n, _)| format!("model.layers.{l}.{n}.weight"))
        })
        .collect();
    let mut out = Vec::new();
    for (i, e) in delta.entries.iter().enumerate() {
        let vocabulary = job.vocabulary && VOCABULARY.contains(&e.name.as_str());
        if e.encoding.bits().is_none() || !(vocabulary || linears.contains(&e.name)) {
            continue;
        }
        let Some(b) = base.data(&e.name).filter(|b| b.shape == e.shape.as_slice()) else {
            continue;
        };
        let t = ScaledTensor::new(delta, i, b, device)?;
        base.release(&e.name);
        let place = match applied.get(&e.name) {
            Some(a) if vocabulary && a.rank() == 2 && a.dim(1)? as u64 == e.shape[1] => {
                let rows = e.shape[0] as usize;
                let mut keep = vec![1f32; rows];
                for &r in exact.get(e.name.as_str()).copied().unwrap_or_default() {
                    if let Some(k) = keep.get_mut(r as usize) {
                        *k = 0.0;
                    }
                }
                let shape = [rows, e.shape[1] as usize];
                Place::Rows {
                    applied: a.to_dtype(candle_core::DType::F32)?,
                    start: t.weight(&shape)?.detach(),
                    keep: Tensor::from_vec(keep, (rows, 1), device)?,
                }
            }
            _ if vocabulary => continue,
            _ => Place::Whole,
        };
        out.push((t, place));
    }
    if out.is_empty() {
        return Err(DecoderCalibrateError::NothingToCalibrate);
    }
    Ok(out)
}

/// log softmax over the last dimension (the max is a constant shift: no gradient through it).
fn log_softmax(x: &Tensor) -> Result<Tensor, candle_core::Error> {
    let shifted = x.broadcast_sub(&x.max_keepdim(D::Minus1)?.detach())?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    shifted.broadcast_sub(&lse)
}

/// `[b, t]` f32: 1 where position p of sequence i has a next token (p + 1 < length), else 0 —
/// the positions `zdn eval` scores.
fn position_mask(batch: &DecoderBatch, device: &Device) -> Result<Tensor, candle_core::Error> {
    let t = batch.lengths.iter().copied().max().unwrap_or(0);
    let m: Vec<f32> = batch
        .lengths
        .iter()
        .flat_map(|&len| (0..t).map(move |p| if p + 1 < len { 1.0 } else { 0.0 }))
        .collect();
    Tensor::from_vec(m, (batch.lengths.len(), t), device)
}

/// `mask` (`[b, t]`, from [`position_mask`]) with `weight` in place of 1 where a special token
/// matters — the input is one, the next token is one, or the fine-tune's top-1 (`target_logp`'s
/// arg max, `[b, t, v]`) is one: the positions `zdn eval`'s special-token agreement counts.
fn special_weights(
    batch: &DecoderBatch,
    mask: &Tensor,
    target_logp: &Tensor,
    special: &BTreeSet<u32>,
    weight: f32,
) -> Result<Tensor, candle_core::Error> {
    if weight == 1.0 || special.is_empty() {
        return Ok(mask.clone());
    }
    let ids = batch.ids.to_vec2::<u32>()?;
    let top = target_logp.argmax(D::Minus1)?.to_vec2::<u32>()?;
    let mut m = mask.to_vec2::<f32>()?;
    for ((row, ids), top) in m.iter_mut().zip(&ids).zip(&top) {
        for (p, w) in row.iter_mut().enumerate() {
            let is = |id: Option<&u32>| id.is_some_and(|i| special.contains(i));
            if *w > 0.0 && (is(ids.get(p)) || is(ids.get(p + 1)) || is(top.get(p))) {
                *w = weight;
            }
        }
    }
    Tensor::new(m, mask.device())
}

/// Weighted mean over the positions of KL(p ‖ q) with log p = `target_logp` (a constant) and
/// logits of q = `logits`, both `[b, t, v]`; `weights` `[b, t]` (0 for positions not scored).
fn masked_kl(
    logits: &Tensor,
    target_logp: &Tensor,
    weights: &Tensor,
) -> Result<Tensor, candle_core::Error> {
    let per = target_logp
        .exp()?
        .mul(&(target_logp - log_softmax(logits)?)?)?
        .sum(D::Minus1)?;
    let total = weights.sum_all()?.to_scalar::<f32>()?.max(1.0);
    per.mul(weights)?.sum_all()? / f64::from(total)
}

/// What the training loop works on.
struct Training<'a> {
    model: LlamaModel,
    fine: &'a LlamaWeights,
    batches: &'a [DecoderBatch],
    /// The fine-tune's special token ids.
    special: &'a BTreeSet<u32>,
}

impl Training<'_> {
    /// The calibration's steps on the Llama forward pass: the loss is the next-token KL to the
    /// fine-tune; the losses of the first and last pass.
    fn run(
        &self,
        job: &DecoderCalibrateJob,
        applied: &mut LlamaWeights,
        tensors: &mut [ScaledTensor],
        places: &[Place],
    ) -> Result<(Vec<f64>, Vec<f64>), DecoderCalibrateError> {
        let fit = Fit {
            steps: job.steps,
            batches: self.batches.len(),
            learning_rate: job.learning_rate,
            progress: job.progress,
        };
        fit.run(tensors, |k, tensors| {
            let batch = &self.batches[k];
            let target = log_softmax(
                &self
                    .model
                    .logits(self.fine, batch)
                    .map_err(forward("fine-tuned"))?,
            )?;
            for (t, place) in tensors.iter().zip(places) {
                let shape = match place {
                    Place::Whole => applied.get(&t.name).map(|w| w.dims().to_vec()),
                    Place::Rows { start, .. } => Some(start.dims().to_vec()),
                }
                .unwrap_or_default();
                if !applied.replace(&t.name, place.tensor(t.weight(&shape)?)?) {
                    return Err(DecoderCalibrateError::Input(format!(
                        "{} is not a tensor of the applied model's shape",
                        t.name
                    )));
                }
            }
            let logits = self
                .model
                .logits(applied, batch)
                .map_err(forward("delta-applied"))?;
            let weights = special_weights(
                batch,
                &position_mask(batch, batch.ids.device())?,
                &target,
                self.special,
                job.special_weight,
            )?;
            Ok(masked_kl(&logits, &target, &weights)?)
        })
    }
}

/// The input folder delta with `delta.bitdelta` replaced by `bitdelta`, written to `out`, checked
/// and moved into place.
fn write_folder(
    input: &ModelFolder,
    mut out: OutputDir,
    bitdelta: &[u8],
) -> Result<(), DecoderCalibrateError> {
    for (rel, file) in input.files() {
        let bytes = if rel == DELTA_MEMBER {
            bitdelta
        } else {
            file.bytes()
        };
        out.write(rel, bytes)?;
    }
    out.check(|members| {
        zdn_protocol::folder::delta_layout(members)
            .map(drop)
            .map_err(DecoderCalibrateError::SelfCheck)
    })?;
    out.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The KL of identical distributions is 0; of two known ones, the hand-computed value; padded
    /// positions do not count.
    #[test]
    fn masked_kl_matches_hand_computation() {
        let d = Device::Cpu;
        // One sequence of 2 positions (the second masked), vocabulary 2.
        let p = [0.25f64, 0.75];
        let q = [0.5f64, 0.5];
        let lp: Vec<f32> = p.iter().chain(&p).map(|x| x.ln() as f32).collect();
        let lq: Vec<f32> = q.iter().chain(&[0.9, 0.1]).map(|x| x.ln() as f32).collect();
        let lp = Tensor::from_vec(lp, (1, 2, 2), &d).unwrap();
        let logits = Tensor::from_vec(lq, (1, 2, 2), &d).unwrap();
        let mask = Tensor::from_vec(vec![1f32, 0.0], (1, 2), &d).unwrap();
        let want: f64 = p.iter().zip(&q).map(|(a, b)| a * (a / b).ln()).sum();
        let got = f64::from(
            masked_kl(&logits, &lp, &mask)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap(),
        );
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        // Logits shifted by a constant are the same distribution.
        let same = masked_kl(&(lp.clone() + 3.0).unwrap(), &lp, &mask)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(same.abs() < 1e-6, "{same}");
    }

    /// Positions whose input, next token or fine-tune top-1 is special get the weight; padding
    /// and the last position stay 0; weight 1 is the plain mask.
    #[test]
    fn special_positions_get_the_weight() {
        let d = Device::Cpu;
        // One sequence of 4 tokens (special id 9 at position 2) and one of 2, padded.
        let b = DecoderBatch::new(&[vec![5, 6, 9, 7], vec![5, 6]], 0, &d).unwrap();
        let mask = position_mask(&b, &d).unwrap();
        // The fine-tune's top-1 is token 1, but 9 at position 0 of the second sequence.
        let mut lp = vec![-5f32; 2 * 4 * 10];
        for i in 0..8 {
            lp[i * 10 + 1] = -0.1;
        }
        lp[4 * 10 + 9] = 0.0;
        let lp = Tensor::from_vec(lp, (2, 4, 10), &d).unwrap();
        let special = BTreeSet::from([9u32]);
        let w = special_weights(&b, &mask, &lp, &special, 5.0).unwrap();
        assert_eq!(
            w.to_vec2::<f32>().unwrap(),
            [[1.0, 5.0, 5.0, 0.0], [5.0, 0.0, 0.0, 0.0]]
        );
        let plain = special_weights(&b, &mask, &lp, &special, 1.0).unwrap();
        assert_eq!(
            plain.to_vec2::<f32>().unwrap(),
            mask.to_vec2::<f32>().unwrap()
        );
    }

    #[test]
    fn the_mask_covers_positions_with_a_next_token() {
        let b = DecoderBatch::new(&[vec![1, 2, 3], vec![4, 5]], 0, &Device::Cpu).unwrap();
        let m = position_mask(&b, &Device::Cpu).unwrap();
        assert_eq!(
            m.to_vec2::<f32>().unwrap(),
            vec![vec![1.0, 1.0, 0.0], vec![1.0, 0.0, 0.0]]
        );
    }
}
