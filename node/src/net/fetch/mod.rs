//! `fetch`: get one object from peers into the store, every byte verified.
//!
//! The order of checks is what makes this safe against lying peers: the manifest must hash to the
//! name the user typed and carry a valid signature from a trusted publisher; each chunk must hash
//! to its id in that manifest and decode to its declared length; the whole object must hash to the
//! manifest's object hash before the manifest is committed (the moment it becomes visible). A
//! peer that sends a chunk whose hash does not match is banned — node-wide, so no later transfer
//! (the base, the delta, each soup component, another fetch) asks it again — and its chunks come
//! from elsewhere. Chunks are stored as they arrive (logged writes), so a killed fetch
//! resumes where it stopped and never downloads a verified chunk again.

mod announcement;
pub(crate) mod chunks;
pub(crate) mod manifest;
pub(crate) mod once;
pub(crate) mod peers;
pub(crate) mod redial;
mod transfer;
mod window;

use libp2p::Multiaddr;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use zdn_protocol::manifest::Kind;
use zdn_protocol::sync::{SchedulerConfig, SyncWindows};
use zdn_protocol::Hash;

use crate::net::error::FetchError;
use crate::net::handle::NodeHandle;
use crate::net::paced::session::PacedReport;

use manifest::obtain_manifest;
use peers::Sources;
use transfer::transfer;
pub(crate) use window::{second_of_day, wait_for_window};

/// What to fetch from and how.
#[derive(Clone, Debug)]
pub struct FetchOptions {
    /// Peers to dial and ask, besides those already connected.
    pub peers: Vec<Multiaddr>,
    /// Fetch a missing base of a delta first (else fail with [`FetchError::MissingBase`]).
    pub fetch_base: bool,
    pub scheduler: SchedulerConfig,
    /// When the link may be used (UTC); empty = always. Outside them nothing new is requested.
    pub sync_windows: SyncWindows,
}

impl Default for FetchOptions {
    fn default() -> Self {
        FetchOptions {
            peers: Vec::new(),
            fetch_base: true,
            scheduler: SchedulerConfig::default(),
            sync_windows: SyncWindows::default(),
        }
    }
}

/// Where a transfer stands, for progress bars.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct FetchProgress {
    pub name: String,
    pub done_bytes: u64,
    pub total_bytes: u64,
    pub received_bytes: u64,
    pub peers: usize,
    /// Seconds until the next sync window opens; 0 while transferring.
    #[serde(default)]
    pub waiting_for_window_s: u32,
    /// Seconds until the given peers, none of which could be dialed, are dialed again (the field
    /// profile's link may be down when a fetch starts); 0 otherwise.
    #[serde(default)]
    pub waiting_for_peers_s: u32,
    /// Why the last dial failed, while `waiting_for_peers_s` is not 0.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub dial_problem: String,
}

/// One peer's part in a transfer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PeerReport {
    pub peer: String,
    pub chunks: u64,
    pub bytes: u64,
    /// Sent data that failed verification: dropped, and banned node-wide.
    pub banned: bool,
    /// Answered below the floor rate: dropped from the transfer, and counted against it.
    #[serde(default)]
    pub trickled: bool,
    /// Found through the DHT (a provider record), not given or connected.
    #[serde(default)]
    pub from_dht: bool,
    /// Times its connection was lost during the transfer and re-dialed successfully.
    #[serde(default)]
    pub reconnects: u32,
}

/// What a fetch did.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FetchReport {
    pub hash: Hash,
    pub name: String,
    pub kind: Kind,
    pub object_len: u64,
    /// The object was already in the store: nothing was transferred.
    pub already_present: bool,
    /// Distinct chunks in the object.
    pub chunks: usize,
    /// Chunks that were already in the store (resume, or shared with another object).
    pub chunks_resumed: usize,
    /// Stored (compressed) chunk bytes received from peers, duplicates and rejects included.
    pub bytes_received: u64,
    pub seconds: f64,
    pub peers: Vec<PeerReport>,
    /// The base fetched first, for a delta whose base was missing.
    pub base: Option<Box<FetchReport>>,
    /// A soup's component deltas, fetched after the recipe (those already present included).
    #[serde(default)]
    pub components: Vec<FetchReport>,
    /// The manifest's signed notes (e.g. `quality`: the delta's measured quality report, JSON).
    #[serde(default)]
    pub notes: Vec<(String, String)>,
    /// What the paced lane brought, when the node knows its link's rate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paced: Option<PacedReport>,
}

/// Fetches `hash` into the node's store: for a delta or a soup its base first when missing, for a
/// soup then its component deltas. A soup already present still gets its missing components, so a
/// fetch interrupted between the recipe and a component completes when run again.
pub async fn fetch(
    node: &NodeHandle,
    hash: Hash,
    opts: &FetchOptions,
    progress: &mut (dyn FnMut(&FetchProgress) + Send),
) -> Result<FetchReport, FetchError> {
    let t0 = Instant::now();
    let mut report = fetch_object(node, hash, opts, progress).await?;
    if report.kind == Kind::Soup {
        let m = node.store.call(move |s| s.require_manifest(&hash)).await?;
        let base = m.manifest.base;
        let deps = node.store.call(move |s| s.dependencies(&m)).await?;
        for d in deps.into_iter().filter(|d| Some(*d) != base) {
            let r = Box::pin(fetch(node, d, opts, progress)).await?;
            report.components.push(r);
        }
        if !report.already_present || report.components.iter().any(|c| !c.already_present) {
            report.seconds = t0.elapsed().as_secs_f64();
        }
    }
    Ok(report)
}

/// Fetches the object itself (after its base, for a delta or a soup).
async fn fetch_object(
    node: &NodeHandle,
    hash: Hash,
    opts: &FetchOptions,
    progress: &mut (dyn FnMut(&FetchProgress) + Send),
) -> Result<FetchReport, FetchError> {
    let t0 = Instant::now();
    let _only = node.fetching.enter(hash).await;
    if let Some(m) = node.store.call(move |s| s.manifest(&hash)).await? {
        return Ok(FetchReport {
            hash,
            name: m.manifest.name.clone(),
            kind: m.manifest.kind,
            object_len: m.manifest.object_len,
            already_present: true,
            chunks: m.manifest.chunks.len(),
            chunks_resumed: m.manifest.chunks.len(),
            bytes_received: 0,
            seconds: 0.0,
            peers: Vec::new(),
            base: None,
            components: Vec::new(),
            notes: m.manifest.extra.clone(),
            paced: None,
        });
    }
    wait_for_window(&opts.sync_windows, &mut |w| {
        progress(&FetchProgress {
            waiting_for_window_s: w,
            ..Default::default()
        })
    })
    .await;
    let mut src = Sources::connect(node, &opts.peers, progress).await?;
    let m = match obtain_manifest(node, hash, &src.peers).await {
        // Nobody here has it (or nobody is here): ask the DHT who does.
        Err(FetchError::NotFound { .. }) => {
            src.ask_dht(node, hash).await?;
            if src.peers.is_empty() {
                return Err(src.no_peers());
            }
            obtain_manifest(node, hash, &src.peers).await?
        }
        r => r?,
    };
    if src.peers.is_empty() {
        // A download in progress gave the manifest; the chunks need someone.
        src.ask_dht(node, hash).await?;
        if src.peers.is_empty() {
            return Err(src.no_peers());
        }
    }

    let mut base_report = None;
    if let (Kind::Delta | Kind::Soup, Some(base)) = (m.manifest.kind, m.manifest.base) {
        let have_base = node.store.call(move |s| s.manifest(&base)).await?.is_some();
        if !have_base {
            if !opts.fetch_base {
                return Err(FetchError::MissingBase { delta: hash, base });
            }
            let r = Box::pin(fetch(node, base, opts, progress)).await?;
            base_report = Some(Box::new(r));
        }
    }

    let mut report = transfer(node, &m, src, opts, progress).await?;
    report.seconds = t0.elapsed().as_secs_f64();
    report.base = base_report;
    Ok(report)
}
