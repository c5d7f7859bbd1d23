//! Manifests: the signed description of one stored object (a base model, a `.bitdelta` or a soup
//! recipe), whose BLAKE3 hash is the name users type.
//!
//! A manifest lists the object's chunks (so a receiver can fetch and verify them one by one), the hash
//! of the whole object, the tensor index (so a reader can find a tensor without the whole object), for a
//! delta or a soup the manifest hash of its base, for a model folder its file table, and the
//! publisher's ed25519 key and signature. The encoding is canonical (see `wire.rs`): the same manifest
//! always gives the same bytes and so the same hash.

mod signing;
mod wire;

pub use signing::{verify as verify_signature, PublisherKey, SigningError};
pub use wire::{decode, ManifestError, MAX_MANIFEST_LEN};

use crate::chunk::ChunkRef;
pub use crate::folder::FileEntry;
use crate::hash::Hash;

/// What an object is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A full model (safetensors).
    Base,
    /// A `.bitdelta` against the base named by [`Manifest::base`].
    Delta,
    /// A soup recipe ([`crate::soup::Recipe`]): weighted component deltas of the base named by
    /// [`Manifest::base`].
    Soup,
}

impl Kind {
    pub const fn code(self) -> u8 {
        match self {
            Kind::Base => 0,
            Kind::Delta => 1,
            Kind::Soup => 2,
        }
    }

    pub fn from_code(c: u8) -> Option<Self> {
        [Kind::Base, Kind::Delta, Kind::Soup]
            .into_iter()
            .find(|k| k.code() == c)
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Kind::Base => "base",
            Kind::Delta => "delta",
            Kind::Soup => "soup",
        }
    }
}

/// One tensor of the object: where its bytes are.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TensorEntry {
    pub name: String,
    /// [`crate::DType`] code of the tensor as stored (for a delta: the dtype it reconstructs to).
    pub dtype: u8,
    pub shape: Vec<u64>,
    /// Byte range of the tensor's data (for a delta: its encoded block) in the object.
    pub offset: u64,
    pub len: u64,
}

/// The unsigned content of a manifest. Field order here is the order of the canonical encoding.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Manifest {
    pub kind: Kind,
    pub name: String,
    pub version: String,
    /// Seconds since the Unix epoch, as the publisher's clock said.
    pub created_at: u64,
    /// Manifest hash of the base (deltas and soups; a base model has none).
    pub base: Option<Hash>,
    /// Length of the whole object in bytes.
    pub object_len: u64,
    /// BLAKE3 of the whole object.
    pub object_hash: Hash,
    pub chunks: Vec<ChunkRef>,
    pub tensors: Vec<TensorEntry>,
    /// The file table of a model folder: its files in canonical order (sorted by path bytes), back to
    /// back in the object. Empty for a single-file object (then the manifest encodes as version 1,
    /// exactly as before folders existed).
    #[serde(default)]
    pub files: Vec<FileEntry>,
    /// Free-form `key → value` notes (e.g. a quality report), kept sorted by key, keys unique.
    pub extra: Vec<(String, String)>,
}

/// A manifest with its publisher key and signature, as stored and sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedManifest {
    pub manifest: Manifest,
    /// ed25519 public key of the publisher.
    pub publisher: [u8; 32],
    /// ed25519 signature over [`Manifest::signing_bytes`].
    pub signature: [u8; 64],
    /// The canonical encoding of all of the above (what the hash is taken of).
    bytes: Vec<u8>,
}

impl SignedManifest {
    /// The canonical bytes: what is stored, sent, and hashed.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The manifest hash: BLAKE3 of the canonical bytes. ed25519 signatures are deterministic, so the
    /// same manifest signed by the same key always has the same hash.
    pub fn hash(&self) -> Hash {
        Hash::of(&self.bytes)
    }

    /// Publisher key as 64 hex digits.
    pub fn publisher_hex(&self) -> String {
        Hash::from_bytes(self.publisher).to_hex()
    }
}

impl Manifest {
    /// The bytes the publisher signs: a domain-separation prefix, then the canonical encoding of the
    /// manifest followed by the publisher key.
    pub fn signing_bytes(&self, publisher: &[u8; 32]) -> Result<Vec<u8>, ManifestError> {
        let mut out = wire::SIGNING_CONTEXT.to_vec();
        wire::encode_body(self, publisher, &mut out)?;
        Ok(out)
    }

    /// Signs this manifest with `key`, returning the canonical signed form. Fails when the manifest
    /// breaks a rule the decoder checks (so nothing unreadable is ever signed).
    pub fn sign(self, key: &PublisherKey) -> Result<SignedManifest, ManifestError> {
        wire::validate(&self)?;
        let publisher = key.public();
        let to_sign = self.signing_bytes(&publisher)?;
        let signature = key.sign(&to_sign);
        let mut bytes = Vec::new();
        wire::encode_body(&self, &publisher, &mut bytes)?;
        bytes.extend_from_slice(&signature);
        Ok(SignedManifest {
            manifest: self,
            publisher,
            signature,
            bytes,
        })
    }

    /// Whether the object is a folder (has a file table).
    pub fn is_folder(&self) -> bool {
        !self.files.is_empty()
    }

    /// The member file at `path` of a folder object.
    pub fn file(&self, path: &str) -> Option<&FileEntry> {
        // The table is sorted by path bytes (a decoded or signed manifest is checked).
        self.files
            .binary_search_by(|f| f.path.as_str().cmp(path))
            .ok()
            .map(|i| &self.files[i])
    }

    /// The chunks holding the bytes of `file` (chunks never span files: exactly its bytes).
    pub fn file_chunks(&self, file: &FileEntry) -> &[ChunkRef] {
        let first = self.chunks.partition_point(|c| c.offset < file.offset);
        let last = self.chunks.partition_point(|c| c.offset < file.end());
        &self.chunks[first..last.max(first)]
    }

    /// The chunk ids of the object, in object order (duplicates kept).
    pub fn chunk_ids(&self) -> impl Iterator<Item = Hash> + '_ {
        self.chunks.iter().map(|c| c.id)
    }
}

#[cfg(test)]
mod tests;
