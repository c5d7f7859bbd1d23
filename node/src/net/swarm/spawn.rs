//! Starting a node: build the swarm, start listening, start the stream servers, seed the DHT, and
//! spawn the event loop that owns the swarm from then on.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;

use libp2p::core::transport::ListenerId;
use libp2p::core::upgrade;
use libp2p::swarm::dial_opts::DialOpts;
use libp2p::{gossipsub, noise, tcp, yamux, PeerId, Swarm};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use zdn_protocol::manifest::SignedManifest;
use zdn_protocol::wire::Announcement;
use zdn_protocol::Hash;

use crate::net::chunk::server::ChunkServer;
use crate::net::config::NodeConfig;
use crate::net::handle::{NodeHandle, Traffic, CHUNK_STREAM};
use crate::net::paced::lane::PacedLane;
use crate::net::paced::server::PacedServer;
use crate::net::paced::session::PACED_STREAM;
use crate::net::peers::{PeerScores, PeerTable};
use crate::net::profile::Tuning;
use crate::net::rate_limit::RateLimiter;
use crate::net::streams::{streams, Incoming, StreamBehaviour};
use crate::net::NetError;
use crate::store::StoreHandle;

use super::behaviour::{NodeBehaviour, ANNOUNCE_TOPIC};
use super::dht::Dht;
use super::event_loop::{new_port_dial, peer_of, EventLoop, EVENT_QUEUE};
use super::guard::ConnectionGuard;

const COMMAND_QUEUE: usize = 64;

/// What the node tells the program about the network.
#[derive(Debug, Clone)]
pub enum NodeEvent {
    /// A valid manifest from a trusted publisher arrived by gossip.
    Announced {
        manifest: Box<SignedManifest>,
        from: PeerId,
    },
    /// A manifest too big for gossip was announced by hash from a trusted publisher (a claim until
    /// its manifest, fetched by hash, verifies).
    AnnouncedByHash {
        announcement: Box<Announcement>,
        from: PeerId,
    },
    /// A peer answered a catch-up: the announcements it listed of manifests made since `since`
    /// (unix seconds; 0: all it keeps), before they were checked.
    CaughtUp {
        peer: PeerId,
        since: u64,
        announcements: usize,
    },
    /// A peer was disconnected and is refused from now on (invalid announcements).
    Banned { peer: PeerId, reason: String },
    /// This node's provider record for an object reached the DHT.
    Provided { hash: Hash },
}

/// A started node: its handle, its events, and the task to await for a clean stop.
#[derive(Debug)]
pub struct Node {
    pub handle: NodeHandle,
    pub events: mpsc::Receiver<NodeEvent>,
    pub task: JoinHandle<()>,
}

impl Node {
    /// Builds the swarm, starts listening and dialing, and spawns the event loop and the stream
    /// servers. All stop when `shutdown` completes.
    pub async fn spawn(
        config: NodeConfig,
        store: StoreHandle,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<Node, NetError> {
        let tuning = config.profile.tuning();
        // A node that does not listen cannot answer DHT queries: a client whatever the profile.
        let dht_server = config
            .dht
            .then_some(tuning.dht.server && !config.listen.is_empty());
        let traffic = Arc::new(Traffic::default());
        let scores = Arc::new(PeerScores::default());
        let known = config
            .peers
            .iter()
            .chain(&config.bootstrap)
            .filter_map(peer_of);
        let peer_table = Arc::new(PeerTable::new(known));
        let guard = ConnectionGuard::new(
            config.inbound,
            peer_table.clone(),
            scores.clone(),
            traffic.clone(),
        );
        let (stream_behaviour, control, incoming) = streams(
            &[CHUNK_STREAM, PACED_STREAM],
            traffic.streams_dropped.clone(),
        );
        let mut swarm = build_swarm(&config, &tuning, dht_server, (guard, stream_behaviour))?;
        let topic = gossipsub::IdentTopic::new(ANNOUNCE_TOPIC);
        swarm
            .behaviour_mut()
            .gossipsub
            .subscribe(&topic)
            .map_err(|e| NetError::Config(format!("gossip subscribe: {e}")))?;
        let listeners = listen(&mut swarm, &config)?;

        let (cmd_tx, cmd_rx) = mpsc::channel(COMMAND_QUEUE);
        let (ev_tx, ev_rx) = mpsc::channel(EVENT_QUEUE);
        let handle = NodeHandle {
            commands: cmd_tx,
            control,
            local: *swarm.local_peer_id(),
            store: store.clone(),
            serves: !config.listen.is_empty(),
            trust: config.trust.clone(),
            tuning: tuning.clone(),
            download_limit: limiter(config.max_download_rate)?,
            traffic: traffic.clone(),
            paced: match config.lane_on() {
                true => Some(Arc::new(
                    PacedLane::new(
                        config.link_rate.map(|r| r.saturating_mul(8)),
                        config.partial_dir.as_deref(),
                    )
                    .map_err(|e| {
                        NetError::Config(format!("the lane's partial-chunk directory: {e}"))
                    })?,
                )),
                false => None,
            },
            scores: scores.clone(),
            peer_table,
            fetching: Default::default(),
        };
        let servers = Servers::start(&config, &tuning, &handle, (store, traffic), incoming)?;
        let dht = start_dht(&mut swarm, &config, &tuning, dht_server, &handle).await?;

        let event_loop = EventLoop {
            swarm,
            topic,
            trust: config.trust,
            silent_listeners: listeners,
            listen_addrs: Vec::new(),
            listen_waiters: Vec::new(),
            pending_dials: HashMap::new(),
            waiting_for_peer: HashMap::new(),
            dht,
            dialable: HashMap::new(),
            rtts: HashMap::new(),
            addrs: HashMap::new(),
            scores,
            traffic: handle.traffic.clone(),
            seen: Default::default(),
            pending_announce: Vec::new(),
            catchup: config
                .catch_up
                .then(|| crate::net::catchup::CatchUp::new(handle.clone(), ev_tx.clone())),
            kept: super::kept::KeptPeers::new(&config.peers, &tuning),
            events: ev_tx,
            fault: config.fault,
        };
        let task = tokio::spawn(async move {
            event_loop.run(cmd_rx, shutdown).await;
            servers.stop().await;
        });
        Ok(Node {
            handle,
            events: ev_rx,
            task,
        })
    }
}

/// The swarm: TCP+Noise+Yamux and QUIC, the node's behaviours, the profile's timeouts.
fn build_swarm(
    config: &NodeConfig,
    tuning: &Tuning,
    dht_server: Option<bool>,
    (guard, stream): (ConnectionGuard, StreamBehaviour),
) -> Result<Swarm<NodeBehaviour>, NetError> {
    let mdns_on = config.mdns.unwrap_or(tuning.mdns);
    let t = tuning.clone();
    Ok(
        libp2p::SwarmBuilder::with_existing_identity(config.keypair.clone())
            .with_tokio()
            .with_tcp(
                tcp::Config::default().nodelay(true),
                noise::Config::new,
                yamux::Config::default,
            )
            .map_err(|e| NetError::Config(format!("tcp transport: {e}")))?
            .with_quic_config(|mut q| {
                q.max_idle_timeout = u32::try_from(t.quic_max_idle.as_millis()).unwrap_or(60_000);
                q.keep_alive_interval = t.quic_keep_alive;
                q
            })
            .with_behaviour(|key| {
                NodeBehaviour::new(key, guard, &t, mdns_on, dht_server, stream)
                    .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)
            })
            .map_err(|e| NetError::Config(format!("behaviour: {e}")))?
            .with_swarm_config(|c| {
                c.with_idle_connection_timeout(t.idle_connection_timeout)
                    // A stream's protocol is confirmed with its first answer instead of before
                    // its first request: one round trip less for every request on a new stream
                    // (the manifest, the lane's request, have-bitmaps, chunk pipes), which is
                    // 1.4 s on a satellite link. What a peer does not support fails on the
                    // first read instead (`FrameError::unsupported_protocol`).
                    .with_substream_upgrade_protocol_override(upgrade::Version::V1Lazy)
            })
            .build(),
    )
}

/// Starts every listener; returns their ids (the event loop reports their addresses).
fn listen(
    swarm: &mut Swarm<NodeBehaviour>,
    config: &NodeConfig,
) -> Result<HashSet<ListenerId>, NetError> {
    let mut listeners = HashSet::new();
    for addr in &config.listen {
        let id = swarm
            .listen_on(addr.clone())
            .map_err(|e| NetError::Listen {
                addr: addr.to_string(),
                reason: e.to_string(),
            })?;
        listeners.insert(id);
    }
    for a in &config.external_addresses {
        swarm.add_external_address(a.clone());
    }
    Ok(listeners)
}

fn limiter(bytes_per_sec: Option<u64>) -> Result<Option<Arc<RateLimiter>>, NetError> {
    bytes_per_sec
        .map(|r| {
            RateLimiter::new(r)
                .map(Arc::new)
                .map_err(|e| NetError::Config(format!("rate limit: {e}")))
        })
        .transpose()
}

/// The stream servers (chunk protocol and paced lane), stopped together.
struct Servers {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Servers {
    fn start(
        config: &NodeConfig,
        tuning: &Tuning,
        handle: &NodeHandle,
        (store, traffic): (StoreHandle, Arc<Traffic>),
        incoming: Vec<Incoming>,
    ) -> Result<Servers, NetError> {
        let mut incoming = incoming.into_iter();
        let (Some(chunk_streams), Some(paced_streams)) = (incoming.next(), incoming.next()) else {
            return Err(NetError::Config("stream protocols".into()));
        };
        let paced = PacedServer {
            peer_table: handle.peer_table.clone(),
            scores: handle.scores.clone(),
            commands: handle.commands.downgrade(),
            store: store.clone(),
            progress_timeout: tuning.progress_timeout,
            max_rate_bps: config.max_upload_rate.map(|r| r.saturating_mul(8)),
            traffic: traffic.clone(),
            fault: config.fault,
            links: Default::default(),
        };
        let chunk = ChunkServer {
            store,
            peer_table: handle.peer_table.clone(),
            progress_timeout: tuning.progress_timeout,
            limiter: limiter(config.max_upload_rate)?,
            traffic,
            fault: config.fault,
            cache: Default::default(),
            budget: Default::default(),
            in_flight: Default::default(),
            recent_asked: Default::default(),
        };
        let (stop, stop_rx) = watch::channel(false);
        let tasks = vec![
            tokio::spawn(paced.run(paced_streams, stop_rx.clone())),
            tokio::spawn(chunk.run(chunk_streams, stop_rx)),
        ];
        Ok(Servers { stop, tasks })
    }

    async fn stop(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// The DHT side: bootstrap addresses known, peers dialed, every complete object provided.
async fn start_dht(
    swarm: &mut Swarm<NodeBehaviour>,
    config: &NodeConfig,
    tuning: &Tuning,
    dht_server: Option<bool>,
    handle: &NodeHandle,
) -> Result<Dht, NetError> {
    // Provider records help only if those who find them can dial this node: it listens, and
    // DHT servers have it in their routing tables (a server) or it has an external address.
    // A field client behind NAT publishing daily would pay for records nobody can use.
    let publish = !config.listen.is_empty()
        && (dht_server == Some(true) || !config.external_addresses.is_empty());
    let mut dht = Dht::new(tuning.dht.max_publishing, publish);
    for addr in config.peers.iter().chain(&config.bootstrap) {
        // Dial errors at start are not fatal (a seeder may come up later); fetches re-dial.
        let _ = match peer_of(addr) {
            Some(p) => {
                dht.add_address(swarm, p, addr);
                swarm.dial(new_port_dial(p, addr.clone()))
            }
            None => swarm.dial(
                DialOpts::unknown_peer_id()
                    .address(addr.clone())
                    .allocate_new_port()
                    .build(),
            ),
        };
    }
    // Every object held complete is announced in the DHT (once a peer is known).
    let held = handle.store.call(|s| s.list()).await?;
    for o in held {
        dht.provide(swarm, o.hash);
    }
    Ok(dht)
}
