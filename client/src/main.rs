//! The `zdn` command line.

mod decoder_eval_cli;
mod demo;
mod fetch_report;
mod node_cli;
mod node_key;
mod quality_cli;
mod soup_cli;
mod store_cli;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use zdn::delta_apply::{apply, ApplyJob};
use zdn::delta_encode::{encode, EncodeJob, EncodeReport};
use zdn::delta_eval::{eval, EvalJob, EvalReport};
use zdn::delta_inspect::{inspect, InspectReport};
use zdn_protocol::bitdelta::{
    EmbeddingPolicy, EncodeOptions, Granularity, QuantSpec, Selection, DEFAULT_ZSTD_LEVEL,
};
use zdn_protocol::glob::Glob;
use zdn_protocol::manifest::Kind;

/// zdn moves fine-tuned models as BitDelta files: one sign bit per weight plus a few scales, about
/// 1/16 of the fp16 model, verified by BLAKE3 and reconstructed bit-exactly.
#[derive(Parser, Debug)]
#[command(name = "zdn", version, about, long_about = None, propagate_version = true)]
struct Cli {
    #[command(flatten)]
    location: store_cli::Location,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Work with .bitdelta files offline: encode, inspect, apply, eval.
    #[command(subcommand)]
    Delta(DeltaCommand),
    /// Run the main job end to end on a built-in default: install the real MiniLM base + fine-tune
    /// pair (or generate one), encode its delta, publish it in one store, carry it to another,
    /// fetch it verified, apply it, and report size and error.
    Demo(DemoArgs),
    #[command(flatten)]
    Store(store_cli::StoreCommand),
    /// Run a peer node (see `zdn node run --help`).
    #[command(subcommand)]
    Node(node_cli::NodeCommand),
    /// Fetch an object by manifest hash from peers, verify every byte, store it (and -o a file).
    ///
    /// Uses the node running on this store if there is one, else starts one just for this fetch.
    /// Interrupted fetches resume where they stopped. Exit status: 0 done, 2 not found on any
    /// peer, 3 verification failed, 4 interrupted or incomplete (run again to resume), 5 untrusted
    /// publisher or missing base (with --no-base), 1 other errors. Example:
    ///
    ///   zdn fetch 3f1c...e9 --peer /ip4/198.51.100.7/tcp/4801/p2p/12D3KooW... -o ft.bitdelta
    #[command(verbatim_doc_comment)]
    Fetch(node_cli::FetchArgs),
    /// What the running node has, who it is connected to, transfers in progress (JSON).
    Status {
        #[arg(long)]
        json: bool,
    },
    /// The peers the running node is connected to.
    Peers {
        #[arg(long)]
        json: bool,
    },
    /// Announce an object (hash, prefix or name) by gossip through the running node.
    Announce { object: String },
    /// DeltaSoup: mix deltas of one base into a recipe, or aggregate contributed deltas robustly.
    #[command(subcommand)]
    Soup(soup_cli::SoupCommand),
    /// Measure a delta on a real model: cosine of the delta-applied model's sentence embeddings to
    /// the fine-tune's on held-out text, with the base's as the floor (BERT encoders on candle).
    ///
    ///   zdn eval --base base/model.safetensors --finetuned ft/model.safetensors \
    ///            --delta ft.bitdelta --corpus lee.cor
    #[command(verbatim_doc_comment)]
    Eval(quality_cli::EvalArgs),
}

#[derive(Subcommand, Debug)]
enum DeltaCommand {
    /// Encode the difference between a base and its fine-tune as a .bitdelta file.
    ///
    /// By default every 2-D weight matrix is stored as signs + one scale per tensor (1 bit/weight);
    /// embedding matrices keep the base's values (see --embeddings); other tensors (norms, biases,
    /// integer tensors) are stored losslessly or marked unchanged. Example:
    ///
    ///   zdn delta encode --base base.safetensors --finetuned ft.safetensors -o ft.bitdelta --scale row
    #[command(verbatim_doc_comment)]
    Encode(EncodeArgs),
    /// Show the tensors, encodings, sizes and compression ratios of a .bitdelta file (or what a
    /// soup recipe mixes).
    Inspect {
        /// The .bitdelta file, or a delta in the store (hash, prefix or name): then the quality
        /// report its manifest carries is shown too. A soup (in the store, or a recipe file) shows
        /// its base, quantization and weighted components.
        delta: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Rebuild the fine-tuned model: base + delta → safetensors. Bit-exact and deterministic.
    Apply {
        #[arg(long)]
        base: PathBuf,
        /// The .bitdelta file; when no such file exists, a soup recipe in the store (hash, prefix
        /// or name), built from its component deltas there.
        #[arg(long)]
        delta: PathBuf,
        /// Output safetensors file (written to a temporary file and renamed when complete).
        #[arg(short, long)]
        output: PathBuf,
        /// Apply even if the base's BLAKE3 is not the one the delta was made from.
        #[arg(long)]
        force: bool,
        #[arg(long)]
        json: bool,
    },
    /// Measure how far base + delta is from the fine-tune: relative L2 error per tensor and in total.
    Eval {
        #[arg(long)]
        base: PathBuf,
        #[arg(long)]
        finetuned: PathBuf,
        #[arg(long)]
        delta: PathBuf,
        /// Print JSON (every tensor) instead of a summary.
        #[arg(long)]
        json: bool,
    },
    /// Fit a delta's scales so the applied model's hidden states match the fine-tune's on a
    /// calibration corpus (BitDelta's scale distillation; signs kept, same file size). Example:
    ///
    ///   zdn delta calibrate --base base/model.safetensors --finetuned ft/model.safetensors \
    ///       --delta ft.bitdelta --corpus background.txt --exclude-corpus heldout.txt -o ft.cal.bitdelta
    #[command(verbatim_doc_comment)]
    Calibrate(quality_cli::CalibrateArgs),
}

#[derive(Args, Debug)]
struct EncodeArgs {
    /// The base model (safetensors).
    #[arg(long)]
    base: PathBuf,
    /// The fine-tuned model (safetensors), same tensor names and shapes as the base.
    #[arg(long)]
    finetuned: PathBuf,
    /// Output .bitdelta file.
    #[arg(short, long)]
    output: PathBuf,
    /// Bits per quantized weight: 1 (signs), 2 or 4.
    #[arg(long, default_value_t = 1, value_parser = parse_bits)]
    bits: u32,
    /// Elements sharing one scale: tensor, row, or group:N (N consecutive elements of a row).
    #[arg(long, default_value = "tensor")]
    scale: Granularity,
    /// Clip deltas at K standard deviations before computing scales (off by default).
    #[arg(long, value_name = "K")]
    clip: Option<f32>,
    /// Quantize tensors whose name matches (glob: * and ?); repeatable.
    #[arg(long, value_name = "GLOB")]
    include: Vec<String>,
    /// Store tensors whose name matches losslessly (beats --include); repeatable.
    #[arg(long, value_name = "GLOB")]
    exclude: Vec<String>,
    /// Embedding matrices: keep the base's (base), store exactly (exact), or quantize.
    #[arg(long, default_value = "base")]
    embeddings: EmbeddingPolicy,
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

#[derive(Args, Debug)]
struct DemoArgs {
    /// Working directory for the models and outputs.
    #[arg(long, default_value = ".work/demo")]
    dir: PathBuf,
    /// Use a generated model instead of installing the real MiniLM pair.
    #[arg(long)]
    synthetic: bool,
    #[arg(long)]
    json: bool,
}

/// Prints a line to stdout; a closed pipe (`zdn … | head`) ends the program quietly instead of panicking.
macro_rules! say {
    ($($t:tt)*) => { emit(&format!($($t)*)) };
}

fn emit(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = writeln!(out, "{line}") {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
    }
}

fn parse_bits(s: &str) -> Result<u32, String> {
    match s {
        "1" => Ok(1),
        "2" => Ok(2),
        "4" => Ok(4),
        _ => Err(format!("bits must be 1, 2 or 4, got {s:?}")),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(0) => ExitCode::SUCCESS,
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<u8> {
    match cli.command {
        Command::Store(c) => return store_cli::run(&cli.location, c),
        Command::Node(c) => return node_cli::run_node(&cli.location, c),
        Command::Fetch(a) => return node_cli::run_fetch(&cli.location, a),
        Command::Status { json } => return node_cli::run_status(&cli.location, json, false),
        Command::Peers { json } => return node_cli::run_status(&cli.location, json, true),
        Command::Announce { object } => return node_cli::run_announce(&cli.location, object),
        Command::Soup(c) => return soup_cli::run(&cli.location, c),
        Command::Delta(DeltaCommand::Apply {
            base,
            delta,
            output,
            force,
            json,
        }) if !delta.exists() => {
            // Not a file: a soup recipe in the store (docs/soup.md).
            let object = delta.to_string_lossy();
            return soup_cli::apply_recipe(&cli.location, &object, base, output, force, json);
        }
        Command::Eval(a) => return quality_cli::run_eval(a),
        Command::Delta(DeltaCommand::Calibrate(a)) => return quality_cli::run_calibrate(a),
        Command::Delta(DeltaCommand::Encode(a)) => {
            if let Some(k) = a.clip {
                anyhow::ensure!(
                    k.is_finite() && k > 0.0,
                    "--clip must be a positive number of standard deviations, got {k}"
                );
            }
            let job = EncodeJob {
                base: a.base,
                finetuned: a.finetuned,
                output: a.output,
                options: EncodeOptions {
                    spec: QuantSpec {
                        bits: a.bits,
                        granularity: a.scale,
                        clip_sigma: a.clip,
                    },
                    zstd_level: a.zstd_level,
                },
                selection: Selection {
                    include: a.include.iter().map(|g| Glob::new(g)).collect(),
                    exclude: a.exclude.iter().map(|g| Glob::new(g)).collect(),
                    embeddings: a.embeddings,
                },
                model_name: a.name,
                progress: !a.json,
            };
            let report = encode(&job).context("delta encode failed")?;
            if a.json {
                say!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print_encode(&report);
            }
        }
        Command::Delta(DeltaCommand::Inspect { delta, json }) => {
            // A file, else an object of the store (whose manifest may carry a quality report).
            let looks_like_path = delta.components().count() > 1
                || delta.extension().is_some_and(|e| e == "bitdelta");
            let (path, quality, _tmp) = if delta.exists() || looks_like_path {
                if is_recipe_file(&delta) {
                    let bytes = std::fs::read(&delta)
                        .with_context(|| format!("reading {}", delta.display()))?;
                    soup_cli::inspect_recipe(&cli.location, &bytes, None, json)?;
                    return Ok(0);
                }
                (delta, None, None)
            } else {
                let (tmp, m) = store_cli::object_to_temp(&cli.location, &delta.to_string_lossy())
                    .with_context(|| {
                    format!(
                        "{} is neither a file nor an object of the store",
                        delta.display()
                    )
                })?;
                if m.manifest.kind == Kind::Soup {
                    let bytes = std::fs::read(tmp.path())?;
                    soup_cli::inspect_recipe(&cli.location, &bytes, Some(&m), json)?;
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
                if let Some(q) = quality {
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
        }
        Command::Delta(DeltaCommand::Apply {
            base,
            delta,
            output,
            force,
            json,
        }) => {
            let report = apply(&ApplyJob {
                base,
                delta,
                output,
                force,
                progress: !json,
            })
            .context("delta apply failed")?;
            if json {
                say!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                if !report.base_verified {
                    eprintln!("warning: the base was not verified against the delta's record");
                }
                say!(
                    "wrote {} ({} tensors, {} bytes)",
                    report.output.display(),
                    report.tensors,
                    report.bytes_written
                );
            }
        }
        Command::Delta(DeltaCommand::Eval {
            base,
            finetuned,
            delta,
            json,
        }) => {
            let report = eval(&EvalJob {
                base,
                finetuned,
                delta,
                progress: !json,
            })
            .context("delta eval failed")?;
            if json {
                say!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print_eval(&report);
            }
        }
        Command::Demo(a) => run_demo(&a)?,
    }
    Ok(0)
}

fn run_demo(a: &DemoArgs) -> anyhow::Result<()> {
    let say = |s: &str| {
        if !a.json {
            say!("{s}");
        }
    };
    say("zdn demo: encode a fine-tune as a BitDelta, apply it to the base, measure the result");
    let pair = demo::obtain_pair(&a.dir, a.synthetic)?;
    if let Some(why) = &pair.fallback_reason {
        say(&format!("  using a generated model ({why})"));
    } else {
        say("  model: all-MiniLM-L6-v2 base + a real fine-tune of it (from PyPI packages)");
    }
    let report = demo::run(&a.dir, &pair, !a.json)?;
    if a.json {
        say!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    let fine_bytes = std::fs::metadata(&pair.finetuned)
        .map(|m| m.len())
        .unwrap_or(0);
    say!(
        "  fine-tune        {:>12} bytes  {}",
        fine_bytes,
        pair.finetuned.display()
    );
    print_encode(&report.encode);
    say!(
        "  applied          {} ({} tensors); deterministic: {}",
        report.apply.output.display(),
        report.apply.tensors,
        if report.deterministic {
            "yes (two applies, same BLAKE3)"
        } else {
            "NO"
        }
    );
    print_eval(&report.eval);
    match (&report.quality, &report.quality_skipped) {
        (Some(q), _) => say!(
            "  quality          sentence-embedding cosine to the fine-tune on {} held-out sentences of {}: mean {:.5}, min {:.5} (base alone: mean {:.5}, min {:.5})",
            q.sentences, q.corpus, q.delta.mean, q.delta.min, q.base.mean, q.base.min
        ),
        (None, Some(why)) => say!("  quality          not measured: {why}"),
        (None, None) => {}
    }
    let p = &report.publish;
    say!(
        "  published        base {} and delta {} in a datacenter store, signed by {}",
        &p.base_manifest.to_hex()[..16],
        &p.delta_manifest.to_hex()[..16],
        &p.publisher.to_hex()[..16]
    );
    say!(
        "  carried          the base as a bundle file (a USB disk) to a field store trusting only that key; bundles: {} bytes (base + delta), {} bytes (delta only)",
        p.bundle_bytes,
        p.delta_bundle_bytes
    );
    say!("  link             {}", p.link);
    say!(
        "  network          the field node fetched the delta from the datacenter node over {}: {} chunk bytes in {:.1} s = {:.0} kbit/s, {:.0}% of the link{}",
        p.network_path,
        p.network_bytes,
        p.network_seconds,
        p.network_bytes as f64 * 8.0 / 1000.0 / p.network_seconds.max(1e-9),
        100.0 * p.network_bytes as f64 / (p.link_rate as f64 * p.network_seconds.max(1e-9)),
        if p.link_ip_bytes_down > 0 {
            format!(
                "; the link carried {} IP bytes down and {} up (headers, handshakes, requests included)",
                p.link_ip_bytes_down, p.link_ip_bytes_up
            )
        } else {
            String::new()
        }
    );
    say!(
        "  verified         every chunk and object hash checked; field apply identical to the datacenter's: {}",
        if p.verified { "yes" } else { "NO" }
    );
    anyhow::ensure!(report.deterministic, "apply was not deterministic");
    anyhow::ensure!(
        p.verified,
        "the field side's result differs from the datacenter's"
    );
    Ok(())
}

fn print_encode(r: &EncodeReport) {
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

fn print_eval(r: &EvalReport) {
    say!(
        "  weight error     ‖R−F‖/‖F‖ = {:.3e} (base alone: {:.3e}); share of the fine-tune's change not captured: {:.3} ({:.3} on quantized tensors)",
        r.rel_error, r.base_rel_error, r.rel_delta_error, r.quantized_rel_delta_error
    );
    say!(
        "  exact tensors    {} of {} reconstructed bit-exactly",
        r.exact_tensors,
        r.tensors.len()
    );
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

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// clap's own consistency checks (duplicate names, bad defaults) over every subcommand.
    #[test]
    fn cli_is_well_formed() {
        super::Cli::command().debug_assert();
    }
}
