//! zdn-node: a zdn peer. For now the content-addressed store ([`store`]) and the bundle format
//! ([`bundle`]) for carrying objects on removable media; the network comes on top of these.

pub mod bundle;
pub mod store;
