//! `zdn delta apply`: base + `.bitdelta` → the fine-tuned model as safetensors, on the CPU or a GPU.

use anyhow::Context;

use crate::cli::output::say;
use crate::delta::apply::ApplyJob;
use crate::device::compute::ComputeDevice;
use crate::device::on_device::apply_on;

pub fn run(job: ApplyJob, device: ComputeDevice, json: bool) -> anyhow::Result<u8> {
    let report = apply_on(&job, device).context("delta apply failed")?;
    if json {
        say!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        let r = &report.apply;
        if !r.base_verified {
            eprintln!("warning: the base was not verified against the delta's record");
        }
        say!(
            "wrote {} ({} tensors, {} bytes)",
            r.output.display(),
            r.tensors,
            r.bytes_written
        );
        if let Some(name) = &report.device_name {
            say!(
                "{} ({name}): {} quantized tensors reconstructed on the GPU",
                report.device,
                report.tensors_on_device
            );
        }
    }
    Ok(0)
}
