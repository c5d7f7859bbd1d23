//! Lossless compression of tensor weights: exponent bits apart from mantissa bits, entropy-coded.
//!
//! The exponent of trained weights takes few values (≈2.6 bits of entropy in 8) while the mantissa is
//! nearly random. An encoding is a small header and blocks of at most [`DEFAULT_BLOCK_LEN`] input
//! bytes; each block is coded in whichever of two modes is smaller:
//!
//! - **fields**: every element is a symbol (its top `a ≤ 12` bits: sign, exponent and the top
//!   mantissa bits) coded with a canonical Huffman code of at most 12 bits, followed by its `r` low
//!   bits raw. The encoder picks `r` per block. One table lookup decodes an element.
//! - **planes**: the elements are split into byte planes ([`Layout`]: for floats, the whole exponent in
//!   one plane) and each plane is stored raw, as one repeated byte, zstd-compressed or Huffman-coded.
//!   This wins when mantissas are compressible (e.g. f32 upcast from bf16, whose low bytes are zero).
//!
//! Input whose length is not a multiple of the element size keeps its last `len mod size` bytes
//! raw in the header (the *tail*). Output is deterministic. [`decode`] takes untrusted input: every
//! length is checked before use, output is capped before anything is allocated, Huffman tables must
//! form complete codes, and every stream must end exactly where its last value does.
//! docs/spec/planes.md describes the byte layout; docs/benchmarks.md "Lossless codec" the measurements.

mod encoder;
mod format;
mod huffman;
mod layout;

pub use layout::Layout;

pub(crate) use encoder::zstd_within;

use crate::dtype::DType;
use encoder::Encoder;
use format::{
    Cursor, Header, BLOCK_HEADER_LEN, CODEC_CONST, CODEC_HUFFMAN, CODEC_RAW, CODEC_ZSTD,
    HEADER_LEN, MODE_FIELDS, MODE_PLANES,
};

/// Default input bytes per block: 1 MiB.
pub const DEFAULT_BLOCK_LEN: u32 = 1 << 20;
/// Largest block accepted (encoder option and decoder check).
pub const MAX_BLOCK_LEN: u32 = 16 << 20;

/// What is wrong with an encoding (or, for the encoder, with its input or options).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanesError {
    #[error("not a planes encoding: bad magic")]
    BadMagic,
    #[error("unsupported planes format version {0} (this reader knows 1)")]
    Version(u8),
    #[error("unknown dtype code {0}")]
    UnknownDType(u8),
    #[error("header flags are {0:#04x}; version 1 defines none")]
    Flags(u8),
    #[error("truncated: {what} needs {need} bytes, {left} left")]
    Truncated {
        what: &'static str,
        need: usize,
        left: usize,
    },
    #[error("decoded length {len} exceeds the cap of {max} bytes")]
    TooLarge { len: u64, max: usize },
    #[error("tail of {tail_len} bytes is invalid for {decoded_len} decoded bytes of {elem}-byte elements")]
    TailLength {
        tail_len: u8,
        decoded_len: u64,
        elem: usize,
    },
    #[error("block length {block_len} is 0, over {MAX_BLOCK_LEN} or not a multiple of the {dtype} element size")]
    BlockLength { block_len: u32, dtype: DType },
    #[error("header declares {declared} blocks, the decoded length needs {expected}")]
    BlockCount { declared: u32, expected: u64 },
    #[error("{blocks} blocks cannot fit in the {left} bytes left")]
    BlocksMissing { blocks: u32, left: usize },
    #[error("block {block}: unknown mode {mode}")]
    UnknownMode { block: u64, mode: u8 },
    #[error("block {block}: fields mode needs 1-, 2- or 4-byte elements, not {dtype}")]
    FieldsDType { block: u64, dtype: DType },
    #[error("block {block}: {raw_bits} raw bits is out of range for {dtype}")]
    RawBits {
        block: u64,
        raw_bits: u8,
        dtype: DType,
    },
    #[error("block {block}: {unused} bytes of its body are unused")]
    BodyLength { block: u64, unused: usize },
    #[error("block {block}: unknown layout {layout} (or not valid for {dtype})")]
    UnknownLayout {
        block: u64,
        layout: u8,
        dtype: DType,
    },
    #[error("block {block} plane {plane}: unknown codec {codec}")]
    UnknownCodec { block: u64, plane: usize, codec: u8 },
    #[error("block {block} plane {plane}: {codec} payload is {len} bytes, expected {expected}")]
    PlaneLength {
        block: u64,
        plane: usize,
        codec: &'static str,
        len: usize,
        expected: usize,
    },
    #[error("block {block} plane {plane}: zstd: {problem}")]
    Zstd {
        block: u64,
        plane: usize,
        problem: String,
    },
    #[error("block {block}: Huffman table: {problem}")]
    CodeLengths { block: u64, problem: &'static str },
    #[error("block {block} stream {stream}: {problem}")]
    Stream {
        block: u64,
        stream: usize,
        problem: &'static str,
    },
    #[error("{0} bytes after the last block")]
    TrailingBytes(usize),
    #[error("input of {0} bytes is too large to encode")]
    InputTooLarge(usize),
    #[error("zstd compression failed: {0}")]
    ZstdEncode(String),
}

/// Which codings the encoder may use. Anything but `Auto` exists to measure baselines in the same
/// container.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Strategy {
    /// Per block, the smaller of fields mode and planes mode (field planes for floats, byte planes
    /// otherwise, each plane with its smallest codec).
    Auto,
    /// Planes mode with the given layout and every plane zstd-compressed (a field layout for a
    /// dtype it does not apply to falls back to byte planes).
    PlanesZstd(Layout),
}

/// Encoder settings. `Default`: zstd level 3, 1 MiB blocks, [`Strategy::Auto`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EncodeOptions {
    pub zstd_level: i32,
    /// Input bytes per block: a multiple of the element size, at most [`MAX_BLOCK_LEN`].
    pub block_len: u32,
    pub strategy: Strategy,
}

impl Default for EncodeOptions {
    fn default() -> Self {
        EncodeOptions {
            zstd_level: 3,
            block_len: DEFAULT_BLOCK_LEN,
            strategy: Strategy::Auto,
        }
    }
}

/// How one block is coded (from [`inspect`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BlockKind {
    /// Huffman-coded top bits with `raw_bits` low bits raw.
    Fields { raw_bits: u8 },
    /// Byte planes and each plane's codec (`"raw"`, `"const"`, `"zstd"`, `"huffman"`).
    Planes {
        layout: Layout,
        codecs: Vec<&'static str>,
    },
}

/// What an encoding holds, read without decoding it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Info {
    pub dtype: DType,
    pub decoded_len: u64,
    pub block_len: u32,
    /// Each block's kind and encoded size (with its 5-byte block header).
    pub blocks: Vec<(BlockKind, usize)>,
}

/// Encodes `bytes` (elements of `dtype`, little-endian) with default options and zstd `zstd_level`.
pub fn encode(dtype: DType, bytes: &[u8], zstd_level: i32) -> Result<Vec<u8>, PlanesError> {
    encode_with(
        dtype,
        bytes,
        &EncodeOptions {
            zstd_level,
            ..EncodeOptions::default()
        },
    )
}

/// Encodes `bytes` (elements of `dtype`, little-endian) with `opts`.
pub fn encode_with(
    dtype: DType,
    bytes: &[u8],
    opts: &EncodeOptions,
) -> Result<Vec<u8>, PlanesError> {
    format::check_block_len(opts.block_len, dtype)?;
    let elem = dtype.size();
    let tail_len = bytes.len() % elem;
    let (body, tail) = bytes.split_at(bytes.len() - tail_len);
    let block_len = opts.block_len as usize;
    let n_blocks = u32::try_from(body.len().div_ceil(block_len))
        .map_err(|_| PlanesError::InputTooLarge(bytes.len()))?;
    let header = Header {
        dtype,
        tail_len: tail_len as u8,
        decoded_len: bytes.len() as u64,
        block_len: opts.block_len,
        n_blocks,
    };
    let mut out = Vec::with_capacity(HEADER_LEN + tail_len + body.len() / 2);
    header.write(&mut out);
    out.extend_from_slice(tail);
    let mut enc = Encoder::new(opts.zstd_level)?;
    for block in body.chunks(block_len) {
        let (mode, body) = match opts.strategy {
            Strategy::Auto => {
                let layout = if Layout::FieldPlanes.applies_to(dtype) {
                    Layout::FieldPlanes
                } else {
                    Layout::BytePlanes
                };
                enc.auto(dtype, layout, block)
            }
            Strategy::PlanesZstd(layout) => {
                let layout = if layout.applies_to(dtype) {
                    layout
                } else {
                    Layout::BytePlanes
                };
                (MODE_PLANES, enc.planes_zstd(dtype, layout, block)?)
            }
        };
        out.push(mode);
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        out.extend_from_slice(&body);
    }
    Ok(out)
}

/// Decodes an encoding, refusing one that would decode to more than `max_output_len` bytes before
/// allocating anything.
pub fn decode(encoded: &[u8], max_output_len: usize) -> Result<Vec<u8>, PlanesError> {
    let mut out = Vec::new();
    decode_into(encoded, max_output_len, &mut out)?;
    Ok(out)
}

/// [`decode`] into `out` (cleared first; its capacity is reused). On error `out` holds unspecified
/// bytes.
pub fn decode_into(
    encoded: &[u8],
    max_output_len: usize,
    out: &mut Vec<u8>,
) -> Result<(), PlanesError> {
    out.clear();
    let mut cur = Cursor::new(encoded);
    let h = Header::read(&mut cur)?;
    let total = usize::try_from(h.decoded_len)
        .ok()
        .filter(|&t| t <= max_output_len)
        .ok_or(PlanesError::TooLarge {
            len: h.decoded_len,
            max: max_output_len,
        })?;
    let tail = cur.bytes(usize::from(h.tail_len), "tail")?;
    let fits = (h.n_blocks as usize)
        .checked_mul(BLOCK_HEADER_LEN)
        .is_some_and(|b| b <= cur.remaining());
    if !fits {
        return Err(PlanesError::BlocksMissing {
            blocks: h.n_blocks,
            left: cur.remaining(),
        });
    }
    out.resize(total, 0);
    let body_len = total - tail.len();
    let (body, out_tail) = out.split_at_mut(body_len);
    out_tail.copy_from_slice(tail);
    let mut dec = Decoder {
        zstd: None,
        scratch: Vec::new(),
    };
    for (i, block) in body.chunks_mut(h.block_len as usize).enumerate() {
        dec.block(&mut cur, h.dtype, block, i as u64)?;
    }
    if cur.remaining() != 0 {
        return Err(PlanesError::TrailingBytes(cur.remaining()));
    }
    Ok(())
}

/// Reads the header and block headers of an encoding without decoding the blocks.
pub fn inspect(encoded: &[u8]) -> Result<Info, PlanesError> {
    let mut cur = Cursor::new(encoded);
    let h = Header::read(&mut cur)?;
    cur.bytes(usize::from(h.tail_len), "tail")?;
    let mut blocks = Vec::new();
    for block in 0..u64::from(h.n_blocks) {
        let mode = cur.u8("block mode")?;
        let len = cur.u32("block body length")? as usize;
        let mut b = Cursor::new(cur.bytes(len, "block body")?);
        let kind = match mode {
            MODE_FIELDS => BlockKind::Fields {
                raw_bits: b.u8("raw bits")?,
            },
            MODE_PLANES => {
                let code = b.u8("layout")?;
                let layout = Layout::from_code(code)
                    .filter(|l| l.applies_to(h.dtype))
                    .ok_or(PlanesError::UnknownLayout {
                        block,
                        layout: code,
                        dtype: h.dtype,
                    })?;
                let mut codecs = Vec::new();
                for plane in 0..layout.planes(h.dtype) {
                    let codec = b.u8("plane codec")?;
                    let plen = b.u32("plane length")? as usize;
                    b.bytes(plen, "plane payload")?;
                    codecs.push(codec_name(codec).ok_or(PlanesError::UnknownCodec {
                        block,
                        plane,
                        codec,
                    })?);
                }
                BlockKind::Planes { layout, codecs }
            }
            mode => return Err(PlanesError::UnknownMode { block, mode }),
        };
        blocks.push((kind, len + BLOCK_HEADER_LEN));
    }
    Ok(Info {
        dtype: h.dtype,
        decoded_len: h.decoded_len,
        block_len: h.block_len,
        blocks,
    })
}

fn codec_name(codec: u8) -> Option<&'static str> {
    match codec {
        CODEC_RAW => Some("raw"),
        CODEC_CONST => Some("const"),
        CODEC_ZSTD => Some("zstd"),
        CODEC_HUFFMAN => Some("huffman"),
        _ => None,
    }
}

mod decoder;
use decoder::Decoder;

#[cfg(test)]
mod tests;
