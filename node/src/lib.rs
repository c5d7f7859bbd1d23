//! zdn-node: a zdn peer. The content-addressed store ([`store`]), the bundle format ([`bundle`]) for
//! carrying objects on removable media, and the libp2p network ([`net`]) that serves and fetches
//! those objects.

pub mod bundle;
pub mod net;
pub mod store;
