//! `add`: an object from bytes to verified, compressed, deduplicated chunks plus a signed manifest.

use std::ops::Range;

use zdn_protocol::chunk::{self, ChunkRef, DEFAULT_CHUNK_SIZE};
use zdn_protocol::manifest::{Kind, Manifest, PublisherKey, SignedManifest, TensorEntry};
use zdn_protocol::object::{self, ObjectError};
use zdn_protocol::soup::Recipe;
use zdn_protocol::{DType, Hash};

use super::{ObjectStore, StoreError};

/// Chunks compressed between two writes to the store: bounds memory to about this many chunks.
const WINDOW: usize = 32;

#[derive(Debug, Clone)]
pub struct AddOptions {
    pub kind: Kind,
    pub name: String,
    pub version: String,
    /// Manifest hash of the base (deltas).
    pub base: Option<Hash>,
    pub chunk_size: u32,
    pub zstd_level: i32,
    /// Seconds since the epoch to record (callers pass the clock; tests pass a constant).
    pub created_at: u64,
    pub extra: Vec<(String, String)>,
    pub pin: bool,
}

impl AddOptions {
    pub fn new(kind: Kind, name: impl Into<String>) -> Self {
        AddOptions {
            kind,
            name: name.into(),
            version: String::new(),
            base: None,
            chunk_size: DEFAULT_CHUNK_SIZE,
            zstd_level: 3,
            created_at: 0,
            extra: Vec::new(),
            pin: true,
        }
    }
}

/// What `add` did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AddReport {
    pub hash: Hash,
    pub kind: Kind,
    pub name: String,
    pub object_len: u64,
    pub chunks: usize,
    /// Chunks written by this add.
    pub new_chunks: usize,
    /// Stored (compressed) bytes written by this add.
    pub new_stored_bytes: u64,
    /// Object bytes whose chunk was already in the store (or earlier in the same object).
    pub dedup_bytes: u64,
    /// Stored bytes of the whole object (new and deduplicated chunks).
    pub stored_bytes: u64,
    /// True when the exact same manifest was already in the store.
    pub already_present: bool,
}

struct Compressed {
    r: ChunkRef,
    stored: Vec<u8>,
}

/// The dtype of the tensor a chunk lies in, when it holds whole elements of one tensor (then a float
/// tensor's chunk can use the planes codec).
fn element_dtype(tensors: &[TensorEntry], r: &Range<u64>) -> Option<DType> {
    let t = tensors
        .iter()
        .find(|t| t.offset <= r.start && r.end <= t.offset.saturating_add(t.len))?;
    let dtype = DType::from_code(t.dtype)?;
    let size = dtype.size() as u64;
    ((r.start - t.offset).is_multiple_of(size) && (r.end - r.start).is_multiple_of(size))
        .then_some(dtype)
}

fn compress(
    bytes: &[u8],
    ranges: &[Range<u64>],
    level: i32,
    tensors: &[TensorEntry],
) -> Vec<Compressed> {
    ranges
        .iter()
        .map(|r| {
            // Ranges come from `chunk::plan` over `bytes.len()`: in bounds and ≤ MAX_CHUNK_SIZE.
            let data = &bytes[r.start as usize..r.end as usize];
            let (codec, stored, id) =
                chunk::encode_elements(data, level, element_dtype(tensors, r));
            Compressed {
                r: ChunkRef {
                    id,
                    offset: r.start,
                    len: data.len() as u32,
                    codec,
                },
                stored,
            }
        })
        .collect()
}

/// Compresses a window of chunks on all cores; output in object order (deterministic).
fn compress_window(
    bytes: &[u8],
    ranges: &[Range<u64>],
    level: i32,
    tensors: &[TensorEntry],
) -> Vec<Compressed> {
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    if threads < 2 || ranges.len() < 2 {
        return compress(bytes, ranges, level, tensors);
    }
    let per = ranges.len().div_ceil(threads);
    std::thread::scope(|s| {
        let jobs: Vec<_> = ranges
            .chunks(per)
            .map(|part| s.spawn(move || compress(bytes, part, level, tensors)))
            .collect();
        jobs.into_iter()
            .flat_map(|j| j.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    })
}

impl ObjectStore {
    /// A soup recipe added here must name `base` (a base model in the store), and every component
    /// must be a delta in the store made against that base.
    fn check_soup(&self, bytes: &[u8], base: Option<Hash>) -> Result<(), StoreError> {
        let recipe = Recipe::decode(bytes).map_err(ObjectError::from)?;
        let recorded = recipe.base();
        if base != Some(recorded) {
            return Err(StoreError::SoupBase {
                recorded,
                given: base,
            });
        }
        let bm = self
            .manifest(&recorded)?
            .ok_or(StoreError::MissingBase(recorded))?;
        if bm.manifest.kind != Kind::Base {
            return Err(StoreError::NotABase(recorded, bm.manifest.kind.as_str()));
        }
        for c in recipe.components() {
            let problem = match self.manifest(&c.delta)? {
                None => "is not in the store".to_string(),
                Some(m) if m.manifest.kind != Kind::Delta => {
                    format!("is a {} object, not a delta", m.manifest.kind.as_str())
                }
                Some(m) if m.manifest.base != Some(recorded) => format!(
                    "is a delta of another base ({})",
                    m.manifest.base.unwrap_or(Hash::ZERO)
                ),
                Some(_) => continue,
            };
            return Err(StoreError::SoupComponent {
                component: c.delta,
                problem,
            });
        }
        Ok(())
    }

    /// Adds `bytes` as an object. Chunks first, then the signed manifest in one synced batch; on any
    /// error the chunks this call wrote are removed again, so the store is as it was.
    pub fn add(
        &self,
        bytes: &[u8],
        opts: &AddOptions,
        key: &PublisherKey,
    ) -> Result<(SignedManifest, AddReport), StoreError> {
        let mut written = Vec::new();
        let result = self.add_inner(bytes, opts, key, &mut written);
        if result.is_err() {
            // Best effort: leftovers are unreferenced and gc removes them anyway.
            let _ = self.delete_chunks(&written, false);
        }
        result
    }

    fn add_inner(
        &self,
        bytes: &[u8],
        opts: &AddOptions,
        key: &PublisherKey,
        written: &mut Vec<Hash>,
    ) -> Result<(SignedManifest, AddReport), StoreError> {
        let len = bytes.len() as u64;
        if len > self.limits.max_object_size {
            return Err(StoreError::TooLarge {
                len,
                limit: self.limits.max_object_size,
            });
        }
        let layout = object::layout(opts.kind, bytes)?;
        if opts.kind == Kind::Delta {
            let base = opts.base.ok_or_else(|| {
                StoreError::Manifest(zdn_protocol::manifest::ManifestError::Field {
                    field: "base",
                    problem: "a delta needs --base HASH (the base's manifest hash)".into(),
                })
            })?;
            let bm = self.manifest(&base)?.ok_or(StoreError::MissingBase(base))?;
            if bm.manifest.kind != Kind::Base {
                return Err(StoreError::NotABase(base, bm.manifest.kind.as_str()));
            }
            if let Some(recorded) = layout.delta_base_object {
                if !recorded.is_zero() && recorded != bm.manifest.object_hash {
                    return Err(StoreError::WrongBase {
                        base,
                        recorded,
                        actual: bm.manifest.object_hash,
                    });
                }
            }
        }
        if opts.kind == Kind::Soup {
            self.check_soup(bytes, opts.base)?;
        }
        let ranges = chunk::plan(len, &layout.boundaries, opts.chunk_size)?;

        let mut object_hash = None;
        let mut chunks = Vec::with_capacity(ranges.len());
        let mut report = AddReport {
            hash: Hash::ZERO,
            kind: opts.kind,
            name: opts.name.clone(),
            object_len: len,
            chunks: ranges.len(),
            new_chunks: 0,
            new_stored_bytes: 0,
            dedup_bytes: 0,
            stored_bytes: 0,
            already_present: false,
        };
        std::thread::scope(|s| -> Result<(), StoreError> {
            // Hash the whole object beside the compression.
            let hasher = s.spawn(|| Hash::from(blake3::hash(bytes)));
            for window in ranges.chunks(WINDOW) {
                // Only a base model's tensors are plain element arrays (a delta's blocks are not).
                let typed: &[TensorEntry] = match opts.kind {
                    Kind::Base => &layout.tensors,
                    Kind::Delta | Kind::Soup => &[],
                };
                let compressed = compress_window(bytes, window, opts.zstd_level, typed);
                let mut batch = Vec::new();
                for c in compressed {
                    report.stored_bytes += c.stored.len() as u64;
                    let seen = written.contains(&c.r.id)
                        || batch.iter().any(|(id, _): &(Hash, Vec<u8>)| *id == c.r.id)
                        || self.has_chunk(&c.r.id)?;
                    if seen {
                        report.dedup_bytes += u64::from(c.r.len);
                    } else {
                        report.new_stored_bytes += c.stored.len() as u64;
                        batch.push((c.r.id, c.stored));
                    }
                    chunks.push(c.r);
                }
                written.extend(self.put_chunks(batch)?);
            }
            object_hash = Some(
                hasher
                    .join()
                    .unwrap_or_else(|p| std::panic::resume_unwind(p)),
            );
            Ok(())
        })?;
        report.new_chunks = written.len();

        let manifest = Manifest {
            kind: opts.kind,
            name: opts.name.clone(),
            version: opts.version.clone(),
            created_at: opts.created_at,
            base: opts.base,
            object_len: len,
            object_hash: object_hash.unwrap_or(Hash::ZERO),
            chunks,
            tensors: layout.tensors,
            extra: opts.extra.clone(),
        };
        // Adding the same object again with the same settings is idempotent: the existing manifest
        // (signed at its own time) is kept rather than a second one that differs only in created_at.
        let existing = self.manifests()?.into_iter().find(|m| {
            m.publisher == key.public()
                && Manifest {
                    created_at: manifest.created_at,
                    ..m.manifest.clone()
                } == manifest
        });
        report.already_present = existing.is_some();
        let signed = match existing {
            Some(m) => m,
            None => manifest.sign(key)?,
        };
        report.hash = signed.hash();
        self.commit(&signed, opts.pin)?;
        Ok((signed, report))
    }
}
