//! `zdn delta encode --base DIR --finetuned DIR -o OUT_DIR`: a folder delta
//! (docs/spec/folder-delta.md). Tensors are paired by name across any two shard layouts; a
//! tensor whose leading dimension grew or shrank is paired with the base's first rows, its new
//! rows stored exactly; side files identical to the base's are taken from the base, the others
//! sent as a patch against the base's file of the same path or carried whole; every shard's header is kept byte for byte. Streamed tensor by tensor: memory
//! is the tensor being encoded and its block, whatever the model's size.

use std::collections::HashMap;
use std::path::PathBuf;

use zdn_protocol::bitdelta::{
    assign_offsets, encode_prelude, encode_tensor, prelude_len, Choice, EncodeError, EncodeOptions,
    EncodedTensor, Encoding, Granularity, IndexEntry, Metadata, Selection, TensorData,
};
use zdn_protocol::folder::architecture::TensorClass;
use zdn_protocol::folder::delta::{
    base_rows, parse_header, ExactRows, FolderDelta, FolderDeltaError, GrownTensor, DELTA_MEMBER,
    EXACT_SUFFIX, GROWN_SUFFIX, HEADER_DIR, LAYOUT_MEMBER,
};
use zdn_protocol::folder::layout::is_safetensors;
use zdn_protocol::glob::Glob;
use zdn_protocol::safetensors::TensorInfo;
use zdn_protocol::Hash;

use super::base::{BaseError, BaseModel};
use super::encode_report::report;
pub use super::encode_report::{ClassReport, ExactRowsReport, FolderEncodeReport};
use super::output::{OutputDir, OutputDirError};
use super::selection::{resolve, Choices, Defaults};
use super::side_files::output_files;
use crate::fs::atomic_file::AtomicFileError;
use crate::fs::mapped_file::MappedFile;
use crate::fs::progress::Progress;
use crate::model::folder::{ModelFolder, ModelFolderError};

/// Inputs of a folder encode.
#[derive(Debug, Clone)]
pub struct FolderEncodeJob {
    /// The fine-tune: a model folder.
    pub finetuned: PathBuf,
    /// The folder delta to write (a new or empty folder).
    pub output: PathBuf,
    pub options: EncodeOptions,
    pub selection: Selection,
    pub model_name: Option<String>,
    pub progress: bool,
    /// What the user left to the architecture (`options.spec.granularity` is used only when
    /// `choices.granularity` is set).
    pub choices: Choices,
    /// Bits for the quantized tensors whose name matches, instead of `options.spec.bits` (the
    /// first match wins).
    pub bits_for: Vec<(Glob, u32)>,
}

#[derive(Debug, thiserror::Error)]
pub enum FolderEncodeError {
    #[error("the fine-tune: {0}")]
    Finetune(#[from] ModelFolderError),
    #[error("the base: {0}")]
    Base(#[from] BaseError),
    #[error("{path}: {problem}")]
    Shard { path: String, problem: String },
    #[error(transparent)]
    Layout(#[from] FolderDeltaError),
    #[error("tensor {name:?} is in both {first} and {second} of the fine-tune")]
    Duplicate {
        name: String,
        first: String,
        second: String,
    },
    #[error("tensor {name:?}: base shape {base:?} and fine-tune shape {finetuned:?} differ in more than the leading dimension")]
    ShapeMismatch {
        name: String,
        base: Vec<u64>,
        finetuned: Vec<u64>,
    },
    #[error("tensor {name:?}: base dtype {base} and fine-tune dtype {finetuned} are incompatible (only F32/F16/BF16 may differ)")]
    DtypeMismatch {
        name: String,
        base: zdn_protocol::DType,
        finetuned: zdn_protocol::DType,
    },
    #[error(
        "tensor {0:?} grew, and the fine-tune already has a tensor named as its new rows would be"
    )]
    GrownName(String),
    #[error("{0}: the fine-tune has no safetensors files")]
    NoWeights(PathBuf),
    #[error(transparent)]
    Encode(#[from] EncodeError),
    #[error(transparent)]
    Output(#[from] OutputDirError),
    #[error(transparent)]
    File(#[from] AtomicFileError),
    #[error("the written delta does not check out: {0}")]
    SelfCheck(FolderDeltaError),
}

/// One fine-tune tensor and how it pairs with the base.
pub(super) struct Pairing<'a> {
    pub(super) file: usize,
    pub(super) info: &'a TensorInfo,
    /// Rows paired with the base (the leading dimension of the common entry); `None`: the whole
    /// tensor, shapes equal or no base tensor.
    pub(super) common_rows: Option<u64>,
    pub(super) class: TensorClass,
    /// Rows of the common part kept exactly (vocabulary matrices under the decoder defaults).
    pub(super) exact: Vec<u64>,
}

/// Encodes the folder delta. See the module documentation.
pub fn encode_folder(
    job: &FolderEncodeJob,
    base: &dyn BaseModel,
) -> Result<FolderEncodeReport, FolderEncodeError> {
    let fine = ModelFolder::open(&job.finetuned)?;
    let fine_files = fine.files();
    let headers = shard_headers(fine_files)?;
    if headers.is_empty() {
        return Err(FolderEncodeError::NoWeights(job.finetuned.clone()));
    }
    let defaults = resolve(job.choices, fine_files);
    let mut pairs = pair_tensors(fine_files, &headers, base, &defaults)?;
    choose_exact_rows(&mut pairs, fine_files, base, &defaults)?;
    let (files, side_members) = output_files(fine_files, &headers, base)?;

    let mut out = OutputDir::create(&job.output)?;
    for m in &side_members {
        out.write(&m.path, &m.bytes)?;
    }
    for (i, h) in &headers {
        let (path, map) = &fine_files[*i];
        out.write(&format!("{HEADER_DIR}{path}"), &map.bytes()[..h.data_start])?;
    }
    let weights: u64 = pairs.iter().map(|p| p.info.range.len() as u64).sum();
    let progress = Progress::new(weights, "encode", job.progress);
    let mut meta = metadata(job, &pairs, base.object_hash(), defaults.granularity);
    if defaults.vocab_rows {
        meta.embeddings = zdn_protocol::bitdelta::EmbeddingPolicy::Quantize.code();
    }
    let mut entries = index_entries(&pairs);
    let target = Target {
        job,
        defaults: &defaults,
        base,
        files: fine_files,
    };
    write_bitdelta(
        &target,
        &mut out,
        &pairs,
        &mut meta,
        &mut entries,
        &progress,
    )?;
    progress.finish();

    let grown: Vec<GrownTensor> = pairs
        .iter()
        .filter(|p| p.common_rows.is_some_and(|k| k < p.info.shape[0]))
        .map(|p| GrownTensor {
            name: p.info.name.clone(),
            rows: format!("{}{GROWN_SUFFIX}", p.info.name),
        })
        .collect();
    let exact_rows = pairs
        .iter()
        .filter(|p| !p.exact.is_empty())
        .map(|p| ExactRows {
            name: p.info.name.clone(),
            rows: format!("{}{EXACT_SUFFIX}", p.info.name),
            indices: p.exact.clone(),
        })
        .collect();
    let layout = FolderDelta {
        format: FolderDelta::format_for(&files).into(),
        files,
        grown,
        exact_rows,
    };
    layout.check()?;
    out.write(LAYOUT_MEMBER, &layout.to_bytes())?;
    out.check(|members| {
        zdn_protocol::folder::delta_layout(members)
            .map(drop)
            .map_err(FolderEncodeError::SelfCheck)
    })?;
    let delta_bytes = out.commit()?;
    Ok(report(&target, layout, &pairs, meta, entries, delta_bytes))
}

/// The fine-tune's `*.safetensors` files: (file index, header), each checked to be exactly its
/// header and its tiled tensors (so the delta rebuilds it byte for byte).
fn shard_headers(
    files: &[(String, MappedFile)],
) -> Result<Vec<(usize, zdn_protocol::safetensors::SafetensorsHeader)>, FolderEncodeError> {
    let mut out = Vec::new();
    for (i, (path, map)) in files.iter().enumerate() {
        if !is_safetensors(path) {
            continue;
        }
        let shard = |problem: String| FolderEncodeError::Shard {
            path: path.clone(),
            problem,
        };
        let full = zdn_protocol::safetensors::parse(map.bytes())
            .map_err(|e| shard(format!("not a valid safetensors file: {e}")))?;
        let h = parse_header(path, &map.bytes()[..full.data_start])?;
        let len = zdn_protocol::folder::delta::file_len(&h);
        if len != map.len() as u64 {
            return Err(shard(format!(
                "{} bytes follow its last tensor: a delta rebuilds a shard as its header and tensors",
                map.len() as u64 - len
            )));
        }
        out.push((i, h));
    }
    Ok(out)
}

/// Every fine-tune tensor, in folder order, paired with the base by name.
fn pair_tensors<'a>(
    files: &[(String, MappedFile)],
    headers: &'a [(usize, zdn_protocol::safetensors::SafetensorsHeader)],
    base: &dyn BaseModel,
    defaults: &Defaults,
) -> Result<Vec<Pairing<'a>>, FolderEncodeError> {
    let mut owner: HashMap<&str, usize> = HashMap::new();
    let mut pairs = Vec::new();
    for (i, h) in headers {
        for t in &h.tensors {
            if let Some(first) = owner.insert(&t.name, *i) {
                return Err(FolderEncodeError::Duplicate {
                    name: t.name.clone(),
                    first: files[first].0.clone(),
                    second: files[*i].0.clone(),
                });
            }
            let common_rows = match base.layout(&t.name) {
                None => None,
                Some((bd, bs)) => {
                    if bd != t.dtype && !(bd.is_quantizable() && t.dtype.is_quantizable()) {
                        return Err(FolderEncodeError::DtypeMismatch {
                            name: t.name.clone(),
                            base: bd,
                            finetuned: t.dtype,
                        });
                    }
                    rows_paired(&t.name, bs, &t.shape)?
                }
            };
            pairs.push(Pairing {
                file: *i,
                info: t,
                common_rows,
                class: defaults.class(&t.name, &t.shape),
                exact: Vec::new(),
            });
        }
    }
    for p in &pairs {
        for suffix in [GROWN_SUFFIX, EXACT_SUFFIX] {
            if owner.contains_key(format!("{}{suffix}", p.info.name).as_str()) {
                return Err(FolderEncodeError::GrownName(p.info.name.clone()));
            }
        }
    }
    Ok(pairs)
}

/// Decides the exact rows of every vocabulary matrix the decoder defaults treat by rows.
fn choose_exact_rows(
    pairs: &mut [Pairing<'_>],
    files: &[(String, MappedFile)],
    base: &dyn BaseModel,
    defaults: &Defaults,
) -> Result<(), FolderEncodeError> {
    for p in pairs.iter_mut() {
        let t = p.info;
        if !defaults.by_rows(p.class) || base.layout(&t.name).is_none() {
            continue;
        }
        let map = &files[p.file].1;
        let rows = p.common_rows.unwrap_or(t.shape[0]);
        let fine = TensorData::new(t.dtype, &t.shape, &map.bytes()[t.range.clone()])
            .ok_or_else(|| rows_error(&t.name))?;
        p.exact = defaults.exact_rows_of(&t.name, &fine, rows, base)?;
        map.release(t.range.clone());
    }
    Ok(())
}

/// `None` when the shapes are equal; the rows in common when only the leading dimension differs.
fn rows_paired(name: &str, base: &[u64], fine: &[u64]) -> Result<Option<u64>, FolderEncodeError> {
    if base == fine {
        return Ok(None);
    }
    match (base.split_first(), fine.split_first()) {
        (Some((b0, brest)), Some((f0, frest))) if brest == frest => Ok(Some((*b0).min(*f0))),
        _ => Err(FolderEncodeError::ShapeMismatch {
            name: name.to_owned(),
            base: base.to_vec(),
            finetuned: fine.to_vec(),
        }),
    }
}

fn metadata(
    job: &FolderEncodeJob,
    pairs: &[Pairing<'_>],
    base_hash: Hash,
    granularity: Granularity,
) -> Metadata {
    let spec = job.options.spec;
    let name = job.model_name.clone().unwrap_or_else(|| {
        job.finetuned
            .file_name()
            .map(|n| n.to_string_lossy().chars().take(256).collect())
            .unwrap_or_default()
    });
    Metadata {
        base_hash,
        n_params: pairs.iter().map(|p| p.info.numel()).sum(),
        n_quantized: 0,
        bits: spec.bits as u8,
        granularity,
        clip_sigma: spec.clip_sigma.unwrap_or(0.0),
        embeddings: job.selection.embeddings.code(),
        model_name: name,
    }
}

/// The entries in file order: each tensor (its common rows, for a tensor paired by rows), then
/// its exact rows, then the new rows of a grown tensor.
fn index_entries(pairs: &[Pairing<'_>]) -> Vec<IndexEntry> {
    let entry = |name: String, t: &TensorInfo, rows: u64| {
        let mut shape = t.shape.clone();
        if let Some(d0) = shape.first_mut() {
            *d0 = rows;
        }
        IndexEntry {
            name,
            dtype: t.dtype,
            shape,
            encoding: Encoding::Unchanged,
            granularity: Granularity::Tensor,
            offset: 0,
            length: 0,
        }
    };
    let mut out = Vec::with_capacity(pairs.len());
    for p in pairs {
        let t = p.info;
        let all = t.shape.first().copied().unwrap_or(1);
        let k = p.common_rows.unwrap_or(all);
        out.push(entry(t.name.clone(), t, k));
        if !p.exact.is_empty() {
            let n = p.exact.len() as u64;
            out.push(entry(format!("{}{EXACT_SUFFIX}", t.name), t, n));
        }
        if k < all {
            out.push(entry(format!("{}{GROWN_SUFFIX}", t.name), t, all - k));
        }
    }
    out
}

/// What the blocks are encoded from and how.
pub(super) struct Target<'a> {
    pub(super) job: &'a FolderEncodeJob,
    pub(super) defaults: &'a Defaults,
    pub(super) base: &'a dyn BaseModel,
    pub(super) files: &'a [(String, MappedFile)],
}

impl Target<'_> {
    /// The choice and options for a tensor's (common) entry.
    fn plan(
        &self,
        p: &Pairing<'_>,
        target: &TensorData<'_>,
        base: Option<&TensorData<'_>>,
    ) -> (Choice, EncodeOptions) {
        let t = p.info;
        let mut opts = self.job.options;
        opts.spec.granularity = self.defaults.granularity;
        if let Some((_, bits)) = self.job.bits_for.iter().find(|(g, _)| g.matches(&t.name)) {
            opts.spec.bits = *bits;
        }
        let sel = &self.job.selection;
        if !self.defaults.by_rows(p.class) {
            let b = base.map(|b| (b.dtype, b.shape));
            return (sel.choose(&t.name, (t.dtype, target.shape), b), opts);
        }
        // A vocabulary matrix under the decoder defaults: quantized row by row (its exact rows
        // are written over it), unless excluded or not quantizable.
        opts.spec.granularity = Granularity::Row;
        let quantizable = target.dtype.is_quantizable()
            && base.is_some_and(|b| b.dtype.is_quantizable() && b.shape == target.shape);
        let excluded = sel.exclude.iter().any(|g| g.matches(&t.name));
        let choice = if quantizable && !excluded && !target.shape.contains(&0) {
            Choice::Quantize
        } else {
            Choice::Exact
        };
        (choice, opts)
    }
}

/// Writes `delta.bitdelta` into the output: a reserved prelude, the blocks, then the prelude.
fn write_bitdelta(
    target: &Target<'_>,
    out: &mut OutputDir,
    pairs: &[Pairing<'_>],
    meta: &mut Metadata,
    entries: &mut [IndexEntry],
    progress: &Progress,
) -> Result<(), FolderEncodeError> {
    let mut file = out.file(DELTA_MEMBER)?;
    let reserved = prelude_len(meta, entries);
    file.write_all(&vec![0u8; reserved])?;
    let mut next = 0usize;
    let mut buf = Vec::new();
    let opts = target.job.options;
    for p in pairs {
        let t = p.info;
        let map = &target.files[p.file].1;
        let bytes = &map.bytes()[t.range.clone()];
        // The entries of this tensor: its common rows (or all of it), its exact rows, its new rows.
        let common = entries[next].clone();
        let common = &common;
        let at = row_split(common, bytes).ok_or_else(|| rows_error(&t.name))?;
        let data = TensorData::new(t.dtype, &common.shape, &bytes[..at])
            .ok_or_else(|| rows_error(&t.name))?;
        let b = target
            .base
            .tensor(&t.name, &mut buf)?
            .and_then(|b| base_rows(common, b));
        let (choice, o) = target.plan(p, &data, b.as_ref());
        let enc = encode_tensor(&t.name, choice, b.as_ref(), &data, &o, None)?;
        file.write_all(&enc.block)?;
        set_block(&mut entries[next], &enc, meta);
        next += 1;
        let mut extra = Vec::new();
        if !p.exact.is_empty() {
            let rows = common.shape.first().copied().unwrap_or(1);
            let exact = gather_rows(&bytes[..at], rows, &p.exact);
            extra.push(exact.ok_or_else(|| rows_error(&t.name))?);
        }
        if at < bytes.len() {
            extra.push(bytes[at..].to_vec());
        }
        for rows in extra {
            let e = &entries[next];
            let data =
                TensorData::new(t.dtype, &e.shape, &rows).ok_or_else(|| rows_error(&t.name))?;
            let enc = encode_tensor(&e.name, Choice::Exact, None, &data, &opts, None)?;
            file.write_all(&enc.block)?;
            set_block(&mut entries[next], &enc, meta);
            next += 1;
        }
        map.release(t.range.clone());
        target.base.release(&t.name);
        progress.inc(t.range.len() as u64);
    }
    assign_offsets(meta, entries);
    let prelude = encode_prelude(meta, entries).map_err(EncodeError::from)?;
    file.write_at(0, &prelude)?;
    file.commit()?;
    Ok(())
}

/// Rows `indices` of a row-major tensor's bytes of `rows` rows, concatenated; `None` when an
/// index is outside.
fn gather_rows(bytes: &[u8], rows: u64, indices: &[u64]) -> Option<Vec<u8>> {
    let row = usize::try_from((bytes.len() as u64).checked_div(rows)?).ok()?;
    let mut out = Vec::with_capacity(row.checked_mul(indices.len())?);
    for &i in indices {
        let start = usize::try_from(i).ok()?.checked_mul(row)?;
        out.extend_from_slice(bytes.get(start..start.checked_add(row)?)?);
    }
    Some(out)
}

/// Where the common rows of a tensor's bytes end (the entry's byte length), if inside them.
fn row_split(common: &IndexEntry, bytes: &[u8]) -> Option<usize> {
    let at = usize::try_from(common.byte_len()).ok()?;
    (at <= bytes.len()).then_some(at)
}

fn rows_error(name: &str) -> FolderEncodeError {
    FolderEncodeError::Shard {
        path: name.to_owned(),
        problem: "the tensor's bytes do not split at its common rows".into(),
    }
}

fn set_block(entry: &mut IndexEntry, enc: &EncodedTensor, meta: &mut Metadata) {
    entry.encoding = enc.encoding;
    entry.granularity = enc.granularity;
    entry.length = enc.block.len() as u64;
    if enc.encoding.bits().is_some() {
        meta.n_quantized += entry.numel();
    }
}
