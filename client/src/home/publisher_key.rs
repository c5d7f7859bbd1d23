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
    // Written to a temp file created 0600 from the start, then renamed: the secret is never
    // readable by others, and a crash never leaves half a key.
    let tmp = path.with_extension("key.tmp");
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(&tmp).map_err(io("creating", &tmp))?;
    writeln!(f, "{}", Hash::from_bytes(key.seed())).map_err(io("writing", &tmp))?;
    f.sync_all().map_err(io("writing", &tmp))?;
    std::fs::rename(&tmp, path).map_err(io("renaming to", path))?;
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
