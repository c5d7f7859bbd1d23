//! Applying a folder delta: the fine-tune's folder rebuilt from its base — a folder on disk or a
//! base object in the store, read tensor by tensor — and the delta — a folder on disk or a delta
//! object in the store. Every check of the format is made before the first byte is written
//! (`zdn_protocol::folder::check_delta`); the output goes to a temporary folder renamed into place when complete.
//! Memory: one reconstructed tensor, plus one base tensor when the base is in the store.

use std::io::Write;
use std::path::{Path, PathBuf};

use zdn_node::store::{ObjectStore, StoreError};
use zdn_protocol::bitdelta::{BitDeltaFile, FormatError, ReconstructError};
use zdn_protocol::folder::delta::{FolderDelta, FolderDeltaError, Source, DELTA_MEMBER};
use zdn_protocol::folder::patch::PatchedFileError;
use zdn_protocol::folder::FilePlan;
use zdn_protocol::manifest::{Kind, SignedManifest};
use zdn_protocol::Hash;

use super::base::{BaseError, BaseModel};
use super::rebuild::{
    checked_layout, output_entries, rebuild_part, write_by_rows, write_side_file, MappedDelta,
    Part, Scratch,
};
use crate::fs::atomic_file::partial_sibling;
use crate::fs::mapped_file::{MappedFile, OpenError};
use crate::fs::object_output::{FolderOutput, ObjectOutputError};
use crate::fs::partial::Partial;
use crate::fs::progress::Progress;
use crate::model::folder::{ModelFolder, ModelFolderError};

#[derive(Debug, thiserror::Error)]
pub enum FolderApplyError {
    #[error("the delta folder: {0}")]
    Folder(#[from] ModelFolderError),
    #[error(transparent)]
    Open(#[from] OpenError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0} is a {1} object, not a folder delta")]
    NotAFolderDelta(Hash, &'static str),
    #[error("{DELTA_MEMBER}: {0}")]
    Format(#[from] FormatError),
    #[error("not a valid folder delta: {0}")]
    Layout(#[from] FolderDeltaError),
    #[error("the delta was made for base object {expected}; the base given is {actual} (pass --force to apply anyway)")]
    WrongBase { expected: Hash, actual: Hash },
    #[error("the base: {0}")]
    Base(#[from] BaseError),
    #[error("{path}: the base's file is {found:?} bytes, the delta expects {want} (is this the delta's base?)")]
    BaseFile {
        path: String,
        found: Option<u64>,
        want: u64,
    },
    #[error("{path}: patched from the base's file of that path, which {problem} (is this the delta's base?)")]
    PatchBase { path: String, problem: String },
    #[error("{path}: patched: {error}")]
    Patched {
        path: String,
        error: PatchedFileError,
    },
    #[error("{path}: the bytes written hash to {actual}, the delta says {expected}")]
    FileHash {
        path: String,
        expected: Hash,
        actual: Hash,
    },
    #[error(transparent)]
    Reconstruct(#[from] ReconstructError),
    #[error(transparent)]
    Output(#[from] ObjectOutputError),
    #[error("{path}: {cause}")]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("the fine-tune's folder is larger than 2^64 bytes")]
    Overflow,
    #[error("tensor {name:?} is {bytes} bytes: more memory than this machine can give it")]
    TooLarge { name: String, bytes: u64 },
    #[error("not a valid LoRA adapter: {0}")]
    Adapter(#[from] zdn_protocol::folder::adapter::AdapterError),
    #[error(transparent)]
    Merge(#[from] zdn_protocol::lora::MergeError),
    #[error("the adapter has no tensor {0:?}")]
    AdapterTensor(String),
    #[error("the base's {path}: {problem}")]
    BaseShard { path: String, problem: String },
    #[error("mixing tensor {name:?}: {problem}")]
    Mix { name: String, problem: String },
    #[error("tensor {0:?}: its rows could not be rebuilt a block at a time")]
    Rows(String),
    #[error("the adapter changes {want} base tensors, {got} were found in the base's shards")]
    Unmerged { want: usize, got: usize },
}

/// Where a folder delta is read from.
#[derive(Debug)]
pub enum DeltaSource<'s> {
    /// A folder on disk (as `zdn delta encode` writes it).
    Loose(ModelFolder),
    /// A delta object in the store; `delta.bitdelta` is copied to a temporary file beside the
    /// output (so memory stays bounded) and mapped.
    Store(Box<StoredDelta<'s>>),
}

/// A folder delta of the store, its `delta.bitdelta` copied out and mapped.
pub struct StoredDelta<'s> {
    store: &'s ObjectStore,
    manifest: SignedManifest,
    bitdelta: MappedFile,
    _tmp: Partial<tempfile::NamedTempFile>,
}

impl std::fmt::Debug for StoredDelta<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("StoredDelta")
            .field(&self.manifest.hash())
            .finish()
    }
}

impl<'s> DeltaSource<'s> {
    pub fn loose(dir: &Path) -> Result<Self, FolderApplyError> {
        Ok(DeltaSource::Loose(ModelFolder::open(dir)?))
    }

    /// The folder delta `hash` of the store, for an output at `output`.
    pub fn store(
        store: &'s ObjectStore,
        hash: &Hash,
        output: &Path,
    ) -> Result<Self, FolderApplyError> {
        let manifest = store.require_manifest(hash)?;
        if manifest.manifest.kind != Kind::Delta || !manifest.manifest.is_folder() {
            let what = if manifest.manifest.kind == Kind::Delta {
                "single-file delta"
            } else {
                manifest.manifest.kind.as_str()
            };
            return Err(FolderApplyError::NotAFolderDelta(*hash, what));
        }
        let (tmp, bitdelta) = member_to_temp(store, &manifest, DELTA_MEMBER, output)?;
        Ok(DeltaSource::Store(Box::new(StoredDelta {
            store,
            manifest,
            bitdelta,
            _tmp: tmp,
        })))
    }

    /// The delta folder's file table: (path, length).
    pub(crate) fn table(&self) -> Vec<(&str, u64)> {
        match self {
            DeltaSource::Loose(f) => f
                .files()
                .iter()
                .map(|(p, m)| (p.as_str(), m.len() as u64))
                .collect(),
            DeltaSource::Store(d) => d
                .manifest
                .manifest
                .files
                .iter()
                .map(|f| (f.path.as_str(), f.len))
                .collect(),
        }
    }

    pub(crate) fn bitdelta_map(&self) -> Result<&MappedFile, FolderApplyError> {
        match self {
            DeltaSource::Loose(f) => f
                .files()
                .iter()
                .find(|(p, _)| p == DELTA_MEMBER)
                .map(|(_, m)| m)
                .ok_or_else(|| FolderDeltaError::MissingMember(DELTA_MEMBER.into()).into()),
            DeltaSource::Store(d) => Ok(&d.bitdelta),
        }
    }

    /// Writes member `path` to `out`.
    pub(crate) fn write_member(
        &self,
        path: &str,
        out: &mut dyn Write,
    ) -> Result<(), FolderApplyError> {
        match self {
            DeltaSource::Loose(f) => {
                let bytes = f
                    .files()
                    .iter()
                    .find(|(p, _)| p == path)
                    .map(|(_, m)| m.bytes())
                    .ok_or_else(|| FolderDeltaError::MissingMember(path.into()))?;
                out.write_all(bytes).map_err(|cause| FolderApplyError::Io {
                    path: path.into(),
                    cause,
                })
            }
            DeltaSource::Store(d) => {
                d.store.read_member(&d.manifest, path, out)?;
                Ok(())
            }
        }
    }

    /// Reads a small member (the layout, a header) into memory; its size was checked against a
    /// cap by the caller (from the file table).
    pub(crate) fn read_member(&self, path: &str) -> Result<Vec<u8>, FolderApplyError> {
        let mut v = Vec::new();
        self.write_member(path, &mut v)?;
        Ok(v)
    }
}

/// Copies member `member` of the folder object `m` describes to a temporary file beside `output` (verified
/// chunk by chunk) and maps it: a large member is read without holding it in memory. The file is
/// removed when the returned handle drops.
pub(super) fn member_to_temp(
    store: &ObjectStore,
    m: &SignedManifest,
    member: &str,
    output: &Path,
) -> Result<(Partial<tempfile::NamedTempFile>, MappedFile), FolderApplyError> {
    let (dir, prefix) = partial_sibling(output);
    let io = |cause| FolderApplyError::Io {
        path: dir.clone(),
        cause,
    };
    let mut tmp = Partial::create(|| {
        tempfile::Builder::new()
            .prefix(&prefix)
            .suffix(".member.partial")
            .tempfile_in(&dir)
    })
    .map_err(io)?;
    {
        let mut w = std::io::BufWriter::new(tmp.as_file_mut());
        store.read_member(m, member, &mut w)?;
        w.flush().map_err(io)?;
    }
    let map = MappedFile::open(tmp.path())?;
    Ok((tmp, map))
}

/// What an apply wrote.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FolderApplyReport {
    pub output: PathBuf,
    pub files: usize,
    pub tensors: usize,
    pub bytes_written: u64,
    /// The base object's BLAKE3.
    pub base_hash: Hash,
    /// False when `force` applied the delta to another base than the one it records.
    pub base_verified: bool,
}

/// Rebuilds the fine-tune's folder at `output`.
pub fn apply_folder(
    delta: &DeltaSource<'_>,
    base: &dyn BaseModel,
    output: &Path,
    force: bool,
    progress: bool,
) -> Result<FolderApplyReport, FolderApplyError> {
    let map = delta.bitdelta_map()?;
    let bitdelta = BitDeltaFile::parse(map.bytes())?;
    let expected = bitdelta.meta.base_hash;
    let actual = base.object_hash();
    if expected != actual && !force {
        return Err(FolderApplyError::WrongBase { expected, actual });
    }
    let (layout, plans) = checked_layout(delta, &bitdelta)?;
    let (entries, total) = output_entries(&layout)?;
    let mut out = FolderOutput::create(output, &entries, false)?;
    let mapped = MappedDelta::new(&bitdelta, map);
    let bar = Progress::new(total, "apply", progress);
    let mut plans = plans.iter();
    let mut tensors = 0;
    for f in &layout.files {
        if f.from == Source::Tensors {
            let plan = plans
                .next()
                .ok_or(FolderDeltaError::MissingMember(f.path.clone()))?;
            tensors += write_tensors(&mut out, plan, &layout, &mapped, base)?;
        } else {
            write_side_file(&mut out, f, base, delta)?;
        }
        bar.inc(f.len);
    }
    out.commit()?;
    bar.finish();
    Ok(FolderApplyReport {
        output: output.to_owned(),
        files: layout.files.len(),
        tensors,
        bytes_written: total,
        base_hash: actual,
        base_verified: expected == actual,
    })
}

/// Writes one safetensors file: its header, then each tensor reconstructed in data order.
fn write_tensors(
    out: &mut FolderOutput,
    plan: &FilePlan,
    layout: &FolderDelta,
    delta: &MappedDelta<'_>,
    base: &dyn BaseModel,
) -> Result<usize, FolderApplyError> {
    let io = |cause| FolderApplyError::Io {
        path: PathBuf::from(layout.files.get(plan.file).map_or("", |f| f.path.as_str())),
        cause,
    };
    out.write_all(&plan.header_bytes).map_err(io)?;
    let mut buf = Vec::new();
    let mut scratch = Scratch::default();
    for t in &plan.tensors {
        for part in [Part::Main, Part::NewRows] {
            let mut write = |bytes: &[u8]| out.write_all(bytes).map_err(io);
            if write_by_rows(delta, layout, base, t, part, &mut scratch, &mut write)? {
                continue;
            }
            if rebuild_part(delta, layout, base, t, part, &mut buf, &mut scratch)? {
                out.write_all(&buf).map_err(io)?;
            }
        }
    }
    Ok(plan.tensors.len())
}

/// A single-file `.bitdelta` (`bytes`) applied to `base` (a file or store object): the fine-tune
/// as one safetensors file at `output`, in the delta's tensor order, written to a temporary file
/// renamed into place when complete. Refuses a base whose object hash differs from the recorded one.
pub fn apply_file_delta(
    map: &MappedFile,
    base: &dyn BaseModel,
    output: &Path,
) -> Result<FolderApplyReport, FolderApplyError> {
    let delta = BitDeltaFile::parse(map.bytes())?;
    let mapped = MappedDelta::new(&delta, map);
    let (expected, actual) = (delta.meta.base_hash, base.object_hash());
    if !expected.is_zero() && expected != actual {
        return Err(FolderApplyError::WrongBase { expected, actual });
    }
    let layouts: Vec<zdn_protocol::safetensors::TensorLayout> = delta
        .entries
        .iter()
        .map(|e| zdn_protocol::safetensors::TensorLayout {
            name: e.name.clone(),
            dtype: e.dtype,
            shape: e.shape.clone(),
        })
        .collect();
    let (header, _) = zdn_protocol::safetensors::encode_header(&layouts, &Default::default())
        .map_err(|e| FolderApplyError::BaseShard {
            path: output.display().to_string(),
            problem: e.to_string(),
        })?;
    let mut out =
        crate::fs::atomic_file::AtomicFile::create(output).map_err(ObjectOutputError::from)?;
    let io = |e: crate::fs::atomic_file::AtomicFileError| FolderApplyError::Output(e.into());
    out.write_all(&header).map_err(io)?;
    let (mut buf, mut base_buf) = (Vec::new(), Vec::new());
    let mut written = header.len() as u64;
    for (i, e) in delta.entries.iter().enumerate() {
        let b = if e.encoding.needs_base() {
            base.tensor(&e.name, &mut base_buf)?
        } else {
            None
        };
        mapped.reconstruct_into(&mut buf, i, b.as_ref())?;
        base.release(&e.name);
        out.write_all(&buf).map_err(io)?;
        written += buf.len() as u64;
    }
    out.commit().map_err(io)?;
    Ok(FolderApplyReport {
        output: output.to_owned(),
        files: 1,
        tensors: delta.entries.len(),
        bytes_written: written,
        base_hash: actual,
        base_verified: !expected.is_zero(),
    })
}
