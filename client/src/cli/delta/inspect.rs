//! `zdn delta inspect`: what a `.bitdelta` (a file, or a delta in the store) holds and costs, or
//! what a soup recipe mixes.

use std::path::{Path, PathBuf};

use anyhow::Context;
use zdn_protocol::manifest::Kind;

use crate::cli::args::Location;
use crate::cli::fetch_report;
use crate::cli::output::say;
use crate::cli::{soup, store};
use crate::delta::inspect::{inspect, InspectReport};

pub fn run(loc: &Location, delta: PathBuf, json: bool) -> anyhow::Result<u8> {
    // A file, else an object of the store (whose manifest may carry a quality report).
    let looks_like_path =
        delta.components().count() > 1 || delta.extension().is_some_and(|e| e == "bitdelta");
    let (path, quality, _tmp) = if delta.exists() || looks_like_path {
        if is_recipe_file(&delta) {
            let bytes =
                std::fs::read(&delta).with_context(|| format!("reading {}", delta.display()))?;
            soup::inspect_recipe(loc, &bytes, None, json)?;
            return Ok(0);
        }
        // A folder delta on disk: its tensors are its delta.bitdelta.
        let member = delta.join(zdn_protocol::folder::delta::DELTA_MEMBER);
        let path = if member.is_file() { member } else { delta };
        (path, None, None)
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
        (
            tmp.path().to_path_buf(),
            fetch_report::quality_note(&m.manifest.extra),
            Some(tmp),
        )
    };
    let report = inspect(&path)?;
    if json {
        let mut v = serde_json::to_value(&report)?;
        if let (Some(o), Some(q)) = (v.as_object_mut(), &quality) {
            o.insert("quality".into(), q.clone());
        }
        say!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print_inspect(&path, &report);
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

/// A file that starts like a soup recipe (`ZDNS`), which `delta inspect` describes as such.
fn is_recipe_file(path: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && &magic == zdn_protocol::soup::recipe::RECIPE_MAGIC
}
