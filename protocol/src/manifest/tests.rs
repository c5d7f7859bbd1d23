use super::*;
use crate::chunk::Codec;
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
