//! `zdn add`: a base model file, a model folder, a delta or a soup recipe into the store.

use std::io::Write as _;
use std::path::Path;

use anyhow::Context;
use zdn_node::store::AddOptions;
use zdn_protocol::bitdelta::MAGIC as BITDELTA_MAGIC;
use zdn_protocol::folder::adapter::CONFIG_MEMBER as ADAPTER_CONFIG;
use zdn_protocol::folder::delta::LAYOUT_MEMBER;
use zdn_protocol::manifest::{Kind, PublisherKey};
use zdn_protocol::soup::recipe::RECIPE_MAGIC;
use zdn_protocol::soup::Recipe;
use zdn_protocol::Hash;

use super::{files_note, load_or_create_key, now, AddArgs};
use crate::cli::args::Location;
use crate::cli::output::say;
use crate::fs::mapped_file::MappedFile;
use crate::home::config::Config;
use crate::model::folder::{cache_repo_id, ModelFolder};

pub(super) fn add(loc: &Location, config: &Config, a: AddArgs) -> anyhow::Result<()> {
    let key = load_or_create_key(loc)?;
    if std::fs::metadata(&a.file).is_ok_and(|m| m.is_dir()) {
        return add_folder(loc, config, a, &key);
    }
    let file = MappedFile::open(&a.file)?;
    let bytes = file.bytes();
    let kind = if bytes.starts_with(BITDELTA_MAGIC) {
        Kind::Delta
    } else if bytes.starts_with(RECIPE_MAGIC) {
        Kind::Soup
    } else {
        Kind::Base
    };
    let store = loc.open(config)?;
    let base = match (&a.base, kind) {
        (Some(b), _) => Some(store.resolve(b)?),
        (None, Kind::Delta) => anyhow::bail!(
            "{} is a .bitdelta: say which base it applies to with --base HASH|NAME",
            a.file.display()
        ),
        // A recipe names its base itself.
        (None, Kind::Soup) => Some(
            Recipe::decode(bytes)
                .with_context(|| format!("{} is not a valid soup recipe", a.file.display()))?
                .base(),
        ),
        (None, Kind::Base) => None,
    };
    if kind == Kind::Base && base.is_some() {
        anyhow::bail!("--base is for deltas; {} is a base model", a.file.display());
    }
    let name = file_stem(&a.file);
    let opts = add_options(config, &a, kind, base, name)?;
    let (_, r) = store
        .add_releasing(bytes, &opts, &key, &|_, range| file.release(range))
        .with_context(|| format!("adding {} (the store is unchanged)", a.file.display()))?;
    print_added(a.json, &r)
}

/// `zdn add DIR`: a model folder as one object (docs/store.md "Folders"), or a folder delta
/// with `--base`.
fn add_folder(
    loc: &Location,
    config: &Config,
    a: AddArgs,
    key: &PublisherKey,
) -> anyhow::Result<()> {
    // A folder delta (docs/spec/folder-delta.md) has its layout file, a LoRA adapter
    // (docs/spec/lora.md) its config; a model folder has neither.
    let is_delta = a.file.join(LAYOUT_MEMBER).is_file() || a.file.join(ADAPTER_CONFIG).is_file();
    match (&a.base, is_delta) {
        (Some(_), false) => anyhow::bail!(
            "--base is for deltas; {} is a model folder (a base model: it has neither {LAYOUT_MEMBER} nor {ADAPTER_CONFIG})",
            a.file.display()
        ),
        (None, true) => anyhow::bail!(
            "{} is a folder delta or a LoRA adapter: say which base it applies to with --base HASH|NAME",
            a.file.display()
        ),
        _ => {}
    }
    let folder = ModelFolder::open(&a.file).with_context(|| {
        format!(
            "reading the folder {} (the store is unchanged)",
            a.file.display()
        )
    })?;
    if !folder.left_out().is_empty() {
        eprintln!(
            "left out {} (git's data and download notes, as the Hugging Face Hub's upload leaves them out)",
            folder.left_out().join(", ")
        );
    }
    if folder.linked() > 0 {
        eprintln!(
            "a Hugging Face cache snapshot: {} files read through their links into its blobs/",
            folder.linked()
        );
    }
    let store = loc.open(config)?;
    // A cache snapshot's repository id, else the folder's own name, also for `.` or a path
    // ending in `/..`.
    let name = cache_repo_id(&a.file)
        .or_else(|| {
            std::path::absolute(&a.file)
                .ok()
                .and_then(|p| p.components().next_back().map(|c| c.as_os_str().to_owned()))
                .map(|n| n.to_string_lossy().into_owned())
                .filter(|n| !n.is_empty() && n != "/")
        })
        .unwrap_or_else(|| "model".into());
    let (kind, base) = match &a.base {
        Some(b) => (Kind::Delta, Some(store.resolve(b)?)),
        None => (Kind::Base, None),
    };
    let opts = add_options(config, &a, kind, base, name)?;
    let files = folder.files();
    let release = |i: usize, range: std::ops::Range<usize>| {
        if let Some((_, map)) = files.get(i) {
            map.release(range);
        }
    };
    let (_, r) = store
        .add_folder_releasing(&folder.members(), &opts, key, &release)
        .with_context(|| format!("adding {} (the store is unchanged)", a.file.display()))?;
    print_added(a.json, &r)
}

fn add_options(
    config: &Config,
    a: &AddArgs,
    kind: Kind,
    base: Option<Hash>,
    default_name: String,
) -> anyhow::Result<AddOptions> {
    Ok(AddOptions {
        kind,
        name: a.name.clone().unwrap_or(default_name),
        version: a.model_version.clone(),
        base,
        chunk_size: a.chunk_size.unwrap_or(config.chunk_size),
        zstd_level: a.zstd_level.unwrap_or(config.zstd_level),
        created_at: now(),
        extra: match &a.quality {
            Some(p) => vec![("quality".to_owned(), quality_note(p)?)],
            None => Vec::new(),
        },
        pin: !a.no_pin,
    })
}

fn print_added(json: bool, r: &zdn_node::store::AddReport) -> anyhow::Result<()> {
    if json {
        say!("{}", serde_json::to_string_pretty(r)?);
    } else {
        say!("{}", r.hash);
        eprintln!(
            "added {} {:?}: {} bytes{} in {} chunks; {} new chunks ({} stored bytes), {} bytes deduplicated",
            r.kind.as_str(),
            r.name,
            r.object_len,
            files_note(r.files),
            r.chunks,
            r.new_chunks,
            r.new_stored_bytes,
            r.dedup_bytes
        );
    }
    std::io::stdout().flush().ok();
    Ok(())
}

/// A `zdn eval --json` report, checked and re-serialised compactly for a manifest note.
fn quality_note(path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the quality report {}", path.display()))?;
    // A sentence-embedding report, or a decoder report (`zdn eval` of a decoder LLM).
    if let Ok(r) = serde_json::from_str::<crate::quality::eval::QualityReport>(&text) {
        return Ok(serde_json::to_string(&r)?);
    }
    let r: crate::decoder::eval::DecoderQualityReport = serde_json::from_str(&text)
        .with_context(|| {
            format!(
                "{} is not a quality report (the JSON `zdn eval --json` prints, for a sentence encoder or a decoder)",
                path.display()
            )
        })?;
    Ok(serde_json::to_string(&r)?)
}

fn file_stem(p: &Path) -> String {
    p.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "object".into())
}
