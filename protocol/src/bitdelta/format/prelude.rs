//! The writer's side of the `.bitdelta` container: the prelude (header, metadata, index) and
//! the blocks' offsets.

use super::*;

/// Length of header + metadata + index for these entries: where the first block starts. Entry sizes do
/// not depend on offsets, lengths or encodings, so a writer can reserve this space, stream the blocks,
/// and then write the final index in place.
pub fn prelude_len(meta: &Metadata, entries: &[IndexEntry]) -> usize {
    HEADER_LEN
        + 4
        + META_FIXED_LEN
        + meta.model_name.len()
        + 4
        + entries.iter().map(IndexEntry::encoded_len).sum::<usize>()
}

/// Why a file cannot be written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    #[error("model name is {0} bytes, the format allows {MAX_MODEL_NAME_LEN}")]
    ModelName(usize),
    #[error("tensor {0:?}: name longer than {MAX_NAME_LEN} bytes")]
    Name(String),
    #[error("tensor {0:?}: rank above {MAX_RANK}")]
    Rank(String),
    #[error("more than {} tensors", u32::MAX)]
    Count,
}

/// Encodes header + metadata + index. The caller sets offsets and lengths (blocks follow back to back
/// from `prelude_len`); [`BitDeltaFile::parse`] is the check of the result.
pub fn encode_prelude(meta: &Metadata, entries: &[IndexEntry]) -> Result<Vec<u8>, WriteError> {
    if meta.model_name.len() > MAX_MODEL_NAME_LEN {
        return Err(WriteError::ModelName(meta.model_name.len()));
    }
    let count = u32::try_from(entries.len()).map_err(|_| WriteError::Count)?;
    let mut out = Vec::with_capacity(prelude_len(meta, entries));
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    let meta_len = (META_FIXED_LEN + meta.model_name.len()) as u32;
    out.extend_from_slice(&meta_len.to_le_bytes());
    out.extend_from_slice(meta.base_hash.as_bytes());
    out.extend_from_slice(&meta.n_params.to_le_bytes());
    out.extend_from_slice(&meta.n_quantized.to_le_bytes());
    out.push(meta.bits);
    let (gc, gn) = meta.granularity.code();
    out.push(gc);
    out.extend_from_slice(&gn.to_le_bytes());
    out.extend_from_slice(&meta.clip_sigma.to_bits().to_le_bytes());
    out.push(meta.embeddings);
    out.extend_from_slice(&(meta.model_name.len() as u16).to_le_bytes());
    out.extend_from_slice(meta.model_name.as_bytes());
    out.extend_from_slice(&count.to_le_bytes());
    for e in entries {
        if e.name.len() > MAX_NAME_LEN {
            return Err(WriteError::Name(e.name.clone()));
        }
        if e.shape.len() > MAX_RANK {
            return Err(WriteError::Rank(e.name.clone()));
        }
        out.extend_from_slice(&(e.name.len() as u16).to_le_bytes());
        out.extend_from_slice(e.name.as_bytes());
        out.push(e.dtype.code());
        out.push(e.encoding.code());
        let (gc, gn) = e.granularity.code();
        out.push(gc);
        out.push(e.shape.len() as u8);
        out.extend_from_slice(&gn.to_le_bytes());
        for d in &e.shape {
            out.extend_from_slice(&d.to_le_bytes());
        }
        out.extend_from_slice(&e.offset.to_le_bytes());
        out.extend_from_slice(&e.length.to_le_bytes());
    }
    Ok(out)
}

/// Sets each entry's offset so blocks follow back to back after the prelude.
pub fn assign_offsets(meta: &Metadata, entries: &mut [IndexEntry]) {
    let mut off = prelude_len(meta, entries) as u64;
    for e in entries {
        e.offset = off;
        off += e.length;
    }
}
