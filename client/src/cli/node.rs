//! `zdn node run`: a node that serves this store, learns of new objects by gossip, auto-fetches,
//! and answers the other commands through its control socket.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use zdn_node::net::{AutoFetchRule, Fault, Multiaddr};
use zdn_protocol::glob::Glob;

use crate::cli::args::{parse_bytes_per_sec, Location};
use crate::cli::output::say;
use crate::cli::session::{runtime, shutdown_signal, start, NetArgs, Serving};
use crate::daemon::config::NodeFile;
use crate::daemon::control;

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
pub struct RunArgs {
    /// Settings file (see docs/network.md); flags add to its lists and override its values.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address to listen on; repeatable. Default: TCP on port 4801, all interfaces. QUIC
    /// (`/ip4/0.0.0.0/udp/4801/quic-v1`) only when asked for: a QUIC listener answers a forged
    /// first packet with up to ~3× its bytes before the address is validated (docs/security.md).
    #[arg(long = "listen", value_name = "MULTIADDR")]
    listen: Vec<Multiaddr>,
    #[command(flatten)]
    net: NetArgs,
    /// Cap on upload rate only (bytes per second, as --max-rate).
    #[arg(long, value_name = "RATE", value_parser = parse_bytes_per_sec)]
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
    /// Do not ask newly connected peers for the announcements made while this node was away.
    /// By default a node with --auto-fetch rules asks each peer once per connection (at most
    /// every 10 minutes) and acts on what it missed as on gossip (docs/network.md "Catch-up").
    #[arg(long)]
    no_catch_up: bool,
    /// Announce these objects (hash, prefix or name) by gossip once a peer listens; repeatable.
    #[arg(long = "announce", value_name = "OBJECT")]
    announce: Vec<String>,
    /// Test only: misbehave on purpose (corrupt-chunks, stall-chunks).
    #[arg(long, hide = true)]
    fault: Option<Fault>,
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
            .map(|r| parse_bytes_per_sec(&r))
            .transpose()
            .map_err(anyhow::Error::msg)?;
    }
    if a.net.max_rate.is_none() {
        a.net.max_rate = f
            .max_rate
            .map(|r| parse_bytes_per_sec(&r))
            .transpose()
            .map_err(anyhow::Error::msg)?;
    }
    if a.max_upload_rate.is_none() {
        a.max_upload_rate = f
            .max_upload_rate
            .map(|r| parse_bytes_per_sec(&r))
            .transpose()
            .map_err(anyhow::Error::msg)?;
    }
    if f.mdns == Some(false) {
        a.net.no_mdns = true;
    }
    if f.dht == Some(false) {
        a.net.no_dht = true;
    }
    if f.catch_up == Some(false) {
        a.no_catch_up = true;
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
        // Not QUIC by default: it would reflect up to ~3× a forged first packet to its source.
        vec!["/ip4/0.0.0.0/tcp/4801".parse()?]
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
            catch_up: !a.no_catch_up,
        };
        let mut s = start(loc, &config, &a.net, serving).await?;
        // Caught from here on: whoever reads "listening" may stop the node at once.
        let mut stopping = std::pin::pin!(shutdown_signal());
        let ctl_stopping = shutdown_signal();
        say!("peer {}", s.service.handle.peer_id());
        for addr in s.service.handle.listen_addrs().await? {
            say!("listening {addr}");
        }
        let ctl = tokio::spawn(control::run(listener, s.service.clone(), ctl_stopping));
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
        loop {
            tokio::select! {
                _ = &mut stopping => break,
                Some(line) = s.log.recv() => say!("{line}"),
            }
        }
        let _ = s.stop.send(());
        let _ = (&mut s.task).await;
        ctl.abort();
        auto.abort();
        let _ = std::fs::remove_file(control::socket_path(&dir));
        let t = s.service.handle.traffic();
        say!("stopped {}", serde_json::to_value(t)?);
        anyhow::Ok(0)
    })
}
