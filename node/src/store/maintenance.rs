//! `verify` (re-hash everything, report corruption) and `gc` (drop what no pin reaches).

use std::collections::{HashMap, HashSet};

use zdn_protocol::chunk::{self};
use zdn_protocol::manifest::{Kind, SignedManifest};
use zdn_protocol::Hash;

use super::backend::Column;
use super::{ObjectStore, StoreError};

/// One thing wrong in the store.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "problem", rename_all = "snake_case")]
pub enum Problem {
    /// A chunk whose stored bytes do not hash to its id (bit rot, a tampered file).
    CorruptChunk { chunk: Hash, actual: Hash },
    /// A manifest entry that does not decode, verify, or hash to its key.
    CorruptManifest { key: String, error: String },
    /// An object with a chunk missing from the store.
    MissingChunk { object: Hash, chunk: Hash },
    /// An object whose chunks are there but decode wrongly or hash to the wrong object hash.
    BadObject { object: Hash, error: String },
    /// A delta whose base manifest is not in the store.
    MissingBase { object: Hash, base: Hash },
    /// A soup whose component delta is not in the store.
    MissingComponent { object: Hash, component: Hash },
    /// The chunk index and the chunks disagree: a chunk without its index entry (`add` would
    /// store it again) or an index entry without its chunk (`gc` removes such entries).
    ChunkIndex { chunk: Hash, error: String },
}

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct VerifyReport {
    pub objects_checked: usize,
    pub chunks_checked: usize,
    pub bytes_checked: u64,
    /// Chunks no manifest or partial download references (left by an interrupted add; `gc` removes
    /// them). Not corruption.
    pub unreferenced_chunks: usize,
    pub problems: Vec<Problem>,
}

impl VerifyReport {
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct GcReport {
    pub manifests_removed: usize,
    pub chunks_removed: usize,
    pub stored_bytes_freed: u64,
}

/// What checking one object updates.
struct ObjectCheck<'a> {
    report: &'a mut VerifyReport,
    corrupt: &'a mut HashSet<Hash>,
    /// Count the object's chunks as checked (when the store-wide scan did not).
    count_chunks: bool,
    progress: &'a mut dyn FnMut(u64),
}

impl ObjectStore {
    /// Re-hashes chunks and objects. With `only`, checks that object (and its chunks); otherwise every
    /// chunk in the store and every object.
    pub fn verify(
        &self,
        only: Option<&Hash>,
        progress: &mut dyn FnMut(u64),
    ) -> Result<VerifyReport, StoreError> {
        let mut report = VerifyReport::default();
        let manifests = match only {
            Some(h) => vec![self.require_manifest(h)?],
            None => self.decoded_manifests(&mut report)?,
        };
        // Chunks known corrupt, so an object's check does not decode them again.
        let mut corrupt: HashSet<Hash> = HashSet::new();
        if only.is_none() {
            self.verify_every_chunk(&manifests, &mut report, &mut corrupt, progress)?;
        }
        for m in &manifests {
            report.objects_checked += 1;
            self.check_references(m, &mut report)?;
            let mut check = ObjectCheck {
                report: &mut report,
                corrupt: &mut corrupt,
                count_chunks: only.is_some(),
                progress: &mut *progress,
            };
            self.check_object(m, &mut check)?;
        }
        Ok(report)
    }

    /// Every stored manifest that decodes and is stored under its own hash; the others are
    /// reported.
    fn decoded_manifests(
        &self,
        report: &mut VerifyReport,
    ) -> Result<Vec<SignedManifest>, StoreError> {
        let mut manifests = Vec::new();
        for (k, v) in self.raw_manifests()? {
            let key = <[u8; 32]>::try_from(&k[..]).map(Hash::from_bytes);
            let key_text = key.map_or_else(|_| format!("{k:02x?}"), |h| h.to_hex());
            match (key, zdn_protocol::manifest::decode(&v)) {
                (Ok(key), Ok(m)) if m.hash() == key => manifests.push(m),
                (_, Ok(m)) => report.problems.push(Problem::CorruptManifest {
                    key: key_text,
                    error: format!("stored under the wrong key (hashes to {})", m.hash()),
                }),
                (_, Err(e)) => report.problems.push(Problem::CorruptManifest {
                    key: key_text,
                    error: e.to_string(),
                }),
            }
        }
        Ok(manifests)
    }

    /// Re-hashes every stored chunk (noting the corrupt ones and those nothing references) and
    /// checks the chunk index against the chunks.
    fn verify_every_chunk(
        &self,
        manifests: &[SignedManifest],
        report: &mut VerifyReport,
        corrupt: &mut HashSet<Hash>,
        progress: &mut dyn FnMut(u64),
    ) -> Result<(), StoreError> {
        let mut referenced: HashSet<Hash> = manifests
            .iter()
            .flat_map(|m| m.manifest.chunk_ids())
            .collect();
        for p in self.partials()? {
            referenced.extend(p.manifest.chunk_ids());
        }
        let mut stored: HashSet<Hash> = HashSet::new();
        self.backend().scan(Column::Chunks, b"", &mut |k, v| {
            let id = match <[u8; 32]>::try_from(k) {
                Ok(a) => Hash::from_bytes(a),
                Err(_) => {
                    report.problems.push(Problem::CorruptManifest {
                        key: format!("chunk key {k:02x?}"),
                        error: "not a 32-byte id".into(),
                    });
                    return true;
                }
            };
            let actual = Hash::of(v);
            report.chunks_checked += 1;
            report.bytes_checked += v.len() as u64;
            progress(v.len() as u64);
            if actual != id {
                corrupt.insert(id);
                report
                    .problems
                    .push(Problem::CorruptChunk { chunk: id, actual });
            }
            if !referenced.contains(&id) {
                report.unreferenced_chunks += 1;
            }
            stored.insert(id);
            true
        })?;
        report.problems.extend(self.index_problems(&stored)?);
        Ok(())
    }

    /// A delta's base and a soup's components must be in the store.
    fn check_references(
        &self,
        m: &SignedManifest,
        report: &mut VerifyReport,
    ) -> Result<(), StoreError> {
        let object = m.hash();
        let present = |h: &Hash| -> Result<bool, StoreError> {
            Ok(self
                .backend()
                .get(Column::Manifests, h.as_bytes())?
                .is_some())
        };
        if let Some(base) = m.manifest.base {
            if !present(&base)? {
                report.problems.push(Problem::MissingBase { object, base });
            }
        }
        if m.manifest.kind == Kind::Soup {
            // An unreadable recipe is reported by the object check.
            if let Ok(recipe) = self.recipe(m) {
                for c in recipe.components() {
                    if !present(&c.delta)? {
                        report.problems.push(Problem::MissingComponent {
                            object,
                            component: c.delta,
                        });
                    }
                }
            }
        }
        Ok(())
    }

    /// Decodes the object's chunks in order and checks the whole against the manifest's object
    /// hash.
    fn check_object(
        &self,
        m: &SignedManifest,
        check: &mut ObjectCheck<'_>,
    ) -> Result<(), StoreError> {
        let object = m.hash();
        let mut hasher = blake3::Hasher::new();
        let mut broken = false;
        for r in &m.manifest.chunks {
            if check.corrupt.contains(&r.id) {
                broken = true;
                continue;
            }
            let Some(stored) = self.backend().get(Column::Chunks, r.id.as_bytes())? else {
                check.report.problems.push(Problem::MissingChunk {
                    object,
                    chunk: r.id,
                });
                broken = true;
                continue;
            };
            if check.count_chunks {
                check.report.chunks_checked += 1;
                check.report.bytes_checked += stored.len() as u64;
                (check.progress)(stored.len() as u64);
            }
            match chunk::decode(&stored, r) {
                Ok(data) => {
                    hasher.update(&data);
                }
                Err(e) => {
                    if let chunk::ChunkError::HashMismatch { actual, .. } = e {
                        check.report.problems.push(Problem::CorruptChunk {
                            chunk: r.id,
                            actual,
                        });
                        check.corrupt.insert(r.id);
                    } else {
                        check.report.problems.push(Problem::BadObject {
                            object,
                            error: e.to_string(),
                        });
                    }
                    broken = true;
                }
            }
        }
        if !broken {
            let actual = Hash::from(hasher.finalize());
            if actual != m.manifest.object_hash {
                check.report.problems.push(Problem::BadObject {
                    object,
                    error: format!(
                        "object hashes to {actual}, manifest says {}",
                        m.manifest.object_hash
                    ),
                });
            }
        }
        Ok(())
    }

    /// Removes every manifest that no pin reaches (a pinned delta keeps its base) and every chunk
    /// that no remaining manifest or partial download references. Manifests go first, in a synced
    /// batch, so a crash never leaves a visible object without its chunks.
    pub fn gc(&self) -> Result<GcReport, StoreError> {
        let manifests = self.manifests()?;
        let mut keep: HashSet<Hash> = self.pins()?.into_iter().collect();
        // A pinned delta keeps its base and a pinned soup its components, transitively. A soup whose
        // recipe cannot be read stops gc: what it needs is unknown, so nothing is removed.
        let by_hash: HashMap<Hash, &SignedManifest> =
            manifests.iter().map(|m| (m.hash(), m)).collect();
        let mut todo: Vec<Hash> = keep.iter().copied().collect();
        while let Some(h) = todo.pop() {
            let Some(m) = by_hash.get(&h) else { continue };
            for d in self.dependencies(m)? {
                if keep.insert(d) {
                    todo.push(d);
                }
            }
        }
        let mut report = GcReport::default();
        let mut live: HashSet<Hash> = HashSet::new();
        let mut drop_manifests = Vec::new();
        for m in &manifests {
            let h = m.hash();
            if keep.contains(&h) {
                live.extend(m.manifest.chunk_ids());
            } else {
                drop_manifests.push(super::Write::delete(
                    Column::Manifests,
                    h.as_bytes().to_vec(),
                ));
            }
        }
        for p in self.partials()? {
            live.extend(p.manifest.chunk_ids());
        }
        // Names that pointed at a removed manifest go with it.
        self.backend().scan(Column::Refs, b"name/", &mut |k, v| {
            if let Ok(a) = <[u8; 32]>::try_from(v) {
                if !keep.contains(&Hash::from_bytes(a)) {
                    drop_manifests.push(super::Write::delete(Column::Refs, k.to_vec()));
                }
            }
            true
        })?;
        // And their signed announcements (a key that names no hash is dropped too).
        let prefix = super::announcements::ANNOUNCE_PREFIX;
        self.backend().scan(Column::Refs, prefix, &mut |k, _| {
            let hash = std::str::from_utf8(&k[prefix.len()..])
                .ok()
                .and_then(|hex| hex.parse::<Hash>().ok());
            if hash.is_none_or(|h| !keep.contains(&h)) {
                drop_manifests.push(super::Write::delete(Column::Refs, k.to_vec()));
            }
            true
        })?;
        // And their entries in the list by time.
        let recent = super::announcements::RECENT_PREFIX;
        self.backend().scan(Column::Refs, recent, &mut |k, _| {
            let hash = super::announcements::parse_recent_key(k).map(|(_, h)| h);
            if hash.is_none_or(|h| !keep.contains(&h)) {
                drop_manifests.push(super::Write::delete(Column::Refs, k.to_vec()));
            }
            true
        })?;
        report.manifests_removed = drop_manifests
            .iter()
            .filter(|w| w.column == Column::Manifests)
            .count();
        if !drop_manifests.is_empty() {
            self.backend().write(drop_manifests, true)?;
        }
        let mut dead = Vec::new();
        let mut stored: HashSet<Hash> = HashSet::new();
        self.backend().scan(Column::Chunks, b"", &mut |k, v| {
            if let Ok(a) = <[u8; 32]>::try_from(k) {
                let id = Hash::from_bytes(a);
                stored.insert(id);
                if !live.contains(&id) {
                    dead.push(id);
                    report.stored_bytes_freed += v.len() as u64;
                }
            }
            true
        })?;
        report.chunks_removed = dead.len();
        for part in dead.chunks(1024) {
            self.delete_chunks(part, true)?;
        }
        // Index entries whose chunk is gone (a store damaged from outside) would make `add` skip a
        // chunk it must write: remove them.
        let mut stale = Vec::new();
        self.backend().scan(Column::ChunkIndex, b"", &mut |k, _| {
            if let Ok(a) = <[u8; 32]>::try_from(k) {
                if !stored.contains(&Hash::from_bytes(a)) {
                    stale.push(super::Write::delete(Column::ChunkIndex, k.to_vec()));
                }
            }
            true
        })?;
        if !stale.is_empty() {
            self.backend().write(stale, true)?;
        }
        Ok(report)
    }

    /// Disagreements between the chunk index and `stored`, the ids in the chunks column.
    fn index_problems(&self, stored: &HashSet<Hash>) -> Result<Vec<Problem>, StoreError> {
        let mut indexed: HashSet<Hash> = HashSet::with_capacity(stored.len());
        let mut out = Vec::new();
        self.backend().scan(Column::ChunkIndex, b"", &mut |k, _| {
            // The completion mark is not a 32-byte key.
            if let Ok(a) = <[u8; 32]>::try_from(k) {
                let id = Hash::from_bytes(a);
                if !stored.contains(&id) {
                    out.push(Problem::ChunkIndex {
                        chunk: id,
                        error: "indexed, but not in the store".into(),
                    });
                }
                indexed.insert(id);
            }
            true
        })?;
        let mut missing: Vec<&Hash> = stored.difference(&indexed).collect();
        missing.sort_unstable_by_key(|h| *h.as_bytes());
        out.extend(missing.into_iter().map(|&chunk| Problem::ChunkIndex {
            chunk,
            error: "in the store, but not indexed".into(),
        }));
        Ok(out)
    }
}
