//! The store commands of the `zdn` binary: key, add, get, cat, ls, pin, unpin, gc, verify, export,
//! import. Each opens the store in `--store` (created on first use) for the duration of the command.

mod add;
mod apply;
mod bundle;
mod read;
mod upkeep;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use zdn_node::store::TrustPolicy;
use zdn_protocol::manifest::PublisherKey;
use zdn_protocol::Hash;

use crate::cli::args::Location;
use crate::cli::output::say;
use crate::fs::partial::Partial;
use crate::home::config::Config;
use crate::home::publisher_key;

#[derive(Subcommand, Debug)]
pub enum KeyCommand {
    /// Create this machine's publisher key (ed25519; <home>/publisher.key, mode 0600).
    Generate {
        /// Replace an existing key (manifests signed with the old one stay valid but are no longer
        /// yours to update).
        #[arg(long)]
        force: bool,
    },
    /// Print the public half of the publisher key (what others put in trusted_publishers).
    Show,
}

#[derive(Subcommand, Debug)]
pub enum StoreCommand {
    /// Manage the publisher key that signs your manifests.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Add a base model (.safetensors, or a model folder), a delta (.bitdelta) or a soup recipe to the store; prints its manifest hash.
    ///
    /// The object is split into chunks at file and tensor boundaries (so an unchanged shard, side
    /// file or tensor is stored once across versions), each compressed with zstd and named by its
    /// BLAKE3; a manifest listing them is signed with your publisher key (created on first use). A
    /// folder (e.g. a Hugging Face model: shards, index, config, tokenizer) is one object: every
    /// regular file in it, kept byte for byte, but `.git` and `.cache/huggingface`; a snapshot in
    /// the Hugging Face cache is read through its links (named ORG/NAME). Example:
    ///
    ///   zdn add base.safetensors --name minilm
    ///   zdn add Llama-2-7b-hf/ --name llama2-7b
    ///   zdn add ~/.cache/huggingface/hub/models--meta-llama--Llama-2-7b-hf/snapshots/REV/
    ///   zdn add ft.bitdelta --base minilm --name minilm-ft
    ///   zdn add llama2-chat.delta/ --base llama2-7b --name llama2-7b-chat   (a folder delta)
    ///   zdn add my-lora/ --base llama2-7b --name llama2-7b-mylora   (a PEFT LoRA adapter folder)
    #[command(verbatim_doc_comment)]
    Add(AddArgs),
    /// Rebuild a fine-tune from a delta in the store, its base read from the store too.
    ///
    /// The base is read tensor by tensor (no loose copy of either). A folder delta writes the
    /// fine-tune's folder (its files, shard layout, headers and side files) and a LoRA adapter the
    /// base's folder with the adapter merged (W + s·B·A, docs/spec/lora.md), into a new or empty
    /// folder; a single-file .bitdelta writes one safetensors file; a soup of a model folder
    /// (`zdn soup mix` of folder deltas or adapters) writes the mixed folder,
    /// W = W_base + Σ wᵢ·Δᵢ (docs/soup.md). Example:
    ///
    ///   zdn fetch <hash> && zdn apply <hash> -o Llama-2-7b-chat-hf/
    #[command(verbatim_doc_comment)]
    Apply {
        /// The delta: manifest hash, unique hash prefix, or name.
        object: String,
        /// The folder to write (must not exist, or be empty); for a single-file delta, the file.
        #[arg(short, long)]
        output: PathBuf,
        /// Print a JSON report.
        #[arg(long)]
        json: bool,
    },
    /// Write an object from the store to a file (a model folder: to a folder), verifying every chunk
    /// and the whole-object hash.
    Get {
        /// Manifest hash, unique hash prefix, or name.
        object: String,
        #[arg(short, long)]
        output: PathBuf,
        /// For a model folder: write into an existing non-empty folder (its other files are kept).
        #[arg(long)]
        force: bool,
    },
    /// Write an object from the store to stdout (verified like `get`); for a model folder, one of
    /// its files (each chunk verified).
    Cat {
        object: String,
        /// The file of a model folder to write, as `zdn ls --files OBJ` lists it.
        file: Option<String>,
    },
    /// List the objects in the store, or with --files OBJ the files of a model folder.
    Ls {
        #[arg(long)]
        json: bool,
        /// List the files of this folder object (path and size).
        #[arg(long, value_name = "OBJ")]
        files: Option<String>,
    },
    /// Keep an object (and, for a delta, its base) through `gc`. `add` and `import` pin.
    Pin { object: String },
    /// Let `gc` remove an object.
    Unpin { object: String },
    /// Point an object's name back at it (names otherwise only move to newer objects, so a
    /// replayed older manifest cannot roll a name back).
    Rollback { object: String },
    /// Remove unpinned objects and every chunk no kept object needs.
    Gc {
        #[arg(long)]
        json: bool,
    },
    /// Re-hash stored chunks and objects; report corruption. Exit status 1 when any is found.
    Verify {
        /// Only this object (default: the whole store).
        object: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Write objects (with the bases and soup components they need) into one bundle file, e.g.
    /// for a USB disk.
    Export {
        #[arg(required = true)]
        objects: Vec<String>,
        #[arg(short, long)]
        output: PathBuf,
        /// Leave out what the objects need (a delta's base; a soup's base and component deltas):
        /// the receiver already has them. Import checks they are there.
        #[arg(long)]
        no_base: bool,
    },
    /// Import a bundle: every chunk, signature and object hash is checked before anything is kept.
    Import {
        bundle: PathBuf,
        /// Accept any publisher whose signature verifies (default: your key and trusted_publishers).
        #[arg(long)]
        trust_any: bool,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Debug)]
pub struct AddArgs {
    /// What to add: a .safetensors file or a model folder (a base), a .bitdelta, a folder delta
    /// or a LoRA adapter folder (a delta: give --base), or a soup recipe.
    file: PathBuf,
    /// The base this delta applies to (manifest hash, prefix or name). Required for a .bitdelta.
    #[arg(long)]
    base: Option<String>,
    /// Name to record and to refer to the object by (default: the file name without extension;
    /// for a Hugging Face cache snapshot, its repository's ORG/NAME).
    #[arg(long)]
    name: Option<String>,
    /// Version string to record in the manifest.
    #[arg(long, value_name = "VERSION", default_value = "")]
    model_version: String,
    /// Largest chunk in bytes (default from the config: 1 MiB). Max 16 MiB.
    #[arg(long)]
    chunk_size: Option<u32>,
    /// zstd level for chunks (1–22; default from the config: 3).
    #[arg(long, value_parser = clap::value_parser!(i32).range(1..=22))]
    zstd_level: Option<i32>,
    /// Do not pin the object (a later `gc` removes it).
    #[arg(long)]
    no_pin: bool,
    /// Record a quality report in the (signed) manifest: the JSON `zdn eval --json` prints. Shown by
    /// `zdn delta inspect OBJ` and `zdn fetch`.
    #[arg(long, value_name = "REPORT.json")]
    quality: Option<PathBuf>,
    #[arg(long)]
    json: bool,
}

pub(crate) fn load_or_create_key(loc: &Location) -> anyhow::Result<PublisherKey> {
    let path = loc.key_path();
    match publisher_key::load(&path) {
        Ok(k) => Ok(k),
        Err(publisher_key::KeyFileError::Missing(_)) => {
            let k = publisher_key::generate(&path, false)?;
            eprintln!(
                "created publisher key {} (public {})",
                path.display(),
                Hash::from_bytes(k.public())
            );
            Ok(k)
        }
        Err(e) => Err(e.into()),
    }
}

pub(crate) fn trust(loc: &Location, config: &Config, any: bool) -> anyhow::Result<TrustPolicy> {
    let mut trusted = config.trusted_keys().map_err(anyhow::Error::msg)?;
    if let Ok(k) = publisher_key::load(&loc.key_path()) {
        trusted.push(k.public());
    }
    Ok(TrustPolicy { trusted, any })
}

/// The creation time to record: `SOURCE_DATE_EPOCH` when set (reproducible builds), else now.
pub(crate) fn now() -> u64 {
    if let Some(t) = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.trim().parse().ok())
    {
        return t;
    }
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Runs one store command. Returns the process exit code.
pub fn run(loc: &Location, cmd: StoreCommand) -> anyhow::Result<u8> {
    let config = loc.config()?;
    match cmd {
        StoreCommand::Key(k) => key(loc, k)?,
        StoreCommand::Add(a) => add::add(loc, &config, a)?,
        StoreCommand::Get {
            object,
            output,
            force,
        } => read::get(loc, &config, &object, &output, force)?,
        StoreCommand::Apply {
            object,
            output,
            json,
        } => apply::apply(loc, &config, &object, &output, json)?,
        StoreCommand::Cat { object, file } => read::cat(loc, &config, &object, file.as_deref())?,
        StoreCommand::Ls {
            json,
            files: Some(object),
        } => read::ls_files(loc, &config, &object, json)?,
        StoreCommand::Ls { json, files: None } => read::ls(loc, &config, json)?,
        StoreCommand::Pin { object } => upkeep::set_pin(loc, &config, &object, true)?,
        StoreCommand::Unpin { object } => upkeep::set_pin(loc, &config, &object, false)?,
        StoreCommand::Rollback { object } => upkeep::rollback(loc, &config, &object)?,
        StoreCommand::Gc { json } => upkeep::gc(loc, &config, json)?,
        StoreCommand::Verify { object, json } => {
            return upkeep::verify(loc, &config, object.as_deref(), json)
        }
        StoreCommand::Export {
            objects,
            output,
            no_base,
        } => bundle::export(loc, &config, &objects, &output, !no_base)?,
        StoreCommand::Import {
            bundle: path,
            trust_any,
            json,
        } => bundle::import(loc, &config, &path, trust_any, json)?,
    }
    Ok(0)
}

/// `zdn key generate`, `zdn key show`.
fn key(loc: &Location, cmd: KeyCommand) -> anyhow::Result<()> {
    match cmd {
        KeyCommand::Generate { force } => {
            let k = publisher_key::generate(&loc.key_path(), force)?;
            say!("{}", Hash::from_bytes(k.public()));
            eprintln!("secret key written to {}", loc.key_path().display());
        }
        KeyCommand::Show => {
            let k = publisher_key::load(&loc.key_path())?;
            say!("{}", Hash::from_bytes(k.public()));
        }
    }
    Ok(())
}

/// ", N files" for a folder object, nothing for a single file.
fn files_note(files: usize) -> String {
    match files {
        0 => String::new(),
        1 => ", 1 file".into(),
        n => format!(", {n} files"),
    }
}

/// An object of the store copied (verified) to a temporary file, with its manifest.
pub fn object_to_temp(
    loc: &Location,
    what: &str,
) -> anyhow::Result<(
    Partial<tempfile::NamedTempFile>,
    zdn_protocol::manifest::SignedManifest,
)> {
    let config = loc.config()?;
    let store = loc.open(&config)?;
    let hash = store.resolve(what)?;
    let mut tmp = Partial::create(tempfile::NamedTempFile::new)?;
    let m = store.require_manifest(&hash)?;
    // A folder delta's tensors are its `delta.bitdelta` member.
    let member = zdn_protocol::folder::delta::DELTA_MEMBER;
    if m.manifest.file(member).is_some() {
        store
            .read_file(&hash, member, tmp.as_file_mut())
            .with_context(|| format!("reading {member} of {hash}"))?;
        return Ok((tmp, m));
    }
    let m = store
        .read_object(&hash, tmp.as_file_mut(), &mut |_| {})
        .with_context(|| format!("reading {hash}"))?;
    Ok((tmp, m))
}
