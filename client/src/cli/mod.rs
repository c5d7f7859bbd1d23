//! The `zdn` command line: parsing, and one file per command that calls the library and prints.
//!
//! Doc comments here are also `--help` texts, which name placeholders the usual way (`<home>`,
//! `/p2p/<peer id>`): rustdoc would read those as HTML tags.
#![allow(rustdoc::invalid_html_tags)]

pub mod args;
pub mod decoder_eval;
pub mod delta;
pub mod demo;
pub mod fetch;
pub mod fetch_report;
pub mod node;
pub mod output;
pub mod quality;
pub mod session;
pub mod soup;
pub mod status;
pub mod store;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use args::Location;

/// zdn moves fine-tuned models as BitDelta files: one sign bit per weight plus a few scales, about
/// 1/16 of the fp16 model, verified by BLAKE3 and reconstructed bit-exactly.
#[derive(Parser, Debug)]
#[command(name = "zdn", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    location: Location,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Work with .bitdelta files offline: encode, inspect, apply, eval.
    #[command(subcommand)]
    Delta(delta::DeltaCommand),
    /// Run the main job end to end on a built-in default: install the real MiniLM base + fine-tune
    /// pair (or generate one), encode its delta, publish it in one store, carry it to another,
    /// fetch it verified, apply it, and report size and error.
    Demo(demo::DemoArgs),
    #[command(flatten)]
    Store(store::StoreCommand),
    /// Run a peer node (see `zdn node run --help`).
    #[command(subcommand)]
    Node(node::NodeCommand),
    /// Fetch an object by manifest hash from peers, verify every byte, store it (and -o a file).
    ///
    /// Uses the node running on this store if there is one, else starts one just for this fetch.
    /// Interrupted fetches resume where they stopped. Exit status: 0 done, 2 not found on any
    /// peer, 3 verification failed, 4 interrupted or incomplete (run again to resume), 5 untrusted
    /// publisher or missing base (with --no-base), 1 other errors. Example:
    ///
    ///   zdn fetch 3f1c...e9 --peer /ip4/198.51.100.7/tcp/4801/p2p/12D3KooW... -o ft.bitdelta
    #[command(verbatim_doc_comment)]
    Fetch(fetch::FetchArgs),
    /// What the running node has, who it is connected to, transfers in progress (JSON).
    Status {
        #[arg(long)]
        json: bool,
    },
    /// The peers the running node is connected to.
    Peers {
        #[arg(long)]
        json: bool,
    },
    /// Announce an object (hash, prefix or name) by gossip through the running node.
    Announce { object: String },
    /// DeltaSoup: mix deltas of one base into a recipe, or aggregate contributed deltas robustly.
    #[command(subcommand)]
    Soup(soup::SoupCommand),
    /// Measure a delta on a real model: how close the delta-applied model is to the fine-tune.
    ///
    /// A BERT encoder (candle): cosine of the delta-applied model's sentence embeddings to the
    /// fine-tune's on held-out text, with the base's as the floor. A decoder LLM (config.json
    /// model_type llama, …; model folders, possibly sharded): next-token KL to the fine-tune,
    /// perplexity and special-token agreement on held-out conversations.
    ///
    ///   zdn eval --base base/model.safetensors --finetuned ft/model.safetensors \
    ///            --delta ft.bitdelta --corpus lee.cor
    #[command(verbatim_doc_comment)]
    Eval(quality::EvalArgs),
}

/// Parses the command line, runs the command, and turns its outcome into the exit status.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(0) => ExitCode::SUCCESS,
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {}", describe(&e));
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes, outermost first, joined by ": " — a cause whose text the message
/// before it already ends with (an error that shows its source in its own message) is not
/// repeated.
fn describe(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let part = cause.to_string();
        if text.is_empty() {
            text = part;
        } else if !text.ends_with(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
    }
    text
}

/// Runs one command; the exit status on success.
pub fn run(cli: Cli) -> anyhow::Result<u8> {
    let loc = &cli.location;
    // Commands that write files remove their partial outputs when interrupted; the network's
    // commands handle Ctrl-C themselves (a fetch says where it stopped, a node shuts down).
    if !matches!(
        cli.command,
        Command::Node(_)
            | Command::Fetch(_)
            | Command::Status { .. }
            | Command::Peers { .. }
            | Command::Announce { .. }
    ) {
        crate::fs::partial::remove_on_interrupt();
    }
    match cli.command {
        Command::Store(c) => store::run(loc, c),
        Command::Node(c) => node::run_node(loc, c),
        Command::Fetch(a) => fetch::run_fetch(loc, a),
        Command::Status { json } => status::run_status(loc, json, false),
        Command::Peers { json } => status::run_status(loc, json, true),
        Command::Announce { object } => status::run_announce(loc, object),
        Command::Soup(c) => soup::run(loc, c),
        Command::Eval(a) => quality::run_eval(a),
        Command::Delta(c) => delta::run(loc, c),
        Command::Demo(a) => demo::run(&a),
    }
}

#[cfg(test)]
mod tests {
    use super::describe;
    use clap::CommandFactory;

    /// clap's own consistency checks (duplicate names, bad defaults) over every subcommand.
    #[test]
    fn cli_is_well_formed() {
        super::Cli::command().debug_assert();
    }

    #[derive(Debug, thiserror::Error)]
    enum Outer {
        #[error("not a valid model folder: {0}")]
        Shown(#[from] std::io::Error),
    }

    #[test]
    fn a_cause_shown_in_its_error_is_said_once() {
        let io = || std::io::Error::other("path \"a\\nb\": contains a control character");
        let e = anyhow::Error::from(Outer::from(io())).context("adding hx");
        assert_eq!(
            describe(&e),
            "adding hx: not a valid model folder: path \"a\\nb\": contains a control character"
        );
        // A cause not in the message before it is kept.
        let e = anyhow::Error::from(io()).context("reading x");
        assert_eq!(
            describe(&e),
            "reading x: path \"a\\nb\": contains a control character"
        );
    }
}
