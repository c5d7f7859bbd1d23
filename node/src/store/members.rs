//! Reading part of an object: one member file of a folder object (`zdn cat OBJ FILE`), or any
//! byte range (one tensor, for `zdn apply`).

use std::io::Write;

use zdn_protocol::folder::FileEntry;
use zdn_protocol::manifest::SignedManifest;
use zdn_protocol::Hash;

use super::{ObjectStore, StoreError};

impl ObjectStore {
    /// Writes member `path` of folder object `hash` to `out` and returns its table entry. Chunks
    /// never span files, so exactly the member's chunks are read, each checked against its id
    /// before decoding; the ids are in the signed manifest, so the bytes are the publisher's. (The
    /// whole-object hash covers every file: `get` and `verify` check it.)
    pub fn read_file(
        &self,
        hash: &Hash,
        path: &str,
        out: &mut dyn Write,
    ) -> Result<FileEntry, StoreError> {
        let m = self.require_manifest(hash)?;
        self.read_member(&m, path, out)
    }

    /// [`Self::read_file`] of the object `m` describes, for a caller that holds its manifest (no
    /// second read and decode of it).
    pub fn read_member(
        &self,
        m: &SignedManifest,
        path: &str,
        out: &mut dyn Write,
    ) -> Result<FileEntry, StoreError> {
        let hash = &m.hash();
        let missing = || StoreError::NoSuchFile {
            object: *hash,
            path: path.to_owned(),
        };
        if !m.manifest.is_folder() {
            return Err(StoreError::NotAFolder {
                object: *hash,
                path: path.to_owned(),
            });
        }
        let file = m.manifest.file(path).ok_or_else(missing)?.clone();
        let mut written = 0u64;
        for r in m.manifest.file_chunks(&file) {
            let data = self.read_chunk(hash, r)?;
            out.write_all(&data)
                .map_err(|e| StoreError::io("writing the file", e))?;
            written += data.len() as u64;
        }
        out.flush()
            .map_err(|e| StoreError::io("writing the file", e))?;
        if written != file.len {
            return Err(StoreError::Corrupt {
                key: format!("object {hash}"),
                problem: format!(
                    "the chunks of {path:?} hold {written} bytes, the file table says {}",
                    file.len
                ),
            });
        }
        Ok(file)
    }

    /// Appends bytes `offset .. offset + len` of the object `m` describes to `out`. Only the
    /// chunks overlapping the range are read (found by binary search), each checked against its id
    /// from the signed manifest before decoding. Memory: the range plus one chunk.
    pub fn read_range(
        &self,
        m: &SignedManifest,
        offset: u64,
        len: u64,
        out: &mut Vec<u8>,
    ) -> Result<(), StoreError> {
        let hash = m.hash();
        let end = offset
            .checked_add(len)
            .filter(|&e| e <= m.manifest.object_len)
            .ok_or_else(|| StoreError::Corrupt {
                key: format!("object {hash}"),
                problem: format!(
                    "bytes {offset}+{len} lie past the object's {} bytes",
                    m.manifest.object_len
                ),
            })?;
        let chunks = &m.manifest.chunks;
        // The last chunk starting at or before `offset`.
        let first = chunks
            .partition_point(|c| c.offset <= offset)
            .saturating_sub(1);
        let want = usize::try_from(len).map_err(|_| StoreError::TooLarge {
            len,
            limit: usize::MAX as u64,
        })?;
        out.reserve(want);
        let start_len = out.len();
        for r in chunks[first..].iter().take_while(|c| c.offset < end) {
            let data = self.read_chunk(&hash, r)?;
            let from = offset.saturating_sub(r.offset) as usize;
            let to = (end - r.offset).min(data.len() as u64) as usize;
            out.extend_from_slice(data.get(from..to).unwrap_or_default());
        }
        if out.len() - start_len != want {
            return Err(StoreError::Corrupt {
                key: format!("object {hash}"),
                problem: format!(
                    "its chunks hold {} of the {want} bytes at {offset}",
                    out.len() - start_len
                ),
            });
        }
        Ok(())
    }
}
