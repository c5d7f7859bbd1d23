//! `zdn delta inspect`: what a `.bitdelta` (a file, or a delta in the store) holds and costs, or
//! what a soup recipe mixes; for a folder delta also how each of the fine-tune's files travels.

use std::path::{Path, PathBuf};

use anyhow::Context;
use zdn_protocol::folder::delta::{FolderDelta, Source, LAYOUT_MEMBER, MAX_LAYOUT_LEN};
use zdn_protocol::manifest::{Kind, SignedManifest};

use crate::cli::args::Location;
use crate::cli::fetch_report;
use crate::cli::output::say;
use crate::cli::{soup, store};
use crate::delta::inspect::{inspect, InspectReport};

pub fn run(loc: &Location, delta: PathBuf, json: bool) -> anyhow::Result<u8> {
    // A file, else an object of the store (whose manifest may carry a quality report).
    let looks_like_path =
        delta.components().count() > 1 || delta.extension().is_some_and(|e| e == "bitdelta");
    let (path, quality, files, _tmp) = if delta.exists() || looks_like_path {
        if is_recipe_file(&delta) {
            let bytes =
                std::fs::read(&delta).with_context(|| format!("reading {}", delta.display()))?;
            soup::inspect_recipe(loc, &bytes, None, json)?;
            return Ok(0);
        }
        // A folder delta on disk: its tensors are its delta.bitdelta.
        let member = delta.join(zdn_protocol::folder::delta::DELTA_MEMBER);
        let files = disk_files(&delta)?;
        let path = if member.is_file() { member } else { delta };
        (path, None, files, None)
    } else {
        let (tmp, m) = store::object_to_temp(loc, &delta.to_string_lossy()).with_context(|| {
            format!(
                "{} is neither a file nor an object of the store",
                delta.display()
            )
        })?;
        if m.manifest.kind == Kind::Soup {
            let bytes = std::fs::read(tmp.path())?;
            soup::inspect_recipe(loc, &bytes, Some(&m), json)?;
            return Ok(0);
        }
        let files = store_files(loc, &m)?;
        (
            tmp.path().to_path_buf(),
            fetch_report::quality_note(&m.manifest.extra),
            files,
            Some(tmp),
        )
    };
    let report = inspect(&path)?;
    if json {
        let mut v = serde_json::to_value(&report)?;
        if let (Some(o), Some(q)) = (v.as_object_mut(), &quality) {
            o.insert("quality".into(), q.clone());
        }
        if let (Some(o), Some(f)) = (v.as_object_mut(), &files) {
            o.insert("files".into(), serde_json::to_value(f)?);
        }
        say!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print_inspect(&path, &report);
        if let Some(f) = &files {
            print_files(f);
        }
        if let Some(q) = quality
            .as_ref()
            .filter(|q| q.get("kl_finetuned_applied").is_some())
        {
            say!(
                "quality (signed in the manifest): KL(fine-tune ‖ applied) {} nats/token, perplexity gain kept {}, top-1 agreement {}, special-token top-1 {} on {} held-out conversations of {}; base alone KL {}",
                q["kl_finetuned_applied"],
                q["gain_kept"],
                q["top1_agreement"]["applied"],
                q["special_tokens"]["applied"],
                q["conversations"],
                q["corpus"].as_str().unwrap_or("?"),
                q["kl_finetuned_base"]
            );
        } else if let Some(q) = quality {
            say!(
                "quality (signed in the manifest): mean cosine {} (min {}, p5 {}) to the fine-tune on {} sentences of {}; base alone {}",
                q["delta"]["mean"],
                q["delta"]["min"],
                q["delta"]["p5"],
                q["sentences"],
                q["corpus"].as_str().unwrap_or("?"),
                q["base"]["mean"]
            );
        }
    }
    Ok(0)
}

fn print_inspect(path: &Path, r: &InspectReport) {
    let m = &r.metadata;
    say!(
        "{}: .bitdelta v1, {} bytes, {} tensors",
        path.display(),
        r.file_bytes,
        r.n_tensors
    );
    say!("  model            {}", m.model_name);
    say!(
        "  base BLAKE3      {}",
        if m.base_hash.is_zero() {
            "(not recorded)".into()
        } else {
            m.base_hash.to_hex()
        }
    );
    say!(
        "  settings         {} bit, {} scales, clip {}, embeddings {}",
        m.bits,
        m.granularity,
        if m.clip_sigma == 0.0 {
            "off".into()
        } else {
            format!("{}σ", m.clip_sigma)
        },
        r.embeddings
    );
    say!(
        "  size             {:.3} bits/param; {:.1}x vs the fine-tune's dtypes, {:.1}x vs fp16",
        r.bits_per_param,
        r.ratio_vs_finetuned,
        r.ratio_vs_fp16
    );
    for t in &r.by_encoding {
        say!(
            "  {:<16} {:>4} tensors {:>12} params {:>12} bytes",
            t.encoding.name(),
            t.tensors,
            t.params,
            t.bytes
        );
    }
    say!("");
    say!(
        "{:<52} {:>5} {:>14} {:>9} {:>9} {:>11} {:>8}",
        "tensor",
        "dtype",
        "shape",
        "encoding",
        "scales",
        "bytes",
        "bits/p"
    );
    for t in &r.tensors {
        let shape = format!("{:?}", t.shape);
        say!(
            "{:<52} {:>5} {:>14} {:>9} {:>9} {:>11} {:>8.3}",
            t.name,
            t.dtype.to_string(),
            shape,
            t.encoding.name(),
            if t.encoding.bits().is_some() {
                t.granularity.to_string()
            } else {
                "-".into()
            },
            t.bytes,
            t.bits_per_param
        );
    }
}

/// One file of the fine-tune a folder delta rebuilds: where it comes from, and the bytes of the
/// delta's member that carries it (its header, patch or whole bytes; none for a base file).
#[derive(Debug, serde::Serialize)]
struct FileRow {
    path: String,
    from: Source,
    len: u64,
    member_bytes: Option<u64>,
}

fn rows(layout: &FolderDelta, member_len: impl Fn(&str) -> Option<u64>) -> Vec<FileRow> {
    layout
        .files
        .iter()
        .map(|f| FileRow {
            path: f.path.clone(),
            from: f.from,
            len: f.len,
            member_bytes: f.member().and_then(|m| member_len(&m)),
        })
        .collect()
}

/// The file table of a folder delta on disk (`None`: not a folder delta).
fn disk_files(dir: &Path) -> anyhow::Result<Option<Vec<FileRow>>> {
    let layout_path = dir.join(LAYOUT_MEMBER);
    if !layout_path.is_file() {
        return Ok(None);
    }
    let len = std::fs::metadata(&layout_path)?.len();
    anyhow::ensure!(
        len <= MAX_LAYOUT_LEN as u64,
        "{}: {len} bytes, over the {MAX_LAYOUT_LEN}-byte limit",
        layout_path.display()
    );
    let layout = FolderDelta::parse(&std::fs::read(&layout_path)?)
        .with_context(|| format!("{}", layout_path.display()))?;
    Ok(Some(rows(&layout, |m| {
        std::fs::metadata(dir.join(m)).ok().map(|x| x.len())
    })))
}

/// The file table of a folder delta in the store (`None`: not a folder delta).
fn store_files(loc: &Location, m: &SignedManifest) -> anyhow::Result<Option<Vec<FileRow>>> {
    let Some(entry) = m.manifest.file(LAYOUT_MEMBER) else {
        return Ok(None);
    };
    anyhow::ensure!(
        entry.len <= MAX_LAYOUT_LEN as u64,
        "{LAYOUT_MEMBER}: {} bytes, over the {MAX_LAYOUT_LEN}-byte limit",
        entry.len
    );
    let store = loc.open(&loc.config()?)?;
    let mut bytes = Vec::new();
    store.read_file(&m.hash(), LAYOUT_MEMBER, &mut bytes)?;
    let layout = FolderDelta::parse(&bytes).context(LAYOUT_MEMBER)?;
    Ok(Some(rows(&layout, |p| m.manifest.file(p).map(|e| e.len))))
}

fn print_files(files: &[FileRow]) {
    let count = |s: Source| files.iter().filter(|f| f.from == s).count();
    let bytes = |s: Source| -> (u64, u64) {
        files
            .iter()
            .filter(|f| f.from == s)
            .fold((0, 0), |(a, b), f| {
                (a + f.member_bytes.unwrap_or(0), b + f.len)
            })
    };
    let ((patches, patched), (carried, _)) = (bytes(Source::Patched), bytes(Source::Carried));
    say!("");
    say!(
        "files            {} rebuilt: {} shards, {} from the base, {} patched ({patches} bytes of patches for {patched} bytes), {} carried ({carried} bytes)",
        files.len(),
        count(Source::Tensors),
        count(Source::Base),
        count(Source::Patched),
        count(Source::Carried),
    );
    for f in files
        .iter()
        .filter(|f| matches!(f.from, Source::Patched | Source::Carried))
    {
        say!(
            "  {:<8} {:<44} {:>11} bytes, sent as {}",
            format!("{:?}", f.from).to_lowercase(),
            f.path,
            f.len,
            f.member_bytes.unwrap_or(0)
        );
    }
}

/// A file that starts like a soup recipe (`ZDNS`), which `delta inspect` describes as such.
fn is_recipe_file(path: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && &magic == zdn_protocol::soup::recipe::RECIPE_MAGIC
}
