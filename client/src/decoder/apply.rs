//! A `.bitdelta` applied to the tensors of a model folder (single file or shards), tensor by tensor,
//! through the protocol's `reconstruct` (the one definition of the arithmetic, docs/spec/bitdelta.md): the
//! fine-tune's weights as candle tensors, for evaluation.
//!
//! A delta records the BLAKE3 of the single base file it was made against. A folder of one
//! `model.safetensors` is checked against it; a sharded folder has no such hash yet (folder objects
//! will define one), so a delta that records a base is applied to shards only with `force`.

use candle_core::Device;
use zdn_protocol::bitdelta::{check_inputs, reconstruct, BitDeltaFile};

use super::folder::FolderWeights;
use crate::device::apply::{tensor_from_bytes, CandleApplyError, NamedTensors};

#[derive(Debug, thiserror::Error)]
pub enum FolderApplyError {
    #[error(
        "the delta was made for base file BLAKE3 {expected}; {dir} is {what} (pass --force to apply anyway)"
    )]
    WrongBase {
        expected: String,
        dir: String,
        what: String,
    },
    #[error(transparent)]
    Apply(#[from] CandleApplyError),
}

impl From<zdn_protocol::bitdelta::ReconstructError> for FolderApplyError {
    fn from(e: zdn_protocol::bitdelta::ReconstructError) -> Self {
        FolderApplyError::Apply(CandleApplyError::Reconstruct(e))
    }
}

/// The delta's tensors reconstructed against `base`, in the delta's index order, on `device`.
pub fn apply_to_folder(
    base: &FolderWeights,
    delta: &BitDeltaFile<'_>,
    device: &Device,
    force: bool,
) -> Result<NamedTensors, FolderApplyError> {
    let recorded = delta.meta.base_hash;
    if !recorded.is_zero() && !force {
        let what = match base.shards.as_slice() {
            [one] => {
                let actual = one.file.blake3();
                (actual != recorded).then(|| format!("BLAKE3 {}", actual.to_hex()))
            }
            _ => Some(format!(
                "sharded ({} files) and has no single-file hash",
                base.shards.len()
            )),
        };
        if let Some(what) = what {
            return Err(FolderApplyError::WrongBase {
                expected: recorded.to_hex(),
                dir: base.dir.display().to_string(),
                what,
            });
        }
    }
    let mut out = Vec::with_capacity(delta.entries.len());
    let mut buf = Vec::new();
    for (i, e) in delta.entries.iter().enumerate() {
        let b = base.data(&e.name);
        // Checked before the output is allocated (byte_len is capped by the parser).
        check_inputs(e, delta.block(i), b.as_ref())?;
        buf.clear();
        buf.resize(e.byte_len() as usize, 0);
        reconstruct(e, delta.block(i), b.as_ref(), &mut buf)?;
        out.push((
            e.name.clone(),
            tensor_from_bytes(&e.name, e.dtype, &e.shape, &buf, device)?,
        ));
        base.release(&e.name);
    }
    Ok(out)
}
