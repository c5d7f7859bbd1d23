//! Round-trip and quality properties of the `.bitdelta` codec, checked against a reference written here
//! from docs/spec/bitdelta.md (not from the implementation): the reconstruction arithmetic, the code
//! assignment and the default scales, with hand-written f16/bf16 round-to-nearest-even conversions.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::HashSet;

use common::{build_file, meta, model, Rng, Tensor};
use proptest::prelude::*;
use zdn_protocol::bitdelta::{
    decode_model, encode_model, encode_tensor, quantize, BitDeltaFile, Choice, EmbeddingPolicy,
    EncodeOptions, Encoding, Granularity, QuantSpec, QuantizeError, Selection,
};
use zdn_protocol::glob::Glob;
use zdn_protocol::safetensors::{encode_header, parse, TensorLayout};
use zdn_protocol::DType;

// ---------------------------------------------------------------------------------------------------
// Reference conversions (hand-written; `half` is only used as a cross-check of these).
// ---------------------------------------------------------------------------------------------------

/// 2^e as an f64, exactly (normal range only).
fn pow2(e: i32) -> f64 {
    f64::from_bits(((e + 1023) as u64) << 52)
}

/// Unbiased exponent of a positive, finite, non-zero f64.
fn exponent(a: f64) -> i32 {
    ((a.to_bits() >> 52) & 0x7ff) as i32 - 1023
}

/// f16 bits → f32, from the IEEE 754 binary16 definition.
fn f16_to_f32(h: u16) -> f32 {
    let sign = if h & 0x8000 != 0 { -1.0 } else { 1.0 };
    let e = i32::from((h >> 10) & 0x1f);
    let m = f64::from(h & 0x3ff);
    let v = match e {
        0 => m * pow2(-24),
        31 if m == 0.0 => f64::INFINITY,
        31 => f64::NAN,
        _ => (1024.0 + m) * pow2(e - 25),
    };
    (sign * v) as f32
}

/// bf16 bits → f32: the top half of an f32.
fn bf16_to_f32(h: u16) -> f32 {
    f32::from_bits(u32::from(h) << 16)
}

/// f32 → f16 bits, round to nearest even, canonical NaN 0x7e00.
fn f32_to_f16_rne(v: f32) -> u16 {
    if v.is_nan() {
        return 0x7e00;
    }
    let sign: u16 = if v.is_sign_negative() { 0x8000 } else { 0 };
    let a = f64::from(v.abs());
    if a.is_infinite() {
        return sign | 0x7c00;
    }
    if a == 0.0 {
        return sign;
    }
    // The f16 spacing at a's binade (subnormal spacing below 2^-14); a/ulp is exact in f64.
    let ulp = pow2(exponent(a).max(-14) - 10);
    let r = (a / ulp).round_ties_even() * ulp;
    if r >= 65536.0 {
        return sign | 0x7c00;
    }
    let bits = if r < pow2(-14) {
        (r / pow2(-24)) as u16
    } else {
        let e = exponent(r);
        let mant = (r / pow2(e - 10)) as u16 - 1024;
        (((e + 15) as u16) << 10) | mant
    };
    sign | bits
}

/// f32 → bf16 bits, round to nearest even on the dropped 16 bits, canonical NaN 0x7fc0.
fn f32_to_bf16_rne(v: f32) -> u16 {
    if v.is_nan() {
        return 0x7fc0;
    }
    let bits = v.to_bits();
    let (upper, lower) = ((bits >> 16) as u16, bits & 0xffff);
    if lower > 0x8000 || (lower == 0x8000 && upper & 1 == 1) {
        upper + 1 // carries into the exponent, up to infinity, as RNE requires
    } else {
        upper
    }
}

fn read_elem(dtype: DType, bytes: &[u8], i: usize) -> f32 {
    match dtype {
        DType::F32 => f32::from_le_bytes(bytes[4 * i..4 * i + 4].try_into().unwrap()),
        DType::F16 => f16_to_f32(u16::from_le_bytes(
            bytes[2 * i..2 * i + 2].try_into().unwrap(),
        )),
        DType::BF16 => bf16_to_f32(u16::from_le_bytes(
            bytes[2 * i..2 * i + 2].try_into().unwrap(),
        )),
        d => panic!("{d} is not quantizable"),
    }
}

/// round_T: f32 → target dtype bytes (RNE, canonical NaN). Cross-checks the hand-written f16/bf16
/// conversions against the `half` crate on every call.
fn write_elem(v: f32, dtype: DType, out: &mut Vec<u8>) {
    match dtype {
        DType::F32 => {
            let bits = if v.is_nan() { 0x7fc0_0000 } else { v.to_bits() };
            out.extend_from_slice(&bits.to_le_bytes());
        }
        DType::F16 => {
            let h = f32_to_f16_rne(v);
            if !v.is_nan() {
                assert_eq!(
                    h,
                    half::f16::from_f32(v).to_bits(),
                    "f16 reference vs half at {v:e}"
                );
            }
            out.extend_from_slice(&h.to_le_bytes());
        }
        DType::BF16 => {
            let h = f32_to_bf16_rne(v);
            if !v.is_nan() {
                assert_eq!(
                    h,
                    half::bf16::from_f32(v).to_bits(),
                    "bf16 reference vs half at {v:e}"
                );
            }
            out.extend_from_slice(&h.to_le_bytes());
        }
        d => panic!("{d} is not quantizable"),
    }
}

// ---------------------------------------------------------------------------------------------------
// Reference scale groups, reconstruction, code assignment and default scales.
// ---------------------------------------------------------------------------------------------------

/// Matrix view: [d0, rest..] → (d0, ∏rest); 0-D and 1-D are one row.
fn rows_cols(shape: &[u64]) -> (usize, usize) {
    match shape {
        [] => (1, 1),
        [d] => (1, *d as usize),
        [d0, rest @ ..] => (*d0 as usize, rest.iter().product::<u64>() as usize),
    }
}

fn n_scales(shape: &[u64], g: Granularity) -> usize {
    let (rows, cols) = rows_cols(shape);
    match g {
        Granularity::Tensor => 1,
        Granularity::Row => rows,
        Granularity::Group(n) => rows * cols.div_ceil(n as usize),
    }
}

/// Scale group of flat element `i`.
fn group_of(i: usize, cols: usize, g: Granularity) -> usize {
    match g {
        Granularity::Tensor => 0,
        Granularity::Row => i / cols,
        Granularity::Group(n) => {
            let n = n as usize;
            (i / cols) * cols.div_ceil(n) + (i % cols) / n
        }
    }
}

/// Flat element ranges of the groups, in scale order.
fn group_ranges(shape: &[u64], g: Granularity) -> Vec<(usize, usize)> {
    let (rows, cols) = rows_cols(shape);
    let numel = rows * cols;
    let mut out = vec![(usize::MAX, 0); n_scales(shape, g)];
    for i in 0..numel {
        let k = group_of(i, cols, g);
        out[k].0 = out[k].0.min(i);
        out[k].1 = out[k].1.max(i + 1);
    }
    // Only a tensor-granularity scale of an empty tensor has no element.
    for r in &mut out {
        if r.0 == usize::MAX {
            *r = (0, 0);
        }
    }
    out
}

fn level(q: u32, bits: u32) -> f32 {
    (2 * q as i32 - ((1 << bits) - 1)) as f32
}

fn code_at(packed: &[u8], i: usize, bits: u32) -> u32 {
    let bit = i * bits as usize;
    u32::from(packed[bit / 8] >> (bit % 8)) & ((1 << bits) - 1)
}

/// Splits a quantized block into its f32 scales and packed codes.
fn split_block(shape: &[u64], g: Granularity, block: &[u8]) -> (Vec<f32>, Vec<u8>) {
    let n = n_scales(shape, g);
    let scales = block[..4 * n]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    (scales, block[4 * n..].to_vec())
}

/// The reference reconstruction of a quantized tensor: element i of group k is
/// round_T(f32(base_i) + (s_k · level(code_i))), product and sum separate f32 operations.
fn ref_reconstruct(
    shape: &[u64],
    g: Granularity,
    bits: u32,
    block: &[u8],
    base: &Tensor,
    target: DType,
) -> Result<Vec<u8>, String> {
    let (rows, cols) = rows_cols(shape);
    let numel = rows * cols;
    let (scales, packed) = split_block(shape, g, block);
    if packed.len() != (numel * bits as usize).div_ceil(8) {
        return Err("block length".into());
    }
    if let Some(k) = scales.iter().position(|s| !s.is_finite()) {
        return Err(format!("scale #{k} not finite"));
    }
    let used = numel * bits as usize;
    if !used.is_multiple_of(8) && packed[packed.len() - 1] >> (used % 8) != 0 {
        return Err("padding".into());
    }
    let mut out = Vec::with_capacity(numel * target.size());
    for i in 0..numel {
        let s = scales[group_of(i, cols, g)];
        let product: f32 = s * level(code_at(&packed, i, bits), bits);
        let sum: f32 = read_elem(base.dtype, &base.bytes, i) + product;
        write_elem(sum, target, &mut out);
    }
    Ok(out)
}

/// Δ_i = f32(target_i) − f32(base_i): one f32 subtraction.
fn deltas(base: &Tensor, target: &Tensor) -> Vec<f32> {
    (0..target.numel())
        .map(|i| read_elem(target.dtype, &target.bytes, i) - read_elem(base.dtype, &base.bytes, i))
        .collect()
}

/// Code of Δ = x under scale s (docs/spec/bitdelta.md § Quantizer): 1 bit is the sign with sign(0) = +1;
/// otherwise t = x / s (f32), level = clamp(2·floor(t/2) + 1, ±L) (the nearest odd level, ties
/// toward +∞); s = 0 gives level +1.
fn ref_code(x: f32, s: f32, bits: u32) -> u32 {
    if bits == 1 {
        return u32::from(x >= 0.0);
    }
    let l = f64::from((1u32 << bits) - 1);
    if s == 0.0 {
        return 1 << (bits - 1);
    }
    let t: f32 = x / s;
    let lvl = (2.0 * f64::from(t / 2.0).floor() + 1.0).clamp(-l, l);
    ((lvl + l) / 2.0) as u32
}

fn pack(codes: &[u32], bits: u32) -> Vec<u8> {
    let mut out = vec![0u8; (codes.len() * bits as usize).div_ceil(8)];
    for (i, &c) in codes.iter().enumerate() {
        let bit = i * bits as usize;
        out[bit / 8] |= (c as u8) << (bit % 8);
    }
    out
}

/// Codes of every element given the per-group scales.
fn ref_codes(d: &[f32], shape: &[u64], g: Granularity, bits: u32, scales: &[f32]) -> Vec<u8> {
    let (_, cols) = rows_cols(shape);
    let codes: Vec<u32> = d
        .iter()
        .enumerate()
        .map(|(i, &x)| ref_code(x, scales[group_of(i, cols, g)], bits))
        .collect();
    pack(&codes, bits)
}

/// The reference writer's pieces: a group is processed in consecutive pieces of 4096 elements.
const PIECE: usize = 4096;

/// The default scale of one group (docs/spec/bitdelta.md § Default scales), bit for bit.
fn ref_default_scale(d: &[f32], bits: u32, clip: Option<f32>) -> f32 {
    let n = d.len();
    let mean = |sum: f64| if n == 0 { 0.0 } else { (sum / n as f64) as f32 };
    if bits == 1 && clip.is_none() {
        // mean |Δ|: f32 sums per piece, accumulated in f64.
        let mut sum = 0f64;
        for p in d.chunks(PIECE) {
            let mut part = 0f32;
            for &x in p {
                part += x.abs();
            }
            sum += f64::from(part);
        }
        return mean(sum);
    }
    let limit = match clip {
        Some(k) => {
            let mut sq = 0f64;
            for p in d.chunks(PIECE) {
                sq += p.iter().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>();
            }
            let sigma = if n == 0 { 0.0 } else { (sq / n as f64).sqrt() };
            (f64::from(k) * sigma) as f32
        }
        None => f32::INFINITY,
    };
    let mut sum = 0f64;
    for p in d.chunks(PIECE) {
        sum += p
            .iter()
            .map(|&x| f64::from(x.abs().min(limit)))
            .sum::<f64>();
    }
    let m = mean(sum);
    if bits == 1 || m == 0.0 {
        return m;
    }
    let candidate = |c: usize| m * 0.05 * (c + 1) as f32;
    let mut best = (0, f64::INFINITY);
    for c in 0..40 {
        let s = candidate(c);
        let mut err = 0f64;
        for p in d.chunks(PIECE) {
            let mut part = 0f32;
            for &x in p {
                let r: f32 = s * level(ref_code(x, s, bits), bits) - x;
                part += r * r;
            }
            err += f64::from(part);
        }
        if err < best.1 {
            best = (c, err);
        }
    }
    candidate(best.0)
}

fn ref_default_scales(
    d: &[f32],
    shape: &[u64],
    g: Granularity,
    bits: u32,
    clip: Option<f32>,
) -> Vec<f32> {
    group_ranges(shape, g)
        .into_iter()
        .map(|(a, b)| ref_default_scale(&d[a..b], bits, clip))
        .collect()
}

// ---------------------------------------------------------------------------------------------------
// Inputs.
// ---------------------------------------------------------------------------------------------------

/// Base and fine-tune values of `n` elements in one of several regimes.
fn values(rng: &mut Rng, n: usize, regime: u8) -> (Vec<f32>, Vec<f32>) {
    let mut b = Vec::with_capacity(n);
    let mut t = Vec::with_capacity(n);
    for _ in 0..n {
        let w = rng.unit() * 2.0;
        let d = rng.unit() * 0.05;
        let (w, d) = match regime {
            // Some exact zeros in Δ (sign(0) = +1) and in the weights.
            1 if rng.chance(3) => (w, 0.0),
            1 if rng.chance(5) => (0.0, d),
            // Outliers, for clipping and the scale search.
            2 if rng.chance(20) => (w, d * 200.0),
            // One-signed deltas.
            3 => (w, d.abs()),
            // Small weights and deltas.
            4 => (w * 1e-3, d * 1e-4),
            _ => (w, d),
        };
        b.push(w);
        t.push(w + d);
    }
    (b, t)
}

fn float_dtype() -> impl Strategy<Value = DType> {
    prop_oneof![Just(DType::F32), Just(DType::F16), Just(DType::BF16)]
}

fn granularity() -> impl Strategy<Value = Granularity> {
    prop_oneof![
        Just(Granularity::Tensor),
        Just(Granularity::Row),
        Just(Granularity::Group(1)),
        Just(Granularity::Group(3)),
        Just(Granularity::Group(8)),
        Just(Granularity::Group(128)),
    ]
}

fn bits() -> impl Strategy<Value = u32> {
    prop_oneof![Just(1u32), Just(2), Just(4)]
}

fn clip() -> impl Strategy<Value = Option<f32>> {
    prop_oneof![3 => Just(None), 1 => Just(Some(2.5f32)), 1 => Just(Some(0.5f32))]
}

/// Odd shapes: 0-D, 1-D, 2-D with columns around multiples of 8 and 64, 3-D, and zero-sized.
fn shape() -> impl Strategy<Value = Vec<u64>> {
    prop_oneof![
        Just(vec![]),
        (0u64..140).prop_map(|a| vec![a]),
        (0u64..7, 0u64..75).prop_map(|(a, b)| vec![a, b]),
        (1u64..4, 120u64..140).prop_map(|(a, b)| vec![a, b]),
        (0u64..4, 0u64..6, 0u64..9).prop_map(|(a, b, c)| vec![a, b, c]),
    ]
}

fn quantize_all() -> Selection {
    Selection {
        include: vec![Glob::new("*")],
        exclude: vec![],
        embeddings: EmbeddingPolicy::Quantize,
    }
}

fn exact_all() -> Selection {
    Selection {
        include: vec![],
        exclude: vec![Glob::new("*")],
        embeddings: EmbeddingPolicy::Exact,
    }
}

fn opts(bits: u32, granularity: Granularity, clip_sigma: Option<f32>) -> EncodeOptions {
    EncodeOptions {
        spec: QuantSpec {
            bits,
            granularity,
            clip_sigma,
        },
        zstd_level: 3,
    }
}

/// One base/fine-tune tensor pair.
fn pair(
    name: &str,
    shape: &[u64],
    bd: DType,
    td: DType,
    seed: u64,
    regime: u8,
) -> (Tensor, Tensor) {
    let n = shape.iter().product::<u64>() as usize;
    let (b, t) = values(&mut Rng(seed), n, regime);
    (
        Tensor::floats(name, bd, shape, &b),
        Tensor::floats(name, td, shape, &t),
    )
}

/// Encodes the model with `encode_model` (every tensor quantized unless empty), decodes it, and checks
/// everything against the reference: scales, codes, reconstruction bytes, index fields, determinism.
fn check_quantized_model(
    base: &[Tensor],
    target: &[Tensor],
    bits: u32,
    g: Granularity,
    clip: Option<f32>,
) -> Result<(), TestCaseError> {
    let o = opts(bits, g, clip);
    let file = encode_model(
        meta("rt"),
        &model(base),
        &model(target),
        &quantize_all(),
        &o,
    )
    .unwrap();
    let again = encode_model(
        meta("rt"),
        &model(base),
        &model(target),
        &quantize_all(),
        &o,
    )
    .unwrap();
    prop_assert!(file == again, "encoding is not deterministic");
    let parsed = BitDeltaFile::parse(&file).unwrap();
    let decoded = decode_model(&file, &model(base)).unwrap();
    prop_assert_eq!(decoded.len(), target.len());
    let mut n_params = 0;
    let mut n_quantized = 0;
    for (i, (t, b)) in target.iter().zip(base).enumerate() {
        let e = &parsed.entries[i];
        prop_assert_eq!(&e.name, &t.name);
        prop_assert_eq!(e.dtype, t.dtype);
        prop_assert_eq!(&e.shape, &t.shape);
        prop_assert_eq!(&decoded[i].0, &t.name);
        n_params += t.numel() as u64;
        if t.numel() == 0 {
            // Nothing to quantize: recorded exactly.
            prop_assert!(matches!(e.encoding, Encoding::Unchanged | Encoding::Raw));
            prop_assert!(decoded[i].1.is_empty());
            continue;
        }
        n_quantized += t.numel() as u64;
        prop_assert_eq!(e.encoding.bits(), Some(bits));
        prop_assert_eq!(e.granularity, g);
        let block = parsed.block(i);
        let d = deltas(b, t);
        let (scales, packed) = split_block(&t.shape, g, block);
        let want_scales = ref_default_scales(&d, &t.shape, g, bits, clip);
        prop_assert_eq!(
            scales.iter().map(|s| s.to_bits()).collect::<Vec<_>>(),
            want_scales.iter().map(|s| s.to_bits()).collect::<Vec<_>>(),
            "default scales of {} ({:?})",
            &t.name,
            &t.shape
        );
        prop_assert_eq!(
            &packed,
            &ref_codes(&d, &t.shape, g, bits, &scales),
            "codes of {}",
            &t.name
        );
        let want = ref_reconstruct(&t.shape, g, bits, block, b, t.dtype).unwrap();
        prop_assert_eq!(
            &decoded[i].1,
            &want,
            "reconstruction of {} ({:?})",
            &t.name,
            &t.shape
        );
    }
    prop_assert_eq!(parsed.meta.n_params, n_params);
    prop_assert_eq!(parsed.meta.n_quantized, n_quantized);
    Ok(())
}

// ---------------------------------------------------------------------------------------------------
// Round trips.
// ---------------------------------------------------------------------------------------------------

/// Every bits × granularity × (base, target) dtype pair, over a fixed list of odd shapes.
#[test]
fn every_bits_granularity_and_dtype_pair() {
    let shapes: [&[u64]; 9] = [
        &[],
        &[1],
        &[13],
        &[3, 7],
        &[2, 57],
        &[1, 63],
        &[5, 129],
        &[2, 3, 5],
        &[4, 0],
    ];
    let dtypes = [DType::F32, DType::F16, DType::BF16];
    let grans = [
        Granularity::Tensor,
        Granularity::Row,
        Granularity::Group(1),
        Granularity::Group(3),
        Granularity::Group(8),
        Granularity::Group(128),
    ];
    let mut seed = 1;
    for bits in [1, 2, 4] {
        for g in grans {
            for bd in dtypes {
                for td in dtypes {
                    let (mut base, mut target) = (Vec::new(), Vec::new());
                    for (k, s) in shapes.iter().enumerate() {
                        seed += 1;
                        let (b, t) = pair(&format!("t{k}"), s, bd, td, seed, (seed % 5) as u8);
                        base.push(b);
                        target.push(t);
                    }
                    check_quantized_model(&base, &target, bits, g, None)
                        .unwrap_or_else(|e| panic!("bits {bits} {g} {bd}→{td}: {e}"));
                }
            }
        }
    }
}

/// Groups longer than the reference writer's 4096-element pieces, where the default scales' sums are
/// split (docs/spec/bitdelta.md § Default scales), including groups of more than 8 pieces and a last piece
/// that is short.
#[test]
fn default_scales_of_long_groups() {
    let shapes: [&[u64]; 2] = [&[2, 9000], &[1, 8 * 4096 + 4100]];
    for shape in shapes {
        for bits in [1, 2, 4] {
            for clip in [None, Some(2.0)] {
                for g in [
                    Granularity::Tensor,
                    Granularity::Row,
                    Granularity::Group(5000),
                ] {
                    let (b, t) = pair(
                        "long",
                        shape,
                        DType::F32,
                        DType::BF16,
                        7 + u64::from(bits),
                        2,
                    );
                    check_quantized_model(&[b], &[t], bits, g, clip)
                        .unwrap_or_else(|e| panic!("{shape:?} bits {bits} {g} clip {clip:?}: {e}"));
                }
            }
        }
    }
}

/// Quantized empty tensors (which `encode_model` stores exactly) written by hand: a tensor-granularity
/// scale and no codes, or no scales at all.
#[test]
fn quantized_empty_tensors() {
    let shapes: [&[u64]; 5] = [&[0], &[0, 5], &[3, 0], &[0, 0, 7], &[2, 0, 3]];
    for bits in [1, 2, 4] {
        for g in [Granularity::Tensor, Granularity::Row, Granularity::Group(3)] {
            for s in shapes {
                let (b, t) = pair("e", s, DType::F32, DType::F16, 1, 0);
                let enc = encode_tensor(
                    "e",
                    Choice::Quantize,
                    Some(&b.data()),
                    &t.data(),
                    &opts(bits, g, None),
                    None,
                )
                .unwrap();
                assert_eq!(enc.block.len(), 4 * n_scales(s, g), "{s:?} {g}");
                assert!(enc.block.iter().all(|&x| x == 0));
                let file = build_file(&meta("e"), &[("e", DType::F16, s.to_vec(), enc)]);
                let out = decode_model(&file, &model(&[b])).unwrap();
                assert!(out[0].1.is_empty());
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Random models of 1–3 tensors with odd shapes, every dtype pair, bits and granularity.
    #[test]
    fn quantized_round_trip_matches_reference(
        tensors in prop::collection::vec((shape(), float_dtype(), float_dtype(), any::<u64>(), 0u8..5), 1..=3),
        bits in bits(), g in granularity(), clip in clip(),
    ) {
        let (mut base, mut target) = (Vec::new(), Vec::new());
        for (k, (s, bd, td, seed, regime)) in tensors.iter().enumerate() {
            let (b, t) = pair(&format!("layer.{k}.weight"), s, *bd, *td, *seed, *regime);
            base.push(b);
            target.push(t);
        }
        check_quantized_model(&base, &target, bits, g, clip)?;
    }

    /// 1-bit never does worse than the base (sign + mean|Δ| is L2-optimal for signs), and more bits
    /// never do worse than fewer (their level sets and candidate scales contain the smaller ones).
    #[test]
    fn error_decreases_with_bits_and_never_exceeds_the_base(
        rows in 1u64..8, cols in 1u64..80, g in granularity(), clip in clip(),
        seed in any::<u64>(), regime in 0u8..5,
    ) {
        let shape = [rows, cols];
        let (b, t) = pair("w", &shape, DType::F32, DType::F32, seed, regime);
        let n = b.numel();
        let bv: Vec<f64> = (0..n).map(|i| f64::from(read_elem(DType::F32, &b.bytes, i))).collect();
        let tv: Vec<f64> = (0..n).map(|i| f64::from(read_elem(DType::F32, &t.bytes, i))).collect();
        prop_assume!(bv.iter().zip(&tv).any(|(x, y)| x != y));
        // Rounding the result to f32 moves each element by at most an ulp of its magnitude; the scale
        // search ranks candidates with f32 sums. Both are far below the differences tested.
        let ulp = |x: f64| x.abs().max(1e-30) * f64::from(f32::EPSILON);
        let abs_slack: f64 = bv.iter().zip(&tv).map(|(x, y)| 4.0 * ulp(x.abs() + y.abs()) * ((x - y).abs() + ulp(*y))).sum();
        let base_err: f64 = bv.iter().zip(&tv).map(|(x, y)| (x - y).powi(2)).sum();
        let mut prev = base_err;
        for bits in [1u32, 2, 4] {
            let file = encode_model(meta("q"), &model(std::slice::from_ref(&b)), &model(std::slice::from_ref(&t)), &quantize_all(), &opts(bits, g, clip)).unwrap();
            let r = &decode_model(&file, &model(std::slice::from_ref(&b))).unwrap()[0].1;
            let err: f64 = (0..n).map(|i| (f64::from(read_elem(DType::F32, r, i)) - tv[i]).powi(2)).sum();
            let bound = prev * (1.0 + 2e-4) + abs_slack;
            prop_assert!(err <= bound, "{}-bit error {} > {} (previous {}, base {})", bits, err, bound, prev, base_err);
            prev = err;
        }
    }

    /// Lossless tensors (xor, raw, unchanged, base) are bit-exact for every dtype, NaN payloads included.
    #[test]
    fn lossless_tensors_are_bit_exact(
        dtype_idx in 0usize..DType::ALL.len(), len in 0usize..300, seed in any::<u64>(),
        base_kind in 0u8..5, nan_payloads in any::<bool>(), flips in 0usize..40,
    ) {
        let dtype = DType::ALL[dtype_idx];
        let size = dtype.size();
        let mut rng = Rng(seed);
        let shape = if len % 3 == 0 { vec![len as u64] } else { vec![(len / 8) as u64, 8] };
        let numel = shape.iter().product::<u64>() as usize;
        let mut bb: Vec<u8> = (0..numel * size).map(|_| rng.next_u64() as u8).collect();
        if nan_payloads && matches!(dtype, DType::F32 | DType::F16 | DType::BF16 | DType::F64) {
            // Quiet and signalling NaNs with payloads, and infinities, in both tensors.
            for i in (0..numel).step_by(3) {
                let v = rng.next_u64();
                let e = &mut bb[i * size..(i + 1) * size];
                match dtype {
                    DType::F32 => e.copy_from_slice(&(0x7f80_0000 | (v as u32 & 0x807f_ffff) | 1).to_le_bytes()),
                    DType::F64 => e.copy_from_slice(&(0x7ff0_0000_0000_0000 | (v & 0x800f_ffff_ffff_ffff) | 1).to_le_bytes()),
                    DType::F16 => e.copy_from_slice(&(0x7c00 | (v as u16 & 0x83ff) | 1).to_le_bytes()),
                    _ => e.copy_from_slice(&(0x7f80 | (v as u16 & 0x807f) | 1).to_le_bytes()),
                }
            }
        }
        let mut tb = bb.clone();
        if !tb.is_empty() {
            for _ in 0..flips {
                let k = rng.below(tb.len() as u64) as usize;
                tb[k] ^= 1 << rng.below(8);
            }
        }
        // 0: same layout (xor or unchanged), 1: no base (raw), 2: base of another dtype (raw),
        // 3: base of another shape (raw), 4: an embedding kept by the embedding policy (base or
        // unchanged when 2-D; 1-D tensors are not embeddings and go xor).
        let name = if base_kind == 4 { "embed_x" } else { "x" };
        let other = if dtype == DType::U8 { DType::I8 } else { DType::U8 };
        let base: Vec<Tensor> = match base_kind {
            1 => vec![],
            2 => vec![Tensor::new(name, other, &[bb.len() as u64], bb.clone())],
            3 => vec![Tensor::new(name, dtype, &[numel as u64, 1], bb.clone())],
            _ => vec![Tensor::new(name, dtype, &shape, bb.clone())],
        };
        let sel = if base_kind == 4 {
            Selection { include: vec![], exclude: vec![], embeddings: EmbeddingPolicy::Base }
        } else {
            exact_all()
        };
        let tgt = [Tensor::new(name, dtype, &shape, tb.clone())];
        let file = encode_model(meta("l"), &model(&base), &model(&tgt), &sel, &EncodeOptions::default()).unwrap();
        prop_assert!(file == encode_model(meta("l"), &model(&base), &model(&tgt), &sel, &EncodeOptions::default()).unwrap());
        let parsed = BitDeltaFile::parse(&file).unwrap();
        let e = &parsed.entries[0];
        let embed_kept = base_kind == 4 && shape.len() == 2;
        let want_enc = match base_kind {
            0 | 4 if bb == tb => Encoding::Unchanged,
            4 if embed_kept => Encoding::Base,
            0 | 4 => Encoding::Xor,
            _ => Encoding::Raw,
        };
        prop_assert_eq!(e.encoding, want_enc);
        prop_assert_eq!(parsed.meta.n_quantized, 0);
        let out = decode_model(&file, &model(&base)).unwrap();
        let want = if want_enc == Encoding::Base { &bb } else { &tb };
        prop_assert_eq!(&out[0].1, want);
    }

    /// Explicit scales are stored exactly as given, codes follow the reference rule for them, and the
    /// file reconstructs as the reference says.
    #[test]
    fn explicit_scales_are_used_exactly(
        s in shape(), bd in float_dtype(), td in float_dtype(), bits in bits(), g in granularity(),
        seed in any::<u64>(), regime in 0u8..5,
    ) {
        let (b, t) = pair("w", &s, bd, td, seed, regime);
        let mut rng = Rng(seed ^ 0x5ca1e);
        let want = n_scales(&s, g);
        let scales: Vec<f32> = (0..want)
            .map(|_| match rng.below(8) {
                0 => 0.0,
                1 => -0.0,
                2 => -rng.unit().abs() * 0.1,
                3 => f32::from_bits(rng.below(0x0080_0000) as u32), // subnormal
                4 => 1e30,
                _ => rng.unit() * 0.1,
            })
            .collect();
        let spec = QuantSpec { bits, granularity: g, clip_sigma: None };
        let q = quantize(&b.data(), &t.data(), &spec, Some(&scales)).unwrap();
        prop_assert_eq!(
            q.scales.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            scales.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
        );
        prop_assert_eq!(&q.packed, &ref_codes(&deltas(&b, &t), &s, g, bits, &scales));
        let block = q.to_block();
        let enc = zdn_protocol::bitdelta::EncodedTensor {
            encoding: Encoding::for_bits(bits).unwrap(),
            granularity: g,
            block: block.clone(),
        };
        let file = build_file(&meta("x"), &[("w", td, s.clone(), enc)]);
        let out = decode_model(&file, &model(std::slice::from_ref(&b))).unwrap();
        prop_assert_eq!(&out[0].1, &ref_reconstruct(&s, g, bits, &block, &b, td).unwrap());

        // A wrong count and a non-finite scale are refused, naming what is wrong.
        for wrong in [want + 1, want.saturating_sub(1)] {
            if wrong == want { continue; }
            let r = quantize(&b.data(), &t.data(), &spec, Some(&vec![1.0; wrong]));
            prop_assert_eq!(r, Err(QuantizeError::ScaleCount { got: wrong, want: want as u64, granularity: g }));
        }
        if want > 0 {
            let k = rng.below(want as u64) as usize;
            for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
                let mut sc = scales.clone();
                sc[k] = bad;
                match quantize(&b.data(), &t.data(), &spec, Some(&sc)) {
                    Err(QuantizeError::ScaleValue { index, value }) => {
                        prop_assert_eq!(index, k);
                        prop_assert_eq!(value.to_bits(), bad.to_bits());
                    }
                    other => prop_assert!(false, "expected ScaleValue, got {:?}", other),
                }
            }
        }
    }

    /// safetensors: `encode_header` → `parse` gives back every name, dtype, shape and byte range.
    #[test]
    fn safetensors_header_round_trip(
        tensors in prop::collection::vec((name(), 0usize..DType::ALL.len(), prop::collection::vec(dim(), 0..5)), 0..8),
        metadata in prop::collection::btree_map(name(), name(), 0..4),
    ) {
        let mut seen = HashSet::new();
        let layouts: Vec<TensorLayout> = tensors
            .into_iter()
            .filter(|(n, _, _)| n != "__metadata__" && seen.insert(n.clone()))
            .map(|(name, d, shape)| TensorLayout { name, dtype: DType::ALL[d], shape })
            .collect();
        let (header, lens) = encode_header(&layouts, &metadata).unwrap();
        prop_assert_eq!(header.len() % 8, 0);
        let data: u64 = lens.iter().sum();
        let mut file = header.clone();
        file.resize(header.len() + data as usize, 0xa5);
        let parsed = parse(&file).unwrap();
        prop_assert_eq!(&parsed.metadata, &metadata);
        prop_assert_eq!(parsed.data_start, header.len());
        prop_assert_eq!(parsed.tensors.len(), layouts.len());
        let mut offset = header.len();
        for (l, len) in layouts.iter().zip(&lens) {
            prop_assert_eq!(Some(*len), l.byte_len());
            let t = parsed.get(&l.name).unwrap();
            prop_assert_eq!(t.dtype, l.dtype);
            prop_assert_eq!(&t.shape, &l.shape);
            prop_assert_eq!(t.range.clone(), offset..offset + *len as usize);
            offset += *len as usize;
        }
        prop_assert!(parsed.tensors.windows(2).all(|w| w[0].range.start <= w[1].range.start));
    }
}

/// Names with quotes, backslashes, control characters, unicode of every plane, and empty names.
fn name() -> impl Strategy<Value = String> {
    let ch = prop_oneof![
        4 => proptest::char::range('a', 'z'),
        1 => Just('"'),
        1 => Just('\\'),
        1 => Just('\n'),
        1 => Just('\u{0}'),
        1 => Just('\u{1f}'),
        1 => Just('é'),
        1 => Just('漢'),
        1 => Just('🦀'),
        2 => any::<char>(),
    ];
    prop::collection::vec(ch, 0..12).prop_map(|v| v.into_iter().collect())
}

/// Dimensions: mostly small, sometimes zero.
fn dim() -> impl Strategy<Value = u64> {
    prop_oneof![4 => 1u64..5, 1 => Just(0u64), 1 => 5u64..40]
}

/// A few fixed points of the reference conversions themselves, so a broken reference cannot hide a
/// broken codec (both being checked against `half` above is the other half of that).
#[test]
fn reference_conversions() {
    assert_eq!(f32_to_bf16_rne(1.0), 0x3f80);
    assert_eq!(f32_to_bf16_rne(f32::from_bits(0x3f80_8000)), 0x3f80); // tie, even stays
    assert_eq!(f32_to_bf16_rne(f32::from_bits(0x3f81_8000)), 0x3f82); // tie, odd rounds up
    assert_eq!(f32_to_bf16_rne(f32::from_bits(0x7f7f_ffff)), 0x7f80); // overflow to infinity
    assert_eq!(f32_to_bf16_rne(-f32::NAN), 0x7fc0);
    assert_eq!(f32_to_f16_rne(65504.0), 0x7bff);
    assert_eq!(f32_to_f16_rne(65519.99), 0x7bff);
    assert_eq!(f32_to_f16_rne(65520.0), 0x7c00); // tie with an odd max → infinity
    assert_eq!(f32_to_f16_rne(1.0 + f32::powi(2.0, -11)), 0x3c00);
    assert_eq!(f32_to_f16_rne(1.0 + 3.0 * f32::powi(2.0, -11)), 0x3c02);
    assert_eq!(f32_to_f16_rne(f32::powi(2.0, -25)), 0); // half the smallest subnormal: tie to 0
    assert_eq!(f32_to_f16_rne(f32::powi(2.0, -25) * 1.5), 1);
    assert_eq!(f32_to_f16_rne(-f32::powi(2.0, -14)), 0x8400);
    assert_eq!(f32_to_f16_rne(f32::NAN), 0x7e00);
    for h in 0..=u16::MAX {
        let v = f16_to_f32(h);
        if v.is_nan() {
            assert!(half::f16::from_bits(h).is_nan());
        } else {
            assert_eq!(
                v.to_bits(),
                half::f16::from_bits(h).to_f32().to_bits(),
                "{h:#06x}"
            );
            assert_eq!(f32_to_f16_rne(v), h, "{h:#06x}");
        }
    }
    let mut rng = Rng(3);
    for _ in 0..200_000 {
        let v = f32::from_bits(rng.next_u64() as u32);
        let mut out = Vec::new();
        write_elem(v, DType::F16, &mut out);
        write_elem(v, DType::BF16, &mut out);
    }
    // Reference code rule: nearest odd level, ties toward +∞, clamped; sign(0) = +1.
    assert_eq!(level(ref_code(2.0, 1.0, 2), 2), 3.0);
    assert_eq!(level(ref_code(-2.0, 1.0, 2), 2), -1.0);
    assert_eq!(level(ref_code(0.0, 1.0, 4), 4), 1.0);
    assert_eq!(level(ref_code(-0.0, 1.0, 1), 1), 1.0);
    assert_eq!(level(ref_code(-4.5, 1.0, 4), 4), -5.0);
    assert_eq!(level(ref_code(1e9, 1.0, 4), 4), 15.0);
    assert_eq!(level(ref_code(1.0, 0.0, 2), 2), 1.0);
}

/// The stored golden vectors (tests/vectors/, see tests/golden.rs) against this file's reference: every
/// quantized tensor of every `*.expected.safetensors` is what the reference computes from the vector's
/// block and the base; lossless tensors are the fine-tune's bytes; `base` tensors the base's.
#[test]
fn golden_vectors_match_the_reference() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors");
    let read = |name: &str| std::fs::read(dir.join(name)).unwrap();
    let load = |bytes: &[u8]| -> Vec<Tensor> {
        let h = parse(bytes).unwrap();
        h.tensors
            .iter()
            .map(|t| Tensor::new(&t.name, t.dtype, &t.shape, bytes[t.range.clone()].to_vec()))
            .collect()
    };
    let base = load(&read("base.safetensors"));
    let target = load(&read("target.safetensors"));
    let find = |ts: &[Tensor], name: &str| ts.iter().find(|t| t.name == name).cloned();
    let mut stems: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| {
            let n = e.unwrap().file_name().into_string().unwrap();
            n.strip_suffix(".bitdelta").map(str::to_owned)
        })
        .collect();
    stems.sort();
    assert!(stems.len() >= 4, "{stems:?}");
    let mut quantized = 0;
    for stem in &stems {
        let file = read(&format!("{stem}.bitdelta"));
        let expected = load(&read(&format!("{stem}.expected.safetensors")));
        let p = BitDeltaFile::parse(&file).unwrap();
        assert_eq!(expected.len(), p.entries.len(), "{stem}");
        for (i, e) in p.entries.iter().enumerate() {
            let out = &expected[i];
            assert_eq!(
                (&out.name, out.dtype, &out.shape),
                (&e.name, e.dtype, &e.shape)
            );
            let want = match e.encoding.bits() {
                Some(bits) => {
                    quantized += 1;
                    let b = find(&base, &e.name).unwrap();
                    ref_reconstruct(&e.shape, e.granularity, bits, p.block(i), &b, e.dtype).unwrap()
                }
                None if e.encoding == Encoding::Base => find(&base, &e.name).unwrap().bytes,
                None => find(&target, &e.name).unwrap().bytes,
            };
            assert!(
                out.bytes == want,
                "{stem}: tensor {} ({})",
                e.name,
                e.encoding.name()
            );
        }
    }
    assert!(quantized >= 16, "{quantized}");
}

/// Deltas near f32::MAX make the default 1-bit scale (mean |Δ|, summed in f32) overflow to +inf.
/// The encoder must not write a block readers refuse: it stores the tensor losslessly instead.
#[test]
fn scale_overflow_falls_back_to_lossless() {
    let n = 64usize;
    let base: Vec<u8> = (0..n).flat_map(|_| 0.0f32.to_le_bytes()).collect();
    let target: Vec<u8> = (0..n)
        .flat_map(|i| (if i % 2 == 0 { 3.0e38f32 } else { -3.0e38 }).to_le_bytes())
        .collect();
    let b = Tensor::new("layer.weight", DType::F32, &[8, 8], base);
    let t = Tensor::new("layer.weight", DType::F32, &[8, 8], target.clone());
    let file = encode_model(
        meta("overflow"),
        &model(std::slice::from_ref(&b)),
        &model(std::slice::from_ref(&t)),
        &quantize_all(),
        &opts(1, Granularity::Tensor, None),
    )
    .unwrap();
    let parsed = BitDeltaFile::parse(&file).unwrap();
    assert_eq!(parsed.entries[0].encoding, Encoding::Xor);
    let decoded = decode_model(&file, &model(std::slice::from_ref(&b))).unwrap();
    assert_eq!(decoded[0].1, target);
}

/// FP8 checkpoints: F8_E4M3 and F8_E5M2 tensors parse from safetensors (dtype codes 13 and 14) and
/// a delta of them is lossless, every one of the 256 bit patterns included, even where `--include`
/// asks for quantization (they are not quantizable, so the selection stores them exactly).
#[test]
fn fp8_tensors_parse_and_are_stored_losslessly() {
    for dtype in [DType::F8E4M3, DType::F8E5M2] {
        let layouts = vec![TensorLayout {
            name: "model.layers.0.mlp.down_proj.weight".into(),
            dtype,
            shape: vec![16, 16],
        }];
        let (header, lens) = encode_header(&layouts, &Default::default()).unwrap();
        assert_eq!(lens, vec![256]);
        let base: Vec<u8> = (0..=255u8).collect();
        let target: Vec<u8> = base.iter().map(|b| b.rotate_left(3) ^ 0x11).collect();
        let mut file = header.clone();
        file.extend_from_slice(&target);
        let parsed = parse(&file).unwrap();
        assert_eq!(parsed.tensors[0].dtype, dtype);
        assert_eq!(&file[parsed.tensors[0].range.clone()], &target[..]);

        let b = Tensor::new("w", dtype, &[16, 16], base);
        let t = Tensor::new("w", dtype, &[16, 16], target.clone());
        let fresh = Tensor::new("head", dtype, &[256], target.clone());
        for sel in [quantize_all(), exact_all()] {
            let file = encode_model(
                meta("fp8"),
                &model(std::slice::from_ref(&b)),
                &model(&[t.clone(), fresh.clone()]),
                &sel,
                &opts(1, Granularity::Tensor, None),
            )
            .unwrap();
            let parsed = BitDeltaFile::parse(&file).unwrap();
            assert_eq!(parsed.entries[0].encoding, Encoding::Xor);
            assert_eq!(parsed.entries[0].dtype, dtype);
            assert_eq!(parsed.entries[1].encoding, Encoding::Raw);
            assert_eq!(parsed.meta.n_quantized, 0);
            let decoded = decode_model(&file, &model(std::slice::from_ref(&b))).unwrap();
            assert_eq!(decoded[0].1, target);
            assert_eq!(decoded[1].1, target);
        }
    }
}
