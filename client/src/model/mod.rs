//! Model files: a memory-mapped safetensors model with its checked header, and generated models
//! (for the demo's fallback, benchmarks and tests).

pub mod file;
pub mod folder;
pub mod synthetic;
