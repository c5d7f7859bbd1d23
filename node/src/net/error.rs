//! Errors of the network layer.

use zdn_protocol::Hash;

use crate::store::StoreError;

use crate::net::frame::FrameError;

/// Why a network operation failed.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("network configuration: {0}")]
    Config(String),
    #[error("listening on {addr}: {reason}")]
    Listen { addr: String, reason: String },
    #[error("dialing {addr}: {reason}")]
    Dial { addr: String, reason: String },
    #[error("the node has stopped")]
    Stopped,
    #[error("announcing: {0}")]
    Announce(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Frame(#[from] FrameError),
}

/// Why a fetch failed. The CLI maps these to distinct exit codes.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// No peer has the manifest or some chunk (and no other failure explains it).
    #[error("{what} {hash} not found on any of {peers} peer(s)")]
    NotFound {
        what: &'static str,
        hash: Hash,
        peers: usize,
    },
    /// Something failed verification in a way that no other peer can repair (e.g. chunks all
    /// verified but the object hash does not match the signed manifest).
    #[error("verification failed: {0}")]
    Verification(String),
    /// The manifest is valid but its publisher is not trusted here.
    #[error("manifest {hash} is signed by {publisher}, which is not a trusted publisher (add it to trusted_publishers or pass --trust)")]
    Untrusted { hash: Hash, publisher: String },
    /// A delta whose base is not in the store, with base fetching turned off.
    #[error("delta {delta} needs base {base}, which is not in the store (fetch it first, or drop --no-base)")]
    MissingBase { delta: Hash, base: Hash },
    /// Every peer failed, was banned or went away before the object was complete.
    #[error("transfer of {hash} stopped with {done} of {total} chunks: {reason}")]
    Incomplete {
        hash: Hash,
        done: u32,
        total: usize,
        reason: String,
    },
    #[error("no peers to fetch from (pass --peer MULTIADDR or connect the node to a peer)")]
    NoPeers,
    #[error(transparent)]
    Net(#[from] NetError),
    #[error(transparent)]
    Store(#[from] StoreError),
}
