//! Store tests of folder objects, of the chunk index and of the bounded jobs that keep the store
//! thread free while a large object is read, verified or committed.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use zdn_protocol::folder::Member;
use zdn_protocol::manifest::{Kind, PublisherKey, SignedManifest};
use zdn_protocol::safetensors::{encode_header, TensorLayout};
use zdn_protocol::{DType, Hash};

use super::tests::{chunk_count, opts, stores};
use super::*;

fn key() -> PublisherKey {
    PublisherKey::from_seed(&[6; 32])
}

/// A shard of bf16 tensors `names`, each `per` elements, values from `seed` and the name.
fn shard(names: &[&str], per: u64, seed: u64) -> Vec<u8> {
    let layouts: Vec<TensorLayout> = names
        .iter()
        .map(|n| TensorLayout {
            name: (*n).into(),
            dtype: DType::BF16,
            shape: vec![per],
        })
        .collect();
    let (mut out, _) = encode_header(&layouts, &Default::default()).unwrap();
    for n in names {
        let mut x = n.bytes().fold(seed ^ 0xcbf2_9ce4_8422_2325, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        }) | 1;
        for _ in 0..per {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            out.extend_from_slice(&((x >> 48) as u16 & 0x3fff).to_le_bytes());
        }
    }
    out
}

#[test]
fn a_folder_is_one_object_and_shares_chunks_across_versions() {
    let s1 = shard(&["a.weight", "b.weight"], 3000, 1);
    let s2 = shard(&["c.weight"], 3000, 1);
    let s2b = shard(&["c.weight"], 3000, 2);
    let index = br#"{"weight_map":{"a.weight":"m-1.safetensors","b.weight":"m-1.safetensors","c.weight":"m-2.safetensors"}}"#;
    let v1 = [
        Member {
            path: "config.json",
            bytes: b"{\"v\":1}",
        },
        Member {
            path: "empty",
            bytes: b"",
        },
        Member {
            path: "m-1.safetensors",
            bytes: &s1,
        },
        Member {
            path: "m-2.safetensors",
            bytes: &s2,
        },
        Member {
            path: "model.safetensors.index.json",
            bytes: index,
        },
    ];
    let object: Vec<u8> = v1.iter().flat_map(|m| m.bytes.iter().copied()).collect();
    for (s, _dir) in stores() {
        let (m, r) = s.add_folder(&v1, &opts("llama", 4096), &key()).unwrap();
        assert!(m.manifest.is_folder());
        assert_eq!(r.files, 5);
        assert_eq!(m.manifest.tensors.len(), 3);
        assert_eq!(s.get_bytes(&m.hash()).unwrap(), object);
        for f in &v1 {
            let mut out = Vec::new();
            let e = s.read_file(&m.hash(), f.path, &mut out).unwrap();
            assert_eq!(out, f.bytes, "{}", f.path);
            assert_eq!(e.len, f.bytes.len() as u64);
        }
        assert!(matches!(
            s.read_file(&m.hash(), "nope", &mut Vec::new()),
            Err(StoreError::NoSuchFile { .. })
        ));
        assert_eq!(s.list().unwrap()[0].files, 5);

        // A second version: one shard changed. Only its tensor chunks are new (its header is the
        // same: same names and shapes).
        let mut v2 = v1;
        v2[3].bytes = &s2b;
        let before = chunk_count(&s);
        let (m2, r2) = s.add_folder(&v2, &opts("llama-2", 4096), &key()).unwrap();
        let c = &m2.manifest.tensors[2];
        assert_eq!(r2.new_chunks as u64, c.len.div_ceil(4096), "{r2:?}");
        assert_eq!(chunk_count(&s), before + r2.new_chunks);
        assert_eq!(r2.dedup_bytes, r2.object_len - c.len);
        assert!(s.verify(None, &mut |_| {}).unwrap().is_clean());

        // A single file is not a folder; a model folder is no folder delta; a soup is no folder.
        let (single, _) = s.add(&s1, &opts("single", 4096), &key()).unwrap();
        assert!(matches!(
            s.read_file(&single.hash(), "x", &mut Vec::new()),
            Err(StoreError::NotAFolder { .. })
        ));
        let mut d = opts("d", 4096);
        d.kind = Kind::Delta;
        d.base = Some(m.hash());
        assert!(matches!(
            s.add_folder(&v1, &d, &key()),
            Err(StoreError::FolderDelta(_))
        ));
        d.kind = Kind::Soup;
        assert!(matches!(
            s.add_folder(&v1, &d, &key()),
            Err(StoreError::FolderKind)
        ));

        // A bad folder writes nothing.
        let before = chunk_count(&s);
        let dup = [
            Member {
                path: "x.safetensors",
                bytes: &s1,
            },
            Member {
                path: "y.safetensors",
                bytes: &s1,
            },
        ];
        let e = s.add_folder(&dup, &opts("dup", 4096), &key()).unwrap_err();
        assert!(e.to_string().contains("holds each tensor once"), "{e}");
        assert_eq!(chunk_count(&s), before);
        assert_eq!(s.list().unwrap().len(), 3);
    }
}

/// Existence checks read the key-only index; a store made before the index is indexed on open;
/// verify reports an index that disagrees with the chunks; gc drops index entries without chunks.
#[test]
fn the_chunk_index_is_kept_in_step_and_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    let bytes = shard(&["a", "b", "c"], 20_000, 3);
    let (m, ids) = {
        let s = ObjectStore::open(&path, StoreLimits::default()).unwrap();
        let (m, _) = s.add(&bytes, &opts("x", 8192), &key()).unwrap();
        let ids: Vec<Hash> = m.manifest.chunk_ids().collect();
        assert!(ids.iter().all(|id| s.has_chunk(id).unwrap()));
        // The store as it was before the index existed: no entries, no completion mark.
        let mut wipe = Vec::new();
        s.backend()
            .scan(Column::ChunkIndex, b"", &mut |k, _| {
                wipe.push(Write::delete(Column::ChunkIndex, k.to_vec()));
                true
            })
            .unwrap();
        assert_eq!(
            wipe.len(),
            ids.len() + 1,
            "one entry per chunk and the mark"
        );
        s.backend().write(wipe, true).unwrap();
        assert!(!s.has_chunk(&ids[0]).unwrap());
        let v = s.verify(None, &mut |_| {}).unwrap();
        let unindexed = v
            .problems
            .iter()
            .filter(|p| matches!(p, Problem::ChunkIndex { .. }))
            .count();
        assert_eq!(unindexed, ids.len(), "{v:?}");
        (m, ids)
    };
    let s = ObjectStore::open(&path, StoreLimits::default()).unwrap();
    assert!(ids.iter().all(|id| s.has_chunk(id).unwrap()));
    assert!(s.verify(None, &mut |_| {}).unwrap().is_clean());

    // A chunk removed behind the store's back leaves a stale index entry: reported, and gc
    // removes it so that a later add stores the chunk again.
    let victim = ids[1];
    s.backend()
        .write(
            vec![Write::delete(Column::Chunks, victim.as_bytes().to_vec())],
            true,
        )
        .unwrap();
    let v = s.verify(None, &mut |_| {}).unwrap();
    assert!(v
        .problems
        .iter()
        .any(|p| matches!(p, Problem::ChunkIndex { chunk, .. } if *chunk == victim)));
    assert!(v
        .problems
        .iter()
        .any(|p| matches!(p, Problem::MissingChunk { chunk, .. } if *chunk == victim)));
    s.gc().unwrap();
    assert!(!s.has_chunk(&victim).unwrap());
    let again = s.add(&bytes, &opts("x", 8192), &key()).unwrap().1;
    assert_eq!(again.new_chunks, 1);
    assert!(s.verify(None, &mut |_| {}).unwrap().is_clean());
    assert_eq!(s.get_bytes(&m.hash()).unwrap(), bytes);
}

/// A large object (more than two read jobs) is verified, read and committed through the handle in
/// bounded jobs: between two jobs the store thread answers another caller's chunk read. (One job
/// for the whole object would hold every other caller until it ended.)
#[test]
fn bounded_jobs_let_other_requests_through() {
    let (store, _dir) = stores().pop().unwrap();
    // 40 MiB of tensors (three read jobs of at most 16 MiB), compressible so the test is quick.
    let per = 5 << 20;
    let names = ["t0", "t1", "t2", "t3"];
    let layouts: Vec<TensorLayout> = names
        .iter()
        .map(|n| TensorLayout {
            name: (*n).into(),
            dtype: DType::U8,
            shape: vec![2 * per],
        })
        .collect();
    let (mut bytes, _) = encode_header(&layouts, &Default::default()).unwrap();
    for i in 0..4 * 2 * per {
        bytes.push((i / 4096 % 251) as u8);
    }
    let (m, _) = store.add(&bytes, &opts("big", 1 << 20), &key()).unwrap();
    assert!(m.manifest.object_len > 2 * BATCH_BYTES);
    let probe_id = m.manifest.chunks[3].id;
    let h = StoreHandle::spawn(store).unwrap();

    // A prober reading one chunk through the handle, over and over.
    let served = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicUsize::new(0));
    let prober = {
        let (h, served, stop) = (h.clone(), served.clone(), stop.clone());
        std::thread::spawn(move || {
            while stop.load(Ordering::Relaxed) == 0 {
                assert!(h
                    .call_blocking(move |s| s.chunk(&probe_id))
                    .unwrap()
                    .is_some());
                served.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let starts: Vec<u64> = super::batched::batches(&m.manifest.chunks)
        .map(|b| b[0].offset)
        .collect();
    assert!(starts.len() >= 3, "{starts:?}");
    let mut seen_batches = 0;
    let mut bytes_read = Vec::with_capacity(bytes.len());
    h.for_each_chunk_blocking(m.hash(), &m.manifest.chunks, &mut |r, data| {
        // At the first chunk of each job after the first: while this thread holds no job, the
        // store thread must serve the prober.
        if starts.contains(&r.offset) {
            if seen_batches > 0 {
                let before = served.load(Ordering::Relaxed);
                let until = Instant::now() + Duration::from_secs(20);
                while served.load(Ordering::Relaxed) == before {
                    assert!(
                        Instant::now() < until,
                        "the store thread served nobody between jobs"
                    );
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            seen_batches += 1;
        }
        bytes_read.extend_from_slice(&data);
        Ok(())
    })
    .unwrap();
    assert_eq!(seen_batches, starts.len());
    assert_eq!(bytes_read, bytes);
    stop.store(1, Ordering::Relaxed);
    prober.join().unwrap();
    whole_path_then_corruption(&h, &m, &bytes);
}

/// Through the handle: verify, commit (idempotent here), read out; then a corrupt chunk fails
/// verification and a manifest with a chunk the store lacks cannot commit.
fn whole_path_then_corruption(h: &StoreHandle, m: &SignedManifest, bytes: &[u8]) {
    h.verify_object_blocking(m).unwrap();
    h.commit_blocking(m, true).unwrap();
    let mut out = Vec::new();
    h.read_object_blocking(m, &mut out, &mut |_| {}).unwrap();
    assert_eq!(out, bytes);

    let victim = m.manifest.chunks[5].id;
    h.call_blocking(move |s| {
        let mut b = s
            .backend()
            .get(Column::Chunks, victim.as_bytes())?
            .unwrap_or_default();
        b[0] ^= 1;
        s.backend().write(
            vec![Write::put(Column::Chunks, victim.as_bytes().to_vec(), b)],
            true,
        )
    })
    .unwrap();
    let e = h.verify_object_blocking(m).unwrap_err();
    assert!(e.to_string().contains("hash mismatch"), "{e}");
    let mut other = m.manifest.clone();
    other.name = "other".into();
    other.chunks[0].id = Hash::of(b"absent");
    let other = other.sign(&key()).unwrap();
    assert!(matches!(
        h.commit_blocking(&other, true),
        Err(StoreError::MissingChunk { .. })
    ));
}
