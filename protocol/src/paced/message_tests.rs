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
        wanted,
    };
    assert_eq!(
        hex(req.encode()),
        format!("02{}40420f0000000000a8050a0000000202", "07".repeat(32))
    );
    let ready = PacedResponse::Ready {
        udp_port: 40_001,
        payload: 1448,
        key: [0xab; 32],
        chunks: vec![SessionChunk {
            chunk: 1,
            stored_len: 300,
        }],
    };
    assert_eq!(
        hex(ready.encode()),
        format!("01419ca805{}01000000010000002c010000", "ab".repeat(32))
    );
    assert_eq!(
        hex(PacedResponse::Ended(EndReason::Budget).encode()),
        "0403"
    );
    let ack = ToSender::Ack {
        rate_bps: 500_000,
        cumulative: 3,
        ranges: vec![(5, 2)],
    };
    assert_eq!(
        hex(ack.encode()),
        "0220a10700000000000300000001000500000002000000"
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
    // A sealed Hello is bigger than the sealed challenge it draws.
    assert!(ToSender::Hello.encode().len() > ToReceiver::CHALLENGE_LEN);
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
        let b = ToSender::Ack {
            rate_bps: 1,
            cumulative: 3,
            ranges,
        }
        .encode();
        assert!(ToSender::decode(&b).is_err());
    }
    // A Hello whose padding is not zero, an unknown end reason.
    let mut hello = ToSender::Hello.encode();
    hello[5] = 1;
    assert!(ToSender::decode(&hello).is_err());
    assert!(PacedResponse::decode(&[4, 0]).is_err());
    assert!(PacedResponse::decode(&[4, 7]).is_err());
    // Chunks out of order, a zero length, an over-long session.
    let ready = |chunks: Vec<(u32, u32)>| {
        PacedResponse::Ready {
            udp_port: 1,
            payload: 1448,
            key: [0; 32],
            chunks: chunks
                .into_iter()
                .map(|(chunk, stored_len)| SessionChunk { chunk, stored_len })
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
    // Truncated at every length.
    let ack = ToSender::Ack {
        rate_bps: 1,
        cumulative: 3,
        ranges: vec![(5, 2)],
    }
    .encode();
    for n in 0..ack.len() {
        assert!(ToSender::decode(&ack[..n]).is_err());
    }
    let hello = ToSender::Hello.encode();
    for n in 0..hello.len() {
        assert!(ToSender::decode(&hello[..n]).is_err());
    }
    let challenge = ToReceiver::Challenge { nonce: [0; 8] }.encode();
    for n in 0..challenge.len() {
        assert!(ToReceiver::decode(&challenge[..n]).is_err());
    }
    // A payload size outside the bounds.
    let mut req = PacedRequest {
        object: Hash::ZERO,
        rate_bps: 1,
        payload: 100,
        wanted: ChunkBitmap::new(3),
    };
    assert!(PacedRequest::decode(&req.encode()).is_err());
    req.payload = 1448;
    req.rate_bps = 0;
    assert!(PacedRequest::decode(&req.encode()).is_err());
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
        1u64..,
        MIN_PAYLOAD..=MAX_PAYLOAD,
        arb_bitmap(),
    )
        .prop_map(|(o, rate_bps, payload, wanted)| PacedRequest {
            object: Hash::from_bytes(o),
            rate_bps,
            payload,
            wanted,
        })
}

fn arb_response() -> impl Strategy<Value = PacedResponse> {
    prop_oneof![
        (
            1u16..,
            MIN_PAYLOAD..=MAX_PAYLOAD,
            any::<[u8; 32]>(),
            proptest::collection::btree_map(any::<u32>(), 1u32..=1 << 20, 1..50)
        )
            .prop_map(|(udp_port, payload, key, m)| PacedResponse::Ready {
                udp_port,
                payload,
                key,
                chunks: m
                    .into_iter()
                    .map(|(chunk, stored_len)| SessionChunk { chunk, stored_len })
                    .collect(),
            }),
        any::<[u8; 32]>().prop_map(|h| PacedResponse::NotFound(Hash::from_bytes(h))),
        any::<u32>().prop_map(|retry_after_ms| PacedResponse::Busy { retry_after_ms }),
        (1u8..=6).prop_map(|c| PacedResponse::Ended(EndReason::from_code(c).unwrap())),
    ]
}

fn arb_control() -> impl Strategy<Value = ToSender> {
    prop_oneof![
        Just(ToSender::Hello),
        Just(ToSender::Done),
        any::<[u8; 8]>().prop_map(|nonce| ToSender::Response { nonce }),
        (
            any::<u64>(),
            0u32..1_000_000,
            proptest::collection::vec((1u32..50, 1u32..50), 0..MAX_ACK_RANGES)
        )
            .prop_map(|(rate_bps, cumulative, steps)| {
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
