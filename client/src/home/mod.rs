//! Where zdn keeps its things: `<home>/config.toml`, the publisher key, the node's libp2p key.

pub mod config;
pub mod node_key;
pub mod publisher_key;
