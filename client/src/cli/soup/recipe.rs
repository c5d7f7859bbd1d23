//! A soup recipe read back: `zdn delta apply --delta SOUP` (built and applied to a base file) and
//! `zdn delta inspect` of a recipe.

use std::path::PathBuf;

use crate::delta::apply::{apply, ApplyJob, ApplyReport};
use crate::soup::build::{build, load_recipe, output_dir, BuildJob};
use crate::soup::combine::CombineReport;
use anyhow::Context;
use zdn_protocol::manifest::Kind;
use zdn_protocol::soup::Recipe;
use zdn_protocol::Hash;

use crate::cli::args::Location;
use crate::cli::output::say;
use crate::fs::partial::Partial;

#[derive(Debug, serde::Serialize)]
struct RecipeApplyReport {
    soup: Hash,
    components: usize,
    build: CombineReport,
    apply: ApplyReport,
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
    let tmp = Partial::create(|| {
        tempfile::Builder::new()
            .prefix(".zdn-soup-apply.")
            .tempdir_in(&dir)
    })
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
    /// The base is a model folder (known when it is in the store): the soup is mixed exactly into
    /// the folder, and `bits`/`scale` are not used.
    #[serde(skip_serializing_if = "Option::is_none")]
    folder: Option<bool>,
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
    let manifest_of = |h: &Hash| -> anyhow::Result<Option<zdn_protocol::manifest::Manifest>> {
        Ok(match &store {
            Some(s) => s.manifest(h)?.map(|m| m.manifest),
            None => None,
        })
    };
    let mut components = Vec::with_capacity(recipe.components().len());
    for c in recipe.components() {
        let name = manifest_of(&c.delta)?.map(|m| m.name);
        components.push(RecipeComponent {
            delta: c.delta,
            weight: c.weight,
            present: name.is_some(),
            name,
        });
    }
    // The base's manifest is read once: whether it is here and whether it is a folder.
    let base_manifest = manifest_of(&recipe.base())?;
    let report = RecipeReport {
        kind: "soup",
        hash: manifest.map(|m| m.hash()),
        name: manifest.map(|m| m.manifest.name.clone()),
        base: recipe.base(),
        base_present: base_manifest.is_some(),
        folder: base_manifest.as_ref().map(|m| m.is_folder()),
        bits: recipe.bits(),
        scale: recipe.granularity().to_string(),
        recipe_bytes: bytes.len(),
        components,
    };
    if json {
        say!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    let how = match report.folder {
        Some(true) => "mixed exactly into the model folder (`zdn apply`)".to_string(),
        _ => format!(
            "re-quantized to {} bit(s), {} scales",
            report.bits, report.scale
        ),
    };
    say!(
        "soup recipe{}: {} bytes, {} components of base {}{}; {how}",
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
