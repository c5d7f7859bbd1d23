//! Measuring what a delta keeps on a real model: the BERT forward pass, sentence embeddings of a
//! corpus, the quality report, and calibrating a delta's scales (scale distillation).

pub mod bert;
pub mod calibrate;
pub mod corpus;
pub mod embedder;
pub mod eval;
pub mod scales;
