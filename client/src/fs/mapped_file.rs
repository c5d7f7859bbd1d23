//! `MappedFile`: a read-only memory map of an input file, with a way to drop pages already consumed so
//! that walking a large model tensor by tensor keeps the resident set near one tensor, not the model.

use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::{Mmap, UncheckedAdvice};
use zdn_protocol::Hash;

/// Read-only map of a whole file. An empty file maps to an empty slice.
#[derive(Debug)]
pub struct MappedFile {
    path: PathBuf,
    map: Option<Mmap>,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot read {path}: {cause}")]
pub struct OpenError {
    pub path: PathBuf,
    pub cause: std::io::Error,
}

impl MappedFile {
    pub fn open(path: &Path) -> Result<Self, OpenError> {
        let err = |cause| OpenError {
            path: path.to_owned(),
            cause,
        };
        let file = File::open(path).map_err(err)?;
        Self::from_file(path, file)
    }

    /// Maps an opened file (`path` is for messages).
    pub fn from_file(path: &Path, file: File) -> Result<Self, OpenError> {
        let err = |cause| OpenError {
            path: path.to_owned(),
            cause,
        };
        let meta = file.metadata().map_err(err)?;
        if meta.is_dir() {
            return Err(err(std::io::Error::other("is a directory")));
        }
        let map = if meta.len() == 0 {
            None
        } else {
            // SAFETY: the map is read-only and its contents are treated as untrusted input (every
            // header, length and offset is validated before use). Another process truncating or
            // rewriting the file while it is mapped is outside what any mmap reader can guard against;
            // zdn never writes to its inputs and writes outputs to new files that are renamed into place.
            Some(unsafe { Mmap::map(&file) }.map_err(err)?)
        };
        Ok(MappedFile {
            path: path.to_owned(),
            map,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn bytes(&self) -> &[u8] {
        self.map.as_deref().unwrap_or(&[])
    }

    pub fn len(&self) -> usize {
        self.bytes().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops the resident pages of `range` from this process (they stay in the page cache and fault
    /// back in if read again). A hint: failures are ignored.
    pub fn release(&self, range: std::ops::Range<usize>) {
        let Some(map) = &self.map else { return };
        let end = range.end.min(map.len());
        if range.start >= end {
            return;
        }
        // SAFETY: MADV_DONTNEED on a read-only, file-backed shared mapping only discards page-table
        // entries; later reads fault the same file contents back in. No slice into the map is
        // invalidated, because the bytes they observe do not change.
        let _ = unsafe {
            map.unchecked_advise_range(UncheckedAdvice::DontNeed, range.start, end - range.start)
        };
    }

    /// BLAKE3 of the whole file, releasing pages as it goes.
    pub fn blake3(&self) -> Hash {
        let mut h = blake3::Hasher::new();
        self.hash_into(&mut h);
        h.finalize().into()
    }

    /// Feeds the file's bytes to `h` in 64 MiB steps, releasing each step's pages after use.
    pub fn hash_into(&self, h: &mut blake3::Hasher) {
        const STEP: usize = 64 << 20;
        let bytes = self.bytes();
        let mut off = 0;
        while off < bytes.len() {
            let end = (off + STEP).min(bytes.len());
            h.update(&bytes[off..end]);
            self.release(off..end);
            off = end;
        }
    }
}
