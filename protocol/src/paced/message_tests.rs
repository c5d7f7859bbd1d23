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
        token: *b"tok12345",
        rate_bps: 1_000_000,
        payload: 1464,
        udp_port: 40_000,
        wanted,
    };
    assert_eq!(
        hex(req.encode()),
        format!(
            "01{}{}40420f0000000000b805409c0a0000000202",
            "07".repeat(32),
            "746f6b3132333435"
        )
    );
    let ready = PacedResponse::Ready {
        udp_port: 40_001,
        payload: 1464,
        chunks: vec![SessionChunk {
            chunk: 1,
            stored_len: 300,
        }],
    };
    assert_eq!(
        hex(ready.encode()),
        "01419cb8050100000001000000".to_string() + "2c010000"
    );
    let ack = Control::Ack {
        token: *b"tok12345",
        rate_bps: 500_000,
        cumulative: 3,
        ranges: vec![(5, 2)],
    };
    assert_eq!(
        hex(ack.encode()),
        "02746f6b313233343520a10700000000000300000001000500000002000000"
    );
    assert_eq!(
        hex(Control::Done { token: [0; 8] }.encode()),
        "030000000000000000"
    );
    let mut d = Vec::new();
    encode_data(258, b"ab", &mut d);
    assert_eq!(hex(d), "020100006162");
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
        let b = Control::Ack {
            token: [0; 8],
            rate_bps: 1,
            cumulative: 3,
            ranges,
        }
        .encode();
        assert!(Control::decode(&b).is_err());
    }
    // Chunks out of order, a zero length, an over-long session.
    let ready = |chunks: Vec<(u32, u32)>| {
        PacedResponse::Ready {
            udp_port: 1,
            payload: 1464,
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
        Control::decode(&too_long(MAX_CONTROL_LEN)),
        Err(WireError::TooLarge { .. })
    ));
    // Truncated at every length.
    let ack = Control::Ack {
        token: [0; 8],
        rate_bps: 1,
        cumulative: 3,
        ranges: vec![(5, 2)],
    }
    .encode();
    for n in 0..ack.len() {
        assert!(Control::decode(&ack[..n]).is_err());
    }
    // A payload size outside the bounds.
    let mut req = PacedRequest {
        object: Hash::ZERO,
        token: [0; 8],
        rate_bps: 1,
        payload: 100,
        udp_port: 9,
        wanted: ChunkBitmap::new(3),
    };
    assert!(PacedRequest::decode(&req.encode()).is_err());
    req.payload = 1464;
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
        any::<[u8; 8]>(),
        1u64..,
        MIN_PAYLOAD..=MAX_PAYLOAD,
        1u16..,
        arb_bitmap(),
    )
        .prop_map(
            |(o, token, rate_bps, payload, udp_port, wanted)| PacedRequest {
                object: Hash::from_bytes(o),
                token,
                rate_bps,
                payload,
                udp_port,
                wanted,
            },
        )
}

fn arb_response() -> impl Strategy<Value = PacedResponse> {
    prop_oneof![
        (
            1u16..,
            MIN_PAYLOAD..=MAX_PAYLOAD,
            proptest::collection::btree_map(any::<u32>(), 1u32..=1 << 20, 1..50)
        )
            .prop_map(|(udp_port, payload, m)| PacedResponse::Ready {
                udp_port,
                payload,
                chunks: m
                    .into_iter()
                    .map(|(chunk, stored_len)| SessionChunk { chunk, stored_len })
                    .collect(),
            }),
        any::<[u8; 32]>().prop_map(|h| PacedResponse::NotFound(Hash::from_bytes(h))),
        any::<u32>().prop_map(|retry_after_ms| PacedResponse::Busy { retry_after_ms }),
    ]
}

fn arb_control() -> impl Strategy<Value = Control> {
    prop_oneof![
        any::<[u8; 8]>().prop_map(|token| Control::Hello { token }),
        any::<[u8; 8]>().prop_map(|token| Control::Done { token }),
        (
            any::<[u8; 8]>(),
            any::<u64>(),
            0u32..1_000_000,
            proptest::collection::vec((1u32..50, 1u32..50), 0..MAX_ACK_RANGES)
        )
            .prop_map(|(token, rate_bps, cumulative, steps)| {
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
                Control::Ack {
                    token,
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
        prop_assert_eq!(Control::decode(&b).unwrap(), c);
    }

    #[test]
    fn data_round_trip(seq in any::<u32>(), p in proptest::collection::vec(any::<u8>(), 0..100)) {
        let mut b = Vec::new();
        encode_data(seq, &p, &mut b);
        let (s, q) = decode_data(&b).unwrap();
        prop_assert_eq!(s, seq);
        prop_assert_eq!(q, &p[..]);
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
            let _ = Control::decode(&b);
            b.truncate(cut % b.len());
            let _ = PacedRequest::decode(&b);
            let _ = PacedResponse::decode(&b);
            let _ = Control::decode(&b);
        }
    }
}
