//! The bit-exactness cases: quantized tensors of every base dtype × target dtype × bits × scale
//! granularity over odd shapes, with NaN, infinite, subnormal and extreme base values and scales,
//! and conversion sweeps. The unit tests run them through the host build of the kernels
//! (src/emulate.rs); zdn-gpu-check through the GPU. Either compares with the Rust reference.
//! Depends on zdn-protocol only, so that both can include it.

use zdn_protocol::bitdelta::{quantized_block_len, Encoding, Granularity, IndexEntry};
use zdn_protocol::DType;

/// One quantized tensor to reconstruct.
#[derive(Debug, Clone)]
pub struct Case {
    pub label: String,
    pub entry: IndexEntry,
    pub block: Vec<u8>,
    pub base_dtype: DType,
    pub base: Vec<u8>,
}

/// xorshift64: deterministic and dependency-free.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Uniform in [-1, 1).
    pub fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

pub const DTYPES: [DType; 3] = [DType::F32, DType::F16, DType::BF16];

pub const GRANULARITIES: [Granularity; 7] = [
    Granularity::Tensor,
    Granularity::Row,
    Granularity::Group(1),
    Granularity::Group(3),
    Granularity::Group(8),
    Granularity::Group(128),
    Granularity::Group(5000),
];

/// Odd shapes: 0-D, 1-D, lengths that are not multiples of 8 (the last octet short), groups and
/// rows that cut octets, 3-D, and one of several thousand octets (many thread blocks).
pub const SHAPES: [&[u64]; 11] = [
    &[],
    &[1],
    &[7],
    &[9],
    &[3, 5],
    &[4, 64],
    &[5, 129],
    &[2, 3, 7],
    &[1, 4097],
    &[33, 300],
    &[257, 1000],
];

/// Writes `v` as `d`. Truncating (any bytes are valid input; both sides read the same ones): bf16 is
/// the top half of the f32; f16 keeps NaN, infinities, overflow to infinity and subnormals.
pub fn encode(d: DType, v: f32, out: &mut Vec<u8>) {
    match d {
        DType::F16 => out.extend(f16_bits(v).to_le_bytes()),
        DType::BF16 => out.extend(((v.to_bits() >> 16) as u16).to_le_bytes()),
        _ => out.extend(v.to_le_bytes()),
    }
}

fn f16_bits(v: f32) -> u16 {
    let u = v.to_bits();
    let sign = ((u >> 16) & 0x8000) as u16;
    let a = v.abs();
    let mag = if v.is_nan() {
        0x7e00
    } else if a >= 65536.0 {
        0x7c00
    } else if a >= 6.103_515_6e-5 {
        // Normal: rebias the exponent, drop 13 mantissa bits.
        (((u & 0x7fff_ffff) - (112 << 23)) >> 13) as u16
    } else {
        // Subnormal (or zero): multiples of 2^-24.
        (a * 16_777_216.0) as u16
    };
    sign | mag
}

/// A base element: mostly ordinary weights, with every special value at fixed strides.
fn base_value(rng: &mut Rng, i: usize) -> f32 {
    match i % 61 {
        3 => f32::NAN,
        4 => f32::from_bits(0xffc0_1234), // a negative NaN with a payload
        5 => f32::INFINITY,
        6 => f32::NEG_INFINITY,
        7 => f32::MAX,
        8 => -3.3e38,
        9 => 65504.0,  // the largest f16
        10 => 65519.0, // rounds to 65504 in f16
        11 => 65520.0, // rounds to inf in f16
        12 => 1.0e-40, // an f32 subnormal
        13 => -6.0e-8, // an f16 subnormal
        14 => 0.0,
        15 => -0.0,
        16 => f32::from_bits(0x0000_0001), // the smallest f32 subnormal
        17 => 9.2e-41,
        _ => rng.unit() * 0.05,
    }
}

/// A scale: mostly ordinary, with zero, −0, subnormals, negatives and ones large enough that
/// `s·15` overflows to infinity.
fn scale_value(rng: &mut Rng, k: usize) -> f32 {
    match k % 11 {
        1 => 0.0,
        2 => -0.0,
        3 => 1.0e-42,
        4 => -0.003,
        5 => 3.0e38,
        6 => 1.0e-30,
        7 => f32::from_bits(0x0000_0001),
        _ => rng.unit().abs() * 0.01,
    }
}

/// What a quantized entry is: its target dtype, bits, granularity and shape.
#[derive(Clone, Copy, Debug)]
pub struct Layout<'a> {
    pub target: DType,
    pub bits: u32,
    pub granularity: Granularity,
    pub shape: &'a [u64],
}

/// A quantized entry of `layout` and its block (random codes, scales from `scale`) over `base`
/// (already in `base_dtype`).
pub fn quantized_case(
    label: String,
    rng: &mut Rng,
    layout: Layout<'_>,
    base_dtype: DType,
    base: Vec<u8>,
    scale: impl Fn(&mut Rng, usize) -> f32,
) -> Option<Case> {
    let Layout {
        target,
        bits,
        granularity,
        shape,
    } = layout;
    let encoding = Encoding::for_bits(bits)?;
    let len = quantized_block_len(shape, granularity, bits)?;
    let numel: u64 = shape.iter().product();
    let code_bytes = (numel * u64::from(bits)).div_ceil(8) as usize;
    let n_scales = (len as usize - code_bytes) / 4;
    let mut block = Vec::with_capacity(len as usize);
    for k in 0..n_scales {
        block.extend(scale(rng, k).to_le_bytes());
    }
    for _ in 0..code_bytes {
        block.push(rng.next() as u8);
    }
    // Padding bits after the last code are zero.
    let used = (numel * u64::from(bits) % 8) as u32;
    if used != 0 {
        if let Some(last) = block.last_mut() {
            *last &= ((1u16 << used) - 1) as u8;
        }
    }
    Some(Case {
        label,
        entry: IndexEntry {
            name: "w".into(),
            dtype: target,
            shape: shape.to_vec(),
            encoding,
            granularity,
            offset: 0,
            length: len,
        },
        block,
        base_dtype,
        base,
    })
}

/// Every base dtype × target dtype × bits × granularity × shape.
pub fn grid(seed: u64) -> Vec<Case> {
    let mut rng = Rng(seed | 1);
    let mut out = Vec::new();
    for bd in DTYPES {
        for td in DTYPES {
            for bits in [1, 2, 4] {
                for g in GRANULARITIES {
                    for shape in SHAPES {
                        let numel: u64 = shape.iter().product();
                        let mut base = Vec::new();
                        for i in 0..numel as usize {
                            let v = base_value(&mut rng, i);
                            encode(bd, v, &mut base);
                        }
                        let label = format!("{bd}→{td} {bits}-bit {g} {shape:?}");
                        let layout = Layout {
                            target: td,
                            bits,
                            granularity: g,
                            shape,
                        };
                        out.extend(quantized_case(
                            label,
                            &mut rng,
                            layout,
                            bd,
                            base,
                            scale_value,
                        ));
                    }
                }
            }
        }
    }
    out
}

/// Conversion sweeps with scale 0 (each sum is the base value itself, or +0 for −0): every f16 and
/// every bf16 bit pattern into each target, and f32 values at and around every rounding boundary of
/// f16 and bf16, every exponent and sign.
pub fn sweeps() -> Vec<Case> {
    let mut rng = Rng(0x5eed);
    let mut out = Vec::new();
    let all16: Vec<u8> = (0..=u16::MAX).flat_map(|h| h.to_le_bytes()).collect();
    let lows = [
        0u32, 1, 0xfff, 0x1000, 0x1001, 0x1fff, 0x2000, 0x3000, 0x7fff, 0x8000, 0x8001, 0xffff,
        0x1_0000, 0x1_8000, 0x7f_ffff, 0x7f_e000, 0x7f_f000, 0x40_0000,
    ];
    let mut boundaries = Vec::new();
    for hi in 0..(1u32 << 9) {
        for mid in [0u32, 1, 0x3ff, 0x155, 0x200, 0x7f] {
            for &lo in &lows {
                boundaries.extend(((hi << 23) | ((mid << 13) & 0x7f_ffff) | lo).to_le_bytes());
                boundaries.extend(((hi << 23) | ((mid << 16) & 0x7f_ffff) | lo).to_le_bytes());
            }
        }
    }
    let zero = |_: &mut Rng, _: usize| 0.0f32;
    for td in DTYPES {
        for (bd, base) in [
            (DType::F16, &all16),
            (DType::BF16, &all16),
            (DType::F32, &boundaries),
        ] {
            let n = (base.len() / bd.size()) as u64;
            let label = format!("sweep {bd}→{td} ({n} values, scale 0)");
            let shape = [n];
            let layout = Layout {
                target: td,
                bits: 1,
                granularity: Granularity::Tensor,
                shape: &shape,
            };
            out.extend(quantized_case(
                label,
                &mut rng,
                layout,
                bd,
                base.clone(),
                zero,
            ));
        }
    }
    out
}

/// A tensor with its bytes.
#[derive(Debug, Clone)]
pub struct Owned {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<u64>,
    pub bytes: Vec<u8>,
}

impl Owned {
    pub fn view(&self) -> zdn_protocol::bitdelta::ModelTensor<'_> {
        zdn_protocol::bitdelta::ModelTensor {
            name: &self.name,
            // The bytes were made for this dtype and shape.
            data: zdn_protocol::bitdelta::TensorData::new(self.dtype, &self.shape, &self.bytes)
                .unwrap_or(zdn_protocol::bitdelta::TensorData {
                    dtype: self.dtype,
                    shape: &[],
                    bytes: &[],
                }),
        }
    }
}

/// A small model and a fine-tune of it (`seed` picks the fine-tune) whose delta exercises every
/// kind of entry when encoded with embeddings quantized: quantized bf16/f16/f32 matrices (an
/// embedding among them), lossless (`xor`) norm and 0-D tensors, an empty tensor, an `unchanged`
/// tensor, and a fine-tune-only (`raw`) tensor.
pub fn small_model(seed: u64) -> (Vec<Owned>, Vec<Owned>) {
    let mut rng = Rng(0x1234_5678);
    let vals = |rng: &mut Rng, n: u64, d: DType, scale: f32| -> Vec<u8> {
        let mut v = Vec::new();
        for _ in 0..n {
            encode(d, rng.unit() * scale, &mut v);
        }
        v
    };
    let shapes: [(&str, DType, &[u64]); 8] = [
        ("embed_tokens.weight", DType::BF16, &[50, 24]),
        ("layers.0.q_proj.weight", DType::BF16, &[24, 24]),
        ("layers.0.mlp.up_proj.weight", DType::F16, &[37, 24]),
        ("layers.0.norm.weight", DType::F32, &[24]),
        ("layers.0.k_proj.weight", DType::F32, &[13, 11]),
        ("scalar", DType::F32, &[]),
        ("empty", DType::BF16, &[0, 4]),
        ("same.weight", DType::F16, &[40]),
    ];
    let base: Vec<Owned> = shapes
        .iter()
        .map(|(n, d, s)| Owned {
            name: (*n).into(),
            dtype: *d,
            shape: s.to_vec(),
            bytes: vals(&mut rng, s.iter().product(), *d, 0.1),
        })
        .collect();
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let mut target = base.clone();
    for t in target.iter_mut().filter(|t| t.name != "same.weight") {
        // A fine-tune: each element's low byte changed (a small change, never a NaN or infinity).
        let size = t.dtype.size();
        for (k, b) in t.bytes.iter_mut().enumerate() {
            if k % size == 0 {
                *b ^= (rng.next() as u8) | 1;
            }
        }
    }
    let extra = vals(&mut rng, 16, DType::F32, 1.0);
    target.push(Owned {
        name: "lm_head_only_in_fine_tune".into(),
        dtype: DType::F32,
        shape: vec![4, 4],
        bytes: extra,
    });
    (base, target)
}
