//! The `.bitdelta` format and codec: BitDelta (one sign bit per weight plus scales) and its 2/4-bit and
//! lossless relatives. See docs/spec/bitdelta.md.

mod codec;
mod format;
pub mod kernels;
mod lossless;
mod quantize;
mod reconstruct;
mod select;
mod tensor;

pub use codec::{
    decode_model, encode_model, encode_tensor, DecodeError, EncodeError, EncodeOptions,
    EncodedTensor, ModelTensor,
};
pub use format::{
    assign_offsets, encode_prelude, matrix_of, prelude_len, quantized_block_len, scale_count,
    BitDeltaFile, Encoding, FormatError, Granularity, IndexEntry, Metadata, WriteError, HEADER_LEN,
    MAGIC, MAX_TENSOR_BYTES, VERSION,
};
pub use lossless::DEFAULT_LEVEL as DEFAULT_ZSTD_LEVEL;
pub use quantize::{quantize, QuantSpec, QuantizeError, Quantized};
pub use reconstruct::{
    check_base_layout, check_inputs, check_output, quantized_block, reconstruct, reconstruct_rows,
    QuantizedBlock, ReconstructError,
};
pub use select::{is_embedding, Choice, EmbeddingPolicy, Selection};
pub use tensor::TensorData;
