//! The paced lane (`/zdn/paced/3` + sealed UDP datagrams, `zdn_protocol::paced`): the server every
//! node runs, the receiving session and its datagram loop, the node's link settings, the partly
//! received chunks kept on disk, and the phase of a fetch that drives sessions.

pub(crate) mod lane;
pub(crate) mod partial;
pub(crate) mod phase;
pub(crate) mod receiving;
pub(crate) mod recent;
pub(crate) mod sending;
pub(crate) mod server;
pub(crate) mod session;
pub(crate) mod slots;
