//! `AtomicFile`: an output written to a temporary file beside its destination and renamed into place
//! only when complete, so a failure or a kill never leaves a half-written output under the real name
//! (and an interrupt leaves no temporary file either: [`crate::fs::partial`]).

use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::fs::partial::Partial;

#[derive(Debug, thiserror::Error)]
pub enum AtomicFileError {
    #[error("cannot create output {path}: {cause}")]
    Create {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("cannot write output {path}: {cause}")]
    Write {
        path: PathBuf,
        cause: std::io::Error,
    },
}

/// A buffered writer over a temporary file that becomes `path` on [`AtomicFile::commit`]. Dropped
/// without commit, the temporary file is removed.
#[derive(Debug)]
pub struct AtomicFile {
    path: PathBuf,
    writer: BufWriter<Partial<tempfile::NamedTempFile>>,
}

/// Where an output's temporary sibling goes and how its name starts: `.<name>.…partial` in the
/// output's folder, so the final rename stays on one file system and a leftover is recognisable.
pub(crate) fn partial_sibling(path: &Path) -> (PathBuf, String) {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    (dir, format!(".{name}."))
}

impl AtomicFile {
    pub fn create(path: &Path) -> Result<Self, AtomicFileError> {
        let (dir, prefix) = partial_sibling(path);
        let tmp = Partial::create(|| {
            tempfile::Builder::new()
                .prefix(&prefix)
                .suffix(".partial")
                .tempfile_in(&dir)
        })
        .map_err(|cause| AtomicFileError::Create {
            path: path.to_owned(),
            cause,
        })?;
        Ok(AtomicFile {
            path: path.to_owned(),
            writer: BufWriter::with_capacity(1 << 20, tmp),
        })
    }

    fn werr(&self, cause: std::io::Error) -> AtomicFileError {
        AtomicFileError::Write {
            path: self.path.clone(),
            cause,
        }
    }

    pub fn write_all(&mut self, bytes: &[u8]) -> Result<(), AtomicFileError> {
        self.writer.write_all(bytes).map_err(|e| self.werr(e))
    }

    /// Overwrites bytes at `offset` (used to fill in an index reserved at the start).
    pub fn write_at(&mut self, offset: u64, bytes: &[u8]) -> Result<(), AtomicFileError> {
        let r = (|| {
            let end = self.writer.stream_position()?;
            self.writer.seek(SeekFrom::Start(offset))?;
            self.writer.write_all(bytes)?;
            self.writer.seek(SeekFrom::Start(end))?;
            Ok(())
        })();
        r.map_err(|e| self.werr(e))
    }

    /// Flushes, fsyncs and renames into place.
    pub fn commit(self) -> Result<(), AtomicFileError> {
        let path = self.path.clone();
        let werr = |cause| AtomicFileError::Write {
            path: path.clone(),
            cause,
        };
        let tmp = self.writer.into_inner().map_err(|e| werr(e.into_error()))?;
        tmp.as_file().sync_all().map_err(werr)?;
        tmp.settle(|t| t.persist(&path))
            .map_err(|e| werr(e.error))?;
        if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            // Make the rename itself durable; not all filesystems allow fsync on a directory.
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    }
}

impl std::io::Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.writer.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.writer.flush()
    }
}
