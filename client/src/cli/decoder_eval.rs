//! `zdn eval` for decoder LLMs ([`super::quality::run_eval`] comes here when the model's config.json
//! names a decoder family): the measure is [`crate::decoder::eval`] (next-token KL, perplexity,
//! special-token agreement).

use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::cli::output::say;
use crate::decoder::calibrate::{calibrate, DecoderCalibrateJob};
use crate::decoder::config::{is_decoder_model_type, model_type_of};
use crate::decoder::eval::{
    evaluate, AppliedWeights, DecoderEvalJob, DecoderQualityReport, DEFAULT_BATCH,
    DEFAULT_MAX_TOKENS,
};

/// The model folder of `path`: itself if it is a folder, else the folder the file is in.
pub fn folder(path: &Path) -> PathBuf {
    if path.is_dir() {
        path.to_owned()
    } else {
        path.parent().unwrap_or_else(|| Path::new(".")).to_owned()
    }
}

/// Whether `zdn eval --base BASE [--config CONFIG]` is about a decoder.
pub fn is_decoder(base: &Path, config: Option<&Path>) -> bool {
    let cfg = config.map_or_else(|| folder(base).join("config.json"), Path::to_owned);
    model_type_of(&cfg).is_some_and(|t| is_decoder_model_type(&t))
}

/// The options of `zdn eval` that apply to decoders.
#[derive(Debug)]
pub struct DecoderEvalArgs<'a> {
    pub base: &'a Path,
    pub finetuned: &'a Path,
    pub delta: &'a Path,
    /// The model the delta is applied to, when not the base (see [`AppliedWeights::Delta`]).
    pub delta_base: Option<&'a Path>,
    pub corpus: &'a Path,
    pub max_conversations: Option<usize>,
    pub force: bool,
    pub json: bool,
}

pub fn run(a: DecoderEvalArgs<'_>) -> anyhow::Result<u8> {
    let report = evaluate(&DecoderEvalJob {
        base: folder(a.base),
        finetuned: folder(a.finetuned),
        applied: if a.delta.is_dir() {
            AppliedWeights::FolderDelta(a.delta.to_owned())
        } else {
            AppliedWeights::Delta {
                delta: a.delta.to_owned(),
                onto: folder(a.delta_base.unwrap_or(a.base)),
            }
        },
        corpus: a.corpus.to_owned(),
        max_conversations: a.max_conversations,
        max_tokens: DEFAULT_MAX_TOKENS,
        batch: DEFAULT_BATCH,
        force: a.force,
    })
    .context("eval failed")?;
    if a.json {
        say!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    Ok(0)
}

fn print_report(r: &DecoderQualityReport) {
    say!(
        "{} conversations of {} (BLAKE3 {}), {} next-token predictions{}",
        r.conversations,
        r.corpus,
        &r.corpus_blake3.to_hex()[..16],
        r.positions,
        if r.truncated > 0 {
            format!(", {} cut at {} tokens", r.truncated, r.max_tokens)
        } else {
            String::new()
        }
    );
    say!("                  KL(fine-tune ‖ ·)  perplexity  top-1 agreement  special-token top-1");
    let p = &r.common_perplexity;
    let st = &r.special_tokens;
    say!(
        "  fine-tune                        -  {:>10.3}                -  {:>6.1} % correct",
        p.finetuned,
        100.0 * st.finetuned_correct
    );
    say!(
        "  base + delta      {:>15.4}  {:>10.3}  {:>13.1} %  {:>6.1} %",
        r.kl_finetuned_applied,
        p.applied,
        100.0 * r.top1_agreement.applied,
        100.0 * st.applied
    );
    say!(
        "  base alone        {:>15.4}  {:>10.3}  {:>13.1} %  {:>6.1} %",
        r.kl_finetuned_base,
        p.base,
        100.0 * r.top1_agreement.base,
        100.0 * st.base
    );
    say!(
        "perplexities on the {} positions whose next token the base has; the delta keeps {:.1} % of \
         the base → fine-tune perplexity gain ({:.1} % in cross-entropy)",
        r.common_positions,
        100.0 * r.gain_kept,
        100.0 * r.log_gain_kept
    );
    for (label, k) in [
        ("after a special token", &st.after_special),
        ("special token next", &st.special_next),
        (
            "fine-tune predicts a special token",
            &st.finetuned_predicts_special,
        ),
    ] {
        say!(
            "  special-token top-1, {label}: {} positions, base + delta {:.1} %, base {:.1} %",
            k.positions,
            100.0 * k.applied,
            100.0 * k.base
        );
    }
    if let Some(d) = r.delta_bytes {
        let ratio = r.finetuned_bytes as f64 / d.max(1) as f64;
        say!(
            "delta {d} bytes = 1/{ratio:.1} of the fine-tune's weights ({} bytes)",
            r.finetuned_bytes
        );
    }
}

/// `zdn delta calibrate` of a folder delta of a decoder.
pub fn run_calibrate(job: DecoderCalibrateJob, json: bool) -> anyhow::Result<u8> {
    let r = calibrate(&job).context("delta calibrate failed")?;
    if json {
        say!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        say!(
            "wrote {}: {} scales of {} projections fitted on {} conversations in {} steps \
             ({:.0} s); next-token KL on the calibration text {:.4} → {:.4}; largest scale \
             change {:.1} %",
            r.output.display(),
            r.scales,
            r.tensors,
            r.conversations,
            r.steps,
            r.seconds,
            r.kl_first,
            r.kl_last,
            100.0 * r.max_relative_change
        );
    }
    Ok(0)
}
