//! A node started in this process for one command (`zdn node run`, or `zdn fetch` when no node
//! runs on the store), the async runtime, and the shutdown signal. The network arguments shared by
//! those commands live here too.

use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use zdn_node::net::{AutoFetchRule, Fault, Multiaddr, Node, NodeConfig, Profile};
use zdn_node::store::{StoreHandle, TrustPolicy};
use zdn_protocol::sync::SyncWindows;
use zdn_protocol::Hash;

use crate::cli::args::{parse_bytes_per_sec, Location};
use crate::cli::store::trust;
use crate::daemon::service::NodeService;
use crate::home::config::Config;
use crate::home::node_key::node_key;

#[derive(Args, Debug)]
pub struct NetArgs {
    /// A peer to connect to (multiaddr, ideally ending in /p2p/<peer id>); repeatable. A running
    /// node (`node run`) dials one ending in /p2p/<id> again whenever it is not connected; with
    /// the field profile a fetch that cannot reach any keeps trying for 45 minutes.
    #[arg(long = "peer", value_name = "MULTIADDR")]
    pub peers: Vec<Multiaddr>,
    /// A DHT entry point (multiaddr ending in /p2p/<peer id>): objects no connected peer has
    /// are looked up in the DHT through it; repeatable. `--peer` addresses serve as well.
    #[arg(long = "bootstrap", value_name = "MULTIADDR")]
    pub bootstrap: Vec<Multiaddr>,
    /// Turn the DHT (Kademlia: provider records, lookups) off.
    #[arg(long)]
    pub no_dht: bool,
    /// Cap on transfer rate, each direction, bytes per second: 125000, 500k, 2M, or bits with
    /// a `bit` suffix (1Mbit = 125000 bytes/s).
    #[arg(long, value_name = "RATE", value_parser = parse_bytes_per_sec)]
    pub max_rate: Option<u64>,
    /// This site's link rate (same units as --max-rate, e.g. 1Mbit for a satellite terminal).
    /// Fetches then ask peers to send chunks over zdn's paced UDP lane, at most at this rate:
    /// the sender starts there and finds the rate actually available below it from queueing
    /// delay, which keeps a lossy, long-delay link full through loss and outages (TCP leaves it
    /// idle part of the time); what the lane cannot bring comes over the usual streams. The
    /// field profile uses the lane without it (the sender then finds the link's rate itself).
    #[arg(long, value_name = "RATE", value_parser = parse_bytes_per_sec)]
    pub link_rate: Option<u64>,
    /// Trust this publisher key (64 hex digits) besides your own and the config's; repeatable.
    #[arg(long = "trust", value_name = "KEY")]
    pub trust: Vec<Hash>,
    /// Accept any publisher whose signature verifies.
    #[arg(long)]
    pub trust_any: bool,
    /// Network profile: datacenter (default), field (satellite link) or edge (site LAN).
    #[arg(long)]
    pub profile: Option<Profile>,
    /// Only use the link inside this window of the day, UTC (HH:MM-HH:MM, may wrap midnight);
    /// repeatable. Outside every window nothing new is requested; transfers resume inside one.
    #[arg(long = "sync-window", value_name = "HH:MM-HH:MM")]
    pub sync_windows: Vec<String>,
    /// Turn mDNS discovery on the local network off (it is on for field and edge).
    #[arg(long)]
    pub no_mdns: bool,
}

impl NetArgs {
    /// The flags given that set the node's own behaviour (not the fetch's): a node already
    /// running on the store keeps its own settings, so these cannot apply to a fetch through it.
    pub fn node_settings_given(&self) -> Vec<&'static str> {
        let mut given = Vec::new();
        let mut flag = |on: bool, name: &'static str| {
            if on {
                given.push(name);
            }
        };
        flag(!self.bootstrap.is_empty(), "--bootstrap");
        flag(self.no_dht, "--no-dht");
        flag(self.max_rate.is_some(), "--max-rate");
        flag(self.link_rate.is_some(), "--link-rate");
        flag(!self.trust.is_empty(), "--trust");
        flag(self.trust_any, "--trust-any");
        flag(self.profile.is_some(), "--profile");
        flag(!self.sync_windows.is_empty(), "--sync-window");
        flag(self.no_mdns, "--no-mdns");
        given
    }

    pub fn profile(&self) -> Profile {
        self.profile.unwrap_or(Profile::Datacenter)
    }

    pub fn windows(&self) -> anyhow::Result<SyncWindows> {
        Ok(SyncWindows::parse(&self.sync_windows)?)
    }
}

fn trust_policy(loc: &Location, config: &Config, net: &NetArgs) -> anyhow::Result<TrustPolicy> {
    let mut t = trust(loc, config, net.trust_any)?;
    t.trusted.extend(net.trust.iter().map(|h| *h.as_bytes()));
    Ok(t)
}

#[derive(Debug)]
pub struct Started {
    pub service: Arc<NodeService>,
    pub task: tokio::task::JoinHandle<()>,
    pub events: tokio::sync::mpsc::Receiver<zdn_node::net::NodeEvent>,
    pub stop: tokio::sync::oneshot::Sender<()>,
    pub log: tokio::sync::mpsc::UnboundedReceiver<String>,
}

/// What only a node that serves (`zdn node run`) has; a fetch without a running node has none.
#[derive(Debug, Default)]
pub struct Serving {
    pub listen: Vec<Multiaddr>,
    pub upload: Option<u64>,
    pub auto_fetch: Vec<AutoFetchRule>,
    pub fault: Option<Fault>,
    pub external_addresses: Vec<Multiaddr>,
    /// Ask newly connected peers for what was announced while away (with auto-fetch rules).
    pub catch_up: bool,
}

pub async fn start(
    loc: &Location,
    config: &Config,
    net: &NetArgs,
    serving: Serving,
) -> anyhow::Result<Started> {
    let Serving {
        listen,
        upload,
        auto_fetch,
        fault,
        external_addresses,
        catch_up,
    } = serving;
    let dir = loc.store_dir(config);
    let keypair = node_key(&dir)?;
    let store = StoreHandle::spawn(loc.open(config)?)?;
    let mut c = NodeConfig::new(keypair, net.profile());
    c.trust = trust_policy(loc, config, net)?;
    let listen_given = !listen.is_empty();
    if listen_given {
        // A serving node connects at start; a fetch dials its peers itself.
        c.peers = net.peers.clone();
    }
    c.listen = listen;
    c.bootstrap = net.bootstrap.clone();
    c.dht = !net.no_dht;
    c.external_addresses = external_addresses;
    c.max_download_rate = net.max_rate;
    c.link_rate = net.link_rate;
    // What the paced lane received of chunks not yet complete survives a restart or a kill.
    c.partial_dir = Some(dir.join("lane-partial"));
    c.max_upload_rate = upload.or(net.max_rate);
    // Only a node that acts on announcements asks for those it missed.
    c.catch_up = catch_up && !auto_fetch.is_empty();
    c.auto_fetch = auto_fetch.clone();
    c.fault = fault;
    if net.no_mdns {
        c.mdns = Some(false);
    }
    let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let node = Node::spawn(c, store, async move {
        let _ = stop_rx.await;
    })
    .await?;
    let (log_tx, log) = tokio::sync::mpsc::unbounded_channel();
    let service = Arc::new(NodeService {
        handle: node.handle,
        profile: net.profile(),
        sync_windows: net.windows()?,
        known_peers: if listen_given {
            net.peers.clone()
        } else {
            Vec::new()
        },
        transfers: Default::default(),
        auto_fetch,
        log: log_tx,
    });
    Ok(Started {
        service,
        task: node.task,
        events: node.events,
        stop,
        log,
    })
}

/// Completes on SIGTERM or Ctrl-C. The SIGTERM handler is installed when this is called, not when
/// the future is first polled: a SIGTERM that arrives in between (a supervisor stopping a node right
/// after it said it listens) is caught, not fatal. Call it inside the runtime.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    async move {
        #[cfg(unix)]
        if let Some(mut term) = term {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
        let _ = tokio::signal::ctrl_c().await;
    }
}

pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}
