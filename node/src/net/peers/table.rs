//! [`PeerTable`]: the connected peers as the stream servers need to see them — the address each
//! connects from, and whether it is privileged: a peer this node dialed itself (a seeder it chose)
//! or one the operator configured (`--peer`, `--bootstrap`). Kept by the connection guard from the
//! swarm's connection events; an entry lives while its peer has a connection, so the table is
//! bounded by the connection caps.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Mutex;

use libp2p::PeerId;

use super::Subnet;

#[derive(Debug, Default)]
struct Entry {
    ip: Option<IpAddr>,
    dialed: u32,
    inbound: u32,
}

/// How a peer's streams are treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PeerClass {
    pub subnet: Option<Subnet>,
    /// Dialed by this node or configured by the operator: may use the reserved places.
    pub privileged: bool,
}

#[derive(Debug, Default)]
pub(crate) struct PeerTable {
    /// The operator's peers (with a `/p2p/` id in `--peer` or `--bootstrap`).
    known: HashSet<PeerId>,
    connected: Mutex<HashMap<PeerId, Entry>>,
}

impl PeerTable {
    pub fn new(known: impl IntoIterator<Item = PeerId>) -> Self {
        PeerTable {
            known: known.into_iter().collect(),
            connected: Mutex::default(),
        }
    }

    pub fn is_known(&self, peer: &PeerId) -> bool {
        self.known.contains(peer)
    }

    /// A connection to `peer` is up (`dialed`: this node opened it).
    pub fn connected(&self, peer: PeerId, ip: Option<IpAddr>, dialed: bool) {
        let mut map = self.connected.lock().unwrap_or_else(|e| e.into_inner());
        let e = map.entry(peer).or_default();
        if dialed {
            e.dialed += 1;
        } else {
            e.inbound += 1;
        }
        if e.ip.is_none() || !dialed {
            // The address it connects from, if it ever did; else the one this node dialed.
            e.ip = ip.or(e.ip);
        }
    }

    /// A connection to `peer` closed.
    pub fn closed(&self, peer: PeerId, dialed: bool) {
        let mut map = self.connected.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = map.get_mut(&peer) {
            if dialed {
                e.dialed = e.dialed.saturating_sub(1);
            } else {
                e.inbound = e.inbound.saturating_sub(1);
            }
            if e.dialed == 0 && e.inbound == 0 {
                map.remove(&peer);
            }
        }
    }

    pub fn class(&self, peer: &PeerId) -> PeerClass {
        let map = self.connected.lock().unwrap_or_else(|e| e.into_inner());
        let e = map.get(peer);
        PeerClass {
            subnet: e.and_then(|e| e.ip).map(Subnet::of),
            privileged: self.known.contains(peer) || e.is_some_and(|e| e.dialed > 0),
        }
    }

    /// The address `peer` connects from (or was dialed at).
    pub fn ip(&self, peer: &PeerId) -> Option<IpAddr> {
        let map = self.connected.lock().unwrap_or_else(|e| e.into_inner());
        map.get(peer).and_then(|e| e.ip)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_live_while_connected_and_dialed_peers_are_privileged() {
        let known = PeerId::random();
        let t = PeerTable::new([known]);
        let (a, b) = (PeerId::random(), PeerId::random());
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        t.connected(a, Some(ip), false);
        t.connected(b, Some(ip), true);
        assert!(!t.class(&a).privileged);
        assert!(t.class(&b).privileged);
        assert!(t.class(&known).privileged);
        assert_eq!(t.class(&a).subnet, Some(Subnet::of(ip)));
        t.closed(a, false);
        assert_eq!(t.class(&a).subnet, None);
        assert_eq!(t.connected.lock().unwrap().len(), 1);
    }
}
