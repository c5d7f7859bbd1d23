//! Arguments shared by several commands: where the home and store are, and the parsers of
//! bits-per-weight and rates.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use zdn_node::store::{ObjectStore, StoreLimits};

use crate::home::config::{default_home, Config};

/// Where things are: shared by every store command.
#[derive(Args, Debug, Clone)]
pub struct Location {
    /// zdn's home: holds config.toml, publisher.key and (by default) the store.
    /// [env: ZDN_HOME; default: ~/.zdn]
    #[arg(long, global = true, value_name = "DIR")]
    home: Option<PathBuf>,
    /// The store directory (created on first use).
    /// [env: ZDN_STORE; default: `store` in the config, else <home>/store]
    #[arg(long, global = true, value_name = "DIR")]
    store: Option<PathBuf>,
}

impl Location {
    pub(crate) fn home(&self) -> PathBuf {
        self.home.clone().unwrap_or_else(default_home)
    }

    pub(crate) fn config(&self) -> anyhow::Result<Config> {
        Ok(Config::load(&self.home().join("config.toml"))?)
    }

    pub(crate) fn key_path(&self) -> PathBuf {
        self.home().join("publisher.key")
    }

    /// The store directory: --store, $ZDN_STORE, the config's `store`, else <home>/store.
    pub(crate) fn store_dir(&self, config: &Config) -> PathBuf {
        self.store
            .clone()
            .or_else(|| {
                std::env::var_os("ZDN_STORE")
                    .filter(|s| !s.is_empty())
                    .map(PathBuf::from)
            })
            .or_else(|| config.store.clone())
            .unwrap_or_else(|| self.home().join("store"))
    }

    pub(crate) fn open(&self, config: &Config) -> anyhow::Result<ObjectStore> {
        let dir = self.store_dir(config);
        let limits = StoreLimits {
            max_object_size: config.max_object_size,
        };
        ObjectStore::open(&dir, limits)
            .with_context(|| format!("opening the store {}", dir.display()))
    }
}

/// Bits per quantized weight: 1, 2 or 4.
pub fn parse_bits(s: &str) -> Result<u32, String> {
    match s {
        "1" => Ok(1),
        "2" => Ok(2),
        "4" => Ok(4),
        _ => Err(format!("bits must be 1, 2 or 4, got {s:?}")),
    }
}

/// Parses a rate into bytes per second: bytes with an optional k/M/G (×1000) suffix, or bits
/// with a `bit` suffix (`1Mbit` = 125000 bytes per second).
pub fn parse_bytes_per_sec(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, bits) = match t.strip_suffix("bit").or_else(|| t.strip_suffix("bps")) {
        Some(n) => (n, true),
        None => (t.strip_suffix("B").unwrap_or(t), false),
    };
    let (digits, mult) = match num.chars().last() {
        Some('k' | 'K') => (&num[..num.len() - 1], 1_000u64),
        Some('M') => (&num[..num.len() - 1], 1_000_000),
        Some('G') => (&num[..num.len() - 1], 1_000_000_000),
        _ => (num, 1),
    };
    let v: f64 = digits
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a rate (examples: 125000, 500k, 2M, 1Mbit)"))?;
    let bytes = v * mult as f64 / if bits { 8.0 } else { 1.0 };
    if !(bytes.is_finite() && (1.0..1e15).contains(&bytes)) {
        return Err(format!("rate {s:?} is out of range"));
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_bytes_per_second_whatever_the_unit_written() {
        assert_eq!(parse_bytes_per_sec("125000"), Ok(125_000));
        assert_eq!(parse_bytes_per_sec("500k"), Ok(500_000));
        assert_eq!(parse_bytes_per_sec("2M"), Ok(2_000_000));
        assert_eq!(parse_bytes_per_sec("1Mbit"), Ok(125_000));
        assert_eq!(parse_bytes_per_sec("8bit"), Ok(1));
        assert!(parse_bytes_per_sec("0").is_err());
        assert!(parse_bytes_per_sec("fast").is_err());
        assert!(parse_bytes_per_sec("1e30").is_err());
    }

    #[test]
    fn bits_are_1_2_or_4() {
        assert_eq!(parse_bits("2"), Ok(2));
        assert!(parse_bits("3").is_err());
    }
}
