//! `zdn apply OBJ -o DIR`: a folder delta or a LoRA adapter of the store applied to its base in
//! the store, or a soup of a model folder (folder deltas or adapters mixed) written out.

use std::path::Path;

use anyhow::Context;
use zdn_protocol::folder::adapter::CONFIG_MEMBER;
use zdn_protocol::manifest::Kind;
use zdn_protocol::Hash;

use crate::cli::args::Location;
use crate::cli::output::say;
use crate::delta::folder::adapter::{apply_adapter, AdapterSource};
use crate::delta::folder::apply::{apply_file_delta, apply_folder, DeltaSource, FolderApplyReport};
use crate::delta::folder::base::StoreBase;
use crate::fs::mapped_file::MappedFile;
use crate::fs::partial::Partial;
use crate::home::config::Config;
use crate::soup::build::load_recipe;
use crate::soup::folder::build_folder_soup;

pub(super) fn apply(
    loc: &Location,
    config: &Config,
    object: &str,
    output: &Path,
    json: bool,
) -> anyhow::Result<()> {
    let store = loc.open(config)?;
    let hash = store.resolve(object)?;
    let m = store.require_manifest(&hash)?;
    if m.manifest.kind == Kind::Soup {
        let recipe = load_recipe(&store, &hash)?;
        let base = store.require_manifest(&recipe.base())?;
        anyhow::ensure!(
            base.manifest.is_folder(),
            "{object} is a soup of single-file deltas: `zdn delta apply --base BASE.safetensors --delta {object} -o OUT` applies it"
        );
        let r = build_folder_soup(&store, &recipe, output, !json).with_context(|| {
            format!(
                "building soup {hash} (nothing was written to {})",
                output.display()
            )
        })?;
        return report(&r, &recipe.base(), json);
    }
    let base_hash = m.manifest.base.with_context(|| {
        format!("{object} has no base: `zdn apply` takes a folder delta or a LoRA adapter")
    })?;
    let base = StoreBase::open(&store, &base_hash)
        .with_context(|| format!("the delta's base {base_hash} (fetch it, or add it, first)"))?;
    let r = if !m.manifest.is_folder() && m.manifest.kind == Kind::Delta {
        // A single-file .bitdelta: the fine-tune as one safetensors file.
        let mut tmp = Partial::create(tempfile::NamedTempFile::new)?;
        store.read_object(&hash, tmp.as_file_mut(), &mut |_| {})?;
        let map = MappedFile::open(tmp.path())?;
        apply_file_delta(&map, &base, output)
    } else if m.manifest.file(CONFIG_MEMBER).is_some() {
        let adapter = AdapterSource::store(&store, &hash, output)?;
        apply_adapter(&adapter, &base, output, !json)
    } else {
        let delta = DeltaSource::store(&store, &hash, output)?;
        apply_folder(&delta, &base, output, false, !json)
    }
    .with_context(|| {
        format!(
            "applying {hash} (nothing was written to {})",
            output.display()
        )
    })?;
    report(&r, &base_hash, json)
}

fn report(r: &FolderApplyReport, base_hash: &Hash, json: bool) -> anyhow::Result<()> {
    if json {
        say!("{}", serde_json::to_string_pretty(r)?);
    } else {
        say!(
            "wrote {} ({} files, {} tensors, {} bytes; base {} verified)",
            r.output.display(),
            r.files,
            r.tensors,
            r.bytes_written,
            base_hash
        );
    }
    Ok(())
}
