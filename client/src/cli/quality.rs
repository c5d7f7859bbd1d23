//! `zdn eval` (sentence-embedding quality of a delta; decoder LLMs go to [`super::decoder_eval`])
//! and `zdn delta calibrate` (scale distillation).

use std::path::PathBuf;

use crate::decoder::calibrate::DecoderCalibrateJob;
use crate::quality::calibrate::{calibrate, CalibrateJob};
use crate::quality::eval::{quality, QualityJob, QualityReport};
use anyhow::Context;
use clap::Args;

use super::decoder_eval;

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// The base model (safetensors); its config.json and tokenizer.json are read from beside it. A
    /// decoder LLM (config.json model_type llama, …) is a model folder, possibly sharded.
    #[arg(long)]
    base: PathBuf,
    /// The fine-tuned model (safetensors, or a decoder's folder): the reference compared with.
    #[arg(long)]
    finetuned: PathBuf,
    /// The .bitdelta to apply to the base.
    #[arg(long)]
    delta: PathBuf,
    /// Held-out English text (one document per line); split into sentences. For a decoder:
    /// conversations as JSON lines ({"messages": [{"role": …, "content": …}, …]}).
    #[arg(long)]
    corpus: PathBuf,
    /// config.json of the model (default: beside --base).
    #[arg(long)]
    config: Option<PathBuf>,
    /// tokenizer.json of the model (default: beside --base).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Use only the first N sentences (a decoder: conversations) of the corpus.
    #[arg(long, value_name = "N")]
    max_sentences: Option<usize>,
    /// Decoders: apply the delta to this model folder instead of --base, which stays the floor (for a
    /// fine-tune that added tokens: the base with the fine-tune's grown tensors copied in, until
    /// deltas encode grown tensors).
    #[arg(long, value_name = "DIR")]
    delta_base: Option<PathBuf>,
    /// Apply the delta even to a base other than the one it records.
    #[arg(long)]
    force: bool,
    /// Print the report as JSON (the form `zdn add --quality` records in a manifest).
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
pub struct CalibrateArgs {
    /// The base model: a safetensors file (its config.json and tokenizer.json are read from beside
    /// it), or a decoder LLM's model folder (config.json model_type llama, …).
    #[arg(long)]
    base: PathBuf,
    /// The fine-tuned model (file or folder) whose outputs the scales are fitted to: hidden states
    /// for an encoder, next-token distributions for a decoder.
    #[arg(long)]
    finetuned: PathBuf,
    /// The delta whose scales are calibrated (its signs and levels are kept): a .bitdelta, or for a
    /// decoder a folder delta (`zdn delta encode` of two model folders).
    #[arg(long)]
    delta: PathBuf,
    /// Calibration text: one document per line; for a decoder, conversations as JSON lines
    /// ({"messages": [{"role": …, "content": …}, …]}), rendered by the fine-tune's chat template.
    #[arg(long)]
    corpus: PathBuf,
    /// Never calibrate on sentences (conversations) of this file: keep the evaluation text held out.
    #[arg(long, value_name = "FILE")]
    exclude_corpus: Option<PathBuf>,
    /// Output: a .bitdelta, or for a folder delta a new folder (must not exist). Same size as the
    /// input; only scale bytes differ.
    #[arg(short, long)]
    output: PathBuf,
    #[arg(long)]
    config: Option<PathBuf>,
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Calibration sentences (decoder: conversations) drawn from the corpus [default: 256].
    #[arg(long, value_name = "N")]
    sentences: Option<usize>,
    /// Adam steps, one batch each [default: 60].
    #[arg(long, value_name = "N")]
    steps: Option<usize>,
    /// Sentences per step [default: 16; decoder: 8 conversations].
    #[arg(long, value_name = "N")]
    batch: Option<usize>,
    /// Adam step size on the relative scales s/s₀ − 1 [default: 0.01].
    #[arg(long, value_name = "RATE")]
    learning_rate: Option<f64>,
    /// Seed of the sentence draw.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Decoder: also calibrate the quantized rows of the vocabulary matrices (embed_tokens,
    /// lm_head). On the measured pair it lowers the next-token KL further but agrees on fewer
    /// predicted special tokens (docs/quality.md).
    #[arg(long)]
    vocabulary: bool,
    /// Decoder: weight of the positions where a chat special token matters (the input, the next
    /// token or the fine-tune's top-1 is one) against 1 for every other position in the mean KL
    /// the scales are fitted to [default: 1, every position alike].
    #[arg(long, value_name = "W")]
    special_weight: Option<f32>,
    #[arg(long)]
    force: bool,
    #[arg(long)]
    json: bool,
}

pub fn run_eval(a: EvalArgs) -> anyhow::Result<u8> {
    if decoder_eval::is_decoder(&a.base, a.config.as_deref()) {
        return decoder_eval::run(decoder_eval::DecoderEvalArgs {
            base: &a.base,
            finetuned: &a.finetuned,
            delta: &a.delta,
            delta_base: a.delta_base.as_deref(),
            corpus: &a.corpus,
            max_conversations: a.max_sentences,
            force: a.force,
            json: a.json,
        });
    }
    anyhow::ensure!(
        a.delta_base.is_none(),
        "--delta-base is for decoder models (config.json model_type llama, …)"
    );
    let report = quality(&QualityJob {
        base: a.base,
        finetuned: a.finetuned,
        delta: a.delta,
        corpus: a.corpus,
        config: a.config,
        tokenizer: a.tokenizer,
        max_sentences: a.max_sentences,
        force: a.force,
    })
    .context("eval failed")?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_quality(&report);
    }
    Ok(0)
}

fn print_quality(r: &QualityReport) {
    println!(
        "{} sentences of {} (BLAKE3 {})",
        r.sentences,
        r.corpus,
        &r.corpus_blake3.to_hex()[..16]
    );
    println!("cosine of sentence embeddings to the fine-tune's:");
    println!("                    mean      min       p5");
    for (label, s) in [("base + delta", &r.delta), ("base alone", &r.base)] {
        println!("  {label:<14} {:.6} {:.6} {:.6}", s.mean, s.min, s.p5);
    }
    let ratio = r.finetuned_bytes as f64 / r.delta_bytes.max(1) as f64;
    println!(
        "delta {} bytes = 1/{ratio:.1} of the fine-tune ({} bytes)",
        r.delta_bytes, r.finetuned_bytes
    );
}

pub fn run_calibrate(a: CalibrateArgs) -> anyhow::Result<u8> {
    let decoder = decoder_eval::is_decoder(&a.base, a.config.as_deref());
    let steps = a.steps.unwrap_or(CalibrateJob::DEFAULT_STEPS);
    let sentences = a.sentences.unwrap_or(CalibrateJob::DEFAULT_SENTENCES);
    let batch = a.batch.unwrap_or(if decoder {
        DecoderCalibrateJob::DEFAULT_BATCH
    } else {
        CalibrateJob::DEFAULT_BATCH
    });
    let learning_rate = a
        .learning_rate
        .unwrap_or(CalibrateJob::DEFAULT_LEARNING_RATE);
    anyhow::ensure!(steps > 0, "--steps must be at least 1");
    anyhow::ensure!(sentences > 0, "--sentences must be at least 1");
    anyhow::ensure!(batch > 0, "--batch must be at least 1");
    anyhow::ensure!(
        learning_rate.is_finite() && learning_rate > 0.0 && learning_rate < 1.0,
        "--learning-rate must be in (0, 1), got {learning_rate}"
    );
    anyhow::ensure!(
        decoder || !a.vocabulary,
        "--vocabulary is for decoder folder deltas"
    );
    anyhow::ensure!(
        decoder || a.special_weight.is_none(),
        "--special-weight is for decoder folder deltas"
    );
    let special_weight = a.special_weight.unwrap_or(1.0);
    anyhow::ensure!(
        special_weight.is_finite() && (1.0..=10_000.0).contains(&special_weight),
        "--special-weight must be between 1 and 10000, got {special_weight}"
    );
    if decoder {
        anyhow::ensure!(
            a.config.is_none() && a.tokenizer.is_none(),
            "--config and --tokenizer are read from the decoder's model folders"
        );
        return decoder_eval::run_calibrate(
            DecoderCalibrateJob {
                base: decoder_eval::folder(&a.base),
                finetuned: decoder_eval::folder(&a.finetuned),
                delta: a.delta,
                corpus: a.corpus,
                exclude_corpus: a.exclude_corpus,
                output: a.output,
                conversations: sentences,
                steps,
                batch,
                max_tokens: crate::decoder::eval::DEFAULT_MAX_TOKENS,
                learning_rate,
                seed: a.seed,
                vocabulary: a.vocabulary,
                special_weight,
                force: a.force,
                progress: !a.json,
            },
            a.json,
        );
    }
    let report = calibrate(&CalibrateJob {
        base: a.base,
        finetuned: a.finetuned,
        delta: a.delta,
        corpus: a.corpus,
        output: a.output,
        config: a.config,
        tokenizer: a.tokenizer,
        exclude_corpus: a.exclude_corpus,
        sentences,
        steps,
        batch,
        learning_rate,
        seed: a.seed,
        force: a.force,
        progress: !a.json,
    })
    .context("delta calibrate failed")?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "wrote {}: {} scales of {} tensors fitted on {} sentences in {} steps ({:.0} s); \
             hidden-state MSE {:.3e} → {:.3e}; largest scale change {:.1} %",
            report.output.display(),
            report.scales,
            report.tensors,
            report.sentences,
            report.steps,
            report.seconds,
            report.loss_first,
            report.loss_last,
            100.0 * report.max_relative_change
        );
    }
    Ok(0)
}
