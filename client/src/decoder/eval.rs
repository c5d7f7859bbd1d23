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
use super::chat::{read_conversations, ChatError};
use super::config::{ConfigError, LlamaConfig};
use super::folder::{FolderError, ModelFolder};
use super::llama::{DecoderBatch, LlamaError, LlamaModel, LlamaWeights};
use super::tokenizer::{DecoderTokenizer, TokenizerError};
use crate::mapped_file::{MappedFile, OpenError};

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

fn open_config(dir: &Path, which: &'static str) -> Result<LlamaConfig, DecoderEvalError> {
    LlamaConfig::from_file(&dir.join("config.json"))
        .map_err(|cause| DecoderEvalError::Config { which, cause })
}

fn open_folder(dir: &Path, which: &'static str) -> Result<ModelFolder, DecoderEvalError> {
    ModelFolder::open(dir).map_err(|cause| DecoderEvalError::Folder { which, cause })
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

fn load(
    folder: &ModelFolder,
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
    let mut seqs = Vec::with_capacity(convs.len());
    let mut truncated = 0;
    for (index, c) in convs.iter().enumerate() {
        let mut ids = ftok
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
            job.corpus.display()
        )));
    }

    let base_folder = open_folder(&job.base, "base")?;
    let fine_folder = open_folder(&job.finetuned, "fine-tune")?;
    let (applied_tensors, delta_bytes) = match &job.applied {
        AppliedWeights::Delta { delta: path, onto } => {
            let dm = MappedFile::open(path)?;
            let delta =
                BitDeltaFile::parse(dm.bytes()).map_err(|cause| DecoderEvalError::Format {
                    path: path.clone(),
                    cause,
                })?;
            let onto_folder;
            let target = if onto == &job.base {
                &base_folder
            } else {
                onto_folder = open_folder(onto, "delta base")?;
                &onto_folder
            };
            (
                apply_to_folder(target, &delta, &device, job.force)?,
                Some(dm.len() as u64),
            )
        }
        AppliedWeights::Folder(dir) => {
            let f = open_folder(dir, "applied")?;
            (load(&f, &fcfg, "applied", &device)?.into_tensors(), None)
        }
    };
    let fine = Model {
        llama: LlamaModel::new(fcfg.clone()),
        weights: load(&fine_folder, &fcfg, "fine-tuned", &device)?,
    };
    let applied = Model {
        llama: LlamaModel::new(fcfg.clone()),
        weights: weights(applied_tensors, &fcfg, "delta-applied")?,
    };
    let base = Model {
        llama: LlamaModel::new(bcfg.clone()),
        weights: load(&base_folder, &bcfg, "base", &device)?,
    };

    // Batches of similar lengths waste less on padding; every sequence is evaluated on its own.
    let mut order: Vec<usize> = (0..seqs.len()).collect();
    order.sort_by_key(|&i| seqs[i].len());
    let (vf, vb) = (fcfg.vocab_size, bcfg.vocab_size);
    let mut sums = Sums::default();
    let mut substitutions = 0u64;
    for chunk in order.chunks(job.batch) {
        let batch: Vec<Vec<u32>> = chunk.iter().map(|&i| seqs[i].clone()).collect();
        let base_batch: Vec<Vec<u32>> = batch
            .iter()
            .map(|s| {
                s.iter()
                    .map(|&id| if (id as usize) < vb { id } else { base_eos })
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
        let lf = fine
            .logits(&batch, &device)
            .map_err(model_err("fine-tuned"))?;
        let la = applied
            .logits(&batch, &device)
            .map_err(model_err("delta-applied"))?;
        let lb = base
            .logits(&base_batch, &device)
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
                    special: ftok.special_ids(),
                });
            }
        }
    }
    Ok(sums.report(ReportContext {
        corpus: &job.corpus,
        corpus_blake3: MappedFile::open(&job.corpus)?.blake3(),
        conversations: seqs.len(),
        truncated,
        max_tokens,
        base_vocab: vb,
        finetuned_vocab: vf,
        base_input_substitutions: substitutions,
        delta_bytes,
        finetuned_bytes: fine_folder.weight_bytes(),
    }))
}

/// One next-token prediction of the three models.
struct Position<'a> {
    fine: &'a [f32],
    applied: &'a [f32],
    /// Over the base's (possibly smaller) vocabulary.
    base: &'a [f32],
    input: u32,
    next: u32,
    special: &'a BTreeSet<u32>,
}

/// Running sums over positions.
#[derive(Debug, Default, Clone)]
struct Sums {
    positions: u64,
    nll_fine: f64,
    nll_applied: f64,
    kl_applied: f64,
    kl_base: f64,
    common: u64,
    common_nll: [f64; 3],
    top1_applied: u64,
    top1_base: u64,
    /// The union of the special-token kinds, then each kind.
    special: Tally,
    special_fine_correct: u64,
    after_special: Tally,
    special_next: Tally,
    fine_predicts_special: Tally,
}

/// Positions, and how many of them the applied model and the base agree with the fine-tune on.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    positions: u64,
    applied: u64,
    base: u64,
}

impl Tally {
    fn add(&mut self, applied_agrees: bool, base_agrees: bool) {
        self.positions += 1;
        self.applied += u64::from(applied_agrees);
        self.base += u64::from(base_agrees);
    }

    fn agreement(&self) -> PositionAgreement {
        let share = |a: u64| {
            if self.positions == 0 {
                f64::NAN
            } else {
                a as f64 / self.positions as f64
            }
        };
        PositionAgreement {
            positions: self.positions,
            applied: share(self.applied),
            base: share(self.base),
        }
    }
}

/// `log Σ exp(x)`, in f64.
fn log_sum_exp(x: &[f32]) -> f64 {
    let m = x.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
    if !m.is_finite() {
        return m;
    }
    m + x.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>().ln()
}

/// Index of the largest value (the first of equals).
fn argmax(x: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best
}

impl Sums {
    fn add(&mut self, p: &Position<'_>) {
        let vb = p.base.len();
        let (lf, la, lb) = (
            log_sum_exp(p.fine),
            log_sum_exp(p.applied),
            log_sum_exp(p.base),
        );
        let next = p.next as usize;
        self.positions += 1;
        self.nll_fine += lf - p.fine[next] as f64;
        self.nll_applied += la - p.applied[next] as f64;
        // KL(f ‖ a) = Σ pf (log pf − log pa); KL over the base's ids with pf renormalised there.
        let mut kl_a = 0.0;
        let mut kl_b = 0.0;
        let mut mass_b = 0.0;
        for v in 0..p.fine.len() {
            let lpf = p.fine[v] as f64 - lf;
            let pf = lpf.exp();
            kl_a += pf * (lpf - (p.applied[v] as f64 - la));
            if v < vb {
                mass_b += pf;
                kl_b += pf * (lpf - (p.base[v] as f64 - lb));
            }
        }
        self.kl_applied += kl_a;
        // Σ p' (log p' − log pb) with p' = pf / Z: (Σ pf (log pf − log pb)) / Z − log Z.
        self.kl_base += kl_b / mass_b - mass_b.ln();
        if next < vb {
            self.common += 1;
            self.common_nll[0] += lf - p.fine[next] as f64;
            self.common_nll[1] += la - p.applied[next] as f64;
            self.common_nll[2] += lb - p.base[next] as f64;
        }
        let (tf, ta, tb) = (argmax(p.fine), argmax(p.applied), argmax(p.base));
        self.top1_applied += u64::from(ta == tf);
        self.top1_base += u64::from(tb == tf);
        let after = p.special.contains(&p.input);
        let special_next = p.special.contains(&p.next);
        let predicts = p.special.contains(&(tf as u32));
        let agree = (ta == tf, tb == tf);
        for (kind, tally) in [
            (after, &mut self.after_special),
            (special_next, &mut self.special_next),
            (predicts, &mut self.fine_predicts_special),
            (after || special_next || predicts, &mut self.special),
        ] {
            if kind {
                tally.add(agree.0, agree.1);
            }
        }
        if after || special_next || predicts {
            self.special_fine_correct += u64::from(tf == next);
        }
    }

    fn report(&self, c: ReportContext<'_>) -> DecoderQualityReport {
        let share = |a: u64, n: u64| {
            if n == 0 {
                f64::NAN
            } else {
                a as f64 / n as f64
            }
        };
        let ppl = |nll: f64, n: u64| {
            if n == 0 {
                f64::NAN
            } else {
                (nll / n as f64).exp()
            }
        };
        let common = Perplexities {
            finetuned: ppl(self.common_nll[0], self.common),
            applied: ppl(self.common_nll[1], self.common),
            base: ppl(self.common_nll[2], self.common),
        };
        DecoderQualityReport {
            metric: METRIC.to_owned(),
            corpus: c
                .corpus
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            corpus_blake3: c.corpus_blake3,
            conversations: c.conversations,
            truncated: c.truncated,
            max_tokens: c.max_tokens,
            positions: self.positions,
            base_vocab: c.base_vocab,
            finetuned_vocab: c.finetuned_vocab,
            base_input_substitutions: c.base_input_substitutions,
            kl_finetuned_applied: self.kl_applied / self.positions.max(1) as f64,
            kl_finetuned_base: self.kl_base / self.positions.max(1) as f64,
            perplexity_finetuned: ppl(self.nll_fine, self.positions),
            perplexity_applied: ppl(self.nll_applied, self.positions),
            common_positions: self.common,
            gain_kept: (common.base - common.applied) / (common.base - common.finetuned),
            log_gain_kept: (common.base.ln() - common.applied.ln())
                / (common.base.ln() - common.finetuned.ln()),
            common_perplexity: common,
            top1_agreement: Agreement {
                applied: share(self.top1_applied, self.positions),
                base: share(self.top1_base, self.positions),
            },
            special_tokens: SpecialTokenAgreement {
                positions: self.special.positions,
                applied: self.special.agreement().applied,
                base: self.special.agreement().base,
                finetuned_correct: share(self.special_fine_correct, self.special.positions),
                after_special: self.after_special.agreement(),
                special_next: self.special_next.agreement(),
                finetuned_predicts_special: self.fine_predicts_special.agreement(),
            },
            delta_bytes: c.delta_bytes,
            finetuned_bytes: c.finetuned_bytes,
        }
    }
}

struct ReportContext<'a> {
    corpus: &'a Path,
    corpus_blake3: Hash,
    conversations: usize,
    truncated: usize,
    max_tokens: usize,
    base_vocab: usize,
    finetuned_vocab: usize,
    base_input_substitutions: u64,
    delta_bytes: Option<u64>,
    finetuned_bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos<'a>(
        fine: &'a [f32],
        applied: &'a [f32],
        base: &'a [f32],
        input: u32,
        next: u32,
        special: &'a BTreeSet<u32>,
    ) -> Position<'a> {
        Position {
            fine,
            applied,
            base,
            input,
            next,
            special,
        }
    }

    /// KL, perplexity and agreement against values worked out by hand.
    #[test]
    fn sums_match_hand_computed_values() {
        let none = BTreeSet::new();
        let mut s = Sums::default();
        // Identical distributions: KL 0; uniform over 4: perplexity 4.
        let u = [0.0f32; 4];
        s.add(&pos(&u, &u, &u, 0, 1, &none));
        let r = s.report(ctx());
        assert!(r.kl_finetuned_applied.abs() < 1e-12);
        assert!(r.kl_finetuned_base.abs() < 1e-12);
        assert!((r.perplexity_finetuned - 4.0).abs() < 1e-9);
        // Fine-tune p = (1/2, 1/2) over ids 0, 1 (logits 0, 0, −∞…); applied (1/4, 3/4).
        let mut s = Sums::default();
        let f = [0.0f32, 0.0];
        let a = [0.0f32, 3f32.ln()];
        s.add(&pos(&f, &a, &f, 0, 1, &none));
        let want = 0.5 * (0.5f64 / 0.25).ln() + 0.5 * (0.5f64 / 0.75).ln();
        let r = s.report(ctx());
        assert!(
            (r.kl_finetuned_applied - want).abs() < 1e-7,
            "{}",
            r.kl_finetuned_applied
        );
        assert!((r.perplexity_applied - 4.0 / 3.0).abs() < 1e-6);
        // The fine-tune's top-1 is id 0 (the first of equals), the applied model's id 1.
        assert_eq!(r.top1_agreement.applied, 0.0);
        assert_eq!(r.top1_agreement.base, 1.0);
    }

    /// The base's smaller vocabulary: KL over its ids with the fine-tune renormalised there, and
    /// positions whose next token it lacks left out of the common perplexity.
    #[test]
    fn a_smaller_base_vocabulary_is_handled_as_documented() {
        let special: BTreeSet<u32> = [2].into_iter().collect();
        let mut s = Sums::default();
        // Fine-tune: ids 0, 1, 2 with p = 1/4, 1/4, 1/2; the base has ids 0, 1 only, p = 1/2, 1/2.
        let f = [0.0f32, 0.0, 2f32.ln()];
        let b = [0.0f32, 0.0];
        s.add(&pos(&f, &f, &b, 0, 2, &special));
        s.add(&pos(&f, &f, &b, 2, 0, &special));
        let r = s.report(ctx());
        // Restricted and renormalised, the fine-tune is (1/2, 1/2) = the base: KL 0.
        assert!(r.kl_finetuned_base.abs() < 1e-7, "{}", r.kl_finetuned_base);
        assert_eq!(r.positions, 2);
        assert_eq!(r.common_positions, 1);
        assert!((r.common_perplexity.base - 2.0).abs() < 1e-6);
        assert!((r.common_perplexity.finetuned - 4.0).abs() < 1e-6);
        // The applied model is the fine-tune here: all of the gain, in either measure.
        assert_eq!((r.gain_kept, r.log_gain_kept), (1.0, 1.0));
        // Both positions involve the special id 2: next (first), input (second), and the fine-tune
        // predicts it at both; the base can never agree.
        let st = r.special_tokens;
        assert_eq!(st.positions, 2);
        assert_eq!(st.after_special.positions, 1);
        assert_eq!(st.special_next.positions, 1);
        assert_eq!(st.finetuned_predicts_special.positions, 2);
        assert_eq!(st.special_next.base, 0.0);
        assert_eq!((st.applied, st.base, st.finetuned_correct), (1.0, 0.0, 0.5));
    }

    fn ctx() -> ReportContext<'static> {
        ReportContext {
            corpus: Path::new("held.jsonl"),
            corpus_blake3: Hash::ZERO,
            conversations: 1,
            truncated: 0,
            max_tokens: 8,
            base_vocab: 2,
            finetuned_vocab: 3,
            base_input_substitutions: 0,
            delta_bytes: None,
            finetuned_bytes: 0,
        }
    }
}
