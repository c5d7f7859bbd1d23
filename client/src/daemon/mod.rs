//! A running node as the CLI sees it: the service (the libp2p node, transfers, auto-fetch), the
//! local control socket other `zdn` commands talk to it through, and node.toml.

pub mod config;
pub mod control;
pub mod service;
