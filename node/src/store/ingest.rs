//! `add`: an object from bytes to verified, compressed, deduplicated chunks plus a signed manifest.

use std::collections::HashSet;
use std::ops::Range;

use zdn_protocol::bitdelta::Granularity;
use zdn_protocol::chunk::{self, DEFAULT_CHUNK_SIZE};
use zdn_protocol::folder::delta::{FolderDeltaError, OutputFile, Source};
use zdn_protocol::folder::patch::{self, MAX_PATCHED_LEN};
use zdn_protocol::folder::{self, FileEntry, Member};
use zdn_protocol::manifest::{Kind, Manifest, PublisherKey, SignedManifest, TensorEntry};
use zdn_protocol::object::{self, ObjectError};
use zdn_protocol::soup::Recipe;
use zdn_protocol::wire::Announcement;
use zdn_protocol::{DType, Hash};

use super::compress::{self, compress_windows, TensorSpans};
use super::{ObjectStore, StoreError};

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
    /// Files of a folder object (0 for a single file).
    pub files: usize,
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

/// An object ready to be chunked: its bytes as consecutive parts (one file, or a folder's files in
/// canonical order), where chunks must start, and what the manifest says about its contents.
/// Called with (part index, byte range in that part) once the store is done with those bytes, so
/// that a caller holding memory maps can drop their pages (peak memory then stays bounded by a
/// window of chunks, not by the object).
pub type Release<'a> = &'a (dyn Fn(usize, Range<usize>) + Sync);

struct Planned<'a> {
    parts: Vec<&'a [u8]>,
    object_len: u64,
    boundaries: Vec<u64>,
    tensors: Vec<TensorEntry>,
    files: Vec<FileEntry>,
}

impl AddReport {
    /// The report of an add of `p` in `chunks` chunks, before anything is stored.
    fn starting(opts: &AddOptions, p: &Planned<'_>, chunks: usize) -> AddReport {
        AddReport {
            hash: Hash::ZERO,
            kind: opts.kind,
            name: opts.name.clone(),
            object_len: p.object_len,
            files: p.files.len(),
            chunks,
            new_chunks: 0,
            new_stored_bytes: 0,
            dedup_bytes: 0,
            stored_bytes: 0,
            already_present: false,
        }
    }
}

impl<'a> Planned<'a> {
    /// Where each part starts in the object, and the object's chunk ranges (cut at the plan's
    /// boundaries and at every part's start).
    fn chunk_ranges(&self, chunk_size: u32) -> Result<(Vec<u64>, Vec<Range<u64>>), StoreError> {
        let mut boundaries = self.boundaries.clone();
        let mut starts = Vec::with_capacity(self.parts.len());
        let mut at = 0u64;
        for part in &self.parts {
            starts.push(at);
            boundaries.push(at);
            at += part.len() as u64;
        }
        Ok((
            starts,
            chunk::plan(self.object_len, &boundaries, chunk_size)?,
        ))
    }

    /// The bytes of `r`, which lies inside one part (every part start is a chunk boundary).
    fn slice(&self, starts: &[u64], r: &Range<u64>) -> Option<&'a [u8]> {
        let (i, range) = self.locate(starts, r)?;
        self.parts.get(i)?.get(range)
    }

    /// The part `r` lies in and its range there.
    fn locate(&self, starts: &[u64], r: &Range<u64>) -> Option<(usize, Range<usize>)> {
        let i = starts.partition_point(|&s| s <= r.start).checked_sub(1)?;
        let from = usize::try_from(r.start - starts[i]).ok()?;
        let to = usize::try_from(r.end - starts[i]).ok()?;
        Some((i, from..to))
    }
}

/// Drops the input's pages of each window of chunks once it is written, and those of the window
/// before it again: reading a window can map the input's pages just before it back in (the kernel
/// maps already cached pages around a faulting one, 64 KiB by default), which with chunks of a few
/// KiB would keep a large share of the input resident.
struct WrittenWindows<'r> {
    release: Release<'r>,
    /// The ranges of the window before (file index, byte range).
    behind: Vec<(usize, Range<usize>)>,
}

impl WrittenWindows<'_> {
    /// The window of `ranges` (object offsets) of `p`, whose members start at `starts`, is written.
    fn release(&mut self, p: &Planned<'_>, starts: &[u64], ranges: &[Range<u64>]) {
        for (i, range) in self.behind.drain(..) {
            (self.release)(i, range);
        }
        for r in ranges {
            if let Some((i, range)) = p.locate(starts, r) {
                (self.release)(i, range.clone());
                self.behind.push((i, range));
            }
        }
    }
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
        // A folder soup is mixed exactly (docs/spec/recipe.md "Folder soups"): its recipe carries
        // the default quantization, so that one mix has one recipe.
        let folder = bm.manifest.is_folder();
        if folder && (recipe.bits() != 1 || recipe.granularity() != Granularity::Row) {
            return Err(StoreError::SoupQuantization(recorded));
        }
        for c in recipe.components() {
            let problem = match self.manifest(&c.delta)? {
                None => "is not in the store".to_string(),
                Some(m) if m.manifest.kind != Kind::Delta => {
                    format!("is a {} object, not a delta", m.manifest.kind.as_str())
                }
                Some(m) if m.manifest.is_folder() && !folder => {
                    "is a folder delta or adapter: the soup's base is a single file".to_string()
                }
                Some(m) if !m.manifest.is_folder() && folder => {
                    "is a single-file delta: the soup's base is a model folder".to_string()
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
        self.add_releasing(bytes, opts, key, &|_, _| {})
    }

    /// [`Self::add`], calling `release` for each range of `bytes` (part 0) it is done with.
    pub fn add_releasing(
        &self,
        bytes: &[u8],
        opts: &AddOptions,
        key: &PublisherKey,
        release: Release<'_>,
    ) -> Result<(SignedManifest, AddReport), StoreError> {
        self.undo_on_error(|written| {
            let planned = self.plan_file(bytes, opts)?;
            self.add_planned(&planned, opts, key, written, release)
        })
    }

    /// Adds a model folder as one object: its files (`members`, in canonical order: sorted by path
    /// bytes) concatenated, with a file table in the manifest (docs/spec/manifest.md "Folders"). The folder
    /// is checked first ([`folder::layout()`]); a folder is a base model. Like [`Self::add`], nothing
    /// is left behind on error.
    pub fn add_folder(
        &self,
        members: &[Member<'_>],
        opts: &AddOptions,
        key: &PublisherKey,
    ) -> Result<(SignedManifest, AddReport), StoreError> {
        self.add_folder_releasing(members, opts, key, &|_, _| {})
    }

    /// [`Self::add_folder`], calling `release` with (member index, range) as it is done with them.
    pub fn add_folder_releasing(
        &self,
        members: &[Member<'_>],
        opts: &AddOptions,
        key: &PublisherKey,
        release: Release<'_>,
    ) -> Result<(SignedManifest, AddReport), StoreError> {
        let layout = match (opts.kind, opts.base) {
            (Kind::Base, None) => None,
            (Kind::Delta, Some(base)) => Some(self.check_folder_delta(members, base)?),
            _ => return Err(StoreError::FolderKind),
        };
        self.undo_on_error(|written| {
            let layout = match layout {
                Some(l) => l,
                None => folder::layout(members)?,
            };
            let planned = Planned {
                parts: members.iter().map(|m| m.bytes).collect(),
                object_len: layout.object_len,
                boundaries: layout.boundaries,
                tensors: layout.tensors,
                files: layout.files,
            };
            self.add_planned(&planned, opts, key, written, release)
        })
    }

    /// Checks a folder delta against the base it names, a base in the store: a LoRA adapter
    /// folder pairs with the base's tensors ([`folder::adapter::adapter_layout`]); any other is a
    /// folder delta ([`folder::delta_layout`]) whose `delta.bitdelta` records the base's object.
    fn check_folder_delta(
        &self,
        members: &[Member<'_>],
        base: Hash,
    ) -> Result<folder::FolderLayout, StoreError> {
        let bm = self.manifest(&base)?.ok_or(StoreError::MissingBase(base))?;
        if bm.manifest.kind != Kind::Base {
            return Err(StoreError::NotABase(base, bm.manifest.kind.as_str()));
        }
        if folder::adapter::is_adapter(members.iter().map(|m| m.path)) {
            let tensors = base_tensors(&bm)?;
            return Ok(folder::adapter::adapter_layout(members, &tensors)?.0);
        }
        let d = folder::delta_layout(members)?;
        if d.base_object != bm.manifest.object_hash {
            return Err(StoreError::WrongBase {
                base,
                recorded: d.base_object,
                actual: bm.manifest.object_hash,
            });
        }
        for f in &d.delta.files {
            self.check_side_file(&bm, members, f)?;
        }
        Ok(d.layout)
    }

    /// A carried or patched file of a folder delta rebuilds the bytes its layout names: a carried
    /// member hashes to its `blake3`; a patch, applied to the base's file of the same path (read
    /// from the store, its hash the layout's `base_blake3`), rebuilds `len` bytes hashing to
    /// `blake3`. So a bad delta is refused where it is published, not at every station.
    fn check_side_file(
        &self,
        base: &SignedManifest,
        members: &[Member<'_>],
        f: &OutputFile,
    ) -> Result<(), StoreError> {
        let bad = |problem: String| FolderDeltaError::File {
            path: f.path.clone(),
            problem,
        };
        let Some(member) = f.member().filter(|_| f.from != Source::Tensors) else {
            return Ok(());
        };
        let bytes = members
            .iter()
            .find(|m| m.path == member)
            .map(|m| m.bytes)
            .ok_or_else(|| FolderDeltaError::MissingMember(member.clone()))?;
        if f.from != Source::Patched {
            if Some(Hash::of(bytes)) != f.blake3 {
                return Err(bad("its bytes do not hash to the layout's blake3".into()).into());
            }
            return Ok(());
        }
        let entry = base
            .manifest
            .file(&f.path)
            .filter(|e| e.len <= MAX_PATCHED_LEN)
            .ok_or_else(
                || bad("the base has no file of this path within the patch limit".into()),
            )?;
        let mut old = Vec::with_capacity(entry.len as usize);
        self.read_file(&base.hash(), &f.path, &mut old)?;
        patch::rebuild_file(f, &old, bytes).map_err(|e| bad(e.to_string()))?;
        Ok(())
    }

    fn undo_on_error(
        &self,
        f: impl FnOnce(&mut Vec<Hash>) -> Result<(SignedManifest, AddReport), StoreError>,
    ) -> Result<(SignedManifest, AddReport), StoreError> {
        let mut written = Vec::new();
        let result = f(&mut written);
        if result.is_err() {
            // Best effort: leftovers are unreferenced and gc removes them anyway.
            let _ = self.delete_chunks(&written, false);
        }
        result
    }

    /// Checks a single-file object as what `opts` says it is, and the base it names.
    fn plan_file<'a>(&self, bytes: &'a [u8], opts: &AddOptions) -> Result<Planned<'a>, StoreError> {
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
            if bm.manifest.is_folder() {
                return Err(StoreError::FolderBase(base));
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
        Ok(Planned {
            parts: vec![bytes],
            object_len: bytes.len() as u64,
            boundaries: layout.boundaries,
            // Only a base model's tensors are plain element arrays (a delta's blocks are not).
            tensors: layout.tensors,
            files: Vec::new(),
        })
    }

    /// Chunks, compresses and stores `p`, then signs and commits its manifest. Memory is bounded by
    /// a window of chunks, whatever the object's size; the whole-object hash is computed beside.
    fn add_planned(
        &self,
        p: &Planned<'_>,
        opts: &AddOptions,
        key: &PublisherKey,
        written: &mut Vec<Hash>,
        release: Release<'_>,
    ) -> Result<(SignedManifest, AddReport), StoreError> {
        let len = p.object_len;
        if len > self.limits.max_object_size {
            return Err(StoreError::TooLarge {
                len,
                limit: self.limits.max_object_size,
            });
        }
        let (starts, ranges) = p.chunk_ranges(opts.chunk_size)?;
        // A delta's blocks and a recipe are not element arrays: no planes codec for them.
        let spans = TensorSpans::new(match opts.kind {
            Kind::Base => &p.tensors,
            Kind::Delta | Kind::Soup => &[],
        });

        let mut chunks = Vec::with_capacity(ranges.len());
        let mut report = AddReport::starting(opts, p, ranges.len());
        // Ids written by this add: a set, so each check is O(1) however many chunks the object has.
        let mut new_ids: HashSet<Hash> = HashSet::new();
        // The whole-object hash, window after window as they are written; then the window's
        // bytes are released, so only a few windows are ever resident.
        let mut hasher = blake3::Hasher::new();
        let slice = |r: &Range<u64>| {
            p.slice(&starts, r).ok_or_else(|| StoreError::Corrupt {
                key: "object layout".into(),
                problem: format!("chunk {r:?} does not lie inside one file"),
            })
        };
        let workers = compress::default_workers();
        let mut written_windows = WrittenWindows {
            release,
            behind: Vec::new(),
        };
        compress_windows(
            &ranges,
            &slice,
            opts.zstd_level,
            &spans,
            workers,
            &mut |w| {
                for d in &w.pieces {
                    hasher.update(d);
                }
                written_windows.release(p, &starts, w.ranges);
                let mut batch = Vec::new();
                for c in w.compressed {
                    report.stored_bytes += c.stored.len() as u64;
                    if new_ids.contains(&c.r.id) || self.has_chunk(&c.r.id)? {
                        report.dedup_bytes += u64::from(c.r.len);
                    } else {
                        new_ids.insert(c.r.id);
                        report.new_stored_bytes += c.stored.len() as u64;
                        batch.push((c.r.id, c.stored));
                    }
                    chunks.push(c.r);
                }
                written.extend(self.put_chunks(batch)?);
                Ok(())
            },
        )?;
        let object_hash = Hash::from(hasher.finalize());
        report.new_chunks = written.len();

        let manifest = Manifest {
            kind: opts.kind,
            name: opts.name.clone(),
            version: opts.version.clone(),
            created_at: opts.created_at,
            base: opts.base,
            object_len: len,
            object_hash,
            chunks,
            tensors: p.tensors.clone(),
            files: p.files.clone(),
            extra: opts.extra.clone(),
        };
        let (signed, already_present) = self.sign_or_reuse(manifest, key)?;
        report.already_present = already_present;
        report.hash = signed.hash();
        self.commit(&signed, opts.pin)?;
        // Its publisher's signed announcement, for when the manifest is too big for gossip. (A
        // name over an announcement's 256 bytes has none: such an object is announced whole or not
        // at all.)
        if let Ok(a) = Announcement::signed(&signed, key) {
            self.put_announcement_of(&a, &signed)?;
        }
        Ok((signed, report))
    }

    /// Adding the same object again with the same settings is idempotent: the existing manifest
    /// (signed at its own time) is kept rather than a second one that differs only in created_at.
    /// `true` when it was.
    fn sign_or_reuse(
        &self,
        manifest: Manifest,
        key: &PublisherKey,
    ) -> Result<(SignedManifest, bool), StoreError> {
        let existing = self.manifests()?.into_iter().find(|m| {
            m.publisher == key.public()
                && Manifest {
                    created_at: manifest.created_at,
                    ..m.manifest.clone()
                } == manifest
        });
        Ok(match existing {
            Some(m) => (m, true),
            None => (manifest.sign(key)?, false),
        })
    }
}

/// A base's tensors by name, as its manifest lists them.
fn base_tensors(
    m: &SignedManifest,
) -> Result<std::collections::BTreeMap<String, zdn_protocol::lora::TensorMeta>, StoreError> {
    m.manifest
        .tensors
        .iter()
        .map(|t| {
            let dtype = DType::from_code(t.dtype).ok_or_else(|| StoreError::Corrupt {
                key: format!("manifest {}", m.hash()),
                problem: format!("tensor {:?} has an unknown dtype code", t.name),
            })?;
            Ok((
                t.name.clone(),
                zdn_protocol::lora::TensorMeta {
                    dtype,
                    shape: t.shape.clone(),
                },
            ))
        })
        .collect()
}
