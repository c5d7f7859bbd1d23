//! A mutation "fuzz" harness on stable Rust: valid `.bitdelta` files (every encoding, bits 1/2/4, every
//! granularity) are mutated at random — bit flips, byte sets, truncation, extension, insertion and
//! deletion, extreme values spliced into the length/offset/count/shape fields found from the layout,
//! random block contents — and each result goes through `BitDeltaFile::parse` and, when it parses,
//! `decode_model` against the seed's base (or no base). Every call must return Ok or Err: a panic is
//! caught, the input saved under target/, and the test fails. Allocation stays small because a decoder
//! allocates only what real data backs (docs/spec/bitdelta.md § Validation); an abort would end the run.
//!
//! Cases: `ZDN_MUTATION_CASES` (default 20 000), seed: `ZDN_MUTATION_SEED`. The long run:
//!   ZDN_MUTATION_CASES=1000000 cargo test --release -p zdn-protocol --test mutation -- --nocapture
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Instant;

use common::{count_off, entries, meta, model, off, Rng, Tensor};
use zdn_protocol::bitdelta::{
    decode_model, encode_model, BitDeltaFile, EmbeddingPolicy, EncodeOptions, Granularity,
    QuantSpec, Selection,
};
use zdn_protocol::glob::Glob;
use zdn_protocol::DType;

/// A valid file, the base it decodes against, and the positions of its integer fields.
struct Seed {
    file: Vec<u8>,
    base: Vec<Tensor>,
    fields: Vec<Field>,
    /// Offsets of each entry's u64 dimensions.
    shapes: Vec<Vec<usize>>,
}

#[derive(Clone, Copy, Debug)]
struct Field {
    at: usize,
    size: usize,
}

/// Every integer field of the header, metadata and index (offsets from tests/common/mod.rs).
fn fields_of(f: &[u8]) -> Vec<Field> {
    let fld = |at, size| Field { at, size };
    let mut v = vec![
        fld(off::VERSION, 4),
        fld(off::FLAGS, 4),
        fld(off::META_LEN, 4),
        fld(off::N_PARAMS, 8),
        fld(off::N_QUANTIZED, 8),
        fld(off::BITS, 1),
        fld(off::GRAN_CODE, 1),
        fld(off::GROUP, 4),
        fld(off::CLIP, 4),
        fld(off::MODEL_NAME_LEN, 2),
        fld(count_off(f), 4),
    ];
    for e in entries(f) {
        v.extend([
            fld(e.name_len, 2),
            fld(e.dtype, 1),
            fld(e.encoding, 1),
            fld(e.granularity, 1),
            fld(e.rank, 1),
            fld(e.group, 4),
            fld(e.offset, 8),
            fld(e.length, 8),
        ]);
        v.extend(e.shape.iter().map(|&at| fld(at, 8)));
    }
    v
}

fn floats(n: usize, k: u32) -> Vec<f32> {
    (0..n)
        .map(|i| {
            ((i as u32).wrapping_mul(2_654_435_761).wrapping_add(k) % 2001) as f32 / 1000.0 - 1.0
        })
        .collect()
}

/// A model with tensors for every encoding: quantized matrices of three dtypes and odd shapes, a 3-D
/// tensor, a bias (xor), an int tensor (unchanged), a fine-tune-only head (raw), an embedding (base or
/// quantized or exact by the policy), a 0-D scalar and an empty tensor.
fn seed_model(k: u32) -> (Vec<Tensor>, Vec<Tensor>) {
    let mut base = Vec::new();
    let mut target = Vec::new();
    let mut pair = |name: &str, bd: DType, td: DType, shape: &[u64], scale: f32| {
        let n = shape.iter().product::<u64>() as usize;
        let b = floats(n, k);
        let t: Vec<f32> = b
            .iter()
            .zip(floats(n, k + 7))
            .map(|(x, d)| x + d * scale)
            .collect();
        base.push(Tensor::floats(name, bd, shape, &b));
        target.push(Tensor::floats(name, td, shape, &t));
    };
    pair("l0.weight", DType::F32, DType::F32, &[6, 13], 0.05);
    pair("l1.weight", DType::BF16, DType::F16, &[3, 67], 0.02);
    pair("l2.weight", DType::F16, DType::BF16, &[2, 3, 5], 0.1);
    pair("l0.bias", DType::F32, DType::F32, &[13], 0.01);
    pair("embed.weight", DType::F32, DType::F32, &[4, 8], 0.01);
    pair("scalar", DType::F32, DType::F32, &[], 0.5);
    pair("empty", DType::F32, DType::F32, &[0, 4], 0.5);
    let ids: Vec<u8> = (0..5i64).flat_map(|i| i.to_le_bytes()).collect();
    base.push(Tensor::new("ids", DType::I64, &[1, 5], ids.clone()));
    target.push(Tensor::new("ids", DType::I64, &[1, 5], ids));
    target.push(Tensor::floats(
        "head.weight",
        DType::F32,
        &[2, 5],
        &floats(10, k + 3),
    ));
    (base, target)
}

fn seeds() -> Vec<Seed> {
    let settings = [
        (1, Granularity::Tensor, None, EmbeddingPolicy::Base),
        (1, Granularity::Row, Some(2.0), EmbeddingPolicy::Quantize),
        (1, Granularity::Group(8), None, EmbeddingPolicy::Exact),
        (2, Granularity::Row, None, EmbeddingPolicy::Base),
        (
            2,
            Granularity::Group(3),
            Some(3.0),
            EmbeddingPolicy::Quantize,
        ),
        (4, Granularity::Group(1), None, EmbeddingPolicy::Exact),
        (4, Granularity::Tensor, None, EmbeddingPolicy::Quantize),
    ];
    let mut out = Vec::new();
    for (k, (bits, granularity, clip_sigma, embeddings)) in settings.into_iter().enumerate() {
        let (base, target) = seed_model(k as u32);
        let selection = Selection {
            include: vec![Glob::new("l2.*"), Glob::new("scalar")],
            exclude: vec![Glob::new("*.bias")],
            embeddings,
        };
        let opts = EncodeOptions {
            spec: QuantSpec {
                bits,
                granularity,
                clip_sigma,
            },
            zstd_level: 3,
        };
        let file = encode_model(
            meta("mutation seed"),
            &model(&base),
            &model(&target),
            &selection,
            &opts,
        )
        .unwrap();
        decode_model(&file, &model(&base)).unwrap();
        out.push(seed(file, base));
    }
    // A lossless-only seed.
    let (base, target) = seed_model(99);
    let selection = Selection {
        include: vec![],
        exclude: vec![Glob::new("*")],
        embeddings: EmbeddingPolicy::Exact,
    };
    let file = encode_model(
        meta(""),
        &model(&base),
        &model(&target),
        &selection,
        &EncodeOptions::default(),
    )
    .unwrap();
    out.push(seed(file, base));
    out
}

fn seed(file: Vec<u8>, base: Vec<Tensor>) -> Seed {
    let fields = fields_of(&file);
    let shapes = entries(&file).into_iter().map(|e| e.shape).collect();
    Seed {
        file,
        base,
        fields,
        shapes,
    }
}

/// Values worth splicing into an integer field of a file of `len` bytes holding `orig`.
fn extreme(rng: &mut Rng, len: u64, orig: u64) -> u64 {
    const FIXED: [u64; 20] = [
        0,
        1,
        2,
        7,
        8,
        255,
        256,
        1024,
        1025,
        4096,
        4097,
        65535,
        1 << 31,
        u32::MAX as u64,
        1 << 32,
        1 << 38,
        1 << 40,
        (1 << 40) + 1,
        1 << 63,
        u64::MAX,
    ];
    match rng.below(8) {
        0..=2 => FIXED[rng.below(FIXED.len() as u64) as usize],
        3 => [len, len.wrapping_sub(1), len + 1, len / 2][rng.below(4) as usize],
        4 => orig.wrapping_add(1 + rng.below(8)),
        5 => orig.wrapping_sub(1 + rng.below(8)),
        6 => u64::MAX - rng.below(16),
        _ => rng.next_u64() >> rng.below(64),
    }
}

/// Applies one random mutation.
fn mutate(rng: &mut Rng, f: &mut Vec<u8>, seed: &Seed) {
    if f.is_empty() {
        f.push(rng.next_u64() as u8);
        return;
    }
    let len = f.len() as u64;
    // Most mutations go to the prelude (header, metadata, index), where the parser's checks are.
    let prelude = entries(&seed.file)
        .last()
        .map_or(f.len(), |e| e.end)
        .min(f.len());
    let pos = |rng: &mut Rng| {
        if rng.chance(2) {
            rng.below(prelude as u64) as usize
        } else {
            rng.below(len) as usize
        }
    };
    match rng.below(11) {
        0 => {
            let p = pos(rng);
            f[p] ^= 1 << rng.below(8);
        }
        1 => {
            let p = pos(rng);
            f[p] = [0, 0xff, 0x80, 0x7f, rng.next_u64() as u8][rng.below(5) as usize];
        }
        2 => f.truncate(rng.below(len) as usize),
        3 => {
            let n = 1 + rng.below(64) as usize;
            let zero = rng.chance(2);
            f.extend((0..n).map(|_| if zero { 0 } else { rng.next_u64() as u8 }));
        }
        4 | 5 => {
            // An extreme value in a known field (still at its place when nothing shifted).
            let fl = seed.fields[rng.below(seed.fields.len() as u64) as usize];
            if fl.at + fl.size <= f.len() {
                let mut cur = [0u8; 8];
                cur[..fl.size].copy_from_slice(&f[fl.at..fl.at + fl.size]);
                let v = extreme(rng, len, u64::from_le_bytes(cur));
                f[fl.at..fl.at + fl.size].copy_from_slice(&v.to_le_bytes()[..fl.size]);
            }
        }
        6 => {
            // A u64 extreme at any offset (unaligned, across fields).
            let p = pos(rng);
            let v = extreme(rng, len, 0).to_le_bytes();
            let n = (f.len() - p).min(8);
            f[p..p + n].copy_from_slice(&v[..n]);
        }
        7 => {
            // Insert or delete a few bytes, shifting everything after.
            let p = pos(rng);
            let n = 1 + rng.below(8) as usize;
            if rng.chance(2) {
                let bytes: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
                f.splice(p..p, bytes);
            } else {
                f.drain(p..(p + n).min(f.len()));
            }
        }
        8 => {
            // Random bytes inside one block: scales, codes, padding, zstd frames.
            if let Ok(p) = BitDeltaFile::parse(f) {
                let withblocks: Vec<_> = p.entries.iter().filter(|e| e.length > 0).collect();
                if !withblocks.is_empty() {
                    let e = withblocks[rng.below(withblocks.len() as u64) as usize];
                    for _ in 0..1 + rng.below(4) {
                        let at = (e.offset + rng.below(e.length)) as usize;
                        f[at] = rng.next_u64() as u8;
                    }
                }
            }
        }
        9 => {
            // A new shape for one entry: an empty first dimension with huge others, or small
            // dimensions (the index then disagrees with the block and the base).
            let dims = &seed.shapes[rng.below(seed.shapes.len() as u64) as usize];
            for (k, &at) in dims.iter().enumerate() {
                if at + 8 <= f.len() {
                    let v = match rng.below(3) {
                        0 if k == 0 => 0,
                        0 => extreme(rng, len, 0),
                        1 => rng.below(70),
                        _ => continue,
                    };
                    f[at..at + 8].copy_from_slice(&v.to_le_bytes());
                }
            }
        }
        _ => {
            // Copy a run of bytes from one place to another (e.g. an entry over another).
            let (a, b) = (pos(rng), pos(rng));
            let n = (1 + rng.below(32) as usize)
                .min(f.len() - a)
                .min(f.len() - b);
            let run = f[a..a + n].to_vec();
            f[b..b + n].copy_from_slice(&run);
        }
    }
}

#[derive(Default)]
struct Counts {
    parsed: u64,
    decoded: u64,
}

/// Parses and decodes one input. Panics propagate to the caller's `catch_unwind`.
fn run_case(f: &[u8], base: &[Tensor], counts: &mut Counts) {
    let Ok(p) = BitDeltaFile::parse(f) else {
        return;
    };
    counts.parsed += 1;
    // Accessors on a parsed file never go out of bounds.
    for i in 0..p.entries.len() {
        let e = &p.entries[i];
        assert_eq!(p.block(i).len() as u64, e.length);
        let _ = (e.numel(), e.byte_len(), e.matrix());
    }
    if let Ok(out) = decode_model(f, &model(base)) {
        counts.decoded += 1;
        for ((name, bytes), e) in out.iter().zip(&p.entries) {
            assert_eq!(name, &e.name);
            assert_eq!(bytes.len() as u64, e.byte_len());
        }
    }
}

#[test]
fn mutated_files_never_panic() {
    let cases: u64 = std::env::var("ZDN_MUTATION_CASES")
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(20_000);
    let seed: u64 = std::env::var("ZDN_MUTATION_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x2d_6e_2d_62_69_74);
    let seeds = seeds();
    let mut rng = Rng(seed);
    let mut counts = Counts::default();
    let mut failures = 0u64;
    let start = Instant::now();
    // Quiet the default hook: a caught panic is reported below, with its input.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    for case in 0..cases {
        let s = &seeds[rng.below(seeds.len() as u64) as usize];
        let mut f = s.file.clone();
        let no_base = rng.chance(16);
        let base: &[Tensor] = if no_base { &[] } else { &s.base };
        // The mutations parse too (to find blocks), so they run under the catch as well.
        let r = catch_unwind(AssertUnwindSafe(|| {
            for _ in 0..1 + rng.below(4) {
                mutate(&mut rng, &mut f, s);
            }
            run_case(&f, base, &mut counts)
        }));
        if let Err(e) = r {
            failures += 1;
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_default();
            let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../target/mutation-failures");
            let _ = std::fs::create_dir_all(&dir);
            let path = dir.join(format!("case-{case}.bitdelta"));
            let _ = std::fs::write(&path, &f);
            eprintln!(
                "mutation: case {case} (seed {seed}, no_base {no_base}) panicked: {msg}; input saved to {}",
                path.display()
            );
        }
    }
    std::panic::set_hook(hook);
    println!(
        "mutation: {cases} cases, {} parsed ok, {} decoded ok, {} panics, {:.1} s (seed {seed})",
        counts.parsed,
        counts.decoded,
        failures,
        start.elapsed().as_secs_f64()
    );
    assert_eq!(failures, 0, "{failures} mutated inputs panicked");
    // The harness reaches the decoder, not only the parser's first checks.
    if cases >= 10_000 {
        assert!(counts.parsed > cases / 50, "only {} parsed", counts.parsed);
        assert!(
            counts.decoded > cases / 100,
            "only {} decoded",
            counts.decoded
        );
    }
}
