//! [`Identity`]: one fresh libp2p identity (TCP + Noise + Yamux, raw streams only) with its swarm
//! running in a task, optionally dialing from a chosen loopback address ([`SourceTcp`]). Fresh
//! identities cost nothing to make: that is the attacker's advantage the node must withstand.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, Context};
use futures::StreamExt;
use libp2p::core::upgrade::Version;
use libp2p::core::Transport as _;
use libp2p::swarm::SwarmEvent;
use libp2p::{noise, tcp, yamux, Multiaddr, PeerId, Swarm};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::source_tcp::SourceTcp;

/// How long a connection may take to come up.
const CONNECT: Duration = Duration::from_secs(30);

/// A running identity. Its connections live while it does.
pub struct Identity {
    pub me: PeerId,
    pub control: libp2p_stream::Control,
    connected: Arc<Mutex<HashSet<PeerId>>>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("me", &self.me)
            .finish_non_exhaustive()
    }
}

impl Drop for Identity {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The peer id at the end of an address.
pub fn peer_in(addr: &Multiaddr) -> Option<PeerId> {
    addr.iter().find_map(|p| match p {
        libp2p::multiaddr::Protocol::P2p(id) => Some(id),
        _ => None,
    })
}

fn swarm(from: Option<IpAddr>) -> anyhow::Result<Swarm<libp2p_stream::Behaviour>> {
    let idle = |c: libp2p::swarm::Config| c.with_idle_connection_timeout(Duration::from_secs(600));
    Ok(match from {
        None => libp2p::SwarmBuilder::with_new_identity()
            .with_tokio()
            .with_tcp(
                tcp::Config::default().nodelay(true),
                noise::Config::new,
                yamux::Config::default,
            )?
            .with_behaviour(|_| libp2p_stream::Behaviour::new())?
            .with_swarm_config(idle)
            .build(),
        Some(ip) => libp2p::SwarmBuilder::with_new_identity()
            .with_tokio()
            .with_other_transport(|key| {
                let noise = noise::Config::new(key)
                    .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)?;
                Ok(SourceTcp { ip }
                    .upgrade(Version::V1)
                    .authenticate(noise)
                    .multiplex(yamux::Config::default()))
            })?
            .with_behaviour(|_| libp2p_stream::Behaviour::new())?
            .with_swarm_config(idle)
            .build(),
    })
}

impl Identity {
    /// A fresh identity that dials every one of `targets` (each ending in `/p2p/<id>`), from
    /// `from` when given; returns once each dial has ended, with its outcome.
    pub async fn dial(
        from: Option<IpAddr>,
        targets: &[Multiaddr],
    ) -> anyhow::Result<(Identity, Vec<Result<PeerId, String>>)> {
        let mut swarm = swarm(from)?;
        let me = *swarm.local_peer_id();
        let control = swarm.behaviour().new_control();
        let mut waiting = HashSet::new();
        for t in targets {
            let p = peer_in(t).ok_or_else(|| anyhow!("{t}: no /p2p/ part"))?;
            swarm.dial(t.clone())?;
            waiting.insert(p);
        }
        let connected = Arc::new(Mutex::new(HashSet::new()));
        let (tx, mut rx) = mpsc::unbounded_channel();
        let set = connected.clone();
        let task = tokio::spawn(async move {
            loop {
                match swarm.select_next_some().await {
                    SwarmEvent::ConnectionEstablished { peer_id, .. } => {
                        set.lock().map(|mut s| s.insert(peer_id)).ok();
                        let _ = tx.send(Ok(peer_id));
                    }
                    SwarmEvent::ConnectionClosed {
                        peer_id,
                        num_established: 0,
                        ..
                    } => {
                        set.lock().map(|mut s| s.remove(&peer_id)).ok();
                    }
                    SwarmEvent::OutgoingConnectionError { error, peer_id, .. } => {
                        let _ = tx.send(Err((peer_id, error.to_string())));
                    }
                    _ => {}
                }
            }
        });
        let mut outcomes = Vec::new();
        while !waiting.is_empty() {
            let ev = tokio::time::timeout(CONNECT, rx.recv())
                .await
                .context("no connection in time")?
                .ok_or_else(|| anyhow!("the swarm stopped"))?;
            match ev {
                Ok(p) if waiting.remove(&p) => outcomes.push(Ok(p)),
                Ok(_) => {}
                Err((p, e)) => {
                    if let Some(p) = p {
                        waiting.remove(&p);
                    }
                    outcomes.push(Err(e));
                }
            }
        }
        let identity = Identity {
            me,
            control,
            connected,
            task,
        };
        Ok((identity, outcomes))
    }

    /// Whether this identity's swarm holds a connection to `peer` now.
    pub fn is_connected_to(&self, peer: &PeerId) -> bool {
        self.connected
            .lock()
            .map(|s| s.contains(peer))
            .unwrap_or(false)
    }
}
