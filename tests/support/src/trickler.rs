//! [`Trickler`]: a hostile peer that listens for the chunk protocol and answers every request
//! truthfully but as slowly as it can without tripping a progress timeout: the frame's length at
//! once, then one byte of the body every `gap`. A node that waits for it without a floor on the rate waits for hours.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use futures::{AsyncWriteExt, StreamExt};
use libp2p::swarm::SwarmEvent;
use libp2p::{noise, tcp, yamux, Multiaddr, StreamProtocol};
use tokio::task::JoinHandle;
use zdn_protocol::manifest::SignedManifest;
use zdn_protocol::wire::{ChunkBitmap, Request, Response, CHUNK_PROTOCOL, MAX_REQUEST_LEN};

use crate::frame;

/// A running trickler; stops when dropped.
#[derive(Debug)]
pub struct Trickler {
    /// Where it listens, with its `/p2p/` id.
    pub addr: Multiaddr,
    /// Requests it has begun to answer.
    pub requests: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl Drop for Trickler {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The answer the trickler sends to `req`: honest, so only its pace is wrong.
fn answer(m: &SignedManifest, req: &Request) -> Response {
    let hash = m.hash();
    match req {
        Request::GetManifest(h) if *h == hash => Response::Manifest(m.as_bytes().to_vec()),
        Request::GetHave(h) if *h == hash => Response::Have {
            object: hash,
            held: ChunkBitmap::full(m.manifest.chunks.len() as u32),
        },
        Request::GetManifest(h) | Request::GetHave(h) | Request::GetAnnouncement(h) => {
            Response::NotFound(*h)
        }
        Request::GetChunk { id, .. } => Response::NotFound(*id),
        Request::GetRecent { .. } => Response::Recent(Vec::new()),
    }
}

async fn trickle(mut s: libp2p::Stream, m: Arc<SignedManifest>, gap: Duration, n: Arc<AtomicU64>) {
    while let Ok(req) = frame::read(&mut s, MAX_REQUEST_LEN, Duration::from_secs(3600)).await {
        let Ok(req) = Request::decode(&req) else {
            return;
        };
        n.fetch_add(1, Ordering::Relaxed);
        let body = answer(&m, &req).encode();
        // The length at once (a reader reads it in one go), then the body a byte at a time.
        let len = (body.len() as u32).to_le_bytes();
        if s.write_all(&len).await.is_err() || s.flush().await.is_err() {
            return;
        }
        for b in body {
            tokio::time::sleep(gap).await;
            if s.write_all(&[b]).await.is_err() || s.flush().await.is_err() {
                return;
            }
        }
    }
}

impl Trickler {
    /// Listens on 127.0.0.1 and answers requests about `m` one byte every `gap`.
    pub async fn start(m: SignedManifest, gap: Duration) -> anyhow::Result<Trickler> {
        let mut swarm = libp2p::SwarmBuilder::with_new_identity()
            .with_tokio()
            .with_tcp(
                tcp::Config::default().nodelay(true),
                noise::Config::new,
                yamux::Config::default,
            )?
            .with_behaviour(|_| libp2p_stream::Behaviour::new())?
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(3600)))
            .build();
        let me = *swarm.local_peer_id();
        let mut incoming = swarm
            .behaviour()
            .new_control()
            .accept(StreamProtocol::new(CHUNK_PROTOCOL))?;
        swarm.listen_on("/ip4/127.0.0.1/tcp/0".parse()?)?;
        let addr = loop {
            let ev = tokio::time::timeout(Duration::from_secs(10), swarm.select_next_some())
                .await
                .context("no listen address")?;
            if let SwarmEvent::NewListenAddr { address, .. } = ev {
                break address
                    .with_p2p(me)
                    .map_err(|a| anyhow!("{a}: not an address to add an id to"))?;
            }
        };
        let m = Arc::new(m);
        let requests = Arc::new(AtomicU64::new(0));
        let n = requests.clone();
        let task = tokio::spawn(async move {
            let streams = async {
                while let Some((_, s)) = incoming.next().await {
                    tokio::spawn(trickle(s, m.clone(), gap, n.clone()));
                }
            };
            let swarm_loop = async {
                loop {
                    swarm.select_next_some().await;
                }
            };
            tokio::join!(streams, swarm_loop);
        });
        Ok(Trickler {
            addr,
            requests,
            task,
        })
    }
}
