//! The base a folder delta is encoded against or applied to: a model folder or a single
//! safetensors file on disk ([`LooseBase`]), or a base object in the store ([`StoreBase`], read
//! tensor by tensor from its verified chunks: no loose copy). Both find a tensor by name wherever
//! it is in the base's shards.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use zdn_node::store::{ObjectStore, StoreError};
use zdn_protocol::bitdelta::TensorData;
use zdn_protocol::manifest::{Kind, SignedManifest, TensorEntry};
use zdn_protocol::safetensors::{self, SafetensorsError, TensorInfo};
use zdn_protocol::{DType, Hash};

use crate::fs::mapped_file::{MappedFile, OpenError};
use crate::model::folder::{ModelFolder, ModelFolderError};

#[derive(Debug, thiserror::Error)]
pub enum BaseError {
    #[error(transparent)]
    Folder(#[from] ModelFolderError),
    #[error(transparent)]
    Open(#[from] OpenError),
    #[error("{path}: not a valid safetensors file: {cause}")]
    Safetensors {
        path: String,
        cause: SafetensorsError,
    },
    #[error("tensor {name:?} is in both {first} and {second} of the base")]
    Duplicate {
        name: String,
        first: String,
        second: String,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0} is a {1} object: the base of a delta is a base model")]
    NotABase(Hash, &'static str),
    #[error("the base has no file {0:?}")]
    NoFile(String),
    #[error("writing {path:?}: {cause}")]
    Write { path: String, cause: std::io::Error },
    #[error("tensor {0:?}: the base's manifest gives a length that is not its shape's")]
    Size(String),
    #[error("tensor {0:?}: the base's dtype code is unknown")]
    Dtype(String),
}

/// The name a single-file base goes by in an output folder.
pub const SINGLE_FILE: &str = "model.safetensors";

/// A tensor's dtype and shape.
pub type Layout<'a> = (DType, &'a [u64]);

/// What encode and apply need of a base.
pub trait BaseModel {
    /// The BLAKE3 of the base object (a folder: its files concatenated in canonical order).
    fn object_hash(&self) -> Hash;
    /// A tensor's dtype and shape, by name.
    fn layout(&self, name: &str) -> Option<Layout<'_>>;
    /// A tensor's bytes, by name: borrowed from a memory map, or read into `buf`.
    fn tensor<'a>(
        &'a self,
        name: &str,
        buf: &'a mut Vec<u8>,
    ) -> Result<Option<TensorData<'a>>, BaseError>;
    /// Drops what reading a tensor kept resident.
    fn release(&self, name: &str);
    /// Whether the base is a folder with a file at `path`, and its length.
    fn file_len(&self, path: &str) -> Option<u64>;
    /// Writes the base's file `path` to `out`.
    fn write_file(&self, path: &str, out: &mut dyn Write) -> Result<(), BaseError>;
    /// The names of the base's tensors, sorted.
    fn tensor_names(&self) -> Vec<&str>;
    /// The base's files, (path, length) in canonical order; a single-file base is one file,
    /// [`SINGLE_FILE`].
    fn files(&self) -> Vec<(&str, u64)>;
    /// Appends bytes `offset .. offset + len` of the base's file `path` to `out`.
    fn read_file_range(
        &self,
        path: &str,
        offset: u64,
        len: u64,
        out: &mut Vec<u8>,
    ) -> Result<(), BaseError>;
    /// The base's file `path` in memory, if it has one of at most `cap` bytes.
    fn small_file(&self, path: &str, cap: u64) -> Result<Option<Vec<u8>>, BaseError> {
        match self.file_len(path) {
            Some(len) if len <= cap => {
                let mut out = Vec::with_capacity(len as usize);
                self.write_file(path, &mut out)?;
                Ok(Some(out))
            }
            _ => Ok(None),
        }
    }
    /// Whether the base has a file at `path` with exactly `bytes` in it.
    fn same_file(&self, path: &str, bytes: &[u8]) -> Result<bool, BaseError> {
        if self.file_len(path) != Some(bytes.len() as u64) {
            return Ok(false);
        }
        let mut h = blake3::Hasher::new();
        self.write_file(path, &mut h)?;
        Ok(Hash::from(h.finalize()) == Hash::of(bytes))
    }
}

/// A base on disk: a model folder, or one safetensors file.
#[derive(Debug)]
pub struct LooseBase {
    /// The folder's files (one file: its name and map, and `folder` false).
    files: Vec<(String, MappedFile)>,
    folder: bool,
    /// Tensor name → (file index, tensor).
    tensors: HashMap<String, (usize, TensorInfo)>,
    object_hash: Hash,
}

impl LooseBase {
    /// Opens `path` (a folder or a file), parses every `*.safetensors` member and hashes the whole
    /// base (it is read once).
    pub fn open(path: &Path) -> Result<Self, BaseError> {
        let (files, folder) = if path.is_dir() {
            let f = ModelFolder::open(path)?;
            (f.into_files(), true)
        } else {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            (vec![(name, MappedFile::open(path)?)], false)
        };
        let mut tensors: HashMap<String, (usize, TensorInfo)> = HashMap::new();
        for (i, (rel, map)) in files.iter().enumerate() {
            if folder && !zdn_protocol::folder::layout::is_safetensors(rel) {
                continue;
            }
            let h = safetensors::parse(map.bytes()).map_err(|cause| BaseError::Safetensors {
                path: rel.clone(),
                cause,
            })?;
            for t in h.tensors {
                let name = t.name.clone();
                if let Some((j, _)) = tensors.insert(name.clone(), (i, t)) {
                    return Err(BaseError::Duplicate {
                        name,
                        first: files[j].0.clone(),
                        second: rel.clone(),
                    });
                }
            }
        }
        let mut h = blake3::Hasher::new();
        for (_, map) in &files {
            map.hash_into(&mut h);
        }
        Ok(LooseBase {
            files,
            folder,
            tensors,
            object_hash: h.finalize().into(),
        })
    }

    /// The path of a base file, for messages.
    pub fn path_of(&self, i: usize) -> PathBuf {
        self.files
            .get(i)
            .map(|(_, m)| m.path().to_owned())
            .unwrap_or_default()
    }

    /// The base's files (folder members) with their bytes.
    pub fn file_bytes(&self, path: &str) -> Option<&[u8]> {
        if !self.folder {
            return None;
        }
        self.files
            .iter()
            .find(|(p, _)| p == path)
            .map(|(_, m)| m.bytes())
    }
}

impl BaseModel for LooseBase {
    fn object_hash(&self) -> Hash {
        self.object_hash
    }

    fn layout(&self, name: &str) -> Option<Layout<'_>> {
        self.tensors
            .get(name)
            .map(|(_, t)| (t.dtype, t.shape.as_slice()))
    }

    fn tensor<'a>(
        &'a self,
        name: &str,
        _buf: &'a mut Vec<u8>,
    ) -> Result<Option<TensorData<'a>>, BaseError> {
        Ok(self.tensors.get(name).map(|(i, t)| TensorData {
            dtype: t.dtype,
            shape: &t.shape,
            // The parser checked the range against the file.
            bytes: &self.files[*i].1.bytes()[t.range.clone()],
        }))
    }

    fn release(&self, name: &str) {
        if let Some((i, t)) = self.tensors.get(name) {
            self.files[*i].1.release(t.range.clone());
        }
    }

    fn file_len(&self, path: &str) -> Option<u64> {
        self.file_bytes(path).map(|b| b.len() as u64)
    }

    fn write_file(&self, path: &str, out: &mut dyn Write) -> Result<(), BaseError> {
        let bytes = self
            .file_bytes(path)
            .ok_or_else(|| BaseError::NoFile(path.to_owned()))?;
        out.write_all(bytes).map_err(|cause| BaseError::Write {
            path: path.to_owned(),
            cause,
        })
    }

    fn tensor_names(&self) -> Vec<&str> {
        sorted_keys(&self.tensors)
    }

    fn same_file(&self, path: &str, bytes: &[u8]) -> Result<bool, BaseError> {
        Ok(self.file_bytes(path) == Some(bytes))
    }

    fn files(&self) -> Vec<(&str, u64)> {
        self.files
            .iter()
            .map(|(p, m)| {
                let p = if self.folder { p.as_str() } else { SINGLE_FILE };
                (p, m.len() as u64)
            })
            .collect()
    }

    fn read_file_range(
        &self,
        path: &str,
        offset: u64,
        len: u64,
        out: &mut Vec<u8>,
    ) -> Result<(), BaseError> {
        let bytes = if self.folder {
            self.file_bytes(path)
        } else {
            (path == SINGLE_FILE).then(|| self.files[0].1.bytes())
        }
        .ok_or_else(|| BaseError::NoFile(path.to_owned()))?;
        let range = usize::try_from(offset)
            .ok()
            .zip(usize::try_from(len).ok())
            .and_then(|(o, l)| bytes.get(o..o.checked_add(l)?))
            .ok_or_else(|| BaseError::NoFile(format!("{path} bytes {offset}+{len}")))?;
        out.extend_from_slice(range);
        Ok(())
    }
}

/// A base object in the store: tensors are read from its chunks by range, each chunk checked
/// against the signed manifest's id.
pub struct StoreBase<'s> {
    store: &'s ObjectStore,
    manifest: SignedManifest,
    tensors: HashMap<String, (TensorEntry, DType)>,
}

impl std::fmt::Debug for StoreBase<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreBase")
            .field("object", &self.manifest.hash())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl<'s> StoreBase<'s> {
    pub fn open(store: &'s ObjectStore, hash: &Hash) -> Result<Self, BaseError> {
        let manifest = store.require_manifest(hash)?;
        if manifest.manifest.kind != Kind::Base {
            return Err(BaseError::NotABase(*hash, manifest.manifest.kind.as_str()));
        }
        let mut tensors = HashMap::with_capacity(manifest.manifest.tensors.len());
        for t in &manifest.manifest.tensors {
            let dtype =
                DType::from_code(t.dtype).ok_or_else(|| BaseError::Dtype(t.name.clone()))?;
            tensors.insert(t.name.clone(), (t.clone(), dtype));
        }
        Ok(StoreBase {
            store,
            manifest,
            tensors,
        })
    }

    pub fn manifest(&self) -> &SignedManifest {
        &self.manifest
    }
}

impl BaseModel for StoreBase<'_> {
    fn object_hash(&self) -> Hash {
        self.manifest.manifest.object_hash
    }

    fn layout(&self, name: &str) -> Option<Layout<'_>> {
        self.tensors
            .get(name)
            .map(|(t, d)| (*d, t.shape.as_slice()))
    }

    fn tensor<'a>(
        &'a self,
        name: &str,
        buf: &'a mut Vec<u8>,
    ) -> Result<Option<TensorData<'a>>, BaseError> {
        let Some((t, dtype)) = self.tensors.get(name) else {
            return Ok(None);
        };
        buf.clear();
        self.store
            .read_range(&self.manifest, t.offset, t.len, buf)?;
        TensorData::new(*dtype, &t.shape, buf)
            .map(Some)
            .ok_or_else(|| BaseError::Size(name.to_owned()))
    }

    fn release(&self, _name: &str) {}

    fn file_len(&self, path: &str) -> Option<u64> {
        self.manifest.manifest.file(path).map(|f| f.len)
    }

    fn write_file(&self, path: &str, out: &mut dyn Write) -> Result<(), BaseError> {
        self.store
            .read_member(&self.manifest, path, out)
            .map(drop)
            .map_err(BaseError::from)
    }

    fn tensor_names(&self) -> Vec<&str> {
        sorted_keys(&self.tensors)
    }

    fn files(&self) -> Vec<(&str, u64)> {
        let m = &self.manifest.manifest;
        if m.is_folder() {
            m.files.iter().map(|f| (f.path.as_str(), f.len)).collect()
        } else {
            vec![(SINGLE_FILE, m.object_len)]
        }
    }

    fn read_file_range(
        &self,
        path: &str,
        offset: u64,
        len: u64,
        out: &mut Vec<u8>,
    ) -> Result<(), BaseError> {
        let m = &self.manifest.manifest;
        let (start, file_len) = if m.is_folder() {
            let f = m
                .file(path)
                .ok_or_else(|| BaseError::NoFile(path.to_owned()))?;
            (f.offset, f.len)
        } else if path == SINGLE_FILE {
            (0, m.object_len)
        } else {
            return Err(BaseError::NoFile(path.to_owned()));
        };
        if offset.checked_add(len).is_none_or(|end| end > file_len) {
            return Err(BaseError::NoFile(format!("{path} bytes {offset}+{len}")));
        }
        Ok(self
            .store
            .read_range(&self.manifest, start + offset, len, out)?)
    }
}

/// The keys of a map, sorted.
fn sorted_keys<V>(m: &HashMap<String, V>) -> Vec<&str> {
    let mut v: Vec<&str> = m.keys().map(String::as_str).collect();
    v.sort_unstable();
    v
}
