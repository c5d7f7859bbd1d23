//! Encoding one tensor into a block, and whole models in memory (tests, golden vectors, small files).
//! The CLI streams the same per-tensor functions to disk.

use super::format::{
    assign_offsets, encode_prelude, BitDeltaFile, FormatError, Granularity, IndexEntry, Metadata,
    WriteError,
};
use super::quantize::{quantize, QuantSpec, QuantizeError};
use super::reconstruct::{reconstruct, ReconstructError};
use super::select::{Choice, Selection};
use super::tensor::TensorData;
use super::{lossless, Encoding};

/// Quantizer settings plus the zstd level of lossless blocks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EncodeOptions {
    pub spec: QuantSpec,
    pub zstd_level: i32,
}

impl Default for EncodeOptions {
    fn default() -> Self {
        EncodeOptions {
            spec: QuantSpec {
                bits: 1,
                granularity: Granularity::Tensor,
                clip_sigma: None,
            },
            zstd_level: lossless::DEFAULT_LEVEL,
        }
    }
}

/// A tensor's encoding and block.
#[derive(Debug, Clone, PartialEq)]
pub struct EncodedTensor {
    pub encoding: Encoding,
    pub granularity: Granularity,
    pub block: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EncodeError {
    #[error("tensor {name:?}: {cause}")]
    Quantize { name: String, cause: QuantizeError },
    #[error("tensor {name:?}: {problem}")]
    Lossless { name: String, problem: String },
    #[error("tensor {0:?}: the fine-tune's bytes do not match its shape and dtype")]
    Layout(String),
    #[error(transparent)]
    Write(#[from] WriteError),
}

/// Encodes one tensor as `choice` says. `base` is the base tensor of the same name, if any.
pub fn encode_tensor(
    name: &str,
    choice: Choice,
    base: Option<&TensorData<'_>>,
    target: &TensorData<'_>,
    opts: &EncodeOptions,
    scales: Option<&[f32]>,
) -> Result<EncodedTensor, EncodeError> {
    let same_layout = base.filter(|b| b.dtype == target.dtype && b.shape == target.shape);
    let plain = |encoding| EncodedTensor {
        encoding,
        granularity: Granularity::Tensor,
        block: Vec::new(),
    };
    match (choice, base) {
        (Choice::Quantize, Some(b)) => {
            let q =
                quantize(b, target, &opts.spec, scales).map_err(|cause| EncodeError::Quantize {
                    name: name.to_owned(),
                    cause,
                })?;
            if q.scales.iter().any(|s| !s.is_finite()) {
                // A default scale can overflow f32 for deltas near f32::MAX; readers refuse a
                // non-finite scale, so such a tensor is stored losslessly instead (docs/spec/bitdelta.md § 7.3).
                return match same_layout {
                    Some(b) => {
                        lossless_block(name, Encoding::Xor, target, Some(b.bytes), opts.zstd_level)
                    }
                    None => lossless_block(name, Encoding::Raw, target, None, opts.zstd_level),
                };
            }
            let encoding = Encoding::for_bits(opts.spec.bits).unwrap_or(Encoding::Sign1);
            Ok(EncodedTensor {
                encoding,
                granularity: opts.spec.granularity,
                block: q.to_block(),
            })
        }
        (Choice::KeepBase, _) if same_layout.is_some() => {
            let same = same_layout.is_some_and(|b| b.bytes == target.bytes);
            Ok(plain(if same {
                Encoding::Unchanged
            } else {
                Encoding::Base
            }))
        }
        _ => match same_layout {
            Some(b) if b.bytes == target.bytes => Ok(plain(Encoding::Unchanged)),
            Some(b) => lossless_block(name, Encoding::Xor, target, Some(b.bytes), opts.zstd_level),
            None => lossless_block(name, Encoding::Raw, target, None, opts.zstd_level),
        },
    }
}

fn lossless_block(
    name: &str,
    encoding: Encoding,
    target: &TensorData<'_>,
    base: Option<&[u8]>,
    level: i32,
) -> Result<EncodedTensor, EncodeError> {
    let block =
        lossless::encode(target.bytes, base, target.dtype.size(), level).map_err(|problem| {
            EncodeError::Lossless {
                name: name.to_owned(),
                problem,
            }
        })?;
    Ok(EncodedTensor {
        encoding,
        granularity: Granularity::Tensor,
        block,
    })
}

/// One tensor of a model held in memory.
#[derive(Debug, Clone, Copy)]
pub struct ModelTensor<'a> {
    pub name: &'a str,
    pub data: TensorData<'a>,
}

/// Encodes a whole model in memory: every target tensor, in order, against the base tensor of the same
/// name. `meta.n_params`/`n_quantized` are filled in.
pub fn encode_model(
    mut meta: Metadata,
    base: &[ModelTensor<'_>],
    target: &[ModelTensor<'_>],
    selection: &Selection,
    opts: &EncodeOptions,
) -> Result<Vec<u8>, EncodeError> {
    let mut entries = Vec::with_capacity(target.len());
    let mut blocks = Vec::with_capacity(target.len());
    meta.n_params = 0;
    meta.n_quantized = 0;
    for t in target {
        let b = base.iter().find(|b| b.name == t.name).map(|b| b.data);
        let choice = selection.choose(
            t.name,
            (t.data.dtype, t.data.shape),
            b.as_ref().map(|b| (b.dtype, b.shape)),
        );
        let enc = encode_tensor(t.name, choice, b.as_ref(), &t.data, opts, None)?;
        let numel = t.data.numel() as u64;
        meta.n_params += numel;
        if enc.encoding.bits().is_some() {
            meta.n_quantized += numel;
        }
        entries.push(IndexEntry {
            name: t.name.to_owned(),
            dtype: t.data.dtype,
            shape: t.data.shape.to_vec(),
            encoding: enc.encoding,
            granularity: enc.granularity,
            offset: 0,
            length: enc.block.len() as u64,
        });
        blocks.push(enc.block);
    }
    assign_offsets(&meta, &mut entries);
    let mut out = encode_prelude(&meta, &entries)?;
    for b in blocks {
        out.extend_from_slice(&b);
    }
    Ok(out)
}

/// Errors of [`decode_model`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error(transparent)]
    Format(#[from] FormatError),
    #[error(transparent)]
    Reconstruct(#[from] ReconstructError),
}

/// Reconstructs every tensor of a delta file held in memory: `(name, bytes)` in index order.
pub fn decode_model(
    file: &[u8],
    base: &[ModelTensor<'_>],
) -> Result<Vec<(String, Vec<u8>)>, DecodeError> {
    let f = BitDeltaFile::parse(file)?;
    let mut out = Vec::with_capacity(f.entries.len());
    for (i, e) in f.entries.iter().enumerate() {
        let b = base.iter().find(|b| b.name == e.name).map(|b| b.data);
        super::reconstruct::check_inputs(e, f.block(i), b.as_ref())?;
        let mut buf = vec![0u8; e.byte_len() as usize];
        reconstruct(e, f.block(i), b.as_ref(), &mut buf)?;
        out.push((e.name.clone(), buf));
    }
    Ok(out)
}
