//! zdn: fetch, verify, reconstruct and apply fine-tuned model deltas. This library is the `zdn`
//! binary's engine; every command is a function here so tests and benchmarks call the same code.
//!
//! - [`cli`]: the command line — one file per command, parsing and printing only.
//! - [`delta`]: `.bitdelta` encode, apply, inspect and weight-error evaluation over files.
//! - [`soup`]: DeltaSoup recipes built from the store, and combining deltas (mixes, robust
//!   aggregation).
//! - [`quality`]: measuring a delta on a real model (the BERT forward pass, sentence embeddings,
//!   the corpus) and calibrating its scales.
//! - [`decoder`]: decoder LLMs (Llama) over sharded Hugging Face folders — the forward pass, chat
//!   templates, and the decoder measure of a delta (next-token KL, perplexity, special tokens).
//! - [`device`]: deltas applied on candle tensors, and the fine-tune set that keeps one base and
//!   many packed deltas.
//! - [`daemon`]: a running node as the CLI sees it — the service, its control socket, node.toml.
//! - [`home`]: where zdn keeps its things (config, publisher key, node key).
//! - [`model`]: safetensors model files, and generated models.
//! - [`fs`]: atomic outputs, memory-mapped inputs, progress bars.
//! - [`demo`]: `zdn demo`, the main job end to end.

pub mod cli;
pub mod daemon;
pub mod decoder;
pub mod delta;
pub mod demo;
pub mod device;
pub mod fs;
pub mod home;
pub mod model;
pub mod quality;
pub mod soup;
