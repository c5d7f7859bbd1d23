//! zdn-protocol: the sans-IO core of zdn. Types and pure functions only — no sockets, no files, no
//! async runtime — so everything here is tested with plain unit and property tests.

pub mod bitdelta;
pub mod chunk;
pub mod dtype;
pub mod folder;
pub mod glob;
pub mod hash;
pub mod lora;
pub mod manifest;
pub mod object;
pub mod paced;
pub mod planes;
pub mod safetensors;
pub mod soup;
pub mod sync;
pub mod wire;

pub use dtype::DType;
pub use hash::Hash;
