//! `zdn delta …`: `.bitdelta` files offline.

pub mod apply;
pub mod encode;
pub mod eval;
pub mod inspect;

use std::path::PathBuf;

use clap::Subcommand;

use crate::cli::args::Location;
use crate::cli::{quality, soup};
use crate::delta::apply::ApplyJob;
use crate::device::compute::ComputeDevice;

#[derive(Subcommand, Debug)]
pub enum DeltaCommand {
    /// Encode the difference between a base and its fine-tune as a .bitdelta file, or between two model folders as a folder delta (docs/spec/folder-delta.md).
    ///
    /// By default every 2-D weight matrix is stored as signs + one scale per tensor (1 bit/weight);
    /// embedding matrices keep the base's values (see --embeddings); other tensors (norms, biases,
    /// integer tensors) are stored losslessly or marked unchanged. For folders, tensors are paired
    /// by name across any two shard layouts, new vocabulary rows are stored exactly, and side files
    /// (config, tokenizer, chat template) that differ from the base's travel exactly. Examples:
    ///
    ///   zdn delta encode --base base.safetensors --finetuned ft.safetensors -o ft.bitdelta --scale row
    ///   zdn delta encode --base Llama-2-7b-hf/ --finetuned Llama-2-7b-chat-hf/ -o chat.delta/
    #[command(verbatim_doc_comment)]
    Encode(encode::EncodeArgs),
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
    ///
    /// A folder delta (made from two model folders) rebuilds the fine-tune's folder: --base is the
    /// base's folder, --output a new or empty folder. `zdn apply OBJ -o DIR` does the same from the
    /// store.
    Apply {
        /// The base model: a safetensors file, or a model folder for a folder delta.
        #[arg(long)]
        base: PathBuf,
        /// The .bitdelta file, or a folder delta; when no such file exists, a soup recipe in the
        /// store (hash, prefix or name), built from its component deltas there.
        #[arg(long)]
        delta: PathBuf,
        /// Output safetensors file (written to a temporary file and renamed when complete); for a
        /// folder delta, the folder to write.
        #[arg(short, long)]
        output: PathBuf,
        /// Apply even if the base's BLAKE3 is not the one the delta was made from.
        #[arg(long)]
        force: bool,
        /// Where to reconstruct: cpu, or cuda:N (NVIDIA GPU N, in a zdn built with --features
        /// cuda). The output is the same bytes.
        #[arg(long, default_value = "cpu", value_name = "cpu|cuda:N")]
        device: ComputeDevice,
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
    /// Fit a delta's scales so the applied model matches the fine-tune on a calibration corpus.
    ///
    /// BitDelta's scale distillation (signs kept, same size): an encoder's hidden states, or a
    /// decoder LLM's next-token distributions (KL) on chat conversations. Examples:
    ///
    ///   zdn delta calibrate --base base/model.safetensors --finetuned ft/model.safetensors \
    ///       --delta ft.bitdelta --corpus background.txt --exclude-corpus heldout.txt -o ft.cal.bitdelta
    ///   zdn delta calibrate --base llama/ --finetuned llama-chat/ --delta chat.delta/ \
    ///       --corpus calibration.jsonl --exclude-corpus heldout.jsonl -o chat.cal.delta/
    #[command(verbatim_doc_comment)]
    Calibrate(quality::CalibrateArgs),
}

pub fn run(loc: &Location, c: DeltaCommand) -> anyhow::Result<u8> {
    match c {
        DeltaCommand::Encode(a) => encode::run(loc, a),
        DeltaCommand::Inspect { delta, json } => inspect::run(loc, delta, json),
        // Not a file: a soup recipe in the store (docs/soup.md).
        DeltaCommand::Apply {
            base,
            delta,
            output,
            force,
            device,
            json,
        } if !delta.exists() => {
            anyhow::ensure!(
                device == ComputeDevice::Cpu,
                "--device {device}: {} is not a file, and a soup recipe from the store is applied \
                 on the CPU only (build it into a file with `zdn soup mix -o FILE`, then apply that \
                 file with --device)",
                delta.display()
            );
            let object = delta.to_string_lossy();
            soup::apply_recipe(loc, &object, base, output, force, json)
        }
        DeltaCommand::Apply {
            base,
            delta,
            output,
            force,
            device,
            json,
        } if delta.is_dir() => {
            anyhow::ensure!(
                device == ComputeDevice::Cpu,
                "--device {device}: a folder delta is applied on the CPU (the output is the same bytes)"
            );
            apply::run_folder(&base, &delta, &output, force, json)
        }
        DeltaCommand::Apply {
            base,
            delta,
            output,
            force,
            device,
            json,
        } => apply::run(
            ApplyJob {
                base,
                delta,
                output,
                force,
                progress: !json,
            },
            device,
            json,
        ),
        DeltaCommand::Eval {
            base,
            finetuned,
            delta,
            json,
        } => eval::run(base, finetuned, delta, json),
        DeltaCommand::Calibrate(a) => quality::run_calibrate(a),
    }
}
