//! What the node knows about the peers it is connected to, shared by the swarm and the servers:
//! where each connects from ([`Subnet`], the unit that connection and stream caps count by),
//! whether this node dialed it ([`PeerTable`]), and how it has behaved ([`PeerScores`]).

pub(crate) mod score;
pub(crate) mod subnet;
pub(crate) mod table;

pub use score::Offence;
pub(crate) use score::PeerScores;
pub(crate) use subnet::{ip_of, Subnet};
pub(crate) use table::{PeerClass, PeerTable};
