//! `zdn delta encode`: base + fine-tune → `.bitdelta`.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use zdn_protocol::bitdelta::{
    EmbeddingPolicy, EncodeOptions, Granularity, QuantSpec, Selection, DEFAULT_ZSTD_LEVEL,
};
use zdn_protocol::glob::Glob;

use crate::cli::args::parse_bits;
use crate::cli::args::Location;
use crate::cli::output::say;
use crate::delta::encode::{encode, EncodeJob, EncodeReport};
use crate::delta::folder::base::{LooseBase, StoreBase};
use crate::delta::folder::encode::{encode_folder, FolderEncodeJob, FolderEncodeReport};
use crate::delta::folder::selection::Choices;
use crate::fs::object_output::ObjectOutput;
use crate::fs::partial::Partial;
use crate::fs::progress::Progress;
use zdn_node::store::ObjectStore;
use zdn_protocol::manifest::Kind;

#[derive(Args, Debug)]
pub struct EncodeArgs {
    /// The base model: a safetensors file, or a model folder; for a fine-tune folder also a base
    /// object in the store (hash, prefix or name), read from it tensor by tensor.
    #[arg(long)]
    base: PathBuf,
    /// The fine-tuned model: a safetensors file (same tensor names and shapes as the base), or a
    /// model folder (then the output is a folder delta: tensors paired by name across any two
    /// shard layouts, vocabulary growth encoded, side files kept exactly); or a base object in
    /// the store (hash, prefix or name), written out verified next to the output first (it needs
    /// its size in free disk there) and removed after.
    #[arg(long)]
    finetuned: PathBuf,
    /// Output .bitdelta file; for a fine-tune folder, the folder delta to write (new or empty).
    #[arg(short, long)]
    output: PathBuf,
    /// Bits per quantized weight: 1 (signs), 2 or 4.
    #[arg(long, default_value_t = 1, value_parser = parse_bits)]
    bits: u32,
    /// For a fine-tune folder: quantized tensors whose name matches GLOB get BITS instead of
    /// --bits (e.g. `--bits-for 'model.layers.31.*=2'`); repeatable, the first match wins.
    #[arg(long, value_name = "GLOB=BITS", value_parser = parse_bits_for)]
    bits_for: Vec<(String, u32)>,
    /// Elements sharing one scale: tensor, row, or group:N (N consecutive elements of a row).
    /// Default: row for a fine-tune folder of a known decoder family (see --architecture), else
    /// tensor.
    #[arg(long)]
    scale: Option<Granularity>,
    /// Clip deltas at K standard deviations before computing scales (off by default).
    #[arg(long, value_name = "K")]
    clip: Option<f32>,
    /// Quantize tensors whose name matches (glob: * and ?); repeatable.
    #[arg(long, value_name = "GLOB")]
    include: Vec<String>,
    /// Store tensors whose name matches losslessly (beats --include); repeatable.
    #[arg(long, value_name = "GLOB")]
    exclude: Vec<String>,
    /// Embedding matrices: keep the base's (base), store exactly (exact), or quantize. Default:
    /// base; for a fine-tune folder of a known decoder family the vocabulary matrices
    /// (embed_tokens, lm_head) are instead quantized per row with their special-token and
    /// most-changed rows kept exactly (see --architecture).
    #[arg(long)]
    embeddings: Option<EmbeddingPolicy>,
    /// For a fine-tune folder: `auto` reads its config.json and, for a known decoder family
    /// (llama, mistral, mixtral, qwen2, qwen3, gemma, gemma2, gemma3_text, phi, phi3, olmo), uses the
    /// decoder defaults (docs/spec/folder-delta.md "Selection by architecture"); `generic` uses the
    /// rules every model gets.
    #[arg(long, value_enum, default_value = "auto")]
    architecture: ArchitectureMode,
    /// zstd level for losslessly stored tensors (1–22).
    #[arg(long, default_value_t = DEFAULT_ZSTD_LEVEL, value_parser = clap::value_parser!(i32).range(1..=22))]
    zstd_level: i32,
    /// Model name recorded in the file (default: from the fine-tune's path).
    #[arg(long)]
    name: Option<String>,
    /// Print a JSON report instead of a summary.
    #[arg(long)]
    json: bool,
}

/// How `--architecture` chooses defaults.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ArchitectureMode {
    Auto,
    Generic,
}

/// `GLOB=BITS` of `--bits-for`.
fn parse_bits_for(s: &str) -> Result<(String, u32), String> {
    let (glob, bits) = s
        .rsplit_once('=')
        .ok_or_else(|| format!("expected GLOB=BITS, got {s:?}"))?;
    if glob.is_empty() {
        return Err(format!("expected GLOB=BITS, got {s:?}: the glob is empty"));
    }
    Ok((glob.to_owned(), parse_bits(bits)?))
}

pub fn run(loc: &Location, mut a: EncodeArgs) -> anyhow::Result<u8> {
    if let Some(k) = a.clip {
        anyhow::ensure!(
            k.is_finite() && k > 0.0,
            "--clip must be a positive number of standard deviations, got {k}"
        );
    }
    // One store, opened once, when the base or the fine-tune is an object in it.
    let store = if a.base.exists() && a.finetuned.exists() {
        None
    } else {
        Some(loc.open(&loc.config()?)?)
    };
    // A fine-tune from the store is written out first; the folder goes when `_written` drops.
    let _written = match &store {
        Some(store) if !a.finetuned.exists() => {
            let (dir, path, name) = finetuned_from_store(store, &a.finetuned, &a.output, !a.json)?;
            a.finetuned = path;
            a.name.get_or_insert(name);
            Some(dir)
        }
        _ => None,
    };
    let job = EncodeJob {
        base: a.base,
        finetuned: a.finetuned,
        output: a.output,
        options: EncodeOptions {
            spec: QuantSpec {
                bits: a.bits,
                granularity: a.scale.unwrap_or(Granularity::Tensor),
                clip_sigma: a.clip,
            },
            zstd_level: a.zstd_level,
        },
        selection: Selection {
            include: a.include.iter().map(|g| Glob::new(g)).collect(),
            exclude: a.exclude.iter().map(|g| Glob::new(g)).collect(),
            embeddings: a.embeddings.unwrap_or(EmbeddingPolicy::Base),
        },
        model_name: a.name,
        progress: !a.json,
    };
    anyhow::ensure!(
        a.bits_for.is_empty() || job.finetuned.is_dir(),
        "--bits-for is for a fine-tune folder (a folder delta); a single file takes one --bits"
    );
    if job.finetuned.is_dir() {
        let folder = FolderEncodeJob {
            bits_for: a.bits_for.iter().map(|(g, b)| (Glob::new(g), *b)).collect(),
            finetuned: job.finetuned,
            output: job.output,
            options: job.options,
            selection: job.selection,
            model_name: job.model_name,
            progress: job.progress,
            choices: Choices {
                by_architecture: a.architecture == ArchitectureMode::Auto,
                granularity: a.scale,
                embeddings_given: a.embeddings.is_some(),
            },
        };
        let report = if job.base.exists() {
            let base = LooseBase::open(&job.base)
                .with_context(|| format!("the base {}", job.base.display()))?;
            encode_folder(&folder, &base)
        } else {
            // Not a path: a base object in the store, read tensor by tensor.
            let store = store
                .as_ref()
                .context("the store was not opened for a base that is not a path")?;
            let hash = store
                .resolve(&job.base.to_string_lossy())
                .with_context(|| {
                    format!(
                        "--base {}: no such file or folder, nor an object in the store",
                        job.base.display()
                    )
                })?;
            let base = StoreBase::open(store, &hash)?;
            encode_folder(&folder, &base)
        }
        .context("delta encode failed")?;
        if a.json {
            say!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            print_folder_encode(&report);
        }
        return Ok(0);
    }
    let report = encode(&job).context("delta encode failed")?;
    if a.json {
        say!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_encode(&report);
    }
    Ok(0)
}

/// `--finetuned OBJ`: the base object `what` names, written (each chunk and the whole object
/// verified) into a temporary folder beside `output`; the folder, the path of the fine-tune in it
/// (`model/` for a model folder, `model.safetensors` for a file) and the object's name.
fn finetuned_from_store(
    store: &ObjectStore,
    what: &std::path::Path,
    output: &std::path::Path,
    progress: bool,
) -> anyhow::Result<(Partial<tempfile::TempDir>, PathBuf, String)> {
    let hash = store.resolve(&what.to_string_lossy()).with_context(|| {
        format!(
            "--finetuned {}: no such file or folder, nor an object in the store",
            what.display()
        )
    })?;
    let m = store.require_manifest(&hash)?;
    anyhow::ensure!(
        m.manifest.kind == Kind::Base,
        "--finetuned {}: {hash} is a {} object; a fine-tune is a model (a base object)",
        what.display(),
        m.manifest.kind.as_str()
    );
    let beside = match output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let dir = Partial::create(|| {
        tempfile::Builder::new()
            .prefix(".zdn-finetuned-")
            .tempdir_in(&beside)
    })
    .with_context(|| format!("a temporary folder in {}", beside.display()))?;
    let path = dir.path().join(if m.manifest.is_folder() {
        "model"
    } else {
        "model.safetensors"
    });
    let bar = Progress::new(m.manifest.object_len, "fine-tune", progress);
    let mut out = ObjectOutput::create(&m.manifest, &path, false)?;
    store
        .read_object(&hash, &mut out, &mut |n| bar.inc(n))
        .with_context(|| format!("reading the fine-tune {hash}"))?;
    out.commit()?;
    bar.finish();
    Ok((dir, path, m.manifest.name))
}

/// The encode report for people.
pub fn print_encode(r: &EncodeReport) {
    use std::collections::BTreeMap;
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for t in &r.tensors {
        *counts.entry(t.encoding.name()).or_default() += 1;
    }
    let counts: Vec<String> = counts.iter().map(|(k, v)| format!("{v} {k}")).collect();
    say!(
        "  delta            {:>12} bytes  {}",
        r.file_bytes,
        r.output.display()
    );
    say!("  tensors          {}", counts.join(", "));
    say!(
        "  size             {:.3} bits/param; {:.1}x smaller than the fine-tune, {:.1}x smaller than fp16",
        r.bits_per_param, r.ratio_vs_finetuned, r.ratio_vs_fp16
    );
    say!(
        "  quantized        {} of {} parameters",
        r.n_quantized,
        r.n_params
    );
    if !r.skipped_base_only.is_empty() {
        say!(
            "  skipped          base-only tensors: {}",
            r.skipped_base_only.join(", ")
        );
    }
    if !r.finetune_only.is_empty() {
        say!(
            "  stored raw       tensors the base lacks: {}",
            r.finetune_only.join(", ")
        );
    }
}

/// The folder encode report for people.
pub fn print_folder_encode(r: &FolderEncodeReport) {
    use std::collections::BTreeMap;
    use zdn_protocol::folder::delta::Source;
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for t in &r.tensors {
        *counts.entry(t.encoding.name()).or_default() += 1;
    }
    let counts: Vec<String> = counts.iter().map(|(k, v)| format!("{v} {k}")).collect();
    let files = |s: Source| r.files.iter().filter(|f| f.from == s).count();
    say!(
        "  folder delta     {:>12} bytes  {}",
        r.delta_bytes,
        r.output.display()
    );
    say!(
        "  files            {} shards, {} side files from the base, {} patched against the base's, {} carried",
        files(Source::Tensors),
        files(Source::Base),
        files(Source::Patched),
        files(Source::Carried)
    );
    say!("  tensors          {}", counts.join(", "));
    say!("  selection        {}", r.defaults.applied);
    for c in &r.classes {
        say!(
            "  {:<16} {} tensors, {} params, {} bytes",
            format!("{:?}", c.class).to_lowercase(),
            c.tensors,
            c.params,
            c.block_bytes
        );
    }
    for x in &r.exact_rows {
        say!(
            "  exact rows       {}: {} rows ({} special tokens)",
            x.name,
            x.rows,
            x.special
        );
    }
    say!(
        "  size             {:.3} bits/param; {:.1}x smaller than the fine-tune",
        r.bits_per_param,
        r.ratio_vs_finetuned
    );
    for (what, list) in [
        ("grown (new rows exact)", &r.grown),
        ("shrunk", &r.shrunk),
        ("base-only, skipped", &r.skipped_base_only),
        ("fine-tune only, exact", &r.finetune_only),
    ] {
        if !list.is_empty() {
            say!("  {what:<16} {}", list.join(", "));
        }
    }
}
