//! Sentence embeddings of a BERT model: the tokenizer of the model's `tokenizer.json` (read by the
//! `tokenizers` crate), the candle forward pass of [`crate::quality::bert`], batching.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use tokenizers::Tokenizer;

use crate::quality::bert::{BertConfig, BertEncoder, BertError, BertWeights, TokenBatch};

/// sentence-transformers' `max_seq_length` for all-MiniLM-L6-v2; longer sentences are truncated.
pub const DEFAULT_MAX_TOKENS: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum EmbedderError {
    #[error("{path}: {problem}")]
    Tokenizer { path: String, problem: String },
    #[error("tokenizing sentence {index}: {problem}")]
    Encode { index: usize, problem: String },
    #[error(transparent)]
    Bert(#[from] BertError),
}

impl From<candle_core::Error> for EmbedderError {
    fn from(e: candle_core::Error) -> Self {
        EmbedderError::Bert(BertError::Candle(e))
    }
}

/// A tokenizer and a BERT forward pass; weights are passed per call, so one embedder serves the base,
/// the fine-tune and any delta-applied model.
#[derive(Debug)]
pub struct SentenceEmbedder {
    pub encoder: BertEncoder,
    tokenizer: Tokenizer,
    max_tokens: usize,
    pad_id: u32,
    pub device: Device,
}

impl SentenceEmbedder {
    /// Opens the model whose weights are at `weights`: its `config.json` and `tokenizer.json` are
    /// the given paths, or the files of those names beside the weights.
    pub fn beside(
        weights: &Path,
        config: Option<&PathBuf>,
        tokenizer: Option<&PathBuf>,
        device: Device,
    ) -> Result<Self, EmbedderError> {
        let side = |given: Option<&PathBuf>, name: &str| {
            given.cloned().unwrap_or_else(|| {
                weights
                    .parent()
                    .unwrap_or_else(|| Path::new("."))
                    .join(name)
            })
        };
        Self::open(
            &side(config, "config.json"),
            &side(tokenizer, "tokenizer.json"),
            device,
        )
    }

    /// Reads `config.json` and `tokenizer.json`.
    pub fn open(config: &Path, tokenizer: &Path, device: Device) -> Result<Self, EmbedderError> {
        let cfg = BertConfig::from_file(config)?;
        let terr = |problem: String| EmbedderError::Tokenizer {
            path: tokenizer.display().to_string(),
            problem,
        };
        let len = std::fs::metadata(tokenizer)
            .map_err(|e| terr(e.to_string()))?
            .len();
        if len > 64 << 20 {
            return Err(terr(format!(
                "{len} bytes; a tokenizer file is at most 64 MiB"
            )));
        }
        let mut tok = Tokenizer::from_file(tokenizer).map_err(|e| terr(e.to_string()))?;
        // Our own padding (to the longest of a batch) and truncation (to the model's limit).
        tok.with_padding(None);
        tok.with_truncation(None).map_err(|e| terr(e.to_string()))?;
        let pad_id = tok.token_to_id("[PAD]").unwrap_or(0);
        let max_tokens = DEFAULT_MAX_TOKENS.min(cfg.max_position_embeddings);
        Ok(SentenceEmbedder {
            encoder: BertEncoder::new(cfg),
            tokenizer: tok,
            max_tokens,
            pad_id,
            device,
        })
    }

    pub fn config(&self) -> &BertConfig {
        &self.encoder.cfg
    }

    /// Token ids with `[CLS]` … `[SEP]`, truncated to the model's limit (keeping the final `[SEP]`).
    pub fn tokenize(&self, sentences: &[String]) -> Result<Vec<Vec<u32>>, EmbedderError> {
        let vocab = self.encoder.cfg.vocab_size as u32;
        sentences
            .iter()
            .enumerate()
            .map(|(index, s)| {
                let enc =
                    self.tokenizer
                        .encode(s.as_str(), true)
                        .map_err(|e| EmbedderError::Encode {
                            index,
                            problem: e.to_string(),
                        })?;
                let mut ids = enc.get_ids().to_vec();
                if ids.len() > self.max_tokens {
                    let last = ids[ids.len() - 1];
                    ids.truncate(self.max_tokens - 1);
                    ids.push(last);
                }
                if let Some(bad) = ids.iter().find(|&&i| i >= vocab) {
                    return Err(EmbedderError::Encode {
                        index,
                        problem: format!("token id {bad} is outside the model's vocabulary"),
                    });
                }
                Ok(ids)
            })
            .collect()
    }

    /// Embeddings `[n, hidden]` of tokenized sentences, `batch` at a time.
    pub fn embed(
        &self,
        weights: &BertWeights,
        tokens: &[Vec<u32>],
        batch: usize,
    ) -> Result<Tensor, EmbedderError> {
        let mut parts = Vec::new();
        for chunk in tokens.chunks(batch.max(1)) {
            let b = self.batch(chunk)?;
            parts.push(self.encoder.embed(weights, &b)?);
        }
        Ok(Tensor::cat(&parts, 0)?)
    }

    pub fn batch(&self, tokens: &[Vec<u32>]) -> Result<TokenBatch, EmbedderError> {
        Ok(TokenBatch::new(tokens, self.pad_id, &self.device)?)
    }
}

/// Cosine of each row of `a` with the same row of `b` (rows are unit vectors: a dot product).
pub fn row_cosines(a: &Tensor, b: &Tensor) -> Result<Vec<f32>, candle_core::Error> {
    (a * b)?.sum(1)?.to_vec1::<f32>()
}
