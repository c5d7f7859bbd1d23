//! [`ObjectStore`]: objects (manifest + chunks) on top of a [`Backend`].

use std::collections::HashSet;
use std::path::Path;

use zdn_protocol::chunk::{self, ChunkRef};
use zdn_protocol::manifest::{self, Kind, SignedManifest};
use zdn_protocol::Hash;

use super::backend::{Backend, Column, Write};
use super::names::moves_name;
use super::{MemoryBackend, RocksBackend, StoreError};

/// A key and value as stored, not yet decoded.
pub(super) type RawEntry = (Vec<u8>, Vec<u8>);

const PIN_PREFIX: &[u8] = b"pin/";
const NAME_PREFIX: &[u8] = b"name/";
/// The key of [`Column::ChunkIndex`] (not a 32-byte chunk id) that says the index lists every chunk.
const INDEX_COMPLETE: &[u8] = b"index complete";
/// Index entries written per batch while indexing a store made before the index existed.
const INDEX_BATCH: usize = 4096;

/// Limits applied to everything that enters the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreLimits {
    /// Largest object accepted, in bytes.
    pub max_object_size: u64,
}

impl Default for StoreLimits {
    fn default() -> Self {
        // 1 TiB: larger than any model zdn targets, small enough to catch a forged length.
        StoreLimits {
            max_object_size: 1 << 40,
        }
    }
}

/// How much of an object the store holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holding {
    Complete,
    /// A download in progress: its manifest and some of its chunks.
    Partial,
    None,
}

/// One object as `ls` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ObjectInfo {
    pub hash: Hash,
    pub kind: Kind,
    pub name: String,
    pub version: String,
    pub object_len: u64,
    /// Files of a folder object (0 for a single file).
    pub files: usize,
    pub chunks: usize,
    pub base: Option<Hash>,
    pub pinned: bool,
    pub publisher: String,
    pub created_at: u64,
}

/// The store. Cheap to share by reference; all methods take `&self`.
pub struct ObjectStore {
    backend: Box<dyn Backend>,
    pub(super) limits: StoreLimits,
}

impl std::fmt::Debug for ObjectStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectStore")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

fn pin_key(h: &Hash) -> Vec<u8> {
    [PIN_PREFIX, h.to_hex().as_bytes()].concat()
}

fn name_key(name: &str) -> Vec<u8> {
    [NAME_PREFIX, name.as_bytes()].concat()
}

fn hash_from_key(key: &[u8]) -> Result<Hash, StoreError> {
    <[u8; 32]>::try_from(key)
        .map(Hash::from_bytes)
        .map_err(|_| StoreError::Corrupt {
            key: format!("{key:02x?}"),
            problem: "key is not a 32-byte hash".into(),
        })
}

impl ObjectStore {
    /// The store on `backend`. A store made before the chunk index existed is indexed first (once:
    /// a scan of the chunk keys).
    pub fn new(backend: Box<dyn Backend>, limits: StoreLimits) -> Result<Self, StoreError> {
        let s = ObjectStore { backend, limits };
        s.ensure_chunk_index()?;
        Ok(s)
    }

    /// Opens the rocksdb store in `dir` (created on first use).
    pub fn open(dir: &Path, limits: StoreLimits) -> Result<Self, StoreError> {
        Self::new(Box::new(RocksBackend::open(dir)?), limits)
    }

    /// A store in memory (tests).
    pub fn in_memory() -> Self {
        // An empty store: indexing has nothing to read and cannot fail.
        ObjectStore {
            backend: Box::new(MemoryBackend::new()),
            limits: StoreLimits::default(),
        }
    }

    /// Builds [`Column::ChunkIndex`] from the chunk keys when it is not marked complete. The
    /// entries are made durable before the mark, so a crash here only means indexing again.
    fn ensure_chunk_index(&self) -> Result<(), StoreError> {
        if self.backend.contains(Column::ChunkIndex, INDEX_COMPLETE)? {
            return Ok(());
        }
        let mut batch = Vec::new();
        let mut err = None;
        self.backend.scan(Column::Chunks, b"", &mut |k, _| {
            batch.push(Write::put(Column::ChunkIndex, k.to_vec(), Vec::new()));
            if batch.len() >= INDEX_BATCH {
                if let Err(e) = self.backend.write(std::mem::take(&mut batch), false) {
                    err = Some(e);
                    return false;
                }
            }
            true
        })?;
        if let Some(e) = err {
            return Err(e);
        }
        if !batch.is_empty() {
            self.backend.write(batch, false)?;
        }
        self.backend.flush(Column::ChunkIndex)?;
        self.backend.write(
            vec![Write::put(
                Column::ChunkIndex,
                INDEX_COMPLETE.to_vec(),
                Vec::new(),
            )],
            true,
        )
    }

    pub fn limits(&self) -> StoreLimits {
        self.limits
    }

    /// The raw key-value backend, below every check of this type: for the store's own modules and
    /// for tests that damage a store on purpose.
    pub fn backend(&self) -> &dyn Backend {
        self.backend.as_ref()
    }

    // ---- chunks ----

    /// Whether the store holds chunk `id`: a key-only lookup in the chunk index, no chunk bytes
    /// are read.
    pub fn has_chunk(&self, id: &Hash) -> Result<bool, StoreError> {
        self.backend.contains(Column::ChunkIndex, id.as_bytes())
    }

    /// The writes that store a chunk: its bytes and its index entry, in one batch.
    fn chunk_writes(batch: &mut Vec<Write>, id: &Hash, bytes: Vec<u8>) {
        batch.push(Write::put(Column::Chunks, id.as_bytes().to_vec(), bytes));
        batch.push(Write::put(
            Column::ChunkIndex,
            id.as_bytes().to_vec(),
            Vec::new(),
        ));
    }

    /// The stored (compressed) bytes of a chunk, checked against its id.
    pub fn chunk(&self, id: &Hash) -> Result<Option<Vec<u8>>, StoreError> {
        let Some(v) = self.backend.get(Column::Chunks, id.as_bytes())? else {
            return Ok(None);
        };
        let actual = Hash::of(&v);
        if actual != *id {
            return Err(StoreError::Corrupt {
                key: format!("chunk {id}"),
                problem: format!("stored bytes hash to {actual}"),
            });
        }
        Ok(Some(v))
    }

    /// Stores chunks whose ids the caller has checked. Not durable by itself (a crash may lose them):
    /// [`Self::commit`] flushes them before the manifest that references them. Returns the ids that
    /// were not there before.
    pub fn put_chunks(&self, chunks: Vec<(Hash, Vec<u8>)>) -> Result<Vec<Hash>, StoreError> {
        let mut batch = Vec::with_capacity(2 * chunks.len());
        let mut new = Vec::new();
        let mut seen = HashSet::with_capacity(chunks.len());
        for (id, bytes) in chunks {
            if !seen.insert(id) || self.has_chunk(&id)? {
                continue;
            }
            new.push(id);
            Self::chunk_writes(&mut batch, &id, bytes);
        }
        if !batch.is_empty() {
            self.backend.write(batch, false)?;
        }
        Ok(new)
    }

    /// Stores verified chunks of a download so that they survive the process being killed (the
    /// write-ahead log is used, unlike [`Self::put_chunks`]): resume never fetches them again.
    pub fn put_chunks_logged(&self, chunks: Vec<(Hash, Vec<u8>)>) -> Result<usize, StoreError> {
        let mut batch = Vec::with_capacity(2 * chunks.len());
        let mut n = 0;
        let mut seen = HashSet::with_capacity(chunks.len());
        for (id, bytes) in chunks {
            if seen.insert(id) && !self.has_chunk(&id)? {
                Self::chunk_writes(&mut batch, &id, bytes);
                n += 1;
            }
        }
        if n > 0 {
            self.backend.write_logged(batch)?;
        }
        Ok(n)
    }

    /// Removes chunks (used to undo a failed add or import, and by gc).
    pub fn delete_chunks(&self, ids: &[Hash], durable: bool) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        let batch = ids
            .iter()
            .flat_map(|id| {
                [Column::Chunks, Column::ChunkIndex]
                    .map(|c| Write::delete(c, id.as_bytes().to_vec()))
            })
            .collect();
        self.backend.write(batch, durable)
    }

    // ---- manifests ----

    /// Makes an object visible: writes its manifest, pins it and points its name at it, in one
    /// synced batch. Every chunk must already be in the store.
    pub fn commit(&self, m: &SignedManifest, pin: bool) -> Result<(), StoreError> {
        self.commit_many(std::slice::from_ref(m), pin)
    }

    /// [`Self::commit`] for several objects in one synced batch: all become visible or none.
    pub fn commit_many(&self, ms: &[SignedManifest], pin: bool) -> Result<(), StoreError> {
        for m in ms {
            self.check_chunks_present(&m.hash(), &m.manifest.chunks)?;
        }
        self.write_manifests(ms, pin)
    }

    /// Fails with [`StoreError::MissingChunk`] naming the first of `chunks` the store lacks (a
    /// key-only lookup per chunk).
    pub fn check_chunks_present(
        &self,
        object: &Hash,
        chunks: &[ChunkRef],
    ) -> Result<(), StoreError> {
        for c in chunks {
            if !self.has_chunk(&c.id)? {
                return Err(StoreError::MissingChunk {
                    hash: *object,
                    chunk: c.id,
                });
            }
        }
        Ok(())
    }

    /// The commit itself, once every chunk is known to be present: flushes the chunks, then writes
    /// the manifests, names and pins in one synced batch.
    pub(super) fn write_manifests(
        &self,
        ms: &[SignedManifest],
        pin: bool,
    ) -> Result<(), StoreError> {
        let mut batch = Vec::new();
        // Names this batch moves, so that two versions in one batch (an import) order too.
        let mut named: Vec<&SignedManifest> = Vec::new();
        for m in ms {
            let hash = m.hash();
            batch.push(Write::put(
                Column::Manifests,
                hash.as_bytes().to_vec(),
                m.as_bytes(),
            ));
            if self.name_moves_to(m, &named)? {
                named.retain(|o| o.manifest.name != m.manifest.name);
                named.push(m);
                batch.push(Write::put(
                    Column::Refs,
                    name_key(&m.manifest.name),
                    hash.as_bytes().to_vec(),
                ));
            }
            batch.push(Write::delete(Column::Partial, hash.as_bytes().to_vec()));
            if pin {
                batch.push(Write::put(Column::Refs, pin_key(&hash), Vec::new()));
            }
        }
        if batch.is_empty() {
            return Ok(());
        }
        // Chunks were written without the log: make them durable before the manifests that
        // reference them (the crash-safety rule in docs/store.md).
        self.flush_chunks()?;
        self.backend.write(batch, true)
    }

    /// Makes every chunk written so far (and its index entry: the backend flushes the pair
    /// together) durable.
    pub fn flush_chunks(&self) -> Result<(), StoreError> {
        self.backend.flush(Column::Chunks)
    }

    /// Whether committing `m` moves its name to it: names only move forward
    /// ([`super::names`]). `batch` holds what this commit already points names at.
    fn name_moves_to(
        &self,
        m: &SignedManifest,
        batch: &[&SignedManifest],
    ) -> Result<bool, StoreError> {
        let name = &m.manifest.name;
        if let Some(b) = batch.iter().find(|b| &b.manifest.name == name) {
            return Ok(moves_name(&m.manifest, &b.manifest));
        }
        let Some(v) = self.backend.get(Column::Refs, &name_key(name))? else {
            return Ok(true);
        };
        let current = hash_from_key(&v)?;
        Ok(match self.manifest(&current)? {
            Some(c) => moves_name(&m.manifest, &c.manifest),
            None => true,
        })
    }

    /// Points `hash`'s name at it even if a newer object has the name: the explicit roll-back
    /// (committing never moves a name backwards).
    pub fn set_name(&self, hash: &Hash) -> Result<(), StoreError> {
        let m = self.require_manifest(hash)?;
        let key = name_key(&m.manifest.name);
        self.backend.write(
            vec![Write::put(Column::Refs, key, hash.as_bytes().to_vec())],
            true,
        )
    }

    /// The manifest `hash`, decoded and checked (signature included).
    pub fn manifest(&self, hash: &Hash) -> Result<Option<SignedManifest>, StoreError> {
        let Some(bytes) = self.backend.get(Column::Manifests, hash.as_bytes())? else {
            return Ok(None);
        };
        decode_stored(hash, &bytes).map(Some)
    }

    pub fn require_manifest(&self, hash: &Hash) -> Result<SignedManifest, StoreError> {
        self.manifest(hash)?.ok_or(StoreError::NotFound(*hash))
    }

    /// Every manifest in the store, in hash order. A stored manifest that no longer decodes is an
    /// error naming it (run `verify`).
    pub fn manifests(&self) -> Result<Vec<SignedManifest>, StoreError> {
        self.decode_column(Column::Manifests)
    }

    /// Decodes every manifest stored in `column` (manifests or partial downloads), in hash order.
    fn decode_column(&self, column: Column) -> Result<Vec<SignedManifest>, StoreError> {
        let mut out = Vec::new();
        let mut err = None;
        self.backend.scan(column, b"", &mut |k, v| {
            match hash_from_key(k).and_then(|h| decode_stored(&h, v)) {
                Ok(m) => out.push(m),
                Err(e) => err = Some(e),
            }
            err.is_none()
        })?;
        match err {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }

    /// Raw manifest entries (for verify, which must survive undecodable ones).
    pub(super) fn raw_manifests(&self) -> Result<Vec<RawEntry>, StoreError> {
        let mut out = Vec::new();
        self.backend.scan(Column::Manifests, b"", &mut |k, v| {
            out.push((k.to_vec(), v.to_vec()));
            true
        })?;
        Ok(out)
    }

    /// Resolves what a user typed: a full hash, a unique hex prefix (≥ 8 digits), or an object name.
    pub fn resolve(&self, what: &str) -> Result<Hash, StoreError> {
        if let Ok(h) = what.parse::<Hash>() {
            return Ok(h);
        }
        if let Some(v) = self.backend.get(Column::Refs, &name_key(what))? {
            return hash_from_key(&v);
        }
        let lower = what.to_ascii_lowercase();
        if lower.len() >= 8 && lower.chars().all(|c| c.is_ascii_hexdigit()) {
            let mut found = Vec::new();
            self.backend.scan(Column::Manifests, b"", &mut |k, _| {
                if let Ok(h) = hash_from_key(k) {
                    if h.to_hex().starts_with(&lower) {
                        found.push(h);
                    }
                }
                found.len() < 2
            })?;
            if let [h] = found[..] {
                return Ok(h);
            }
        }
        Err(StoreError::Unresolved(what.to_string()))
    }

    pub fn list(&self) -> Result<Vec<ObjectInfo>, StoreError> {
        let pins = self.pins()?;
        Ok(self
            .manifests()?
            .into_iter()
            .map(|m| {
                let hash = m.hash();
                ObjectInfo {
                    hash,
                    kind: m.manifest.kind,
                    name: m.manifest.name.clone(),
                    version: m.manifest.version.clone(),
                    object_len: m.manifest.object_len,
                    files: m.manifest.files.len(),
                    chunks: m.manifest.chunks.len(),
                    base: m.manifest.base,
                    pinned: pins.contains(&hash),
                    publisher: m.publisher_hex(),
                    created_at: m.manifest.created_at,
                }
            })
            .collect())
    }

    // ---- refs ----

    pub fn pins(&self) -> Result<Vec<Hash>, StoreError> {
        let mut out = Vec::new();
        self.backend.scan(Column::Refs, PIN_PREFIX, &mut |k, _| {
            if let Some(h) = std::str::from_utf8(&k[PIN_PREFIX.len()..])
                .ok()
                .and_then(|s| s.parse().ok())
            {
                out.push(h);
            }
            true
        })?;
        Ok(out)
    }

    pub fn set_pin(&self, hash: &Hash, pinned: bool) -> Result<(), StoreError> {
        if self.manifest(hash)?.is_none() {
            return Err(StoreError::NotFound(*hash));
        }
        let w = if pinned {
            Write::put(Column::Refs, pin_key(hash), Vec::new())
        } else {
            Write::delete(Column::Refs, pin_key(hash))
        };
        self.backend.write(vec![w], true)
    }

    // ---- partial downloads ----

    /// Records that `m`'s chunks are being fetched: gc keeps them, and a restarted node resumes.
    pub fn begin_partial(&self, m: &SignedManifest) -> Result<(), StoreError> {
        self.backend.write(
            vec![Write::put(
                Column::Partial,
                m.hash().as_bytes().to_vec(),
                m.as_bytes(),
            )],
            true,
        )
    }

    pub fn partials(&self) -> Result<Vec<SignedManifest>, StoreError> {
        self.decode_column(Column::Partial)
    }

    /// The manifest of a download in progress, if `hash` is one.
    pub fn partial(&self, hash: &Hash) -> Result<Option<SignedManifest>, StoreError> {
        self.backend
            .get(Column::Partial, hash.as_bytes())?
            .map(|b| decode_stored(hash, &b))
            .transpose()
    }

    /// Whether `hash` is held complete, as a download in progress, or not at all, without
    /// decoding its manifest (the servers ask this for every request; the manifest itself they
    /// keep decoded in a cache).
    pub fn holding(&self, hash: &Hash) -> Result<Holding, StoreError> {
        if self.backend.contains(Column::Manifests, hash.as_bytes())? {
            Ok(Holding::Complete)
        } else if self.backend.contains(Column::Partial, hash.as_bytes())? {
            Ok(Holding::Partial)
        } else {
            Ok(Holding::None)
        }
    }

    pub fn abandon_partial(&self, hash: &Hash) -> Result<(), StoreError> {
        self.backend.write(
            vec![Write::delete(Column::Partial, hash.as_bytes().to_vec())],
            true,
        )
    }

    // ---- reading objects ----

    /// Decodes one chunk of an object (id checked, length checked, bomb-safe).
    pub fn read_chunk(&self, object: &Hash, r: &ChunkRef) -> Result<Vec<u8>, StoreError> {
        let stored = self.chunk(&r.id)?.ok_or(StoreError::MissingChunk {
            hash: *object,
            chunk: r.id,
        })?;
        Ok(chunk::decode(&stored, r)?)
    }

    /// Writes object `hash` to `out`, verifying every chunk and the whole-object hash. On a mismatch
    /// the error comes after some bytes were written: callers write to a temp file and rename.
    pub fn read_object(
        &self,
        hash: &Hash,
        out: &mut dyn std::io::Write,
        progress: &mut dyn FnMut(u64),
    ) -> Result<SignedManifest, StoreError> {
        let m = self.require_manifest(hash)?;
        let mut hasher = blake3::Hasher::new();
        for r in &m.manifest.chunks {
            let data = self.read_chunk(hash, r)?;
            hasher.update(&data);
            out.write_all(&data)
                .map_err(|e| StoreError::io("writing the object", e))?;
            progress(u64::from(r.len));
        }
        out.flush()
            .map_err(|e| StoreError::io("writing the object", e))?;
        let actual = Hash::from(hasher.finalize());
        if actual != m.manifest.object_hash {
            return Err(StoreError::ObjectHash {
                hash: *hash,
                expected: m.manifest.object_hash,
                actual,
            });
        }
        Ok(m)
    }
}

/// Decodes a manifest read from the store and checks it is stored under its own hash.
fn decode_stored(hash: &Hash, bytes: &[u8]) -> Result<SignedManifest, StoreError> {
    let m = manifest::decode(bytes).map_err(|e| StoreError::Corrupt {
        key: format!("manifest {hash}"),
        problem: e.to_string(),
    })?;
    if m.hash() != *hash {
        return Err(StoreError::Corrupt {
            key: format!("manifest {hash}"),
            problem: format!("stored bytes hash to {}", m.hash()),
        });
    }
    Ok(m)
}

impl ObjectStore {
    /// Writes an object to `out` in one go (small objects, tests).
    pub fn get_bytes(&self, hash: &Hash) -> Result<Vec<u8>, StoreError> {
        let mut v = Vec::new();
        self.read_object(hash, &mut v, &mut |_| {})?;
        Ok(v)
    }
}
