//! Mutation "fuzzing" on stable Rust: valid `.bitdelta` files are mutated at random (bit flips, byte
//! sets, truncation, extension, extreme values spliced into length/offset fields) and parsed and
//! decoded. Every case must return Ok or Err — never panic, never allocate past the caps.
//!
//! Cases: `ZDN_MUTATION_CASES` (default 20 000 so the suite stays quick). The 1 000 000-case run is
//! recorded in docs/format.md:
//!   ZDN_MUTATION_CASES=1000000 cargo test --release -p zdn-protocol --test fuzz_mutations -- --nocapture
#![allow(clippy::unwrap_used, clippy::expect_used)]

use zdn_protocol::bitdelta::{
    decode_model, encode_model, BitDeltaFile, EmbeddingPolicy, EncodeOptions, Granularity,
    Metadata, ModelTensor, QuantSpec, Selection, TensorData,
};
use zdn_protocol::glob::Glob;
use zdn_protocol::{DType, Hash};

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

struct Seed {
    file: Vec<u8>,
    base: Vec<(String, DType, Vec<u64>, Vec<u8>)>,
}

fn f32s(n: usize, k: f32) -> Vec<u8> {
    (0..n)
        .flat_map(|i| ((i as f32 * 0.37 + k).sin() * 0.1).to_le_bytes())
        .collect()
}

fn seeds() -> Vec<Seed> {
    let mut out = Vec::new();
    let settings = [
        (1, Granularity::Tensor, EmbeddingPolicy::Base),
        (1, Granularity::Row, EmbeddingPolicy::Exact),
        (2, Granularity::Group(3), EmbeddingPolicy::Quantize),
        (4, Granularity::Group(8), EmbeddingPolicy::Base),
    ];
    for (bits, g, emb) in settings {
        let base = vec![
            (
                "a.weight".to_string(),
                DType::F32,
                vec![5u64, 7],
                f32s(35, 0.0),
            ),
            ("emb".to_string(), DType::F32, vec![4u64, 3], f32s(12, 1.0)),
            ("bias".to_string(), DType::F32, vec![5u64], f32s(5, 2.0)),
            ("same".to_string(), DType::F32, vec![2u64], f32s(2, 3.0)),
        ];
        let mut target = base.clone();
        target[0].3 = f32s(35, 0.01);
        target[1].3 = f32s(12, 1.01);
        target[2].3 = f32s(5, 2.5);
        target.push((
            "new".to_string(),
            DType::I64,
            vec![3],
            (0..3i64).flat_map(i64::to_le_bytes).collect(),
        ));
        let mt =
            |v: &[(String, DType, Vec<u64>, Vec<u8>)]| -> Vec<(String, DType, Vec<u64>, Vec<u8>)> {
                v.to_vec()
            };
        let (b, t) = (mt(&base), mt(&target));
        let bm: Vec<ModelTensor<'_>> = b
            .iter()
            .map(|(n, d, s, x)| ModelTensor {
                name: n,
                data: TensorData::new(*d, s, x).unwrap(),
            })
            .collect();
        let tm: Vec<ModelTensor<'_>> = t
            .iter()
            .map(|(n, d, s, x)| ModelTensor {
                name: n,
                data: TensorData::new(*d, s, x).unwrap(),
            })
            .collect();
        let meta = Metadata {
            base_hash: Hash::of(b"base"),
            n_params: 0,
            n_quantized: 0,
            bits: bits as u8,
            granularity: g,
            clip_sigma: 0.0,
            embeddings: emb.code(),
            model_name: "seed".into(),
        };
        let sel = Selection {
            include: vec![Glob::new("emb*")],
            exclude: vec![],
            embeddings: emb,
        };
        let opts = EncodeOptions {
            spec: QuantSpec {
                bits,
                granularity: g,
                clip_sigma: None,
            },
            zstd_level: 3,
        };
        let file = encode_model(meta, &bm, &tm, &sel, &opts).unwrap();
        assert!(decode_model(&file, &bm).is_ok());
        out.push(Seed { file, base });
    }
    out
}

fn mutate(rng: &mut Rng, f: &mut Vec<u8>) {
    let rounds = 1 + rng.below(4);
    for _ in 0..rounds {
        let len = f.len();
        match rng.below(7) {
            0 if len > 0 => {
                let i = rng.below(len);
                f[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                f[i] = rng.next() as u8;
            }
            2 => f.truncate(rng.below(len + 1)),
            3 => {
                let n = 1 + rng.below(64);
                f.extend((0..n).map(|_| rng.next() as u8));
            }
            4 | 5 if len >= 8 => {
                // An extreme value over a (possible) u64/u32 field.
                let extremes = [
                    0u64,
                    1,
                    u64::MAX,
                    len as u64,
                    len as u64 + 1,
                    len as u64 - 1,
                    1 << 40,
                    u32::MAX as u64,
                ];
                let v = extremes[rng.below(extremes.len())];
                let i = rng.below(len - 7);
                if rng.below(2) == 0 {
                    f[i..i + 8].copy_from_slice(&v.to_le_bytes());
                } else {
                    f[i..i + 4].copy_from_slice(&(v as u32).to_le_bytes());
                }
            }
            _ if len > 2 => {
                // Duplicate or drop a slice.
                let a = rng.below(len);
                let b = (a + rng.below(32)).min(len);
                if rng.below(2) == 0 {
                    let s = f[a..b].to_vec();
                    f.splice(a..a, s);
                } else {
                    f.drain(a..b);
                }
            }
            _ => {}
        }
    }
}

#[test]
fn mutated_files_never_panic() {
    let cases: u64 = std::env::var("ZDN_MUTATION_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let seeds = seeds();
    let mut rng = Rng(0x5eed);
    let (mut parsed, mut decoded) = (0u64, 0u64);
    let start = std::time::Instant::now();
    for _ in 0..cases {
        let s = &seeds[rng.below(seeds.len())];
        let mut f = s.file.clone();
        mutate(&mut rng, &mut f);
        if BitDeltaFile::parse(&f).is_ok() {
            parsed += 1;
            let base: Vec<ModelTensor<'_>> = s
                .base
                .iter()
                .map(|(n, d, sh, x)| ModelTensor {
                    name: n,
                    data: TensorData::new(*d, sh, x).unwrap(),
                })
                .collect();
            if decode_model(&f, &base).is_ok() {
                decoded += 1;
            }
        }
    }
    println!(
        "mutation: {cases} cases, {parsed} parsed ok, {decoded} decoded ok, {:.1} s",
        start.elapsed().as_secs_f64()
    );
    // The mutations must reach past the parser, or the decode paths go untested.
    assert!(
        parsed > 0 && decoded > 0,
        "parsed {parsed}, decoded {decoded}"
    );
}
