//! `zdn eval`: how close the delta-applied model's sentence embeddings are to the fine-tune's, on
//! held-out text, with the base model's closeness beside it as the floor.

use std::path::PathBuf;

use candle_core::Device;
use zdn_protocol::bitdelta::BitDeltaFile;
use zdn_protocol::Hash;

use crate::delta::apply::DeltaApplyError;
use crate::device::apply::{apply_delta, load_model, CandleApplyError};
use crate::fs::mapped_file::{MappedFile, OpenError};
use crate::model::file::{ModelFile, ModelFileError};
use crate::quality::bert::{BertError, BertWeights};
use crate::quality::corpus::{read_sentences, CorpusError};
use crate::quality::embedder::{row_cosines, EmbedderError, SentenceEmbedder};

/// The metric's name, as recorded in quality reports.
pub const METRIC: &str = "sentence-embedding cosine to the fine-tune (mean pooling, L2-normalised)";
/// Sentences per forward pass.
pub const BATCH: usize = 32;

#[derive(Debug, Clone)]
pub struct QualityJob {
    pub base: PathBuf,
    pub finetuned: PathBuf,
    pub delta: PathBuf,
    pub corpus: PathBuf,
    /// `config.json` / `tokenizer.json`; default: beside the base.
    pub config: Option<PathBuf>,
    pub tokenizer: Option<PathBuf>,
    /// Use only the first N sentences.
    pub max_sentences: Option<usize>,
    /// Apply even to a base other than the one the delta records.
    pub force: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum QualityError {
    #[error(transparent)]
    Open(#[from] OpenError),
    #[error(transparent)]
    Model(#[from] ModelFileError),
    #[error("{path} is not a valid .bitdelta file: {cause}")]
    Format {
        path: PathBuf,
        cause: zdn_protocol::bitdelta::FormatError,
    },
    #[error(transparent)]
    Apply(#[from] CandleApplyError),
    #[error(transparent)]
    Corpus(#[from] CorpusError),
    #[error(transparent)]
    Embedder(#[from] EmbedderError),
    #[error("{which} model: {source}")]
    Weights {
        which: &'static str,
        source: BertError,
    },
}

impl From<DeltaApplyError> for QualityError {
    fn from(e: DeltaApplyError) -> Self {
        QualityError::Apply(CandleApplyError::Delta(e))
    }
}

/// Mean, minimum and 5th percentile of per-sentence cosines.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CosineStats {
    pub mean: f64,
    pub min: f64,
    pub p5: f64,
}

impl CosineStats {
    pub fn of(v: &[f32]) -> Self {
        let mut s: Vec<f64> = v.iter().map(|&x| f64::from(x)).collect();
        s.sort_by(f64::total_cmp);
        let n = s.len();
        if n == 0 {
            return CosineStats {
                mean: f64::NAN,
                min: f64::NAN,
                p5: f64::NAN,
            };
        }
        CosineStats {
            mean: s.iter().sum::<f64>() / n as f64,
            min: s[0],
            p5: s[(n - 1) * 5 / 100],
        }
    }
}

/// What `zdn eval` measured; also the quality report a delta's manifest can carry.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct QualityReport {
    pub metric: String,
    pub corpus: String,
    pub corpus_blake3: Hash,
    pub sentences: usize,
    /// The delta-applied model vs the fine-tune.
    pub delta: CosineStats,
    /// The base vs the fine-tune: the floor.
    pub base: CosineStats,
    pub delta_bytes: u64,
    pub finetuned_bytes: u64,
}

/// Loads a safetensors model as BERT weights on `device`.
pub fn bert_weights(
    model: &ModelFile,
    device: &Device,
    which: &'static str,
) -> Result<BertWeights, QualityError> {
    let (tensors, _) = load_model(model, device)?;
    BertWeights::new(tensors).map_err(|source| QualityError::Weights { which, source })
}

pub fn quality(job: &QualityJob) -> Result<QualityReport, QualityError> {
    let device = Device::Cpu;
    let embedder = SentenceEmbedder::beside(
        &job.base,
        job.config.as_ref(),
        job.tokenizer.as_ref(),
        device.clone(),
    )?;
    let mut sentences = read_sentences(&job.corpus)?;
    if let Some(n) = job.max_sentences {
        sentences.truncate(n);
    }
    let corpus_blake3 = MappedFile::open(&job.corpus)?.blake3();
    let tokens = embedder.tokenize(&sentences)?;

    let base = ModelFile::open(&job.base)?;
    let fine = ModelFile::open(&job.finetuned)?;
    let dm = MappedFile::open(&job.delta)?;
    let delta = BitDeltaFile::parse(dm.bytes()).map_err(|cause| QualityError::Format {
        path: job.delta.clone(),
        cause,
    })?;
    let applied = apply_delta(&base, &delta, &device, job.force)?;
    let cfg = embedder.config();
    let check = |w: BertWeights, which| {
        w.check(cfg)
            .map(|_| w)
            .map_err(|source| QualityError::Weights { which, source })
    };
    let w_fine = check(bert_weights(&fine, &device, "fine-tuned")?, "fine-tuned")?;
    let w_base = check(bert_weights(&base, &device, "base")?, "base")?;
    let w_delta = check(
        BertWeights::new(applied.tensors).map_err(|source| QualityError::Weights {
            which: "delta-applied",
            source,
        })?,
        "delta-applied",
    )?;
    let e_fine = embedder.embed(&w_fine, &tokens, BATCH)?;
    let e_base = embedder.embed(&w_base, &tokens, BATCH)?;
    let e_delta = embedder.embed(&w_delta, &tokens, BATCH)?;
    let cos = |a| row_cosines(a, &e_fine).map_err(|e| QualityError::Embedder(e.into()));
    Ok(QualityReport {
        metric: METRIC.to_owned(),
        corpus: job
            .corpus
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        corpus_blake3,
        sentences: sentences.len(),
        delta: CosineStats::of(&cos(&e_delta)?),
        base: CosineStats::of(&cos(&e_base)?),
        delta_bytes: dm.len() as u64,
        finetuned_bytes: fine.file.len() as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_of_known_values() {
        let v: Vec<f32> = (0..=100).map(|i| i as f32 / 100.0).collect();
        let s = CosineStats::of(&v);
        assert!((s.mean - 0.5).abs() < 1e-6);
        assert_eq!(s.min, 0.0);
        assert!((s.p5 - 0.05).abs() < 1e-6);
        assert!(CosineStats::of(&[]).mean.is_nan());
    }
}
