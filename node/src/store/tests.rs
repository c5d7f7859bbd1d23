//! Store tests, run against both backends: rocksdb in a temp dir and the in-memory double.

use std::collections::BTreeMap;

use zdn_protocol::manifest::{Kind, PublisherKey};
use zdn_protocol::safetensors::{encode_header, TensorLayout};
use zdn_protocol::{DType, Hash};

use super::*;
use crate::bundle;

fn key() -> PublisherKey {
    PublisherKey::from_seed(&[5; 32])
}

/// A safetensors model with `n` f32 tensors of `per` elements; tensor i's contents come from
/// `seeds[i]` (same seed → same bytes), half of each tensor compressible.
fn model(seeds: &[u64], per: usize) -> Vec<u8> {
    let layouts: Vec<TensorLayout> = (0..seeds.len())
        .map(|i| TensorLayout {
            name: format!("layer.{i}.weight"),
            dtype: DType::F32,
            shape: vec![per as u64],
        })
        .collect();
    let (mut out, _) = encode_header(&layouts, &BTreeMap::new()).unwrap();
    for &seed in seeds {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        for j in 0..per {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let v = if j % 2 == 0 {
                0.0f32
            } else {
                (x >> 40) as f32 / 1e7
            };
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    out
}

pub(super) fn stores() -> Vec<(ObjectStore, Option<tempfile::TempDir>)> {
    let dir = tempfile::tempdir().unwrap();
    let rocks = ObjectStore::open(&dir.path().join("store"), StoreLimits::default()).unwrap();
    vec![(ObjectStore::in_memory(), None), (rocks, Some(dir))]
}

pub(super) fn opts(name: &str, chunk_size: u32) -> AddOptions {
    let mut o = AddOptions::new(Kind::Base, name);
    o.chunk_size = chunk_size;
    o.created_at = 1_790_000_000;
    o
}

pub(super) fn chunk_count(s: &ObjectStore) -> usize {
    let mut n = 0;
    s.backend()
        .scan(Column::Chunks, b"", &mut |_, _| {
            n += 1;
            true
        })
        .unwrap();
    n
}

#[test]
fn add_get_round_trip_and_determinism() {
    let bytes = model(&[1, 2, 3], 10_000);
    let mut hashes = Vec::new();
    for (s, _dir) in stores() {
        let (m, r) = s.add(&bytes, &opts("m", 16 << 10), &key()).unwrap();
        assert_eq!(r.hash, m.hash());
        assert_eq!(r.new_chunks, r.chunks);
        assert!(r.stored_bytes < bytes.len() as u64, "{r:?}");
        assert_eq!(s.get_bytes(&m.hash()).unwrap(), bytes);
        assert_eq!(m.manifest.tensors.len(), 3);
        assert_eq!(s.resolve("m").unwrap(), m.hash());
        assert_eq!(s.resolve(&m.hash().to_hex()[..10]).unwrap(), m.hash());
        assert!(s.resolve("nope").is_err());
        let again = s.add(&bytes, &opts("m", 16 << 10), &key()).unwrap().1;
        assert!(again.already_present);
        assert_eq!(again.new_chunks, 0);
        assert_eq!(again.dedup_bytes, bytes.len() as u64);
        hashes.push(m.hash());
        assert!(s.verify(None, &mut |_| {}).unwrap().is_clean());
    }
    // Same input, same manifest hash, whatever the backend.
    assert_eq!(hashes[0], hashes[1]);
}

#[test]
fn any_byte_range_reads_back_from_the_chunks() {
    let bytes = model(&[4, 5], 9_000);
    for (s, _dir) in stores() {
        // Small chunks: ranges cross several chunk boundaries.
        let (m, _) = s.add(&bytes, &opts("r", 4 << 10), &key()).unwrap();
        assert!(m.manifest.chunks.len() > 8);
        let n = bytes.len() as u64;
        for (off, len) in [
            (0, 0),
            (0, 1),
            (0, n),
            (1, n - 1),
            (4095, 2),
            (4096, 4096),
            (n - 1, 1),
            (n, 0),
            (7, 20_001),
        ] {
            let mut out = vec![9u8];
            s.read_range(&m, off, len, &mut out).unwrap();
            assert_eq!(
                &out[1..],
                &bytes[off as usize..(off + len) as usize],
                "{off}+{len}"
            );
        }
        for t in &m.manifest.tensors {
            let mut out = Vec::new();
            s.read_range(&m, t.offset, t.len, &mut out).unwrap();
            assert_eq!(out, &bytes[t.offset as usize..(t.offset + t.len) as usize]);
        }
        // Past the end, or overflowing: a clear error, nothing appended.
        for (off, len) in [(n, 1), (1, n), (u64::MAX, 2)] {
            let mut out = Vec::new();
            assert!(s.read_range(&m, off, len, &mut out).is_err(), "{off}+{len}");
            assert!(out.is_empty());
        }
    }
}

#[test]
fn shared_tensors_are_stored_once() {
    for (s, _dir) in stores() {
        let a = model(&[1, 2, 3, 4], 50_000);
        let b = model(&[1, 9, 3, 4], 50_000);
        let ra = s.add(&a, &opts("a", 1 << 20), &key()).unwrap().1;
        let rb = s.add(&b, &opts("b", 1 << 20), &key()).unwrap().1;
        // Only tensor 1 differs: the header (same names and shapes) and tensors 0, 2, 3 are
        // deduplicated.
        assert_eq!(rb.new_chunks, 1, "{rb:?}");
        assert_eq!(rb.dedup_bytes, rb.object_len - 200_000);
        assert_eq!(chunk_count(&s), ra.chunks + 1);
    }
}

#[test]
fn bad_input_leaves_the_store_as_it_was() {
    for (s, _dir) in stores() {
        let good = model(&[1], 1000);
        // Not safetensors.
        let e = s.add(b"garbage", &opts("x", 1 << 20), &key()).unwrap_err();
        assert!(e.to_string().contains("safetensors"), "{e}");
        // A delta without its base.
        let mut o = opts("d", 1 << 20);
        o.kind = Kind::Delta;
        o.base = Some(Hash::of(b"missing"));
        let e = s.add(&good, &o, &key()).unwrap_err();
        assert!(e.to_string().contains("bitdelta"), "{e}");
        // Over the size limit.
        let small = ObjectStore::new(
            Box::new(MemoryBackend::new()),
            StoreLimits {
                max_object_size: 100,
            },
        )
        .unwrap();
        assert!(matches!(
            small.add(&good, &opts("x", 1 << 20), &key()),
            Err(StoreError::TooLarge { .. })
        ));
        // A bad name fails at signing, after the chunks were written: they are removed again.
        let e = s.add(&good, &opts("bad\nname", 256), &key()).unwrap_err();
        assert!(e.to_string().contains("name"), "{e}");
        assert_eq!(chunk_count(&s), 0);
        assert!(s.list().unwrap().is_empty());
    }
}

#[test]
fn verify_finds_corruption_and_gc_collects() {
    for (s, _dir) in stores() {
        let base = model(&[1, 2], 5000);
        let (m, _) = s.add(&base, &opts("base", 8 << 10), &key()).unwrap();
        let other = model(&[7], 5000);
        let (o, _) = s.add(&other, &opts("other", 8 << 10), &key()).unwrap();
        // Leftover of an interrupted add: unreferenced, not corrupt.
        s.put_chunks(vec![(Hash::of(b"orphan"), b"orphan".to_vec())])
            .unwrap();
        let r = s.verify(None, &mut |_| {}).unwrap();
        assert!(r.is_clean(), "{r:?}");
        assert_eq!(r.unreferenced_chunks, 1);
        assert_eq!(r.objects_checked, 2);

        // Flip a byte of a stored chunk behind the store's back.
        let victim = m.manifest.chunks[1].id;
        let mut bytes = s
            .backend()
            .get(Column::Chunks, victim.as_bytes())
            .unwrap()
            .unwrap();
        bytes[0] ^= 1;
        s.backend()
            .write(
                vec![Write::put(
                    Column::Chunks,
                    victim.as_bytes().to_vec(),
                    bytes,
                )],
                true,
            )
            .unwrap();
        let r = s.verify(None, &mut |_| {}).unwrap();
        assert!(
            r.problems
                .iter()
                .any(|p| matches!(p, Problem::CorruptChunk { chunk, .. } if *chunk == victim)),
            "{r:?}"
        );
        assert!(s.get_bytes(&m.hash()).is_err());
        assert!(!s.verify(Some(&m.hash()), &mut |_| {}).unwrap().is_clean());
        assert!(s.verify(Some(&o.hash()), &mut |_| {}).unwrap().is_clean());

        // gc: the orphan goes; unpinning `other` lets it go too.
        s.set_pin(&o.hash(), false).unwrap();
        let g = s.gc().unwrap();
        assert_eq!(g.manifests_removed, 1);
        assert_eq!(g.chunks_removed, 1 + o.manifest.chunks.len());
        assert!(s.manifest(&o.hash()).unwrap().is_none());
        assert!(s.resolve("other").is_err());
        assert!(s.manifest(&m.hash()).unwrap().is_some());
    }
}

#[test]
fn bundle_round_trip_and_bad_bundles() {
    let (src, _d) = stores().pop().unwrap();
    let base = model(&[1, 2, 3], 20_000);
    let (m, _) = src.add(&base, &opts("base", 16 << 10), &key()).unwrap();
    let mut bundle_bytes = Vec::new();
    let rep = bundle::export(&src, &[m.hash()], true, &mut bundle_bytes).unwrap();
    assert_eq!(rep.manifests, vec![m.hash()]);

    let trust = TrustPolicy {
        trusted: vec![key().public()],
        any: false,
    };
    for (dst, _dir) in stores() {
        let r = bundle::import(&dst, &mut &bundle_bytes[..], &trust).unwrap();
        assert_eq!(r.manifests, vec![m.hash()]);
        assert_eq!(dst.get_bytes(&m.hash()).unwrap(), base);
    }

    let untrusted = TrustPolicy::default();
    let cases: Vec<(&str, Vec<u8>, &TrustPolicy)> = vec![
        (
            "truncated",
            bundle_bytes[..bundle_bytes.len() - 1].to_vec(),
            &trust,
        ),
        (
            "half",
            bundle_bytes[..bundle_bytes.len() / 2].to_vec(),
            &trust,
        ),
        (
            "flipped chunk byte",
            {
                let mut b = bundle_bytes.clone();
                let i = b.len() - 100;
                b[i] ^= 0x40;
                b
            },
            &trust,
        ),
        (
            "flipped manifest byte",
            {
                let mut b = bundle_bytes.clone();
                b[30] ^= 1;
                b
            },
            &trust,
        ),
        ("untrusted publisher", bundle_bytes.clone(), &untrusted),
        ("trailing", [&bundle_bytes[..], b"x"].concat(), &trust),
        ("bad magic", [b"XXXX", &bundle_bytes[4..]].concat(), &trust),
    ];
    for (what, bytes, trust) in cases {
        for (dst, _dir) in stores() {
            let e = bundle::import(&dst, &mut &bytes[..], trust);
            assert!(e.is_err(), "{what}: accepted");
            assert!(
                dst.list().unwrap().is_empty(),
                "{what}: manifest left behind"
            );
            assert_eq!(chunk_count(&dst), 0, "{what}: chunks left behind");
        }
    }
}

#[test]
fn handle_runs_jobs_on_the_owner_thread() {
    let (s, _dir) = stores().pop().unwrap();
    let h = StoreHandle::spawn(s).unwrap();
    let bytes = model(&[4], 1000);
    let b2 = bytes.clone();
    let hash = h
        .call_blocking(move |s| Ok(s.add(&b2, &opts("x", 1 << 20), &key())?.0.hash()))
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let h2 = h.clone();
    let got = rt
        .block_on(async move { h2.call(move |s| s.get_bytes(&hash)).await })
        .unwrap();
    assert_eq!(got, bytes);
    drop(h);
}

#[test]
fn second_opener_gets_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let _a = ObjectStore::open(dir.path(), StoreLimits::default()).unwrap();
    let e = ObjectStore::open(dir.path(), StoreLimits::default()).unwrap_err();
    assert!(matches!(e, StoreError::InUse(_)), "{e}");
}

#[test]
fn a_decompression_bomb_is_refused_on_read_and_import() {
    use zdn_protocol::chunk::{ChunkRef, Codec};
    use zdn_protocol::manifest::Manifest;
    // 64 MiB of zeros compress to a few KiB; the manifest claims 1000 bytes.
    let bomb = zstd::bulk::compress(&vec![0u8; 64 << 20], 3).unwrap();
    let id = Hash::of(&bomb);
    let m = Manifest {
        kind: Kind::Base,
        name: "bomb".into(),
        version: String::new(),
        created_at: 0,
        base: None,
        object_len: 1000,
        object_hash: Hash::of(&[0u8; 1000]),
        chunks: vec![ChunkRef {
            id,
            offset: 0,
            len: 1000,
            codec: Codec::Zstd,
        }],
        tensors: Vec::new(),
        files: Vec::new(),
        extra: Vec::new(),
    }
    .sign(&key())
    .unwrap();
    let (src, _d) = stores().remove(0);
    src.put_chunks(vec![(id, bomb)]).unwrap();
    src.commit(&m, true).unwrap();
    let e = src.get_bytes(&m.hash()).unwrap_err();
    assert!(e.to_string().contains("inflates"), "{e}");
    assert!(!src.verify(None, &mut |_| {}).unwrap().is_clean());

    let mut b = Vec::new();
    bundle::export(&src, &[m.hash()], true, &mut b).unwrap();
    for (dst, _dir) in stores() {
        let trust = TrustPolicy {
            trusted: Vec::new(),
            any: true,
        };
        let e = bundle::import(&dst, &mut &b[..], &trust).unwrap_err();
        assert!(e.to_string().contains("inflates"), "{e}");
        assert!(dst.list().unwrap().is_empty());
        assert_eq!(chunk_count(&dst), 0);
    }
}

/// `add` keeps the publisher's signed announcement of what it made; one that does not verify, or
/// whose manifest the store lacks, is refused; gc removes it with its manifest.
#[test]
fn signed_announcements_are_kept_checked_and_collected() {
    use zdn_protocol::wire::Announcement;
    for (s, _dir) in stores() {
        let (m, _) = s
            .add(&model(&[3], 4000), &opts("a", 8 << 10), &key())
            .unwrap();
        let a = s.announcement(&m.hash()).unwrap().expect("add keeps one");
        a.verify().unwrap();
        assert!(a.announces(&m));
        let mut forged = a.clone();
        forged.object_len += 1;
        let e = s.put_announcement(&forged).unwrap_err().to_string();
        assert!(e.contains("signature"), "{e}");
        let other = PublisherKey::from_seed(&[6; 32]);
        let (m2, _) = ObjectStore::in_memory()
            .add(&model(&[4], 4000), &opts("b", 8 << 10), &other)
            .unwrap();
        let e = s
            .put_announcement(&Announcement::signed(&m2, &other).unwrap())
            .unwrap_err()
            .to_string();
        assert!(e.contains("lacks its manifest"), "{e}");
        s.set_pin(&m.hash(), false).unwrap();
        s.gc().unwrap();
        assert_eq!(s.announcement(&m.hash()).unwrap(), None);
    }
}

/// The announcements by time: newest first, from `since`, at most `max`; gc drops an object's
/// entry with it.
#[test]
fn recent_announcements_are_listed_newest_first_and_collected() {
    for (s, _dir) in stores() {
        let mut hashes = Vec::new();
        for (i, t) in [300u64, 100, 200].into_iter().enumerate() {
            let mut o = opts(&format!("o{i}"), 8 << 10);
            o.created_at = t;
            let (m, _) = s.add(&model(&[i as u64 + 7], 4000), &o, &key()).unwrap();
            hashes.push(m.hash());
        }
        let listed = |since, max| -> Vec<Hash> {
            s.recent_announcements(since, max)
                .unwrap()
                .iter()
                .map(|a| a.manifest)
                .collect()
        };
        let (t300, t100, t200) = (hashes[0], hashes[1], hashes[2]);
        assert_eq!(listed(0, 10), vec![t300, t200, t100]);
        assert_eq!(listed(150, 10), vec![t300, t200]);
        assert_eq!(listed(0, 2), vec![t300, t200]);
        assert_eq!(listed(301, 10), Vec::<Hash>::new());
        s.set_pin(&t300, false).unwrap();
        s.gc().unwrap();
        assert_eq!(listed(0, 10), vec![t200, t100]);
        let mut keys = 0;
        s.backend()
            .scan(Column::Refs, b"recent/", &mut |_, _| {
                keys += 1;
                true
            })
            .unwrap();
        assert_eq!(keys, 2);
    }
}

/// A bundle carries the signed announcement of a manifest too big for gossip, and the importing
/// store keeps it (so a station can announce what it got on a disk); a small manifest's is left
/// out.
#[test]
fn a_bundle_carries_the_announcement_of_a_big_manifest() {
    let (src, _d) = stores().pop().unwrap();
    let (big, _) = src
        .add(&model(&[1, 2], 20_000), &opts("big", 16), &key())
        .unwrap();
    assert!(big.as_bytes().len() > crate::net::MAX_GOSSIP_LEN);
    let (small, _) = src
        .add(&model(&[3], 1000), &opts("small", 16 << 10), &key())
        .unwrap();
    let mut b = Vec::new();
    bundle::export(&src, &[big.hash(), small.hash()], true, &mut b).unwrap();
    let trust = TrustPolicy {
        trusted: vec![key().public()],
        any: false,
    };
    for (dst, _dir) in stores() {
        bundle::import(&dst, &mut &b[..], &trust).unwrap();
        let a = dst.announcement(&big.hash()).unwrap().expect("carried");
        assert!(a.announces(&big));
        assert_eq!(dst.announcement(&small.hash()).unwrap(), None);
    }
}
