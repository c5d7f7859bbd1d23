//! Property tests of the `.bitdelta` codec against an independent reference of the reconstruction
//! arithmetic (written here from docs/spec/bitdelta.md, not from the implementation).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use proptest::prelude::*;
use zdn_protocol::bitdelta::{
    decode_model, encode_model, quantize, BitDeltaFile, EmbeddingPolicy, EncodeOptions,
    Granularity, Metadata, ModelTensor, QuantSpec, Selection, TensorData,
};
use zdn_protocol::{DType, Hash};

fn to_dtype(v: f32, d: DType) -> Vec<u8> {
    match d {
        DType::F32 => v.to_le_bytes().to_vec(),
        DType::F16 => half::f16::from_f32(v).to_le_bytes().to_vec(),
        _ => half::bf16::from_f32(v).to_le_bytes().to_vec(),
    }
}

fn read(d: DType, b: &[u8], i: usize) -> f32 {
    match d {
        DType::F32 => f32::from_le_bytes(b[4 * i..4 * i + 4].try_into().unwrap()),
        DType::F16 => half::f16::from_le_bytes(b[2 * i..2 * i + 2].try_into().unwrap()).to_f32(),
        _ => f32::from_bits(
            u32::from(u16::from_le_bytes(b[2 * i..2 * i + 2].try_into().unwrap())) << 16,
        ),
    }
}

/// Round-to-nearest-even f32 → bf16 from the definition.
fn bf16_rne(v: f32) -> u16 {
    let bits = v.to_bits();
    let (upper, lower) = ((bits >> 16) as u16, bits & 0xffff);
    if lower > 0x8000 || (lower == 0x8000 && upper & 1 == 1) {
        upper.wrapping_add(1)
    } else {
        upper
    }
}

fn write(v: f32, d: DType) -> Vec<u8> {
    if v.is_nan() {
        return match d {
            DType::F32 => 0x7fc0_0000u32.to_le_bytes().to_vec(),
            DType::F16 => 0x7e00u16.to_le_bytes().to_vec(),
            _ => 0x7fc0u16.to_le_bytes().to_vec(),
        };
    }
    match d {
        DType::BF16 => bf16_rne(v).to_le_bytes().to_vec(),
        _ => to_dtype(v, d),
    }
}

/// The reference reconstruction of a quantized block.
fn reference(
    shape: &[u64],
    gran: Granularity,
    bits: u32,
    block: &[u8],
    base: DType,
    bb: &[u8],
    target: DType,
) -> Vec<u8> {
    let (rows, cols) = match shape {
        [] => (1usize, 1usize),
        [d] => (1, *d as usize),
        [d0, rest @ ..] => (*d0 as usize, rest.iter().product::<u64>() as usize),
    };
    let n_scales = match gran {
        Granularity::Tensor => 1,
        Granularity::Row => rows,
        Granularity::Group(n) => rows * cols.div_ceil(n as usize),
    };
    let scales: Vec<f32> = block[..4 * n_scales]
        .chunks(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let packed = &block[4 * n_scales..];
    let mut out = Vec::new();
    for i in 0..rows * cols {
        let (r, c) = (i / cols.max(1), i % cols.max(1));
        let k = match gran {
            Granularity::Tensor => 0,
            Granularity::Row => r,
            Granularity::Group(n) => r * cols.div_ceil(n as usize) + c / n as usize,
        };
        let bit = i * bits as usize;
        let code = (packed[bit / 8] >> (bit % 8)) & ((1u8 << bits) - 1);
        let level = 2.0 * f32::from(code) - ((1u32 << bits) - 1) as f32;
        let d = scales[k] * level;
        out.extend(write(read(base, bb, i) + d, target));
    }
    out
}

fn dtype() -> impl Strategy<Value = DType> {
    prop_oneof![Just(DType::F32), Just(DType::F16), Just(DType::BF16)]
}

fn gran() -> impl Strategy<Value = Granularity> {
    prop_oneof![
        Just(Granularity::Tensor),
        Just(Granularity::Row),
        Just(Granularity::Group(1)),
        Just(Granularity::Group(3)),
        Just(Granularity::Group(8)),
        Just(Granularity::Group(128)),
    ]
}

fn shape() -> impl Strategy<Value = Vec<u64>> {
    prop_oneof![
        Just(vec![]),
        (0u64..40).prop_map(|a| vec![a]),
        (0u64..12, 0u64..40).prop_map(|(a, b)| vec![a, b]),
        (1u64..5, 1u64..6, 1u64..9).prop_map(|(a, b, c)| vec![a, b, c]),
    ]
}

fn meta() -> Metadata {
    Metadata {
        base_hash: Hash::ZERO,
        n_params: 0,
        n_quantized: 0,
        bits: 1,
        granularity: Granularity::Tensor,
        clip_sigma: 0.0,
        embeddings: 0,
        model_name: "prop".into(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn quantized_round_trip_matches_reference(
        shape in shape(), bd in dtype(), td in dtype(), g in gran(),
        bits in prop_oneof![Just(1u32), Just(2), Just(4)],
        seed in any::<u64>(), clip in prop_oneof![Just(None), Just(Some(2.5f32))],
    ) {
        let n: u64 = shape.iter().product();
        let mut x = seed;
        let mut next = || { x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407); ((x >> 33) as f32 / (1u64 << 31) as f32) - 0.5 };
        let (mut b, mut t) = (Vec::new(), Vec::new());
        for _ in 0..n {
            let w = next();
            b.extend(to_dtype(w, bd));
            t.extend(to_dtype(w + 0.01 * next(), td));
        }
        let base = [ModelTensor { name: "w", data: TensorData::new(bd, &shape, &b).unwrap() }];
        let target = [ModelTensor { name: "w", data: TensorData::new(td, &shape, &t).unwrap() }];
        let opts = EncodeOptions { spec: QuantSpec { bits, granularity: g, clip_sigma: clip }, zstd_level: 3 };
        let sel = Selection { include: vec![zdn_protocol::glob::Glob::new("w")], exclude: vec![], embeddings: EmbeddingPolicy::Base };
        let file = encode_model(meta(), &base, &target, &sel, &opts).unwrap();
        prop_assert_eq!(&file, &encode_model(meta(), &base, &target, &sel, &opts).unwrap(), "deterministic");
        let parsed = BitDeltaFile::parse(&file).unwrap();
        let e = &parsed.entries[0];
        let decoded = decode_model(&file, &base).unwrap();
        if n == 0 {
            prop_assert_eq!(decoded[0].1.len(), 0);
        } else {
            prop_assert_eq!(e.encoding.bits(), Some(bits));
            let want = reference(&shape, g, bits, parsed.block(0), bd, &b, td);
            prop_assert_eq!(&decoded[0].1, &want);
        }
    }

    #[test]
    fn one_bit_is_never_worse_than_the_base_and_more_bits_help(
        rows in 1u64..8, cols in 1u64..64, seed in any::<u64>(), g in gran(),
    ) {
        let shape = vec![rows, cols];
        let n = (rows * cols) as usize;
        let mut x = seed | 1;
        let mut next = || { x ^= x << 13; x ^= x >> 7; x ^= x << 17; (x >> 40) as f32 / (1u64 << 24) as f32 - 0.5 };
        let b: Vec<f32> = (0..n).map(|_| next()).collect();
        let t: Vec<f32> = b.iter().map(|v| v + 0.01 * next()).collect();
        let bb: Vec<u8> = b.iter().flat_map(|v| v.to_le_bytes()).collect();
        let tb: Vec<u8> = t.iter().flat_map(|v| v.to_le_bytes()).collect();
        let base = [ModelTensor { name: "w", data: TensorData::new(DType::F32, &shape, &bb).unwrap() }];
        let target = [ModelTensor { name: "w", data: TensorData::new(DType::F32, &shape, &tb).unwrap() }];
        let base_err: f64 = b.iter().zip(&t).map(|(x, y)| f64::from(x - y).powi(2)).sum();
        let mut last = f64::INFINITY;
        for bits in [1u32, 2, 4] {
            let opts = EncodeOptions { spec: QuantSpec { bits, granularity: g, clip_sigma: None }, zstd_level: 3 };
            let file = encode_model(meta(), &base, &target, &Selection::default(), &opts).unwrap();
            let r = &decode_model(&file, &base).unwrap()[0].1;
            let err: f64 = (0..n).map(|i| f64::from(read(DType::F32, r, i) - t[i]).powi(2)).sum();
            // Rounding of base + scale·level to f32 adds at most half an ulp per element.
            let slack = 1e-9 * (n as f64);
            prop_assert!(err <= base_err + slack, "{bits}-bit error {err} > base error {base_err}");
            if bits > 1 {
                prop_assert!(err <= last + slack, "{bits}-bit error {err} > fewer bits' {last}");
            }
            last = err;
        }
    }

    #[test]
    fn lossless_tensors_are_bit_exact(
        words in proptest::collection::vec(any::<u32>(), 0..300),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u32>()), 0..20),
        with_base in any::<bool>(), int in any::<bool>(),
    ) {
        let dt = if int { DType::I32 } else { DType::F32 };
        let shape = vec![words.len() as u64];
        let b: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        let mut tw = words.clone();
        for (i, v) in &flips {
            if !tw.is_empty() { let k = i.index(tw.len()); tw[k] ^= v; }
        }
        let t: Vec<u8> = tw.iter().flat_map(|w| w.to_le_bytes()).collect();
        let base = [ModelTensor { name: "x", data: TensorData::new(dt, &shape, &b).unwrap() }];
        let target = [ModelTensor { name: "x", data: TensorData::new(dt, &shape, &t).unwrap() }];
        let sel = Selection { include: vec![], exclude: vec![zdn_protocol::glob::Glob::new("*")], embeddings: EmbeddingPolicy::Base };
        let bases: &[ModelTensor<'_>] = if with_base { &base } else { &[] };
        let file = encode_model(meta(), bases, &target, &sel, &EncodeOptions::default()).unwrap();
        prop_assert_eq!(&decode_model(&file, bases).unwrap()[0].1, &t);
    }

    #[test]
    fn explicit_scales_are_used_as_given(scales in proptest::collection::vec(-1.0f32..1.0, 3)) {
        let shape = vec![3u64, 5];
        let z = vec![0u8; 60];
        let b = TensorData::new(DType::F32, &shape, &z).unwrap();
        let spec = QuantSpec { bits: 1, granularity: Granularity::Row, clip_sigma: None };
        let q = quantize(&b, &b, &spec, Some(&scales)).unwrap();
        prop_assert_eq!(q.scales, scales);
        prop_assert!(quantize(&b, &b, &spec, Some(&[1.0])).is_err());
        prop_assert!(quantize(&b, &b, &spec, Some(&[1.0, f32::NAN, 1.0])).is_err());
    }
}
