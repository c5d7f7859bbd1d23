//! `zdn delta inspect`: what a `.bitdelta` holds and what it costs.

use std::path::Path;

use zdn_protocol::bitdelta::{BitDeltaFile, EmbeddingPolicy, Encoding, Granularity, Metadata};
use zdn_protocol::DType;

use crate::delta::apply::DeltaApplyError;
use crate::delta::encode::ratio;
use crate::fs::mapped_file::MappedFile;

#[derive(Debug, Clone, serde::Serialize)]
pub struct InspectReport {
    pub file_bytes: u64,
    pub metadata: Metadata,
    pub embeddings: &'static str,
    pub n_tensors: usize,
    pub bits_per_param: f64,
    /// Size of the reconstructed model in its own dtypes ÷ this file.
    pub ratio_vs_finetuned: f64,
    /// Size of the model as fp16 ÷ this file.
    pub ratio_vs_fp16: f64,
    pub by_encoding: Vec<EncodingTotal>,
    pub tensors: Vec<TensorRow>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct EncodingTotal {
    pub encoding: Encoding,
    pub tensors: usize,
    pub params: u64,
    pub bytes: u64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct TensorRow {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<u64>,
    pub encoding: Encoding,
    pub granularity: Granularity,
    pub bytes: u64,
    pub bits_per_param: f64,
}

pub fn inspect(path: &Path) -> Result<InspectReport, DeltaApplyError> {
    let map = MappedFile::open(path)?;
    let f = BitDeltaFile::parse(map.bytes()).map_err(|cause| DeltaApplyError::Format {
        path: path.to_owned(),
        cause,
    })?;
    let file_bytes = f.file_len();
    let n_params: u64 = f.entries.iter().map(|e| e.numel()).sum();
    let own: u64 = f.entries.iter().map(|e| e.byte_len()).sum();
    let mut by_encoding: Vec<EncodingTotal> = Vec::new();
    for e in &f.entries {
        match by_encoding.iter_mut().find(|t| t.encoding == e.encoding) {
            Some(t) => {
                t.tensors += 1;
                t.params += e.numel();
                t.bytes += e.length;
            }
            None => by_encoding.push(EncodingTotal {
                encoding: e.encoding,
                tensors: 1,
                params: e.numel(),
                bytes: e.length,
            }),
        }
    }
    by_encoding.sort_by_key(|t| t.encoding.code());
    let tensors = f
        .entries
        .iter()
        .map(|e| TensorRow {
            name: e.name.clone(),
            dtype: e.dtype,
            shape: e.shape.clone(),
            encoding: e.encoding,
            granularity: e.granularity,
            bytes: e.length,
            bits_per_param: ratio(e.length as f64 * 8.0, e.numel() as f64),
        })
        .collect();
    Ok(InspectReport {
        file_bytes,
        embeddings: EmbeddingPolicy::from_code(f.meta.embeddings)
            .map_or("unknown", EmbeddingPolicy::name),
        metadata: f.meta.clone(),
        n_tensors: f.entries.len(),
        bits_per_param: ratio(file_bytes as f64 * 8.0, n_params as f64),
        ratio_vs_finetuned: ratio(own as f64, file_bytes as f64),
        ratio_vs_fp16: ratio(n_params as f64 * 2.0, file_bytes as f64),
        by_encoding,
        tensors,
    })
}
