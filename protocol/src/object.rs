//! What the store needs to know about an object before chunking it: that it is what it claims to be
//! (a safetensors base model, a `.bitdelta` or a soup recipe), its tensor index, and where chunk cuts
//! should fall so unchanged tensors give identical chunks across versions.

use crate::bitdelta::{BitDeltaFile, FormatError};
use crate::chunk::{self, ChunkError};
use crate::hash::Hash;
use crate::manifest::{Kind, TensorEntry};
use crate::safetensors::{self, SafetensorsError};
use crate::soup::{Recipe, RecipeError};

/// The layout of one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectLayout {
    pub tensors: Vec<TensorEntry>,
    /// Byte offsets where a new tensor starts.
    pub boundaries: Vec<u64>,
    /// For a delta: the BLAKE3 of the base file it was made against ([`Hash::ZERO`] if not recorded).
    pub delta_base_object: Option<Hash>,
}

/// Why an object cannot be added as the kind it claims to be.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ObjectError {
    #[error("not a valid safetensors model: {0}")]
    Safetensors(#[from] SafetensorsError),
    #[error("not a valid .bitdelta file: {0}")]
    BitDelta(#[from] FormatError),
    #[error("not a valid soup recipe: {0}")]
    Recipe(#[from] RecipeError),
    #[error(transparent)]
    Chunk(#[from] ChunkError),
}

/// Parses `bytes` as `kind` and returns its layout.
pub fn layout(kind: Kind, bytes: &[u8]) -> Result<ObjectLayout, ObjectError> {
    match kind {
        Kind::Base => {
            let h = safetensors::parse(bytes)?;
            let tensors = h
                .tensors
                .iter()
                .map(|t| TensorEntry {
                    name: t.name.clone(),
                    dtype: t.dtype.code(),
                    shape: t.shape.clone(),
                    offset: t.range.start as u64,
                    len: t.range.len() as u64,
                })
                .collect();
            Ok(ObjectLayout {
                tensors,
                boundaries: chunk::safetensors_boundaries(bytes),
                delta_base_object: None,
            })
        }
        Kind::Delta => {
            let f = BitDeltaFile::parse(bytes)?;
            let tensors = f
                .entries
                .iter()
                .map(|e| TensorEntry {
                    name: e.name.clone(),
                    dtype: e.dtype.code(),
                    shape: e.shape.clone(),
                    offset: e.offset,
                    len: e.length,
                })
                .collect();
            Ok(ObjectLayout {
                tensors,
                boundaries: chunk::bitdelta_boundaries(bytes),
                delta_base_object: Some(f.meta.base_hash),
            })
        }
        Kind::Soup => {
            // A recipe is small and has no tensors: one chunk.
            Recipe::decode(bytes)?;
            Ok(ObjectLayout {
                tensors: Vec::new(),
                boundaries: Vec::new(),
                delta_base_object: None,
            })
        }
    }
}
