//! zdn: fetch, verify, reconstruct and apply fine-tuned model deltas. This library is the `zdn`
//! binary's engine; every command is a function here so tests and benchmarks call the same code.

pub mod atomic_file;
pub mod bert;
pub mod calibrate;
pub mod candle_apply;
pub mod config;
pub mod control;
pub mod decoder;
pub mod delta_apply;
pub mod delta_encode;
pub mod delta_eval;
pub mod delta_inspect;
pub mod demo_link;
pub mod embed_eval;
pub mod mapped_file;
pub mod model_file;
pub mod node_config;
pub mod node_service;
pub mod profile_set;
pub mod progress;
pub mod publisher_key;
pub mod sentence_corpus;
pub mod sentence_embedder;
pub mod soup_build;
pub mod soup_combine;
pub mod soup_method;
pub mod soup_tensor;
pub mod synthetic_model;
