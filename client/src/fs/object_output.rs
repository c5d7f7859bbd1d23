//! Writing an object of the store to disk: a single-file object to a file (temp file + rename), a
//! folder object to a folder (docs/store.md "Folders"). A folder is written into a fresh temporary
//! folder beside the destination, each member path checked again before anything is created
//! (paths are untrusted, even from a signed manifest), and renamed into place only after the
//! whole-object hash checked out. An existing non-empty destination is refused unless `force`;
//! with `force`, the verified members are then moved into it one by one (files of the folder that
//! are not members are left alone), after checking that no folder on the way is a link.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use zdn_node::store::{StoreError, StoreHandle};
use zdn_protocol::folder::{check_path, FileEntry};
use zdn_protocol::manifest::{Manifest, SignedManifest};

use crate::fs::atomic_file::{partial_sibling, AtomicFile, AtomicFileError};
use crate::fs::partial::Partial;

#[derive(Debug, thiserror::Error)]
pub enum ObjectOutputError {
    #[error("{path}: {cause}")]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error(transparent)]
    File(#[from] AtomicFileError),
    #[error("{0} exists and is not an empty folder: the object is a model folder; name a new or empty folder, or pass --force to write its files into this one")]
    NotEmpty(PathBuf),
    #[error("{0} exists and is not a folder: the object is a model folder")]
    NotAFolder(PathBuf),
    #[error("member path {path:?} is not safe to write: {problem}")]
    UnsafePath { path: String, problem: String },
    #[error("{0} is a symbolic link or not a folder: refusing to write through it")]
    Link(PathBuf),
    #[error("the object ended before its file table did ({0} bytes missing)")]
    Short(u64),
    #[error("the object holds more bytes than its file table")]
    Long,
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> ObjectOutputError + '_ {
    move |cause| ObjectOutputError::Io {
        path: path.to_owned(),
        cause,
    }
}

/// Why an object could not be written out.
#[derive(Debug, thiserror::Error)]
pub enum WriteObjectError {
    #[error(transparent)]
    Output(#[from] ObjectOutputError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Writes the object of `m` to `path` through a running node's store thread, in bounded jobs so
/// that peers are served meanwhile. Blocking: call it from `spawn_blocking` or a plain thread.
pub fn write_object_blocking(
    store: &StoreHandle,
    m: &SignedManifest,
    path: &Path,
    force: bool,
) -> Result<(), WriteObjectError> {
    let mut out = ObjectOutput::create(&m.manifest, path, force)?;
    store.read_object_blocking(m, &mut out, &mut |_| {})?;
    Ok(out.commit()?)
}

/// Where an object's bytes go while it is read; [`ObjectOutput::commit`] makes it visible.
#[derive(Debug)]
pub enum ObjectOutput {
    File(AtomicFile),
    Folder(FolderOutput),
}

impl ObjectOutput {
    /// An output for the object `m` describes: a folder for a folder object, else a file.
    pub fn create(m: &Manifest, path: &Path, force: bool) -> Result<Self, ObjectOutputError> {
        Ok(if m.is_folder() {
            ObjectOutput::Folder(FolderOutput::create(path, &m.files, force)?)
        } else {
            ObjectOutput::File(AtomicFile::create(path)?)
        })
    }

    pub fn commit(self) -> Result<(), ObjectOutputError> {
        match self {
            ObjectOutput::File(f) => Ok(f.commit()?),
            ObjectOutput::Folder(f) => f.commit(),
        }
    }
}

impl Write for ObjectOutput {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            ObjectOutput::File(f) => f.write(buf),
            ObjectOutput::Folder(f) => f.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            ObjectOutput::File(f) => f.flush(),
            ObjectOutput::Folder(f) => f.flush(),
        }
    }
}

/// A folder object being written: the object's bytes, in order, are split into its member files
/// inside a temporary folder.
#[derive(Debug)]
pub struct FolderOutput {
    dest: PathBuf,
    force: bool,
    tmp: Partial<tempfile::TempDir>,
    files: Vec<FileEntry>,
    /// The member being written (index into `files`) and the bytes it still needs.
    next: usize,
    open: Option<(BufWriter<File>, u64)>,
}

/// Checks a member path again before it is joined below a folder.
fn safe(path: &str) -> Result<(), ObjectOutputError> {
    check_path(path).map_err(|e| ObjectOutputError::UnsafePath {
        path: path.to_owned(),
        problem: e.to_string(),
    })
}

fn is_empty_dir(p: &Path) -> Result<bool, ObjectOutputError> {
    Ok(std::fs::read_dir(p).map_err(io(p))?.next().is_none())
}

/// Checks that a folder may be written at `dest` (absent, an empty folder, or with `force` any
/// folder; never a link or a file) and makes the temporary folder beside it that becomes it.
pub(crate) fn staging_folder(
    dest: &Path,
    force: bool,
) -> Result<Partial<tempfile::TempDir>, ObjectOutputError> {
    match std::fs::symlink_metadata(dest) {
        Ok(meta) if meta.is_dir() => {
            if !force && !is_empty_dir(dest)? {
                return Err(ObjectOutputError::NotEmpty(dest.to_owned()));
            }
        }
        Ok(meta) if meta.file_type().is_symlink() => {
            return Err(ObjectOutputError::Link(dest.to_owned()))
        }
        Ok(_) => return Err(ObjectOutputError::NotAFolder(dest.to_owned())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(dest)(e)),
    }
    let (parent, prefix) = partial_sibling(dest);
    Partial::create(|| {
        tempfile::Builder::new()
            .prefix(&prefix)
            .suffix(".partial")
            .tempdir_in(&parent)
    })
    .map_err(io(&parent))
}

impl FolderOutput {
    pub fn create(
        dest: &Path,
        files: &[FileEntry],
        force: bool,
    ) -> Result<Self, ObjectOutputError> {
        for f in files {
            safe(&f.path)?;
        }
        let tmp = staging_folder(dest, force)?;
        Ok(FolderOutput {
            dest: dest.to_owned(),
            force,
            tmp,
            files: files.to_vec(),
            next: 0,
            open: None,
        })
    }

    /// Closes the member being written (fsynced) and opens the next one, creating empty members
    /// on the way. `false` when every member is written.
    fn advance(&mut self) -> Result<bool, ObjectOutputError> {
        self.close()?;
        while let Some(f) = self.files.get(self.next) {
            self.next += 1;
            let path = self.tmp.path().join(&f.path);
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(io(dir))?;
            }
            let file = File::create(&path).map_err(io(&path))?;
            if f.len == 0 {
                file.sync_all().map_err(io(&path))?;
                continue;
            }
            self.open = Some((BufWriter::with_capacity(1 << 20, file), f.len));
            return Ok(true);
        }
        Ok(false)
    }

    fn close(&mut self) -> Result<(), ObjectOutputError> {
        if let Some((w, left)) = self.open.take() {
            if left > 0 {
                return Err(ObjectOutputError::Short(left));
            }
            let f = w.into_inner().map_err(|e| io(&self.dest)(e.into_error()))?;
            f.sync_all().map_err(io(&self.dest))?;
        }
        Ok(())
    }

    fn put(&mut self, mut buf: &[u8]) -> Result<(), ObjectOutputError> {
        while !buf.is_empty() {
            if self.open.as_ref().is_none_or(|(_, left)| *left == 0) && !self.advance()? {
                return Err(ObjectOutputError::Long);
            }
            if let Some((w, left)) = self.open.as_mut() {
                let n = buf.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
                w.write_all(&buf[..n]).map_err(io(&self.dest))?;
                *left -= n as u64;
                buf = &buf[n..];
            }
        }
        Ok(())
    }

    /// Every member written: moves the folder into place.
    pub fn commit(mut self) -> Result<(), ObjectOutputError> {
        // Trailing empty members, and a check that nothing is missing.
        while self.advance()? {
            if let Some((_, left)) = &self.open {
                return Err(ObjectOutputError::Short(*left));
            }
        }
        let exists = std::fs::symlink_metadata(&self.dest).is_ok();
        let whole = !exists || is_empty_dir(&self.dest)?;
        if !whole && !self.force {
            return Err(ObjectOutputError::NotEmpty(self.dest.clone()));
        }
        let FolderOutput {
            dest, tmp, files, ..
        } = self;
        tmp.settle(|tmp| {
            if whole {
                // rename(2) replaces an empty folder.
                std::fs::rename(tmp.path(), &dest).map_err(io(&dest))?;
                let _ = tmp.keep();
                Ok(())
            } else {
                move_members(tmp.path(), &dest, &files)
            }
        })?;
        let parent = dest.parent().filter(|p| !p.as_os_str().is_empty());
        if let Some(Ok(d)) = parent.map(File::open) {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

/// `--force` into a non-empty folder: each member renamed from `tmp` to its place, after checking
/// that every folder on the way is a real folder inside the destination (not a link).
fn move_members(tmp: &Path, dest: &Path, files: &[FileEntry]) -> Result<(), ObjectOutputError> {
    for f in files {
        let mut at = dest.to_path_buf();
        let mut parts = f.path.split('/').peekable();
        while let Some(part) = parts.next() {
            if parts.peek().is_none() {
                break;
            }
            at.push(part);
            match std::fs::symlink_metadata(&at) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => return Err(ObjectOutputError::Link(at)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    std::fs::create_dir(&at).map_err(io(&at))?;
                }
                Err(e) => return Err(io(&at)(e)),
            }
        }
        let from = tmp.join(&f.path);
        let to = dest.join(&f.path);
        std::fs::rename(&from, &to).map_err(io(&to))?;
    }
    Ok(())
}

impl Write for FolderOutput {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.put(buf).map_err(std::io::Error::other)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match &mut self.open {
            Some((w, _)) => w.flush(),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn table(spec: &[(&str, u64)]) -> Vec<FileEntry> {
        let mut offset = 0;
        spec.iter()
            .map(|&(p, len)| {
                let f = FileEntry {
                    path: p.into(),
                    offset,
                    len,
                };
                offset += len;
                f
            })
            .collect()
    }

    #[test]
    fn writes_members_and_renames_into_place() {
        let d = tempfile::tempdir().unwrap();
        let dest = d.path().join("out");
        let files = table(&[("a/x", 3), ("b", 0), ("c", 4), ("z", 0)]);
        let mut o = FolderOutput::create(&dest, &files, false).unwrap();
        o.write_all(b"xy").unwrap();
        o.write_all(b"zcccc").unwrap();
        o.commit().unwrap();
        assert_eq!(std::fs::read(dest.join("a/x")).unwrap(), b"xyz");
        assert_eq!(std::fs::read(dest.join("b")).unwrap(), b"");
        assert_eq!(std::fs::read(dest.join("c")).unwrap(), b"cccc");
        assert_eq!(std::fs::read(dest.join("z")).unwrap(), b"");
        // No temporary folder is left beside it.
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);

        // Non-empty: refused, unless forced; forced keeps other files.
        std::fs::write(dest.join("other"), b"o").unwrap();
        assert!(matches!(
            FolderOutput::create(&dest, &files, false),
            Err(ObjectOutputError::NotEmpty(_))
        ));
        let mut o = FolderOutput::create(&dest, &files, true).unwrap();
        o.write_all(b"XYZCCCC").unwrap();
        o.commit().unwrap();
        assert_eq!(std::fs::read(dest.join("a/x")).unwrap(), b"XYZ");
        assert_eq!(std::fs::read(dest.join("other")).unwrap(), b"o");
    }

    #[test]
    fn short_long_and_unsafe_objects_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let files = table(&[("a", 3)]);
        let mut o = FolderOutput::create(&d.path().join("o1"), &files, false).unwrap();
        o.write_all(b"ab").unwrap();
        assert!(matches!(o.commit(), Err(ObjectOutputError::Short(1))));
        let mut o = FolderOutput::create(&d.path().join("o2"), &files, false).unwrap();
        assert!(o.write_all(b"abcd").is_err());
        drop(o);
        assert!(!d.path().join("o1").exists() && !d.path().join("o2").exists());
        let bad = table(&[("../escape", 1)]);
        assert!(matches!(
            FolderOutput::create(&d.path().join("o3"), &bad, false),
            Err(ObjectOutputError::UnsafePath { .. })
        ));
        // Nothing was left behind by the failed writes.
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
        #[cfg(unix)]
        {
            let dest = d.path().join("o4");
            std::fs::create_dir(&dest).unwrap();
            std::fs::write(dest.join("keep"), b"k").unwrap();
            std::os::unix::fs::symlink(d.path(), dest.join("sub")).unwrap();
            let files = table(&[("sub/x", 1)]);
            let mut o = FolderOutput::create(&dest, &files, true).unwrap();
            o.write_all(b"1").unwrap();
            assert!(matches!(o.commit(), Err(ObjectOutputError::Link(_))));
            assert!(!d.path().join("x").exists());
        }
    }
}
