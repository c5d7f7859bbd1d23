//! `zdn soup mix` (a signed soup recipe in the store, optionally built: into one `.bitdelta`, or
//! into the mixed model folder), `zdn soup aggregate` (robust aggregation of `.bitdelta` files),
//! and the recipe's other readers: `zdn delta apply` of a soup from the store, `zdn delta inspect`
//! of a recipe. docs/soup.md describes them.

mod aggregate;
mod mix;
mod recipe;

use clap::Subcommand;

use crate::cli::args::Location;
use crate::soup::combine::CombineReport;
pub use aggregate::AggregateArgs;
pub use mix::MixArgs;
pub use recipe::{apply_recipe, inspect_recipe};

#[derive(Subcommand, Debug)]
pub enum SoupCommand {
    /// Mix deltas of one base with weights into a soup recipe in the store; prints its hash.
    ///
    /// The recipe is a signed `soup` object of a few hundred bytes. The components are objects in
    /// the store (hash, prefix or name), all deltas of the same base:
    ///  - single-file deltas of a single-file base: the soup is re-quantized (--bits, --scale);
    ///    -o builds it into one .bitdelta; `zdn delta apply --delta SOUP` applies it;
    ///  - folder deltas, or LoRA adapters, of a model folder: the soup is mixed exactly;
    ///    -o writes the mixed model folder; `zdn apply SOUP -o DIR` does the same later.
    ///
    /// A node that has the components builds the soup from the recipe alone. Examples:
    ///
    ///   zdn soup mix --delta ft-a:0.6 --delta ft-b:0.4 --name ab -o ab.bitdelta
    ///   zdn soup mix --delta chat:0.5 --delta code:0.5 --name chat-code -o chat-code/
    #[command(verbatim_doc_comment)]
    Mix(MixArgs),
    /// Aggregate contributed deltas (.bitdelta files of one base) into one, robustly.
    ///
    /// Tensor by tensor, each input's delta is reconstructed in f32, aggregated and re-encoded
    /// (1-bit row scales by default). Methods: mean, trimmed:BETA (drops ⌊BETA·n⌋ values at each end; tolerates a fraction ≤ BETA
    /// of attackers), median (< 50 %), krum:F and multikrum:F:M (F attackers, needs n > 2F + 2),
    /// signvote (majority sign × median scale). Example:
    ///
    ///   zdn soup aggregate --method trimmed:0.3 --base base.safetensors -o agg.bitdelta in/*.bitdelta
    #[command(verbatim_doc_comment)]
    Aggregate(AggregateArgs),
}

/// Runs one soup command. Returns the process exit code.
pub fn run(loc: &Location, cmd: SoupCommand) -> anyhow::Result<u8> {
    match cmd {
        SoupCommand::Mix(a) => mix::mix(loc, a)?,
        SoupCommand::Aggregate(a) => aggregate::aggregate(a)?,
    }
    Ok(0)
}

pub(super) fn summary(r: &CombineReport) -> String {
    let mut s = format!(
        "wrote {} ({} bytes, {:.3} bits/param): {} over {} inputs; {} tensors: {} quantized, {} lossless, {} unchanged",
        r.output.display(),
        r.file_bytes,
        r.bits_per_param,
        r.method,
        r.inputs,
        r.tensors,
        r.quantized,
        r.lossless,
        r.unchanged
    );
    if let Some(sel) = &r.selected {
        s.push_str(&format!("; selected inputs {sel:?}"));
    }
    s
}
