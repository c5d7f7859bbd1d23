//! The scenario file (TOML) and its checked form. A scenario is a star: one `datacenter` node,
//! `station` nodes each behind its own satellite link (`[link]`), and `lan` devices each joined to
//! their station by a site-network link (`[lan]`). Objects are published at the datacenter;
//! fetches run in order (or `concurrent` with the one before). See simulations/scenarios/*.toml.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use zdn_linkem::shaper::{validate_rate_changes, LinkSpec, RateChange};
use zdn_linkem::units::{
    parse_bits_per_sec, parse_duration, parse_outage, parse_rate_change, parse_size,
};

use super::error::ScenarioError;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScenarioFile {
    name: Option<String>,
    #[serde(default)]
    description: String,
    #[serde(default = "one")]
    seed: u64,
    #[serde(default)]
    transport: Transport,
    link: LinkFile,
    lan: Option<LinkFile>,
    #[serde(rename = "node")]
    nodes: Vec<NodeFile>,
    #[serde(rename = "object", default)]
    objects: Vec<ObjectFile>,
    #[serde(rename = "fetch", default)]
    fetches: Vec<FetchFile>,
    #[serde(default)]
    run: RunFile,
    #[serde(default)]
    reference: ReferenceFile,
}

fn one() -> u64 {
    1
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LinkFile {
    rate: String,
    #[serde(default)]
    delay: Option<String>,
    #[serde(default)]
    jitter: Option<String>,
    #[serde(default)]
    loss: f64,
    /// Drop-tail queue size (default: one second of traffic).
    #[serde(default)]
    queue: Option<String>,
    #[serde(default)]
    outages: Vec<String>,
    /// `["60s:500kbit", "120s:1mbit"]`: the rate from then on (satellite links only).
    #[serde(default)]
    rate_changes: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeFile {
    name: String,
    place: Place,
    /// For a `lan` device: its station (default: the only one).
    station: Option<String>,
    /// zdn's network profile (default: datacenter, field, edge by place).
    profile: Option<String>,
    /// More `zdn node run` flags.
    #[serde(default)]
    args: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ObjectFile {
    name: String,
    file: Option<String>,
    generated: Option<String>,
    delta: Option<DeltaFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeltaFile {
    base: String,
    finetuned: Option<String>,
    file: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FetchFile {
    node: String,
    object: String,
    #[serde(default)]
    from: Vec<String>,
    #[serde(default)]
    concurrent: bool,
    #[serde(default)]
    retries: u32,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RunFile {
    warmup: Option<String>,
    cooldown: Option<String>,
    duration: Option<String>,
    timeout: Option<String>,
    sample_every: Option<String>,
    idle_from: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReferenceFile {
    #[serde(default = "yes")]
    tcp: bool,
}

impl Default for ReferenceFile {
    fn default() -> Self {
        ReferenceFile { tcp: true }
    }
}

/// Where a node sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Place {
    /// The far end of every satellite link (one node).
    Datacenter,
    /// Behind its own satellite link.
    Station,
    /// On a station's site network.
    Lan,
}

/// The transport the nodes listen and dial on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    #[default]
    Tcp,
    Quic,
}

#[derive(Debug, Clone)]
pub struct NodeSpec {
    pub name: String,
    pub place: Place,
    /// A `lan` device's station (index into the nodes).
    pub station: Option<usize>,
    pub profile: String,
    pub args: Vec<String>,
}

#[derive(Debug, Clone)]
pub enum DeltaSource {
    /// Encoded by `zdn delta encode` from the base and this fine-tune.
    Finetuned(PathBuf),
    /// A ready .bitdelta file.
    File(PathBuf),
}

#[derive(Debug, Clone)]
pub enum ObjectSource {
    File(PathBuf),
    /// This many pseudo-random bytes (incompressible, reproducible from the scenario's seed).
    Generated(u64),
    /// A delta; its base reaches every other node beforehand as a bundle (a disk).
    Delta {
        base: PathBuf,
        delta: DeltaSource,
    },
}

#[derive(Debug, Clone)]
pub struct ObjectSpec {
    pub name: String,
    pub source: ObjectSource,
}

#[derive(Debug, Clone)]
pub struct FetchSpec {
    pub node: usize,
    pub object: usize,
    /// The peers to fetch from (neighbours of `node`).
    pub from: Vec<usize>,
    /// Starts together with the fetch before it instead of after it.
    pub concurrent: bool,
    /// Run `zdn fetch` again this many times when it stops incomplete (exit status 4), resuming.
    pub retries: u32,
}

#[derive(Debug, Clone)]
pub struct RunSpec {
    /// After the nodes are up, before the first fetch.
    pub warmup: Duration,
    /// After the last fetch, before stopping.
    pub cooldown: Duration,
    /// Run at least this long from the link's start (an idle scenario has no fetches).
    pub min_duration: Duration,
    /// Give up after this long from the link's start.
    pub timeout: Duration,
    pub sample_every: Duration,
    /// Report each node's bytes per day from this time to the end (idle traffic).
    pub idle_from: Option<Duration>,
}

/// A checked scenario.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: String,
    pub description: String,
    pub seed: u64,
    pub transport: Transport,
    /// Each satellite link, each direction.
    pub link: LinkSpec,
    /// The satellite links' rate over time (empty: `link.rate_bps` throughout).
    pub rate_changes: Vec<RateChange>,
    /// Each site-network link, each direction.
    pub lan: LinkSpec,
    pub nodes: Vec<NodeSpec>,
    pub objects: Vec<ObjectSpec>,
    pub fetches: Vec<FetchSpec>,
    pub run: RunSpec,
    pub reference_tcp: bool,
}

impl Scenario {
    /// The datacenter node's index.
    pub fn datacenter(&self) -> usize {
        self.nodes
            .iter()
            .position(|n| n.place == Place::Datacenter)
            .unwrap_or(0)
    }

    /// The node at the other end of `node`'s uplink (none for the datacenter).
    pub fn uplink_peer(&self, node: usize) -> Option<usize> {
        match self.nodes[node].place {
            Place::Datacenter => None,
            Place::Station => Some(self.datacenter()),
            Place::Lan => self.nodes[node].station,
        }
    }

    /// Whether `a` and `b` share a link.
    pub fn adjacent(&self, a: usize, b: usize) -> bool {
        self.uplink_peer(a) == Some(b) || self.uplink_peer(b) == Some(a)
    }

    /// Parses and checks a scenario file's text. `file` names it in error messages; `${VAR}` and
    /// `${VAR:-default}` in paths are taken from the environment.
    pub fn parse(file: &str, text: &str) -> Result<Scenario, ScenarioError> {
        let bad = |message: String| ScenarioError::Invalid {
            file: file.to_owned(),
            message,
        };
        let f: ScenarioFile = toml::from_str(text).map_err(|e| bad(e.to_string()))?;
        let name = match f.name {
            Some(n) => n,
            None => std::path::Path::new(file)
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "scenario".into()),
        };
        check_name("scenario name", &name).map_err(bad)?;
        let link = link_spec(&f.link).map_err(|e| bad(format!("[link]: {e}")))?;
        let rate_changes =
            rate_changes(&f.link.rate_changes).map_err(|e| bad(format!("[link]: {e}")))?;
        let lan = match &f.lan {
            Some(l) if !l.rate_changes.is_empty() => {
                return Err(bad(
                    "[lan]: rate_changes are for the satellite link ([link]) only".into(),
                ))
            }
            Some(l) => link_spec(l).map_err(|e| bad(format!("[lan]: {e}")))?,
            None => LinkSpec {
                rate_bps: 100_000_000,
                delay: Duration::from_millis(1),
                jitter: Duration::ZERO,
                loss: 0.0,
                queue_bytes: 12_500_000,
                outages: Vec::new(),
            },
        };
        let nodes = nodes(&f.nodes).map_err(bad)?;
        let mut objects = Vec::new();
        for o in &f.objects {
            check_name("object name", &o.name).map_err(bad)?;
            if objects.iter().any(|x: &ObjectSpec| x.name == o.name) {
                return Err(bad(format!("two objects named {:?}", o.name)));
            }
            let source = object_source(o).map_err(|e| bad(format!("object {:?}: {e}", o.name)))?;
            objects.push(ObjectSpec {
                name: o.name.clone(),
                source,
            });
        }
        let mut scenario = Scenario {
            name,
            description: f.description,
            seed: f.seed,
            transport: f.transport,
            link,
            rate_changes,
            lan,
            nodes,
            objects,
            fetches: Vec::new(),
            run: run_spec(&f.run).map_err(|e| bad(format!("[run]: {e}")))?,
            reference_tcp: f.reference.tcp,
        };
        scenario.fetches = f
            .fetches
            .iter()
            .enumerate()
            .map(|(i, x)| {
                fetch_spec(&scenario, x, i > 0).map_err(|e| bad(format!("fetch {}: {e}", i + 1)))
            })
            .collect::<Result<_, _>>()?;
        Ok(scenario)
    }
}

/// A fetch, its names resolved; `from` defaults to the node's uplink peer.
fn fetch_spec(s: &Scenario, x: &FetchFile, has_previous: bool) -> Result<FetchSpec, String> {
    let node_index = |n: &str| {
        s.nodes
            .iter()
            .position(|x| x.name == n)
            .ok_or_else(|| format!("no node named {n:?}"))
    };
    let node = node_index(&x.node)?;
    let object = s
        .objects
        .iter()
        .position(|o| o.name == x.object)
        .ok_or_else(|| format!("no object named {:?}", x.object))?;
    let from = if x.from.is_empty() {
        vec![s
            .uplink_peer(node)
            .ok_or("the datacenter has no uplink: say `from`")?]
    } else {
        x.from
            .iter()
            .map(|n| node_index(n))
            .collect::<Result<Vec<_>, _>>()?
    };
    if let Some(&far) = from.iter().find(|&&p| !s.adjacent(node, p)) {
        return Err(format!(
            "{} and {} share no link (a station reaches the datacenter and its devices; a device its station)",
            x.node, s.nodes[far].name
        ));
    }
    Ok(FetchSpec {
        node,
        object,
        from,
        concurrent: x.concurrent && has_previous,
        retries: x.retries,
    })
}

/// Names become paths, zdn object names and plot labels: keep them plain.
fn check_name(what: &str, n: &str) -> Result<(), String> {
    let ok = !n.is_empty()
        && n.len() <= 40
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && !n.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(format!("{what} {n:?}: 1..40 of [A-Za-z0-9._-]"))
    }
}

fn link_spec(l: &LinkFile) -> Result<LinkSpec, String> {
    let rate_bps = parse_bits_per_sec(&l.rate)?;
    let opt = |s: &Option<String>| s.as_deref().map(parse_duration).transpose();
    let spec = LinkSpec {
        rate_bps,
        delay: opt(&l.delay)?.unwrap_or_default(),
        jitter: opt(&l.jitter)?.unwrap_or_default(),
        loss: l.loss,
        // One second of traffic, as zdn-linkem's default.
        queue_bytes: match &l.queue {
            Some(q) => parse_size(q)?,
            None => (rate_bps / 8).max(1500),
        },
        outages: l
            .outages
            .iter()
            .map(|o| parse_outage(o))
            .collect::<Result<_, _>>()?,
    };
    spec.validate()?;
    Ok(spec)
}

fn rate_changes(texts: &[String]) -> Result<Vec<RateChange>, String> {
    let changes = texts
        .iter()
        .map(|t| parse_rate_change(t))
        .collect::<Result<Vec<_>, _>>()?;
    validate_rate_changes(&changes).map_err(|e| format!("rate_changes: {e}"))?;
    Ok(changes)
}

fn nodes(files: &[NodeFile]) -> Result<Vec<NodeSpec>, String> {
    let mut nodes: Vec<NodeSpec> = Vec::new();
    for n in files {
        check_name("node name", &n.name)?;
        if nodes.iter().any(|x| x.name == n.name) {
            return Err(format!("two nodes named {:?}", n.name));
        }
        let profile = n.profile.clone().unwrap_or_else(|| {
            match n.place {
                Place::Datacenter => "datacenter",
                Place::Station => "field",
                Place::Lan => "edge",
            }
            .to_owned()
        });
        if !["datacenter", "field", "edge"].contains(&profile.as_str()) {
            return Err(format!(
                "node {:?}: profile {profile:?} is not datacenter, field or edge",
                n.name
            ));
        }
        nodes.push(NodeSpec {
            name: n.name.clone(),
            place: n.place,
            station: None,
            profile,
            args: n.args.clone(),
        });
    }
    let count = |p: Place| nodes.iter().filter(|n| n.place == p).count();
    if count(Place::Datacenter) != 1 {
        return Err("exactly one node has place = \"datacenter\"".into());
    }
    if count(Place::Station) == 0 {
        return Err("no node has place = \"station\" (behind the satellite link)".into());
    }
    let stations: Vec<usize> = (0..nodes.len())
        .filter(|&i| nodes[i].place == Place::Station)
        .collect();
    for (n, f) in nodes.iter_mut().zip(files) {
        match (n.place, &f.station) {
            (Place::Lan, Some(s)) => {
                let i = stations
                    .iter()
                    .copied()
                    .find(|&i| files[i].name == *s)
                    .ok_or_else(|| format!("node {:?}: no station named {s:?}", n.name))?;
                n.station = Some(i);
            }
            (Place::Lan, None) if stations.len() == 1 => n.station = Some(stations[0]),
            (Place::Lan, None) => {
                return Err(format!("node {:?}: say which `station` it is at", n.name))
            }
            (_, Some(_)) => {
                return Err(format!(
                    "node {:?}: only lan devices have a `station`",
                    n.name
                ))
            }
            (_, None) => {}
        }
    }
    Ok(nodes)
}

fn object_source(o: &ObjectFile) -> Result<ObjectSource, String> {
    match (&o.file, &o.generated, &o.delta) {
        (Some(f), None, None) => Ok(ObjectSource::File(expand_path(f)?)),
        (None, Some(g), None) => Ok(ObjectSource::Generated(parse_size(g)?)),
        (None, None, Some(d)) => {
            let delta = match (&d.finetuned, &d.file) {
                (Some(f), None) => DeltaSource::Finetuned(expand_path(f)?),
                (None, Some(f)) => DeltaSource::File(expand_path(f)?),
                _ => return Err("a delta has either `finetuned` or `file`".into()),
            };
            Ok(ObjectSource::Delta {
                base: expand_path(&d.base)?,
                delta,
            })
        }
        _ => Err("say exactly one of `file`, `generated` or `delta`".into()),
    }
}

fn run_spec(r: &RunFile) -> Result<RunSpec, String> {
    let d = |s: &Option<String>, default: Duration| {
        s.as_deref()
            .map(parse_duration)
            .transpose()
            .map(|v| v.unwrap_or(default))
    };
    let spec = RunSpec {
        warmup: d(&r.warmup, Duration::from_secs(3))?,
        cooldown: d(&r.cooldown, Duration::from_secs(3))?,
        min_duration: d(&r.duration, Duration::ZERO)?,
        timeout: d(&r.timeout, Duration::from_secs(3600))?,
        sample_every: d(&r.sample_every, Duration::from_millis(250))?,
        idle_from: r.idle_from.as_deref().map(parse_duration).transpose()?,
    };
    if spec.sample_every < Duration::from_millis(10) {
        return Err("sample_every below 10ms".into());
    }
    if spec.timeout <= spec.min_duration {
        return Err("timeout must be longer than duration".into());
    }
    Ok(spec)
}

/// Expands `${VAR}` and `${VAR:-default}` from the environment.
pub fn expand_path(s: &str) -> Result<PathBuf, String> {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("{s:?}: unclosed ${{"))?;
        let (var, default) = match after[..end].split_once(":-") {
            Some((v, d)) => (v, Some(d)),
            None => (&after[..end], None),
        };
        match (std::env::var(var), default) {
            (Ok(v), _) if !v.is_empty() => out.push_str(&v),
            (_, Some(d)) => out.push_str(d),
            _ => return Err(format!("{s:?}: ${var} is not set")),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(PathBuf::from(out))
}
