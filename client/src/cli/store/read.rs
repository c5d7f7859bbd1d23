//! `zdn get`, `zdn cat`, `zdn ls`: objects out of the store, verified, and what it holds.

use std::path::Path;

use anyhow::Context;

use super::files_note;
use crate::cli::args::Location;
use crate::cli::output::say;
use crate::fs::object_output::ObjectOutput;
use crate::fs::progress::Progress;
use crate::home::config::Config;

/// `zdn get OBJ -o PATH`: the object written to a file (a model folder: to a folder).
pub(super) fn get(
    loc: &Location,
    config: &Config,
    object: &str,
    output: &Path,
    force: bool,
) -> anyhow::Result<()> {
    let store = loc.open(config)?;
    let hash = store.resolve(object)?;
    let m = store.require_manifest(&hash)?;
    let bar = Progress::new(m.manifest.object_len, "get", true);
    let mut out = ObjectOutput::create(&m.manifest, output, force)?;
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
    Ok(())
}

/// `zdn cat OBJ [FILE]`: the object, or one file of a model folder, to stdout. A closed pipe (e.g.
/// `| head`) ends it without an error.
pub(super) fn cat(
    loc: &Location,
    config: &Config,
    object: &str,
    file: Option<&str>,
) -> anyhow::Result<()> {
    let store = loc.open(config)?;
    let hash = store.resolve(object)?;
    let stdout = std::io::stdout();
    let mut lock = stdout.lock();
    let r = match file {
        Some(path) => store.read_file(&hash, path, &mut lock).map(drop),
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
        Ok(()) => Ok(()),
        Err(zdn_node::store::StoreError::Io { source, .. })
            if source.kind() == std::io::ErrorKind::BrokenPipe =>
        {
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// `zdn ls --files OBJ`: the files of a model folder (path and size).
pub(super) fn ls_files(
    loc: &Location,
    config: &Config,
    object: &str,
    json: bool,
) -> anyhow::Result<()> {
    let store = loc.open(config)?;
    let hash = store.resolve(object)?;
    let m = store.require_manifest(&hash)?;
    if json {
        say!("{}", serde_json::to_string_pretty(&m.manifest.files)?);
    } else {
        for f in &m.manifest.files {
            say!("{:>13} {}", f.len, f.path);
        }
    }
    Ok(())
}

/// `zdn ls`: the objects in the store.
pub(super) fn ls(loc: &Location, config: &Config, json: bool) -> anyhow::Result<()> {
    let store = loc.open(config)?;
    let list = store.list()?;
    if json {
        say!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
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
    Ok(())
}
