//! The canonical manifest encoding (versions 1 and 2). All integers little-endian; strings are UTF-8
//! with a length prefix; every field has exactly one valid encoding, and the decoder refuses anything
//! else, so `decode(bytes)` succeeding means `encode(decode(bytes)) == bytes`.
//!
//! ```text
//! "ZDNM" | version u8 (1 | 2) | kind u8 (0 base, 1 delta, 2 soup) | name str16 | version str16 | created_at u64
//! | has_base u8 (0|1) [ base 32 ] | object_len u64 | object_hash 32
//! | n_chunks u32 | n × ( id 32 | offset u64 | len u32 | codec u8 )
//! | n_tensors u32 | n × ( name str16 | dtype u8 | ndim u8 | ndim × u64 | offset u64 | len u64 )
//! | version 2 only: n_files u32 (≥ 1) | n × ( path str16 | offset u64 | len u64 )
//! | n_extra u16 | n × ( key str16 | value str32 )
//! | publisher 32 | signature 64
//! ```
//! A manifest without a file table (a single-file object) is version 1, byte for byte as before
//! folders existed; one with a file table (a model folder) is version 2. The signature covers
//! `SIGNING_CONTEXT` followed by everything before it (the version byte included). The manifest hash
//! is the BLAKE3 of all the bytes, signature included. docs/spec/manifest.md has the rules.

use super::signing::{verify, SigningError};
use super::{FileEntry, Kind, Manifest, SignedManifest, TensorEntry};
use crate::chunk::{check_coverage, ChunkError, ChunkRef, Codec, MAX_CHUNK_SIZE};
use crate::folder::{FolderError, MAX_FILES};
use crate::hash::Hash;

pub(super) const MAGIC: &[u8; 4] = b"ZDNM";
/// A single-file object's manifest.
pub(super) const VERSION: u8 = 1;
/// A model folder's manifest: version 1 plus the file table.
pub(super) const VERSION_FOLDER: u8 = 2;
/// Domain separation: a manifest signature can never be replayed as a signature of anything else.
pub(super) const SIGNING_CONTEXT: &[u8] = b"zdn manifest v1\0";

/// Largest encoded manifest accepted (a 1 TiB object in 1 MiB chunks needs about 47 MiB).
pub const MAX_MANIFEST_LEN: usize = 64 << 20;
const MAX_NAME: usize = 256;
const MAX_VERSION: usize = 64;
const MAX_TENSOR_NAME: usize = 1024;
const MAX_DIMS: usize = 8;
const MAX_EXTRA_KEY: usize = 128;
const MAX_EXTRA_VALUE: usize = 64 << 10;
const SIGNATURE_LEN: usize = 64;

/// Why a manifest is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest is {0} bytes, over the {MAX_MANIFEST_LEN}-byte limit")]
    TooLarge(usize),
    #[error("manifest is truncated: {0} cut off")]
    Truncated(&'static str),
    #[error("not a zdn manifest (bad magic)")]
    Magic,
    #[error("manifest version {0} is not supported (this build reads versions 1 and 2)")]
    Version(u8),
    #[error("unknown object kind code {0}")]
    Kind(u8),
    #[error("unknown chunk codec code {0}")]
    Codec(u8),
    #[error("{field} is not valid: {problem}")]
    Field {
        field: &'static str,
        problem: String,
    },
    #[error("chunk list: {0}")]
    Chunks(#[from] ChunkError),
    #[error("tensor {name:?}: bytes {offset}+{len} are outside the {object_len}-byte object")]
    TensorRange {
        name: String,
        offset: u64,
        len: u64,
        object_len: u64,
    },
    #[error("file table: {0}")]
    Files(#[from] FolderError),
    #[error("{0} trailing bytes after the signature")]
    Trailing(usize),
    #[error("signature: {0}")]
    Signature(#[from] SigningError),
}

fn field(field: &'static str, problem: impl Into<String>) -> ManifestError {
    ManifestError::Field {
        field,
        problem: problem.into(),
    }
}

fn check_str(
    name: &'static str,
    s: &str,
    max: usize,
    allow_empty: bool,
) -> Result<(), ManifestError> {
    if s.len() > max {
        return Err(field(
            name,
            format!("{} bytes, the limit is {max}", s.len()),
        ));
    }
    if s.is_empty() && !allow_empty {
        return Err(field(name, "empty"));
    }
    if s.chars().any(char::is_control) {
        return Err(field(name, "contains control characters"));
    }
    Ok(())
}

/// Checks every rule of the format that is not about bytes (the decoder checks these too).
pub(super) fn validate(m: &Manifest) -> Result<(), ManifestError> {
    check_str("name", &m.name, MAX_NAME, false)?;
    check_str("version", &m.version, MAX_VERSION, true)?;
    match (m.kind, m.base) {
        (Kind::Delta, None) => return Err(field("base", "a delta must name its base")),
        (Kind::Soup, None) => return Err(field("base", "a soup must name its base")),
        (Kind::Base, Some(_)) => return Err(field("base", "a base model has no base")),
        _ => {}
    }
    if u32::try_from(m.chunks.len()).is_err() {
        return Err(field("chunks", "too many"));
    }
    check_coverage(&m.chunks, m.object_len)?;
    if u32::try_from(m.tensors.len()).is_err() {
        return Err(field("tensors", "too many"));
    }
    for t in &m.tensors {
        check_str("tensor name", &t.name, MAX_TENSOR_NAME, false)?;
        if crate::DType::from_code(t.dtype).is_none() {
            return Err(field("tensor dtype", format!("unknown code {}", t.dtype)));
        }
        if t.shape.len() > MAX_DIMS {
            return Err(field(
                "tensor shape",
                format!("{} dimensions", t.shape.len()),
            ));
        }
        let end = t.offset.checked_add(t.len);
        if end.is_none_or(|e| e > m.object_len) {
            return Err(ManifestError::TensorRange {
                name: t.name.clone(),
                offset: t.offset,
                len: t.len,
                object_len: m.object_len,
            });
        }
    }
    if !m.files.is_empty() {
        crate::folder::check_table(&m.files, m.object_len, &m.chunks, &m.tensors)?;
    }
    if m.extra.len() > usize::from(u16::MAX) {
        return Err(field("extra", "too many entries"));
    }
    for (i, (k, v)) in m.extra.iter().enumerate() {
        check_str("extra key", k, MAX_EXTRA_KEY, false)?;
        if v.len() > MAX_EXTRA_VALUE {
            return Err(field("extra value", format!("{} bytes", v.len())));
        }
        if i > 0 && m.extra[i - 1].0 >= *k {
            return Err(field("extra", "keys must be unique and sorted"));
        }
    }
    Ok(())
}

fn put_str16(out: &mut Vec<u8>, s: &str) {
    // Lengths were checked by `validate` (all limits < u16::MAX).
    out.extend_from_slice(&(s.len() as u16).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// Writes everything but the signature. Validates first.
pub(super) fn encode_body(
    m: &Manifest,
    publisher: &[u8; 32],
    out: &mut Vec<u8>,
) -> Result<(), ManifestError> {
    validate(m)?;
    let start = out.len();
    out.extend_from_slice(MAGIC);
    out.push(if m.files.is_empty() {
        VERSION
    } else {
        VERSION_FOLDER
    });
    out.push(m.kind.code());
    put_str16(out, &m.name);
    put_str16(out, &m.version);
    out.extend_from_slice(&m.created_at.to_le_bytes());
    match &m.base {
        Some(b) => {
            out.push(1);
            out.extend_from_slice(b.as_bytes());
        }
        None => out.push(0),
    }
    out.extend_from_slice(&m.object_len.to_le_bytes());
    out.extend_from_slice(m.object_hash.as_bytes());
    out.extend_from_slice(&(m.chunks.len() as u32).to_le_bytes());
    for c in &m.chunks {
        out.extend_from_slice(c.id.as_bytes());
        out.extend_from_slice(&c.offset.to_le_bytes());
        out.extend_from_slice(&c.len.to_le_bytes());
        out.push(c.codec.code());
    }
    out.extend_from_slice(&(m.tensors.len() as u32).to_le_bytes());
    for t in &m.tensors {
        put_str16(out, &t.name);
        out.push(t.dtype);
        out.push(t.shape.len() as u8);
        for d in &t.shape {
            out.extend_from_slice(&d.to_le_bytes());
        }
        out.extend_from_slice(&t.offset.to_le_bytes());
        out.extend_from_slice(&t.len.to_le_bytes());
    }
    if !m.files.is_empty() {
        // At most MAX_FILES (validated), so the count fits.
        out.extend_from_slice(&(m.files.len() as u32).to_le_bytes());
        for f in &m.files {
            put_str16(out, &f.path);
            out.extend_from_slice(&f.offset.to_le_bytes());
            out.extend_from_slice(&f.len.to_le_bytes());
        }
    }
    out.extend_from_slice(&(m.extra.len() as u16).to_le_bytes());
    for (k, v) in &m.extra {
        put_str16(out, k);
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
        out.extend_from_slice(v.as_bytes());
    }
    out.extend_from_slice(publisher);
    let total = out.len() - start + SIGNATURE_LEN;
    if total > MAX_MANIFEST_LEN {
        return Err(ManifestError::TooLarge(total));
    }
    Ok(())
}

/// A cursor over untrusted bytes: every read is bounds-checked.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], ManifestError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or(ManifestError::Truncated(what))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], ManifestError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, what)?);
        Ok(a)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, ManifestError> {
        Ok(self.array::<1>(what)?[0])
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, ManifestError> {
        Ok(u16::from_le_bytes(self.array(what)?))
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, ManifestError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, ManifestError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn hash(&mut self, what: &'static str) -> Result<Hash, ManifestError> {
        Ok(Hash::from_bytes(self.array(what)?))
    }

    fn string(&mut self, len: usize, what: &'static str) -> Result<String, ManifestError> {
        let b = self.take(len, what)?;
        String::from_utf8(b.to_vec()).map_err(|_| field(what, "not UTF-8"))
    }

    fn str16(&mut self, what: &'static str) -> Result<String, ManifestError> {
        let n = self.u16(what)?;
        self.string(usize::from(n), what)
    }

    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// A count of records of at least `min_size` bytes each, refused before anything is allocated
    /// when the rest of the input could not hold them.
    fn count(
        &mut self,
        n: usize,
        min_size: usize,
        what: &'static str,
    ) -> Result<usize, ManifestError> {
        if n.checked_mul(min_size)
            .is_none_or(|need| need > self.remaining())
        {
            return Err(ManifestError::Truncated(what));
        }
        Ok(n)
    }
}

/// Decodes and checks a signed manifest: layout, every field rule, chunk coverage, tensor ranges, and
/// the signature. Whether the publisher is *trusted* is the caller's decision.
pub fn decode(bytes: &[u8]) -> Result<SignedManifest, ManifestError> {
    if bytes.len() > MAX_MANIFEST_LEN {
        return Err(ManifestError::TooLarge(bytes.len()));
    }
    let mut r = Reader { buf: bytes, pos: 0 };
    if r.take(4, "magic")? != MAGIC {
        return Err(ManifestError::Magic);
    }
    let format_version = r.u8("version")?;
    if format_version != VERSION && format_version != VERSION_FOLDER {
        return Err(ManifestError::Version(format_version));
    }
    let kind_code = r.u8("kind")?;
    let kind = Kind::from_code(kind_code).ok_or(ManifestError::Kind(kind_code))?;
    let name = r.str16("name")?;
    let version = r.str16("version")?;
    let created_at = r.u64("created_at")?;
    let base = match r.u8("base flag")? {
        0 => None,
        1 => Some(r.hash("base")?),
        other => return Err(field("base flag", format!("{other} (must be 0 or 1)"))),
    };
    let object_len = r.u64("object length")?;
    let object_hash = r.hash("object hash")?;

    let n = r.u32("chunk count")? as usize;
    let n = r.count(n, 45, "chunk list")?;
    let mut chunks = Vec::with_capacity(n);
    for _ in 0..n {
        let id = r.hash("chunk id")?;
        let offset = r.u64("chunk offset")?;
        let len = r.u32("chunk length")?;
        let code = r.u8("chunk codec")?;
        let codec = Codec::from_code(code).ok_or(ManifestError::Codec(code))?;
        if len > MAX_CHUNK_SIZE {
            return Err(ChunkError::ChunkSize(len).into());
        }
        chunks.push(ChunkRef {
            id,
            offset,
            len,
            codec,
        });
    }

    let n = r.u32("tensor count")? as usize;
    let n = r.count(n, 20, "tensor index")?;
    let mut tensors = Vec::with_capacity(n);
    for _ in 0..n {
        let name = r.str16("tensor name")?;
        let dtype = r.u8("tensor dtype")?;
        let ndim = usize::from(r.u8("tensor ndim")?);
        if ndim > MAX_DIMS {
            return Err(field("tensor shape", format!("{ndim} dimensions")));
        }
        let mut shape = Vec::with_capacity(ndim);
        for _ in 0..ndim {
            shape.push(r.u64("tensor shape")?);
        }
        let offset = r.u64("tensor offset")?;
        let len = r.u64("tensor length")?;
        tensors.push(TensorEntry {
            name,
            dtype,
            shape,
            offset,
            len,
        });
    }

    let mut files = Vec::new();
    if format_version == VERSION_FOLDER {
        let n = r.u32("file count")? as usize;
        if n == 0 {
            return Err(field(
                "file table",
                "empty (a manifest without files is version 1)",
            ));
        }
        if n > MAX_FILES {
            return Err(FolderError::TooManyFiles(n).into());
        }
        // The smallest entry: a 1-byte path (2 + 1) and two u64.
        let n = r.count(n, 19, "file table")?;
        files.reserve_exact(n);
        for _ in 0..n {
            let path = r.str16("file path")?;
            let offset = r.u64("file offset")?;
            let len = r.u64("file length")?;
            files.push(FileEntry { path, offset, len });
        }
    }

    let n = usize::from(r.u16("extra count")?);
    let n = r.count(n, 6, "extra")?;
    let mut extra = Vec::with_capacity(n);
    for _ in 0..n {
        let k = r.str16("extra key")?;
        let vlen = r.u32("extra value")? as usize;
        if vlen > MAX_EXTRA_VALUE {
            return Err(field("extra value", format!("{vlen} bytes")));
        }
        let v = r.string(vlen, "extra value")?;
        extra.push((k, v));
    }
    let publisher: [u8; 32] = r.array("publisher key")?;
    let body_end = r.pos;
    let signature: [u8; 64] = r.array("signature")?;
    if r.remaining() != 0 {
        return Err(ManifestError::Trailing(r.remaining()));
    }

    let manifest = Manifest {
        kind,
        name,
        version,
        created_at,
        base,
        object_len,
        object_hash,
        chunks,
        tensors,
        files,
        extra,
    };
    validate(&manifest)?;
    let mut signed = SIGNING_CONTEXT.to_vec();
    signed.extend_from_slice(&bytes[..body_end]);
    verify(&publisher, &signed, &signature)?;
    Ok(SignedManifest {
        manifest,
        publisher,
        signature,
        bytes: bytes.to_vec(),
    })
}
