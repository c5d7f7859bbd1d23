//! Where zdn keeps its things, and the config file (`<home>/config.toml`).
//!
//! ```toml
//! store = "/var/lib/zdn/store"      # default: <home>/store
//! chunk_size = 1048576              # bytes, default 1 MiB
//! zstd_level = 3
//! max_object_size = 1099511627776   # bytes, default 1 TiB
//! trusted_publishers = ["<64 hex digits>"]   # besides your own key
//! ```

use std::path::{Path, PathBuf};

use zdn_protocol::chunk::DEFAULT_CHUNK_SIZE;
use zdn_protocol::Hash;

#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub store: Option<PathBuf>,
    pub chunk_size: u32,
    pub zstd_level: i32,
    pub max_object_size: u64,
    pub trusted_publishers: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            store: None,
            chunk_size: DEFAULT_CHUNK_SIZE,
            zstd_level: 3,
            max_object_size: 1 << 40,
            trusted_publishers: Vec::new(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
}

impl Config {
    /// Reads `path`; a missing file means the defaults.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Config::default()),
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        let c: Config = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        c.trusted_keys().map_err(|message| ConfigError::Parse {
            path: path.to_path_buf(),
            message,
        })?;
        Ok(c)
    }

    /// The trusted publisher keys, parsed.
    pub fn trusted_keys(&self) -> Result<Vec<[u8; 32]>, String> {
        self.trusted_publishers
            .iter()
            .map(|s| {
                s.parse::<Hash>()
                    .map(|h| *h.as_bytes())
                    .map_err(|e| format!("trusted_publishers: {s:?}: {e}"))
            })
            .collect()
    }
}

/// zdn's home directory: `$ZDN_HOME`, else `$HOME/.zdn`, else `.zdn`.
pub fn default_home() -> PathBuf {
    if let Some(h) = std::env::var_os("ZDN_HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(h);
    }
    match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        Some(h) => PathBuf::from(h).join(".zdn"),
        None => PathBuf::from(".zdn"),
    }
}
