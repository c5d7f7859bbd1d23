//! The publisher key file: the ed25519 secret seed as 64 hex digits, readable by its owner only.

use std::io::Write;
use std::path::{Path, PathBuf};

use zdn_protocol::manifest::PublisherKey;
use zdn_protocol::Hash;

#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("no publisher key at {0}: run `zdn key generate`")]
    Missing(PathBuf),
    #[error("{0} already exists: refusing to overwrite a publisher key (use --force)")]
    Exists(PathBuf),
    #[error("{path}: not a zdn key file (expected 64 hex digits)")]
    Malformed { path: PathBuf },
    #[error("{path} is readable by others (mode {mode:o}); run `chmod 600 {path}`")]
    Permissions { path: PathBuf, mode: u32 },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no randomness from the operating system: {0}")]
    Random(String),
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> KeyFileError + 'a {
    move |source| KeyFileError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// Creates a new random key at `path` (mode 0600, parent directories created).
pub fn generate(path: &Path, force: bool) -> Result<PublisherKey, KeyFileError> {
    if path.exists() && !force {
        return Err(KeyFileError::Exists(path.to_path_buf()));
    }
    let mut seed = [0u8; 32];
    getrandom::getrandom(&mut seed).map_err(|e| KeyFileError::Random(e.to_string()))?;
    let key = PublisherKey::from_seed(&seed);
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
    }
    // Written to a temp file of a random name, created exclusively (never through a symlink
    // planted in the directory) and 0600 from the start, then renamed: the secret is never
    // readable by others, and a crash never leaves half a key.
    let dir = match path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(d) => d,
        None => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".zdn-key-")
        .tempfile_in(dir)
        .map_err(io("creating a temp file in", dir))?;
    writeln!(tmp, "{}", Hash::from_bytes(key.seed())).map_err(io("writing", tmp.path()))?;
    tmp.as_file().sync_all().map_err(io("writing", path))?;
    tmp.persist(path)
        .map_err(|e| io("renaming to", path)(e.error))?;
    Ok(key)
}

/// Loads the key at `path`, refusing one that others can read.
pub fn load(path: &Path) -> Result<PublisherKey, KeyFileError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(KeyFileError::Missing(path.to_path_buf()))
        }
        Err(e) => return Err(io("reading", path)(e)),
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)
            .map_err(io("reading", path))?
            .permissions()
            .mode()
            & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyFileError::Permissions {
                path: path.to_path_buf(),
                mode,
            });
        }
    }
    let seed: Hash = text.trim().parse().map_err(|_| KeyFileError::Malformed {
        path: path.to_path_buf(),
    })?;
    Ok(PublisherKey::from_seed(seed.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_key_is_owner_only_and_never_written_through_a_planted_symlink() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("publisher.key");
        let victim = d.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        // Where a fixed temp name would have been written: a link to someone else's file.
        for name in ["publisher.key.tmp", "publisher.key.key.tmp"] {
            std::os::unix::fs::symlink(&victim, d.path().join(name)).unwrap();
        }
        let key = generate(&path, false).unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(load(&path).unwrap().seed(), key.seed());
        // Nothing else left behind: the key, the victim and the two links.
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 4);
        assert!(matches!(
            generate(&path, false),
            Err(KeyFileError::Exists(_))
        ));
    }

    #[test]
    fn a_key_others_can_read_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("k");
        generate(&path, false).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(matches!(
            load(&path),
            Err(KeyFileError::Permissions { mode: 0o640, .. })
        ));
        std::fs::write(&path, "not hex\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(load(&path), Err(KeyFileError::Malformed { .. })));
    }
}
