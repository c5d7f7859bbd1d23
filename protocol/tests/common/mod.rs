//! Helpers shared by the integration tests: owned tensors and models, a deterministic PRNG, and the
//! byte layout of a `.bitdelta` v1 file (docs/spec/bitdelta.md) as offsets, so tests can patch single fields.
#![allow(dead_code)]

use zdn_protocol::bitdelta::{
    assign_offsets, encode_prelude, EncodedTensor, Granularity, IndexEntry, Metadata, ModelTensor,
    TensorData,
};
use zdn_protocol::{DType, Hash};

/// An owned tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<u64>,
    pub bytes: Vec<u8>,
}

impl Tensor {
    pub fn new(name: &str, dtype: DType, shape: &[u64], bytes: Vec<u8>) -> Self {
        let t = Tensor {
            name: name.to_owned(),
            dtype,
            shape: shape.to_vec(),
            bytes,
        };
        assert!(
            TensorData::new(t.dtype, &t.shape, &t.bytes).is_some(),
            "{name}: bytes do not match the shape"
        );
        t
    }

    /// A float tensor from f32 values, converted with the `half` crate (inputs only: the conversions
    /// under test are the codec's).
    pub fn floats(name: &str, dtype: DType, shape: &[u64], values: &[f32]) -> Self {
        let bytes = values.iter().flat_map(|&v| to_bytes(v, dtype)).collect();
        Tensor::new(name, dtype, shape, bytes)
    }

    pub fn data(&self) -> TensorData<'_> {
        TensorData::new(self.dtype, &self.shape, &self.bytes).expect("layout checked in new")
    }

    pub fn numel(&self) -> usize {
        self.bytes.len() / self.dtype.size()
    }
}

/// Borrowed view of a model for `encode_model` / `decode_model`.
pub fn model(ts: &[Tensor]) -> Vec<ModelTensor<'_>> {
    ts.iter()
        .map(|t| ModelTensor {
            name: &t.name,
            data: t.data(),
        })
        .collect()
}

/// Little-endian bytes of `v` in a float dtype (inputs only).
pub fn to_bytes(v: f32, dtype: DType) -> Vec<u8> {
    match dtype {
        DType::F32 => v.to_le_bytes().to_vec(),
        DType::F16 => half::f16::from_f32(v).to_le_bytes().to_vec(),
        DType::BF16 => half::bf16::from_f32(v).to_le_bytes().to_vec(),
        d => panic!("{d} is not a float dtype"),
    }
}

pub fn meta(name: &str) -> Metadata {
    Metadata {
        base_hash: Hash::ZERO,
        n_params: 0,
        n_quantized: 0,
        bits: 1,
        granularity: Granularity::Tensor,
        clip_sigma: 0.0,
        embeddings: 0,
        model_name: name.to_owned(),
    }
}

/// Assembles a file from already encoded tensors (the way `encode_model` does, but with any names,
/// encodings and shapes, e.g. duplicates or quantized empty tensors).
pub fn build_file(meta: &Metadata, tensors: &[(&str, DType, Vec<u64>, EncodedTensor)]) -> Vec<u8> {
    let mut entries: Vec<IndexEntry> = tensors
        .iter()
        .map(|(name, dtype, shape, enc)| IndexEntry {
            name: (*name).to_owned(),
            dtype: *dtype,
            shape: shape.clone(),
            encoding: enc.encoding,
            granularity: enc.granularity,
            offset: 0,
            length: enc.block.len() as u64,
        })
        .collect();
    assign_offsets(meta, &mut entries);
    let mut out = encode_prelude(meta, &entries).expect("prelude");
    for (_, _, _, enc) in tensors {
        out.extend_from_slice(&enc.block);
    }
    out
}

/// splitmix64: a small deterministic PRNG (no dependency, same sequence everywhere).
#[derive(Clone, Debug)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (`n > 0`); the modulo bias is irrelevant here.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
    pub fn chance(&mut self, one_in: u64) -> bool {
        self.below(one_in) == 0
    }
    /// Uniform in [-1, 1).
    pub fn unit(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
}

// ---- Byte layout of a `.bitdelta` v1 file (docs/spec/bitdelta.md §Layout). ----

/// Absolute offsets of the header and metadata fields (the metadata starts at byte 20).
pub mod off {
    pub const MAGIC: usize = 0;
    pub const VERSION: usize = 8;
    pub const FLAGS: usize = 12;
    /// u32: length of the metadata section that follows.
    pub const META_LEN: usize = 16;
    pub const META: usize = 20;
    pub const BASE_HASH: usize = META;
    pub const N_PARAMS: usize = META + 32;
    pub const N_QUANTIZED: usize = META + 40;
    pub const BITS: usize = META + 48;
    pub const GRAN_CODE: usize = META + 49;
    pub const GROUP: usize = META + 50;
    pub const CLIP: usize = META + 54;
    pub const EMBEDDINGS: usize = META + 58;
    pub const MODEL_NAME_LEN: usize = META + 59;
    pub const MODEL_NAME: usize = META + 61;
    /// Fixed part of the metadata (everything but the model name's bytes).
    pub const META_FIXED: usize = 61;
}

pub fn get_u16(f: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(f[at..at + 2].try_into().expect("2 bytes"))
}
pub fn get_u32(f: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(f[at..at + 4].try_into().expect("4 bytes"))
}
pub fn get_u64(f: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(f[at..at + 8].try_into().expect("8 bytes"))
}
pub fn put_u16(f: &mut [u8], at: usize, v: u16) {
    f[at..at + 2].copy_from_slice(&v.to_le_bytes());
}
pub fn put_u32(f: &mut [u8], at: usize, v: u32) {
    f[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
pub fn put_u64(f: &mut [u8], at: usize, v: u64) {
    f[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// Offset of the u32 tensor count: right after the metadata section.
pub fn count_off(f: &[u8]) -> usize {
    off::META + get_u32(f, off::META_LEN) as usize
}

/// Absolute offsets of the fields of one index entry.
#[derive(Clone, Debug)]
pub struct EntryLayout {
    pub start: usize,
    /// u16 name length.
    pub name_len: usize,
    /// The name's bytes.
    pub name: usize,
    pub name_bytes: usize,
    /// u8 codes.
    pub dtype: usize,
    pub encoding: usize,
    pub granularity: usize,
    pub rank: usize,
    /// u32 group size.
    pub group: usize,
    /// u64 per dimension.
    pub shape: Vec<usize>,
    /// u64 absolute block offset and u64 block length.
    pub offset: usize,
    pub length: usize,
    /// One past the entry.
    pub end: usize,
}

/// Walks the index of a well-formed file: entry = u16 name_len, name, u8 dtype, u8 encoding,
/// u8 granularity, u8 rank, u32 group, rank × u64 dims, u64 offset, u64 length.
pub fn entries(f: &[u8]) -> Vec<EntryLayout> {
    let c = count_off(f);
    let count = get_u32(f, c) as usize;
    let mut pos = c + 4;
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let start = pos;
        let name_bytes = get_u16(f, pos) as usize;
        let name = pos + 2;
        let dtype = name + name_bytes;
        let rank = f[dtype + 3] as usize;
        let group = dtype + 4;
        let shape: Vec<usize> = (0..rank).map(|k| group + 4 + 8 * k).collect();
        let offset = group + 4 + 8 * rank;
        let e = EntryLayout {
            start,
            name_len: start,
            name,
            name_bytes,
            dtype,
            encoding: dtype + 1,
            granularity: dtype + 2,
            rank: dtype + 3,
            group,
            shape,
            offset,
            length: offset + 8,
            end: offset + 16,
        };
        pos = e.end;
        out.push(e);
    }
    out
}

/// Absolute offset of the first block (= end of the index).
pub fn blocks_start(f: &[u8]) -> usize {
    entries(f)
        .last()
        .map_or(count_off(f) + 4, |e: &EntryLayout| e.end)
}
