//! The paced lane (`/zdn/paced/2` + sealed UDP datagrams, `zdn_protocol::paced`): the server every
//! node runs, the receiving session, and the phase of a fetch that drives sessions.

pub(crate) mod phase;
pub(crate) mod server;
pub(crate) mod session;
