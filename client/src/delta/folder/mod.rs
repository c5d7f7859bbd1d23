//! Folder deltas (docs/spec/folder-delta.md): a fine-tune's model folder as a delta against its
//! base's — encoded from two folders, applied to a base folder on disk or a base object in the
//! store, rebuilding the fine-tune's files, shard layout and headers; and LoRA adapters
//! (docs/spec/lora.md), merged into the base's folder.

pub mod adapter;
pub mod apply;
pub mod base;
pub mod encode;
pub mod encode_report;
pub mod output;
pub(crate) mod rebuild;
pub mod selection;
mod side_files;
