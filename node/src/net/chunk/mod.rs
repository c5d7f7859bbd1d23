//! The chunk protocol (`/zdn/chunk/1`, messages in `zdn_protocol::wire`) on raw libp2p streams:
//! the server that answers peers from the store (with its manifest cache and the budgets that
//! bound what a peer can cost it), and the pipe a fetch asks one peer through.

pub(crate) mod budget;
pub(crate) mod cache;
pub(crate) mod pipe;
pub(crate) mod server;
