//! One test per kind of bad input: each builds a valid file with `encode_model` (or `build_file`),
//! breaks one thing at an offset computed from the layout (tests/common/mod.rs, docs/spec/bitdelta.md), and
//! asserts the specific error. None may panic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{
    blocks_start, build_file, count_off, entries, get_u32, get_u64, meta, model, off, put_u16,
    put_u32, put_u64, Tensor,
};
use zdn_protocol::bitdelta::{
    decode_model, encode_model, encode_tensor, BitDeltaFile, Choice, DecodeError, EmbeddingPolicy,
    EncodeError, EncodeOptions, EncodedTensor, Encoding, FormatError, Granularity, QuantSpec,
    QuantizeError, ReconstructError, Selection, MAX_TENSOR_BYTES, VERSION,
};
use zdn_protocol::glob::Glob;
use zdn_protocol::DType;

/// The test model: a quantized matrix (sign1, 5×13 = 65 elements, so the last code byte has padding),
/// an f32 bias (xor), an unchanged int tensor, a tensor only in the fine-tune (raw), and an embedding
/// kept from the base (base). Names are all 5 bytes long so entries can be renamed in place.
fn models() -> (Vec<Tensor>, Vec<Tensor>) {
    let w: Vec<f32> = (0..65)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 64.0)
        .collect();
    let w2: Vec<f32> = w
        .iter()
        .enumerate()
        .map(|(i, v)| v + ((i * 13 % 17) as f32 - 8.0) / 512.0)
        .collect();
    let bias: Vec<f32> = (0..13).map(|i| i as f32 / 8.0).collect();
    let bias2: Vec<f32> = bias.iter().map(|v| v + 0.25).collect();
    let ids: Vec<u8> = (0..6i64).flat_map(|i| i.to_le_bytes()).collect();
    let emb: Vec<f32> = (0..12).map(|i| i as f32).collect();
    let emb2: Vec<f32> = emb.iter().map(|v| v + 1.0).collect();
    let head: Vec<f32> = (0..6).map(|i| -(i as f32)).collect();
    let base = vec![
        Tensor::floats("w.wgt", DType::F32, &[5, 13], &w),
        Tensor::floats("bias_", DType::F32, &[13], &bias),
        Tensor::new("ids__", DType::I64, &[6], ids.clone()),
        Tensor::floats("embed", DType::F32, &[3, 4], &emb),
    ];
    let target = vec![
        Tensor::floats("w.wgt", DType::F32, &[5, 13], &w2),
        Tensor::floats("bias_", DType::F32, &[13], &bias2),
        Tensor::new("ids__", DType::I64, &[6], ids),
        Tensor::floats("head_", DType::F32, &[2, 3], &head),
        Tensor::floats("embed", DType::F32, &[3, 4], &emb2),
    ];
    (base, target)
}

/// Indices of the tensors of [`models`] in the index.
const W: usize = 0;
const BIAS: usize = 1;
const IDS: usize = 2;
const HEAD: usize = 3;
const EMBD: usize = 4;

fn selection() -> Selection {
    Selection {
        include: vec![Glob::new("w.*")],
        exclude: vec![Glob::new("head*")],
        embeddings: EmbeddingPolicy::Base,
    }
}

fn valid() -> Vec<u8> {
    let (base, target) = models();
    let f = encode_model(
        meta("bad-input"),
        &model(&base),
        &model(&target),
        &selection(),
        &EncodeOptions::default(),
    )
    .unwrap();
    let p = BitDeltaFile::parse(&f).unwrap();
    let enc: Vec<Encoding> = p.entries.iter().map(|e| e.encoding).collect();
    assert_eq!(
        enc,
        [
            Encoding::Sign1,
            Encoding::Xor,
            Encoding::Unchanged,
            Encoding::Raw,
            Encoding::Base
        ]
    );
    f
}

fn parse_err(f: &[u8]) -> FormatError {
    BitDeltaFile::parse(f).expect_err("must not parse")
}

fn decode_err(f: &[u8]) -> ReconstructError {
    let (base, _) = models();
    match decode_model(f, &model(&base)) {
        Err(DecodeError::Reconstruct(e)) => e,
        other => panic!("expected a reconstruct error, got {other:?}"),
    }
}

/// A `Tensor` error naming `name` whose problem contains `needle`.
fn assert_tensor_err(e: FormatError, name: &str, needle: &str) {
    match &e {
        FormatError::Tensor { name: n, problem } if n == name && problem.contains(needle) => {}
        _ => panic!("expected tensor {name:?}: …{needle}…, got {e:?}"),
    }
}

fn assert_meta_err(e: FormatError, needle: &str) {
    match &e {
        FormatError::Metadata(m) if m.contains(needle) => {}
        _ => panic!("expected metadata error …{needle}…, got {e:?}"),
    }
}

#[test]
fn the_valid_file_decodes() {
    let f = valid();
    let (base, target) = models();
    let out = decode_model(&f, &model(&base)).unwrap();
    assert_eq!(out[BIAS].1, target[BIAS].bytes);
    assert_eq!(out[IDS].1, target[IDS].bytes);
    assert_eq!(out[HEAD].1, target[HEAD].bytes);
    assert_eq!(out[EMBD].1, base[3].bytes);
    // The layout helpers agree with the parser.
    let p = BitDeltaFile::parse(&f).unwrap();
    for (e, l) in p.entries.iter().zip(entries(&f)) {
        assert_eq!(get_u64(&f, l.offset), e.offset);
        assert_eq!(get_u64(&f, l.length), e.length);
        assert_eq!(&f[l.name..l.name + l.name_bytes], e.name.as_bytes());
    }
    assert_eq!(p.entries[0].offset as usize, blocks_start(&f));
}

#[test]
fn truncated_at_every_length() {
    let f = valid();
    let meta_end = count_off(&f);
    let index_start = meta_end + 4;
    let blocks = blocks_start(&f);
    for n in 0..f.len() {
        let e = parse_err(&f[..n]);
        let ok = match (&e, n) {
            (FormatError::Truncated { what: "header", .. }, n) if n < 16 => true,
            (
                FormatError::Truncated {
                    what: "metadata length",
                    ..
                },
                n,
            ) if n < 20 => true,
            (
                FormatError::Truncated {
                    what: "metadata", ..
                },
                n,
            ) if n < meta_end => true,
            (
                FormatError::Truncated {
                    what: "tensor count",
                    ..
                },
                n,
            ) if n < index_start => true,
            (FormatError::TensorCount { .. }, n) if n < blocks => true,
            (
                FormatError::Truncated {
                    what: "index entry",
                    ..
                },
                n,
            ) if n < blocks => true,
            (
                FormatError::Truncated {
                    what: "tensor block",
                    end,
                    len,
                    ..
                },
                n,
            ) => n >= blocks && *len == n as u64 && *end > *len,
            _ => false,
        };
        assert!(ok, "prefix of {n} bytes: {e:?}");
    }
    assert!(BitDeltaFile::parse(&f).is_ok());
}

#[test]
fn wrong_magic() {
    let mut f = valid();
    f[off::MAGIC..off::MAGIC + 8].copy_from_slice(b"BITDELTB");
    assert_eq!(parse_err(&f), FormatError::Magic(*b"BITDELTB"));
    f[..8].copy_from_slice(b"\x00\x00\x00\x00\x00\x00\x00\x00");
    assert_eq!(parse_err(&f), FormatError::Magic([0; 8]));
}

#[test]
fn wrong_version() {
    let mut f = valid();
    for v in [0, VERSION + 1, u32::MAX] {
        put_u32(&mut f, off::VERSION, v);
        assert_eq!(parse_err(&f), FormatError::Version(v));
    }
}

#[test]
fn nonzero_flags() {
    let mut f = valid();
    for flags in [1, 0x8000_0000] {
        put_u32(&mut f, off::FLAGS, flags);
        assert_eq!(parse_err(&f), FormatError::Flags(flags));
    }
}

#[test]
fn metadata_too_short() {
    let f = valid();
    let len = get_u32(&f, off::META_LEN);
    for short in [len - 1, off::META_FIXED as u32 - 1, 10, 0] {
        let mut g = f.clone();
        put_u32(&mut g, off::META_LEN, short);
        assert_meta_err(parse_err(&g), "truncated");
    }
}

#[test]
fn metadata_too_long() {
    let f = valid();
    let len = get_u32(&f, off::META_LEN);
    let mut g = f.clone();
    put_u32(&mut g, off::META_LEN, len + 3);
    assert_meta_err(parse_err(&g), "3 unexpected bytes at the end");
    // Longer than the file.
    put_u32(&mut g, off::META_LEN, u32::MAX);
    assert!(matches!(
        parse_err(&g),
        FormatError::Truncated {
            what: "metadata",
            ..
        }
    ));
}

#[test]
fn metadata_field_values() {
    let f = valid();
    let patch = |at: usize, bytes: &[u8]| {
        let mut g = f.clone();
        g[at..at + bytes.len()].copy_from_slice(bytes);
        parse_err(&g)
    };
    assert_meta_err(patch(off::BITS, &[3]), "bits must be 1, 2 or 4, got 3");
    assert_meta_err(patch(off::BITS, &[0]), "bits must be 1, 2 or 4, got 0");
    assert_meta_err(
        patch(off::GRAN_CODE, &[3]),
        "invalid granularity code 3 / group 0",
    );
    // Group code with group size 0, and tensor/row codes with a nonzero group.
    assert_meta_err(
        patch(off::GRAN_CODE, &[2]),
        "invalid granularity code 2 / group 0",
    );
    assert_meta_err(
        patch(off::GROUP, &[1, 0, 0, 0]),
        "invalid granularity code 0 / group 1",
    );
    assert_meta_err(patch(off::CLIP, &f32::NAN.to_le_bytes()), "invalid clip");
    assert_meta_err(patch(off::CLIP, &(-1f32).to_le_bytes()), "invalid clip");
    assert_meta_err(
        patch(off::CLIP, &f32::INFINITY.to_le_bytes()),
        "invalid clip",
    );
    let n_params = get_u64(&f, off::N_PARAMS);
    assert_meta_err(
        patch(off::N_QUANTIZED, &(n_params + 1).to_le_bytes()),
        "quantized parameters exceed the total",
    );
    assert_meta_err(patch(off::MODEL_NAME, &[0xff]), "model name is not UTF-8");
    assert_meta_err(
        patch(off::MODEL_NAME_LEN, &1025u16.to_le_bytes()),
        "model name of 1025 bytes exceeds 1024",
    );
    // Any embedding-policy byte is accepted: it is informational.
    let mut g = f.clone();
    g[off::EMBEDDINGS] = 0xff;
    assert!(BitDeltaFile::parse(&g).is_ok());
}

#[test]
fn tensor_count_that_cannot_fit() {
    let f = valid();
    let at = count_off(&f);
    let remaining = (f.len() - at - 4) as u64;
    for count in [u32::MAX, (remaining / 26) as u32 + 1] {
        let mut g = f.clone();
        put_u32(&mut g, at, count);
        assert_eq!(parse_err(&g), FormatError::TensorCount { count, remaining });
    }
}

#[test]
fn more_tensors_than_the_index_holds() {
    // A count that fits by the minimum entry size but runs into the blocks: entries are read from
    // block bytes and fail somewhere, never panic.
    let f = valid();
    let at = count_off(&f);
    let mut g = f.clone();
    put_u32(&mut g, at, get_u32(&f, at) + 1);
    parse_err(&g);
}

#[test]
fn name_too_long() {
    let mut f = valid();
    let e = &entries(&f)[BIAS];
    put_u16(&mut f, e.name_len, 4097);
    assert_eq!(
        parse_err(&f),
        FormatError::Entry {
            index: BIAS,
            problem: "name of 4097 bytes exceeds 4096".into()
        }
    );
}

#[test]
fn name_not_utf8() {
    let mut f = valid();
    let e = &entries(&f)[HEAD];
    f[e.name + 1] = 0xc3; // a lone lead byte
    f[e.name + 2] = b'(';
    assert_eq!(
        parse_err(&f),
        FormatError::Entry {
            index: HEAD,
            problem: "name is not UTF-8".into()
        }
    );
}

#[test]
fn unknown_dtype_code() {
    for code in [15u8, 255] {
        let mut f = valid();
        let e = &entries(&f)[BIAS];
        f[e.dtype] = code;
        assert_tensor_err(
            parse_err(&f),
            "bias_",
            &format!("unknown dtype code {code}"),
        );
    }
}

#[test]
fn unknown_encoding_code() {
    for code in [7u8, 255] {
        let mut f = valid();
        let e = &entries(&f)[BIAS];
        f[e.encoding] = code;
        assert_tensor_err(
            parse_err(&f),
            "bias_",
            &format!("unknown encoding code {code}"),
        );
    }
}

#[test]
fn unknown_granularity_code() {
    let mut f = valid();
    let e = &entries(&f)[W];
    f[e.granularity] = 3;
    assert_tensor_err(
        parse_err(&f),
        "w.wgt",
        "invalid granularity code 3 / group 0",
    );
}

#[test]
fn group_size_zero() {
    let mut f = valid();
    let e = &entries(&f)[W];
    f[e.granularity] = 2;
    put_u32(&mut f, e.group, 0);
    assert_tensor_err(
        parse_err(&f),
        "w.wgt",
        "invalid granularity code 2 / group 0",
    );
}

#[test]
fn group_size_with_tensor_granularity() {
    let mut f = valid();
    let e = &entries(&f)[W];
    put_u32(&mut f, e.group, 8);
    assert_tensor_err(
        parse_err(&f),
        "w.wgt",
        "invalid granularity code 0 / group 8",
    );
}

#[test]
fn scales_on_a_lossless_encoding() {
    let mut f = valid();
    let e = &entries(&f)[BIAS];
    f[e.granularity] = 1;
    assert_tensor_err(parse_err(&f), "bias_", "xor takes no scales");
}

#[test]
fn rank_above_eight() {
    let mut f = valid();
    let e = &entries(&f)[BIAS];
    f[e.rank] = 9;
    assert_tensor_err(parse_err(&f), "bias_", "rank 9 exceeds 8");
}

#[test]
fn quantized_encoding_on_an_integer_dtype() {
    let mut f = valid();
    let e = &entries(&f)[W];
    f[e.dtype] = DType::I32.code(); // same size as F32, so only the dtype is wrong
    assert_tensor_err(parse_err(&f), "w.wgt", "sign1 cannot hold a quantized I32");
}

#[test]
fn quantized_block_length_not_exact() {
    // 5×13 sign1 at tensor granularity: 4 bytes of scale + ceil(65/8) = 9 bytes of signs.
    for delta in [-1i64, 1, -13] {
        let mut f = valid();
        let e = &entries(&f)[W];
        assert_eq!(get_u64(&f, e.length), 13);
        put_u64(&mut f, e.length, (13 + delta) as u64);
        assert_tensor_err(
            parse_err(&f),
            "w.wgt",
            &format!("sign1 block must be 13 bytes, index says {}", 13 + delta),
        );
    }
}

#[test]
fn block_on_an_encoding_without_one() {
    let mut f = valid();
    let e = &entries(&f)[IDS];
    put_u64(&mut f, e.length, 1);
    assert_tensor_err(
        parse_err(&f),
        "ids__",
        "unchanged has no block, index says 1 bytes",
    );
    let mut f = valid();
    let e = &entries(&f)[EMBD];
    put_u64(&mut f, e.length, 4);
    assert_tensor_err(
        parse_err(&f),
        "embed",
        "base has no block, index says 4 bytes",
    );
}

#[test]
fn empty_lossless_block_for_a_nonempty_tensor() {
    let (_, target) = models();
    let enc = EncodedTensor {
        encoding: Encoding::Raw,
        granularity: Granularity::Tensor,
        block: vec![],
    };
    let f = build_file(
        &meta("m"),
        &[("head_", DType::F32, target[3].shape.clone(), enc)],
    );
    assert_tensor_err(parse_err(&f), "head_", "empty block for a non-empty tensor");
}

#[test]
fn offset_with_a_gap() {
    let mut f = valid();
    let e = &entries(&f)[HEAD];
    let o = get_u64(&f, e.offset);
    put_u64(&mut f, e.offset, o + 1);
    assert_tensor_err(
        parse_err(&f),
        "head_",
        &format!(
            "block offset {} is not where the previous block ends ({o})",
            o + 1
        ),
    );
}

#[test]
fn offset_overlapping_the_previous_block() {
    let mut f = valid();
    let e = &entries(&f)[HEAD];
    let o = get_u64(&f, e.offset);
    put_u64(&mut f, e.offset, o - 1);
    assert_tensor_err(
        parse_err(&f),
        "head_",
        &format!(
            "block offset {} is not where the previous block ends ({o})",
            o - 1
        ),
    );
}

#[test]
fn first_block_not_after_the_index() {
    let mut f = valid();
    let e = &entries(&f)[W];
    let o = get_u64(&f, e.offset);
    for bad in [0, o - 1, u64::MAX] {
        put_u64(&mut f, e.offset, bad);
        assert_tensor_err(
            parse_err(&f),
            "w.wgt",
            "is not where the previous block ends",
        );
    }
}

#[test]
fn length_that_overflows() {
    let mut f = valid();
    let e = &entries(&f)[BIAS];
    put_u64(&mut f, e.length, u64::MAX);
    assert_tensor_err(parse_err(&f), "bias_", "block length overflows");
}

#[test]
fn length_past_the_end_of_the_file() {
    let mut f = valid();
    let e = &entries(&f)[HEAD];
    let o = get_u64(&f, e.offset);
    put_u64(&mut f, e.length, 1 << 40);
    assert_eq!(
        parse_err(&f),
        FormatError::Truncated {
            what: "tensor block",
            start: o,
            end: o + (1 << 40),
            len: f.len() as u64
        }
    );
}

#[test]
fn shape_larger_than_max_tensor_bytes() {
    // 2^38 f32 elements = 2^40 bytes is the limit; one more element is over it.
    for (dims, over) in [
        (vec![1u64 << 38], false),
        (vec![(1u64 << 38) + 1], true),
        (vec![u64::MAX], true),
    ] {
        let mut f = valid();
        let e = &entries(&f)[BIAS];
        put_u64(&mut f, e.shape[0], dims[0]);
        let r = BitDeltaFile::parse(&f);
        if over {
            assert_tensor_err(
                r.expect_err("over the limit"),
                "bias_",
                &format!("exceeds {MAX_TENSOR_BYTES} bytes"),
            );
        } else {
            // At the limit the shape is accepted (the block is then wrong only for reconstruction).
            r.unwrap();
        }
    }
    // A product that overflows u64 on the way.
    let mut f = valid();
    let e = &entries(&f)[W];
    put_u64(&mut f, e.shape[0], 1 << 40);
    put_u64(&mut f, e.shape[1], 1 << 40);
    assert_tensor_err(parse_err(&f), "w.wgt", "exceeds");
}

#[test]
fn empty_shape_whose_other_dimensions_overflow() {
    // [0, 2^40, 2^40] has no elements, but its columns (2^80) do not fit in u64: the matrix view
    // saturates (this panicked with overflow checks on before format.rs's `matrix_of` was fixed).
    let mut f = valid();
    let e = &entries(&f)[W];
    put_u64(&mut f, e.shape[0], 0);
    put_u64(&mut f, e.shape[1], 1 << 40);
    let _ = BitDeltaFile::parse(&f);
    let enc = EncodedTensor {
        encoding: Encoding::Sign1,
        granularity: Granularity::Row,
        block: vec![],
    };
    let g = build_file(
        &meta("m"),
        &[("w", DType::F32, vec![0, 1 << 40, 1 << 40], enc)],
    );
    let p = BitDeltaFile::parse(&g).unwrap();
    assert_eq!(p.entries[0].byte_len(), 0);
    assert_eq!(p.entries[0].matrix(), (0, u64::MAX));
    let b = Tensor::new("w", DType::F32, &[0, 1 << 40, 1 << 40], vec![]);
    let out = decode_model(&g, &model(&[b])).unwrap();
    assert!(out[0].1.is_empty());
}

#[test]
fn trailing_bytes() {
    let mut f = valid();
    f.extend_from_slice(&[0, 0, 0]);
    assert_eq!(parse_err(&f), FormatError::Trailing(3));
}

#[test]
fn duplicate_tensor_name() {
    let mut f = valid();
    let e = &entries(&f)[BIAS];
    f[e.name..e.name + 5].copy_from_slice(b"w.wgt");
    assert_tensor_err(parse_err(&f), "w.wgt", "appears twice in the index");
}

#[test]
fn non_finite_scale_in_a_block() {
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let mut f = valid();
        let p = BitDeltaFile::parse(&f).unwrap();
        let o = p.entries[W].offset as usize;
        f[o..o + 4].copy_from_slice(&bad.to_le_bytes());
        BitDeltaFile::parse(&f).unwrap();
        match decode_err(&f) {
            ReconstructError::Scale { name, index, value } => {
                assert_eq!((name.as_str(), index), ("w.wgt", 0));
                assert_eq!(value, bad.to_string());
            }
            e => panic!("{e:?}"),
        }
    }
}

#[test]
fn non_finite_scale_names_its_index() {
    // Row granularity, 3 rows: a NaN in the third scale is scale #2.
    let b = Tensor::floats("w", DType::F32, &[3, 4], &[0.5; 12]);
    let t = Tensor::floats("w", DType::BF16, &[3, 4], &[0.25; 12]);
    let opts = EncodeOptions {
        spec: QuantSpec {
            bits: 2,
            granularity: Granularity::Row,
            clip_sigma: None,
        },
        zstd_level: 3,
    };
    let mut enc = encode_tensor(
        "w",
        Choice::Quantize,
        Some(&b.data()),
        &t.data(),
        &opts,
        None,
    )
    .unwrap();
    enc.block[8..12].copy_from_slice(&f32::NAN.to_le_bytes());
    let f = build_file(&meta("m"), &[("w", DType::BF16, vec![3, 4], enc)]);
    match decode_model(&f, &model(&[b])) {
        Err(DecodeError::Reconstruct(ReconstructError::Scale { index: 2, .. })) => {}
        other => panic!("{other:?}"),
    }
}

#[test]
fn nonzero_padding_bits() {
    // 65 one-bit codes: the last code byte uses bit 0 only.
    for bit in 1..8 {
        let mut f = valid();
        let p = BitDeltaFile::parse(&f).unwrap();
        let e = &p.entries[W];
        let last = (e.offset + e.length - 1) as usize;
        f[last] |= 1 << bit;
        assert_eq!(
            decode_err(&f),
            ReconstructError::Padding {
                name: "w.wgt".into()
            }
        );
    }
    // 2-bit codes: 5 elements use 10 bits, the last 6 bits of byte 1 are padding.
    let b = Tensor::floats("v", DType::F16, &[5], &[0.0, 1.0, 2.0, 3.0, 4.0]);
    let t = Tensor::floats("v", DType::F16, &[5], &[0.5, 1.0, 1.5, 3.5, 4.0]);
    let opts = EncodeOptions {
        spec: QuantSpec {
            bits: 2,
            granularity: Granularity::Tensor,
            clip_sigma: None,
        },
        zstd_level: 3,
    };
    let mut enc = encode_tensor(
        "v",
        Choice::Quantize,
        Some(&b.data()),
        &t.data(),
        &opts,
        None,
    )
    .unwrap();
    assert_eq!(enc.block.len(), 4 + 2);
    enc.block[5] |= 0x80;
    let f = build_file(&meta("m"), &[("v", DType::F16, vec![5], enc)]);
    assert_eq!(
        decode_model(&f, &model(&[b])),
        Err(DecodeError::Reconstruct(ReconstructError::Padding {
            name: "v".into()
        }))
    );
}

fn raw_file(block: Vec<u8>, shape: &[u64]) -> Vec<u8> {
    let enc = EncodedTensor {
        encoding: Encoding::Raw,
        granularity: Granularity::Tensor,
        block,
    };
    build_file(&meta("m"), &[("r", DType::F32, shape.to_vec(), enc)])
}

fn lossless_problem(f: &[u8], base: &[Tensor]) -> String {
    match decode_model(f, &model(base)) {
        Err(DecodeError::Reconstruct(ReconstructError::Lossless { problem, .. })) => problem,
        other => panic!("expected a lossless error, got {other:?}"),
    }
}

/// Absolute offset and size of the Frame_Content_Size field of a zstd frame (RFC 8878 §3.1.1.1).
fn fcs_field(frame: &[u8]) -> (usize, usize) {
    let fhd = frame[4];
    let single = (fhd >> 5) & 1 == 1;
    let at = 5 + usize::from(!single) + [0, 1, 2, 4][usize::from(fhd & 3)];
    let size = match fhd >> 6 {
        0 => usize::from(single),
        1 => 2,
        2 => 4,
        _ => 8,
    };
    (at, size)
}

/// Rewrites a frame's declared content size (same field width; a 2-byte field stores size − 256).
fn forge_content_size(frame: &mut [u8], size: u64) {
    let (at, n) = fcs_field(frame);
    let v = if n == 2 { size - 256 } else { size };
    frame[at..at + n].copy_from_slice(&v.to_le_bytes()[..n]);
}

#[test]
fn lossless_bomb_is_refused() {
    // 10 MB of zeros compress to a few hundred bytes; the tensor declares 16 bytes. The frame header
    // gives it away before anything is allocated or decompressed.
    let zeros = vec![0u8; 10 << 20];
    let bomb = zstd::bulk::compress(&zeros, 19).unwrap();
    assert!(bomb.len() < 4096);
    let f = raw_file(bomb.clone(), &[4]);
    BitDeltaFile::parse(&f).unwrap();
    assert_eq!(
        lossless_problem(&f, &[]),
        "lossless block declares 10485760 bytes, the tensor has 16"
    );
    // A frame that lies: its header says 16 bytes, its blocks inflate to 10 MB. Decoding stops at the
    // 16-byte buffer.
    let mut liar = bomb.clone();
    forge_content_size(&mut liar, 16);
    let p = lossless_problem(&raw_file(liar, &[4]), &[]);
    assert!(
        p.starts_with("lossless block does not decode to 16 bytes"),
        "{p}"
    );
    // A frame without a content size (written by a streaming encoder) is refused.
    let mut enc = zstd::stream::Encoder::new(Vec::new(), 19).unwrap();
    std::io::copy(&mut &zeros[..], &mut enc).unwrap();
    let streamed = enc.finish().unwrap();
    assert_eq!(
        lossless_problem(&raw_file(streamed, &[4]), &[]),
        "lossless block does not declare its decoded size"
    );
    // And the same as an xor block against a base.
    let b = Tensor::floats("r", DType::F32, &[4], &[1.0; 4]);
    let enc = EncodedTensor {
        encoding: Encoding::Xor,
        granularity: Granularity::Tensor,
        block: bomb,
    };
    let f = build_file(&meta("m"), &[("r", DType::F32, vec![4], enc)]);
    assert_eq!(
        lossless_problem(&f, &[b]),
        "lossless block declares 10485760 bytes, the tensor has 16"
    );
}

#[test]
fn forged_size_cannot_force_a_huge_allocation() {
    // A 12-byte frame whose header declares 2^40 bytes (one RLE block of 16 bytes), for a raw tensor of
    // 2^38 f32 = 2^40 bytes (MAX_TENSOR_BYTES, so the index is valid). No zstd frame that short can
    // decode to that much, so it is refused before the output is allocated.
    let mut frame = vec![0x28, 0xb5, 0x2f, 0xfd, 0b1110_0000];
    frame.extend_from_slice(&MAX_TENSOR_BYTES.to_le_bytes());
    let rle_last_16: u32 = 1 | (1 << 1) | (16 << 3);
    frame.extend_from_slice(&rle_last_16.to_le_bytes()[..3]);
    frame.push(0);
    let f = raw_file(frame.clone(), &[MAX_TENSOR_BYTES / 4]);
    BitDeltaFile::parse(&f).unwrap();
    assert_eq!(
        lossless_problem(&f, &[]),
        format!(
            "lossless block of {} bytes cannot decode to the {MAX_TENSOR_BYTES} bytes it declares",
            frame.len()
        )
    );
}

#[test]
fn lossless_block_that_decodes_short() {
    // Declared short: refused from the header.
    let block = zstd::bulk::compress(&[7u8; 12], 3).unwrap();
    assert_eq!(
        lossless_problem(&raw_file(block.clone(), &[4]), &[]),
        "lossless block declares 12 bytes, the tensor has 16"
    );
    // Declaring 16 but holding 12: zstd's own check of the content size refuses it.
    let mut liar = block;
    forge_content_size(&mut liar, 16);
    let p = lossless_problem(&raw_file(liar, &[4]), &[]);
    assert!(
        p.starts_with("lossless block does not decode to 16 bytes"),
        "{p}"
    );
}

#[test]
fn lossless_block_that_is_not_zstd() {
    assert_eq!(
        lossless_problem(&raw_file(vec![1, 2, 3, 4, 5], &[4]), &[]),
        "lossless block is not a zstd frame"
    );
    // A valid frame cut short: the header is intact, the data is not.
    let mut block = zstd::bulk::compress(&[7u8, 1, 2, 3].repeat(4), 3).unwrap();
    block.pop();
    let p = lossless_problem(&raw_file(block, &[4]), &[]);
    assert!(
        p.starts_with("lossless block does not decode to 16 bytes"),
        "{p}"
    );
}

#[test]
fn base_missing() {
    let f = valid();
    let (base, _) = models();
    // Every encoding but raw needs the base tensor; the first in index order is named.
    for (skip, name) in [(0, "w.wgt"), (1, "bias_"), (2, "ids__"), (3, "embed")] {
        let partial: Vec<Tensor> = base
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != skip)
            .map(|(_, t)| t.clone())
            .collect();
        assert_eq!(
            decode_model(&f, &model(&partial)),
            Err(DecodeError::Reconstruct(ReconstructError::BaseMissing(
                name.into()
            )))
        );
    }
    // Raw needs none.
    let (_, target) = models();
    let only_raw = encode_model(
        meta("m"),
        &[],
        &model(&target[3..4]),
        &Selection::default(),
        &EncodeOptions::default(),
    )
    .unwrap();
    assert_eq!(decode_model(&only_raw, &[]).unwrap()[0].1, target[3].bytes);
}

#[test]
fn base_shape_mismatch() {
    let f = valid();
    let (mut base, _) = models();
    base[0].shape = vec![13, 5];
    assert_eq!(
        decode_model(&f, &model(&base)),
        Err(DecodeError::Reconstruct(ReconstructError::BaseShape {
            name: "w.wgt".into(),
            base: vec![13, 5],
            delta: vec![5, 13],
        }))
    );
}

#[test]
fn base_dtype_mismatch() {
    let f = valid();
    // Quantized tensors need a float base (any of f32/f16/bf16).
    let (mut base, _) = models();
    base[0].dtype = DType::I32;
    match decode_model(&f, &model(&base)) {
        Err(DecodeError::Reconstruct(ReconstructError::BaseDtype {
            name,
            base,
            target,
            encoding,
        })) => assert_eq!(
            (name.as_str(), base, target, encoding),
            ("w.wgt", DType::I32, DType::F32, "sign1")
        ),
        other => panic!("{other:?}"),
    }
    // A float base of another float type is fine for a quantized tensor.
    let (mut base, _) = models();
    let halves: Vec<u8> = base[0]
        .bytes
        .chunks_exact(4)
        .flat_map(|c| half::f16::from_f32(f32::from_le_bytes(c.try_into().unwrap())).to_le_bytes())
        .collect();
    base[0] = Tensor::new("w.wgt", DType::F16, &[5, 13], halves);
    decode_model(&f, &model(&base)).unwrap();
    // xor, unchanged and base need the base's exact dtype.
    for (i, name, enc) in [
        (1, "bias_", "xor"),
        (2, "ids__", "unchanged"),
        (3, "embed", "base"),
    ] {
        let (mut base, _) = models();
        base[i].dtype = if base[i].dtype == DType::I64 {
            DType::F64
        } else {
            DType::I32
        };
        match decode_model(&f, &model(&base)) {
            Err(DecodeError::Reconstruct(ReconstructError::BaseDtype {
                name: n,
                encoding,
                ..
            })) => {
                assert_eq!((n.as_str(), encoding), (name, enc));
            }
            other => panic!("{name}: {other:?}"),
        }
    }
}

#[test]
fn non_finite_weights_at_quantize() {
    let (base, target) = models();
    let cases: [(usize, bool, f32); 4] = [
        (7, false, f32::NAN),
        (0, true, f32::INFINITY),
        (64, false, f32::NEG_INFINITY),
        (30, true, f32::NAN),
    ];
    for (index, in_base, bad) in cases {
        let (mut b, mut t) = (base.clone(), target.clone());
        let victim = if in_base { &mut b[0] } else { &mut t[0] };
        victim.bytes[4 * index..4 * index + 4].copy_from_slice(&bad.to_le_bytes());
        let r = encode_model(
            meta("m"),
            &model(&b),
            &model(&t),
            &selection(),
            &EncodeOptions::default(),
        );
        match &r {
            Err(EncodeError::Quantize {
                name,
                cause: QuantizeError::NonFinite { index: i, .. },
            }) => {
                assert_eq!((name.as_str(), *i), ("w.wgt", index));
                let msg = r.unwrap_err().to_string();
                assert!(
                    msg.contains(&format!("non-finite delta at element {index}")),
                    "{msg}"
                );
            }
            other => panic!("{other:?}"),
        }
    }
    // Finite weights whose difference overflows f32 are refused the same way.
    let b = Tensor::floats("w", DType::F32, &[2], &[-3e38, 0.0]);
    let t = Tensor::floats("w", DType::F32, &[2], &[3e38, 0.0]);
    let opts = EncodeOptions::default();
    match encode_tensor(
        "w",
        Choice::Quantize,
        Some(&b.data()),
        &t.data(),
        &opts,
        None,
    ) {
        Err(EncodeError::Quantize {
            cause:
                QuantizeError::NonFinite {
                    index: 0,
                    base,
                    target,
                },
            ..
        }) => assert_eq!((base, target), (-3e38, 3e38)),
        other => panic!("{other:?}"),
    }
}
