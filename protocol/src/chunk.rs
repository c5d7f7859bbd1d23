//! Chunks: an object split into content-addressed pieces, each compressed on its own.
//!
//! Splits fall on natural boundaries (tensor starts of a safetensors or `.bitdelta` object) where
//! possible, so an unchanged tensor gives the same chunks in two versions of a model and is stored and
//! sent once. A chunk's id is the BLAKE3 of its *stored* (compressed) bytes: a receiver checks the id
//! before decompressing anything, and refuses a chunk that inflates past its declared length.

use std::ops::Range;

use crate::hash::Hash;

/// Default largest uncompressed chunk: 1 MiB.
pub const DEFAULT_CHUNK_SIZE: u32 = 1 << 20;
/// Largest chunk size accepted anywhere (a cap for receivers' buffers).
pub const MAX_CHUNK_SIZE: u32 = 16 << 20;

/// How a chunk's bytes are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Codec {
    /// As is: compression did not help.
    Raw,
    Zstd,
    /// Accepted on input (e.g. from HTTP seeds); zdn itself writes zstd.
    Gzip,
    /// The lossless float codec of [`crate::planes`] (exponents Huffman-coded apart from mantissas);
    /// self-describing, used for chunks that lie inside one float tensor of a base model.
    Planes,
}

impl Codec {
    pub const fn code(self) -> u8 {
        match self {
            Codec::Raw => 0,
            Codec::Zstd => 1,
            Codec::Gzip => 2,
            Codec::Planes => 3,
        }
    }

    pub fn from_code(c: u8) -> Option<Self> {
        [Codec::Raw, Codec::Zstd, Codec::Gzip, Codec::Planes]
            .into_iter()
            .find(|k| k.code() == c)
    }
}

/// One chunk of an object as a manifest lists it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChunkRef {
    /// BLAKE3 of the stored bytes.
    pub id: Hash,
    /// Offset in the reconstructed object.
    pub offset: u64,
    /// Uncompressed length.
    pub len: u32,
    pub codec: Codec,
}

/// Why a chunk or chunk list is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    #[error("chunk size {0} is outside 1..={MAX_CHUNK_SIZE}")]
    ChunkSize(u32),
    #[error("chunk hash mismatch: expected {expected}, got {actual}")]
    HashMismatch { expected: Hash, actual: Hash },
    #[error("chunk {id} inflates past its declared {len} bytes")]
    Inflates { id: Hash, len: u32 },
    #[error("chunk {id} decodes to {got} bytes, its declared length is {len}")]
    Length { id: Hash, got: usize, len: u32 },
    #[error("chunk {id} does not decode: {problem}")]
    Corrupt { id: Hash, problem: String },
    #[error("chunk list: chunk #{index} starts at {offset}, expected {expected} (gap or overlap)")]
    Coverage {
        index: usize,
        offset: u64,
        expected: u64,
    },
    #[error("chunk list covers {covered} bytes, the object has {len}")]
    Incomplete { covered: u64, len: u64 },
    #[error("chunk list: chunk #{0} is empty")]
    Empty(usize),
}

/// Splits `0..object_len` into ranges of at most `chunk_size` bytes that start at every boundary in
/// `boundaries` (sorted or not; out-of-range ones are ignored). Deterministic.
pub fn plan(
    object_len: u64,
    boundaries: &[u64],
    chunk_size: u32,
) -> Result<Vec<Range<u64>>, ChunkError> {
    if chunk_size == 0 || chunk_size > MAX_CHUNK_SIZE {
        return Err(ChunkError::ChunkSize(chunk_size));
    }
    let mut cuts: Vec<u64> = boundaries
        .iter()
        .copied()
        .filter(|&b| b > 0 && b < object_len)
        .collect();
    cuts.sort_unstable();
    cuts.dedup();
    cuts.push(object_len);
    let mut out = Vec::new();
    let mut start = 0u64;
    for cut in cuts {
        while start < cut {
            let end = cut.min(start + u64::from(chunk_size));
            out.push(start..end);
            start = end;
        }
    }
    Ok(out)
}

/// Compresses one chunk with zstd at `level`, or keeps it raw when that is not smaller. Returns the
/// codec, the stored bytes and their id.
pub fn encode(data: &[u8], level: i32) -> (Codec, Vec<u8>, Hash) {
    let (codec, stored) = match zstd::bulk::compress(data, level) {
        Ok(z) if z.len() < data.len() => (Codec::Zstd, z),
        _ => (Codec::Raw, data.to_vec()),
    };
    let id = Hash::of(&stored);
    (codec, stored, id)
}

/// Like [`encode`], for a chunk that holds whole elements of one tensor of `dtype`: a float dtype
/// also tries the [`crate::planes`] codec and keeps whichever of raw, zstd and planes is smallest
/// (ties go to the earlier of zstd, planes). Deterministic.
///
/// For a float chunk the planes coding comes first; zstd then only has to say whether it is at
/// most that long (and shorter than the chunk), so its pass stops as soon as its output is longer.
pub fn encode_elements(
    data: &[u8],
    level: i32,
    dtype: Option<crate::DType>,
) -> (Codec, Vec<u8>, Hash) {
    use crate::DType;
    let planes = match dtype {
        Some(d @ (DType::F32 | DType::F16 | DType::BF16))
            if data.len().is_multiple_of(d.size()) =>
        {
            crate::planes::encode(d, data, level).ok()
        }
        _ => None,
    };
    let Some(p) = planes else {
        return encode(data, level);
    };
    // zstd wins when it is shorter than the chunk and no longer than the planes coding.
    let cap = p.len().min(data.len().saturating_sub(1));
    let zstd = zstd::bulk::Compressor::new(level)
        .ok()
        .and_then(|mut z| crate::planes::zstd_within(&mut z, data, cap));
    let (codec, stored) = match zstd {
        Some(z) => (Codec::Zstd, z),
        None if p.len() < data.len() => (Codec::Planes, p),
        None => (Codec::Raw, data.to_vec()),
    };
    let id = Hash::of(&stored);
    (codec, stored, id)
}

/// Verifies a stored chunk against its reference and returns the uncompressed bytes. The hash is
/// checked first; decompression never writes more than `r.len` bytes.
pub fn decode(stored: &[u8], r: &ChunkRef) -> Result<Vec<u8>, ChunkError> {
    let actual = Hash::of(stored);
    if actual != r.id {
        return Err(ChunkError::HashMismatch {
            expected: r.id,
            actual,
        });
    }
    if r.len > MAX_CHUNK_SIZE {
        return Err(ChunkError::ChunkSize(r.len));
    }
    let len = r.len as usize;
    let out = match r.codec {
        Codec::Raw => stored.to_vec(),
        Codec::Zstd => {
            let mut buf = vec![0u8; len];
            let got = zstd::bulk::decompress_to_buffer(stored, &mut buf).map_err(|e| {
                if e.to_string().contains("Destination buffer is too small") {
                    ChunkError::Inflates {
                        id: r.id,
                        len: r.len,
                    }
                } else {
                    ChunkError::Corrupt {
                        id: r.id,
                        problem: e.to_string(),
                    }
                }
            })?;
            buf.truncate(got);
            buf
        }
        Codec::Gzip => gunzip_capped(stored, r)?,
        Codec::Planes => crate::planes::decode(stored, len).map_err(|e| match e {
            crate::planes::PlanesError::TooLarge { .. } => ChunkError::Inflates {
                id: r.id,
                len: r.len,
            },
            other => ChunkError::Corrupt {
                id: r.id,
                problem: other.to_string(),
            },
        })?,
    };
    if out.len() != len {
        return Err(ChunkError::Length {
            id: r.id,
            got: out.len(),
            len: r.len,
        });
    }
    Ok(out)
}

fn gunzip_capped(stored: &[u8], r: &ChunkRef) -> Result<Vec<u8>, ChunkError> {
    use std::io::Read;
    let mut out = Vec::with_capacity(r.len as usize);
    // Read at most one byte past the declared length: enough to tell a bomb from an exact fit.
    let mut dec = flate2::read::GzDecoder::new(stored).take(u64::from(r.len) + 1);
    dec.read_to_end(&mut out).map_err(|e| ChunkError::Corrupt {
        id: r.id,
        problem: e.to_string(),
    })?;
    if out.len() > r.len as usize {
        return Err(ChunkError::Inflates {
            id: r.id,
            len: r.len,
        });
    }
    Ok(out)
}

/// Checks that `chunks` cover `0..object_len` exactly, in order, without gaps, overlaps or empty chunks.
pub fn check_coverage(chunks: &[ChunkRef], object_len: u64) -> Result<(), ChunkError> {
    let mut expected = 0u64;
    for (index, c) in chunks.iter().enumerate() {
        if c.len == 0 {
            return Err(ChunkError::Empty(index));
        }
        if c.len > MAX_CHUNK_SIZE {
            return Err(ChunkError::ChunkSize(c.len));
        }
        if c.offset != expected {
            return Err(ChunkError::Coverage {
                index,
                offset: c.offset,
                expected,
            });
        }
        expected = expected
            .checked_add(u64::from(c.len))
            .ok_or(ChunkError::Incomplete {
                covered: u64::MAX,
                len: object_len,
            })?;
    }
    if expected != object_len {
        return Err(ChunkError::Incomplete {
            covered: expected,
            len: object_len,
        });
    }
    Ok(())
}

/// Natural boundaries of a safetensors object: the start of its data section and of every tensor.
/// Empty for bytes that do not parse (such an object is chunked by size alone).
pub fn safetensors_boundaries(bytes: &[u8]) -> Vec<u64> {
    match crate::safetensors::parse(bytes) {
        Ok(h) => std::iter::once(h.data_start as u64)
            .chain(h.tensors.iter().map(|t| t.range.start as u64))
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Natural boundaries of a `.bitdelta` object: the start of every non-empty block.
pub fn bitdelta_boundaries(bytes: &[u8]) -> Vec<u64> {
    match crate::bitdelta::BitDeltaFile::parse(bytes) {
        Ok(f) => f
            .entries
            .iter()
            .filter(|e| e.length > 0)
            .map(|e| e.offset)
            .collect(),
        Err(_) => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn refs(data: &[u8], ranges: &[Range<u64>]) -> (Vec<ChunkRef>, Vec<Vec<u8>>) {
        let mut rs = Vec::new();
        let mut stored = Vec::new();
        for r in ranges {
            let piece = &data[r.start as usize..r.end as usize];
            let (codec, s, id) = encode(piece, 3);
            rs.push(ChunkRef {
                id,
                offset: r.start,
                len: piece.len() as u32,
                codec,
            });
            stored.push(s);
        }
        (rs, stored)
    }

    #[test]
    fn plan_respects_boundaries_and_size() {
        let p = plan(10, &[3, 3, 0, 10, 99], 4).unwrap();
        assert_eq!(p, vec![0..3, 3..7, 7..10]);
        assert_eq!(plan(0, &[], 4).unwrap(), Vec::<Range<u64>>::new());
        assert!(plan(10, &[], 0).is_err());
    }

    #[test]
    fn unchanged_tensor_gives_same_chunks() {
        // Two objects that share a middle region at the same boundaries share its chunk ids.
        let mut a = vec![1u8; 3000];
        let mut b = vec![2u8; 3000];
        for i in 1000..2000 {
            a[i] = (i % 7) as u8;
            b[i] = (i % 7) as u8;
        }
        let pa = plan(3000, &[1000, 2000], 1 << 20).unwrap();
        let (ra, _) = refs(&a, &pa);
        let (rb, _) = refs(&b, &pa);
        assert_eq!(ra[1].id, rb[1].id);
        assert_ne!(ra[0].id, rb[0].id);
    }

    #[test]
    fn float_chunks_use_planes_when_smaller_and_round_trip() {
        // bf16 weights ~ N(0, 0.04): planes beats zstd on them.
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let data: Vec<u8> = (0..100_000)
            .flat_map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let u = ((x >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0;
                let v = (u * u * u * 0.1) as f32;
                ((v.to_bits() >> 16) as u16).to_le_bytes()
            })
            .collect();
        let (codec, stored, id) = encode_elements(&data, 3, Some(crate::DType::BF16));
        assert_eq!(codec, Codec::Planes);
        let (_, zstd_stored, _) = encode(&data, 3);
        assert!(stored.len() < zstd_stored.len());
        let r = ChunkRef {
            id,
            offset: 0,
            len: data.len() as u32,
            codec,
        };
        assert_eq!(decode(&stored, &r).unwrap(), data);
        // Declared shorter than it decodes: refused as a bomb, not truncated.
        let short = ChunkRef {
            len: 1000,
            ..r.clone()
        };
        assert!(matches!(
            decode(&stored, &short),
            Err(ChunkError::Inflates { .. })
        ));
        // Not a float tensor: plain zstd/raw.
        assert_ne!(
            encode_elements(&data, 3, Some(crate::DType::I64)).0,
            Codec::Planes
        );
        assert_ne!(encode_elements(&data, 3, None).0, Codec::Planes);
    }

    #[test]
    fn bad_chunks_are_refused() {
        let data = vec![0u8; 10_000];
        let (codec, stored, id) = encode(&data, 3);
        assert_eq!(codec, Codec::Zstd);
        let r = ChunkRef {
            id,
            offset: 0,
            len: 10_000,
            codec,
        };
        assert_eq!(decode(&stored, &r).unwrap(), data);
        // Wrong hash: refused before decompression.
        let mut bad = stored.clone();
        bad[0] ^= 1;
        assert!(matches!(
            decode(&bad, &r),
            Err(ChunkError::HashMismatch { .. })
        ));
        // A bomb: declared 100 bytes, inflates to 10 000.
        let bomb = ChunkRef {
            len: 100,
            ..r.clone()
        };
        assert!(matches!(
            decode(&stored, &bomb),
            Err(ChunkError::Inflates { .. })
        ));
        // Declared longer than it is.
        let short = ChunkRef {
            len: 20_000,
            ..r.clone()
        };
        assert!(matches!(
            decode(&stored, &short),
            Err(ChunkError::Length { .. })
        ));
        // Gzip bomb.
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        std::io::Write::write_all(&mut gz, &data).unwrap();
        let gz = gz.finish().unwrap();
        let g = ChunkRef {
            id: Hash::of(&gz),
            offset: 0,
            len: 100,
            codec: Codec::Gzip,
        };
        assert!(matches!(decode(&gz, &g), Err(ChunkError::Inflates { .. })));
        let g = ChunkRef { len: 10_000, ..g };
        assert_eq!(decode(&gz, &g).unwrap(), data);
    }

    #[test]
    fn coverage_errors() {
        let c = |offset, len| ChunkRef {
            id: Hash::ZERO,
            offset,
            len,
            codec: Codec::Raw,
        };
        assert!(check_coverage(&[c(0, 5), c(5, 5)], 10).is_ok());
        assert!(matches!(
            check_coverage(&[c(0, 5), c(6, 4)], 10),
            Err(ChunkError::Coverage { .. })
        ));
        assert!(matches!(
            check_coverage(&[c(0, 5), c(4, 6)], 10),
            Err(ChunkError::Coverage { .. })
        ));
        assert!(matches!(
            check_coverage(&[c(0, 5)], 10),
            Err(ChunkError::Incomplete { .. })
        ));
        assert!(matches!(
            check_coverage(&[c(0, 0), c(0, 10)], 10),
            Err(ChunkError::Empty(0))
        ));
    }

    /// `encode_elements` as first written: whole-chunk zstd in full, then the planes coding,
    /// the smallest kept. The reference the early-stopping version must match.
    fn reference_encode_elements(
        data: &[u8],
        level: i32,
        dtype: Option<crate::DType>,
    ) -> (Codec, Vec<u8>, Hash) {
        use crate::DType;
        let (mut codec, mut stored) = match zstd::bulk::compress(data, level) {
            Ok(z) if z.len() < data.len() => (Codec::Zstd, z),
            _ => (Codec::Raw, data.to_vec()),
        };
        if let Some(d @ (DType::F32 | DType::F16 | DType::BF16)) = dtype {
            if data.len().is_multiple_of(d.size()) {
                if let Ok(p) = crate::planes::encode(d, data, level) {
                    if p.len() < stored.len() {
                        codec = Codec::Planes;
                        stored = p;
                    }
                }
            }
        }
        let id = Hash::of(&stored);
        (codec, stored, id)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]

        /// Floats of several kinds (weights, few values, constants, random bits, bytes that zstd
        /// compresses well) under every dtype: the same codec and stored bytes as the reference.
        #[test]
        fn encode_elements_matches_the_reference(
            seed in any::<u64>(),
            kind in 0u8..5,
            n in 0usize..12_000,
            dtype in proptest::sample::select(vec![
                Some(crate::DType::BF16), Some(crate::DType::F16), Some(crate::DType::F32),
                Some(crate::DType::I32), None,
            ]),
            odd in any::<bool>(),
        ) {
            let mut x = seed | 1;
            let mut data: Vec<u8> = (0..n)
                .flat_map(|i| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let u = ((x >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0;
                    let v = match kind {
                        0 => (u * 0.04) as f32,
                        1 => ((x % 3) as f32 - 1.0) * 0.25,
                        2 => 0.5,
                        3 => f32::from_bits(x as u32),
                        _ => (i % 64) as f32,
                    };
                    ((v.to_bits() >> 16) as u16).to_le_bytes()
                })
                .collect();
            if odd {
                data.push(7);
            }
            prop_assert_eq!(
                encode_elements(&data, 3, dtype),
                reference_encode_elements(&data, 3, dtype)
            );
        }
    }

    proptest! {
        #[test]
        fn split_encode_decode_round_trip(
            data in proptest::collection::vec(0u8..4, 0..5000),
            cuts in proptest::collection::vec(0u64..6000, 0..8),
            size in 1u32..2000,
        ) {
            let ranges = plan(data.len() as u64, &cuts, size).unwrap();
            let (rs, stored) = refs(&data, &ranges);
            check_coverage(&rs, data.len() as u64).unwrap();
            let mut back = Vec::new();
            for (r, s) in rs.iter().zip(&stored) {
                prop_assert!(r.len <= size);
                back.extend(decode(s, r).unwrap());
            }
            prop_assert_eq!(back, data);
        }
    }
}
