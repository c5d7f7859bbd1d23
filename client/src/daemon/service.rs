//! [`NodeService`]: a running node as the CLI sees it — the libp2p node, the transfers in progress,
//! auto-fetch of announced deltas, and the answers to control requests.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use zdn_node::net::{
    fetch, FetchError, FetchOptions, FetchProgress, FetchReport, NodeEvent, NodeHandle, Profile,
};
use zdn_node::net::{AutoFetchRule, Multiaddr};
use zdn_protocol::manifest::{Kind, SignedManifest};
use zdn_protocol::sync::SyncWindows;
use zdn_protocol::wire::Announcement;
use zdn_protocol::Hash;

use crate::daemon::control::{ControlHandler, ControlLine, ControlRequest};

/// Exit codes of `zdn fetch` (documented in its `--help`).
pub mod exit {
    pub const NOT_FOUND: u8 = 2;
    pub const VERIFICATION: u8 = 3;
    pub const INTERRUPTED: u8 = 4;
    pub const UNTRUSTED: u8 = 5;
}

/// The exit code for a failed fetch.
pub fn exit_code(e: &FetchError) -> u8 {
    match e {
        FetchError::NotFound { .. } | FetchError::NoPeers => exit::NOT_FOUND,
        FetchError::Verification(_) => exit::VERIFICATION,
        FetchError::Incomplete { .. } => exit::INTERRUPTED,
        FetchError::Untrusted { .. } | FetchError::MissingBase { .. } => exit::UNTRUSTED,
        FetchError::Net(_) | FetchError::Store(_) => 1,
    }
}

/// What an announcement says of an object, whether its manifest came with it or only its hash.
struct Heard {
    hash: Hash,
    kind: Kind,
    name: String,
    base: Option<Hash>,
    publisher: [u8; 32],
    object_len: u64,
}

impl Heard {
    fn of_manifest(m: &SignedManifest) -> Heard {
        Heard {
            hash: m.hash(),
            kind: m.manifest.kind,
            name: m.manifest.name.clone(),
            base: m.manifest.base,
            publisher: m.publisher,
            object_len: m.manifest.object_len,
        }
    }

    fn of_announcement(a: &Announcement) -> Heard {
        Heard {
            hash: a.manifest,
            kind: a.kind,
            name: a.name.clone(),
            base: a.base,
            publisher: a.publisher,
            object_len: a.object_len,
        }
    }
}

#[derive(Debug)]
pub struct NodeService {
    pub handle: NodeHandle,
    pub profile: Profile,
    pub transfers: Mutex<BTreeMap<String, FetchProgress>>,
    pub auto_fetch: Vec<AutoFetchRule>,
    /// When this node may use its link (applies to every fetch it runs).
    pub sync_windows: SyncWindows,
    /// The peers it was configured with: every fetch it runs (re)dials them, so a fetch right
    /// after start waits for those connections instead of finding none.
    pub known_peers: Vec<Multiaddr>,
    /// Lines for the node's log (stdout of `zdn node run`).
    pub log: mpsc::UnboundedSender<String>,
}

impl NodeService {
    /// Fetches `hash`, recording its progress for `zdn status` and passing it to `on_progress`.
    pub async fn fetch(
        &self,
        hash: Hash,
        opts: &FetchOptions,
        on_progress: &mut (dyn FnMut(&FetchProgress) + Send),
    ) -> Result<FetchReport, FetchError> {
        let key = hash.to_hex();
        let r = fetch(&self.handle, hash, opts, &mut |p| {
            if let Ok(mut t) = self.transfers.lock() {
                t.insert(key.clone(), p.clone());
            }
            on_progress(p);
        })
        .await;
        if let Ok(mut t) = self.transfers.lock() {
            t.remove(&key);
        }
        r
    }

    /// Acts on gossip: a trusted announcement of a delta that matches an auto-fetch rule, whose
    /// base is here, is fetched from the connected peers. A manifest too big for gossip is
    /// announced by hash; its fetch gets the manifest first and verifies it like any other.
    pub async fn run_auto_fetch(self: Arc<Self>, mut events: mpsc::Receiver<NodeEvent>) {
        while let Some(ev) = events.recv().await {
            // An announcement by hash (checked by the node: signed by its publisher) is kept with
            // the object once fetched, so this node can announce the object too.
            let (heard, from, how, signed) = match ev {
                NodeEvent::Announced { manifest, from } => {
                    (Heard::of_manifest(&manifest), from, "", None)
                }
                NodeEvent::AnnouncedByHash { announcement, from } => (
                    Heard::of_announcement(&announcement),
                    from,
                    " by hash",
                    Some(announcement),
                ),
                NodeEvent::Banned { peer, reason } => {
                    let _ = self.log.send(format!("banned {peer}: {reason}"));
                    continue;
                }
                NodeEvent::CaughtUp {
                    peer,
                    since,
                    announcements,
                } => {
                    let which = match since {
                        0 => "all it keeps".to_string(),
                        t => format!("made since unix time {t}"),
                    };
                    let _ = self.log.send(format!(
                        "caught up from {peer}: {announcements} announcements ({which})"
                    ));
                    continue;
                }
                NodeEvent::Provided { hash } => {
                    let _ = self.log.send(format!("provided {hash} in the DHT"));
                    continue;
                }
            };
            let _ = self.log.send(format!(
                "announced{how} {} {} ({} bytes) by {} via {from}",
                heard.kind.as_str(),
                heard.hash,
                heard.object_len,
                &Hash::from_bytes(heard.publisher).to_hex()[..16]
            ));
            // A soup (a recipe of a few hundred bytes) brings its missing components with it.
            let wanted = matches!(heard.kind, Kind::Delta | Kind::Soup)
                && self.auto_fetch.iter().any(|r| {
                    r.publisher.is_none_or(|p| p == heard.publisher) && r.name.matches(&heard.name)
                });
            if !wanted {
                continue;
            }
            let Some(base) = heard.base else { continue };
            let have_base = self
                .handle
                .store()
                .call(move |s| s.manifest(&base))
                .await
                .ok()
                .flatten()
                .is_some();
            if !have_base {
                let _ = self.log.send(format!(
                    "auto-fetch: skipping {} (base {base} not here)",
                    heard.hash
                ));
                continue;
            }
            let svc = self.clone();
            let hash = heard.hash;
            tokio::spawn(async move {
                let opts = FetchOptions {
                    peers: svc.known_peers.clone(),
                    sync_windows: svc.sync_windows.clone(),
                    ..Default::default()
                };
                let fetched = svc.fetch(hash, &opts, &mut |_| {}).await;
                if let (Ok(_), Some(a)) = (&fetched, signed) {
                    let kept = svc
                        .handle
                        .store()
                        .call(move |s| s.put_announcement(&a))
                        .await;
                    if let Err(e) = kept {
                        let _ = svc
                            .log
                            .send(format!("keeping the announcement of {hash}: {e}"));
                    }
                }
                let line = match fetched {
                    Ok(r) => format!(
                        "auto-fetch: fetched {} {hash}: {} bytes received in {:.1} s from {} peers",
                        r.name,
                        r.bytes_received,
                        r.seconds,
                        r.peers.iter().filter(|p| p.chunks > 0).count()
                    ),
                    Err(e) => format!("auto-fetch: {hash} failed: {e}"),
                };
                let _ = svc.log.send(line);
            });
        }
    }

    async fn status(&self) -> Result<serde_json::Value, String> {
        let store = self.handle.store().clone();
        let (objects, partials) = store
            .call(|s| Ok((s.list()?, s.partials()?)))
            .await
            .map_err(|e| e.to_string())?;
        let listen = self
            .handle
            .listen_addrs()
            .await
            .map_err(|e| e.to_string())?;
        let peers = self.handle.peers().await.map_err(|e| e.to_string())?;
        Ok(serde_json::json!({
            "peer_id": self.handle.peer_id().to_string(),
            "profile": self.profile,
            "listen": listen.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
            "peers": peers.len(),
            "objects": objects,
            "partial_downloads": partials.iter().map(|m| serde_json::json!({
                "hash": m.hash(), "name": m.manifest.name, "object_len": m.manifest.object_len,
            })).collect::<Vec<_>>(),
            "transfers": self.transfers.lock().map(|t| t.clone()).unwrap_or_default(),
            "traffic": self.handle.traffic(),
        }))
    }

    async fn resolve(&self, what: String) -> Result<Hash, String> {
        self.handle
            .store()
            .call(move |s| s.resolve(&what))
            .await
            .map_err(|e| e.to_string())
    }
}

fn reply(r: Result<serde_json::Value, String>, code: u8) -> ControlLine {
    match r {
        Ok(v) => ControlLine {
            ok: true,
            result: Some(v),
            ..Default::default()
        },
        Err(e) => ControlLine {
            error: Some(e),
            code: Some(code),
            ..Default::default()
        },
    }
}

impl ControlHandler for NodeService {
    async fn handle(
        &self,
        req: ControlRequest,
        progress: mpsc::Sender<serde_json::Value>,
    ) -> ControlLine {
        match req {
            ControlRequest::Status => reply(self.status().await, 1),
            ControlRequest::Peers => reply(
                self.handle
                    .peers()
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|p| serde_json::to_value(p).map_err(|e| e.to_string())),
                1,
            ),
            ControlRequest::Announce { hash } => {
                let r = async {
                    let hash = self.resolve(hash).await?;
                    let m = self
                        .handle
                        .store()
                        .call(move |s| s.require_manifest(&hash))
                        .await
                        .map_err(|e| e.to_string())?;
                    self.handle
                        .announce(m.as_bytes().to_vec())
                        .await
                        .map_err(|e| e.to_string())?;
                    Ok(serde_json::json!({ "announced": hash }))
                }
                .await;
                reply(r, 1)
            }
            ControlRequest::Get { hash, output } => {
                let r = async {
                    let hash = self.resolve(hash).await?;
                    let store = self.handle.store().clone();
                    let m = store
                        .call(move |s| s.require_manifest(&hash))
                        .await
                        .map_err(|e| e.to_string())?;
                    let path = std::path::PathBuf::from(&output);
                    // Bounded store jobs: peers are served while a large object is written out.
                    tokio::task::spawn_blocking(move || {
                        crate::fs::object_output::write_object_blocking(&store, &m, &path, false)
                    })
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| format!("writing {output}: {e}"))?;
                    Ok(serde_json::json!({ "wrote": output }))
                }
                .await;
                reply(r, 1)
            }
            ControlRequest::Fetch {
                hash,
                peers,
                fetch_base,
            } => {
                let hash = match hash.parse::<Hash>() {
                    Ok(h) => h,
                    Err(e) => return reply(Err(format!("{hash:?}: {e}")), 1),
                };
                let mut addrs = Vec::new();
                for p in peers {
                    match p.parse::<Multiaddr>() {
                        Ok(a) => addrs.push(a),
                        Err(e) => return reply(Err(format!("--peer {p:?}: {e}")), 1),
                    }
                }
                addrs.extend(self.known_peers.iter().cloned());
                let opts = FetchOptions {
                    peers: addrs,
                    fetch_base,
                    sync_windows: self.sync_windows.clone(),
                    ..Default::default()
                };
                match self
                    .fetch(hash, &opts, &mut |p| {
                        if let Ok(v) = serde_json::to_value(p) {
                            let _ = progress.try_send(v);
                        }
                    })
                    .await
                {
                    Ok(r) => reply(serde_json::to_value(r).map_err(|e| e.to_string()), 1),
                    Err(e) => reply(Err(e.to_string()), exit_code(&e)),
                }
            }
        }
    }
}
