//! [`Crowd`]: many fresh identities, each from its own loopback address, spread over many /24
//! subnets, all connected to the same nodes — the cheapest way to take every place a node has.

use std::net::{IpAddr, Ipv4Addr};

use anyhow::Context;
use futures::stream::{self, StreamExt};
use libp2p::{Multiaddr, PeerId};

use crate::identity::Identity;

/// Identities connected at once while a crowd forms (below the node's handshake cap).
const FORMING: usize = 16;

#[derive(Debug)]
pub struct Crowd {
    pub members: Vec<Identity>,
    /// Dials that failed (refused by the node, say).
    pub refused: usize,
    /// Streams held open so the connections are not closed as idle.
    held: Vec<libp2p::Stream>,
}

/// The address of member `i` of a crowd spread over `subnets` /24s: 127.`base`.s.h.
pub fn crowd_address(base: u8, subnets: usize, i: usize) -> IpAddr {
    let s = (i % subnets) as u8;
    let h = (i / subnets + 1) as u8;
    IpAddr::V4(Ipv4Addr::new(127, base, s, h))
}

impl Crowd {
    /// `n` identities, member `i` dialing from `address(i)`, each to every one of `targets`; with
    /// `hold`, each member at once opens one idle stream of that protocol on each connection and
    /// holds it (a node closes a connection idle for a minute; a crowd forming slowly on a busy
    /// machine would lose its first members otherwise).
    pub async fn gather(
        n: usize,
        address: impl Fn(usize) -> IpAddr,
        targets: &[Multiaddr],
        hold: Option<&'static str>,
    ) -> anyhow::Result<Crowd> {
        let join = |i: usize| {
            let from = Some(address(i));
            async move {
                let (id, outcomes) = Identity::dial(from, targets).await?;
                let mut held = Vec::new();
                if let Some(protocol) = hold {
                    for p in outcomes.iter().filter_map(|o| o.as_ref().ok()) {
                        let s = id
                            .control
                            .clone()
                            .open_stream(*p, libp2p::StreamProtocol::new(protocol))
                            .await?;
                        held.push(s);
                    }
                }
                anyhow::Ok((id, outcomes, held))
            }
        };
        let joins = stream::iter((0..n).map(join))
            .buffer_unordered(FORMING)
            .collect::<Vec<_>>()
            .await;
        let mut crowd = Crowd {
            members: Vec::new(),
            refused: 0,
            held: Vec::new(),
        };
        for j in joins {
            let (id, outcomes, held) = j.context("a crowd member")?;
            crowd.refused += outcomes.iter().filter(|o| o.is_err()).count();
            crowd.members.push(id);
            crowd.held.extend(held);
        }
        Ok(crowd)
    }

    /// Members connected to `peer` now.
    pub fn connected_to(&self, peer: &PeerId) -> usize {
        self.members
            .iter()
            .filter(|m| m.is_connected_to(peer))
            .count()
    }
}
