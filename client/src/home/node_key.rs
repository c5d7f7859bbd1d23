//! The node's libp2p identity, kept in the store directory.

use std::io::Write as _;
use std::path::Path;

use anyhow::Context;
use zdn_node::net::Keypair;

/// This store's libp2p identity (`<store>/node.key`, 32 secret bytes, mode 0600), created on
/// first use, so the peer id stays the same across restarts. A key file others can read is
/// refused (as the publisher key is).
pub fn node_key(store_dir: &Path) -> anyhow::Result<Keypair> {
    std::fs::create_dir_all(store_dir)
        .with_context(|| format!("creating {}", store_dir.display()))?;
    let path = store_dir.join("node.key");
    let mut secret = match std::fs::read(&path) {
        Ok(b) => {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path)
                .with_context(|| format!("reading {}", path.display()))?
                .permissions()
                .mode()
                & 0o777;
            if mode & 0o077 != 0 {
                anyhow::bail!(
                    "{} is readable by others (mode {mode:o}): whoever reads it can act as this \
                     node; run `chmod 600 {}`",
                    path.display(),
                    path.display()
                );
            }
            <[u8; 32]>::try_from(b.as_slice())
                .map_err(|_| anyhow::anyhow!("{}: not a 32-byte node key", path.display()))?
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut b = [0u8; 32];
            getrandom::getrandom(&mut b)
                .map_err(|e| anyhow::anyhow!("generating the node key: {e}"))?;
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .with_context(|| format!("creating {}", path.display()))?;
            f.write_all(&b)?;
            f.sync_all()?;
            b
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    Keypair::ed25519_from_bytes(&mut secret).context("node key")
}
