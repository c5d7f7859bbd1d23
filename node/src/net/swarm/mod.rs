//! The libp2p swarm and the one task that owns it: the behaviours, the DHT's side of it, how a
//! node is started, and the event loop that answers handles' commands.

pub(crate) mod behaviour;
pub(crate) mod dht;
pub(crate) mod event_loop;
pub(crate) mod guard;
pub(crate) mod inbound;
pub(crate) mod kept;
pub(crate) mod providers;
pub(crate) mod seen;
pub(crate) mod spawn;
