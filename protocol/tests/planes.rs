//! The planes codec (`zdn_protocol::planes`, docs/spec/planes.md): round trips of every dtype on random
//! and special values, golden vectors, hand-made bad inputs, and a mutation harness — valid encodings
//! of every mode and codec are mutated at random and decoded; every call must return Ok or Err, never
//! panic.
//!
//! Mutation cases: `ZDN_PLANES_MUTATION_CASES` (default 20 000), seed `ZDN_PLANES_MUTATION_SEED`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::panic::{catch_unwind, AssertUnwindSafe};

use proptest::prelude::*;
use zdn_protocol::planes::{
    decode, encode, encode_with, inspect, BlockKind, EncodeOptions, Layout, PlanesError,
    Strategy as Coding,
};
use zdn_protocol::DType;

struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
    /// Roughly Gaussian with standard deviation ≈ 0.03, like trained weights.
    fn weight(&mut self) -> f32 {
        let s: f32 = (0..4)
            .map(|_| (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32 - 0.5)
            .sum();
        s * 0.1
    }
}

/// `n` weight-like values of `dtype`, little-endian.
fn weights(dtype: DType, n: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng(seed);
    (0..n)
        .flat_map(|_| {
            let v = rng.weight();
            match dtype {
                DType::BF16 => half::bf16::from_f32(v).to_le_bytes().to_vec(),
                DType::F16 => half::f16::from_f32(v).to_le_bytes().to_vec(),
                _ => v.to_le_bytes().to_vec(),
            }
        })
        .collect()
}

fn round_trip(dtype: DType, data: &[u8], opts: &EncodeOptions) {
    let enc = encode_with(dtype, data, opts).unwrap();
    assert_eq!(
        encode_with(dtype, data, opts).unwrap(),
        enc,
        "not deterministic"
    );
    assert_eq!(decode(&enc, data.len()).unwrap(), data);
    let info = inspect(&enc).unwrap();
    assert_eq!(info.dtype, dtype);
    assert_eq!(info.decoded_len, data.len() as u64);
}

/// Bit patterns that stress a float codec: NaNs (quiet, signalling, negative, with payloads), the
/// infinities, signed zeros, subnormals, extremes and ordinary values.
fn specials(dtype: DType) -> Vec<u64> {
    match dtype {
        DType::BF16 => vec![
            0x7fc0, 0xffc0, 0x7f81, 0x7fff, 0x7f80, 0xff80, 0x0000, 0x8000, 0x0001, 0x807f, 0x0040,
            0x7f7f, 0xff7f, 0x0080, 0x3f80, 0xbf80, 0x3c23,
        ],
        DType::F16 => vec![
            0x7e00, 0xfe00, 0x7c01, 0x7fff, 0x7c00, 0xfc00, 0x0000, 0x8000, 0x0001, 0x83ff, 0x0200,
            0x7bff, 0xfbff, 0x0400, 0x3c00, 0xbc00, 0x2e66,
        ],
        _ => vec![
            0x7fc0_0000,
            0xffc0_0000,
            0x7f80_0001,
            0x7fff_ffff,
            0x7f80_0000,
            0xff80_0000,
            0,
            0x8000_0000,
            1,
            0x807f_ffff,
            0x0040_0000,
            0x7f7f_ffff,
            0xff7f_ffff,
            0x0080_0000,
            0x3f80_0000,
            0xbf80_0000,
            0x3c23_d70a,
        ],
    }
}

const FLOATS: [DType; 3] = [DType::BF16, DType::F16, DType::F32];

fn any_dtype() -> impl Strategy<Value = DType> {
    proptest::sample::select(DType::ALL.to_vec())
}

fn strategies() -> impl Strategy<Value = Coding> {
    prop_oneof![
        4 => Just(Coding::Auto),
        1 => Just(Coding::PlanesZstd(Layout::Bytes)),
        1 => Just(Coding::PlanesZstd(Layout::BytePlanes)),
        1 => Just(Coding::PlanesZstd(Layout::FieldPlanes)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Random bytes of every dtype, any length (odd lengths leave a raw tail), several block sizes.
    #[test]
    fn random_bytes_round_trip(
        dtype in any_dtype(),
        data in proptest::collection::vec(any::<u8>(), 0..3000),
        blocks in 1u32..64,
        strategy in strategies(),
    ) {
        let opts = EncodeOptions {
            block_len: blocks * 8 * dtype.size() as u32,
            strategy,
            ..EncodeOptions::default()
        };
        round_trip(dtype, &data, &opts);
    }

    /// Weight-like floats mixed with special values (NaN, ±Inf, ±0, subnormals, extremes), with an
    /// optional ragged tail.
    #[test]
    fn floats_with_specials_round_trip(
        dtype in proptest::sample::select(FLOATS.to_vec()),
        n in 0usize..2000,
        seed in any::<u64>(),
        special_one_in in 1u64..50,
        tail in 0usize..4,
        small_blocks in any::<bool>(),
        strategy in strategies(),
    ) {
        let sp = specials(dtype);
        let mut rng = Rng(seed);
        let mut data = weights(dtype, n, seed);
        let e = dtype.size();
        for i in 0..n {
            if rng.below(special_one_in) == 0 {
                let v = sp[rng.below(sp.len() as u64) as usize];
                data[i * e..(i + 1) * e].copy_from_slice(&v.to_le_bytes()[..e]);
            }
        }
        data.extend((0..tail.min(e - 1)).map(|k| k as u8 + 0xa0));
        let opts = EncodeOptions {
            block_len: if small_blocks { 256 * e as u32 } else { 1 << 20 },
            strategy,
            ..EncodeOptions::default()
        };
        round_trip(dtype, &data, &opts);
    }

    /// Every bf16/f16 bit pattern at once (a uniform histogram), in a shuffled order.
    #[test]
    fn all_16_bit_patterns_round_trip(dtype in prop_oneof![Just(DType::BF16), Just(DType::F16)], seed in any::<u64>()) {
        let mut rng = Rng(seed);
        let mut v: Vec<u16> = (0..=u16::MAX).collect();
        for i in (1..v.len()).rev() {
            v.swap(i, rng.below(i as u64 + 1) as usize);
        }
        let data: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        round_trip(dtype, &data, &EncodeOptions::default());
    }
}

#[test]
fn constant_and_two_valued_inputs() {
    for dtype in [DType::BF16, DType::F16, DType::F32, DType::U8, DType::F64] {
        let e = dtype.size();
        let zeros = vec![0u8; 4096 * e];
        round_trip(dtype, &zeros, &EncodeOptions::default());
        let two: Vec<u8> = (0..4096 * e).map(|i| u8::from(i % (3 * e) == 0)).collect();
        round_trip(dtype, &two, &EncodeOptions::default());
    }
}

#[test]
fn weights_reach_the_fields_mode_ratio() {
    for (dtype, min_ratio) in [(DType::BF16, 1.5), (DType::F16, 1.15), (DType::F32, 1.15)] {
        let data = weights(dtype, 300_000, 7);
        let enc = encode(dtype, &data, 3).unwrap();
        let ratio = data.len() as f64 / enc.len() as f64;
        assert!(ratio > min_ratio, "{dtype}: {ratio:.3}");
        assert_eq!(decode(&enc, data.len()).unwrap(), data);
    }
}

// ---- Golden vectors. ----

/// A hand-checkable encoding: four bf16 values (1.0, −2.0, 0.5, 1.0) and one tail byte 0xee. On so
/// little data fields mode and Huffman plane codes cost more than they save (their tables), so the
/// block is two raw field planes: exponents 127, 128, 126, 127 and sign/mantissa bytes 0, 0x80, 0, 0.
const TINY: &str = concat!(
    "5a444e50",
    "01",
    "06",
    "01",
    "00",               // magic "ZDNP", version 1, dtype BF16 (code 6), tail 1, flags 0
    "0900000000000000", // decoded length 9
    "00001000",         // block length 1 MiB
    "01000000",         // 1 block
    "ee",               // the tail
    "00",
    "13000000", // block 0: planes mode, body 19 bytes
    "02",       // layout: field planes
    "00",
    "04000000",
    "7f807e7f", // plane 0 (exponents): raw, 4 bytes
    "00",
    "04000000",
    "00800000", // plane 1 (sign, mantissa): raw, 4 bytes
);

#[test]
fn tiny_golden_vector_decodes() {
    let data: Vec<u8> = [0x3f80u16, 0xc000, 0x3f00, 0x3f80]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .chain([0xee])
        .collect();
    let enc = encode(DType::BF16, &data, 3).unwrap();
    let hex: String = enc.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(hex, TINY, "encoder output changed");
    assert_eq!(decode(&enc, 9).unwrap(), data);
}

#[test]
fn golden_vector_hash() {
    // 50 000 weight-like bf16 values in 64 KiB blocks, and a 1-byte tail.
    let mut data = weights(DType::BF16, 50_000, 42);
    data.push(0x5a);
    let opts = EncodeOptions {
        block_len: 64 << 10,
        ..EncodeOptions::default()
    };
    let enc = encode_with(DType::BF16, &data, &opts).unwrap();
    assert_eq!(
        blake3::hash(&data).to_hex().as_str(),
        "cfca92194ba22dcae1d9f9283079381bf70c2c52b7c93fc0c674a6f90db70401",
        "input changed"
    );
    assert_eq!(
        blake3::hash(&enc).to_hex().as_str(),
        "ebae61730e913696f68ce5388c957c1ab7ba85a951943e23218336a6a48a9779",
        "encoding changed ({} bytes)",
        enc.len()
    );
    let info = inspect(&enc).unwrap();
    assert!(info
        .blocks
        .iter()
        .all(|(k, _)| matches!(k, BlockKind::Fields { .. })));
    assert_eq!(decode(&enc, data.len()).unwrap(), data);
}

// ---- Hand-made bad inputs. ----

#[test]
fn bad_headers_are_named() {
    let data = weights(DType::BF16, 1000, 1);
    let enc = encode(DType::BF16, &data, 3).unwrap();
    let with = |at: usize, v: &[u8]| {
        let mut e = enc.clone();
        e[at..at + v.len()].copy_from_slice(v);
        decode(&e, 1 << 20).unwrap_err()
    };
    assert_eq!(with(0, b"ZDNQ"), PlanesError::BadMagic);
    assert_eq!(with(4, &[2]), PlanesError::Version(2));
    assert_eq!(with(5, &[99]), PlanesError::UnknownDType(99));
    assert_eq!(with(7, &[1]), PlanesError::Flags(1));
    assert!(matches!(with(6, &[2]), PlanesError::TailLength { .. }));
    assert!(matches!(
        with(16, &0u32.to_le_bytes()),
        PlanesError::BlockLength { .. }
    ));
    assert!(matches!(
        with(20, &7u32.to_le_bytes()),
        PlanesError::BlockCount { .. }
    ));
    assert!(matches!(with(24, &[9]), PlanesError::UnknownMode { .. }));
    assert_eq!(
        decode(&enc, 1999).unwrap_err(),
        PlanesError::TooLarge {
            len: 2000,
            max: 1999
        }
    );
    // A huge declared length is refused before allocation, whatever the cap.
    let mut huge = enc.clone();
    huge[8..16].copy_from_slice(&(1u64 << 40).to_le_bytes());
    huge[20..24].copy_from_slice(&(1u32 << 20).to_le_bytes());
    assert!(matches!(
        decode(&huge, usize::MAX).unwrap_err(),
        PlanesError::BlocksMissing { .. }
    ));
    let mut long = enc.clone();
    long.push(0);
    assert_eq!(
        decode(&long, 1 << 20).unwrap_err(),
        PlanesError::TrailingBytes(1)
    );
    assert!(matches!(
        decode(&enc[..enc.len() - 1], 1 << 20).unwrap_err(),
        PlanesError::Truncated { .. }
    ));
    assert!(matches!(
        decode(&enc[..10], 1 << 20).unwrap_err(),
        PlanesError::Truncated { .. }
    ));
}

// ---- Mutation harness. ----

/// Valid encodings covering fields mode (16- and 32-bit, several raw bit counts), planes mode with
/// every layout and codec (raw, const, zstd, Huffman), tails, several blocks and the empty input.
fn seeds() -> Vec<(DType, Vec<u8>)> {
    let small = |strategy| EncodeOptions {
        block_len: 4096,
        strategy,
        ..EncodeOptions::default()
    };
    let mut s = Vec::new();
    let mut add = |dtype: DType, data: Vec<u8>, opts: EncodeOptions| {
        s.push((dtype, encode_with(dtype, &data, &opts).unwrap()));
    };
    for dtype in FLOATS {
        let mut w = weights(dtype, 3000, dtype.code().into());
        w.push(1);
        add(dtype, w.clone(), small(Coding::Auto));
        add(
            dtype,
            w.clone(),
            small(Coding::PlanesZstd(Layout::FieldPlanes)),
        );
        add(dtype, w, small(Coding::PlanesZstd(Layout::Bytes)));
    }
    // f32 upcast from bf16: Huffman exponent plane, raw mantissa plane, const low planes.
    let up: Vec<u8> = weights(DType::BF16, 2000, 5)
        .chunks_exact(2)
        .flat_map(|c| [0, 0, c[0], c[1]])
        .collect();
    add(DType::F32, up, small(Coding::Auto));
    // Compressible integers: zstd planes.
    let ints: Vec<u8> = (0..3000u32).flat_map(|i| (i % 17).to_le_bytes()).collect();
    add(DType::I32, ints.clone(), small(Coding::Auto));
    add(
        DType::U64,
        ints,
        small(Coding::PlanesZstd(Layout::BytePlanes)),
    );
    add(DType::BF16, Vec::new(), EncodeOptions::default());
    add(
        DType::U8,
        (0..500u32).map(|i| (i * i % 7) as u8).collect(),
        small(Coding::Auto),
    );
    s
}

fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut m = seed.to_vec();
    let rounds = 1 + rng.below(3);
    for _ in 0..rounds {
        let len = m.len().max(1) as u64;
        let at = rng.below(len) as usize;
        match rng.below(9) {
            0..=2 => {
                if let Some(b) = m.get_mut(at) {
                    *b ^= 1 << rng.below(8);
                }
            }
            3 => {
                if let Some(b) = m.get_mut(at) {
                    *b = rng.next_u64() as u8;
                }
            }
            4 => m.truncate(at),
            5 => m.extend((0..rng.below(16)).map(|_| rng.next_u64() as u8)),
            6 => m.insert(at.min(m.len()), rng.next_u64() as u8),
            7 => {
                if at < m.len() {
                    m.remove(at);
                }
            }
            _ => {
                // An extreme or off-by-one integer spliced in where a length field might be.
                let v: u32 = match rng.below(6) {
                    0 => 0,
                    1 => u32::MAX,
                    2 => 1 << 20,
                    3 => 1 << 31,
                    4 => rng.below(64) as u32,
                    _ => rng.next_u64() as u32,
                };
                let width = [1usize, 2, 4][rng.below(3) as usize];
                if at + width <= m.len() {
                    m[at..at + width].copy_from_slice(&v.to_le_bytes()[..width]);
                }
            }
        }
    }
    m
}

#[test]
fn seeds_cover_every_mode_and_codec() {
    let mut seen = std::collections::BTreeSet::new();
    for (_, enc) in seeds() {
        for (kind, _) in inspect(&enc).unwrap().blocks {
            match kind {
                BlockKind::Fields { .. } => {
                    seen.insert("fields");
                }
                BlockKind::Planes { codecs, .. } => seen.extend(codecs),
            }
        }
    }
    assert_eq!(
        seen.into_iter().collect::<Vec<_>>(),
        ["const", "fields", "huffman", "raw", "zstd"]
    );
}

#[test]
fn mutated_encodings_never_panic() {
    let cases: u64 = std::env::var("ZDN_PLANES_MUTATION_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let seed: u64 = std::env::var("ZDN_PLANES_MUTATION_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5eed);
    let seeds = seeds();
    let mut rng = Rng(seed);
    let cap = 1 << 20;
    let (mut ok, mut err) = (0u64, 0u64);
    for case in 0..cases {
        let (_, seed_enc) = &seeds[rng.below(seeds.len() as u64) as usize];
        let m = mutate(&mut rng, seed_enc);
        let result = catch_unwind(AssertUnwindSafe(|| (decode(&m, cap), inspect(&m))));
        match result {
            Ok((Ok(out), info)) => {
                assert!(out.len() <= cap);
                assert!(info.is_ok(), "case {case}: decodes but does not inspect");
                ok += 1;
            }
            Ok((Err(e), _)) => {
                assert!(!e.to_string().is_empty());
                err += 1;
            }
            Err(_) => {
                let path = std::env::temp_dir().join(format!("zdn-planes-panic-{case}.bin"));
                let _ = std::fs::write(&path, &m);
                panic!(
                    "case {case}: decode panicked; input saved to {}",
                    path.display()
                );
            }
        }
    }
    eprintln!("{cases} mutated encodings: {ok} decoded, {err} refused");
    assert!(err > cases / 2, "most mutations should be caught");
}
