//! Golden bytes, refusals and round trips of the paced lane's messages.

use super::*;
use proptest::prelude::*;

fn hex(v: Vec<u8>) -> String {
    v.iter().map(|b| format!("{b:02x}")).collect()
}

/// Golden vectors: the exact bytes of each message (pins the wire format).
#[test]
fn golden_bytes() {
    let mut wanted = ChunkBitmap::new(10);
    wanted.set(1);
    wanted.set(9);
    let req = PacedRequest {
        object: Hash::from_bytes([7; 32]),
        rate_bps: 1_000_000,
        payload: 1448,
        udp_port: 40_001,
        wanted,
        held: vec![HeldChunk {
            chunk: 9,
            ranges: ByteRanges::from_canonical(vec![(0, 5), (7, 2)], 100).unwrap(),
        }],
    };
    assert_eq!(
        hex(req.encode()),
        format!(
            "04{}40420f0000000000a805419c0a0000000202{}",
            "07".repeat(32),
            // one held chunk: 9, two ranges: (0, 5), (7, 2)
            "010009000000020000000000050000000700000002000000"
        )
    );
    let ready = PacedResponse::Ready {
        udp_port: 40_001,
        payload: 1448,
        key: [0xab; 32],
        chunks: vec![SessionChunk {
            chunk: 1,
            stored_len: 300,
            resumed: true,
        }],
    };
    assert_eq!(
        hex(ready.encode()),
        format!("01419ca805{}01000000010000002c01000001", "ab".repeat(32))
    );
    assert_eq!(
        hex(PacedResponse::Ended(EndReason::Budget).encode()),
        "0403"
    );
    let ack = ToSender::Ack {
        rate_bps: 500_000,
        cumulative: 3,
        queue_us: 1,
        echo_sent_us: 2,
        echo_recv_us: 3,
        received: 4,
        ranges: vec![(5, 2)],
    };
    assert_eq!(
        hex(ack.encode()),
        "0220a107000000000003000000010000000200000003000000040000000100\
         0500000002000000"
    );
    assert_eq!(
        hex(ToSender::Probe.encode()),
        format!("05{}", "00".repeat(8))
    );
    assert_eq!(hex(ToSender::Done.encode()), "03");
    assert_eq!(
        hex(ToSender::Hello.encode()),
        format!("01{}", "00".repeat(31))
    );
    assert_eq!(
        hex(ToSender::Response { nonce: [1; 8] }.encode()),
        "040101010101010101"
    );
    assert_eq!(
        hex(ToReceiver::Challenge { nonce: [2; 8] }.encode()),
        "050202020202020202"
    );
    // A sealed Hello is bigger than the sealed challenge it draws; a probe is as big.
    assert!(ToSender::Hello.encode().len() > ToReceiver::CHALLENGE_LEN);
    assert_eq!(ToSender::Probe.encode().len(), ToReceiver::CHALLENGE_LEN);
}

#[test]
fn refuses_what_breaks_the_rules() {
    // Ranges that overlap the cumulative point, touch each other, or are empty.
    for ranges in [
        vec![(3, 1)],
        vec![(5, 2), (7, 1)],
        vec![(5, 0)],
        vec![(9, 1), (5, 1)],
    ] {
        let b = ack_with(ranges).encode();
        assert!(ToSender::decode(&b).is_err());
    }
    // A Hello whose padding is not zero, an unknown end reason.
    let mut hello = ToSender::Hello.encode();
    hello[5] = 1;
    assert!(ToSender::decode(&hello).is_err());
    assert!(PacedResponse::decode(&[4, 0]).is_err());
    assert!(PacedResponse::decode(&[4, 8]).is_err());
    // Chunks out of order, a zero length, an over-long session.
    let ready = |chunks: Vec<(u32, u32)>| {
        PacedResponse::Ready {
            udp_port: 1,
            payload: 1448,
            key: [0; 32],
            chunks: chunks
                .into_iter()
                .map(|(chunk, stored_len)| SessionChunk {
                    chunk,
                    stored_len,
                    resumed: false,
                })
                .collect(),
        }
        .encode()
    };
    assert!(PacedResponse::decode(&ready(vec![(2, 5), (1, 5)])).is_err());
    assert!(PacedResponse::decode(&ready(vec![(1, 0)])).is_err());
    assert!(PacedResponse::decode(&ready(vec![])).is_err());
    let big = MAX_STORED_CHUNK as u32;
    let many: Vec<_> = (0..70).map(|i| (i, big)).collect();
    assert!(PacedResponse::decode(&ready(many)).is_err());
    // Over the caps, before anything else is looked at.
    let too_long = |n: usize| vec![1u8; n + 1];
    assert!(matches!(
        PacedRequest::decode(&too_long(MAX_PACED_REQUEST)),
        Err(WireError::TooLarge { .. })
    ));
    assert!(matches!(
        PacedResponse::decode(&too_long(MAX_PACED_RESPONSE)),
        Err(WireError::TooLarge { .. })
    ));
    assert!(matches!(
        ToSender::decode(&too_long(MAX_CONTROL_LEN)),
        Err(WireError::TooLarge { .. })
    ));
    // A resumed flag that is not 0 or 1.
    let mut r = ready(vec![(1, 5)]);
    *r.last_mut().unwrap() = 2;
    assert!(PacedResponse::decode(&r).is_err());
    // Truncated at every length.
    let ack = ack_with(vec![(5, 2)]).encode();
    for n in 0..ack.len() {
        assert!(ToSender::decode(&ack[..n]).is_err());
    }
    let hello = ToSender::Hello.encode();
    for n in 0..hello.len() {
        assert!(ToSender::decode(&hello[..n]).is_err());
    }
    let mut probe = ToSender::Probe.encode();
    for n in 0..probe.len() {
        assert!(ToSender::decode(&probe[..n]).is_err());
    }
    probe[3] = 1;
    assert!(
        ToSender::decode(&probe).is_err(),
        "probe padding must be zero"
    );
    let challenge = ToReceiver::Challenge { nonce: [0; 8] }.encode();
    for n in 0..challenge.len() {
        assert!(ToReceiver::decode(&challenge[..n]).is_err());
    }
    // A payload size outside the bounds.
    let mut req = PacedRequest {
        object: Hash::ZERO,
        rate_bps: 1,
        payload: 100,
        udp_port: 0,
        wanted: ChunkBitmap::new(3),
        held: Vec::new(),
    };
    assert!(PacedRequest::decode(&req.encode()).is_err());
    req.payload = 1448;
    // No rate stated is a request (the sender finds the rate).
    req.rate_bps = 0;
    assert!(PacedRequest::decode(&req.encode()).is_ok());
}

fn ack_with(ranges: Vec<(u32, u32)>) -> ToSender {
    ToSender::Ack {
        rate_bps: 1,
        cumulative: 3,
        queue_us: 0,
        echo_sent_us: 0,
        echo_recv_us: 0,
        received: 0,
        ranges,
    }
}

/// Held ranges a peer may name are checked before anything is taken from them: chunks wanted and
/// ascending, ranges canonical and inside the largest chunk, counts under the caps.
#[test]
fn held_ranges_are_refused_unless_canonical_and_capped() {
    let mut wanted = ChunkBitmap::new(100);
    for i in 0..100 {
        wanted.set(i);
    }
    let req = |held: Vec<HeldChunk>| PacedRequest {
        object: Hash::ZERO,
        rate_bps: 0,
        payload: 1448,
        udp_port: 0,
        wanted: wanted.clone(),
        held,
    };
    let h = |chunk: u32, ranges: Vec<(u32, u32)>| HeldChunk {
        chunk,
        ranges: ByteRanges::from_canonical(ranges, u32::MAX).unwrap(),
    };
    let ok = req(vec![h(1, vec![(0, 10)]), h(5, vec![(3, 4), (9, 1)])]);
    assert_eq!(PacedRequest::decode(&ok.encode()).unwrap(), ok);
    // Not ascending; a chunk not wanted; a range past the largest chunk; an empty list.
    let bad = [
        req(vec![h(5, vec![(0, 1)]), h(1, vec![(0, 1)])]),
        req(vec![h(1, vec![(0, 1)]), h(1, vec![(3, 1)])]),
        req(vec![h(100, vec![(0, 1)])]),
        req(vec![h(1, vec![(MAX_STORED_CHUNK as u32, 1)])]),
        req(vec![h(1, vec![])]),
    ];
    for r in bad {
        assert!(PacedRequest::decode(&r.encode()).is_err(), "{:?}", r.held);
    }
    // Ranges that are not canonical, written by hand.
    let mut b = req(vec![h(1, vec![(0, 5)])]).encode();
    let n = b.len();
    b[n - 4..].copy_from_slice(&0u32.to_le_bytes());
    assert!(PacedRequest::decode(&b).is_err(), "an empty range");
    // Over the caps: too many chunks, too many ranges in one, in all.
    let many = (0..=MAX_HELD_CHUNKS as u32)
        .map(|c| h(c, vec![(0, 1)]))
        .collect();
    assert!(PacedRequest::decode(&req(many).encode()).is_err());
    let ranges: Vec<(u32, u32)> = (0..=MAX_HELD_RANGES as u32).map(|i| (i * 2, 1)).collect();
    assert!(PacedRequest::decode(&req(vec![h(1, ranges)]).encode()).is_err());
    let full: Vec<(u32, u32)> = (0..MAX_HELD_RANGES as u32).map(|i| (i * 2, 1)).collect();
    let all = (0..=(MAX_HELD_TOTAL / MAX_HELD_RANGES) as u32)
        .map(|c| h(c, full.clone()))
        .collect();
    assert!(PacedRequest::decode(&req(all).encode()).is_err());
}

fn arb_bitmap() -> impl Strategy<Value = ChunkBitmap> {
    (0u32..300, proptest::collection::vec(any::<u32>(), 0..40)).prop_map(|(n, set)| {
        let mut b = ChunkBitmap::new(n);
        for i in set {
            if n > 0 {
                b.set(i % n);
            }
        }
        b
    })
}

fn arb_request() -> impl Strategy<Value = PacedRequest> {
    (
        any::<[u8; 32]>(),
        (any::<u64>(), any::<u16>()),
        MIN_PAYLOAD..=MAX_PAYLOAD,
        arb_bitmap(),
        proptest::collection::vec(proptest::collection::vec((1u32..50, 1u32..50), 1..8), 0..6),
    )
        .prop_map(|(o, (rate_bps, udp_port), payload, wanted, steps)| {
            // Held ranges for some of the wanted chunks, ascending.
            let chunks: Vec<u32> = (0..wanted.len()).filter(|&i| wanted.get(i)).collect();
            let held = chunks
                .iter()
                .zip(steps)
                .map(|(&chunk, steps)| {
                    let mut at = 0;
                    let ranges = steps
                        .into_iter()
                        .map(|(gap, len)| {
                            let start = at + gap;
                            at = start + len;
                            (start, len)
                        })
                        .collect();
                    HeldChunk {
                        chunk,
                        ranges: ByteRanges::from_canonical(ranges, u32::MAX).unwrap(),
                    }
                })
                .collect();
            PacedRequest {
                object: Hash::from_bytes(o),
                rate_bps,
                payload,
                udp_port,
                wanted,
                held,
            }
        })
}

fn arb_response() -> impl Strategy<Value = PacedResponse> {
    prop_oneof![
        (
            1u16..,
            MIN_PAYLOAD..=MAX_PAYLOAD,
            any::<[u8; 32]>(),
            proptest::collection::btree_map(any::<u32>(), (1u32..=1 << 20, any::<bool>()), 1..50)
        )
            .prop_map(|(udp_port, payload, key, m)| PacedResponse::Ready {
                udp_port,
                payload,
                key,
                chunks: m
                    .into_iter()
                    .map(|(chunk, (stored_len, resumed))| SessionChunk {
                        chunk,
                        stored_len,
                        resumed,
                    })
                    .collect(),
            }),
        any::<[u8; 32]>().prop_map(|h| PacedResponse::NotFound(Hash::from_bytes(h))),
        any::<u32>().prop_map(|retry_after_ms| PacedResponse::Busy { retry_after_ms }),
        (1u8..=7).prop_map(|c| PacedResponse::Ended(EndReason::from_code(c).unwrap())),
    ]
}

fn arb_control() -> impl Strategy<Value = ToSender> {
    prop_oneof![
        Just(ToSender::Hello),
        Just(ToSender::Done),
        Just(ToSender::Probe),
        any::<[u8; 8]>().prop_map(|nonce| ToSender::Response { nonce }),
        (
            any::<u64>(),
            0u32..1_000_000,
            any::<[u32; 4]>(),
            proptest::collection::vec((1u32..50, 1u32..50), 0..MAX_ACK_RANGES)
        )
            .prop_map(|(rate_bps, cumulative, link, steps)| {
                // Gaps and runs after the cumulative point: ascending and disjoint.
                let mut at = cumulative;
                let ranges = steps
                    .into_iter()
                    .map(|(gap, len)| {
                        let start = at + gap;
                        at = start + len;
                        (start, len)
                    })
                    .collect();
                ToSender::Ack {
                    rate_bps,
                    cumulative,
                    queue_us: link[0],
                    echo_sent_us: link[1],
                    echo_recv_us: link[2],
                    received: link[3],
                    ranges,
                }
            }),
    ]
}

proptest! {
    #[test]
    fn request_round_trip(r in arb_request()) {
        let b = r.encode();
        prop_assert!(b.len() <= MAX_PACED_REQUEST);
        prop_assert_eq!(PacedRequest::decode(&b).unwrap(), r);
    }

    #[test]
    fn response_round_trip(r in arb_response()) {
        let b = r.encode();
        prop_assert!(b.len() <= MAX_PACED_RESPONSE);
        prop_assert_eq!(PacedResponse::decode(&b).unwrap(), r);
    }

    #[test]
    fn control_round_trip(c in arb_control()) {
        let b = c.encode();
        prop_assert!(b.len() <= MAX_CONTROL_LEN);
        prop_assert_eq!(ToSender::decode(&b).unwrap(), c);
    }

    #[test]
    fn challenge_round_trip(nonce in any::<[u8; 8]>()) {
        let c = ToReceiver::Challenge { nonce };
        prop_assert_eq!(ToReceiver::decode(&c.encode()).unwrap(), c);
    }

    #[test]
    fn mutated_messages_never_panic(
        r in arb_request(), s in arb_response(), c in arb_control(),
        i in any::<usize>(), x in any::<u8>(), cut in any::<usize>()
    ) {
        for mut b in [r.encode(), s.encode(), c.encode()] {
            let i = i % b.len();
            b[i] ^= x;
            let _ = PacedRequest::decode(&b);
            let _ = PacedResponse::decode(&b);
            let _ = ToSender::decode(&b);
            let _ = ToReceiver::decode(&b);
            b.truncate(cut % b.len());
            let _ = PacedRequest::decode(&b);
            let _ = PacedResponse::decode(&b);
            let _ = ToSender::decode(&b);
            let _ = ToReceiver::decode(&b);
        }
    }
}
