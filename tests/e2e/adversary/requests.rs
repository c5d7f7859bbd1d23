//! Item 7, cheap requests with expensive answers.

use super::*;

use zdn_protocol::wire::{Request, Response};

/// One identity pipelines 600 have-bitmap requests on one stream, and 16 fresh identities from one
/// subnet 100 each: past a burst, they are answered `Busy` (10 a second per peer, 40 per subnet),
/// and an honest fetch from elsewhere meanwhile completes. The seeder answers each from its cache
/// of verified manifests, not by decoding and verifying the manifest again on its store thread.
///
/// The old code answered every one of them, each by decoding and verifying the manifest on the
/// store's single thread.
#[test]
fn item7_cheap_requests_are_budgeted_per_peer_and_subnet() {
    let p = publish(2);
    let seeder = NodeProc::start(p.home.path(), &[]);
    let base: Hash = p.base.parse().unwrap();
    let rt = rt();
    let (one, crowd) = rt.block_on(async {
        let h = Hostile::connect_from(&seeder.addr, Some("127.120.0.1".parse().unwrap()))
            .await
            .unwrap();
        let one = h
            .ask_pipelined(&vec![Request::GetHave(base); 600])
            .await
            .unwrap();
        let mut crowd = Vec::new();
        let t0 = Instant::now();
        for i in 0..16u8 {
            let from = format!("127.121.0.{}", i + 1).parse().unwrap();
            let c = Hostile::connect_from(&seeder.addr, Some(from))
                .await
                .unwrap();
            crowd.extend(
                c.ask_pipelined(&vec![Request::GetHave(base); 100])
                    .await
                    .unwrap(),
            );
        }
        (one, (crowd, t0.elapsed()))
    });
    let (crowd, crowd_took) = crowd;
    let busy = |r: &[Response]| {
        r.iter()
            .filter(|a| matches!(a, Response::Busy { .. }))
            .count()
    };
    let have = |r: &[Response]| {
        r.iter()
            .filter(|a| matches!(a, Response::Have { .. }))
            .count()
    };
    assert_eq!(one.len(), 600, "every request answered");
    assert!(
        have(&one) >= 60 && have(&one) <= 100,
        "one peer got {} answers",
        have(&one)
    );
    assert_eq!(busy(&one), 600 - have(&one));
    assert_eq!(crowd.len(), 1600);
    // The subnet's burst and what its rate refilled while the crowd asked: every request is
    // charged to the subnet, the first of a new connection too (the guard enters a connection's
    // address before its handler exists).
    let allowed = 240 + (40.0 * crowd_took.as_secs_f64()) as usize;
    assert!(
        have(&crowd) <= allowed,
        "16 identities in one subnet got {} answers in {crowd_took:?}",
        have(&crowd)
    );
    let field = tmpdir();
    let (code, out, err) = run(
        field.path(),
        &fetch_json_args(&p.base, &seeder.addr, &p.key),
    );
    assert_eq!(code, 0, "{err}{out}");
    let stats = seeder.stop();
    assert!(stats["requests_busy"].as_u64().unwrap() >= 1500, "{stats}");
}
