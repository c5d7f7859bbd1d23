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

/// `zdn delta apply --base DIR --delta DELTA_DIR -o OUT_DIR`: a folder delta (or a LoRA adapter
/// folder) on disk.
pub fn run_folder(
    base: &std::path::Path,
    delta: &std::path::Path,
    output: &std::path::Path,
    force: bool,
    json: bool,
) -> anyhow::Result<u8> {
    use crate::delta::folder::adapter::{apply_adapter, AdapterSource};
    use crate::delta::folder::apply::{apply_folder, DeltaSource};
    use crate::delta::folder::base::LooseBase;
    use zdn_protocol::folder::adapter::CONFIG_MEMBER;
    let base = LooseBase::open(base).with_context(|| format!("the base {}", base.display()))?;
    let r = if delta.join(CONFIG_MEMBER).is_file() {
        // A LoRA adapter: it records no base object, its pairing with the base is the check.
        let adapter = AdapterSource::loose(delta)?;
        apply_adapter(&adapter, &base, output, !json)
    } else {
        let source = DeltaSource::loose(delta)?;
        apply_folder(&source, &base, output, force, !json)
    }
    .context("delta apply failed")?;
    if json {
        say!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        if !r.base_verified {
            eprintln!("warning: the base is not the one the delta records (--force)");
        }
        say!(
            "wrote {} ({} files, {} tensors, {} bytes)",
            r.output.display(),
            r.files,
            r.tensors,
            r.bytes_written
        );
    }
    Ok(0)
}
