#![allow(clippy::unwrap_used, clippy::expect_used)]
use super::*;

/// A bf16 tensor with a weight-like distribution (deterministic).
fn weights_bf16(n: usize) -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut out = Vec::with_capacity(2 * n);
    for _ in 0..n {
        // Sum of uniforms ≈ Gaussian.
        let mut s = 0.0f32;
        for _ in 0..4 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            s += (x >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
        }
        out.extend_from_slice(&half::bf16::from_f32(s * 0.05).to_le_bytes());
    }
    out
}

#[test]
fn weights_compress_in_fields_mode() {
    let data = weights_bf16(100_000);
    let enc = encode(DType::BF16, &data, 3).unwrap();
    assert!(
        enc.len() * 10 < data.len() * 7,
        "{} of {}",
        enc.len(),
        data.len()
    );
    let info = inspect(&enc).unwrap();
    assert!(matches!(info.blocks[0].0, BlockKind::Fields { .. }));
    assert_eq!(decode(&enc, data.len()).unwrap(), data);
}

#[test]
fn upcast_f32_uses_const_planes() {
    let data: Vec<u8> = weights_bf16(10_000)
        .chunks_exact(2)
        .flat_map(|c| [0, 0, c[0], c[1]])
        .collect();
    let enc = encode(DType::F32, &data, 3).unwrap();
    let info = inspect(&enc).unwrap();
    let BlockKind::Planes { codecs, .. } = &info.blocks[0].0 else {
        panic!("{info:?}");
    };
    assert_eq!(codecs[2..], ["const", "const"]);
    assert_eq!(decode(&enc, data.len()).unwrap(), data);
}

#[test]
fn tails_empty_inputs_and_caps() {
    for len in [0usize, 1, 3, 5] {
        let data: Vec<u8> = (0..len as u8).collect();
        let enc = encode(DType::F32, &data, 3).unwrap();
        assert_eq!(decode(&enc, len).unwrap(), data);
    }
    let data = weights_bf16(1000);
    let enc = encode(DType::BF16, &data, 3).unwrap();
    assert_eq!(
        decode(&enc, data.len() - 1),
        Err(PlanesError::TooLarge {
            len: data.len() as u64,
            max: data.len() - 1
        })
    );
}

#[test]
fn baselines_round_trip() {
    let data = weights_bf16(50_000);
    for layout in [Layout::Bytes, Layout::BytePlanes, Layout::FieldPlanes] {
        let opts = EncodeOptions {
            strategy: Strategy::PlanesZstd(layout),
            block_len: 4096,
            ..EncodeOptions::default()
        };
        let enc = encode_with(DType::BF16, &data, &opts).unwrap();
        assert_eq!(decode(&enc, data.len()).unwrap(), data);
    }
}

#[test]
fn bad_options_are_refused() {
    let opts = EncodeOptions {
        block_len: 3,
        ..EncodeOptions::default()
    };
    assert!(matches!(
        encode_with(DType::BF16, &[0; 8], &opts),
        Err(PlanesError::BlockLength { .. })
    ));
}
