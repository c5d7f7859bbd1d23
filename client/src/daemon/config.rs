//! `node.toml`: the settings of `zdn node run --config FILE`. Command-line flags add to the lists
//! and override the single values.
//!
//! ```toml
//! profile = "field"                          # datacenter | field | edge
//! listen = ["/ip4/0.0.0.0/tcp/4801", "/ip4/0.0.0.0/udp/4801/quic-v1"]
//! peers = ["/ip4/203.0.113.5/tcp/4801/p2p/12D3KooW..."]
//! bootstrap = ["/ip4/198.51.100.7/tcp/4801/p2p/12D3KooW..."]  # DHT entry points
//! external_addresses = ["/ip4/203.0.113.9/tcp/4801"]           # where others can reach us
//! trusted_publishers = ["<64 hex digits>"]  # besides config.toml's and your own key
//! auto_fetch = ["minilm-*"]                  # fetch announced deltas whose name matches
//! catch_up = true                            # ask new peers what was announced while away
//! max_rate = "1Mbit"                         # each direction (125000, 500k, 2M, 1Mbit)
//! link_rate = "1Mbit"                        # the site's link: fetch over the paced UDP lane
//! max_upload_rate = "200k"
//! sync_windows = ["01:00-05:00"]             # UTC; no transfers outside them
//! mdns = true
//! dht = true                                 # Kademlia provider records and lookups
//! ```

use std::path::Path;

use zdn_protocol::sync::SyncWindows;

use crate::home::config::ConfigError;

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeFile {
    pub profile: Option<String>,
    pub listen: Vec<String>,
    pub peers: Vec<String>,
    pub bootstrap: Vec<String>,
    pub external_addresses: Vec<String>,
    pub trusted_publishers: Vec<String>,
    pub auto_fetch: Vec<String>,
    pub catch_up: Option<bool>,
    pub max_rate: Option<String>,
    pub link_rate: Option<String>,
    pub max_upload_rate: Option<String>,
    pub sync_windows: Vec<String>,
    pub mdns: Option<bool>,
    pub dht: Option<bool>,
}

impl NodeFile {
    /// Reads and checks `path` (a missing file is an error: it was named explicitly).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let invalid = |message: String| ConfigError::Parse {
            path: path.to_path_buf(),
            message,
        };
        let f: NodeFile = toml::from_str(&text).map_err(|e| invalid(e.to_string()))?;
        SyncWindows::parse(&f.sync_windows).map_err(|e| invalid(e.to_string()))?;
        Ok(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_full_file_and_refuses_unknown_keys() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("node.toml");
        std::fs::write(
            &p,
            "profile = \"field\"\nsync_windows = [\"01:00-05:00\"]\nmax_rate = \"1Mbit\"\nauto_fetch = [\"m*\"]\ncatch_up = false\nbootstrap = [\"/ip4/10.0.0.1/tcp/4801\"]\ndht = false\n",
        )
        .unwrap();
        let f = NodeFile::load(&p).unwrap();
        assert_eq!(f.profile.as_deref(), Some("field"));
        assert_eq!(f.bootstrap, vec!["/ip4/10.0.0.1/tcp/4801"]);
        assert_eq!(f.dht, Some(false));
        assert_eq!(f.catch_up, Some(false));
        assert_eq!(f.sync_windows, vec!["01:00-05:00"]);
        std::fs::write(&p, "profil = \"field\"\n").unwrap();
        assert!(NodeFile::load(&p)
            .unwrap_err()
            .to_string()
            .contains("profil"));
        std::fs::write(&p, "sync_windows = [\"1-2\"]\n").unwrap();
        assert!(NodeFile::load(&p)
            .unwrap_err()
            .to_string()
            .contains("sync window"));
    }
}
