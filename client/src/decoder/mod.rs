//! Decoder LLMs (the Llama architecture): a Hugging Face model folder with sharded safetensors, its
//! tokenizer and chat template, a candle forward pass, and the quality measure of a delta on held-out
//! chat text (next-token KL, perplexity, special-token agreement).

pub mod apply;
pub mod calibrate;
pub mod chat;
pub mod config;
pub mod eval;
pub mod folder;
pub mod llama;
mod next_token_stats;
pub mod tokenizer;
