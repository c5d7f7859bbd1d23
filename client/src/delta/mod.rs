//! `.bitdelta` files: encode a fine-tune against its base, apply one to a base, inspect one, and
//! measure the weight error of base + delta against the fine-tune.

pub mod apply;
pub mod encode;
pub mod eval;
pub mod folder;
pub mod inspect;
