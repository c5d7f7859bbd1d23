//! Golden vectors: small fixed `.bitdelta` files in tests/vectors/, made from a fixed base and fine-tune
//! (`base.safetensors`, `target.safetensors`, integer-derived values), with the reconstruction each must
//! give (`*.expected.safetensors`). The tests check that
//!   (a) encoding the inputs again gives the stored file byte for byte,
//!   (b) decoding the stored file against the base gives the expected safetensors byte for byte,
//!   (c) every file has the BLAKE3 hard-coded below, so an accidental format change is caught.
//!
//!
//! Also a model folder (`folder/`: two shards, their index, config, tokenizer, chat template, a file
//! in a sub-folder, an empty file) and its signed version 2 manifest (`folder.manifest`): building
//! the manifest from the files (file table, tensor index, chunk cuts at file and tensor starts,
//! raw chunks of at most 64 bytes) gives the stored bytes, which decode.
//!
//! Regenerate (after an intended format or quantizer change; then update the hashes below with the
//! printed lines and say why in the commit):
//!   cargo test -p zdn-protocol --test golden -- --ignored regenerate_vectors --nocapture
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;

use common::{model, Tensor};
use zdn_protocol::bitdelta::{
    decode_model, encode_model, BitDeltaFile, EmbeddingPolicy, EncodeOptions, Encoding,
    Granularity, Metadata, ModelTensor, QuantSpec, Selection, TensorData,
};
use zdn_protocol::chunk::{self, ChunkRef, Codec};
use zdn_protocol::folder::{self, Member};
use zdn_protocol::glob::Glob;
use zdn_protocol::manifest::{self as manifest, Kind, Manifest, PublisherKey};
use zdn_protocol::safetensors::{encode_header, parse, TensorLayout};
use zdn_protocol::{DType, Hash};

/// BLAKE3 of every file in tests/vectors/.
const HASHES: &[(&str, &str)] = &[
    (
        "base.safetensors",
        "cea58c7981c806a2b37c5814dbc29de0f939bcff3b35d47b15a2f11559e2cf05",
    ),
    (
        "target.safetensors",
        "1c7714e88d958eb3b64f2eba56c1a95e542bfabd9f80e6edf288aa85cdbdda80",
    ),
    (
        "sign1_tensor.bitdelta",
        "8a299186e4c321280700ddac9e8744c686aebceeaf16dfe3597e83829689b367",
    ),
    (
        "sign1_tensor.expected.safetensors",
        "d9e2ea3002a265e744022bf4e15d35415e4b11b149e556adc123d89501620e38",
    ),
    (
        "sign1_group8_clip.bitdelta",
        "8c0cd89cc466cfed5436c6736c9f007d2183579d768cdb2956e374680b5f1e96",
    ),
    (
        "sign1_group8_clip.expected.safetensors",
        "69039681e38a725e2f80d481da1c52a90e655ba7c6ecd70a6dff6bf9ae8e2fc1",
    ),
    (
        "bits2_row.bitdelta",
        "ee00e5cca3448422f4dd58872c65c1bc381541c5baf28413ea07f2586d14c9b9",
    ),
    (
        "bits2_row.expected.safetensors",
        "c3f0595c0e1e7fa38a090d730d8ac6746d1423d4351be6b86b53c6a6e28f82f1",
    ),
    (
        "bits4_group3.bitdelta",
        "6c1e2b49e65f25e03a8e0ee8daa49ae2ddf453836fbb24ce0b1ae2b15d36acba",
    ),
    (
        "bits4_group3.expected.safetensors",
        "34fd84dabe1b1b1b898192954c8df7a0bbea8f2ea44352bc086d17ba12b20833",
    ),
    (
        "lossless.bitdelta",
        "eba7d446129eb7a251c672be3361ae0d961b00f5fdf01be7e17ffb7d1bc93214",
    ),
    (
        "lossless.expected.safetensors",
        "1c7714e88d958eb3b64f2eba56c1a95e542bfabd9f80e6edf288aa85cdbdda80",
    ),
    (
        "folder/added_tokens.json",
        "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262",
    ),
    (
        "folder/chat_template.jinja",
        "c26db8045d3ab14a7c7cab77adb0aaa00de45bb982178f7fd6cfe97c6046bdd6",
    ),
    (
        "folder/config.json",
        "a35c16f22bb647fbc43be436419aec22e1ea6e3b70347b2182f0489f5fcf7ab2",
    ),
    (
        "folder/generation_config.json",
        "01adf8e2b25d37a5735950d561c6435bb955c8d7efcf1778c94d23fdfd9ea2fb",
    ),
    (
        "folder/model-00001-of-00002.safetensors",
        "8d35ffa4151e99c436b94d891dc031b25528bbd63388124b774c06926965440b",
    ),
    (
        "folder/model-00002-of-00002.safetensors",
        "db644593f92a8c63f194f16dadb27b72e6fd2504c16f1aab4e429ad5a8d32690",
    ),
    (
        "folder/model.safetensors.index.json",
        "8093d94f6ab2e14c06716c8b67f654e6c04bd81b624a262eeb5bfbda4cbdea3f",
    ),
    (
        "folder/original/params.json",
        "4bcedb2481591303627814a4d942d3afa04797e42c20171691043d2129213907",
    ),
    (
        "folder/tokenizer.json",
        "be8f55fb29eaccf0a8e8e5b10575e4412063c8762eb33ed6f5b92ba07e55016c",
    ),
    (
        "folder.manifest",
        "1925659011e7100a315de1c1bb6e678180729378eec396ceb14c978c7d7ff1eb",
    ),
];

/// One vector: its file stem and how it was encoded.
struct Vector {
    stem: &'static str,
    bits: u32,
    granularity: Granularity,
    clip: Option<f32>,
    include: &'static [&'static str],
    exclude: &'static [&'static str],
    embeddings: EmbeddingPolicy,
}

const VECTORS: &[Vector] = &[
    Vector {
        stem: "sign1_tensor",
        bits: 1,
        granularity: Granularity::Tensor,
        clip: None,
        include: &[],
        exclude: &[],
        embeddings: EmbeddingPolicy::Base,
    },
    Vector {
        stem: "sign1_group8_clip",
        bits: 1,
        granularity: Granularity::Group(8),
        clip: Some(2.0),
        include: &[],
        exclude: &[],
        embeddings: EmbeddingPolicy::Quantize,
    },
    Vector {
        stem: "bits2_row",
        bits: 2,
        granularity: Granularity::Row,
        clip: None,
        include: &["layer.0.bias"],
        exclude: &[],
        embeddings: EmbeddingPolicy::Exact,
    },
    Vector {
        stem: "bits4_group3",
        bits: 4,
        granularity: Granularity::Group(3),
        clip: None,
        include: &["scalar"],
        exclude: &["mixed.*"],
        embeddings: EmbeddingPolicy::Base,
    },
    Vector {
        stem: "lossless",
        bits: 1,
        granularity: Granularity::Tensor,
        clip: None,
        include: &[],
        exclude: &["*"],
        embeddings: EmbeddingPolicy::Exact,
    },
];

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vectors")
}

fn read(name: &str) -> Vec<u8> {
    let p = dir().join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Element i of a pattern: an integer mix of i mapped to [-1, 1) in steps of 1/64.
fn pat(i: usize, mul: usize, modulo: usize) -> f32 {
    ((i * mul % modulo) as f32 - (modulo / 2) as f32) / 64.0
}

/// The base and fine-tune models: every dtype pair the quantizer takes, odd shapes, a 0-D and an empty
/// tensor, an embedding, an integer tensor, a tensor only in the fine-tune and one only in the base.
fn inputs() -> (Vec<Tensor>, Vec<Tensor>) {
    let delta = |i: usize| ((i * 13 % 17) as f32 - 8.0) / 512.0; // zero for some i: sign(0) = +1
    let mut base = Vec::new();
    let mut target = Vec::new();
    let mut pair = |name: &str, bd: DType, td: DType, shape: &[u64], mul: usize| {
        let n = shape.iter().product::<u64>() as usize;
        let b: Vec<f32> = (0..n).map(|i| pat(i, mul, 101)).collect();
        let t: Vec<f32> = b
            .iter()
            .enumerate()
            .map(|(i, v)| v + delta(i + mul))
            .collect();
        base.push(Tensor::floats(name, bd, shape, &b));
        target.push(Tensor::floats(name, td, shape, &t));
    };
    pair("layer.0.weight", DType::F32, DType::F32, &[6, 20], 37);
    pair("layer.0.bias", DType::F32, DType::F32, &[20], 5);
    pair("layer.1.weight", DType::BF16, DType::BF16, &[4, 9], 11);
    pair("layer.2.weight", DType::F16, DType::F16, &[3, 11], 7);
    pair("mixed.weight", DType::F32, DType::BF16, &[5, 7], 19);
    pair("layer.3.weight", DType::F16, DType::F32, &[2, 3, 4], 23);
    pair(
        "embeddings.word_embeddings.weight",
        DType::F32,
        DType::F32,
        &[10, 8],
        3,
    );
    pair("scalar", DType::F32, DType::F32, &[], 29);
    pair("empty.weight", DType::F32, DType::F32, &[0, 4], 31);
    let ids: Vec<u8> = (0..12i64).flat_map(|i| i.to_le_bytes()).collect();
    base.push(Tensor::new(
        "embeddings.position_ids",
        DType::I64,
        &[1, 12],
        ids.clone(),
    ));
    target.push(Tensor::new(
        "embeddings.position_ids",
        DType::I64,
        &[1, 12],
        ids,
    ));
    let head: Vec<f32> = (0..15).map(|i| pat(i, 41, 97)).collect();
    target.push(Tensor::floats(
        "new_head.weight",
        DType::F32,
        &[3, 5],
        &head,
    ));
    base.push(Tensor::floats(
        "base_only",
        DType::F32,
        &[3],
        &[1.0, 2.0, 3.0],
    ));
    (base, target)
}

/// A safetensors file of these tensors, in order, with no metadata.
fn safetensors(tensors: &[(String, DType, Vec<u64>, Vec<u8>)]) -> Vec<u8> {
    let layouts: Vec<TensorLayout> = tensors
        .iter()
        .map(|(name, dtype, shape, _)| TensorLayout {
            name: name.clone(),
            dtype: *dtype,
            shape: shape.clone(),
        })
        .collect();
    let (mut out, _) = encode_header(&layouts, &BTreeMap::new()).unwrap();
    for (_, _, _, bytes) in tensors {
        out.extend_from_slice(bytes);
    }
    out
}

fn to_safetensors(ts: &[Tensor]) -> Vec<u8> {
    let v: Vec<_> = ts
        .iter()
        .map(|t| (t.name.clone(), t.dtype, t.shape.clone(), t.bytes.clone()))
        .collect();
    safetensors(&v)
}

/// The tensors of a safetensors file, in data order.
fn load(file: &[u8]) -> Vec<Tensor> {
    let h = parse(file).unwrap();
    h.tensors
        .iter()
        .map(|t| Tensor::new(&t.name, t.dtype, &t.shape, file[t.range.clone()].to_vec()))
        .collect()
}

fn encode(
    v: &Vector,
    base_file: &[u8],
    base: &[ModelTensor<'_>],
    target: &[ModelTensor<'_>],
) -> Vec<u8> {
    let meta = Metadata {
        base_hash: Hash::of(base_file),
        n_params: 0,
        n_quantized: 0,
        bits: v.bits as u8,
        granularity: v.granularity,
        clip_sigma: v.clip.unwrap_or(0.0),
        embeddings: v.embeddings.code(),
        model_name: format!("golden/{}", v.stem),
    };
    let selection = Selection {
        include: v.include.iter().map(|g| Glob::new(g)).collect(),
        exclude: v.exclude.iter().map(|g| Glob::new(g)).collect(),
        embeddings: v.embeddings,
    };
    let opts = EncodeOptions {
        spec: QuantSpec {
            bits: v.bits,
            granularity: v.granularity,
            clip_sigma: v.clip,
        },
        ..EncodeOptions::default()
    };
    encode_model(meta, base, target, &selection, &opts).unwrap()
}

/// The expected output: the decoded tensors in index order, as safetensors.
fn decode(file: &[u8], base: &[ModelTensor<'_>]) -> Vec<u8> {
    let p = BitDeltaFile::parse(file).unwrap();
    let out = decode_model(file, base).unwrap();
    let v: Vec<_> = p
        .entries
        .iter()
        .zip(out)
        .map(|(e, (name, bytes))| (name, e.dtype, e.shape.clone(), bytes))
        .collect();
    safetensors(&v)
}

fn model_of(ts: &[Tensor]) -> Vec<ModelTensor<'_>> {
    ts.iter()
        .map(|t| ModelTensor {
            name: &t.name,
            data: TensorData::new(t.dtype, &t.shape, &t.bytes).unwrap(),
        })
        .collect()
}

fn all_files() -> Vec<String> {
    let mut v = vec![
        "base.safetensors".to_owned(),
        "target.safetensors".to_owned(),
    ];
    for vec in VECTORS {
        v.push(format!("{}.bitdelta", vec.stem));
        v.push(format!("{}.expected.safetensors", vec.stem));
    }
    for (path, _) in folder_files() {
        v.push(format!("folder/{path}"));
    }
    v.push("folder.manifest".to_owned());
    v
}

/// The golden model folder, in canonical order: two shards (F32 and BF16 matrices, an FP8 tensor,
/// a 0-D scalar), their index, side files, a file in a sub-folder and an empty file.
fn folder_files() -> Vec<(&'static str, Vec<u8>)> {
    let f32s = |n: usize, mul: usize| -> Vec<u8> {
        (0..n).flat_map(|i| pat(i, mul, 97).to_le_bytes()).collect()
    };
    let bf16s = |n: usize, mul: usize| -> Vec<u8> {
        (0..n)
            .flat_map(|i| ((pat(i, mul, 89).to_bits() >> 16) as u16).to_le_bytes())
            .collect()
    };
    let shard1 = safetensors(&[
        (
            "model.embed_tokens.weight".into(),
            DType::BF16,
            vec![8, 6],
            bf16s(48, 5),
        ),
        (
            "model.layers.0.self_attn.q_proj.weight".into(),
            DType::F32,
            vec![6, 6],
            f32s(36, 7),
        ),
    ]);
    let shard2 = safetensors(&[
        (
            "model.layers.0.mlp.down_proj.weight".into(),
            DType::F8E4M3,
            vec![6, 4],
            (0..24).map(|i| (i * 37 % 256) as u8).collect(),
        ),
        ("model.norm.weight".into(), DType::F32, vec![6], f32s(6, 3)),
        ("model.scale".into(), DType::F32, vec![], f32s(1, 1)),
    ]);
    let index = concat!(
        "{\"metadata\":{\"total_size\":400},\"weight_map\":{",
        "\"model.embed_tokens.weight\":\"model-00001-of-00002.safetensors\",",
        "\"model.layers.0.mlp.down_proj.weight\":\"model-00002-of-00002.safetensors\",",
        "\"model.layers.0.self_attn.q_proj.weight\":\"model-00001-of-00002.safetensors\",",
        "\"model.norm.weight\":\"model-00002-of-00002.safetensors\",",
        "\"model.scale\":\"model-00002-of-00002.safetensors\"}}\n"
    );
    let template = "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}</s>{% endfor %}";
    vec![
        ("added_tokens.json", Vec::new()),
        ("chat_template.jinja", template.as_bytes().to_vec()),
        (
            "config.json",
            b"{\"model_type\":\"llama\",\"hidden_size\":6,\"vocab_size\":8}\n".to_vec(),
        ),
        (
            "generation_config.json",
            b"{\"bos_token_id\":1,\"eos_token_id\":2}\n".to_vec(),
        ),
        ("model-00001-of-00002.safetensors", shard1),
        ("model-00002-of-00002.safetensors", shard2),
        ("model.safetensors.index.json", index.as_bytes().to_vec()),
        ("original/params.json", b"{\"dim\":6}\n".to_vec()),
        (
            "tokenizer.json",
            b"{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1}}}\n".to_vec(),
        ),
    ]
}

/// The signed manifest of the golden folder: the layout `zdn_protocol::folder::layout` gives,
/// chunks cut by `chunk::plan` at its boundaries every 64 bytes, each stored raw (so the vector does
/// not depend on zstd), key seed [7; 32], fixed name and time.
fn folder_manifest(files: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let members: Vec<Member<'_>> = files
        .iter()
        .map(|(path, bytes)| Member { path, bytes })
        .collect();
    let layout = folder::layout(&members).unwrap();
    let object: Vec<u8> = files.iter().flat_map(|(_, b)| b.iter().copied()).collect();
    assert_eq!(object.len() as u64, layout.object_len);
    let chunks = chunk::plan(layout.object_len, &layout.boundaries, 64)
        .unwrap()
        .into_iter()
        .map(|r| {
            let data = &object[r.start as usize..r.end as usize];
            ChunkRef {
                id: Hash::of(data),
                offset: r.start,
                len: data.len() as u32,
                codec: Codec::Raw,
            }
        })
        .collect();
    let m = Manifest {
        kind: Kind::Base,
        name: "golden/folder".into(),
        version: "1".into(),
        created_at: 1_790_000_000,
        base: None,
        object_len: layout.object_len,
        object_hash: Hash::of(&object),
        chunks,
        tensors: layout.tensors,
        files: layout.files,
        extra: Vec::new(),
    };
    m.sign(&PublisherKey::from_seed(&[7; 32]))
        .unwrap()
        .as_bytes()
        .to_vec()
}

#[test]
fn folder_vector_is_built_from_the_folder_byte_for_byte() {
    let files: Vec<(&str, Vec<u8>)> = folder_files()
        .into_iter()
        .map(|(p, _)| (p, read(&format!("folder/{p}"))))
        .collect();
    let stored = read("folder.manifest");
    assert!(
        folder_manifest(&files) == stored,
        "building the manifest of folder/ no longer gives folder.manifest"
    );
    let m = manifest::decode(&stored).unwrap();
    assert_eq!(stored[4], 2, "a folder manifest is version 2");
    let paths: Vec<&str> = m.manifest.files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(paths, files.iter().map(|(p, _)| *p).collect::<Vec<_>>());
    // Every member's chunks are exactly its bytes.
    for (f, (_, bytes)) in m.manifest.files.iter().zip(&files) {
        let got: Vec<u8> = m
            .manifest
            .file_chunks(f)
            .iter()
            .flat_map(|c| {
                let start = (c.offset - f.offset) as usize;
                bytes[start..start + c.len as usize].to_vec()
            })
            .collect();
        assert_eq!(&got, bytes, "{}", f.path);
    }
    let fp8 = m
        .manifest
        .tensors
        .iter()
        .find(|t| t.name == "model.layers.0.mlp.down_proj.weight")
        .unwrap();
    assert_eq!(fp8.dtype, DType::F8E4M3.code());
}

#[test]
fn vectors_re_encode_byte_for_byte() {
    let base_file = read("base.safetensors");
    let (base, target) = (load(&base_file), load(&read("target.safetensors")));
    for v in VECTORS {
        let got = encode(v, &base_file, &model_of(&base), &model_of(&target));
        assert!(
            got == read(&format!("{}.bitdelta", v.stem)),
            "{}: encoding the inputs no longer gives the stored vector",
            v.stem
        );
    }
}

#[test]
fn vectors_decode_to_the_expected_output() {
    let base = load(&read("base.safetensors"));
    for v in VECTORS {
        let got = decode(&read(&format!("{}.bitdelta", v.stem)), &model_of(&base));
        assert!(
            got == read(&format!("{}.expected.safetensors", v.stem)),
            "{}: decoding the stored vector no longer gives the expected output",
            v.stem
        );
    }
}

#[test]
fn vectors_have_their_hashes() {
    let files = all_files();
    let listed: Vec<&str> = HASHES.iter().map(|(n, _)| *n).collect();
    assert_eq!(listed, files, "HASHES must list every vector file");
    for (name, hex) in HASHES {
        let bytes = read(name);
        assert!(bytes.len() < 20 * 1024, "{name} is {} bytes", bytes.len());
        assert_eq!(&Hash::of(&bytes).to_hex(), hex, "{name} changed");
    }
}

/// The vectors cover what they claim: every encoding, and the settings in their names.
#[test]
fn vectors_cover_every_encoding() {
    let mut seen = std::collections::BTreeSet::new();
    for v in VECTORS {
        let file = read(&format!("{}.bitdelta", v.stem));
        let p = BitDeltaFile::parse(&file).unwrap();
        for e in &p.entries {
            seen.insert(e.encoding.name());
            if e.encoding.bits().is_some() {
                assert_eq!(e.encoding.bits(), Some(v.bits), "{}", v.stem);
                assert_eq!(e.granularity, v.granularity, "{}", v.stem);
            }
        }
        assert_eq!(p.meta.bits as u32, v.bits);
    }
    let all: std::collections::BTreeSet<_> = Encoding::ALL.iter().map(|e| e.name()).collect();
    assert_eq!(seen, all);
}

/// Writes tests/vectors/ from the definitions above and prints the new `HASHES`.
#[test]
#[ignore = "writes tests/vectors/; run explicitly to regenerate"]
fn regenerate_vectors() {
    let d = dir();
    std::fs::create_dir_all(&d).unwrap();
    let (base, target) = inputs();
    let base_file = to_safetensors(&base);
    let target_file = to_safetensors(&target);
    std::fs::write(d.join("base.safetensors"), &base_file).unwrap();
    std::fs::write(d.join("target.safetensors"), &target_file).unwrap();
    // Encode from the files as written, exactly as the test does.
    let (base, target) = (load(&base_file), load(&target_file));
    for v in VECTORS {
        let file = encode(v, &base_file, &model(&base), &model(&target));
        let expected = decode(&file, &model(&base));
        std::fs::write(d.join(format!("{}.bitdelta", v.stem)), &file).unwrap();
        std::fs::write(
            d.join(format!("{}.expected.safetensors", v.stem)),
            &expected,
        )
        .unwrap();
    }
    let files = folder_files();
    for (path, bytes) in &files {
        let p = d.join("folder").join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    }
    std::fs::write(d.join("folder.manifest"), folder_manifest(&files)).unwrap();
    println!("const HASHES: &[(&str, &str)] = &[");
    for name in all_files() {
        println!("    (\"{name}\", \"{}\"),", Hash::of(&read(&name)).to_hex());
    }
    println!("];");
}
