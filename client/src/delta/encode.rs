//! `zdn delta encode`: base + fine-tune → `.bitdelta`, streamed tensor by tensor to disk.

use std::path::{Path, PathBuf};

use zdn_protocol::bitdelta::{
    assign_offsets, encode_prelude, encode_tensor, prelude_len, EncodeError, EncodeOptions,
    Encoding, IndexEntry, Metadata, Selection,
};
use zdn_protocol::{DType, Hash};

use crate::fs::atomic_file::{AtomicFile, AtomicFileError};
use crate::fs::progress::Progress;
use crate::model::file::{ModelFile, ModelFileError};

/// Inputs of an encode.
#[derive(Debug, Clone)]
pub struct EncodeJob {
    pub base: PathBuf,
    pub finetuned: PathBuf,
    pub output: PathBuf,
    pub options: EncodeOptions,
    pub selection: Selection,
    /// Recorded in the file; defaults to the fine-tune's file stem.
    pub model_name: Option<String>,
    pub progress: bool,
}

/// What an encode did, per tensor and in total.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EncodeReport {
    pub output: PathBuf,
    pub file_bytes: u64,
    pub base_hash: Hash,
    pub n_params: u64,
    pub n_quantized: u64,
    pub bits_per_param: f64,
    /// Fine-tune size in its own dtypes ÷ delta size.
    pub ratio_vs_finetuned: f64,
    /// Fine-tune size if it were fp16 ÷ delta size.
    pub ratio_vs_fp16: f64,
    pub tensors: Vec<EncodedTensorReport>,
    /// Base tensors the fine-tune lacks: not part of the output.
    pub skipped_base_only: Vec<String>,
    /// Fine-tune tensors the base lacks: stored raw.
    pub finetune_only: Vec<String>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct EncodedTensorReport {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<u64>,
    pub encoding: Encoding,
    pub block_bytes: u64,
    /// The tensor's class, when the encode chose by architecture (a folder encode).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub class: Option<zdn_protocol::folder::architecture::TensorClass>,
}

#[derive(Debug, thiserror::Error)]
pub enum DeltaEncodeError {
    #[error(transparent)]
    Model(#[from] ModelFileError),
    #[error("tensor {name:?}: base shape {base:?} differs from fine-tune shape {finetuned:?}")]
    ShapeMismatch {
        name: String,
        base: Vec<u64>,
        finetuned: Vec<u64>,
    },
    #[error("tensor {name:?}: base dtype {base} and fine-tune dtype {finetuned} are incompatible (only F32/F16/BF16 may differ)")]
    DtypeMismatch {
        name: String,
        base: DType,
        finetuned: DType,
    },
    #[error("the fine-tune {0} has no tensors")]
    Empty(PathBuf),
    #[error(transparent)]
    Encode(#[from] EncodeError),
    #[error(transparent)]
    Output(#[from] AtomicFileError),
}

/// Encodes the delta. Memory: the two input tensors being read (mapped, released after use) plus the
/// encoded block.
pub fn encode(job: &EncodeJob) -> Result<EncodeReport, DeltaEncodeError> {
    let base = ModelFile::open(&job.base)?;
    let fine = ModelFile::open(&job.finetuned)?;
    if fine.header.tensors.is_empty() {
        return Err(DeltaEncodeError::Empty(job.finetuned.clone()));
    }
    // Check every pair before writing anything.
    let finetune_only = check_pairs(&base, &fine)?;
    let skipped_base_only = base_only(&base, &fine);

    let total = (base.file.len() + fine.file.len()) as u64;
    let progress = Progress::new(total, "encode", job.progress);
    let base_hash = base.file.blake3();
    progress.inc(base.file.len() as u64);

    let mut meta = metadata(job, &fine, base_hash);
    let mut entries = unchanged_entries(&fine);
    let reserved = write_delta(job, &base, &fine, &mut meta, &mut entries, &progress)?;
    progress.finish();

    let file_bytes = reserved as u64 + entries.iter().map(|e| e.length).sum::<u64>();
    let fine_bytes: u64 = fine
        .header
        .tensors
        .iter()
        .map(|t| t.range.len() as u64)
        .sum();
    let fp16_bytes = meta.n_params * 2;
    Ok(EncodeReport {
        output: job.output.clone(),
        file_bytes,
        base_hash,
        n_params: meta.n_params,
        n_quantized: meta.n_quantized,
        bits_per_param: ratio(file_bytes as f64 * 8.0, meta.n_params as f64),
        ratio_vs_finetuned: ratio(fine_bytes as f64, file_bytes as f64),
        ratio_vs_fp16: ratio(fp16_bytes as f64, file_bytes as f64),
        tensors: entries
            .into_iter()
            .map(|e| EncodedTensorReport {
                name: e.name,
                dtype: e.dtype,
                shape: e.shape,
                encoding: e.encoding,
                block_bytes: e.length,
                class: None,
            })
            .collect(),
        skipped_base_only,
        finetune_only,
    })
}

/// Checks that every fine-tune tensor the base also has agrees with it in shape and (but for
/// float widths) dtype; returns the fine-tune tensors the base lacks.
fn check_pairs(base: &ModelFile, fine: &ModelFile) -> Result<Vec<String>, DeltaEncodeError> {
    let mut finetune_only = Vec::new();
    for t in &fine.header.tensors {
        match base.get(&t.name) {
            None => finetune_only.push(t.name.clone()),
            Some(b) if b.shape != t.shape => {
                return Err(DeltaEncodeError::ShapeMismatch {
                    name: t.name.clone(),
                    base: b.shape.clone(),
                    finetuned: t.shape.clone(),
                })
            }
            Some(b)
                if b.dtype != t.dtype
                    && !(b.dtype.is_quantizable() && t.dtype.is_quantizable()) =>
            {
                return Err(DeltaEncodeError::DtypeMismatch {
                    name: t.name.clone(),
                    base: b.dtype,
                    finetuned: t.dtype,
                })
            }
            Some(_) => {}
        }
    }
    Ok(finetune_only)
}

/// The base tensors the fine-tune lacks.
fn base_only(base: &ModelFile, fine: &ModelFile) -> Vec<String> {
    base.header
        .tensors
        .iter()
        .filter(|b| fine.get(&b.name).is_none())
        .map(|b| b.name.clone())
        .collect()
}

/// The output's metadata before any tensor is encoded (`n_quantized` counts up as they are).
fn metadata(job: &EncodeJob, fine: &ModelFile, base_hash: Hash) -> Metadata {
    let spec = job.options.spec;
    Metadata {
        base_hash,
        n_params: fine.n_params(),
        n_quantized: 0,
        bits: spec.bits as u8,
        granularity: spec.granularity,
        clip_sigma: spec.clip_sigma.unwrap_or(0.0),
        embeddings: job.selection.embeddings.code(),
        model_name: job
            .model_name
            .clone()
            .unwrap_or_else(|| default_name(&job.finetuned)),
    }
}

/// The fine-tune's tensors as index entries, every encoding, offset and length still to be decided.
fn unchanged_entries(fine: &ModelFile) -> Vec<IndexEntry> {
    fine.header
        .tensors
        .iter()
        .map(|t| IndexEntry {
            name: t.name.clone(),
            dtype: t.dtype,
            shape: t.shape.clone(),
            encoding: Encoding::Unchanged,
            granularity: zdn_protocol::bitdelta::Granularity::Tensor,
            offset: 0,
            length: 0,
        })
        .collect()
}

/// Writes the `.bitdelta` file: a reserved prelude, every fine-tune tensor's block (filling in
/// `entries` and `meta.n_quantized`), then the prelude over the reserved bytes; renamed into
/// place when complete. Returns the prelude's length.
fn write_delta(
    job: &EncodeJob,
    base: &ModelFile,
    fine: &ModelFile,
    meta: &mut Metadata,
    entries: &mut [IndexEntry],
    progress: &Progress,
) -> Result<usize, DeltaEncodeError> {
    let mut out = AtomicFile::create(&job.output)?;
    let reserved = prelude_len(meta, entries);
    out.write_all(&vec![0u8; reserved])?;
    for (t, entry) in fine.header.tensors.iter().zip(entries.iter_mut()) {
        let b = base.get(&t.name);
        let bdata = b.map(|b| base.data(b));
        let tdata = fine.data(t);
        let choice = job.selection.choose(
            &t.name,
            (t.dtype, &t.shape),
            bdata.as_ref().map(|b| (b.dtype, b.shape)),
        );
        let enc = encode_tensor(&t.name, choice, bdata.as_ref(), &tdata, &job.options, None)?;
        out.write_all(&enc.block)?;
        entry.encoding = enc.encoding;
        entry.granularity = enc.granularity;
        entry.length = enc.block.len() as u64;
        if enc.encoding.bits().is_some() {
            meta.n_quantized += t.numel();
        }
        fine.release(t);
        if let Some(b) = b {
            base.release(b);
        }
        progress.inc(t.range.len() as u64);
    }
    assign_offsets(meta, entries);
    let prelude = encode_prelude(meta, entries).map_err(EncodeError::from)?;
    debug_assert_eq!(prelude.len(), reserved);
    out.write_at(0, &prelude)?;
    out.commit()?;
    Ok(reserved)
}

pub(crate) fn ratio(a: f64, b: f64) -> f64 {
    if b == 0.0 {
        0.0
    } else {
        a / b
    }
}

fn default_name(path: &Path) -> String {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    // Model files are usually all called model.safetensors: the directory names the model.
    let name = match path.parent().and_then(|p| p.file_name()) {
        Some(dir) if stem == "model" => dir.to_string_lossy().into_owned(),
        _ => stem,
    };
    // The format caps the name at 1024 bytes; 256 characters always fit.
    name.chars().take(256).collect()
}
