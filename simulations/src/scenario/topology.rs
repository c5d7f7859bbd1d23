//! A scenario's network: one namespace per node, and one emulated link per node other than the
//! datacenter — its uplink: a satellite link for a station, a site-network link for a device.
//!
//! ```text
//!  datacenter ──satellite── station ──lan── dev1
//!      │                       └─────lan── dev2
//!      └──────satellite── station2 ...
//! ```
//!
//! Node `i`'s uplink has the addresses 10.210.i.1 (upper end) and 10.210.i.2 (node `i`); the TCP
//! reference link 10.211.0.1 and .2. Each namespace is its own network stack, so these never
//! meet the machine's own addresses.

use std::time::Instant;

use zdn_linkem::netns::{LinkEnd, Netns};
use zdn_linkem::shaper::LinkSpec;

use super::error::ScenarioError;
use super::link::EmulatedLink;
use super::spec::{Place, Scenario};

/// Names unique to this process, so two runs at once do not take each other's namespaces.
pub fn prefix() -> String {
    format!("zs{}", std::process::id() % 100_000)
}

#[derive(Debug)]
pub struct Topology {
    /// Per node, in the scenario's order. Declared before `namespaces`: links stop first.
    pub uplinks: Vec<Option<EmulatedLink>>,
    pub namespaces: Vec<Netns>,
    /// Outages count from here.
    pub epoch: Instant,
}

impl Topology {
    /// Makes the namespaces and starts every link.
    pub fn build(s: &Scenario) -> Result<Topology, ScenarioError> {
        if s.nodes.len() > 250 {
            return Err(ScenarioError::Invalid {
                file: s.name.clone(),
                message: "at most 250 nodes".into(),
            });
        }
        let p = prefix();
        let mut namespaces = Vec::new();
        for n in &s.nodes {
            namespaces.push(Netns::create(&format!("{p}-{}", n.name))?);
        }
        let mut t = Topology {
            uplinks: Vec::new(),
            namespaces,
            epoch: Instant::now(),
        };
        for (i, n) in s.nodes.iter().enumerate() {
            let Some(upper) = s.uplink_peer(i) else {
                t.uplinks.push(None);
                continue;
            };
            let (spec, changes): (&LinkSpec, &[_]) = if n.place == Place::Station {
                (&s.link, &s.rate_changes)
            } else {
                (&s.lan, &[])
            };
            let (dev_u, dev_l) = (format!("{p}l{i}u"), format!("{p}l{i}d"));
            let (addr_u, addr_l) = (format!("10.210.{i}.1"), format!("10.210.{i}.2"));
            let link = EmulatedLink::start(
                LinkEnd {
                    ns: &t.namespaces[upper],
                    dev: &dev_u,
                    addr: &addr_u,
                },
                LinkEnd {
                    ns: &t.namespaces[i],
                    dev: &dev_l,
                    addr: &addr_l,
                },
                spec,
                changes,
                s.seed.wrapping_mul(1000).wrapping_add(i as u64),
                t.epoch,
            )?;
            t.uplinks.push(Some(link));
        }
        Ok(t)
    }

    /// The address node `of` has on the link it shares with node `seen_from`.
    pub fn address(&self, s: &Scenario, of: usize, seen_from: usize) -> Option<&str> {
        if s.uplink_peer(of) == Some(seen_from) {
            self.uplinks[of].as_ref().map(|l| l.lower_addr.as_str())
        } else if s.uplink_peer(seen_from) == Some(of) {
            self.uplinks[seen_from]
                .as_ref()
                .map(|l| l.upper_addr.as_str())
        } else {
            None
        }
    }

    /// Every address of node `i` (one per link it is on).
    pub fn addresses(&self, s: &Scenario, i: usize) -> Vec<String> {
        let mut v = Vec::new();
        if let Some(Some(l)) = self.uplinks.get(i) {
            v.push(l.lower_addr.clone());
        }
        for (j, l) in self.uplinks.iter().enumerate() {
            if let (Some(l), Some(up)) = (l, s.uplink_peer(j)) {
                if up == i {
                    v.push(l.upper_addr.clone());
                }
            }
        }
        v
    }

    /// IP bytes node `i` has received and sent so far over all its links.
    pub fn node_bytes(&self, s: &Scenario, i: usize) -> (u64, u64) {
        let (mut rx, mut tx) = (0, 0);
        if let Some(Some(l)) = self.uplinks.get(i) {
            let (down, up) = l.delivered();
            rx += down;
            tx += up;
        }
        for (j, l) in self.uplinks.iter().enumerate() {
            if let (Some(l), Some(up)) = (l, s.uplink_peer(j)) {
                if up == i {
                    let (d, u) = l.delivered();
                    rx += u;
                    tx += d;
                }
            }
        }
        (rx, tx)
    }

    /// Stops every link (the namespaces go when this is dropped).
    pub fn stop_links(&mut self) {
        for l in self.uplinks.iter_mut().flatten() {
            l.stop();
        }
    }
}
