//! `zdn export`, `zdn import`: objects carried between stores in one bundle file.

use std::path::Path;

use anyhow::Context;

use super::trust;
use crate::cli::args::Location;
use crate::cli::output::say;
use crate::fs::atomic_file::AtomicFile;
use crate::home::config::Config;

/// `zdn export OBJ… -o FILE`; `with_needed` false for `--no-base`.
pub(super) fn export(
    loc: &Location,
    config: &Config,
    objects: &[String],
    output: &Path,
    with_needed: bool,
) -> anyhow::Result<()> {
    let store = loc.open(config)?;
    let roots = objects
        .iter()
        .map(|o| store.resolve(o))
        .collect::<Result<Vec<_>, _>>()?;
    let mut f = AtomicFile::create(output)?;
    let r = zdn_node::bundle::export(&store, &roots, with_needed, &mut f)?;
    f.commit()?;
    say!(
        "wrote {} ({} objects, {} chunks, {} bytes)",
        output.display(),
        r.manifests.len(),
        r.chunks,
        r.bytes
    );
    Ok(())
}

/// `zdn import FILE`: nothing is kept unless every chunk, signature and object hash checks.
pub(super) fn import(
    loc: &Location,
    config: &Config,
    path: &Path,
    trust_any: bool,
    json: bool,
) -> anyhow::Result<()> {
    let store = loc.open(config)?;
    let policy = trust(loc, config, trust_any)?;
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut reader = std::io::BufReader::with_capacity(1 << 20, f);
    let r = zdn_node::bundle::import(&store, &mut reader, &policy)
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
    Ok(())
}
