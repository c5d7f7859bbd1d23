use super::*;
use proptest::prelude::*;

fn h(b: u8) -> Hash {
    Hash::from_bytes([b; 32])
}

#[test]
fn stored_bound_of_a_chunk() {
    assert_eq!(max_stored_len(0), 512);
    assert_eq!(max_stored_len(1 << 20), (1 << 20) + (1 << 13) + 512);
    assert_eq!(max_stored_len(u32::MAX), MAX_STORED_CHUNK);
    assert_eq!(max_stored_len(MAX_CHUNK_SIZE), MAX_STORED_CHUNK);
    let m = Response::Manifest(vec![7, 8]).encode();
    assert_eq!(m, [MANIFEST_RESPONSE_TAG, 7, 8]);
}

/// Golden vectors: the exact bytes of each message kind (pins the wire format).
#[test]
fn golden_bytes() {
    let hex = |v: Vec<u8>| v.iter().map(|b| format!("{b:02x}")).collect::<String>();
    assert_eq!(
        hex(Request::GetChunk {
            object: h(1),
            id: h(2)
        }
        .encode()),
        format!("02{}{}", "01".repeat(32), "02".repeat(32))
    );
    let mut held = ChunkBitmap::new(10);
    held.set(0);
    held.set(9);
    assert_eq!(
        hex(Response::Have { object: h(3), held }.encode()),
        format!("03{}0a0000000102", "03".repeat(32))
    );
    assert_eq!(
        hex(Response::Busy {
            retry_after_ms: 1000
        }
        .encode()),
        "05e8030000"
    );
    assert_eq!(
        hex(Request::GetAnnouncement(h(9)).encode()),
        format!("04{}", "09".repeat(32))
    );
    assert_eq!(
        hex(Response::Announcement(vec![0x5a, 1]).encode()),
        "065a01"
    );
    assert_eq!(
        hex(Request::GetRecent { since: 0x0102 }.encode()),
        "050201000000000000"
    );
    assert_eq!(
        hex(Response::Recent(vec![vec![0x5a, 1], vec![]]).encode()),
        "070200".to_owned() + "02005a01" + "0000"
    );
    // Over the count cap, an entry over the announcement cap, a short or long body: refused.
    let mut many = vec![7u8];
    many.extend_from_slice(&((MAX_RECENT + 1) as u16).to_le_bytes());
    many.resize(many.len() + 2 * (MAX_RECENT + 1), 0);
    assert!(Response::decode(&many).is_err());
    let mut long = vec![7u8, 1, 0];
    long.extend_from_slice(&((MAX_ANNOUNCEMENT_LEN + 1) as u16).to_le_bytes());
    long.resize(long.len() + MAX_ANNOUNCEMENT_LEN + 1, 0);
    assert!(Response::decode(&long).is_err());
    assert!(Response::decode(&[7, 1, 0, 2, 0, 9]).is_err());
    assert!(Response::decode(&[7, 0, 0, 0]).is_err());
    assert!(Request::decode(&[5, 1, 2, 3]).is_err());
    // An announcement response over the announcement cap is refused.
    let mut big = vec![6u8];
    big.resize(2 + MAX_ANNOUNCEMENT_LEN, 0);
    assert!(Response::decode(&big).is_err());
    let a = Announcement {
        manifest: h(4),
        kind: Kind::Delta,
        object_len: 1_437_232,
        base: Some(h(5)),
        publisher: [6; 32],
        manifest_len: 300_000,
        name: "ft".into(),
        signature: [8; 64],
    };
    assert_eq!(
        hex(a.encode().unwrap()),
        format!(
            "5a444e4103{}01{}01{}{}e093040002006674{}",
            "04".repeat(32),
            "30ee150000000000",
            "05".repeat(32),
            "06".repeat(32),
            "08".repeat(64)
        )
    );
}

#[test]
fn bad_messages_are_refused() {
    assert!(matches!(Request::decode(&[]), Err(WireError::Truncated(_))));
    assert!(matches!(
        Request::decode(&[9; 33]),
        Err(WireError::Tag { .. })
    ));
    assert!(matches!(
        Request::decode(&[1; 34]),
        Err(WireError::Trailing(_))
    ));
    assert!(matches!(
        Request::decode(&[2; 64]),
        Err(WireError::Truncated(_))
    ));
    assert!(matches!(
        Request::decode(&[1; 1000]),
        Err(WireError::TooLarge { .. })
    ));
    // A chunk larger than any stored chunk can be.
    let mut big = vec![2u8; 33 + MAX_STORED_CHUNK + 1];
    big[0] = 2;
    assert!(matches!(
        Response::decode(&big),
        Err(WireError::TooLarge { what: "chunk", .. })
    ));
    // Have with bits past n, or the wrong length.
    let mut have = Response::Have {
        object: h(1),
        held: ChunkBitmap::new(3),
    }
    .encode();
    *have.last_mut().unwrap() = 0b1000;
    assert!(Response::decode(&have).is_err());
    have.push(0);
    assert!(Response::decode(&have).is_err());
    // A forged huge chunk count does not allocate: the length check comes first.
    let mut forged = vec![3u8];
    forged.extend_from_slice(&[0; 32]);
    forged.extend_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(
        Response::decode(&forged),
        Err(WireError::Truncated(_))
    ));
}

fn arb_request() -> impl Strategy<Value = Request> {
    prop_oneof![
        any::<[u8; 32]>().prop_map(|a| Request::GetManifest(Hash::from_bytes(a))),
        (any::<[u8; 32]>(), any::<[u8; 32]>()).prop_map(|(a, b)| Request::GetChunk {
            object: Hash::from_bytes(a),
            id: Hash::from_bytes(b)
        }),
        any::<[u8; 32]>().prop_map(|a| Request::GetHave(Hash::from_bytes(a))),
        any::<[u8; 32]>().prop_map(|a| Request::GetAnnouncement(Hash::from_bytes(a))),
        any::<u64>().prop_map(|since| Request::GetRecent { since }),
    ]
}

fn arb_response() -> impl Strategy<Value = Response> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..200).prop_map(Response::Manifest),
        (
            any::<[u8; 32]>(),
            prop::collection::vec(any::<u8>(), 0..200)
        )
            .prop_map(|(a, stored)| Response::Chunk {
                id: Hash::from_bytes(a),
                stored
            }),
        (
            any::<[u8; 32]>(),
            prop::collection::vec(any::<bool>(), 0..100)
        )
            .prop_map(|(a, bits)| {
                let mut held = ChunkBitmap::new(bits.len() as u32);
                for (i, &b) in bits.iter().enumerate() {
                    if b {
                        held.set(i as u32);
                    }
                }
                Response::Have {
                    object: Hash::from_bytes(a),
                    held,
                }
            }),
        any::<[u8; 32]>().prop_map(|a| Response::NotFound(Hash::from_bytes(a))),
        any::<u32>().prop_map(|retry_after_ms| Response::Busy { retry_after_ms }),
        prop::collection::vec(any::<u8>(), 0..200).prop_map(Response::Announcement),
        prop::collection::vec(prop::collection::vec(any::<u8>(), 0..100), 0..8)
            .prop_map(Response::Recent),
    ]
}

fn arb_announcement() -> impl Strategy<Value = Announcement> {
    (
        any::<[u8; 32]>(),
        any::<bool>(),
        any::<u64>(),
        any::<[u8; 32]>(),
        any::<[u8; 32]>(),
        (0..=MAX_MANIFEST_LEN as u32, ".{0,40}", any::<[u8; 32]>()),
    )
        .prop_map(
            |(m, delta, object_len, b, publisher, (manifest_len, name, sig))| Announcement {
                manifest: Hash::from_bytes(m),
                kind: if delta { Kind::Delta } else { Kind::Base },
                object_len,
                base: delta.then(|| Hash::from_bytes(b)),
                publisher,
                manifest_len,
                name,
                signature: [sig, [7; 32]].concat().try_into().unwrap(),
            },
        )
}

proptest! {
    #[test]
    fn request_round_trip(r in arb_request()) {
        prop_assert_eq!(Request::decode(&r.encode()).unwrap(), r);
    }

    #[test]
    fn response_round_trip(r in arb_response()) {
        prop_assert_eq!(Response::decode(&r.encode()).unwrap(), r);
    }

    #[test]
    fn announcement_round_trip(a in arb_announcement()) {
        let b = a.encode().unwrap();
        prop_assert!(b.len() <= MAX_ANNOUNCEMENT_LEN);
        prop_assert_eq!(Announcement::decode(&b).unwrap(), a);
    }

    #[test]
    fn mutated_messages_never_panic(
        r in arb_response(), a in arb_announcement(), i in any::<usize>(), x in any::<u8>(),
        cut in any::<usize>()
    ) {
        for mut b in [r.encode(), a.encode().unwrap(), Request::GetHave(Hash::ZERO).encode()] {
            if !b.is_empty() {
                let i = i % b.len();
                b[i] ^= x;
                let _ = Response::decode(&b);
                let _ = Request::decode(&b);
                let _ = Announcement::decode(&b);
                b.truncate(cut % b.len());
                let _ = Response::decode(&b);
                let _ = Request::decode(&b);
                let _ = Announcement::decode(&b);
            }
        }
    }
}

/// An announcement signed with its manifest's publisher key verifies; any changed field, another
/// key, or an unsigned (version 2) encoding does not; only the publisher can sign.
#[test]
fn announcements_are_signed_by_the_publisher() {
    use crate::chunk::{ChunkRef, Codec};
    use crate::manifest::{Manifest, PublisherKey};
    let key = PublisherKey::from_seed(&[3; 32]);
    let m = Manifest {
        kind: Kind::Base,
        name: "llama".into(),
        version: "1".into(),
        created_at: 1_790_000_000,
        base: None,
        object_len: 100,
        object_hash: Hash::of(b"object"),
        chunks: vec![ChunkRef {
            id: Hash::of(b"c0"),
            offset: 0,
            len: 100,
            codec: Codec::Raw,
        }],
        tensors: Vec::new(),
        files: Vec::new(),
        extra: Vec::new(),
    }
    .sign(&key)
    .unwrap();
    let a = Announcement::signed(&m, &key).unwrap();
    assert!(a.announces(&m));
    a.verify().unwrap();
    let b = Announcement::decode(&a.encode().unwrap()).unwrap();
    b.verify().unwrap();
    let bad = |f: &dyn Fn(&mut Announcement)| {
        let mut x = a.clone();
        f(&mut x);
        let e = Announcement::decode(&x.encode().unwrap())
            .unwrap()
            .verify()
            .unwrap_err();
        assert!(e.to_string().contains("signature"), "{e}");
    };
    bad(&|x| x.manifest = h(9));
    bad(&|x| x.object_len += 1);
    bad(&|x| x.manifest_len += 1);
    bad(&|x| x.name.push('x'));
    bad(&|x| x.signature[0] ^= 1);
    // Another publisher's key over the same fields: signed, but by someone else.
    let other = PublisherKey::from_seed(&[4; 32]);
    bad(&|x| x.publisher = other.public());
    let e = Announcement::signed(&m, &other).unwrap_err();
    assert!(e.to_string().contains("publisher"), "{e}");
    // The unsigned version 2 is refused.
    let mut v2 = a.encode().unwrap();
    v2[4] = 2;
    v2.truncate(v2.len() - 64);
    let e = Announcement::decode(&v2).unwrap_err();
    assert!(e.to_string().contains("version 2"), "{e}");
}
