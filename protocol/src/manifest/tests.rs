use super::*;
use crate::chunk::Codec;
use crate::folder::FileEntry;
use proptest::prelude::*;

fn key(seed: u8) -> PublisherKey {
    PublisherKey::from_seed(&[seed; 32])
}

fn sample(kind: Kind) -> Manifest {
    Manifest {
        kind,
        name: "minilm-rohan".into(),
        version: "1.0".into(),
        created_at: 1_790_000_000,
        base: (kind != Kind::Base).then(|| Hash::of(b"base manifest")),
        object_len: 300,
        object_hash: Hash::of(b"object"),
        chunks: vec![
            ChunkRef {
                id: Hash::of(b"c0"),
                offset: 0,
                len: 100,
                codec: Codec::Zstd,
            },
            ChunkRef {
                id: Hash::of(b"c1"),
                offset: 100,
                len: 200,
                codec: Codec::Raw,
            },
        ],
        tensors: vec![TensorEntry {
            name: "encoder.layer.0.attention.self.query.weight".into(),
            dtype: crate::DType::F32.code(),
            shape: vec![4, 8],
            offset: 172,
            len: 128,
        }],
        files: Vec::new(),
        extra: vec![("quality.metric".into(), "cosine".into())],
    }
}

#[test]
fn round_trip_and_hash_is_deterministic() {
    for kind in [Kind::Base, Kind::Delta, Kind::Soup] {
        let a = sample(kind).sign(&key(7)).unwrap();
        let b = sample(kind).sign(&key(7)).unwrap();
        assert_eq!(a.as_bytes(), b.as_bytes());
        assert_eq!(a.hash(), b.hash());
        let d = decode(a.as_bytes()).unwrap();
        assert_eq!(d, a);
        assert_eq!(d.publisher, key(7).public());
    }
    // A different key gives a different hash.
    let c = sample(Kind::Base).sign(&key(8)).unwrap();
    assert_ne!(c.hash(), sample(Kind::Base).sign(&key(7)).unwrap().hash());
}

/// Golden vector: pins the canonical encoding and the signature scheme. If this changes, every
/// manifest hash users have typed changes: bump the version instead.
#[test]
fn golden_manifest_hash() {
    let s = sample(Kind::Delta).sign(&key(7)).unwrap();
    assert_eq!(s.as_bytes().len(), 407);
    assert_eq!(
        s.hash().to_hex(),
        "0e1f37f9dde2ed0be469dbc7fcbd1ab8bff8959d83bc067ac22d8a0df5dcb057"
    );
    let s = sample(Kind::Base).sign(&key(7)).unwrap();
    assert_eq!(
        s.hash().to_hex(),
        "127c7afbb49c5b5fbdf55ef16306638ee3a332c5c289d61dca316d72fef4e494"
    );
}

/// A soup manifest: the object is a recipe (one chunk, no tensors). Kind code 2; base required.
fn soup_sample() -> Manifest {
    let recipe = crate::soup::Recipe::new(
        Hash::of(b"base manifest"),
        1,
        crate::bitdelta::Granularity::Row,
        vec![
            crate::soup::Component {
                delta: Hash::of(b"d1"),
                weight: 0.6,
            },
            crate::soup::Component {
                delta: Hash::of(b"d2"),
                weight: 0.4,
            },
        ],
    )
    .unwrap()
    .encode();
    Manifest {
        kind: Kind::Soup,
        name: "minilm-soup".into(),
        version: String::new(),
        created_at: 1_790_000_000,
        base: Some(Hash::of(b"base manifest")),
        object_len: recipe.len() as u64,
        object_hash: Hash::of(&recipe),
        chunks: vec![ChunkRef {
            id: Hash::of(&recipe),
            offset: 0,
            len: recipe.len() as u32,
            codec: Codec::Raw,
        }],
        tensors: Vec::new(),
        files: Vec::new(),
        extra: Vec::new(),
    }
}

/// Golden vector of a soup manifest (kind code 2): a few hundred bytes in all.
#[test]
fn golden_soup_manifest() {
    assert_eq!(Kind::Soup.code(), 2);
    assert_eq!(Kind::from_code(2), Some(Kind::Soup));
    assert_eq!(Kind::from_code(3), None);
    let s = soup_sample().sign(&key(7)).unwrap();
    assert_eq!(s.as_bytes()[5], 2);
    assert_eq!(s.as_bytes().len(), SOUP_GOLDEN_LEN);
    assert_eq!(s.hash().to_hex(), SOUP_GOLDEN_HASH);
    assert_eq!(decode(s.as_bytes()).unwrap(), s);
    let mut m = soup_sample();
    m.base = None;
    assert!(matches!(
        m.sign(&key(7)),
        Err(ManifestError::Field { field: "base", .. })
    ));
}

const SOUP_GOLDEN_LEN: usize = 253;
const SOUP_GOLDEN_HASH: &str = "cd44f9cad531a8d0f0ba870bf23ba6d4e937e3c646a6c778a65ff73854e7d2e1";

#[test]
fn any_changed_byte_is_refused() {
    let s = sample(Kind::Delta).sign(&key(1)).unwrap();
    let bytes = s.as_bytes();
    for i in 0..bytes.len() {
        for bit in [0x01u8, 0x80] {
            let mut m = bytes.to_vec();
            m[i] ^= bit;
            assert!(
                decode(&m).is_err(),
                "flip of byte {i} bit {bit:#x} accepted"
            );
        }
    }
    for n in 0..bytes.len() {
        assert!(decode(&bytes[..n]).is_err(), "prefix of {n} bytes accepted");
    }
    let mut long = bytes.to_vec();
    long.push(0);
    assert_eq!(decode(&long), Err(ManifestError::Trailing(1)));
}

#[test]
fn rules_are_enforced_when_signing() {
    let k = key(2);
    let mut m = sample(Kind::Delta);
    m.base = None;
    assert!(matches!(
        m.sign(&k),
        Err(ManifestError::Field { field: "base", .. })
    ));
    let mut m = sample(Kind::Base);
    m.chunks[1].offset = 99;
    assert!(matches!(m.sign(&k), Err(ManifestError::Chunks(_))));
    let mut m = sample(Kind::Base);
    m.object_len = 301;
    assert!(matches!(m.sign(&k), Err(ManifestError::Chunks(_))));
    let mut m = sample(Kind::Base);
    m.tensors[0].len = 129;
    assert!(matches!(m.sign(&k), Err(ManifestError::TensorRange { .. })));
    let mut m = sample(Kind::Base);
    m.extra.push(("a".into(), "b".into()));
    assert!(matches!(
        m.sign(&k),
        Err(ManifestError::Field { field: "extra", .. })
    ));
    let mut m = sample(Kind::Base);
    m.name = String::new();
    assert!(m.sign(&k).is_err());
    let mut m = sample(Kind::Base);
    m.name = "a\nb".into();
    assert!(m.sign(&k).is_err());
}

#[test]
fn forged_counts_do_not_allocate() {
    let s = sample(Kind::Base).sign(&key(3)).unwrap();
    let mut m = s.as_bytes().to_vec();
    // The chunk count sits after magic(4) version(1) kind(1) name(2+12) version(2+3) created(8)
    // base flag(1) object_len(8) object_hash(32).
    let at = 4 + 1 + 1 + 2 + 12 + 2 + 3 + 8 + 1 + 8 + 32;
    m[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    assert_eq!(decode(&m), Err(ManifestError::Truncated("chunk list")));
}

fn arb_manifest() -> impl Strategy<Value = Manifest> {
    (
        any::<bool>(),
        "[a-z0-9._-]{1,40}",
        "[a-z0-9.]{0,10}",
        any::<u64>(),
        prop::collection::vec((1u32..5000, 0u8..3), 0..20),
        prop::collection::vec(
            ("[a-z.0-9]{1,30}", prop::collection::vec(0u64..100, 0..4)),
            0..6,
        ),
        prop::collection::btree_map("[a-z.]{1,10}", ".{0,20}", 0..4),
    )
        .prop_map(
            |(delta, name, version, created_at, chunk_lens, tensors, extra)| {
                let mut offset = 0u64;
                let chunks: Vec<ChunkRef> = chunk_lens
                    .iter()
                    .enumerate()
                    .map(|(i, &(len, codec))| {
                        let c = ChunkRef {
                            id: Hash::of(&i.to_le_bytes()),
                            offset,
                            len,
                            codec: Codec::from_code(codec).unwrap(),
                        };
                        offset += u64::from(len);
                        c
                    })
                    .collect();
                let object_len = offset;
                let tensors = tensors
                    .into_iter()
                    .map(|(name, shape)| TensorEntry {
                        name,
                        dtype: 0,
                        shape,
                        offset: 0,
                        len: object_len / 2,
                    })
                    .collect();
                Manifest {
                    kind: if delta { Kind::Delta } else { Kind::Base },
                    name,
                    version,
                    created_at,
                    base: delta.then(|| Hash::of(b"b")),
                    object_len,
                    object_hash: Hash::of(&object_len.to_le_bytes()),
                    chunks,
                    tensors,
                    files: Vec::new(),
                    extra: extra.into_iter().collect(),
                }
            },
        )
}

proptest! {
    #[test]
    fn encode_decode_round_trip(m in arb_manifest(), seed in any::<[u8; 32]>()) {
        let k = PublisherKey::from_seed(&seed);
        let s = m.clone().sign(&k).unwrap();
        let d = decode(s.as_bytes()).unwrap();
        prop_assert_eq!(&d.manifest, &m);
        prop_assert_eq!(d.as_bytes(), s.as_bytes());
    }

    #[test]
    fn mutated_manifests_never_panic(m in arb_manifest(), i in any::<usize>(), b in any::<u8>()) {
        let s = m.sign(&key(9)).unwrap();
        let mut bytes = s.as_bytes().to_vec();
        let i = i % bytes.len();
        bytes[i] = b;
        if let Ok(d) = decode(&bytes) {
            // Only the unchanged encoding can verify.
            prop_assert_eq!(d.as_bytes(), s.as_bytes());
        }
    }
}

/// A manifest that breaks a rule but carries a valid signature (a malicious publisher) is still
/// refused, naming the rule.
#[test]
fn signed_but_invalid_manifests_are_refused() {
    let k = key(4);
    let good = sample(Kind::Base).sign(&k).unwrap();
    let body_len = good.as_bytes().len() - 64;
    let resign = |mut body: Vec<u8>| {
        let mut msg = super::wire::SIGNING_CONTEXT.to_vec();
        msg.extend_from_slice(&body);
        body.extend_from_slice(&k.sign(&msg));
        body
    };
    // The second chunk's offset: 78 (end of the chunk count) + 45 (first chunk) + 32 (its id).
    let at = 78 + 45 + 32;
    for (offset, what) in [(99u64, "overlap"), (101, "gap")] {
        let mut body = good.as_bytes()[..body_len].to_vec();
        body[at..at + 8].copy_from_slice(&offset.to_le_bytes());
        let e = decode(&resign(body)).unwrap_err();
        assert!(matches!(e, ManifestError::Chunks(_)), "{what}: {e}");
    }
    // Object length that the chunks do not cover.
    let mut body = good.as_bytes()[..body_len].to_vec();
    body[34..42].copy_from_slice(&1000u64.to_le_bytes());
    assert!(matches!(
        decode(&resign(body)),
        Err(ManifestError::Chunks(_))
    ));
    // The unmodified body re-signed is the original.
    let body = good.as_bytes()[..body_len].to_vec();
    assert_eq!(decode(&resign(body)).unwrap(), good);
}

// ---- version 2: model folders ----

/// A folder manifest: three files back to back (one empty), a chunk starting at each file, one
/// tensor inside the shard.
fn folder_sample() -> Manifest {
    let file = |path: &str, offset, len| FileEntry {
        path: path.into(),
        offset,
        len,
    };
    let chunk = |seed: &[u8], offset, len| ChunkRef {
        id: Hash::of(seed),
        offset,
        len,
        codec: Codec::Raw,
    };
    Manifest {
        kind: Kind::Base,
        name: "llama-tiny".into(),
        version: String::new(),
        created_at: 1_790_000_000,
        base: None,
        object_len: 300,
        object_hash: Hash::of(b"folder object"),
        chunks: vec![
            chunk(b"f0", 0, 40),
            chunk(b"f1", 40, 100),
            chunk(b"f2", 140, 160),
        ],
        tensors: vec![TensorEntry {
            name: "model.norm.weight".into(),
            dtype: crate::DType::BF16.code(),
            shape: vec![80],
            offset: 140,
            len: 160,
        }],
        files: vec![
            file("config.json", 0, 40),
            file("empty.txt", 40, 0),
            file("model.safetensors", 40, 260),
        ],
        extra: Vec::new(),
    }
}

#[test]
fn folder_manifests_are_version_2_and_round_trip() {
    let s = folder_sample().sign(&key(7)).unwrap();
    assert_eq!(s.as_bytes()[4], 2, "a manifest with files is version 2");
    let d = decode(s.as_bytes()).unwrap();
    assert_eq!(d, s);
    assert_eq!(d.manifest.file("config.json").unwrap().len, 40);
    assert!(d.manifest.file("nope").is_none());
    let shard = d.manifest.file("model.safetensors").unwrap();
    assert_eq!(d.manifest.file_chunks(shard).len(), 2);
    let empty = d.manifest.file("empty.txt").unwrap();
    assert!(d.manifest.file_chunks(empty).is_empty());
    // Without files the same manifest is version 1.
    let mut m = folder_sample();
    m.files.clear();
    assert_eq!(m.sign(&key(7)).unwrap().as_bytes()[4], 1);
}

/// Pins the version 2 encoding (the file table) as `golden_manifest_hash` pins version 1.
#[test]
fn golden_folder_manifest() {
    let s = folder_sample().sign(&key(7)).unwrap();
    assert_eq!(s.as_bytes().len(), FOLDER_GOLDEN_LEN);
    assert_eq!(s.hash().to_hex(), FOLDER_GOLDEN_HASH);
}

const FOLDER_GOLDEN_LEN: usize = 450;
const FOLDER_GOLDEN_HASH: &str = "d83269c032db1c65f22e31254516a047bf491087bd0d4903ca5f70ac53c3cb6c";

/// Re-signs `body` (everything before the signature) with `k`: what a malicious publisher can do.
fn resign(k: &PublisherKey, mut body: Vec<u8>) -> Vec<u8> {
    let mut msg = super::wire::SIGNING_CONTEXT.to_vec();
    msg.extend_from_slice(&body);
    body.extend_from_slice(&k.sign(&msg));
    body
}

/// Offset of the first file path's bytes in the encoding of `folder_sample()`.
fn first_path_at(bytes: &[u8]) -> usize {
    let needle = b"config.json";
    bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .unwrap()
}

#[test]
fn signed_folder_manifests_with_bad_tables_are_refused() {
    let k = key(5);
    let good = folder_sample().sign(&k).unwrap();
    let body = &good.as_bytes()[..good.as_bytes().len() - 64];
    let at = first_path_at(body);
    // Same-length replacements of "config.json": each path rule, signed by the publisher.
    for (bad, want) in [
        ("../../.bash", "\"..\" component"),
        ("/etc/passwd", "absolute"),
        ("a\\bc.config", "backslash"),
        ("a//b.config", "empty component"),
        ("config\njson", "control character"),
        ("empty.txt\0\0", "control character"),
        ("empty.txt/x", "in canonical order"),
        ("model.safet", "in canonical order"),
    ] {
        assert_eq!(bad.len(), 11);
        let mut b = body.to_vec();
        b[at..at + 11].copy_from_slice(bad.as_bytes());
        let e = decode(&resign(&k, b)).unwrap_err();
        assert!(matches!(e, ManifestError::Files(_)), "{bad:?}: {e}");
        assert!(e.to_string().contains(want), "{bad:?}: {e}");
    }
    let mut m = folder_sample();
    m.files[2].path = "empty.txt".into();
    assert!(matches!(
        m.sign(&k),
        Err(ManifestError::Files(crate::folder::FolderError::Duplicate(
            _
        )))
    ));
    let mut m = folder_sample();
    m.files[0].path = "EMPTY.TXT".into();
    assert!(matches!(
        m.sign(&k),
        Err(ManifestError::Files(
            crate::folder::FolderError::CaseClash { .. }
        ))
    ));
    // A file table that does not cover the object, a chunk spanning two files, a tensor across
    // files, an empty version 2 table.
    let mut m = folder_sample();
    m.files[2].len = 259;
    assert!(matches!(m.sign(&k), Err(ManifestError::Files(_))));
    let mut m = folder_sample();
    m.files[0].len = 39;
    m.files[1].offset = 39;
    m.files[2].offset = 39;
    m.files[2].len = 261;
    assert!(matches!(
        m.sign(&k),
        Err(ManifestError::Files(
            crate::folder::FolderError::ChunkSpansFiles { .. }
        ))
    ));
    let mut m = folder_sample();
    m.tensors[0].offset = 30;
    assert!(matches!(m.sign(&k), Err(ManifestError::Files(_))));
    // Version 2 with a zero file count: refused (a manifest without files is version 1).
    let mut v1 = folder_sample();
    v1.files.clear();
    let s1 = v1.sign(&k).unwrap();
    let mut b = s1.as_bytes()[..s1.as_bytes().len() - 64].to_vec();
    b[4] = 2;
    let extra_at = b.len() - 32 - 2;
    b.splice(extra_at..extra_at, 0u32.to_le_bytes());
    let e = decode(&resign(&k, b)).unwrap_err();
    assert!(e.to_string().contains("version 1"), "{e}");
    // Version 3 does not exist.
    let mut b = body.to_vec();
    b[4] = 3;
    assert_eq!(decode(&resign(&k, b)), Err(ManifestError::Version(3)));
}

#[test]
fn folder_manifest_truncations_and_forged_counts_are_refused() {
    let s = folder_sample().sign(&key(3)).unwrap();
    let bytes = s.as_bytes();
    for n in 0..bytes.len() {
        assert!(decode(&bytes[..n]).is_err(), "prefix of {n} bytes accepted");
    }
    for i in 0..bytes.len() {
        let mut m = bytes.to_vec();
        m[i] ^= 0x40;
        assert!(decode(&m).is_err(), "flip of byte {i} accepted");
    }
    // The file count sits 4 bytes before the first path's length prefix.
    let at = first_path_at(bytes) - 2 - 4;
    assert_eq!(&bytes[at..at + 4], &3u32.to_le_bytes());
    for forged in [u32::MAX, (crate::folder::MAX_FILES + 1) as u32, 1000] {
        let mut m = bytes.to_vec();
        m[at..at + 4].copy_from_slice(&forged.to_le_bytes());
        assert!(
            matches!(
                decode(&m),
                Err(ManifestError::Truncated("file table") | ManifestError::Files(_))
            ),
            "{forged}"
        );
    }
}

fn arb_folder_manifest() -> impl Strategy<Value = Manifest> {
    (
        arb_manifest(),
        prop::collection::btree_map("[a-z0-9_.-]{1,12}(/[a-z0-9_.-]{1,8})?", 0u64..3000, 1..12),
    )
        .prop_filter_map("valid paths", |(mut m, files)| {
            // Paths made only of dots are refused; such a draw is skipped.
            if files
                .keys()
                .flat_map(|p| p.split('/'))
                .any(|c| c == "." || c == "..")
            {
                return None;
            }
            // A file may not stand where another path needs a folder ("a" and "a/b").
            let keys: Vec<&String> = files.keys().collect();
            if keys
                .iter()
                .any(|a| keys.iter().any(|b| b.starts_with(&format!("{a}/"))))
            {
                return None;
            }
            let mut offset = 0;
            m.files = files
                .into_iter()
                .map(|(path, len)| {
                    let f = FileEntry { path, offset, len };
                    offset += len;
                    f
                })
                .collect();
            // Chunks cut at every file start, 1000 bytes at most.
            let cuts: Vec<u64> = m.files.iter().map(|f| f.offset).collect();
            let ranges = crate::chunk::plan(offset, &cuts, 1000).ok()?;
            m.object_len = offset;
            m.chunks = ranges
                .iter()
                .enumerate()
                .map(|(i, r)| ChunkRef {
                    id: Hash::of(&i.to_le_bytes()),
                    offset: r.start,
                    len: (r.end - r.start) as u32,
                    codec: Codec::Zstd,
                })
                .collect();
            // Tensors inside the first non-empty file.
            let f = m.files.iter().find(|f| f.len > 0)?.clone();
            for t in &mut m.tensors {
                t.offset = f.offset;
                t.len = f.len / 2;
            }
            Some(m)
        })
}

proptest! {
    #[test]
    fn folder_encode_decode_round_trip(m in arb_folder_manifest(), seed in any::<[u8; 32]>()) {
        let k = PublisherKey::from_seed(&seed);
        let s = m.clone().sign(&k).unwrap();
        prop_assert_eq!(s.as_bytes()[4], 2);
        let d = decode(s.as_bytes()).unwrap();
        prop_assert_eq!(&d.manifest, &m);
        prop_assert_eq!(d.as_bytes(), s.as_bytes());
        for f in &m.files {
            let got = d.manifest.file_chunks(f);
            prop_assert_eq!(got.iter().map(|c| u64::from(c.len)).sum::<u64>(), f.len);
        }
    }

    #[test]
    fn mutated_folder_manifests_never_panic(m in arb_folder_manifest(), i in any::<usize>(), b in any::<u8>()) {
        let s = m.sign(&key(9)).unwrap();
        let mut bytes = s.as_bytes().to_vec();
        let i = i % bytes.len();
        bytes[i] = b;
        if let Ok(d) = decode(&bytes) {
            prop_assert_eq!(d.as_bytes(), s.as_bytes());
        }
    }
}
