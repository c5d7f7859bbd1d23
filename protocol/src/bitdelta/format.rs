//! The `.bitdelta` v1 container: header, metadata, tensor index, blocks. docs/spec/bitdelta.md is the spec;
//! this file is its reader and writer. Parsing checks every count, length and offset with checked
//! arithmetic against the file size before allocating anything sized by the input.

use std::collections::HashSet;

use crate::dtype::DType;
use crate::hash::Hash;

pub const MAGIC: &[u8; 8] = b"BITDELTA";
pub const VERSION: u32 = 1;
/// Bytes of magic + version + flags.
pub const HEADER_LEN: usize = 16;
pub const MAX_NAME_LEN: usize = 4096;
pub const MAX_MODEL_NAME_LEN: usize = 1024;
pub const MAX_RANK: usize = 8;
/// Largest tensor (in bytes of its dtype) a file may describe: 1 TiB. Bounds every size computed from a
/// shape, so later `usize` arithmetic cannot overflow on 64-bit targets.
pub const MAX_TENSOR_BYTES: u64 = 1 << 40;
/// Fixed part of the metadata section (everything but the model name's bytes).
const META_FIXED_LEN: usize = 32 + 8 + 8 + 1 + 1 + 4 + 4 + 1 + 2;
/// Smallest possible index entry (empty name, rank 0).
const MIN_ENTRY_LEN: usize = 2 + 4 + 4 + 16;

/// How a tensor's block encodes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// Bit-identical to the base tensor; no block.
    Unchanged,
    /// 1-bit: one sign per element (bit 1 = +1, bit 0 = −1) and f32 scales.
    Sign1,
    /// 2-bit levels {−3,−1,+1,+3} and f32 scales.
    Bits2,
    /// 4-bit levels {−15,…,−1,+1,…,+15} and f32 scales.
    Bits4,
    /// The target's bytes, byte planes split, zstd-compressed (lossless; no base needed).
    Raw,
    /// The target's bytes XOR the base's, byte planes split, zstd-compressed (lossless).
    Xor,
    /// Lossy by choice: the base tensor is used as is although the fine-tune differs; no block.
    Base,
}

impl Encoding {
    pub const ALL: [Encoding; 7] = [
        Encoding::Unchanged,
        Encoding::Sign1,
        Encoding::Bits2,
        Encoding::Bits4,
        Encoding::Raw,
        Encoding::Xor,
        Encoding::Base,
    ];

    pub const fn code(self) -> u8 {
        match self {
            Encoding::Unchanged => 0,
            Encoding::Sign1 => 1,
            Encoding::Bits2 => 2,
            Encoding::Bits4 => 3,
            Encoding::Raw => 4,
            Encoding::Xor => 5,
            Encoding::Base => 6,
        }
    }

    pub fn from_code(c: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.code() == c)
    }

    /// Bits per element of a quantized encoding, `None` for the others.
    pub const fn bits(self) -> Option<u32> {
        match self {
            Encoding::Sign1 => Some(1),
            Encoding::Bits2 => Some(2),
            Encoding::Bits4 => Some(4),
            _ => None,
        }
    }

    pub fn for_bits(bits: u32) -> Option<Self> {
        match bits {
            1 => Some(Encoding::Sign1),
            2 => Some(Encoding::Bits2),
            4 => Some(Encoding::Bits4),
            _ => None,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Encoding::Unchanged => "unchanged",
            Encoding::Sign1 => "sign1",
            Encoding::Bits2 => "bits2",
            Encoding::Bits4 => "bits4",
            Encoding::Raw => "raw",
            Encoding::Xor => "xor",
            Encoding::Base => "base",
        }
    }

    /// Whether reconstruction reads the base tensor.
    pub const fn needs_base(self) -> bool {
        !matches!(self, Encoding::Raw)
    }
}

/// Which elements share one scale.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Granularity {
    Tensor,
    /// One scale per row (first dimension).
    Row,
    /// One scale per run of n elements within a row (the last run of a row may be shorter).
    Group(u32),
}

impl Granularity {
    pub const DEFAULT_GROUP: u32 = 128;

    fn code(self) -> (u8, u32) {
        match self {
            Granularity::Tensor => (0, 0),
            Granularity::Row => (1, 0),
            Granularity::Group(n) => (2, n),
        }
    }

    fn from_code(code: u8, group: u32) -> Option<Self> {
        match (code, group) {
            (0, 0) => Some(Granularity::Tensor),
            (1, 0) => Some(Granularity::Row),
            (2, n) if n > 0 => Some(Granularity::Group(n)),
            _ => None,
        }
    }
}

impl std::fmt::Display for Granularity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Granularity::Tensor => f.write_str("tensor"),
            Granularity::Row => f.write_str("row"),
            Granularity::Group(n) => write!(f, "group:{n}"),
        }
    }
}

impl std::str::FromStr for Granularity {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "tensor" => Ok(Granularity::Tensor),
            "row" => Ok(Granularity::Row),
            "group" => Ok(Granularity::Group(Self::DEFAULT_GROUP)),
            _ => match s.strip_prefix("group:").map(str::parse::<u32>) {
                Some(Ok(n)) if n > 0 => Ok(Granularity::Group(n)),
                _ => Err(format!(
                    "scale granularity must be tensor, row or group:N with N > 0, got {s:?}"
                )),
            },
        }
    }
}

impl serde::Serialize for Granularity {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

/// What a delta file records about how it was made.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Metadata {
    /// BLAKE3 of the base safetensors file the delta applies to ([`Hash::ZERO`]: not recorded).
    pub base_hash: Hash,
    /// Total elements of the target model.
    pub n_params: u64,
    /// Elements stored quantized.
    pub n_quantized: u64,
    /// Default bits of quantized tensors (1, 2 or 4).
    pub bits: u8,
    /// Default scale granularity.
    pub granularity: Granularity,
    /// Outlier clipping at k·σ before the scale is computed (0: off).
    pub clip_sigma: f32,
    /// How embedding matrices were stored (see [`crate::bitdelta::EmbeddingPolicy`] codes).
    pub embeddings: u8,
    pub model_name: String,
}

/// One tensor in the index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexEntry {
    pub name: String,
    /// Dtype of the reconstructed (target) tensor.
    pub dtype: DType,
    pub shape: Vec<u64>,
    pub encoding: Encoding,
    /// Scale granularity; `Tensor` for encodings without scales.
    pub granularity: Granularity,
    /// Absolute offset of the block in the file.
    pub offset: u64,
    pub length: u64,
}

impl IndexEntry {
    pub fn numel(&self) -> u64 {
        self.shape.iter().product()
    }

    /// Byte length of the reconstructed tensor.
    pub fn byte_len(&self) -> u64 {
        self.numel() * self.dtype.size() as u64
    }

    /// Rows and columns of the matrix view used by scales: `[d0, rest…]` → (d0, ∏rest); a 0-D or 1-D
    /// tensor is one row.
    pub fn matrix(&self) -> (u64, u64) {
        matrix_of(&self.shape)
    }

    fn encoded_len(&self) -> usize {
        2 + self.name.len() + 4 + 4 + 8 * self.shape.len() + 16
    }
}

/// The matrix view of a shape (see [`IndexEntry::matrix`]).
pub fn matrix_of(shape: &[u64]) -> (u64, u64) {
    match shape {
        [] => (1, 1),
        [d] => (1, *d),
        // Saturating: with d0 = 0 the other dimensions are unbounded by the size checks (the tensor
        // is empty), and their product may overflow; it is exact whenever it fits.
        [d0, rest @ ..] => (*d0, rest.iter().fold(1u64, |a, &d| a.saturating_mul(d))),
    }
}

/// Number of scales for a matrix of `rows × cols` at `granularity`.
pub fn scale_count(rows: u64, cols: u64, granularity: Granularity) -> Option<u64> {
    match granularity {
        Granularity::Tensor => Some(1),
        Granularity::Row => Some(rows),
        Granularity::Group(n) => rows.checked_mul(cols.div_ceil(u64::from(n))),
    }
}

/// Exact block length of a quantized tensor: f32 scales, then `bits` per element rounded up to a byte.
pub fn quantized_block_len(shape: &[u64], granularity: Granularity, bits: u32) -> Option<u64> {
    let (rows, cols) = matrix_of(shape);
    let numel = rows.checked_mul(cols)?;
    let scales = scale_count(rows, cols, granularity)?.checked_mul(4)?;
    let packed = numel.checked_mul(u64::from(bits))?.div_ceil(8);
    scales.checked_add(packed)
}

/// What is wrong with a `.bitdelta` file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("truncated: {what} needs bytes {start}..{end} but the file has {len}")]
    Truncated {
        what: &'static str,
        start: u64,
        end: u64,
        len: u64,
    },
    #[error("not a .bitdelta file (magic is {0:02x?}, expected \"BITDELTA\")")]
    Magic([u8; 8]),
    #[error("unsupported .bitdelta version {0} (this zdn reads version {VERSION})")]
    Version(u32),
    #[error("unknown flags {0:#x} (version {VERSION} defines none)")]
    Flags(u32),
    #[error("metadata: {0}")]
    Metadata(String),
    #[error("tensor count {count} cannot fit in the {remaining} bytes left")]
    TensorCount { count: u32, remaining: u64 },
    #[error("tensor #{index}: {problem}")]
    Entry { index: usize, problem: String },
    #[error("tensor {name:?}: {problem}")]
    Tensor { name: String, problem: String },
    #[error("{0} trailing bytes after the last block")]
    Trailing(u64),
}

fn entry_err(index: usize, problem: impl Into<String>) -> FormatError {
    FormatError::Entry {
        index,
        problem: problem.into(),
    }
}

fn tensor_err(name: &str, problem: impl Into<String>) -> FormatError {
    FormatError::Tensor {
        name: name.to_owned(),
        problem: problem.into(),
    }
}

/// A bounds-checked little-endian cursor over the file.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], FormatError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        match end {
            Some(end) => {
                let s = &self.buf[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => Err(FormatError::Truncated {
                what,
                start: self.pos as u64,
                end: self.pos as u64 + n as u64,
                len: self.buf.len() as u64,
            }),
        }
    }
    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], FormatError> {
        let s = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }
    fn u8(&mut self, what: &'static str) -> Result<u8, FormatError> {
        Ok(self.array::<1>(what)?[0])
    }
    fn u16(&mut self, what: &'static str) -> Result<u16, FormatError> {
        Ok(u16::from_le_bytes(self.array(what)?))
    }
    fn u32(&mut self, what: &'static str) -> Result<u32, FormatError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }
    fn u64(&mut self, what: &'static str) -> Result<u64, FormatError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }
}

/// A parsed `.bitdelta` file borrowing its bytes (typically a memory map).
#[derive(Debug, Clone)]
pub struct BitDeltaFile<'a> {
    pub meta: Metadata,
    pub entries: Vec<IndexEntry>,
    bytes: &'a [u8],
}

impl<'a> BitDeltaFile<'a> {
    /// Parses and validates the header, metadata and index of a whole file. Blocks are checked for
    /// position and exact length here; their contents when a tensor is reconstructed.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, FormatError> {
        let mut c = Cursor { buf: bytes, pos: 0 };
        let magic: [u8; 8] = c.array("header")?;
        if &magic != MAGIC {
            return Err(FormatError::Magic(magic));
        }
        let version = c.u32("header")?;
        if version != VERSION {
            return Err(FormatError::Version(version));
        }
        let flags = c.u32("header")?;
        if flags != 0 {
            return Err(FormatError::Flags(flags));
        }
        let meta_len = c.u32("metadata length")? as usize;
        let meta_bytes = c.take(meta_len, "metadata")?;
        let meta = parse_metadata(meta_bytes)?;

        let count = c.u32("tensor count")?;
        let remaining = c.remaining() as u64;
        if u64::from(count) * MIN_ENTRY_LEN as u64 > remaining {
            return Err(FormatError::TensorCount { count, remaining });
        }
        let mut entries = Vec::with_capacity(count as usize);
        let mut names = HashSet::with_capacity(count as usize);
        for index in 0..count as usize {
            let e = parse_entry(&mut c, index)?;
            if !names.insert(e.name.clone()) {
                return Err(tensor_err(&e.name, "appears twice in the index"));
            }
            entries.push(e);
        }
        let mut expect = c.pos as u64;
        for e in &entries {
            if e.offset != expect {
                return Err(tensor_err(
                    &e.name,
                    format!(
                        "block offset {} is not where the previous block ends ({expect})",
                        e.offset
                    ),
                ));
            }
            let end = e
                .offset
                .checked_add(e.length)
                .ok_or_else(|| tensor_err(&e.name, "block length overflows"))?;
            if end > bytes.len() as u64 {
                return Err(FormatError::Truncated {
                    what: "tensor block",
                    start: e.offset,
                    end,
                    len: bytes.len() as u64,
                });
            }
            expect = end;
        }
        if expect != bytes.len() as u64 {
            return Err(FormatError::Trailing(bytes.len() as u64 - expect));
        }
        Ok(BitDeltaFile {
            meta,
            entries,
            bytes,
        })
    }

    /// The block of entry `i` (empty for encodings without one). Panics on an out-of-range `i`, which
    /// is a caller bug, not input.
    pub fn block(&self, i: usize) -> &'a [u8] {
        let e = &self.entries[i];
        // Offsets and lengths were checked against the file length in `parse`.
        &self.bytes[e.offset as usize..(e.offset + e.length) as usize]
    }

    pub fn find(&self, name: &str) -> Option<usize> {
        self.entries.iter().position(|e| e.name == name)
    }

    pub fn file_len(&self) -> u64 {
        self.bytes.len() as u64
    }
}

fn parse_metadata(m: &[u8]) -> Result<Metadata, FormatError> {
    let mut c = Cursor { buf: m, pos: 0 };
    let bad = |e: FormatError| FormatError::Metadata(e.to_string());
    let base_hash = Hash::from_bytes(c.array("metadata").map_err(bad)?);
    let n_params = c.u64("metadata").map_err(bad)?;
    let n_quantized = c.u64("metadata").map_err(bad)?;
    let bits = c.u8("metadata").map_err(bad)?;
    let gran_code = c.u8("metadata").map_err(bad)?;
    let group = c.u32("metadata").map_err(bad)?;
    let clip_sigma = f32::from_bits(c.u32("metadata").map_err(bad)?);
    let embeddings = c.u8("metadata").map_err(bad)?;
    let name_len = c.u16("metadata").map_err(bad)? as usize;
    if name_len > MAX_MODEL_NAME_LEN {
        return Err(FormatError::Metadata(format!(
            "model name of {name_len} bytes exceeds {MAX_MODEL_NAME_LEN}"
        )));
    }
    let name = c.take(name_len, "metadata").map_err(bad)?;
    if c.remaining() != 0 {
        return Err(FormatError::Metadata(format!(
            "{} unexpected bytes at the end",
            c.remaining()
        )));
    }
    if !matches!(bits, 1 | 2 | 4) {
        return Err(FormatError::Metadata(format!(
            "bits must be 1, 2 or 4, got {bits}"
        )));
    }
    let granularity = Granularity::from_code(gran_code, group).ok_or_else(|| {
        FormatError::Metadata(format!(
            "invalid granularity code {gran_code} / group {group}"
        ))
    })?;
    if !clip_sigma.is_finite() || clip_sigma < 0.0 {
        return Err(FormatError::Metadata(format!("invalid clip {clip_sigma}")));
    }
    if n_quantized > n_params {
        return Err(FormatError::Metadata(format!(
            "{n_quantized} quantized parameters exceed the total of {n_params}"
        )));
    }
    let model_name = std::str::from_utf8(name)
        .map_err(|_| FormatError::Metadata("model name is not UTF-8".into()))?
        .to_owned();
    Ok(Metadata {
        base_hash,
        n_params,
        n_quantized,
        bits,
        granularity,
        clip_sigma,
        embeddings,
        model_name,
    })
}

fn parse_entry(c: &mut Cursor<'_>, index: usize) -> Result<IndexEntry, FormatError> {
    let name_len = c.u16("index entry")? as usize;
    if name_len > MAX_NAME_LEN {
        return Err(entry_err(
            index,
            format!("name of {name_len} bytes exceeds {MAX_NAME_LEN}"),
        ));
    }
    let name = std::str::from_utf8(c.take(name_len, "index entry")?)
        .map_err(|_| entry_err(index, "name is not UTF-8"))?
        .to_owned();
    let dtype_code = c.u8("index entry")?;
    let enc_code = c.u8("index entry")?;
    let gran_code = c.u8("index entry")?;
    let rank = c.u8("index entry")? as usize;
    let group = c.u32("index entry")?;
    let dtype = DType::from_code(dtype_code)
        .ok_or_else(|| tensor_err(&name, format!("unknown dtype code {dtype_code}")))?;
    let encoding = Encoding::from_code(enc_code)
        .ok_or_else(|| tensor_err(&name, format!("unknown encoding code {enc_code}")))?;
    let granularity = Granularity::from_code(gran_code, group).ok_or_else(|| {
        tensor_err(
            &name,
            format!("invalid granularity code {gran_code} / group {group}"),
        )
    })?;
    if rank > MAX_RANK {
        return Err(tensor_err(&name, format!("rank {rank} exceeds {MAX_RANK}")));
    }
    let mut shape = Vec::with_capacity(rank);
    for _ in 0..rank {
        shape.push(c.u64("index entry")?);
    }
    let offset = c.u64("index entry")?;
    let length = c.u64("index entry")?;
    let bytes = shape
        .iter()
        .try_fold(dtype.size() as u64, |acc, &d| acc.checked_mul(d))
        .filter(|&b| b <= MAX_TENSOR_BYTES)
        .ok_or_else(|| {
            tensor_err(
                &name,
                format!("shape {shape:?} exceeds {MAX_TENSOR_BYTES} bytes"),
            )
        })?;
    match encoding.bits() {
        Some(bits) => {
            if !dtype.is_quantizable() {
                return Err(tensor_err(
                    &name,
                    format!("{} cannot hold a quantized {dtype}", encoding.name()),
                ));
            }
            let want = quantized_block_len(&shape, granularity, bits)
                .ok_or_else(|| tensor_err(&name, "block size overflows"))?;
            if length != want {
                return Err(tensor_err(
                    &name,
                    format!(
                        "{} block must be {want} bytes, index says {length}",
                        encoding.name()
                    ),
                ));
            }
        }
        None => {
            if granularity != Granularity::Tensor {
                return Err(tensor_err(
                    &name,
                    format!("{} takes no scales", encoding.name()),
                ));
            }
            let empty = matches!(encoding, Encoding::Unchanged | Encoding::Base);
            if empty && length != 0 {
                return Err(tensor_err(
                    &name,
                    format!(
                        "{} has no block, index says {length} bytes",
                        encoding.name()
                    ),
                ));
            }
            if !empty && length == 0 && bytes != 0 {
                return Err(tensor_err(&name, "empty block for a non-empty tensor"));
            }
        }
    }
    Ok(IndexEntry {
        name,
        dtype,
        shape,
        encoding,
        granularity,
        offset,
        length,
    })
}

mod prelude;
pub use prelude::{assign_offsets, encode_prelude, prelude_len, WriteError};
