#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use half::{bf16, f16};
use proptest::prelude::*;

const FLOATS: [DType; 3] = [DType::F32, DType::F16, DType::BF16];

/// Element `i` of a little-endian float buffer, read with `half` directly.
fn get(dtype: DType, bytes: &[u8], i: usize) -> f32 {
    match dtype {
        DType::F32 => f32::from_le_bytes(bytes[4 * i..4 * i + 4].try_into().unwrap()),
        DType::F16 => f16::from_le_bytes([bytes[2 * i], bytes[2 * i + 1]]).to_f32(),
        DType::BF16 => bf16::from_le_bytes([bytes[2 * i], bytes[2 * i + 1]]).to_f32(),
        _ => unreachable!(),
    }
}

fn put(dtype: DType, v: f32, out: &mut Vec<u8>) {
    match dtype {
        DType::F32 if v.is_nan() => out.extend(0x7fc0_0000u32.to_le_bytes()),
        DType::F32 => out.extend(v.to_le_bytes()),
        DType::F16 if v.is_nan() => out.extend(0x7e00u16.to_le_bytes()),
        DType::F16 => out.extend(f16::from_f32(v).to_le_bytes()),
        DType::BF16 if v.is_nan() => out.extend(0x7fc0u16.to_le_bytes()),
        DType::BF16 => out.extend(bf16::from_f32(v).to_le_bytes()),
        _ => unreachable!(),
    }
}

/// The merge written straight from docs/spec/lora.md § 4, element by element, indexing A and B as
/// stored: no widened copies, no transposition, no row kernel.
fn reference(s: &MergeShape, base: &[u8], a: &[u8], b: &[u8]) -> Vec<u8> {
    let (rows, cols, r) = (s.rows as usize, s.cols as usize, s.rank as usize);
    let mut out = Vec::new();
    for i in 0..rows {
        for j in 0..cols {
            let mut d = 0f32;
            for k in 0..r {
                let (bv, av) = if s.transposed {
                    (
                        get(s.b_dtype, b, j * r + k),
                        get(s.a_dtype, a, k * rows + i),
                    )
                } else {
                    (
                        get(s.b_dtype, b, i * r + k),
                        get(s.a_dtype, a, k * cols + j),
                    )
                };
                let p = bv * av;
                d = if k == 0 { p } else { d + p };
            }
            let u = s.scale * d;
            let y = get(s.base_dtype, base, i * cols + j) + u;
            put(s.base_dtype, y, &mut out);
        }
    }
    out
}

fn shape(rows: u64, cols: u64, rank: u32, transposed: bool, scale: f32) -> MergeShape {
    MergeShape {
        rows,
        cols,
        rank,
        transposed,
        scale,
        base_dtype: DType::F32,
        a_dtype: DType::F32,
        b_dtype: DType::F32,
    }
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn merged(s: &MergeShape, base: &[u8], a: &[u8], b: &[u8]) -> Result<Vec<u8>, MergeError> {
    let mut out = vec![0u8; base.len()];
    merge_tensor(s, base, a, b, &mut out).map(|()| out)
}

#[test]
fn small_exact_example() {
    // W = [[1, 2], [3, 4]], B·A = [[1], [2]]·[[1, 2]] = [[1, 2], [2, 4]], s = 0.5.
    let s = shape(2, 2, 1, false, 0.5);
    let out = merged(
        &s,
        &f32_bytes(&[1.0, 2.0, 3.0, 4.0]),
        &f32_bytes(&[1.0, 2.0]),
        &f32_bytes(&[1.0, 2.0]),
    )
    .unwrap();
    assert_eq!(out, f32_bytes(&[1.5, 3.0, 4.0, 6.0]));
    // Transposed: element (i, j) gains s·B[j]·A[i] with A = [1, 2] over rows, B = [3, 5] over columns.
    let s = shape(2, 2, 1, true, 1.0);
    let out = merged(
        &s,
        &f32_bytes(&[0.0; 4]),
        &f32_bytes(&[1.0, 2.0]),
        &f32_bytes(&[3.0, 5.0]),
    )
    .unwrap();
    assert_eq!(out, f32_bytes(&[3.0, 5.0, 6.0, 10.0]));
}

#[test]
fn summation_order_is_k_ascending() {
    // Terms 2^24, 1, −2^24: ((2^24 + 1) − 2^24) = 0 in f32 (2^24 + 1 rounds to 2^24), whereas any
    // order that adds 1 last gives 1.
    let s = shape(1, 1, 3, false, 1.0);
    let a = f32_bytes(&[16_777_216.0, 1.0, -16_777_216.0]);
    let b = f32_bytes(&[1.0, 1.0, 1.0]);
    let out = merged(&s, &f32_bytes(&[0.0]), &a, &b).unwrap();
    assert_eq!(out, f32_bytes(&[0.0]));
    let a = f32_bytes(&[16_777_216.0, -16_777_216.0, 1.0]);
    let out = merged(&s, &f32_bytes(&[0.0]), &a, &b).unwrap();
    assert_eq!(out, f32_bytes(&[1.0]));
    // The sum starts from the first product, not from +0: −0 + (1·−0) stays −0.
    let s = shape(1, 1, 1, false, 1.0);
    let out = merged(
        &s,
        &f32_bytes(&[-0.0]),
        &f32_bytes(&[1.0]),
        &f32_bytes(&[-0.0]),
    )
    .unwrap();
    assert_eq!(out, (0x8000_0000u32).to_le_bytes());
}

#[test]
fn scale_applies_after_the_sum() {
    // s·(x + y) and s·x + s·y differ here: x = y = 2^-149 (the least subnormal), s = 0.5:
    // s·(2^-148) = 2^-149, whereas s·2^-149 rounds to 0 (ties to even) twice.
    let tiny = f32::from_bits(1);
    let s = shape(1, 1, 2, false, 0.5);
    let out = merged(
        &s,
        &f32_bytes(&[0.0]),
        &f32_bytes(&[tiny, tiny]),
        &f32_bytes(&[1.0, 1.0]),
    )
    .unwrap();
    assert_eq!(out, f32_bytes(&[tiny]));
}

#[test]
fn rounds_to_the_base_dtype_and_canonical_nan() {
    let mut s = shape(1, 3, 1, false, 1.0);
    s.base_dtype = DType::BF16;
    // 1 + 2^-8 is halfway between bf16 1.0 and 1 + 2^-7: ties to even, 1.0. Then inf − inf = NaN.
    let base: Vec<u8> = [1.0f32, f32::INFINITY, 0.0]
        .iter()
        .flat_map(|&v| bf16::from_f32(v).to_le_bytes())
        .collect();
    let out = merged(
        &s,
        &base,
        &f32_bytes(&[f32::powi(2.0, -8), f32::NEG_INFINITY, 3.0]),
        &f32_bytes(&[1.0]),
    )
    .unwrap();
    assert_eq!(out, [0x80, 0x3f, 0xc0, 0x7f, 0x40, 0x40]);
}

#[test]
fn bad_inputs_are_errors() {
    let s = shape(2, 3, 2, false, 1.0);
    let (base, a, b) = (vec![0u8; 24], vec![0u8; 24], vec![0u8; 16]);
    assert!(merged(&s, &base, &a, &b).is_ok());
    let mut out = vec![0u8; 24];
    assert!(matches!(
        merge_tensor(&s, &base[1..], &a, &b, &mut out),
        Err(MergeError::Length {
            what: "the base tensor",
            ..
        })
    ));
    assert!(matches!(
        merge_tensor(&s, &base, &a[4..], &b, &mut out),
        Err(MergeError::Length { what: "A", .. })
    ));
    assert!(matches!(
        merge_tensor(&s, &base, &a, &b, &mut out[1..]),
        Err(MergeError::Length {
            what: "the output",
            ..
        })
    ));
    let t = MergeShape {
        transposed: true,
        ..s
    };
    assert!(matches!(
        merge_tensor(&t, &base, &a, &b, &mut out),
        Err(MergeError::Length { what: "A", .. })
    ));
    assert!(matches!(
        merged(&MergeShape { rank: 0, ..s }, &base, &[], &[]),
        Err(MergeError::ZeroRank)
    ));
    assert!(matches!(
        merged(
            &MergeShape {
                scale: f32::NAN,
                ..s
            },
            &base,
            &a,
            &b
        ),
        Err(MergeError::Scale(_))
    ));
    assert!(matches!(
        merged(
            &MergeShape {
                a_dtype: DType::I32,
                ..s
            },
            &base,
            &a,
            &b
        ),
        Err(MergeError::Dtype { what: "A", .. })
    ));
    // Shapes whose byte sizes overflow u64 are length errors, not panics.
    let huge = MergeShape {
        rows: u64::MAX,
        cols: u64::MAX,
        ..s
    };
    assert!(matches!(
        merged(&huge, &base, &a, &b),
        Err(MergeError::Length { .. })
    ));
    let f = LoraFactors::new(s, &a, &b).unwrap();
    let mut rows = vec![0u8; 12];
    assert!(f.merge_rows_in_place(1, &mut rows).is_ok());
    assert!(matches!(
        f.merge_rows_in_place(2, &mut rows),
        Err(MergeError::Rows { .. })
    ));
    assert!(matches!(
        f.merge_rows_in_place(u64::MAX, &mut rows),
        Err(MergeError::Rows { .. })
    ));
    assert!(matches!(
        f.merge_rows_in_place(0, &mut rows[..5]),
        Err(MergeError::RowLength {
            got: 5,
            row_bytes: 12
        })
    ));
    assert!(f.merge_rows_in_place(2, &mut []).is_ok());
}

#[test]
fn empty_tensors_merge_to_nothing() {
    for (rows, cols) in [(0, 3), (3, 0), (0, 0)] {
        for transposed in [false, true] {
            let s = shape(rows, cols, 2, transposed, 1.0);
            let a = vec![0u8; (2 * s.a_shape()[1] * 4) as usize];
            let b = vec![0u8; (2 * s.b_shape()[0] * 4) as usize];
            assert_eq!(merged(&s, &[], &a, &b).unwrap(), Vec::<u8>::new());
        }
    }
}

fn case() -> impl Strategy<Value = (MergeShape, Vec<u8>, Vec<u8>, Vec<u8>)> {
    (
        0u64..7,
        0u64..7,
        1u32..6,
        any::<bool>(),
        prop::sample::select(FLOATS.to_vec()),
        prop::sample::select(FLOATS.to_vec()),
        prop::sample::select(FLOATS.to_vec()),
        -64.0f64..64.0,
        any::<bool>(),
    )
        .prop_flat_map(
            |(rows, cols, rank, transposed, bd, ad, bdt, alpha, rslora)| {
                let s = MergeShape {
                    rows,
                    cols,
                    rank,
                    transposed,
                    scale: crate::lora::scale(alpha, rank, rslora).unwrap(),
                    base_dtype: bd,
                    a_dtype: ad,
                    b_dtype: bdt,
                };
                let n = |sh: [u64; 2], d: DType| (sh[0] * sh[1]) as usize * d.size();
                // Mostly ordinary values (bytes of random f32 in a range), sometimes raw bits (NaN, inf,
                // subnormals).
                let bytes = move |len: usize, d: DType| {
                    prop_oneof![
                        3 => prop::collection::vec(-4.0f32..4.0, len).prop_map(move |v| {
                            let mut out = Vec::new();
                            for x in v {
                                put(d, x, &mut out);
                            }
                            out
                        }),
                        1 => prop::collection::vec(any::<u8>(), len * d.size()),
                    ]
                };
                (
                    Just(s),
                    bytes(n([rows, cols], bd) / bd.size(), bd),
                    bytes(n(s.a_shape(), ad) / ad.size(), ad),
                    bytes(n(s.b_shape(), bdt) / bdt.size(), bdt),
                )
            },
        )
}

proptest! {
    #[test]
    fn merge_equals_the_reference((s, base, a, b) in case()) {
        let out = merged(&s, &base, &a, &b).unwrap();
        prop_assert_eq!(out, reference(&s, &base, &a, &b));
    }

    /// Any split into chunks of rows gives the whole tensor's bytes.
    #[test]
    fn row_chunks_equal_the_whole((s, base, a, b) in case(), cut in 0usize..8) {
        let whole = merged(&s, &base, &a, &b).unwrap();
        let f = LoraFactors::new(s, &a, &b).unwrap();
        let row = s.cols as usize * s.base_dtype.size();
        let cut = cut.min(s.rows as usize);
        let mut out = base.clone();
        let (first, second) = out.split_at_mut(cut * row);
        f.merge_rows_in_place(0, first).unwrap();
        f.merge_rows_in_place(cut as u64, second).unwrap();
        prop_assert_eq!(out, whole);
    }

    /// The update in f32 added to each base element and rounded is the merge, bit for bit.
    #[test]
    fn base_plus_update_is_the_merge((s, base, a, b) in case()) {
        let whole = merged(&s, &base, &a, &b).unwrap();
        let f = LoraFactors::new(s, &a, &b).unwrap();
        let u = f.update_rows(0, s.rows as usize);
        prop_assert_eq!(u.len() as u64, s.rows * s.cols);
        // Any split into runs of rows gives the same values.
        let cut = (s.rows / 2) as usize;
        let mut parts = f.update_rows(0, cut);
        parts.extend(f.update_rows(cut, usize::MAX));
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        prop_assert_eq!(bits(&parts), bits(&u));
        let mut out = Vec::new();
        for (k, d) in u.iter().enumerate() {
            put(s.base_dtype, get(s.base_dtype, &base, k) + d, &mut out);
        }
        prop_assert_eq!(out, whole);
    }

    /// Arbitrary shapes and buffers: an error or a result, never a panic.
    #[test]
    fn never_panics(
        rows in any::<u64>(), cols in any::<u64>(), rank in any::<u32>(), transposed in any::<bool>(),
        base in prop::collection::vec(any::<u8>(), 0..64),
        a in prop::collection::vec(any::<u8>(), 0..64),
        b in prop::collection::vec(any::<u8>(), 0..64),
        small in any::<bool>(),
    ) {
        let (rows, cols, rank) = if small { (rows % 5, cols % 5, rank % 5) } else { (rows, cols, rank) };
        let s = MergeShape { rows, cols, rank, transposed, scale: 1.0,
            base_dtype: DType::BF16, a_dtype: DType::F16, b_dtype: DType::F32 };
        let _ = merged(&s, &base, &a, &b);
        if let Ok(f) = LoraFactors::new(s, &a, &b) {
            let mut rows = base.clone();
            let _ = f.merge_rows_in_place(rows.len() as u64, &mut rows);
            let _ = f.merge_rows_in_place(0, &mut rows);
        }
    }
}
