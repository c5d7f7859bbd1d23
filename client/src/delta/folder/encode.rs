//! `zdn delta encode --base DIR --finetuned DIR -o OUT_DIR`: a folder delta
//! (docs/spec/folder-delta.md). Tensors are paired by name across any two shard layouts; a
//! tensor whose leading dimension grew or shrank is paired with the base's first rows, its new
//! rows stored exactly; side files identical to the base's are taken from the base, the others
//! carried exactly; every shard's header is kept byte for byte. Streamed tensor by tensor: memory
//! is the tensor being encoded and its block, whatever the model's size.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

use zdn_protocol::bitdelta::{
    assign_offsets, encode_prelude, encode_tensor, prelude_len, Choice, EncodeError, EncodeOptions,
    EncodedTensor, Encoding, Granularity, IndexEntry, Metadata, Selection, TensorData,
};
use zdn_protocol::folder::delta::{
    base_rows, parse_header, FolderDelta, FolderDeltaError, GrownTensor, OutputFile, Source,
    CARRIED_DIR, DELTA_MEMBER, FORMAT, GROWN_SUFFIX, HEADER_DIR, LAYOUT_MEMBER,
};
use zdn_protocol::folder::layout::is_safetensors;
use zdn_protocol::safetensors::TensorInfo;
use zdn_protocol::Hash;

use super::base::{BaseError, BaseModel};
use super::output::{OutputDir, OutputDirError};
use crate::delta::encode::{ratio, EncodedTensorReport};
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
}

/// What a folder encode did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FolderEncodeReport {
    pub output: PathBuf,
    /// Bytes of the whole delta folder.
    pub delta_bytes: u64,
    /// BLAKE3 of the base object the delta records.
    pub base_hash: Hash,
    pub n_params: u64,
    pub n_quantized: u64,
    pub bits_per_param: f64,
    /// Fine-tune folder bytes ÷ delta folder bytes.
    pub ratio_vs_finetuned: f64,
    pub files: Vec<OutputFile>,
    pub tensors: Vec<EncodedTensorReport>,
    /// Tensors whose leading dimension grew (vocabulary growth): new rows stored exactly.
    pub grown: Vec<String>,
    /// Tensors paired with the first rows of a bigger base tensor (vocabulary shrink).
    pub shrunk: Vec<String>,
    /// Base tensors the fine-tune lacks.
    pub skipped_base_only: Vec<String>,
    /// Fine-tune tensors the base lacks: stored exactly.
    pub finetune_only: Vec<String>,
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
struct Pairing<'a> {
    file: usize,
    info: &'a TensorInfo,
    /// Rows paired with the base (the leading dimension of the common entry); `None`: the whole
    /// tensor, shapes equal or no base tensor.
    common_rows: Option<u64>,
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
    let pairs = pair_tensors(fine_files, &headers, base)?;
    let (files, carried) = output_files(fine_files, &headers, base)?;

    let mut out = OutputDir::create(&job.output)?;
    for (f, i) in &carried {
        out.write(
            &format!("{CARRIED_DIR}{}", f.path),
            fine_files[*i].1.bytes(),
        )?;
    }
    for (i, h) in &headers {
        let (path, map) = &fine_files[*i];
        out.write(&format!("{HEADER_DIR}{path}"), &map.bytes()[..h.data_start])?;
    }
    let weights: u64 = pairs.iter().map(|p| p.info.range.len() as u64).sum();
    let progress = Progress::new(weights, "encode", job.progress);
    let mut meta = metadata(job, &pairs, base.object_hash());
    let mut entries = index_entries(&pairs);
    write_bitdelta(
        job,
        &mut out,
        base,
        fine_files,
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
    let layout = FolderDelta {
        format: FORMAT.into(),
        files,
        grown,
        exact_rows: Vec::new(),
    };
    layout.check()?;
    out.write(LAYOUT_MEMBER, &layout.to_bytes())?;
    out.check(|members| {
        zdn_protocol::folder::delta_layout(members)
            .map(drop)
            .map_err(FolderEncodeError::SelfCheck)
    })?;
    let delta_bytes = out.commit()?;
    Ok(report(
        job,
        layout,
        &pairs,
        base,
        fine_files,
        meta,
        entries,
        delta_bytes,
    ))
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
            });
        }
    }
    for p in pairs.iter().filter(|p| p.common_rows.is_some()) {
        let rows = format!("{}{GROWN_SUFFIX}", p.info.name);
        if owner.contains_key(rows.as_str()) {
            return Err(FolderEncodeError::GrownName(p.info.name.clone()));
        }
    }
    Ok(pairs)
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

/// The fine-tune's files as the layout lists them, and the carried ones (with their file index).
type OutputFiles = (Vec<OutputFile>, Vec<(OutputFile, usize)>);

/// The fine-tune's files as the layout lists them, and the carried ones (with their file index).
fn output_files(
    files: &[(String, MappedFile)],
    headers: &[(usize, zdn_protocol::safetensors::SafetensorsHeader)],
    base: &dyn BaseModel,
) -> Result<OutputFiles, BaseError> {
    let shards: HashSet<usize> = headers.iter().map(|(i, _)| *i).collect();
    let mut out = Vec::with_capacity(files.len());
    let mut carried = Vec::new();
    for (i, (path, map)) in files.iter().enumerate() {
        let bytes = map.bytes();
        let f = if shards.contains(&i) {
            OutputFile {
                path: path.clone(),
                from: Source::Tensors,
                len: bytes.len() as u64,
                blake3: None,
            }
        } else {
            let from = if base.same_file(path, bytes)? {
                Source::Base
            } else {
                Source::Carried
            };
            OutputFile {
                path: path.clone(),
                from,
                len: bytes.len() as u64,
                blake3: Some(Hash::of(bytes)),
            }
        };
        if f.from == Source::Carried {
            carried.push((f.clone(), i));
        }
        out.push(f);
    }
    Ok((out, carried))
}

fn metadata(job: &FolderEncodeJob, pairs: &[Pairing<'_>], base_hash: Hash) -> Metadata {
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
        granularity: spec.granularity,
        clip_sigma: spec.clip_sigma.unwrap_or(0.0),
        embeddings: job.selection.embeddings.code(),
        model_name: name,
    }
}

/// The entries in file order: each tensor (its common rows, for a tensor paired by rows), then
/// the new rows of a grown tensor.
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
        if k < all {
            out.push(entry(format!("{}{GROWN_SUFFIX}", t.name), t, all - k));
        }
    }
    out
}

/// Writes `delta.bitdelta` into the output: a reserved prelude, the blocks, then the prelude.
#[allow(clippy::too_many_arguments)]
fn write_bitdelta(
    job: &FolderEncodeJob,
    out: &mut OutputDir,
    base: &dyn BaseModel,
    files: &[(String, MappedFile)],
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
    for p in pairs {
        let t = p.info;
        let map = &files[p.file].1;
        let bytes = &map.bytes()[t.range.clone()];
        // The entries of this tensor: its common rows (or all of it), then any new rows.
        let common = &entries[next];
        let at = row_split(common, bytes).ok_or_else(|| rows_error(&t.name))?;
        let target = TensorData::new(t.dtype, &common.shape, &bytes[..at])
            .ok_or_else(|| rows_error(&t.name))?;
        let b = base
            .tensor(&t.name, &mut buf)?
            .and_then(|b| base_rows(common, b));
        let choice = job.selection.choose(
            &t.name,
            (t.dtype, target.shape),
            b.as_ref().map(|b| (b.dtype, b.shape)),
        );
        let enc = encode_tensor(&t.name, choice, b.as_ref(), &target, &job.options, None)?;
        file.write_all(&enc.block)?;
        set_block(&mut entries[next], &enc, meta);
        next += 1;
        if at < bytes.len() {
            let e = &entries[next];
            let rows = TensorData::new(t.dtype, &e.shape, &bytes[at..])
                .ok_or_else(|| rows_error(&t.name))?;
            let enc = encode_tensor(&e.name, Choice::Exact, None, &rows, &job.options, None)?;
            file.write_all(&enc.block)?;
            set_block(&mut entries[next], &enc, meta);
            next += 1;
        }
        map.release(t.range.clone());
        base.release(&t.name);
        progress.inc(t.range.len() as u64);
    }
    assign_offsets(meta, entries);
    let prelude = encode_prelude(meta, entries).map_err(EncodeError::from)?;
    file.write_at(0, &prelude)?;
    file.commit()?;
    Ok(())
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

/// The report, from what was written.
#[allow(clippy::too_many_arguments)]
fn report(
    job: &FolderEncodeJob,
    layout: FolderDelta,
    pairs: &[Pairing<'_>],
    base: &dyn BaseModel,
    files: &[(String, MappedFile)],
    meta: Metadata,
    entries: Vec<IndexEntry>,
    delta_bytes: u64,
) -> FolderEncodeReport {
    let fine_bytes: u64 = files.iter().map(|(_, m)| m.len() as u64).sum();
    let names: HashSet<&str> = pairs.iter().map(|p| p.info.name.as_str()).collect();
    let by_rows = |grew: bool| -> Vec<String> {
        pairs
            .iter()
            .filter(|p| p.common_rows.is_some_and(|k| (k < p.info.shape[0]) == grew))
            .map(|p| p.info.name.clone())
            .collect()
    };
    FolderEncodeReport {
        output: job.output.clone(),
        delta_bytes,
        base_hash: meta.base_hash,
        n_params: meta.n_params,
        n_quantized: meta.n_quantized,
        bits_per_param: ratio(delta_bytes as f64 * 8.0, meta.n_params as f64),
        ratio_vs_finetuned: ratio(fine_bytes as f64, delta_bytes as f64),
        files: layout.files,
        grown: by_rows(true),
        shrunk: by_rows(false),
        skipped_base_only: base
            .tensor_names()
            .into_iter()
            .filter(|n| !names.contains(n))
            .map(str::to_owned)
            .collect(),
        finetune_only: pairs
            .iter()
            .filter(|p| base.layout(&p.info.name).is_none())
            .map(|p| p.info.name.clone())
            .collect(),
        tensors: entries
            .into_iter()
            .map(|e| EncodedTensorReport {
                name: e.name,
                dtype: e.dtype,
                shape: e.shape,
                encoding: e.encoding,
                block_bytes: e.length,
            })
            .collect(),
    }
}
