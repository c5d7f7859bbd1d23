//! `zdn soup mix`: components resolved and checked, the recipe signed and stored, optionally
//! built first.

use std::path::PathBuf;

use crate::delta::folder::apply::FolderApplyReport;
use crate::soup::build::{build, BuildJob};
use crate::soup::combine::CombineReport;
use crate::soup::folder::build_folder_soup;
use anyhow::Context;
use clap::Args;
use zdn_node::store::{AddOptions, ObjectStore};
use zdn_protocol::bitdelta::Granularity;
use zdn_protocol::folder::adapter::CONFIG_MEMBER;
use zdn_protocol::manifest::{Kind, TensorEntry};
use zdn_protocol::soup::{Component, Recipe};
use zdn_protocol::Hash;

use super::summary;
use crate::cli::args::{parse_bits, Location};
use crate::cli::output::say;
use crate::cli::store::{load_or_create_key, now};

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

pub(super) fn mix(loc: &Location, a: MixArgs) -> anyhow::Result<()> {
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
