//! Reading one member file of a folder object (`zdn cat OBJ FILE`).

use std::io::Write;

use zdn_protocol::folder::FileEntry;
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
}
