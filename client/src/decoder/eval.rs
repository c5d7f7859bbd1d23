//! The quality of a delta for a decoder LLM, measured on held-out chat conversations rendered with the
//! fine-tune's chat template: how close the next-token distributions of the delta-applied model are to
//! the fine-tune's (mean KL), the perplexities of fine-tune, applied model and base, the share of the
//! base → fine-tune perplexity gain the applied model keeps, and whether the applied model's top-1
//! next token agrees with the fine-tune's where the chat template's special tokens matter.
//!
//! The base may have fewer vocabulary rows than the fine-tune (a fine-tune that added tokens). The
//! choice made here, reported with the numbers:
//! - input: the base reads the fine-tune's token ids, each id it lacks replaced by its own EOS id
//!   (`base_input_substitutions` counts them);
//! - KL(fine-tune ‖ base) is taken over the base's vocabulary: the fine-tune's distribution restricted
//!   to the ids the base has and renormalised;
//! - perplexities are compared on the positions whose next token the base has (`common_positions`),
//!   each model with its own full softmax; fine-tune and applied perplexities over all positions are
//!   reported as well.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use zdn_protocol::bitdelta::BitDeltaFile;
use zdn_protocol::Hash;

use super::apply::{apply_to_folder, FolderApplyError};
use super::chat::{read_conversations, ChatError, ChatMessage};
use super::config::{ConfigError, LlamaConfig};
use super::folder::{FolderError, FolderWeights};
use super::llama::{DecoderBatch, LlamaError, LlamaModel, LlamaWeights};
use super::next_token_stats::{Position, ReportContext, Sums};
use super::tokenizer::{DecoderTokenizer, TokenizerError};
use crate::device::apply::NamedTensors;
use crate::fs::mapped_file::{MappedFile, OpenError};

/// The metric's name, as recorded in quality reports.
pub const METRIC: &str =
    "decoder next-token KL(fine-tune ‖ applied), perplexity and special-token \
    top-1 agreement on held-out chat conversations (fine-tune's chat template)";
/// Tokens per conversation evaluated (longer ones are truncated and counted).
pub const DEFAULT_MAX_TOKENS: usize = 512;
/// Conversations per forward pass.
pub const DEFAULT_BATCH: usize = 8;

/// Where the delta-applied weights come from.
#[derive(Debug, Clone)]
pub enum AppliedWeights {
    /// A `.bitdelta` applied to the tensors of the model folder `onto`: normally the base. A delta
    /// cannot yet encode a tensor whose leading dimension grew (a fine-tune that added tokens), so
    /// such a pair is measured with `onto` = the base with the fine-tune's grown tensors copied in
    /// exactly, and the delta made against that; the base stays the floor.
    Delta { delta: PathBuf, onto: PathBuf },
    /// A model folder holding them (same configuration as the fine-tune).
    Folder(PathBuf),
    /// A folder delta (docs/spec/folder-delta.md) applied to the base: the fine-tune's folder is
    /// rebuilt in a temporary folder and read from there.
    FolderDelta(PathBuf),
}

#[derive(Debug, Clone)]
pub struct DecoderEvalJob {
    /// Model folders (config.json, tokenizer files, weights).
    pub base: PathBuf,
    pub finetuned: PathBuf,
    pub applied: AppliedWeights,
    /// Held-out conversations (JSON lines, `{"messages": [...]}`).
    pub corpus: PathBuf,
    pub max_conversations: Option<usize>,
    pub max_tokens: usize,
    pub batch: usize,
    /// Apply the delta even where its base cannot be verified.
    pub force: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum DecoderEvalError {
    #[error("{which}: {cause}")]
    Config {
        which: &'static str,
        cause: ConfigError,
    },
    #[error("{which}: {cause}")]
    Folder {
        which: &'static str,
        cause: FolderError,
    },
    #[error("{which}: {cause}")]
    Tokenizer {
        which: &'static str,
        cause: TokenizerError,
    },
    #[error("{which} model: {cause}")]
    Weights {
        which: &'static str,
        cause: Box<LlamaError>,
    },
    #[error(transparent)]
    Chat(#[from] ChatError),
    #[error("applying the folder delta: {0}")]
    ApplyFolder(#[from] crate::delta::folder::apply::FolderApplyError),
    #[error("the base: {0}")]
    ApplyBase(#[from] crate::delta::folder::base::BaseError),
    #[error("a temporary folder for the applied model: {0}")]
    Temp(std::io::Error),
    #[error(transparent)]
    Open(#[from] OpenError),
    #[error("{path} is not a valid .bitdelta file: {cause}")]
    Format {
        path: PathBuf,
        cause: zdn_protocol::bitdelta::FormatError,
    },
    #[error(transparent)]
    Apply(#[from] FolderApplyError),
    #[error("the base and the fine-tune do not share a vocabulary: {0}")]
    Vocabulary(String),
    #[error("conversation {index}: {cause}")]
    Encode { index: usize, cause: TokenizerError },
    #[error("{0}")]
    Input(String),
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
}

/// Perplexities of the three models on the same positions.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Perplexities {
    pub finetuned: f64,
    pub applied: f64,
    pub base: f64,
}

/// Top-1 next-token agreement with the fine-tune.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Agreement {
    pub applied: f64,
    pub base: f64,
}

/// Top-1 agreement with the fine-tune on one set of positions.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PositionAgreement {
    pub positions: u64,
    /// Share of the positions where the model's top-1 equals the fine-tune's.
    pub applied: f64,
    pub base: f64,
}

/// Top-1 agreement where the chat template's special tokens matter: positions whose input is a
/// special token, whose next token is one, or where the fine-tune's top-1 is one; in all (the union)
/// and by kind.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SpecialTokenAgreement {
    /// Positions checked (the union of the three kinds below).
    pub positions: u64,
    /// Share of the checked positions where the model's top-1 equals the fine-tune's.
    pub applied: f64,
    pub base: f64,
    /// Share where the fine-tune's top-1 is the actual next token.
    pub finetuned_correct: f64,
    /// The input is a special token (the prediction right after it).
    pub after_special: PositionAgreement,
    /// The next token is a special token (the template puts one there).
    pub special_next: PositionAgreement,
    /// The fine-tune's top-1 is a special token.
    pub finetuned_predicts_special: PositionAgreement,
}

/// What the decoder measure found; also the quality note a delta's manifest can carry.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct DecoderQualityReport {
    pub metric: String,
    pub corpus: String,
    pub corpus_blake3: Hash,
    pub conversations: usize,
    /// Conversations cut at `max_tokens`.
    pub truncated: usize,
    pub max_tokens: usize,
    /// Next-token predictions evaluated.
    pub positions: u64,
    pub base_vocab: usize,
    pub finetuned_vocab: usize,
    /// Input tokens the base lacks, read by it as its EOS.
    pub base_input_substitutions: u64,
    /// Mean KL(fine-tune ‖ applied), nats per position.
    pub kl_finetuned_applied: f64,
    /// Mean KL(fine-tune ‖ base) over the base's vocabulary: the floor.
    pub kl_finetuned_base: f64,
    /// Over all positions.
    pub perplexity_finetuned: f64,
    pub perplexity_applied: f64,
    /// Positions whose next token the base has; the perplexities of all three there.
    pub common_positions: u64,
    pub common_perplexity: Perplexities,
    /// (ppl_base − ppl_applied) / (ppl_base − ppl_fine-tune) on the common positions: 1 keeps all of
    /// the fine-tune's gain, 0 none.
    pub gain_kept: f64,
    /// The same share of the gain in cross-entropy (log perplexity): (ln ppl_base − ln ppl_applied)
    /// / (ln ppl_base − ln ppl_fine-tune). Stricter where the base is far worse than the fine-tune.
    pub log_gain_kept: f64,
    pub top1_agreement: Agreement,
    pub special_tokens: SpecialTokenAgreement,
    /// Bytes of the `.bitdelta` (none when the applied weights came from a folder).
    pub delta_bytes: Option<u64>,
    /// Bytes of the fine-tune's weight files.
    pub finetuned_bytes: u64,
}

/// One model of the measure: its forward pass and weights.
struct Model {
    llama: LlamaModel,
    weights: LlamaWeights,
}

impl Model {
    fn logits(&self, seqs: &[Vec<u32>], device: &Device) -> Result<Vec<f32>, LlamaError> {
        let batch = DecoderBatch::new(seqs, 0, device)?;
        Ok(self
            .llama
            .logits(&self.weights, &batch)?
            .flatten_all()?
            .to_vec1()?)
    }
}

pub(crate) fn open_config(
    dir: &Path,
    which: &'static str,
) -> Result<LlamaConfig, DecoderEvalError> {
    LlamaConfig::from_file(&dir.join("config.json"))
        .map_err(|cause| DecoderEvalError::Config { which, cause })
}

pub(crate) fn open_folder(
    dir: &Path,
    which: &'static str,
) -> Result<FolderWeights, DecoderEvalError> {
    FolderWeights::open(dir).map_err(|cause| DecoderEvalError::Folder { which, cause })
}

fn weights(
    tensors: impl IntoIterator<Item = (String, Tensor)>,
    cfg: &LlamaConfig,
    which: &'static str,
) -> Result<LlamaWeights, DecoderEvalError> {
    LlamaWeights::new(tensors, cfg).map_err(|cause| DecoderEvalError::Weights {
        which,
        cause: Box::new(cause),
    })
}

pub(crate) fn load(
    folder: &FolderWeights,
    cfg: &LlamaConfig,
    which: &'static str,
    device: &Device,
) -> Result<LlamaWeights, DecoderEvalError> {
    LlamaWeights::load(folder, cfg, device).map_err(|cause| DecoderEvalError::Weights {
        which,
        cause: Box::new(cause),
    })
}

/// Checks that the base's tokens are the fine-tune's first tokens; returns the base's EOS id, which
/// stands in for the fine-tune's tokens the base lacks.
fn shared_vocabulary(
    base: &DecoderTokenizer,
    fine: &DecoderTokenizer,
    base_vocab: usize,
    fine_vocab: usize,
) -> Result<u32, DecoderEvalError> {
    let bad = |s: String| DecoderEvalError::Vocabulary(s);
    if base_vocab > fine_vocab {
        return Err(bad(format!(
            "the base has {base_vocab} tokens, the fine-tune {fine_vocab}"
        )));
    }
    for id in 0..base.vocab_size().min(base_vocab) as u32 {
        let (b, f) = (base.token_text(id), fine.token_text(id));
        if b != f {
            return Err(bad(format!(
                "token {id} is {b:?} in the base, {f:?} in the fine-tune"
            )));
        }
    }
    let eos = base
        .special_tokens
        .get("eos_token")
        .and_then(|t| base.token_id(t))
        .filter(|&id| (id as usize) < base_vocab)
        .ok_or_else(|| {
            bad("the base has no EOS token to stand in for the tokens it lacks".into())
        })?;
    Ok(eos)
}

pub fn evaluate(job: &DecoderEvalJob) -> Result<DecoderQualityReport, DecoderEvalError> {
    if job.batch == 0 || job.max_tokens < 2 {
        return Err(DecoderEvalError::Input(
            "batch must be at least 1 and max_tokens at least 2".into(),
        ));
    }
    let device = Device::Cpu;
    let fcfg = open_config(&job.finetuned, "fine-tune")?;
    let bcfg = open_config(&job.base, "base")?;
    let tok = |dir: &Path, which| {
        DecoderTokenizer::open(dir).map_err(|cause| DecoderEvalError::Tokenizer { which, cause })
    };
    let ftok = tok(&job.finetuned, "fine-tune")?;
    let btok = tok(&job.base, "base")?;
    if !ftok.has_chat_template() {
        return Err(DecoderEvalError::Tokenizer {
            which: "fine-tune",
            cause: TokenizerError::NoTemplate(job.finetuned.display().to_string()),
        });
    }
    let base_eos = shared_vocabulary(&btok, &ftok, bcfg.vocab_size, fcfg.vocab_size)?;
    let max_tokens = job
        .max_tokens
        .min(fcfg.max_position_embeddings)
        .min(bcfg.max_position_embeddings);
    let mut convs = read_conversations(&job.corpus)?;
    if let Some(n) = job.max_conversations {
        convs.truncate(n);
    }
    let (seqs, truncated) = encode_conversations(&convs, &job.corpus, &ftok, max_tokens)?;

    let base_folder = open_folder(&job.base, "base")?;
    let fine_folder = open_folder(&job.finetuned, "fine-tune")?;
    let (applied_tensors, delta_bytes) = applied_weights(job, &base_folder, &fcfg, &device)?;
    let models = Models {
        fine: Model {
            llama: LlamaModel::new(fcfg.clone()),
            weights: load(&fine_folder, &fcfg, "fine-tuned", &device)?,
        },
        applied: Model {
            llama: LlamaModel::new(fcfg.clone()),
            weights: weights(applied_tensors, &fcfg, "delta-applied")?,
        },
        base: Model {
            llama: LlamaModel::new(bcfg.clone()),
            weights: load(&base_folder, &bcfg, "base", &device)?,
        },
        base_eos,
        device,
    };
    let (sums, substitutions) = models.score(&seqs, job.batch, ftok.special_ids())?;
    Ok(sums.report(ReportContext {
        corpus: &job.corpus,
        corpus_blake3: MappedFile::open(&job.corpus)?.blake3(),
        conversations: seqs.len(),
        truncated,
        max_tokens,
        base_vocab: bcfg.vocab_size,
        finetuned_vocab: fcfg.vocab_size,
        base_input_substitutions: substitutions,
        delta_bytes,
        finetuned_bytes: fine_folder.weight_bytes(),
    }))
}

/// Token ids of conversations (rendered by the chat template), each cut at
/// `max_tokens`; conversations of fewer than 2 tokens have nothing to predict and are left out.
/// Returns the sequences and how many were cut.
pub(crate) fn encode_conversations(
    convs: &[Vec<ChatMessage>],
    corpus: &Path,
    tok: &DecoderTokenizer,
    max_tokens: usize,
) -> Result<(Vec<Vec<u32>>, usize), DecoderEvalError> {
    let mut seqs = Vec::with_capacity(convs.len());
    let mut truncated = 0;
    for (index, c) in convs.iter().enumerate() {
        let mut ids = tok
            .encode_chat(c, false)
            .map_err(|cause| DecoderEvalError::Encode { index, cause })?;
        if ids.len() > max_tokens {
            ids.truncate(max_tokens);
            truncated += 1;
        }
        if ids.len() >= 2 {
            seqs.push(ids);
        }
    }
    if seqs.is_empty() {
        return Err(DecoderEvalError::Input(format!(
            "{}: no conversation of 2 or more tokens",
            corpus.display()
        )));
    }
    Ok((seqs, truncated))
}

/// The delta-applied tensors, and the delta's size when they come from one.
fn applied_weights(
    job: &DecoderEvalJob,
    base: &FolderWeights,
    cfg: &LlamaConfig,
    device: &Device,
) -> Result<(NamedTensors, Option<u64>), DecoderEvalError> {
    match &job.applied {
        AppliedWeights::Delta { delta: path, onto } => {
            let dm = MappedFile::open(path)?;
            let delta =
                BitDeltaFile::parse(dm.bytes()).map_err(|cause| DecoderEvalError::Format {
                    path: path.clone(),
                    cause,
                })?;
            let onto_folder;
            let target = if onto == &job.base {
                base
            } else {
                onto_folder = open_folder(onto, "delta base")?;
                &onto_folder
            };
            Ok((
                apply_to_folder(target, &delta, device, job.force)?,
                Some(dm.len() as u64),
            ))
        }
        AppliedWeights::Folder(dir) => {
            let f = open_folder(dir, "applied")?;
            Ok((load(&f, cfg, "applied", device)?.into_tensors(), None))
        }
        AppliedWeights::FolderDelta(delta) => {
            let applied = AppliedFolder::rebuild(&job.base, delta, job.force)?;
            let f = open_folder(&applied.dir(), "applied")?;
            Ok((
                load(&f, cfg, "applied", device)?.into_tensors(),
                Some(applied.delta_bytes),
            ))
        }
    }
}

/// The fine-tune's folder rebuilt from a folder delta and its base, in a temporary folder that
/// lives as long as this.
pub(crate) struct AppliedFolder {
    tmp: tempfile::TempDir,
    /// Bytes of the folder delta's files.
    pub delta_bytes: u64,
}

impl AppliedFolder {
    pub(crate) fn rebuild(
        base: &Path,
        delta: &Path,
        force: bool,
    ) -> Result<Self, DecoderEvalError> {
        use crate::delta::folder::{apply, base::LooseBase};
        let tmp = tempfile::tempdir().map_err(DecoderEvalError::Temp)?;
        let source = apply::DeltaSource::loose(delta)?;
        let loose = LooseBase::open(base)?;
        apply::apply_folder(&source, &loose, &tmp.path().join("applied"), force, false)?;
        let delta_bytes = crate::model::folder::ModelFolder::open(delta)
            .map_err(apply::FolderApplyError::from)?
            .files()
            .iter()
            .map(|(_, m)| m.len() as u64)
            .sum();
        Ok(AppliedFolder { tmp, delta_bytes })
    }

    pub(crate) fn dir(&self) -> PathBuf {
        self.tmp.path().join("applied")
    }
}

/// The three models of the measure.
struct Models {
    fine: Model,
    applied: Model,
    base: Model,
    /// Stands in, for the base, for the tokens it lacks.
    base_eos: u32,
    device: Device,
}

impl Models {
    /// Runs the three models over `seqs`, `batch` sequences a pass, and adds up every position.
    /// Returns the sums and the number of input tokens the base read as its EOS.
    fn score(
        &self,
        seqs: &[Vec<u32>],
        batch: usize,
        special: &BTreeSet<u32>,
    ) -> Result<(Sums, u64), DecoderEvalError> {
        let (vf, vb) = (
            self.fine.llama.cfg.vocab_size,
            self.base.llama.cfg.vocab_size,
        );
        // Batches of similar lengths waste less on padding; every sequence is evaluated on its own.
        let mut order: Vec<usize> = (0..seqs.len()).collect();
        order.sort_by_key(|&i| seqs[i].len());
        let mut sums = Sums::default();
        let mut substitutions = 0u64;
        for chunk in order.chunks(batch) {
            let batch: Vec<Vec<u32>> = chunk.iter().map(|&i| seqs[i].clone()).collect();
            let base_batch: Vec<Vec<u32>> = batch
                .iter()
                .map(|s| {
                    s.iter()
                        .map(|&id| {
                            if (id as usize) < vb {
                                id
                            } else {
                                self.base_eos
                            }
                        })
                        .collect()
                })
                .collect();
            substitutions += batch
                .iter()
                .flatten()
                .filter(|&&id| id as usize >= vb)
                .count() as u64;
            let model_err = |which| {
                move |cause| DecoderEvalError::Weights {
                    which,
                    cause: Box::new(cause),
                }
            };
            let lf = self
                .fine
                .logits(&batch, &self.device)
                .map_err(model_err("fine-tuned"))?;
            let la = self
                .applied
                .logits(&batch, &self.device)
                .map_err(model_err("delta-applied"))?;
            let lb = self
                .base
                .logits(&base_batch, &self.device)
                .map_err(model_err("base"))?;
            let t = batch.iter().map(Vec::len).max().unwrap_or(0);
            for (i, s) in batch.iter().enumerate() {
                for p in 0..s.len() - 1 {
                    // The logits of sequence i, position p: `[batch, t, vocab]` flattened.
                    let row = |v: usize| (i * t + p) * v..(i * t + p + 1) * v;
                    sums.add(&Position {
                        fine: &lf[row(vf)],
                        applied: &la[row(vf)],
                        base: &lb[row(vb)],
                        input: s[p],
                        next: s[p + 1],
                        special,
                    });
                }
            }
        }
        Ok((sums, substitutions))
    }
}
