//! A folder written out of order (a folder delta: `delta.bitdelta` is written while the other
//! members are known): its members go into a temporary folder beside the destination, which is
//! renamed into place by [`OutputDir::commit`] once complete and checked; dropped before, the
//! temporary folder is removed. The destination must not exist or be an empty folder.

use std::path::{Path, PathBuf};

use zdn_protocol::folder::{check_path, Member};

use crate::fs::atomic_file::AtomicFile;
use crate::fs::object_output::staging_folder;
use crate::fs::partial::Partial;
use crate::model::folder::{ModelFolder, ModelFolderError};

#[derive(Debug, thiserror::Error)]
pub enum OutputDirError {
    #[error("{path}: {cause}")]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error(transparent)]
    Destination(#[from] crate::fs::object_output::ObjectOutputError),
    #[error("member path {path:?} cannot be written: {problem}")]
    Path { path: String, problem: String },
    #[error(transparent)]
    Reopen(#[from] ModelFolderError),
    #[error(transparent)]
    AtomicFile(#[from] crate::fs::atomic_file::AtomicFileError),
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> OutputDirError + '_ {
    move |cause| OutputDirError::Io {
        path: path.to_owned(),
        cause,
    }
}

/// A folder being written. See the module documentation.
#[derive(Debug)]
pub struct OutputDir {
    dest: PathBuf,
    tmp: Partial<tempfile::TempDir>,
}

impl OutputDir {
    pub fn create(dest: &Path) -> Result<Self, OutputDirError> {
        Ok(OutputDir {
            dest: dest.to_owned(),
            tmp: staging_folder(dest, false)?,
        })
    }

    /// The path of member `rel` inside the temporary folder, its folders created.
    fn place(&self, rel: &str) -> Result<PathBuf, OutputDirError> {
        check_path(rel).map_err(|e| OutputDirError::Path {
            path: rel.to_owned(),
            problem: e.to_string(),
        })?;
        let path = self.tmp.path().join(rel);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io(dir))?;
        }
        Ok(path)
    }

    /// Writes member `rel` in one go.
    pub fn write(&mut self, rel: &str, bytes: &[u8]) -> Result<(), OutputDirError> {
        let path = self.place(rel)?;
        std::fs::write(&path, bytes).map_err(io(&path))
    }

    /// A member written piece by piece (and at offsets): commit it when complete.
    pub fn file(&mut self, rel: &str) -> Result<AtomicFile, OutputDirError> {
        let path = self.place(rel)?;
        Ok(AtomicFile::create(&path)?)
    }

    /// Reads the folder back as it would be stored and hands its members to `check`.
    pub fn check<E: From<OutputDirError>>(
        &self,
        check: impl FnOnce(&[Member<'_>]) -> Result<(), E>,
    ) -> Result<(), E> {
        let f = ModelFolder::open(self.tmp.path()).map_err(OutputDirError::from)?;
        check(&f.members())
    }

    /// Moves the folder into place; returns its size in bytes.
    pub fn commit(self) -> Result<u64, OutputDirError> {
        let size = ModelFolder::open(self.tmp.path())?
            .files()
            .iter()
            .map(|(_, m)| m.len() as u64)
            .sum();
        let dest = self.dest;
        self.tmp.settle(|tmp| {
            // rename(2) replaces an empty folder.
            std::fs::rename(tmp.path(), &dest).map_err(io(&dest))?;
            let _ = tmp.keep();
            Ok(size)
        })
    }
}
