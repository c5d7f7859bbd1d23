//! `zdn pin`, `zdn unpin`, `zdn rollback`, `zdn gc`, `zdn verify`: what the store keeps, what its
//! names point at, and whether what it holds is sound.

use crate::cli::args::Location;
use crate::cli::output::say;
use crate::home::config::Config;

/// `zdn pin OBJ` (`pinned` true) and `zdn unpin OBJ` (false).
pub(super) fn set_pin(
    loc: &Location,
    config: &Config,
    object: &str,
    pinned: bool,
) -> anyhow::Result<()> {
    let store = loc.open(config)?;
    let h = store.resolve(object)?;
    store.set_pin(&h, pinned)?;
    if pinned {
        say!("pinned {h}");
    } else {
        say!("unpinned {h}");
    }
    Ok(())
}

/// `zdn rollback OBJ`: the object's name points at it again.
pub(super) fn rollback(loc: &Location, config: &Config, object: &str) -> anyhow::Result<()> {
    let store = loc.open(config)?;
    let h = store.resolve(object)?;
    store.set_name(&h)?;
    say!("rolled back to {h}");
    Ok(())
}

/// `zdn gc`.
pub(super) fn gc(loc: &Location, config: &Config, json: bool) -> anyhow::Result<()> {
    let store = loc.open(config)?;
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
    Ok(())
}

/// `zdn verify [OBJ]`. Returns the exit code: 1 when any corruption was found.
pub(super) fn verify(
    loc: &Location,
    config: &Config,
    object: Option<&str>,
    json: bool,
) -> anyhow::Result<u8> {
    let store = loc.open(config)?;
    let only = object.map(|o| store.resolve(o)).transpose()?;
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
    Ok(if r.is_clean() { 0 } else { 1 })
}
