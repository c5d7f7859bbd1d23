//! A model folder on disk, read the way zdn stores it (docs/spec/manifest.md "Folders"): every regular file
//! under the folder, hidden ones included, with its path relative to the folder; empty
//! sub-folders are not kept. Left out, at any depth, as the Hugging Face Hub's upload leaves them
//! out: `.git` (a clone's history: with Git LFS, a second copy of every weight) and
//! `.cache/huggingface` (what a `--local-dir` download notes about each file: times and tags that
//! differ from one download to the next).
//!
//! A snapshot of the Hugging Face cache (`…/models--ORG--NAME/snapshots/REV`, as
//! `huggingface_hub` downloads without `--local-dir`) is made of links to the repository's
//! `blobs/`: inside such a snapshot, and only there, a link whose target resolves to a regular file
//! in that repository's own `blobs/` is read as the file it points to. Any other link is refused. A symbolic link or a special file (device, socket, pipe) anywhere
//! inside is refused, never followed: the folder named on the command line may itself be a link.
//! Files are memory-mapped, not read into memory, and opened without following links.

use std::fs::File;
use std::path::{Path, PathBuf};

use zdn_protocol::folder::{self, FolderError, Member, MAX_FILES, MAX_PATH_LEN};

use crate::fs::mapped_file::{MappedFile, OpenError};

/// Why a folder cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum ModelFolderError {
    #[error("cannot read {path}: {cause}")]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{0} is a symbolic link: zdn stores regular files only and follows links inside a folder only in a Hugging Face cache snapshot, into its own blobs/ (copy the folder with `cp -rL` to store what the links point to)")]
    Symlink(PathBuf),
    #[error("{0} is not a regular file or folder (a device, socket or pipe)")]
    Special(PathBuf),
    #[error("{0}: the name is not valid UTF-8")]
    NotUtf8(PathBuf),
    #[error("{root} holds more than {MAX_FILES} files or folders")]
    TooMany { root: PathBuf },
    #[error("{path}: {error}")]
    Path { path: PathBuf, error: FolderError },
    #[error(transparent)]
    Open(#[from] OpenError),
}

/// A folder's files, mapped, in canonical order (sorted by path bytes).
#[derive(Debug)]
pub struct ModelFolder {
    files: Vec<(String, MappedFile)>,
    /// Paths left out (see the module documentation), sorted.
    left_out: Vec<String>,
    /// Files read through a link into a Hugging Face cache's blobs.
    linked: usize,
}

/// The `blobs/` folder of the Hugging Face cache repository `root` is a snapshot of, if it is one
/// (`REPO/snapshots/REV`, with `REPO/blobs` a folder), canonical.
fn cache_blobs(root: &Path) -> Option<PathBuf> {
    let root = std::fs::canonicalize(root).ok()?;
    let snapshots = root.parent()?;
    if snapshots.file_name()? != "snapshots" {
        return None;
    }
    let blobs = snapshots.parent()?.join("blobs");
    std::fs::symlink_metadata(&blobs)
        .ok()?
        .is_dir()
        .then_some(blobs)
}

/// The repository id (`ORG/NAME`) of the Hugging Face cache snapshot `root`
/// (`…/models--ORG--NAME/snapshots/REV`), if it is one: the cache writes `/` as `--`, which a
/// repository name cannot hold.
pub fn cache_repo_id(root: &Path) -> Option<String> {
    cache_blobs(root)?;
    let root = std::fs::canonicalize(root).ok()?;
    let repo = root.parent()?.parent()?.file_name()?.to_str()?;
    let id = repo.strip_prefix("models--")?.replace("--", "/");
    (!id.is_empty()).then_some(id)
}

/// Where the link `path` leads, when that is a regular file inside `blobs`.
fn blob_target(path: &Path, blobs: &Path) -> Option<PathBuf> {
    let target = std::fs::canonicalize(path).ok()?;
    let inside = target.parent() == Some(blobs);
    (inside && std::fs::symlink_metadata(&target).ok()?.is_file()).then_some(target)
}

/// Whether `rel` (a path relative to the folder) is one the walk leaves out: named `.git`, or
/// `huggingface` inside a folder named `.cache`.
fn left_out(rel: &str) -> bool {
    let mut parts = rel.rsplit('/');
    matches!(
        (parts.next(), parts.next()),
        (Some(".git"), _) | (Some("huggingface"), Some(".cache"))
    )
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> ModelFolderError + '_ {
    move |cause| ModelFolderError::Io {
        path: path.to_owned(),
        cause,
    }
}

/// Opens a regular file without following a link (the walk saw a regular file; a link swapped in
/// since is refused, not followed).
fn open_regular(path: &Path) -> Result<File, ModelFolderError> {
    let mut o = std::fs::OpenOptions::new();
    o.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.custom_flags(libc::O_NOFOLLOW);
    }
    let f = o.open(path).map_err(|cause| {
        if cause.raw_os_error() == Some(libc::ELOOP) {
            ModelFolderError::Symlink(path.to_owned())
        } else {
            ModelFolderError::Io {
                path: path.to_owned(),
                cause,
            }
        }
    })?;
    if !f.metadata().map_err(io(path))?.is_file() {
        return Err(ModelFolderError::Special(path.to_owned()));
    }
    Ok(f)
}

impl ModelFolder {
    /// Walks `root` and maps every regular file (see the module documentation for what is refused).
    pub fn open(root: &Path) -> Result<Self, ModelFolderError> {
        let mut found: Vec<(String, PathBuf)> = Vec::new();
        let mut skipped = Vec::new();
        let mut linked = 0usize;
        let blobs = cache_blobs(root);
        let mut entries = 0usize;
        let mut todo: Vec<(PathBuf, String)> = vec![(root.to_owned(), String::new())];
        while let Some((dir, prefix)) = todo.pop() {
            for e in std::fs::read_dir(&dir).map_err(io(&dir))? {
                let e = e.map_err(io(&dir))?;
                let path = e.path();
                entries += 1;
                if entries > MAX_FILES * 2 {
                    return Err(ModelFolderError::TooMany {
                        root: root.to_owned(),
                    });
                }
                let name = e
                    .file_name()
                    .into_string()
                    .map_err(|_| ModelFolderError::NotUtf8(path.clone()))?;
                let rel = format!("{prefix}{name}");
                if left_out(&rel) {
                    skipped.push(rel);
                    continue;
                }
                if rel.len() > MAX_PATH_LEN {
                    folder::check_path(&rel).map_err(|problem| ModelFolderError::Path {
                        path: path.clone(),
                        error: FolderError::Path {
                            path: rel.clone(),
                            problem,
                        },
                    })?;
                }
                // `symlink_metadata`: a link is seen as a link, never followed.
                let kind = std::fs::symlink_metadata(&path)
                    .map_err(io(&path))?
                    .file_type();
                if kind.is_symlink() {
                    match blobs.as_deref().and_then(|b| blob_target(&path, b)) {
                        Some(target) => {
                            linked += 1;
                            found.push((rel, target));
                        }
                        None => return Err(ModelFolderError::Symlink(path)),
                    }
                } else if kind.is_dir() {
                    todo.push((path, format!("{rel}/")));
                } else if kind.is_file() {
                    found.push((rel, path));
                } else {
                    return Err(ModelFolderError::Special(path));
                }
            }
        }
        if found.len() > MAX_FILES {
            return Err(ModelFolderError::TooMany {
                root: root.to_owned(),
            });
        }
        found.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let mut files = Vec::with_capacity(found.len());
        for (rel, path) in found {
            let f = open_regular(&path)?;
            files.push((rel, MappedFile::from_file(&path, f)?));
        }
        skipped.sort_unstable();
        Ok(ModelFolder {
            files,
            left_out: skipped,
            linked,
        })
    }

    /// Files read through a link into a Hugging Face cache's `blobs/` (0 outside such a snapshot).
    pub fn linked(&self) -> usize {
        self.linked
    }

    /// What the walk left out (`.git`, `.cache/huggingface`, at any depth), sorted.
    pub fn left_out(&self) -> &[String] {
        &self.left_out
    }

    /// The files as the store takes them: relative path and bytes, in canonical order.
    pub fn members(&self) -> Vec<Member<'_>> {
        self.files
            .iter()
            .map(|(path, map)| Member {
                path,
                bytes: map.bytes(),
            })
            .collect()
    }

    /// The files, taken: relative path and mapping, in canonical order.
    pub fn into_files(self) -> Vec<(String, MappedFile)> {
        self.files
    }

    /// The files: relative path and mapping, in canonical order.
    pub fn files(&self) -> &[(String, MappedFile)] {
        &self.files
    }

    pub fn len(&self) -> usize {
        self.files.len()
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn walks_in_canonical_order_and_refuses_links() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        std::fs::create_dir_all(root.join("sub/deeper")).unwrap();
        std::fs::create_dir_all(root.join("empty")).unwrap();
        std::fs::write(root.join("b.json"), b"{}").unwrap();
        std::fs::write(root.join("a-1.safetensors"), b"").unwrap();
        std::fs::write(root.join(".gitattributes"), b"*").unwrap();
        std::fs::write(root.join("sub/deeper/x"), b"x").unwrap();
        let f = ModelFolder::open(root).unwrap();
        let paths: Vec<&str> = f.members().iter().map(|m| m.path).collect();
        assert_eq!(
            paths,
            [
                ".gitattributes",
                "a-1.safetensors",
                "b.json",
                "sub/deeper/x"
            ]
        );
        assert_eq!(f.members()[3].bytes, b"x");
        assert!(f.left_out().is_empty());

        #[cfg(unix)]
        {
            std::os::unix::fs::symlink("/etc/passwd", root.join("sub/link")).unwrap();
            let e = ModelFolder::open(root).unwrap_err();
            assert!(matches!(e, ModelFolderError::Symlink(_)), "{e}");
            std::fs::remove_file(root.join("sub/link")).unwrap();
            std::os::unix::fs::symlink(root.join("sub"), root.join("dirlink")).unwrap();
            assert!(matches!(
                ModelFolder::open(root).unwrap_err(),
                ModelFolderError::Symlink(_)
            ));
            std::fs::remove_file(root.join("dirlink")).unwrap();
            // The folder named may itself be a link.
            let link = d.path().join("sub/deeper/../../rootlink");
            std::os::unix::fs::symlink(root.join("sub"), &link).unwrap();
            let paths: Vec<String> = ModelFolder::open(&link)
                .unwrap()
                .members()
                .iter()
                .map(|m| m.path.to_owned())
                .collect();
            std::fs::remove_file(&link).unwrap();
            assert_eq!(paths, ["deeper/x"]);
        }
    }

    /// A clone's history and a download's notes are left out, at any depth; look-alikes kept.
    #[test]
    fn git_and_download_notes_are_left_out() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        std::fs::create_dir_all(root.join("sub/deeper")).unwrap();
        std::fs::write(root.join(".gitattributes"), b"*").unwrap();
        std::fs::write(root.join("sub/deeper/x"), b"x").unwrap();
        for dir in [
            ".git/lfs/objects",
            ".cache/huggingface/download",
            "sub/.git",
            "sub/.cache/huggingface",
        ] {
            std::fs::create_dir_all(root.join(dir)).unwrap();
            std::fs::write(root.join(dir).join("f"), b"x").unwrap();
        }
        std::fs::write(root.join("sub/deeper/.git"), b"gitdir: elsewhere").unwrap();
        std::fs::create_dir_all(root.join(".cache/other")).unwrap();
        std::fs::write(root.join(".cache/other/keep"), b"k").unwrap();
        std::fs::write(root.join("huggingface"), b"h").unwrap();
        std::fs::write(root.join("x.git"), b"g").unwrap();
        let f = ModelFolder::open(root).unwrap();
        let paths: Vec<&str> = f.members().iter().map(|m| m.path).collect();
        assert_eq!(
            paths,
            [
                ".cache/other/keep",
                ".gitattributes",
                "huggingface",
                "sub/deeper/x",
                "x.git"
            ]
        );
        assert_eq!(
            f.left_out(),
            [
                ".cache/huggingface",
                ".git",
                "sub/.cache/huggingface",
                "sub/.git",
                "sub/deeper/.git"
            ]
        );
    }

    /// A Hugging Face cache snapshot: links into its own repository's blobs are read as the files
    /// they point to; any other link is refused.
    #[cfg(unix)]
    #[test]
    fn a_cache_snapshot_is_read_through_its_links_into_blobs() {
        use std::os::unix::fs::symlink;
        let d = tempfile::tempdir().unwrap();
        let repo = d.path().join("hub/models--org--name");
        let other = d.path().join("hub/models--org--other");
        for dir in [
            repo.join("blobs"),
            repo.join("snapshots/rev1/original"),
            other.join("blobs"),
        ] {
            std::fs::create_dir_all(dir).unwrap();
        }
        std::fs::write(repo.join("blobs/aa11"), b"{\"model_type\": \"llama\"}").unwrap();
        std::fs::write(repo.join("blobs/bb22"), b"params").unwrap();
        std::fs::write(other.join("blobs/cc33"), b"elsewhere").unwrap();
        let snap = repo.join("snapshots/rev1");
        symlink("../../blobs/aa11", snap.join("config.json")).unwrap();
        symlink("../../../blobs/bb22", snap.join("original/params.json")).unwrap();
        std::fs::write(snap.join("plain.txt"), b"p").unwrap();
        let f = ModelFolder::open(&snap).unwrap();
        let got: Vec<(&str, &[u8])> = f.members().iter().map(|m| (m.path, m.bytes)).collect();
        assert_eq!(
            got,
            [
                ("config.json", &b"{\"model_type\": \"llama\"}"[..]),
                ("original/params.json", &b"params"[..]),
                ("plain.txt", &b"p"[..]),
            ]
        );
        assert_eq!(f.linked(), 2);
        assert_eq!(cache_repo_id(&snap).as_deref(), Some("org/name"));
        assert_eq!(cache_repo_id(&repo), None);
        // Out of the repository's blobs: another repository's, the blobs folder, a file outside.
        for bad in [
            other.join("blobs/cc33"),
            repo.join("blobs"),
            PathBuf::from("/etc/passwd"),
        ] {
            symlink(&bad, snap.join("bad")).unwrap();
            let e = ModelFolder::open(&snap).unwrap_err();
            assert!(matches!(e, ModelFolderError::Symlink(_)), "{bad:?}: {e}");
            std::fs::remove_file(snap.join("bad")).unwrap();
        }
        // The same links in a folder that is not a snapshot are refused.
        let copy = repo.join("not-snapshots/rev1");
        std::fs::create_dir_all(&copy).unwrap();
        symlink("../../blobs/aa11", copy.join("config.json")).unwrap();
        assert!(matches!(
            ModelFolder::open(&copy).unwrap_err(),
            ModelFolderError::Symlink(_)
        ));
    }
}
