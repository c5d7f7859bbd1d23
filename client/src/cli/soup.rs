//! `zdn soup mix` (a signed soup recipe in the store, optionally built into one `.bitdelta`),
//! `zdn soup aggregate` (robust aggregation of `.bitdelta` files) and `zdn delta apply` of a soup
//! recipe from the store. docs/soup.md describes both.

use std::path::PathBuf;

use crate::delta::apply::{apply, ApplyJob, ApplyReport};
use crate::delta::folder::apply::FolderApplyReport;
use crate::soup::build::{build, load_recipe, output_dir, BuildJob};
use crate::soup::combine::{combine, CombineInput, CombineJob, CombineReport};
use crate::soup::folder::build_folder_soup;
use crate::soup::method::Method;
use anyhow::Context;
use clap::{Args, Subcommand};
use zdn_node::store::{AddOptions, ObjectStore};
use zdn_protocol::bitdelta::{EncodeOptions, Granularity, QuantSpec, DEFAULT_ZSTD_LEVEL};
use zdn_protocol::folder::adapter::CONFIG_MEMBER;
use zdn_protocol::manifest::{Kind, TensorEntry};
use zdn_protocol::soup::{Component, Recipe};
use zdn_protocol::Hash;

use crate::cli::args::{parse_bits, Location};
use crate::cli::output::say;
use crate::cli::store::{load_or_create_key, now};

#[derive(Subcommand, Debug)]
pub enum SoupCommand {
    /// Mix deltas of one base with weights into a soup recipe in the store; prints its hash.
    ///
    /// The recipe is a signed `soup` object of a few hundred bytes. The components are objects in
    /// the store (hash, prefix or name), all deltas of the same base:
    ///  - single-file deltas of a single-file base: the soup is re-quantized (--bits, --scale);
    ///    -o builds it into one .bitdelta; `zdn delta apply --delta SOUP` applies it;
    ///  - folder deltas, or LoRA adapters, of a model folder: the soup is mixed exactly;
    ///    -o writes the mixed model folder; `zdn apply SOUP -o DIR` does the same later.
    ///
    /// A node that has the components builds the soup from the recipe alone. Examples:
    ///
    ///   zdn soup mix --delta ft-a:0.6 --delta ft-b:0.4 --name ab -o ab.bitdelta
    ///   zdn soup mix --delta chat:0.5 --delta code:0.5 --name chat-code -o chat-code/
    #[command(verbatim_doc_comment)]
    Mix(MixArgs),
    /// Aggregate contributed deltas (.bitdelta files of one base) into one, robustly.
    ///
    /// Tensor by tensor, each input's delta is reconstructed in f32, aggregated and re-encoded
    /// (1-bit row scales by default). Methods: mean, trimmed:BETA (drops ⌊BETA·n⌋ values at each end; tolerates a fraction ≤ BETA
    /// of attackers), median (< 50 %), krum:F and multikrum:F:M (F attackers, needs n > 2F + 2),
    /// signvote (majority sign × median scale). Example:
    ///
    ///   zdn soup aggregate --method trimmed:0.3 --base base.safetensors -o agg.bitdelta in/*.bitdelta
    #[command(verbatim_doc_comment)]
    Aggregate(AggregateArgs),
}

#[derive(Args, Debug)]
pub struct MixArgs {
    /// A component and its weight, OBJ:WEIGHT (OBJ: manifest hash, unique prefix or name);
    /// repeatable. Weights are any finite numbers (they need not sum to 1).
    #[arg(long = "delta", value_name = "OBJ:WEIGHT")]
    deltas: Vec<String>,
    /// Name to record the soup under (default: soup-<first hex digits of the recipe's hash>).
    #[arg(long)]
    name: Option<String>,
    /// Also build the soup: into this .bitdelta (single-file components), or as the mixed model
    /// folder at this new or empty directory (folder components); written beside and renamed.
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Bits per weight of the soup's re-quantized tensors: 1, 2 or 4 (recorded in the recipe;
    /// default 1). Single-file soups only: a folder soup is mixed exactly.
    #[arg(long, value_parser = parse_bits)]
    bits: Option<u32>,
    /// Scale granularity of the re-quantized tensors: tensor, row or group:N (recorded; default
    /// row). Single-file soups only.
    #[arg(long)]
    scale: Option<Granularity>,
    /// Do not pin the recipe (a later `gc` removes it).
    #[arg(long)]
    no_pin: bool,
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
pub struct AggregateArgs {
    /// mean | trimmed:BETA | median | krum:F | multikrum:F:M | signvote
    #[arg(long)]
    method: Method,
    /// The base model (safetensors) every input was made against.
    #[arg(long)]
    base: PathBuf,
    /// Output .bitdelta (written to a temporary file and renamed when complete).
    #[arg(short, long)]
    output: PathBuf,
    /// The input deltas (.bitdelta files of the same base, same tensors).
    #[arg(value_name = "IN.bitdelta")]
    inputs: Vec<PathBuf>,
    /// Bits per weight of the output's quantized tensors: 1, 2 or 4.
    #[arg(long, default_value_t = 1, value_parser = parse_bits)]
    bits: u32,
    /// Scale granularity of the output's quantized tensors: tensor, row or group:N.
    #[arg(long, default_value = "row")]
    scale: Granularity,
    /// Model name recorded in the output (default: aggregate).
    #[arg(long)]
    name: Option<String>,
    /// Aggregate even if the base's BLAKE3 is not the one the inputs record.
    #[arg(long)]
    force: bool,
    #[arg(long)]
    json: bool,
}

#[derive(Debug, serde::Serialize)]
struct MixComponent {
    delta: Hash,
    name: String,
    weight: f32,
}

#[derive(Debug, serde::Serialize)]
struct MixReport {
    /// Manifest hash of the soup object.
    hash: Hash,
    name: String,
    base: Hash,
    bits: u32,
    scale: String,
    components: Vec<MixComponent>,
    recipe_bytes: usize,
    manifest_bytes: usize,
    already_present: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    output: Option<CombineReport>,
    /// The mixed model folder written by -o (a folder soup).
    #[serde(skip_serializing_if = "Option::is_none")]
    folder: Option<FolderApplyReport>,
}

#[derive(Debug, serde::Serialize)]
struct RecipeApplyReport {
    soup: Hash,
    components: usize,
    build: CombineReport,
    apply: ApplyReport,
}

/// Runs one soup command. Returns the process exit code.
pub fn run(loc: &Location, cmd: SoupCommand) -> anyhow::Result<u8> {
    match cmd {
        SoupCommand::Mix(a) => mix(loc, a)?,
        SoupCommand::Aggregate(a) => aggregate(a)?,
    }
    Ok(0)
}

/// `OBJ:WEIGHT` → (OBJ, weight). The last colon separates them, so names may contain colons.
fn parse_component(s: &str) -> anyhow::Result<(&str, f32)> {
    let (obj, w) = s
        .rsplit_once(':')
        .with_context(|| format!("--delta {s:?}: expected OBJ:WEIGHT, e.g. ft-a:0.6"))?;
    let weight: f32 = w
        .trim()
        .parse()
        .with_context(|| format!("--delta {s:?}: weight {w:?} is not a number"))?;
    anyhow::ensure!(
        weight.is_finite(),
        "--delta {s:?}: weight {w:?} is not finite"
    );
    anyhow::ensure!(!obj.is_empty(), "--delta {s:?}: no object before the colon");
    Ok((obj, weight))
}

fn same_tensors(a: &[TensorEntry], b: &[TensorEntry]) -> Result<(), String> {
    if a.len() != b.len() {
        return Err(format!("{} tensors against {}", b.len(), a.len()));
    }
    for (x, y) in a.iter().zip(b) {
        if (&x.name, x.dtype, &x.shape) != (&y.name, y.dtype, &y.shape) {
            return Err(format!(
                "tensor {:?} {:?} where {:?} {:?} was expected",
                y.name, y.shape, x.name, x.shape
            ));
        }
    }
    Ok(())
}

fn mix(loc: &Location, a: MixArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        !a.deltas.is_empty(),
        "soup mix needs at least one component: --delta OBJ:WEIGHT (repeatable)"
    );
    let config = loc.config()?;
    let store = loc.open(&config)?;
    let MixComponents {
        base,
        components,
        mut report_components,
        folder,
    } = resolve_components(&store, &a.deltas)?;
    anyhow::ensure!(
        !folder || (a.bits.is_none() && a.scale.is_none()),
        "--bits and --scale re-quantize a soup of single-file deltas; a soup of a model folder is mixed exactly"
    );
    let (bits, scale) = (a.bits.unwrap_or(1), a.scale.unwrap_or(Granularity::Row));
    let recipe = Recipe::new(base, bits, scale, components).context("invalid soup")?;
    let bytes = recipe.encode();
    let name = a
        .name
        .unwrap_or_else(|| format!("soup-{}", &Hash::of(&bytes).to_hex()[..12]));

    // Build the soup first: a recipe whose components cannot be combined is never stored.
    let folder_output = match &a.output {
        Some(path) if folder => Some(
            build_folder_soup(&store, &recipe, path, !a.json)
                .context("building the soup failed (nothing was stored)")?,
        ),
        _ => None,
    };
    let output = match &a.output {
        Some(path) if !folder => Some(
            build(
                &store,
                &recipe,
                &BuildJob {
                    base_file: None,
                    output: path.clone(),
                    model_name: name.clone(),
                    verify_base: true,
                    progress: !a.json,
                },
            )
            .context("building the soup failed (nothing was stored)")?,
        ),
        _ => None,
    };

    let key = load_or_create_key(loc)?;
    let opts = AddOptions {
        kind: Kind::Soup,
        name: name.clone(),
        version: String::new(),
        base: Some(base),
        chunk_size: config.chunk_size,
        zstd_level: config.zstd_level,
        created_at: now(),
        extra: Vec::new(),
        pin: !a.no_pin,
    };
    let (signed, r) = store
        .add(&bytes, &opts, &key)
        .context("storing the soup recipe (the store is unchanged)")?;
    report_components.sort_by_key(|c| c.delta);
    let report = MixReport {
        hash: r.hash,
        name,
        base,
        bits: recipe.bits(),
        scale: recipe.granularity().to_string(),
        components: report_components,
        recipe_bytes: bytes.len(),
        manifest_bytes: signed.as_bytes().len(),
        already_present: r.already_present,
        output,
        folder: folder_output,
    };
    print_mix(a.json, &report)
}

/// A soup's components, checked to be deltas of one base with the same tensors.
struct MixComponents {
    /// The base they share.
    base: Hash,
    /// For the recipe, in the order given.
    components: Vec<Component>,
    /// For the report, in the order given.
    report_components: Vec<MixComponent>,
    /// Whether they are folder deltas or adapters (of a model folder).
    folder: bool,
}

/// Resolves every `OBJ:WEIGHT` in the store and checks the objects can be mixed: deltas, of one
/// base, with the same tensors.
fn resolve_components(store: &ObjectStore, specs: &[String]) -> anyhow::Result<MixComponents> {
    let mut components = Vec::with_capacity(specs.len());
    let mut report_components = Vec::with_capacity(specs.len());
    let mut first: Option<(Hash, Hash, Vec<TensorEntry>)> = None;
    let mut kinds = Vec::with_capacity(specs.len());
    for spec in specs {
        let (obj, weight) = parse_component(spec)?;
        let hash = store.resolve(obj)?;
        let m = store.require_manifest(&hash)?.manifest;
        anyhow::ensure!(
            m.kind == Kind::Delta,
            "{obj} ({hash}) is a {} object; soup components must be deltas",
            m.kind.as_str()
        );
        let base = m
            .base
            .with_context(|| format!("delta {hash} names no base"))?;
        // (folder, adapter): a soup mixes one kind.
        let kind = (m.is_folder(), m.file(CONFIG_MEMBER).is_some());
        if let Some(&(h0, k0)) = kinds.first() {
            anyhow::ensure!(
                kind == k0,
                "component {hash} is {} and component {h0} {}: a soup mixes one kind",
                kind_name(kind),
                kind_name(k0)
            );
        }
        kinds.push((hash, kind));
        match &first {
            None => first = Some((hash, base, m.tensors.clone())),
            Some((h0, b0, t0)) => {
                anyhow::ensure!(
                    base == *b0,
                    "the components are deltas of different bases: {hash} applies to {base}, {h0} to {b0}"
                );
                // Folder components are compared when the soup is built (their layouts).
                if !kind.0 {
                    same_tensors(t0, &m.tensors).map_err(|p| {
                        anyhow::anyhow!("component {hash} does not match component {h0}: {p}")
                    })?;
                }
            }
        }
        components.push(Component {
            delta: hash,
            weight,
        });
        report_components.push(MixComponent {
            delta: hash,
            name: m.name,
            weight,
        });
    }
    Ok(MixComponents {
        base: first.map(|f| f.1).unwrap_or(Hash::ZERO),
        components,
        report_components,
        folder: kinds.first().is_some_and(|k| k.1 .0),
    })
}

fn kind_name((folder, adapter): (bool, bool)) -> &'static str {
    match (folder, adapter) {
        (_, true) => "a LoRA adapter",
        (true, false) => "a folder delta",
        (false, false) => "a single-file delta",
    }
}

fn print_mix(json: bool, report: &MixReport) -> anyhow::Result<()> {
    if json {
        say!("{}", serde_json::to_string_pretty(report)?);
    } else {
        say!("{}", report.hash);
        eprintln!(
            "soup {:?}: {} components of base {}, recipe {} bytes, manifest {} bytes{}",
            report.name,
            report.components.len(),
            &report.base.to_hex()[..16],
            report.recipe_bytes,
            report.manifest_bytes,
            if report.already_present {
                " (already in the store)"
            } else {
                ""
            }
        );
        if let Some(o) = &report.output {
            eprintln!("{}", summary(o));
        }
        if let Some(f) = &report.folder {
            eprintln!(
                "wrote {} ({} files, {} bytes; {} tensors mixed)",
                f.output.display(),
                f.files,
                f.bytes_written,
                f.tensors
            );
        }
    }
    Ok(())
}

fn summary(r: &CombineReport) -> String {
    let mut s = format!(
        "wrote {} ({} bytes, {:.3} bits/param): {} over {} inputs; {} tensors: {} quantized, {} lossless, {} unchanged",
        r.output.display(),
        r.file_bytes,
        r.bits_per_param,
        r.method,
        r.inputs,
        r.tensors,
        r.quantized,
        r.lossless,
        r.unchanged
    );
    if let Some(sel) = &r.selected {
        s.push_str(&format!("; selected inputs {sel:?}"));
    }
    s
}

fn aggregate(a: AggregateArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        !a.inputs.is_empty(),
        "no input deltas: soup aggregate needs at least one IN.bitdelta"
    );
    let inputs = a
        .inputs
        .iter()
        .map(|p| CombineInput {
            path: p.clone(),
            label: p.display().to_string(),
        })
        .collect();
    let report = combine(&CombineJob {
        base: a.base,
        inputs,
        method: a.method,
        options: EncodeOptions {
            spec: QuantSpec {
                bits: a.bits,
                granularity: a.scale,
                clip_sigma: None,
            },
            zstd_level: DEFAULT_ZSTD_LEVEL,
        },
        model_name: a.name.unwrap_or_else(|| "aggregate".into()),
        output: a.output,
        verify_base: !a.force,
        progress: !a.json,
    })
    .context("soup aggregate failed (no output written)")?;
    if a.json {
        say!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        say!("{}", summary(&report));
    }
    Ok(())
}

/// `zdn delta apply --delta OBJ` where OBJ is not a file: a soup recipe in the store, built from its
/// components (the same bytes `zdn soup mix -o` writes) and applied to `base`.
pub fn apply_recipe(
    loc: &Location,
    object: &str,
    base: PathBuf,
    output: PathBuf,
    force: bool,
    json: bool,
) -> anyhow::Result<u8> {
    let config = loc.config()?;
    anyhow::ensure!(
        loc.store_dir(&config).exists(),
        "--delta {object}: no such file (and there is no store to look it up in)"
    );
    let store = loc.open(&config)?;
    let hash = store
        .resolve(object)
        .with_context(|| format!("--delta {object}: no such file, nor an object in the store"))?;
    let m = store.require_manifest(&hash)?.manifest;
    anyhow::ensure!(
        m.kind == Kind::Soup,
        "--delta {object}: {hash} is a {} object in the store; `zdn get` it to a file first",
        m.kind.as_str()
    );
    let recipe = load_recipe(&store, &hash)?;
    anyhow::ensure!(
        !store.require_manifest(&recipe.base())?.manifest.is_folder(),
        "--delta {object}: soup {hash} mixes deltas of a model folder; `zdn apply {object} -o DIR` writes it"
    );
    let dir = output_dir(&output);
    let tmp = tempfile::Builder::new()
        .prefix(".zdn-soup-apply.")
        .tempdir_in(&dir)
        .with_context(|| format!("creating a temporary directory in {}", dir.display()))?;
    let soup_file = tmp.path().join("soup.bitdelta");
    let built = build(
        &store,
        &recipe,
        &BuildJob {
            base_file: Some(base.clone()),
            output: soup_file.clone(),
            model_name: m.name.clone(),
            verify_base: !force,
            progress: !json,
        },
    )
    .with_context(|| format!("building soup {hash}"))?;
    let applied = apply(&ApplyJob {
        base,
        delta: soup_file,
        output,
        force,
        progress: !json,
    })
    .context("delta apply failed")?;
    if json {
        let r = RecipeApplyReport {
            soup: hash,
            components: recipe.components().len(),
            build: built,
            apply: applied,
        };
        say!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        if !applied.base_verified {
            eprintln!("warning: the base was not verified against the components' record");
        }
        say!(
            "wrote {} ({} tensors, {} bytes) from soup {} ({} components)",
            applied.output.display(),
            applied.tensors,
            applied.bytes_written,
            &hash.to_hex()[..16],
            recipe.components().len()
        );
    }
    Ok(0)
}

#[derive(Debug, serde::Serialize)]
struct RecipeComponent {
    delta: Hash,
    weight: f32,
    /// The component's name, when it is in the local store.
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    present: bool,
}

#[derive(Debug, serde::Serialize)]
struct RecipeReport {
    kind: &'static str,
    /// Manifest hash of the soup object (when inspected from the store).
    #[serde(skip_serializing_if = "Option::is_none")]
    hash: Option<Hash>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    base: Hash,
    base_present: bool,
    bits: u32,
    scale: String,
    recipe_bytes: usize,
    components: Vec<RecipeComponent>,
}

/// `zdn delta inspect` of a soup recipe (a store object, or a recipe file): what it mixes and
/// whether this store has it all. `manifest` is the soup's manifest when it came from the store.
pub fn inspect_recipe(
    loc: &Location,
    bytes: &[u8],
    manifest: Option<&zdn_protocol::manifest::SignedManifest>,
    json: bool,
) -> anyhow::Result<()> {
    let recipe = Recipe::decode(bytes).context("not a valid soup recipe")?;
    let config = loc.config()?;
    // Names come from the local store when there is one; a recipe file needs none.
    let store = if loc.store_dir(&config).exists() {
        Some(loc.open(&config)?)
    } else {
        None
    };
    let lookup = |h: &Hash| -> anyhow::Result<Option<String>> {
        Ok(match &store {
            Some(s) => s.manifest(h)?.map(|m| m.manifest.name),
            None => None,
        })
    };
    let mut components = Vec::with_capacity(recipe.components().len());
    for c in recipe.components() {
        let name = lookup(&c.delta)?;
        components.push(RecipeComponent {
            delta: c.delta,
            weight: c.weight,
            present: name.is_some(),
            name,
        });
    }
    let report = RecipeReport {
        kind: "soup",
        hash: manifest.map(|m| m.hash()),
        name: manifest.map(|m| m.manifest.name.clone()),
        base: recipe.base(),
        base_present: lookup(&recipe.base())?.is_some(),
        bits: recipe.bits(),
        scale: recipe.granularity().to_string(),
        recipe_bytes: bytes.len(),
        components,
    };
    if json {
        say!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    say!(
        "soup recipe{}: {} bytes, {} components of base {}{}; re-quantized to {} bit(s), {} scales",
        report
            .name
            .as_ref()
            .map_or_else(String::new, |n| format!(" {n:?}")),
        report.recipe_bytes,
        report.components.len(),
        report.base,
        if report.base_present {
            ""
        } else {
            " (not in this store)"
        },
        report.bits,
        report.scale
    );
    for c in &report.components {
        say!(
            "  {:>9.4} × {} {}",
            c.weight,
            c.delta,
            c.name
                .as_ref()
                .map_or_else(|| "(not in this store)".to_string(), |n| format!("{n:?}"))
        );
    }
    Ok(())
}
