//! `zdn delta apply`: base + `.bitdelta` → the fine-tuned model as safetensors.

use std::path::PathBuf;

use anyhow::Context;

use crate::cli::output::say;
use crate::delta::apply::{apply, ApplyJob};

pub fn run(
    base: PathBuf,
    delta: PathBuf,
    output: PathBuf,
    force: bool,
    json: bool,
) -> anyhow::Result<u8> {
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
    Ok(0)
}
