//! The runtime-selected kernels (`bitdelta::kernels`) against the portable reference, bit for bit:
//! reconstruction on random bases, codes and scales (NaN of every kind, ±inf, ±0, subnormals of f32
//! and of f16, values that overflow when converted or added, odd lengths and unaligned groups), every
//! f16/bf16 value and f32 values around every rounding boundary, and quantization (the 1-bit batch
//! kernel, the Δ kernel) on tensors long enough to use them, with non-finite and overflowing deltas.
//!
//! On a CPU without a fast kernel the tests fail (there is nothing to compare), unless skipped
//! explicitly with `ZDN_TEST_SKIP=avx2` (counted; tests/support/src/require.rs).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use proptest::prelude::*;
use zdn_protocol::bitdelta::kernels::{quantize_with, reconstruct_with, Kernel};
use zdn_protocol::bitdelta::{
    scale_count, Encoding, Granularity, IndexEntry, QuantSpec, TensorData,
};
use zdn_protocol::DType;

const FLOATS: [DType; 3] = [DType::F32, DType::F16, DType::BF16];

#[path = "../../tests/support/src/require.rs"]
mod require;

/// The fast kernels this CPU has, to compare with the portable one. None: the tests fail (or, with
/// `ZDN_TEST_SKIP=avx2`, are skipped once, counted, and compare nothing).
fn fast_kernels() -> Vec<Kernel> {
    static KERNELS: std::sync::OnceLock<Vec<Kernel>> = std::sync::OnceLock::new();
    KERNELS
        .get_or_init(|| {
            let k: Vec<Kernel> = Kernel::ALL
                .into_iter()
                .filter(|&k| k != Kernel::Portable && k.is_available())
                .collect();
            if k.is_empty() {
                require::require(require::Need::Avx2, "protocol/tests/kernels.rs");
            }
            k
        })
        .clone()
}

/// xorshift64: deterministic data for the larger cases.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    /// Uniform in [-0.5, 0.5).
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    }
}

/// f32 bit patterns that stress the conversions and the addition.
const SPECIAL_F32: [u32; 40] = [
    0x0000_0000, // +0
    0x8000_0000, // -0
    0x7f80_0000, // +inf
    0xff80_0000, // -inf
    0x7fc0_0000, // canonical NaN
    0xffc0_0000, // negative quiet NaN
    0x7f80_0001, // signalling NaN
    0xff81_2345, // negative signalling NaN with a payload
    0x7fff_ffff, // NaN, all payload bits
    0x0000_0001, // smallest f32 subnormal
    0x807f_ffff, // largest negative f32 subnormal
    0x0040_0000, // f32 subnormal
    0x3380_0000, // 2^-24: smallest f16 subnormal
    0x3300_0000, // 2^-25: halfway to it (rounds to 0)
    0x3300_0001, // just above halfway (rounds up)
    0x33c0_0000, // 1.5·2^-24: halfway between two f16 subnormals (rounds to even)
    0x3880_0000, // 2^-14: smallest normal f16
    0x387f_e000, // largest f16 subnormal, exactly
    0x387f_f000, // halfway between the largest f16 subnormal and 2^-14
    0x477f_e000, // 65504: largest f16
    0x477f_efff, // just below 65520: rounds to 65504
    0x477f_f000, // 65520: rounds to inf
    0xc77f_f000, // -65520: rounds to -inf
    0x4780_0000, // 65536
    0x7f7f_ffff, // f32::MAX (bf16 rounds it to inf)
    0xff7f_ffff, // -f32::MAX
    0x7f7f_7fff, // rounds down to the largest bf16
    0x7f7f_8000, // halfway above the largest bf16: to even = inf
    0x3f80_8000, // 1 + 2^-8: bf16 tie, to even (down)
    0x3f81_8000, // bf16 tie, to even (up)
    0x3f80_1000, // 1 + 2^-11: f16 tie, to even (down)
    0x3f80_3000, // f16 tie, to even (up)
    0x3f80_0000, // 1
    0xbf80_0000, // -1
    0x3c23_d70a, // 0.01
    0x7e96_7699, // 1e38
    0xfe96_7699, // -1e38
    0x7f61_d1c5, // 3e38
    0x0080_0000, // smallest normal f32
    0x3a83_126f, // 0.001
];

fn encode_elem(d: DType, bits: u32, out: &mut Vec<u8>) {
    match d {
        DType::F32 => out.extend_from_slice(&bits.to_le_bytes()),
        // The raw top or bottom half: every 16-bit pattern is reachable this way.
        DType::BF16 => out.extend_from_slice(&((bits >> 16) as u16).to_le_bytes()),
        _ => out.extend_from_slice(&half::f16::from_f32(f32::from_bits(bits)).to_le_bytes()),
    }
}

fn elem_strategy() -> impl Strategy<Value = u32> {
    prop_oneof![
        3 => prop::sample::select(SPECIAL_F32.to_vec()),
        3 => any::<u32>(),
        // Typical weights, in f32 bits.
        4 => (-1.0f32..1.0).prop_map(f32::to_bits),
    ]
}

fn scale_strategy() -> impl Strategy<Value = f32> {
    prop_oneof![
        Just(0.0f32),
        Just(-0.0f32),
        Just(f32::from_bits(1)),
        Just(1e-30f32),
        Just(0.01f32),
        Just(-0.02f32),
        Just(1e38f32),
        Just(3e38f32),
        Just(f32::MAX),
        Just(65504.0f32),
        (-1.0f32..1.0),
        any::<u32>()
            .prop_map(f32::from_bits)
            .prop_filter("finite", |s| s.is_finite()),
    ]
}

fn granularity_strategy() -> impl Strategy<Value = Granularity> {
    prop_oneof![
        Just(Granularity::Tensor),
        Just(Granularity::Row),
        (1u32..=40).prop_map(Granularity::Group),
        prop::sample::select(vec![8u32, 16, 24, 32, 64, 128]).prop_map(Granularity::Group),
    ]
}

/// Reconstructs with every kernel and checks that they agree with the portable one: the same bytes,
/// or the same error.
fn check_reconstruct(entry: &IndexEntry, block: &[u8], base: &TensorData<'_>) {
    let n = usize::try_from(entry.byte_len()).unwrap();
    let mut want = vec![0xa5u8; n];
    let want_r = reconstruct_with(Kernel::Portable, entry, block, Some(base), &mut want);
    for k in fast_kernels() {
        let mut got = vec![0x5au8; n];
        let got_r = reconstruct_with(k, entry, block, Some(base), &mut got);
        assert_eq!(got_r, want_r, "{k}: {} → {}", base.dtype, entry.dtype);
        assert!(
            got == want,
            "{k}: {} → {} shape {:?} {} differs at byte {:?}",
            base.dtype,
            entry.dtype,
            entry.shape,
            entry.granularity,
            got.iter().zip(&want).position(|(a, b)| a != b)
        );
    }
}

/// A 1/2/4-bit entry and block for `shape` with the given scales (cycled) and random codes.
fn quantized(
    target: DType,
    shape: &[u64],
    g: Granularity,
    bits: u32,
    scales: &[f32],
    rng: &mut Rng,
) -> (IndexEntry, Vec<u8>) {
    let rows = shape.first().copied().unwrap_or(1);
    let cols: u64 = shape.iter().skip(1).product();
    let n_scales = scale_count(rows, cols, g).unwrap() as usize;
    let mut block: Vec<u8> = (0..n_scales)
        .flat_map(|k| scales[k % scales.len()].to_le_bytes())
        .collect();
    let numel = (rows * cols) as usize;
    let used = numel * bits as usize;
    let mut codes: Vec<u8> = (0..used.div_ceil(8)).map(|_| rng.next() as u8).collect();
    if !used.is_multiple_of(8) {
        if let Some(last) = codes.last_mut() {
            *last &= (1u8 << (used % 8)) - 1;
        }
    }
    block.extend(codes);
    let encoding = match bits {
        1 => Encoding::Sign1,
        2 => Encoding::Bits2,
        _ => Encoding::Bits4,
    };
    let entry = IndexEntry {
        name: "w".into(),
        dtype: target,
        shape: shape.to_vec(),
        encoding,
        granularity: g,
        offset: 0,
        length: block.len() as u64,
    };
    (entry, block)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Random bases, codes and scales, every dtype pair, shapes with odd lengths, unaligned groups.
    #[test]
    fn reconstruct_matches_portable(
        bd in prop::sample::select(FLOATS.to_vec()),
        td in prop::sample::select(FLOATS.to_vec()),
        rows in 0u64..5,
        cols in 0u64..300,
        g in granularity_strategy(),
        bits in prop::sample::select(vec![1u32, 1, 1, 2, 4]),
        elems in prop::collection::vec(elem_strategy(), 1..64),
        scales in prop::collection::vec(scale_strategy(), 1..6),
        seed in any::<u64>(),
    ) {
        let mut rng = Rng(seed | 1);
        let shape = [rows, cols];
        let numel = (rows * cols) as usize;
        let mut base = Vec::new();
        for _ in 0..numel {
            // Mostly the drawn values in random order; some raw bit patterns of the base dtype.
            if rng.below(8) == 0 {
                base.extend_from_slice(&rng.next().to_le_bytes()[..bd.size()]);
            } else {
                encode_elem(bd, elems[rng.below(elems.len())], &mut base);
            }
        }
        let b = TensorData::new(bd, &shape, &base).unwrap();
        let (entry, block) = quantized(td, &shape, g, bits, &scales, &mut rng);
        check_reconstruct(&entry, &block, &b);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// Random Δ on longer tensors: the 1-bit batch kernel (≥ 8 × 4096 elements per group), the Δ
    /// kernel of the other paths, unaligned row starts, and NaN/inf/overflowing values anywhere.
    #[test]
    fn quantize_matches_portable(
        bd in prop::sample::select(FLOATS.to_vec()),
        td in prop::sample::select(FLOATS.to_vec()),
        long in any::<bool>(),
        extra in 0usize..5000,
        rows in 1u64..4,
        g in prop_oneof![Just(Granularity::Tensor), Just(Granularity::Row), Just(Granularity::Group(96)), Just(Granularity::Group(13))],
        bits in prop::sample::select(vec![1u32, 1, 1, 2, 4]),
        clip in prop::option::of(Just(2.0f32)),
        bad in prop::collection::vec((any::<prop::sample::Index>(), prop::sample::select(SPECIAL_F32.to_vec()), any::<bool>()), 0..3),
        seed in any::<u64>(),
    ) {
        let mut rng = Rng(seed | 1);
        let n_target = if long { 8 * 4096 * 2 + extra } else { extra + 1 };
        let cols = (n_target as u64).div_ceil(rows);
        let shape = [rows, cols];
        let numel = (rows * cols) as usize;
        let mut bv: Vec<u32> = (0..numel).map(|_| (0.04 * rng.unit()).to_bits()).collect();
        let mut tv: Vec<u32> = bv.iter().map(|&b| (f32::from_bits(b) + 0.001 * rng.unit()).to_bits()).collect();
        for (at, v, in_base) in &bad {
            let i = at.index(numel);
            if *in_base { bv[i] = *v } else { tv[i] = *v }
        }
        let (mut bb, mut tb) = (Vec::new(), Vec::new());
        for (&b, &t) in bv.iter().zip(&tv) {
            encode_elem(bd, b, &mut bb);
            encode_elem(td, t, &mut tb);
        }
        let base = TensorData::new(bd, &shape, &bb).unwrap();
        let target = TensorData::new(td, &shape, &tb).unwrap();
        let spec = QuantSpec { bits, granularity: g, clip_sigma: clip };
        let want = quantize_with(Kernel::Portable, &base, &target, &spec, None);
        for k in fast_kernels() {
            let got = quantize_with(k, &base, &target, &spec, None);
            // Debug strings: errors carry f32 values that may be NaN.
            prop_assert_eq!(format!("{got:?}"), format!("{want:?}"), "{}", k);
            if let (Ok(a), Ok(b)) = (&got, &want) {
                let bits_of = |s: &[f32]| s.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                prop_assert_eq!(bits_of(&a.scales), bits_of(&b.scales));
                prop_assert!(a.packed == b.packed);
            }
        }
    }
}

/// Every f16 and bf16 base value, through every output dtype, with scale 0 (the output is the base
/// converted, ±0 added), a tiny and a large scale.
#[test]
fn every_half_value() {
    let mut rng = Rng(0x1234_5678_9abc_def1);
    for bd in [DType::F16, DType::BF16] {
        let base: Vec<u8> = (0..=u16::MAX).flat_map(u16::to_le_bytes).collect();
        let shape = [256u64, 256];
        let b = TensorData::new(bd, &shape, &base).unwrap();
        for td in FLOATS {
            for g in [Granularity::Tensor, Granularity::Row, Granularity::Group(8)] {
                let (entry, block) =
                    quantized(td, &shape, g, 1, &[0.0, -0.0, 1e-7, 3e38, 1.0], &mut rng);
                check_reconstruct(&entry, &block, &b);
            }
        }
    }
}

/// f32 bases at and around every rounding boundary of f16 and bf16, every exponent and sign, and
/// a sample of everything else, into every output dtype.
#[test]
fn f32_rounding_boundaries() {
    let lows = [
        0u32, 1, 0xfff, 0x1000, 0x1001, 0x1fff, 0x2000, 0x3000, 0x7fff, 0x8000, 0x8001, 0xffff,
        0x1_0000, 0x1_8000, 0x7f_ffff, 0x7f_e000, 0x7f_f000, 0x40_0000,
    ];
    let mut vals = Vec::new();
    for hi in 0..(1u32 << 9) {
        for mid in [0u32, 1, 0x3ff, 0x155, 0x200, 0x7f] {
            for &lo in &lows {
                vals.push((hi << 23) | ((mid << 13) & 0x7f_ffff) | lo);
                vals.push((hi << 23) | ((mid << 16) & 0x7f_ffff) | lo);
            }
        }
    }
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    vals.extend((0..200_000).map(|_| rng.next() as u32));
    vals.extend(SPECIAL_F32);
    // A whole number of 8-element rows of 1024.
    vals.resize(vals.len().div_ceil(1024) * 1024, 0x3f80_0000);
    let base: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
    let shape = [(vals.len() / 1024) as u64, 1024];
    let b = TensorData::new(DType::F32, &shape, &base).unwrap();
    for td in FLOATS {
        for scales in [
            &[0.0f32][..],
            &[-0.0],
            &[f32::from_bits(1)],
            &[0.01, 1e38, 65504.0],
        ] {
            let (entry, block) = quantized(td, &shape, Granularity::Row, 1, scales, &mut rng);
            check_reconstruct(&entry, &block, &b);
        }
    }
}

/// Lengths around the kernels' block sizes (8, 32 and 64 elements) and group widths that are and are
/// not multiples of 8, for every dtype pair.
#[test]
fn lengths_and_tails() {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    for bd in FLOATS {
        for td in FLOATS {
            for cols in [
                1u64, 7, 8, 9, 31, 32, 33, 63, 64, 65, 96, 127, 128, 129, 200, 257,
            ] {
                for rows in [1u64, 3] {
                    for g in [
                        Granularity::Tensor,
                        Granularity::Row,
                        Granularity::Group(8),
                        Granularity::Group(24),
                        Granularity::Group(5),
                    ] {
                        let shape = [rows, cols];
                        let mut base = Vec::new();
                        for _ in 0..rows * cols {
                            let v = if rng.below(5) == 0 {
                                SPECIAL_F32[rng.below(SPECIAL_F32.len())]
                            } else {
                                rng.unit().to_bits()
                            };
                            encode_elem(bd, v, &mut base);
                        }
                        let b = TensorData::new(bd, &shape, &base).unwrap();
                        let (entry, block) =
                            quantized(td, &shape, g, 1, &[0.01, -3e38, 0.5], &mut rng);
                        check_reconstruct(&entry, &block, &b);
                    }
                }
            }
        }
    }
}

/// The 1-bit encoder's batch path: finite deltas whose chunk sums overflow (the scale becomes +inf),
/// and a NaN or infinity in each batch position, reported at the same element by every kernel.
#[test]
fn quantize_overflow_and_non_finite() {
    let n = 3 * 8 * 4096 + 100;
    let shape = [1u64, n as u64];
    let spec = QuantSpec {
        bits: 1,
        granularity: Granularity::Tensor,
        clip_sigma: None,
    };
    for (bd, td) in [
        (DType::F32, DType::F32),
        (DType::F16, DType::F16),
        (DType::BF16, DType::BF16),
        (DType::F16, DType::F32),
    ] {
        let mut rng = Rng(7);
        let mut bv: Vec<u32> = (0..n).map(|_| (0.04 * rng.unit()).to_bits()).collect();
        let mut tv: Vec<u32> = bv
            .iter()
            .map(|&b| (f32::from_bits(b) + 0.001 * rng.unit()).to_bits())
            .collect();
        // Big finite deltas in the second batch: its chunk sums overflow where the dtypes allow.
        for i in 8 * 4096 + 10..8 * 4096 + 4000 {
            bv[i] = (-3e38f32).to_bits();
            tv[i] = 3e38f32.to_bits();
        }
        let enc = |v: &[u32], d: DType| {
            let mut out = Vec::new();
            for &x in v {
                encode_elem(d, x, &mut out);
            }
            out
        };
        let cases: Vec<Option<(usize, u32, bool)>> = vec![
            None,
            Some((5, 0x7fc0_0000, false)),
            Some((8 * 4096 + 4095, 0x7f80_0000, true)),
            Some((2 * 8 * 4096 + 7 * 4096, 0xff80_0000, false)),
            Some((n - 1, 0x7f80_0001, true)),
        ];
        for case in cases {
            let (mut b2, mut t2) = (bv.clone(), tv.clone());
            if let Some((i, v, in_base)) = case {
                if in_base {
                    b2[i] = v
                } else {
                    t2[i] = v
                }
            }
            let (bb, tb) = (enc(&b2, bd), enc(&t2, td));
            let base = TensorData::new(bd, &shape, &bb).unwrap();
            let target = TensorData::new(td, &shape, &tb).unwrap();
            let want = quantize_with(Kernel::Portable, &base, &target, &spec, None);
            for k in fast_kernels() {
                let got = quantize_with(k, &base, &target, &spec, None);
                assert_eq!(
                    format!("{got:?}"),
                    format!("{want:?}"),
                    "{k} {bd}→{td} {case:?}"
                );
            }
        }
    }
}

/// Every f32 bit pattern converted to f16 and bf16 (and kept as f32) through reconstruction with
/// scale 0, every kernel against the portable one. Minutes (3 in release on a 2-core machine):
/// `cargo test --release -p zdn-protocol --test kernels -- --ignored`.
#[test]
#[ignore]
fn every_f32_value() {
    const ROW: u64 = 1 << 12;
    const PART: u64 = 1 << 24;
    let mut rng = Rng(11);
    let shape = [PART / ROW, ROW];
    for part in 0..(1u64 << 32) / PART {
        let base: Vec<u8> = (part * PART..(part + 1) * PART)
            .flat_map(|v| (v as u32).to_le_bytes())
            .collect();
        let b = TensorData::new(DType::F32, &shape, &base).unwrap();
        for td in FLOATS {
            let (entry, block) = quantized(td, &shape, Granularity::Tensor, 1, &[0.0], &mut rng);
            check_reconstruct(&entry, &block, &b);
        }
    }
}

/// The 1-bit scale depends on the order of each chunk's f32 additions: a run of tiny |Δ| before a 1
/// adds up (7·2^-24 + 1 rounds to 1 + 2^-21), after it each is lost (1 + 2^-24 rounds to 1). One such
/// run per 4096-element chunk, at varying offsets (within and across 8-element blocks), with the
/// other Δ zero, so a kernel that adds in another order gives another scale.
#[test]
fn quantize_sums_in_element_order() {
    let n = 2 * 8 * 4096;
    let shape = [1u64, n as u64];
    let spec = QuantSpec {
        bits: 1,
        granularity: Granularity::Tensor,
        clip_sigma: None,
    };
    let tiny = f32::powi(2.0, -24);
    let mut rng = Rng(99);
    for (bd, td) in [
        (DType::F32, DType::F32),
        (DType::F16, DType::F16),
        (DType::BF16, DType::BF16),
        (DType::BF16, DType::F32),
    ] {
        for round in 0..8 {
            let mut tv = vec![0f32; n];
            for c in 0..n / 4096 {
                let at = c * 4096 + rng.below(4096 - 16);
                let one_at = if (c + round) % 2 == 0 { 7 } else { 0 };
                for j in 0..8 {
                    let v = if j == one_at { 1.0 } else { tiny };
                    tv[at + j] = if rng.below(2) == 0 { v } else { -v };
                }
            }
            let (mut bb, mut tb) = (Vec::new(), Vec::new());
            for &t in &tv {
                encode_elem(bd, 0, &mut bb);
                encode_elem(td, t.to_bits(), &mut tb);
            }
            let base = TensorData::new(bd, &shape, &bb).unwrap();
            let target = TensorData::new(td, &shape, &tb).unwrap();
            let want = quantize_with(Kernel::Portable, &base, &target, &spec, None).unwrap();
            for k in fast_kernels() {
                let got = quantize_with(k, &base, &target, &spec, None).unwrap();
                assert_eq!(
                    got.scales[0].to_bits(),
                    want.scales[0].to_bits(),
                    "{k} {bd}→{td} round {round}"
                );
                assert!(got.packed == want.packed, "{k} {bd}→{td} round {round}");
            }
        }
    }
}
