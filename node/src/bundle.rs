//! Bundles (`.zdnb`): objects in one file, for a USB disk carried to a station with no link.
//!
//! ```text
//! "ZDNB" | version u8 = 1 | 3 zero bytes
//! records: tag u8 | len u32 | payload
//!   1 manifest  payload = canonical signed manifest bytes
//!   2 chunk     payload = id (32) | stored chunk bytes        (id = BLAKE3 of the stored bytes)
//!   3 announce  payload = a publisher's signed announcement of a manifest of the bundle
//!   255 end     payload = record count u64 | BLAKE3 of every byte before this record (32)
//! ```
//! An announcement record follows its manifest, only for a manifest too big for gossip (it is
//! announced by hash, which takes the publisher's signature): a station that imports the object
//! can announce it in turn. (Readers older than this record refuse a bundle that has one.)
//! Manifests come first (each after what it needs: bases before deltas, component deltas before
//! soups), then each chunk once. The end record makes a
//! truncated or spliced bundle detectable. `import` checks everything (chunk ids, signatures, trust,
//! coverage, object hashes) before a single manifest is committed, and removes the chunks it wrote
//! when anything fails, so the store is left as it was.

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};

use zdn_protocol::chunk::MAX_CHUNK_SIZE;
use zdn_protocol::manifest::{self, Kind, SignedManifest, MAX_MANIFEST_LEN};
use zdn_protocol::Hash;

use zdn_protocol::wire::{Announcement, MAX_ANNOUNCEMENT_LEN};

use crate::net::MAX_GOSSIP_LEN;
use crate::store::{ObjectStore, StoreError, TrustPolicy};

const MAGIC: &[u8; 4] = b"ZDNB";
const VERSION: u8 = 1;
const TAG_MANIFEST: u8 = 1;
const TAG_CHUNK: u8 = 2;
const TAG_ANNOUNCE: u8 = 3;
const TAG_END: u8 = 255;
/// Largest chunk payload: a chunk that did not compress is stored raw, so ≤ MAX_CHUNK_SIZE + id.
const MAX_CHUNK_RECORD: usize = MAX_CHUNK_SIZE as usize + 32;

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("not a zdn bundle (bad magic)")]
    Magic,
    #[error("bundle version {0} is not supported (this build reads version 1)")]
    Version(u8),
    #[error("bundle is truncated: {0}")]
    Truncated(String),
    #[error("bundle record #{index}: unknown tag {tag}")]
    Tag { index: u64, tag: u8 },
    #[error("bundle record #{index}: {what} of {len} bytes is over the {max}-byte limit")]
    RecordTooLarge {
        index: u64,
        what: &'static str,
        len: usize,
        max: usize,
    },
    #[error("bundle chunk {id}: stored bytes hash to {actual} (corrupt bundle)")]
    ChunkHash { id: Hash, actual: Hash },
    #[error("bundle record #{index}: manifest: {error}")]
    Manifest {
        index: u64,
        error: manifest::ManifestError,
    },
    #[error("bundle record #{index}: announcement: {problem}")]
    Announcement { index: u64, problem: String },
    #[error("bundle end record: {0}")]
    End(String),
    #[error("bundle object {object}: {error}")]
    Object {
        object: Hash,
        error: Box<StoreError>,
    },
    #[error(transparent)]
    Store(Box<StoreError>),
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

impl From<StoreError> for BundleError {
    fn from(e: StoreError) -> Self {
        BundleError::Store(Box::new(e))
    }
}

/// What an export or import moved.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct BundleReport {
    pub manifests: Vec<Hash>,
    pub chunks: usize,
    /// Chunks that were new to the store (import only).
    pub new_chunks: usize,
    pub bytes: u64,
}

/// Writes and hashes.
struct HashingWriter<'a> {
    out: &'a mut dyn Write,
    hasher: blake3::Hasher,
    written: u64,
}

impl HashingWriter<'_> {
    fn put(&mut self, bytes: &[u8]) -> Result<(), BundleError> {
        self.hasher.update(bytes);
        self.written += bytes.len() as u64;
        self.out.write_all(bytes).map_err(|source| BundleError::Io {
            what: "writing the bundle",
            source,
        })
    }

    fn record(&mut self, tag: u8, parts: &[&[u8]]) -> Result<(), BundleError> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let len = u32::try_from(len).map_err(|_| BundleError::RecordTooLarge {
            index: 0,
            what: "record",
            len,
            max: u32::MAX as usize,
        })?;
        self.put(&[tag])?;
        self.put(&len.to_le_bytes())?;
        for p in parts {
            self.put(p)?;
        }
        Ok(())
    }
}

/// Writes `roots` and (unless `with_bases` is false) the bases they need into a bundle.
pub fn export(
    store: &ObjectStore,
    roots: &[Hash],
    with_bases: bool,
    out: &mut dyn Write,
) -> Result<BundleReport, BundleError> {
    // Each manifest once, after everything it needs (bases before deltas, components before soups).
    let mut order: Vec<SignedManifest> = Vec::new();
    let mut seen = HashSet::new();
    let mut waiting: HashMap<Hash, SignedManifest> = HashMap::new();
    for root in roots {
        // Depth-first, post-order, with an explicit stack (`true`: its dependencies are out).
        let mut stack = vec![(*root, false)];
        while let Some((h, ready)) = stack.pop() {
            if ready {
                if let Some(m) = waiting.remove(&h) {
                    order.push(m);
                }
                continue;
            }
            if !seen.insert(h) {
                continue;
            }
            let m = store.require_manifest(&h)?;
            stack.push((h, true));
            if with_bases {
                for d in store.dependencies(&m)?.into_iter().rev() {
                    if !seen.contains(&d) {
                        stack.push((d, false));
                    }
                }
            }
            waiting.insert(h, m);
        }
    }

    let mut w = HashingWriter {
        out,
        hasher: blake3::Hasher::new(),
        written: 0,
    };
    w.put(MAGIC)?;
    w.put(&[VERSION, 0, 0, 0])?;
    let mut records = 0u64;
    let mut report = BundleReport::default();
    for m in &order {
        w.record(TAG_MANIFEST, &[m.as_bytes()])?;
        records += 1;
        report.manifests.push(m.hash());
        if m.as_bytes().len() > MAX_GOSSIP_LEN {
            if let Some(a) = store.announcement(&m.hash())? {
                let bytes = a.encode().map_err(|e| StoreError::Corrupt {
                    key: format!("announcement of {}", m.hash()),
                    problem: e.to_string(),
                })?;
                w.record(TAG_ANNOUNCE, &[&bytes])?;
                records += 1;
            }
        }
    }
    let mut sent = HashSet::new();
    for m in &order {
        for id in m.manifest.chunk_ids() {
            if !sent.insert(id) {
                continue;
            }
            let stored = store.chunk(&id)?.ok_or(StoreError::MissingChunk {
                hash: m.hash(),
                chunk: id,
            })?;
            w.record(TAG_CHUNK, &[id.as_bytes(), &stored])?;
            records += 1;
            report.chunks += 1;
        }
    }
    let digest = w.hasher.finalize();
    w.record(TAG_END, &[&records.to_le_bytes(), digest.as_bytes()])?;
    report.bytes = w.written;
    w.out.flush().map_err(|source| BundleError::Io {
        what: "writing the bundle",
        source,
    })?;
    Ok(report)
}

struct HashingReader<'a> {
    input: &'a mut dyn Read,
    hasher: blake3::Hasher,
    read: u64,
}

impl HashingReader<'_> {
    fn exact(&mut self, buf: &mut [u8], what: &str) -> Result<(), BundleError> {
        self.input.read_exact(buf).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                BundleError::Truncated(format!("{what} cut off after byte {}", self.read))
            } else {
                BundleError::Io {
                    what: "reading the bundle",
                    source: e,
                }
            }
        })?;
        self.hasher.update(buf);
        self.read += buf.len() as u64;
        Ok(())
    }
}

/// Reads a bundle into `store`. See the module docs for what is checked.
pub fn import(
    store: &ObjectStore,
    input: &mut dyn Read,
    trust: &TrustPolicy,
) -> Result<BundleReport, BundleError> {
    let mut written = Vec::new();
    let result = import_inner(store, input, trust, &mut written);
    if result.is_err() {
        let _ = store.delete_chunks(&written, false);
    }
    result
}

fn import_inner(
    store: &ObjectStore,
    input: &mut dyn Read,
    trust: &TrustPolicy,
    written: &mut Vec<Hash>,
) -> Result<BundleReport, BundleError> {
    let mut r = HashingReader {
        input,
        hasher: blake3::Hasher::new(),
        read: 0,
    };
    let mut head = [0u8; 8];
    r.exact(&mut head, "header")?;
    if &head[..4] != MAGIC {
        return Err(BundleError::Magic);
    }
    if head[4] != VERSION || head[5..] != [0, 0, 0] {
        return Err(BundleError::Version(head[4]));
    }
    let mut manifests: Vec<SignedManifest> = Vec::new();
    let mut announcements: Vec<(u64, Announcement)> = Vec::new();
    let mut report = BundleReport::default();
    let mut index = 0u64;
    loop {
        let before_record = r.hasher.clone().finalize();
        let (tag, payload) = read_record(&mut r, index)?;
        match tag {
            TAG_MANIFEST => manifests.push(manifest_record(store, trust, index, &payload)?),
            TAG_ANNOUNCE => announcements.push((index, announce_record(index, &payload)?)),
            TAG_CHUNK => {
                let (id, stored) = chunk_record(index, payload)?;
                report.chunks += 1;
                written.extend(store.put_chunks(vec![(id, stored)])?);
            }
            _ => {
                end_record(&mut r, index, &payload, &before_record)?;
                break;
            }
        }
        index += 1;
    }
    report.new_chunks = written.len();
    report.bytes = r.read;
    // Each announcement must be of a manifest of the bundle, by its publisher.
    for (index, a) in &announcements {
        if !manifests.iter().any(|m| a.announces(m)) {
            return Err(BundleError::Announcement {
                index: *index,
                problem: format!("it announces {}, which is not in the bundle", a.manifest),
            });
        }
    }
    commit_checked(store, &mut manifests, &mut report)?;
    for (_, a) in &announcements {
        if let Some(m) = manifests.iter().find(|m| a.announces(m)) {
            store.put_announcement_of(a, m)?;
        }
    }
    Ok(report)
}

/// An announcement record: decoded, and signed by the publisher it names.
fn announce_record(index: u64, payload: &[u8]) -> Result<Announcement, BundleError> {
    let bad = |problem: String| BundleError::Announcement { index, problem };
    let a = Announcement::decode(payload).map_err(|e| bad(e.to_string()))?;
    a.verify().map_err(|e| bad(e.to_string()))?;
    Ok(a)
}

/// The next record's tag and payload, its length checked against its kind's cap before a byte of
/// it is allocated.
fn read_record(r: &mut HashingReader<'_>, index: u64) -> Result<(u8, Vec<u8>), BundleError> {
    let mut rh = [0u8; 5];
    r.exact(&mut rh, "record header (no end record)")?;
    let tag = rh[0];
    let len = u32::from_le_bytes([rh[1], rh[2], rh[3], rh[4]]) as usize;
    let (what, max) = match tag {
        TAG_MANIFEST => ("manifest", MAX_MANIFEST_LEN),
        TAG_CHUNK => ("chunk", MAX_CHUNK_RECORD),
        TAG_ANNOUNCE => ("announcement", MAX_ANNOUNCEMENT_LEN),
        TAG_END => ("end record", 40),
        _ => return Err(BundleError::Tag { index, tag }),
    };
    if len > max {
        return Err(BundleError::RecordTooLarge {
            index,
            what,
            len,
            max,
        });
    }
    let mut payload = vec![0u8; len];
    r.exact(&mut payload, what)?;
    Ok((tag, payload))
}

/// A manifest record: decoded, signed by a trusted publisher, its object within the store's size
/// limit.
fn manifest_record(
    store: &ObjectStore,
    trust: &TrustPolicy,
    index: u64,
    payload: &[u8],
) -> Result<SignedManifest, BundleError> {
    let m = manifest::decode(payload).map_err(|error| BundleError::Manifest { index, error })?;
    trust.check(&m)?;
    let lim = store.limits().max_object_size;
    if m.manifest.object_len > lim {
        return Err(BundleError::Object {
            object: m.hash(),
            error: Box::new(StoreError::TooLarge {
                len: m.manifest.object_len,
                limit: lim,
            }),
        });
    }
    Ok(m)
}

/// A chunk record: its id, and its stored bytes, which must hash to it.
fn chunk_record(index: u64, mut payload: Vec<u8>) -> Result<(Hash, Vec<u8>), BundleError> {
    if payload.len() < 32 {
        return Err(BundleError::Truncated(format!(
            "chunk record #{index} has no id"
        )));
    }
    let stored = payload.split_off(32);
    let mut id = [0u8; 32];
    id.copy_from_slice(&payload);
    let id = Hash::from_bytes(id);
    let actual = Hash::of(&stored);
    if actual != id {
        return Err(BundleError::ChunkHash { id, actual });
    }
    Ok((id, stored))
}

/// The end record: the record count and the checksum of every byte before it, and nothing after.
fn end_record(
    r: &mut HashingReader<'_>,
    index: u64,
    payload: &[u8],
    before_record: &blake3::Hash,
) -> Result<(), BundleError> {
    if payload.len() != 40 {
        return Err(BundleError::End(format!(
            "{} bytes, expected 40",
            payload.len()
        )));
    }
    let mut n = [0u8; 8];
    n.copy_from_slice(&payload[..8]);
    let n = u64::from_le_bytes(n);
    if n != index {
        return Err(BundleError::End(format!(
            "says {n} records, the bundle has {index}"
        )));
    }
    if payload[8..] != *before_record.as_bytes() {
        return Err(BundleError::End(
            "checksum does not match the bundle's bytes".into(),
        ));
    }
    let mut extra = [0u8; 1];
    let more = r.input.read(&mut extra).map_err(|source| BundleError::Io {
        what: "reading the bundle",
        source,
    })?;
    if more != 0 {
        return Err(BundleError::End("bytes after the end record".into()));
    }
    Ok(())
}

/// Every object must have its dependencies (in the bundle or the store), be complete and hash
/// right before any becomes visible; then all are committed in one synced batch.
fn commit_checked(
    store: &ObjectStore,
    manifests: &mut [SignedManifest],
    report: &mut BundleReport,
) -> Result<(), BundleError> {
    let in_bundle: HashSet<Hash> = manifests.iter().map(SignedManifest::hash).collect();
    for m in manifests.iter() {
        let object = m.hash();
        let deps = store.dependencies(m).map_err(|e| BundleError::Object {
            object,
            error: Box::new(e),
        })?;
        for d in deps {
            if !in_bundle.contains(&d) && store.manifest(&d)?.is_none() {
                let error = if m.manifest.base == Some(d) {
                    StoreError::MissingBase(d)
                } else {
                    StoreError::SoupComponent {
                        component: d,
                        problem: "is neither in the bundle nor in the store".into(),
                    }
                };
                return Err(BundleError::Object {
                    object,
                    error: Box::new(error),
                });
            }
        }
        check_object(store, m).map_err(|e| BundleError::Object {
            object,
            error: Box::new(e),
        })?;
        report.manifests.push(object);
    }
    // Bases, then deltas, then soups.
    manifests.sort_by_key(|m| match m.manifest.kind {
        Kind::Base => 0,
        Kind::Delta => 1,
        Kind::Soup => 2,
    });
    store.commit_many(manifests, true)?;
    Ok(())
}

/// Decodes every chunk of `m` from the store and checks the object hash.
fn check_object(store: &ObjectStore, m: &SignedManifest) -> Result<(), StoreError> {
    let object = m.hash();
    let mut hasher = blake3::Hasher::new();
    for r in &m.manifest.chunks {
        hasher.update(&store.read_chunk(&object, r)?);
    }
    let actual = Hash::from(hasher.finalize());
    if actual != m.manifest.object_hash {
        return Err(StoreError::ObjectHash {
            hash: object,
            expected: m.manifest.object_hash,
            actual,
        });
    }
    Ok(())
}
