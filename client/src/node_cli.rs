//! The network commands of the `zdn` binary: `node run`, `fetch`, `status`, `peers`, `announce`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use zdn::atomic_file::AtomicFile;
use zdn::config::Config;
use zdn::control::{self, ControlRequest};
use zdn::node_config::NodeFile;
use zdn::node_service::{exit, exit_code, NodeService};
use zdn_node::net::{
    AutoFetchRule, Fault, FetchOptions, FetchReport, Multiaddr, Node, NodeConfig, Profile,
};
use zdn_node::store::{StoreHandle, TrustPolicy};
use zdn_protocol::glob::Glob;
use zdn_protocol::sync::SyncWindows;
use zdn_protocol::Hash;

use crate::fetch_report::{print_report, report_json};
use crate::node_key::node_key;
use crate::store_cli::{trust, Location};

macro_rules! out {
    ($($t:tt)*) => { crate::emit(&format!($($t)*)) };
}

#[derive(Subcommand, Debug)]
pub enum NodeCommand {
    /// Run a node: serve this store's objects to peers, learn of new ones by gossip, fetch.
    ///
    /// Prints its peer id and one `listening <multiaddr>` line per address (give one to others as
    /// --peer), then a line per event. Stops cleanly on Ctrl-C / SIGTERM. While it runs, `zdn
    /// fetch`, `status`, `peers` and `announce` on the same store talk to it. Example:
    ///
    ///   zdn node run --listen /ip4/0.0.0.0/tcp/4801 --profile datacenter
    ///   zdn node run --profile field --peer /ip4/203.0.113.5/tcp/4801/p2p/12D3Koo... \
    ///       --auto-fetch 'minilm-*' --max-rate 100k
    #[command(verbatim_doc_comment)]
    Run(RunArgs),
}

#[derive(Args, Debug)]
pub struct NetArgs {
    /// A peer to connect to (multiaddr, ideally ending in /p2p/<peer id>); repeatable.
    #[arg(long = "peer", value_name = "MULTIADDR")]
    peers: Vec<Multiaddr>,
    /// A DHT entry point (multiaddr ending in /p2p/<peer id>): objects no connected peer has
    /// are looked up in the DHT through it; repeatable. `--peer` addresses serve as well.
    #[arg(long = "bootstrap", value_name = "MULTIADDR")]
    bootstrap: Vec<Multiaddr>,
    /// Turn the DHT (Kademlia: provider records, lookups) off.
    #[arg(long)]
    no_dht: bool,
    /// Cap on transfer rate, each direction, bytes per second: 125000, 500k, 2M, or bits with
    /// a `bit` suffix (1Mbit = 125000 bytes/s).
    #[arg(long, value_name = "RATE", value_parser = parse_rate)]
    max_rate: Option<u64>,
    /// This site's link rate (same units as --max-rate, e.g. 1Mbit for a satellite terminal).
    /// Fetches then ask peers to send chunks over zdn's paced UDP lane at exactly this rate,
    /// which keeps a lossy, long-delay link full through loss and outages (TCP leaves it idle
    /// part of the time); what the lane cannot bring comes over the usual streams. Set it to
    /// the rate you pay for, not more: above the link's rate the excess is dropped at the link.
    #[arg(long, value_name = "RATE", value_parser = parse_rate)]
    link_rate: Option<u64>,
    /// Trust this publisher key (64 hex digits) besides your own and the config's; repeatable.
    #[arg(long = "trust", value_name = "KEY")]
    trust: Vec<Hash>,
    /// Accept any publisher whose signature verifies.
    #[arg(long)]
    trust_any: bool,
    /// Network profile: datacenter (default), field (satellite link) or edge (site LAN).
    #[arg(long)]
    profile: Option<Profile>,
    /// Only use the link inside this window of the day, UTC (HH:MM-HH:MM, may wrap midnight);
    /// repeatable. Outside every window nothing new is requested; transfers resume inside one.
    #[arg(long = "sync-window", value_name = "HH:MM-HH:MM")]
    sync_windows: Vec<String>,
    /// Turn mDNS discovery on the local network off (it is on for field and edge).
    #[arg(long)]
    no_mdns: bool,
}

impl NetArgs {
    fn profile(&self) -> Profile {
        self.profile.unwrap_or(Profile::Datacenter)
    }

    fn windows(&self) -> anyhow::Result<SyncWindows> {
        Ok(SyncWindows::parse(&self.sync_windows)?)
    }
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Settings file (see docs/network.md); flags add to its lists and override its values.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address to listen on; repeatable. Default: TCP and QUIC on port 4801, all interfaces.
    #[arg(long = "listen", value_name = "MULTIADDR")]
    listen: Vec<Multiaddr>,
    #[command(flatten)]
    net: NetArgs,
    /// Cap on upload rate only (bytes per second, as --max-rate).
    #[arg(long, value_name = "RATE", value_parser = parse_rate)]
    max_upload_rate: Option<u64>,
    /// An address others can reach this node at (public IP, port forward): told to peers and
    /// put in its DHT provider records; repeatable. A field node publishes provider records only
    /// with one (it is a DHT client: nobody could dial it from its records otherwise).
    #[arg(long = "external-address", value_name = "MULTIADDR")]
    external_addresses: Vec<Multiaddr>,
    /// Fetch announced deltas whose name matches (glob) from trusted publishers, when their
    /// base is here; repeatable.
    #[arg(long = "auto-fetch", value_name = "GLOB")]
    auto_fetch: Vec<String>,
    /// Announce these objects (hash, prefix or name) by gossip once a peer listens; repeatable.
    #[arg(long = "announce", value_name = "OBJECT")]
    announce: Vec<String>,
    /// Test only: misbehave on purpose (corrupt-chunks, stall-chunks).
    #[arg(long, hide = true)]
    fault: Option<Fault>,
}

#[derive(Args, Debug)]
pub struct FetchArgs {
    /// Manifest hash of the object (64 hex digits).
    hash: Hash,
    /// Also write the object to this file (verified, written atomically).
    #[arg(short, long)]
    output: Option<PathBuf>,
    #[command(flatten)]
    net: NetArgs,
    /// Fail instead of fetching a delta's missing base first.
    #[arg(long)]
    no_base: bool,
    /// Print a JSON report instead of a summary.
    #[arg(long)]
    json: bool,
}

/// Parses a rate: bytes per second with an optional k/M/G (×1000) suffix, or bits with `bit`.
pub fn parse_rate(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, bits) = match t.strip_suffix("bit").or_else(|| t.strip_suffix("bps")) {
        Some(n) => (n, true),
        None => (t.strip_suffix("B").unwrap_or(t), false),
    };
    let (digits, mult) = match num.chars().last() {
        Some('k' | 'K') => (&num[..num.len() - 1], 1_000u64),
        Some('M') => (&num[..num.len() - 1], 1_000_000),
        Some('G') => (&num[..num.len() - 1], 1_000_000_000),
        _ => (num, 1),
    };
    let v: f64 = digits
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a rate (examples: 125000, 500k, 2M, 1Mbit)"))?;
    let bytes = v * mult as f64 / if bits { 8.0 } else { 1.0 };
    if !(bytes.is_finite() && (1.0..1e15).contains(&bytes)) {
        return Err(format!("rate {s:?} is out of range"));
    }
    Ok(bytes as u64)
}

fn trust_policy(loc: &Location, config: &Config, net: &NetArgs) -> anyhow::Result<TrustPolicy> {
    let mut t = trust(loc, config, net.trust_any)?;
    t.trusted.extend(net.trust.iter().map(|h| *h.as_bytes()));
    Ok(t)
}

struct Started {
    service: Arc<NodeService>,
    task: tokio::task::JoinHandle<()>,
    events: tokio::sync::mpsc::Receiver<zdn_node::net::NodeEvent>,
    stop: tokio::sync::oneshot::Sender<()>,
    log: tokio::sync::mpsc::UnboundedReceiver<String>,
}

/// What only a node that serves (`zdn node run`) has; a fetch without a running node has none.
#[derive(Default)]
struct Serving {
    listen: Vec<Multiaddr>,
    upload: Option<u64>,
    auto_fetch: Vec<AutoFetchRule>,
    fault: Option<Fault>,
    external_addresses: Vec<Multiaddr>,
}

async fn start(
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
    c.max_upload_rate = upload.or(net.max_rate);
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

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Adds `node.toml`'s settings to the command line's.
fn merge(a: &mut RunArgs, f: NodeFile) -> anyhow::Result<()> {
    let addrs = |list: Vec<String>, what: &str| -> anyhow::Result<Vec<Multiaddr>> {
        list.iter()
            .map(|s| s.parse().with_context(|| format!("{what} {s:?}")))
            .collect()
    };
    if a.listen.is_empty() {
        a.listen = addrs(f.listen, "listen")?;
    }
    a.net.peers.extend(addrs(f.peers, "peers")?);
    a.net.bootstrap.extend(addrs(f.bootstrap, "bootstrap")?);
    a.external_addresses
        .extend(addrs(f.external_addresses, "external_addresses")?);
    for k in f.trusted_publishers {
        a.net.trust.push(
            k.parse()
                .with_context(|| format!("trusted_publishers {k:?}"))?,
        );
    }
    a.auto_fetch.extend(f.auto_fetch);
    a.net.sync_windows.extend(f.sync_windows);
    if a.net.profile.is_none() {
        a.net.profile = f
            .profile
            .map(|p| p.parse())
            .transpose()
            .map_err(anyhow::Error::msg)?;
    }
    if a.net.link_rate.is_none() {
        a.net.link_rate = f
            .link_rate
            .map(|r| parse_rate(&r))
            .transpose()
            .map_err(anyhow::Error::msg)?;
    }
    if a.net.max_rate.is_none() {
        a.net.max_rate = f
            .max_rate
            .map(|r| parse_rate(&r))
            .transpose()
            .map_err(anyhow::Error::msg)?;
    }
    if a.max_upload_rate.is_none() {
        a.max_upload_rate = f
            .max_upload_rate
            .map(|r| parse_rate(&r))
            .transpose()
            .map_err(anyhow::Error::msg)?;
    }
    if f.mdns == Some(false) {
        a.net.no_mdns = true;
    }
    if f.dht == Some(false) {
        a.net.no_dht = true;
    }
    Ok(())
}

pub fn run_node(loc: &Location, cmd: NodeCommand) -> anyhow::Result<u8> {
    let NodeCommand::Run(mut a) = cmd;
    if let Some(path) = a.config.clone() {
        merge(&mut a, NodeFile::load(&path)?)?;
    }
    let config = loc.config()?;
    let rules = a
        .auto_fetch
        .iter()
        .map(|g| AutoFetchRule {
            publisher: None,
            name: Glob::new(g),
        })
        .collect();
    let listen = if a.listen.is_empty() {
        vec![
            "/ip4/0.0.0.0/tcp/4801".parse()?,
            "/ip4/0.0.0.0/udp/4801/quic-v1".parse()?,
        ]
    } else {
        a.listen.clone()
    };
    runtime()?.block_on(async {
        let dir = loc.store_dir(&config);
        let listener = control::bind(&dir).await?;
        let serving = Serving {
            listen,
            upload: a.max_upload_rate,
            auto_fetch: rules,
            fault: a.fault,
            external_addresses: a.external_addresses.clone(),
        };
        let mut s = start(loc, &config, &a.net, serving).await?;
        out!("peer {}", s.service.handle.peer_id());
        for addr in s.service.handle.listen_addrs().await? {
            out!("listening {addr}");
        }
        let ctl = tokio::spawn(control::run(listener, s.service.clone(), shutdown_signal()));
        let auto = tokio::spawn(s.service.clone().run_auto_fetch(s.events));
        for what in &a.announce {
            let svc = s.service.clone();
            let what = what.clone();
            tokio::spawn(async move {
                let w = what.clone();
                let r = async {
                    let store = svc.handle.store().clone();
                    let m = store
                        .call(move |s| s.require_manifest(&s.resolve(&w)?))
                        .await?;
                    svc.handle.announce(m.as_bytes().to_vec()).await?;
                    anyhow::Ok(m.hash())
                }
                .await;
                let _ = svc.log.send(match r {
                    Ok(h) => format!("announced {h}"),
                    Err(e) => format!("announcing {what} failed: {e:#}"),
                });
            });
        }
        let mut stopping = std::pin::pin!(shutdown_signal());
        loop {
            tokio::select! {
                _ = &mut stopping => break,
                Some(line) = s.log.recv() => out!("{line}"),
            }
        }
        let _ = s.stop.send(());
        let _ = (&mut s.task).await;
        ctl.abort();
        auto.abort();
        let _ = std::fs::remove_file(control::socket_path(&dir));
        let t = s.service.handle.traffic();
        out!("stopped {}", serde_json::to_value(t)?);
        anyhow::Ok(0)
    })
}

fn bar(json: bool) -> ProgressBar {
    let b = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::hidden());
    if !json && std::io::stderr().is_terminal() {
        b.set_draw_target(ProgressDrawTarget::stderr());
        if let Ok(style) = ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        ) {
            b.set_style(style.progress_chars("=> "));
        }
    }
    b
}

fn show_progress(b: &ProgressBar, p: &zdn_node::net::FetchProgress) {
    b.set_length(p.total_bytes);
    b.set_position(p.done_bytes);
    if p.waiting_for_window_s > 0 {
        b.set_message(format!(
            "{} waiting {} s for the next sync window",
            p.name, p.waiting_for_window_s
        ));
    } else {
        b.set_message(format!("{} ({} peers)", p.name, p.peers));
    }
}

pub fn run_fetch(loc: &Location, a: FetchArgs) -> anyhow::Result<u8> {
    let config = loc.config()?;
    let dir = loc.store_dir(&config);
    let socket = control::socket_path(&dir);
    runtime()?.block_on(async {
        let b = bar(a.json);
        let result: Result<FetchReport, (String, u8)> = if control::is_running(&socket).await {
            if a.net.max_rate.is_some() {
                eprintln!("note: a node runs on this store; its own rate cap applies, not --max-rate");
            }
            let req = ControlRequest::Fetch {
                hash: a.hash.to_hex(),
                peers: a.net.peers.iter().map(|p| p.to_string()).collect(),
                fetch_base: !a.no_base,
            };
            let mut on_progress = |v: &serde_json::Value| {
                if let Ok(p) = serde_json::from_value(v.clone()) {
                    show_progress(&b, &p);
                }
            };
            let fetching = control::request(&socket, &req, &mut on_progress);
            let r = tokio::select! {
                r = fetching => {
                    let line = r?;
                    match (line.ok, line.result) {
                        (true, Some(v)) => Ok(serde_json::from_value(v)?),
                        _ => Err((line.error.unwrap_or_default(), line.code.unwrap_or(1))),
                    }
                }
                _ = shutdown_signal() => Err(("interrupted (the node goes on fetching)".into(), exit::INTERRUPTED)),
            };
            match (&r, &a.output) {
                (Ok(_), Some(out)) => {
                    // The node owns the store: it writes the file (an absolute path, same machine).
                    let path = std::path::absolute(out)?;
                    let req = ControlRequest::Get {
                        hash: a.hash.to_hex(),
                        output: path.to_string_lossy().into_owned(),
                    };
                    let line = control::request(&socket, &req, &mut |_| {}).await?;
                    if !line.ok {
                        Err((line.error.unwrap_or_default(), 1))
                    } else {
                        r
                    }
                }
                _ => r,
            }
        } else {
            let mut s = start(loc, &config, &a.net, Serving::default()).await?;
            let opts = FetchOptions {
                peers: a.net.peers.clone(),
                fetch_base: !a.no_base,
                sync_windows: a.net.windows()?,
                ..Default::default()
            };
            let mut on_progress = |p: &zdn_node::net::FetchProgress| show_progress(&b, p);
            let r = tokio::select! {
                r = s.service.fetch(a.hash, &opts, &mut on_progress) => {
                    r.map_err(|e| (e.to_string(), exit_code(&e)))
                }
                _ = shutdown_signal() => Err((
                    "interrupted; run the same command again to resume (verified chunks are kept)".into(),
                    exit::INTERRUPTED,
                )),
            };
            if let (Ok(_), Some(out)) = (&r, &a.output) {
                let path = out.clone();
                let hash = a.hash;
                s.service
                    .handle
                    .store()
                    .call(move |st| {
                        let mut f = AtomicFile::create(&path).map_err(|e| {
                            zdn_node::store::StoreError::io("creating the output", std::io::Error::other(e))
                        })?;
                        st.read_object(&hash, &mut f, &mut |_| {})?;
                        f.commit().map_err(|e| {
                            zdn_node::store::StoreError::io("writing the output", std::io::Error::other(e))
                        })
                    })
                    .await
                    .with_context(|| format!("writing {}", out.display()))?;
            }
            let _ = s.stop.send(());
            let _ = (&mut s.task).await;
            r
        };
        b.finish_and_clear();
        match result {
            Ok(r) => {
                if a.json {
                    out!("{}", serde_json::to_string_pretty(&report_json(&r)?)?);
                } else {
                    print_report(&r);
                    if let Some(o) = &a.output {
                        out!("wrote {}", o.display());
                    }
                }
                anyhow::Ok(0)
            }
            Err((msg, code)) => {
                eprintln!("error: fetch {}: {msg}", a.hash);
                Ok(code)
            }
        }
    })
}

pub fn run_status(loc: &Location, json: bool, peers_only: bool) -> anyhow::Result<u8> {
    let config = loc.config()?;
    let dir = loc.store_dir(&config);
    let socket = control::socket_path(&dir);
    runtime()?.block_on(async {
        let req = if peers_only {
            ControlRequest::Peers
        } else {
            ControlRequest::Status
        };
        let line = match control::request(&socket, &req, &mut |_| {}).await {
            Ok(l) => l,
            Err(control::ControlError::NotRunning(_)) if !peers_only => {
                let store = loc.open(&config)?;
                let v = serde_json::json!({
                    "node": "not running",
                    "objects": store.list()?,
                    "partial_downloads": store.partials()?.iter().map(|m| m.hash()).collect::<Vec<_>>(),
                });
                out!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(0);
            }
            Err(e) => return Err(e.into()),
        };
        let v = line
            .result
            .ok_or_else(|| anyhow::anyhow!(line.error.unwrap_or_default()))?;
        if json || !peers_only {
            out!("{}", serde_json::to_string_pretty(&v)?);
        } else if let Some(list) = v.as_array() {
            for p in list {
                out!(
                    "{} {} rtt {}",
                    p["peer"].as_str().unwrap_or("?"),
                    p["addresses"],
                    p["rtt_ms"]
                );
            }
        }
        anyhow::Ok(0)
    })
}

pub fn run_announce(loc: &Location, object: String) -> anyhow::Result<u8> {
    let config = loc.config()?;
    let socket = control::socket_path(&loc.store_dir(&config));
    runtime()?.block_on(async {
        let line = control::request(
            &socket,
            &ControlRequest::Announce { hash: object },
            &mut |_| {},
        )
        .await?;
        match line.result {
            Some(v) if line.ok => {
                out!("{}", v["announced"].as_str().unwrap_or(""));
                anyhow::Ok(0)
            }
            _ => Err(anyhow::anyhow!(line.error.unwrap_or_default())),
        }
    })
}
