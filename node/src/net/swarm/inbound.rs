//! [`InboundBook`]: the accounting behind the connection guard, without I/O. Inbound connections
//! are counted per IP address and per [`Subnet`] from the moment the TCP or QUIC connection
//! arrives (before the handshake, so a refused one costs this node almost nothing), and in all
//! once the handshake is done. Connections this node dialed are not in the book: they are never
//! refused. Nor are those of the operator's own peers (privileged).
//!
//! When every inbound place is taken, a newcomer is not simply refused — that would let whoever
//! came first keep the node: it takes the place of the newest connection of the subnet that holds
//! the most places, if that subnet holds at least two more than the newcomer's would (fair
//! sharing by subnet). An attacker with a few address blocks can then hold at most its share.

use std::collections::HashMap;
use std::net::IpAddr;

use libp2p::swarm::ConnectionId;
use libp2p::PeerId;

use crate::net::peers::Subnet;

/// Caps on inbound connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InboundLimits {
    /// Established inbound connections, all together.
    pub total: usize,
    /// From one IP address (pending and established).
    pub per_ip: usize,
    /// From one IPv4 /24 or IPv6 /64 (pending and established).
    pub per_subnet: usize,
    /// Handshakes under way at once.
    pub pending: usize,
}

impl Default for InboundLimits {
    fn default() -> Self {
        InboundLimits {
            total: 256,
            per_ip: 16,
            per_subnet: 64,
            pending: 64,
        }
    }
}

/// Why an inbound connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refusal {
    #[error("too many handshakes under way")]
    Pending,
    #[error("too many connections from this address")]
    Ip,
    #[error("too many connections from this subnet")]
    Subnet,
    #[error("every inbound place is taken and this subnet has its share")]
    Full,
}

#[derive(Debug, Clone, Copy)]
struct Conn {
    ip: Option<IpAddr>,
    /// Set once established.
    peer: Option<PeerId>,
    seq: u64,
}

#[derive(Debug, Default)]
pub(crate) struct InboundBook {
    limits: InboundLimits,
    pending: HashMap<ConnectionId, Conn>,
    established: HashMap<ConnectionId, Conn>,
    per_ip: HashMap<IpAddr, usize>,
    per_subnet: HashMap<Subnet, usize>,
    seq: u64,
}

impl InboundBook {
    pub fn new(limits: InboundLimits) -> Self {
        InboundBook {
            limits,
            ..Default::default()
        }
    }

    /// A connection arrived from `ip`, before its handshake.
    pub fn pending(&mut self, id: ConnectionId, ip: Option<IpAddr>) -> Result<(), Refusal> {
        if self.pending.len() >= self.limits.pending {
            return Err(Refusal::Pending);
        }
        if let Some(ip) = ip {
            if self.per_ip.get(&ip).copied().unwrap_or(0) >= self.limits.per_ip {
                return Err(Refusal::Ip);
            }
            let s = Subnet::of(ip);
            if self.per_subnet.get(&s).copied().unwrap_or(0) >= self.limits.per_subnet {
                return Err(Refusal::Subnet);
            }
        }
        self.seq += 1;
        self.count(ip, 1);
        let conn = Conn {
            ip,
            peer: None,
            seq: self.seq,
        };
        self.pending.insert(id, conn);
        Ok(())
    }

    /// Its handshake is done: `peer` is who it is. A privileged peer leaves the book (never
    /// counted, never evicted). Returns the connection to close to make room, if one must go.
    pub fn established(
        &mut self,
        id: ConnectionId,
        peer: PeerId,
        privileged: bool,
    ) -> Result<Option<(PeerId, ConnectionId)>, Refusal> {
        let Some(mut conn) = self.pending.remove(&id) else {
            // Not seen pending (a transport that skips that step): count it now.
            self.pending(id, None)?;
            return self.established(id, peer, privileged);
        };
        if privileged {
            self.count(conn.ip, -1);
            return Ok(None);
        }
        conn.peer = Some(peer);
        if self.established.len() < self.limits.total {
            self.established.insert(id, conn);
            return Ok(None);
        }
        match self.victim(conn.ip.map(Subnet::of)) {
            Some(victim) => {
                let gone = self.established.remove(&victim).and_then(|c| {
                    self.count(c.ip, -1);
                    c.peer
                });
                self.established.insert(id, conn);
                Ok(gone.map(|p| (p, victim)))
            }
            None => {
                self.count(conn.ip, -1);
                Err(Refusal::Full)
            }
        }
    }

    /// The newest connection of the subnet with the most places, if it has at least two more than
    /// `mine` holds.
    fn victim(&self, mine: Option<Subnet>) -> Option<ConnectionId> {
        let mut per: HashMap<Option<Subnet>, (usize, u64, ConnectionId)> = HashMap::new();
        for (id, c) in &self.established {
            let e = per.entry(c.ip.map(Subnet::of)).or_insert((0, 0, *id));
            e.0 += 1;
            if c.seq >= e.1 {
                e.1 = c.seq;
                e.2 = *id;
            }
        }
        let held = per.get(&mine).map_or(0, |e| e.0);
        let (_, &(most, _, newest)) = per.iter().max_by_key(|(s, e)| (e.0, **s))?;
        (most >= held + 2).then_some(newest)
    }

    /// A connection closed or failed its handshake.
    pub fn gone(&mut self, id: ConnectionId) {
        if let Some(c) = self
            .pending
            .remove(&id)
            .or_else(|| self.established.remove(&id))
        {
            self.count(c.ip, -1);
        }
    }

    fn count(&mut self, ip: Option<IpAddr>, delta: isize) {
        let Some(ip) = ip else { return };
        for n in [
            self.per_ip.entry(ip).or_default(),
            self.per_subnet.entry(Subnet::of(ip)).or_default(),
        ] {
            *n = n.saturating_add_signed(delta);
        }
        if self.per_ip.get(&ip) == Some(&0) {
            self.per_ip.remove(&ip);
        }
        if self.per_subnet.get(&Subnet::of(ip)) == Some(&0) {
            self.per_subnet.remove(&Subnet::of(ip));
        }
    }

    /// Established inbound connections counted (privileged ones are not).
    #[cfg(test)]
    pub fn established_count(&self) -> usize {
        self.established.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    fn limits(total: usize) -> InboundLimits {
        InboundLimits {
            total,
            per_ip: 2,
            per_subnet: 3,
            pending: 100,
        }
    }

    #[test]
    fn caps_per_address_and_subnet_before_the_handshake() {
        let mut b = InboundBook::new(limits(100));
        let id = ConnectionId::new_unchecked;
        b.pending(id(1), ip("10.0.0.1")).unwrap();
        b.pending(id(2), ip("10.0.0.1")).unwrap();
        assert_eq!(b.pending(id(3), ip("10.0.0.1")), Err(Refusal::Ip));
        b.pending(id(4), ip("10.0.0.2")).unwrap();
        assert_eq!(b.pending(id(5), ip("10.0.0.3")), Err(Refusal::Subnet));
        b.pending(id(6), ip("10.0.1.3")).unwrap();
        b.gone(id(1));
        b.pending(id(7), ip("10.0.0.3")).unwrap();
    }

    #[test]
    fn a_full_node_evicts_from_the_subnet_over_its_share_only() {
        let mut b = InboundBook::new(InboundLimits {
            per_ip: 10,
            per_subnet: 10,
            ..limits(4)
        });
        let id = ConnectionId::new_unchecked;
        let attacker = PeerId::random();
        for i in 0..4 {
            b.pending(id(i), ip(&format!("10.0.0.{i}"))).unwrap();
            assert_eq!(b.established(id(i), attacker, false), Ok(None));
        }
        // A newcomer from another subnet takes the newest place of the full one.
        b.pending(id(10), ip("10.9.0.1")).unwrap();
        let honest = PeerId::random();
        assert_eq!(
            b.established(id(10), honest, false),
            Ok(Some((attacker, id(3))))
        );
        assert_eq!(b.established_count(), 4);
        // 3+1, then 2+1+1, then 1+1+1+1: every subnet holds one place and a fifth gets none.
        for (i, net) in [(11, "10.8.0.1"), (12, "10.7.0.1")] {
            b.pending(id(i), ip(net)).unwrap();
            assert!(b.established(id(i), honest, false).unwrap().is_some());
        }
        b.pending(id(14), ip("10.6.0.1")).unwrap();
        assert_eq!(b.established(id(14), honest, false), Err(Refusal::Full));
        // A privileged peer always gets in and is not counted.
        b.pending(id(13), ip("10.0.0.9")).unwrap();
        assert_eq!(b.established(id(13), honest, true), Ok(None));
        assert_eq!(b.established_count(), 4);
        b.gone(id(13));
        assert_eq!(b.per_ip.values().sum::<usize>(), 4);
    }
}
