use super::*;
use crate::dtype::FloatElem;

/// The checked parts of a quantized block, and each way a block can be refused.
#[test]
fn quantized_block_parts_and_refusals() {
    let mut entry = IndexEntry {
        name: "w".into(),
        dtype: DType::F16,
        shape: vec![2, 3],
        encoding: Encoding::Bits2,
        granularity: Granularity::Row,
        offset: 0,
        length: 10,
    };
    let mut block: Vec<u8> = [0.5f32, -0.25]
        .iter()
        .flat_map(|s| s.to_le_bytes())
        .collect();
    block.extend([0b1110_0100, 0b0000_1011]);
    let q = quantized_block(&entry, &block).unwrap().unwrap();
    assert_eq!((q.bits, q.rows, q.cols), (2, 2, 3));
    assert_eq!(q.scales(), [0.5, -0.25]);
    assert_eq!(q.packed, &block[8..]);
    let too_short = quantized_block(&entry, &block[..9]).unwrap_err();
    assert!(matches!(
        too_short,
        ReconstructError::Block {
            got: 9,
            want: 10,
            ..
        }
    ));
    let mut padded = block.clone();
    padded[9] |= 0x10;
    assert!(matches!(
        quantized_block(&entry, &padded),
        Err(ReconstructError::Padding { .. })
    ));
    let mut nan = block.clone();
    nan[4..8].copy_from_slice(&f32::NAN.to_le_bytes());
    assert!(matches!(
        quantized_block(&entry, &nan),
        Err(ReconstructError::Scale { index: 1, .. })
    ));
    entry.encoding = Encoding::Xor;
    assert!(quantized_block(&entry, &block).unwrap().is_none());
    // The base-side checks on a dtype and shape alone.
    entry.encoding = Encoding::Sign1;
    assert!(check_base_layout(&entry, Some((DType::BF16, &[2, 3]))).is_ok());
    assert!(matches!(
        check_base_layout(&entry, Some((DType::I32, &[2, 3]))),
        Err(ReconstructError::BaseDtype { .. })
    ));
    assert!(matches!(
        check_base_layout(&entry, Some((DType::F16, &[3, 2]))),
        Err(ReconstructError::BaseShape { .. })
    ));
    assert!(matches!(
        check_base_layout(&entry, None),
        Err(ReconstructError::BaseMissing(_))
    ));
    entry.encoding = Encoding::Raw;
    assert!(check_base_layout(&entry, None).is_ok());
}

/// The 1-bit kernel (64 elements at a time, then 8, then the tail) against the definition applied
/// element by element, for every dtype pair, lengths around the block sizes and every granularity.
#[test]
fn one_bit_kernel_matches_definition() {
    fn elem<E: FloatElem>(v: f32) -> Vec<u8> {
        let mut b = vec![0u8; E::SIZE];
        E::write(v, &mut b);
        b
    }
    fn enc(d: DType, v: f32) -> Vec<u8> {
        match d {
            DType::F16 => elem::<F16>(v),
            DType::BF16 => elem::<BF16>(v),
            _ => elem::<F32>(v),
        }
    }
    fn read(d: DType, b: &[u8]) -> f32 {
        match d {
            DType::F16 => F16::read(b),
            DType::BF16 => BF16::read(b),
            _ => F32::read(b),
        }
    }
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let dtypes = [DType::F32, DType::F16, DType::BF16];
    let shapes = [
        [1u64, 1],
        [1, 7],
        [1, 57],
        [1, 64],
        [1, 129],
        [3, 200],
        [2, 64],
        [5, 24],
    ];
    for (bd, td) in dtypes
        .iter()
        .flat_map(|&b| dtypes.iter().map(move |&t| (b, t)))
    {
        for shape in shapes {
            for g in [
                Granularity::Tensor,
                Granularity::Row,
                Granularity::Group(16),
            ] {
                let (rows, cols) = (shape[0] as usize, shape[1] as usize);
                let n = rows * cols;
                let mut base = Vec::new();
                for i in 0..n {
                    // Include a NaN, infinities and values that overflow when the delta is added.
                    let v = match i % 53 {
                        3 => f32::NAN,
                        4 => f32::INFINITY,
                        5 => 65504.0,
                        6 => -3.3e38,
                        _ => (next() >> 40) as f32 / (1u64 << 24) as f32 - 0.5,
                    };
                    base.extend(enc(bd, v));
                }
                let n_scales = scale_count(rows as u64, cols as u64, g).unwrap() as usize;
                let scales: Vec<f32> = (0..n_scales)
                    .map(|k| {
                        if k == 1 {
                            1e38
                        } else {
                            0.01 * (k as f32 + 1.0)
                        }
                    })
                    .collect();
                let packed: Vec<u8> = (0..n.div_ceil(8))
                    .map(|k| {
                        let byte = next() as u8;
                        // Zero padding bits after the last code.
                        if (k + 1) * 8 > n {
                            byte & ((1u16 << (n - k * 8)) - 1) as u8
                        } else {
                            byte
                        }
                    })
                    .collect();
                let mut block: Vec<u8> = scales.iter().flat_map(|s| s.to_le_bytes()).collect();
                block.extend(&packed);
                let entry = IndexEntry {
                    name: "w".into(),
                    dtype: td,
                    shape: shape.to_vec(),
                    encoding: Encoding::Sign1,
                    granularity: g,
                    offset: 0,
                    length: block.len() as u64,
                };
                let b = TensorData::new(bd, &entry.shape, &base).unwrap();
                let mut out = vec![0u8; n * td.size()];
                reconstruct(&entry, &block, Some(&b), &mut out).unwrap();
                let mut want = Vec::new();
                for (k, (start, end)) in groups(rows, cols, g).enumerate() {
                    for i in start..end {
                        let bit = (packed[i / 8] >> (i % 8)) & 1;
                        let d = scales[k] * level(u32::from(bit), 1);
                        let v = read(bd, &base[i * bd.size()..]) + d;
                        want.extend(enc(td, v));
                    }
                }
                assert_eq!(out, want, "{bd} → {td}, shape {shape:?}, {g}");
            }
        }
    }
}
