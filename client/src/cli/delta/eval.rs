//! `zdn delta eval`: the weight error of base + delta against the fine-tune.

use std::path::PathBuf;

use anyhow::Context;

use crate::cli::output::say;
use crate::delta::eval::{eval, EvalJob, EvalReport};

pub fn run(base: PathBuf, finetuned: PathBuf, delta: PathBuf, json: bool) -> anyhow::Result<u8> {
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
    Ok(0)
}

/// The weight error for people.
pub fn print_eval(r: &EvalReport) {
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
