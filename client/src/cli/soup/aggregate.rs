//! `zdn soup aggregate`: robust aggregation of `.bitdelta` files of one base.

use std::path::PathBuf;

use crate::soup::combine::{combine, CombineInput, CombineJob};
use crate::soup::method::Method;
use anyhow::Context;
use clap::Args;
use zdn_protocol::bitdelta::{EncodeOptions, Granularity, QuantSpec, DEFAULT_ZSTD_LEVEL};

use super::summary;
use crate::cli::args::parse_bits;
use crate::cli::output::say;

#[derive(Args, Debug)]
pub struct AggregateArgs {
    /// mean | trimmed:BETA | median | krum:F | multikrum:F:M | signvote
    #[arg(long)]
    method: Method,
    /// The base model (safetensors) every input was made against.
    #[arg(long)]
    base: PathBuf,
    /// Output .bitdelta (written to a temporary file and renamed when complete).
    #[arg(short, long)]
    output: PathBuf,
    /// The input deltas (.bitdelta files of the same base, same tensors).
    #[arg(value_name = "IN.bitdelta")]
    inputs: Vec<PathBuf>,
    /// Bits per weight of the output's quantized tensors: 1, 2 or 4.
    #[arg(long, default_value_t = 1, value_parser = parse_bits)]
    bits: u32,
    /// Scale granularity of the output's quantized tensors: tensor, row or group:N.
    #[arg(long, default_value = "row")]
    scale: Granularity,
    /// Model name recorded in the output (default: aggregate).
    #[arg(long)]
    name: Option<String>,
    /// Aggregate even if the base's BLAKE3 is not the one the inputs record.
    #[arg(long)]
    force: bool,
    #[arg(long)]
    json: bool,
}

pub(super) fn aggregate(a: AggregateArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        !a.inputs.is_empty(),
        "no input deltas: soup aggregate needs at least one IN.bitdelta"
    );
    let inputs = a
        .inputs
        .iter()
        .map(|p| CombineInput {
            path: p.clone(),
            label: p.display().to_string(),
        })
        .collect();
    let report = combine(&CombineJob {
        base: a.base,
        inputs,
        method: a.method,
        options: EncodeOptions {
            spec: QuantSpec {
                bits: a.bits,
                granularity: a.scale,
                clip_sigma: None,
            },
            zstd_level: DEFAULT_ZSTD_LEVEL,
        },
        model_name: a.name.unwrap_or_else(|| "aggregate".into()),
        output: a.output,
        verify_base: !a.force,
        progress: !a.json,
    })
    .context("soup aggregate failed (no output written)")?;
    if a.json {
        say!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        say!("{}", summary(&report));
    }
    Ok(())
}
