//! The store commands of the `zdn` binary: key, add, get, cat, ls, pin, unpin, gc, verify, export,
//! import. Each opens the store in `--store` (created on first use) for the duration of the command.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use crate::cli::args::Location;
use crate::cli::output::say;
use crate::fs::atomic_file::AtomicFile;
use crate::fs::mapped_file::MappedFile;
use crate::fs::object_output::ObjectOutput;
use crate::fs::progress::Progress;
use crate::home::config::Config;
use crate::home::publisher_key;
use crate::model::folder::ModelFolder;
use anyhow::Context;
use clap::{Args, Subcommand};
use zdn_node::bundle;
use zdn_node::store::{AddOptions, TrustPolicy};
use zdn_protocol::bitdelta::MAGIC as BITDELTA_MAGIC;
use zdn_protocol::manifest::{Kind, PublisherKey};
use zdn_protocol::soup::recipe::RECIPE_MAGIC;
use zdn_protocol::soup::Recipe;
use zdn_protocol::Hash;

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
    /// Add a base model (.safetensors, or a model folder), a delta (.bitdelta) or a soup recipe to
    /// the store; prints its manifest hash.
    ///
    /// The object is split into chunks at file and tensor boundaries (so an unchanged shard, side
    /// file or tensor is stored once across versions), each compressed with zstd and named by its
    /// BLAKE3; a manifest listing them is signed with your publisher key (created on first use). A
    /// folder (e.g. a Hugging Face model: shards, index, config, tokenizer) is one object: every
    /// regular file in it, kept byte for byte. Example:
    ///
    ///   zdn add base.safetensors --name minilm
    ///   zdn add Llama-2-7b-hf/ --name llama2-7b
    ///   zdn add ft.bitdelta --base minilm --name minilm-ft
    #[command(verbatim_doc_comment)]
    Add(AddArgs),
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
    file: PathBuf,
    /// The base this delta applies to (manifest hash, prefix or name). Required for a .bitdelta.
    #[arg(long)]
    base: Option<String>,
    /// Name to record and to refer to the object by (default: the file name without extension).
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
        StoreCommand::Key(KeyCommand::Generate { force }) => {
            let k = publisher_key::generate(&loc.key_path(), force)?;
            say!("{}", Hash::from_bytes(k.public()));
            eprintln!("secret key written to {}", loc.key_path().display());
        }
        StoreCommand::Key(KeyCommand::Show) => {
            let k = publisher_key::load(&loc.key_path())?;
            say!("{}", Hash::from_bytes(k.public()));
        }
        StoreCommand::Add(a) => add(loc, &config, a)?,
        StoreCommand::Get {
            object,
            output,
            force,
        } => {
            let store = loc.open(&config)?;
            let hash = store.resolve(&object)?;
            let m = store.require_manifest(&hash)?;
            let bar = Progress::new(m.manifest.object_len, "get", true);
            let mut out = ObjectOutput::create(&m.manifest, &output, force)?;
            store
                .read_object(&hash, &mut out, &mut |n| bar.inc(n))
                .with_context(|| format!("reading {hash}"))?;
            out.commit()?;
            bar.finish();
            eprintln!(
                "wrote {} ({} bytes{}, verified)",
                output.display(),
                m.manifest.object_len,
                files_note(m.manifest.files.len())
            );
        }
        StoreCommand::Cat { object, file } => {
            let store = loc.open(&config)?;
            let hash = store.resolve(&object)?;
            let stdout = std::io::stdout();
            let mut lock = stdout.lock();
            let r = match file {
                Some(path) => store.read_file(&hash, &path, &mut lock).map(drop),
                None => {
                    let m = store.require_manifest(&hash)?;
                    if m.manifest.is_folder() {
                        anyhow::bail!(
                            "{object} is a model folder of {} files: say which one, e.g. `zdn cat {object} {}` (`zdn ls --files {object}` lists them)",
                            m.manifest.files.len(),
                            m.manifest.files[0].path
                        );
                    }
                    store.read_object(&hash, &mut lock, &mut |_| {}).map(drop)
                }
            };
            match r {
                Ok(()) => {}
                Err(zdn_node::store::StoreError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::BrokenPipe => {}
                Err(e) => return Err(e.into()),
            }
        }
        StoreCommand::Ls {
            json,
            files: Some(object),
        } => {
            let store = loc.open(&config)?;
            let hash = store.resolve(&object)?;
            let m = store.require_manifest(&hash)?;
            if json {
                say!("{}", serde_json::to_string_pretty(&m.manifest.files)?);
            } else {
                for f in &m.manifest.files {
                    say!("{:>13} {}", f.len, f.path);
                }
            }
        }
        StoreCommand::Ls { json, files: None } => {
            let store = loc.open(&config)?;
            let list = store.list()?;
            if json {
                say!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                say!(
                    "{:<64} {:<5} {:>13} {:>5} {:<3} name",
                    "hash",
                    "kind",
                    "bytes",
                    "files",
                    "pin"
                );
                for o in list {
                    say!(
                        "{} {:<5} {:>13} {:>5} {:<3} {}{}",
                        o.hash,
                        o.kind.as_str(),
                        o.object_len,
                        // A single-file object shows "-".
                        if o.files == 0 {
                            "-".to_string()
                        } else {
                            o.files.to_string()
                        },
                        if o.pinned { "yes" } else { "no" },
                        o.name,
                        if o.version.is_empty() {
                            String::new()
                        } else {
                            format!(" {}", o.version)
                        }
                    );
                }
            }
        }
        StoreCommand::Pin { object } => {
            let store = loc.open(&config)?;
            let h = store.resolve(&object)?;
            store.set_pin(&h, true)?;
            say!("pinned {h}");
        }
        StoreCommand::Unpin { object } => {
            let store = loc.open(&config)?;
            let h = store.resolve(&object)?;
            store.set_pin(&h, false)?;
            say!("unpinned {h}");
        }
        StoreCommand::Rollback { object } => {
            let store = loc.open(&config)?;
            let h = store.resolve(&object)?;
            store.set_name(&h)?;
            say!("rolled back to {h}");
        }
        StoreCommand::Gc { json } => {
            let store = loc.open(&config)?;
            let r = store.gc()?;
            if json {
                say!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                say!(
                    "removed {} objects and {} chunks ({} stored bytes)",
                    r.manifests_removed,
                    r.chunks_removed,
                    r.stored_bytes_freed
                );
            }
        }
        StoreCommand::Verify { object, json } => {
            let store = loc.open(&config)?;
            let only = object.map(|o| store.resolve(&o)).transpose()?;
            let r = store.verify(only.as_ref(), &mut |_| {})?;
            if json {
                say!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                say!(
                    "checked {} objects, {} chunks ({} stored bytes): {}",
                    r.objects_checked,
                    r.chunks_checked,
                    r.bytes_checked,
                    if r.is_clean() {
                        "no corruption".to_string()
                    } else {
                        format!("{} problems", r.problems.len())
                    }
                );
                if r.unreferenced_chunks > 0 {
                    say!(
                        "{} unreferenced chunks (left by an interrupted add or import; `zdn gc` removes them)",
                        r.unreferenced_chunks
                    );
                }
                for p in &r.problems {
                    say!("  {}", serde_json::to_string(p)?);
                }
            }
            if !r.is_clean() {
                return Ok(1);
            }
        }
        StoreCommand::Export {
            objects,
            output,
            no_base,
        } => {
            let store = loc.open(&config)?;
            let roots = objects
                .iter()
                .map(|o| store.resolve(o))
                .collect::<Result<Vec<_>, _>>()?;
            let mut f = AtomicFile::create(&output)?;
            let r = bundle::export(&store, &roots, !no_base, &mut f)?;
            f.commit()?;
            say!(
                "wrote {} ({} objects, {} chunks, {} bytes)",
                output.display(),
                r.manifests.len(),
                r.chunks,
                r.bytes
            );
        }
        StoreCommand::Import {
            bundle: path,
            trust_any,
            json,
        } => {
            let store = loc.open(&config)?;
            let policy = trust(loc, &config, trust_any)?;
            let f = std::fs::File::open(&path)
                .with_context(|| format!("opening {}", path.display()))?;
            let mut reader = std::io::BufReader::with_capacity(1 << 20, f);
            let r = bundle::import(&store, &mut reader, &policy)
                .with_context(|| format!("importing {} (nothing was kept)", path.display()))?;
            if json {
                say!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                for h in &r.manifests {
                    say!("{h}");
                }
                eprintln!(
                    "imported {} objects ({} chunks, {} new)",
                    r.manifests.len(),
                    r.chunks,
                    r.new_chunks
                );
            }
        }
    }
    Ok(0)
}

fn add(loc: &Location, config: &Config, a: AddArgs) -> anyhow::Result<()> {
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
        .add(bytes, &opts, &key)
        .with_context(|| format!("adding {} (the store is unchanged)", a.file.display()))?;
    print_added(a.json, &r)
}

/// `zdn add DIR`: a model folder as one object (docs/store.md "Folders").
fn add_folder(
    loc: &Location,
    config: &Config,
    a: AddArgs,
    key: &PublisherKey,
) -> anyhow::Result<()> {
    if a.base.is_some() {
        anyhow::bail!(
            "--base is for deltas; {} is a model folder (a base model)",
            a.file.display()
        );
    }
    let folder = ModelFolder::open(&a.file).with_context(|| {
        format!(
            "reading the folder {} (the store is unchanged)",
            a.file.display()
        )
    })?;
    let store = loc.open(config)?;
    // The folder's own name, also for `.` or a path ending in `/..`.
    let name = std::path::absolute(&a.file)
        .ok()
        .and_then(|p| p.components().next_back().map(|c| c.as_os_str().to_owned()))
        .map(|n| n.to_string_lossy().into_owned())
        .filter(|n| !n.is_empty() && n != "/")
        .unwrap_or_else(|| "model".into());
    let opts = add_options(config, &a, Kind::Base, None, name)?;
    let (_, r) = store
        .add_folder(&folder.members(), &opts, key)
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
    tempfile::NamedTempFile,
    zdn_protocol::manifest::SignedManifest,
)> {
    let config = loc.config()?;
    let store = loc.open(&config)?;
    let hash = store.resolve(what)?;
    let mut tmp = tempfile::NamedTempFile::new()?;
    let m = store
        .read_object(&hash, tmp.as_file_mut(), &mut |_| {})
        .with_context(|| format!("reading {hash}"))?;
    Ok((tmp, m))
}

/// A `zdn eval --json` report, checked and re-serialised compactly for a manifest note.
fn quality_note(path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the quality report {}", path.display()))?;
    let r: crate::quality::eval::QualityReport =
        serde_json::from_str(&text).with_context(|| {
            format!(
                "{} is not a quality report (the JSON `zdn eval --json` prints)",
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
