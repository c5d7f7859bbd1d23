//! `zdn delta apply`: base + `.bitdelta` → the reconstructed model as safetensors, tensor by tensor.

use std::collections::BTreeMap;
use std::path::PathBuf;

use zdn_protocol::bitdelta::{
    check_inputs, reconstruct, BitDeltaFile, FormatError, IndexEntry, ReconstructError, TensorData,
};
use zdn_protocol::safetensors::{encode_header, SafetensorsError, TensorLayout};
use zdn_protocol::Hash;

use crate::device::compute::DeviceError;
use crate::fs::atomic_file::{AtomicFile, AtomicFileError};
use crate::fs::mapped_file::{MappedFile, OpenError};
use crate::fs::progress::Progress;
use crate::model::file::{ModelFile, ModelFileError};

#[derive(Debug, Clone)]
pub struct ApplyJob {
    pub base: PathBuf,
    pub delta: PathBuf,
    pub output: PathBuf,
    /// Apply even when the base's BLAKE3 differs from the one the delta records.
    pub force: bool,
    pub progress: bool,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ApplyReport {
    pub output: PathBuf,
    pub tensors: usize,
    pub bytes_written: u64,
    pub base_hash: Hash,
    /// False when `--force` applied the delta to a base other than the recorded one.
    pub base_verified: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum DeltaApplyError {
    #[error(transparent)]
    Open(#[from] OpenError),
    #[error(transparent)]
    Model(#[from] ModelFileError),
    #[error("{path} is not a valid .bitdelta file: {cause}")]
    Format { path: PathBuf, cause: FormatError },
    #[error("the delta was made for base {expected}, but {path} has BLAKE3 {actual} (use --force to apply anyway)")]
    WrongBase {
        path: PathBuf,
        expected: Hash,
        actual: Hash,
    },
    #[error(transparent)]
    Reconstruct(#[from] ReconstructError),
    #[error("output header: {0}")]
    Header(#[from] SafetensorsError),
    #[error(transparent)]
    Output(#[from] AtomicFileError),
    #[error(transparent)]
    Device(#[from] DeviceError),
}

/// Reconstructs one tensor: `(entry, block, base, out)` as [`reconstruct`] takes them.
pub type TensorFn<'a> = dyn FnMut(&IndexEntry, &[u8], Option<&TensorData<'_>>, &mut [u8]) -> Result<(), DeltaApplyError>
    + 'a;

pub fn apply(job: &ApplyJob) -> Result<ApplyReport, DeltaApplyError> {
    apply_with(job, &mut |e, block, base, out| {
        Ok(reconstruct(e, block, base, out)?)
    })
}

/// [`apply`] with each tensor reconstructed by `tensor` (the CPU reference, or a GPU: the same
/// bytes), after the same checks.
pub fn apply_with(
    job: &ApplyJob,
    tensor: &mut TensorFn<'_>,
) -> Result<ApplyReport, DeltaApplyError> {
    let delta_map = MappedFile::open(&job.delta)?;
    let delta =
        BitDeltaFile::parse(delta_map.bytes()).map_err(|cause| DeltaApplyError::Format {
            path: job.delta.clone(),
            cause,
        })?;
    let base = ModelFile::open(&job.base)?;
    let BaseCheck {
        base_hash,
        verified: base_verified,
    } = check_base(&delta, &base, job.force)?;
    let layouts: Vec<TensorLayout> = delta
        .entries
        .iter()
        .map(|e| TensorLayout {
            name: e.name.clone(),
            dtype: e.dtype,
            shape: e.shape.clone(),
        })
        .collect();
    let (header, _) = encode_header(&layouts, &BTreeMap::new())?;
    let total: u64 = delta.entries.iter().map(|e| e.byte_len()).sum();
    let progress = Progress::new(total, "apply", job.progress);

    let mut out = AtomicFile::create(&job.output)?;
    out.write_all(&header)?;
    let mut buf = Vec::new();
    for (i, e) in delta.entries.iter().enumerate() {
        let b = base.get(&e.name);
        let bdata = b.map(|b| base.data(b));
        // byte_len is capped by the parser (MAX_TENSOR_BYTES).
        check_inputs(e, delta.block(i), bdata.as_ref())?;
        buf.clear();
        buf.resize(e.byte_len() as usize, 0);
        tensor(e, delta.block(i), bdata.as_ref(), &mut buf)?;
        out.write_all(&buf)?;
        if let Some(b) = b {
            base.release(b);
        }
        delta_map.release(e.offset as usize..(e.offset + e.length) as usize);
        progress.inc(e.byte_len());
    }
    out.commit()?;
    progress.finish();
    Ok(ApplyReport {
        output: job.output.clone(),
        tensors: delta.entries.len(),
        bytes_written: header.len() as u64 + total,
        base_hash,
        base_verified,
    })
}

/// The base's BLAKE3 and whether it is the base the delta records.
#[derive(Debug, Clone, Copy)]
pub struct BaseCheck {
    pub base_hash: Hash,
    /// False when the delta records no base, or `force` let a different base through.
    pub verified: bool,
}

/// Refuses a base other than the one the delta was made for, unless `force`.
pub fn check_base(
    delta: &BitDeltaFile<'_>,
    base: &ModelFile,
    force: bool,
) -> Result<BaseCheck, DeltaApplyError> {
    let base_hash = base.file.blake3();
    let recorded = delta.meta.base_hash;
    let matches = recorded.is_zero() || recorded == base_hash;
    if !matches && !force {
        return Err(DeltaApplyError::WrongBase {
            path: base.file.path().to_path_buf(),
            expected: recorded,
            actual: base_hash,
        });
    }
    Ok(BaseCheck {
        base_hash,
        verified: matches && !recorded.is_zero(),
    })
}
