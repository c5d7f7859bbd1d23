//! Item 3, slot exhaustion: connections and chunk-server streams.

use super::*;

use zdn_test_support::crowd::{crowd_address, Crowd};

/// With 256 hostile identities connected to both the seeder and the honest node — each from its own
/// address, 16 in each of 16 /24 subnets, so no per-address or per-subnet cap stops them — `zdn
/// fetch --peer SEEDER` through the honest node completes. What it shows: the honest node's dial
/// to its seeder is outbound, which is never refused for room (all 256 hostiles stay connected to
/// it); at the seeder, whose 256 inbound places are all taken, the honest node (from 127.0.0.1, a
/// subnet with none) takes the place of the newest connection of a subnet holding 16.
///
/// The old code closed every connection beyond 256 peers, its own dials included: the honest node
/// dropped its new connection to the seeder, and the seeder dropped the honest node's.
#[test]
fn item3_a_crowd_of_identities_cannot_keep_an_honest_fetch_out() {
    let p = publish(2);
    let seeder = NodeProc::start(p.home.path(), &[]);
    let home = tmpdir();
    let honest = NodeProc::start(home.path(), &["--trust", &p.key]);
    let targets = [seeder.addr.parse().unwrap(), honest.addr.parse().unwrap()];
    let seeder_id = peer_in(&targets[0]).unwrap();
    let honest_id = peer_in(&targets[1]).unwrap();
    let rt = rt();
    // Each member holds an idle chunk stream on each connection, so none is closed as idle.
    let hold = Some(zdn_protocol::wire::CHUNK_PROTOCOL);
    let crowd = rt.block_on(async {
        Crowd::gather(256, |i| crowd_address(100, 16, i), &targets, hold)
            .await
            .unwrap()
    });
    assert_eq!(crowd.refused, 0);
    assert_eq!(crowd.connected_to(&seeder_id), 256);
    assert_eq!(crowd.connected_to(&honest_id), 256);

    let t0 = Instant::now();
    // Through the running honest node, which trusts the publisher already.
    let (code, out, err) = run(
        home.path(),
        &["fetch", &p.base, "--peer", &seeder.addr, "--json"],
    );
    // The error lists every peer asked (the crowd's too): the seeder's part is what matters.
    let seeder_part: Vec<&str> = err
        .split(';')
        .filter(|x| x.contains(&seeder_id.to_string()))
        .collect();
    assert_eq!(
        code,
        0,
        "the honest fetch failed after {:?}: {seeder_part:?}; {} bytes of error",
        t0.elapsed(),
        err.len()
    );
    assert_eq!(json(&out)["hash"], p.base.as_str());
    assert_eq!(
        crowd.connected_to(&honest_id),
        256,
        "the honest node's dial must not cost it an inbound connection"
    );
    assert_eq!(
        crowd.connected_to(&seeder_id),
        255,
        "the seeder made room by closing exactly one crowd connection"
    );
    drop(crowd);
    honest.stop();
    assert_object(home.path(), &p.base, &p.base_file);
    let stats = seeder.stop();
    assert_eq!(stats["connections_evicted"], 1, "{stats}");
}

/// Many identities from one address get that address's share (16), not the node: before the
/// handshake, so each refused one costs the node a TCP accept. The old code took 256 of them.
#[test]
fn item3_one_address_gets_its_share_of_connections() {
    let p = publish(1);
    let seeder = NodeProc::start(p.home.path(), &[]);
    let target: Multiaddr = seeder.addr.parse().unwrap();
    let id = peer_in(&target).unwrap();
    let crowd = rt().block_on(async {
        Crowd::gather(40, |_| "127.101.0.1".parse().unwrap(), &[target], None)
            .await
            .unwrap()
    });
    assert_eq!(crowd.connected_to(&id), 16, "refused: {}", crowd.refused);
    assert_eq!(crowd.refused, 24);
    drop(crowd);
    let stats = seeder.stop();
    assert_eq!(stats["connections_refused"], 24, "{stats}");
}

/// 24 identities in 8 subnets each open 96 chunk-protocol streams and send nothing: together
/// they could hold every one of the seeder's 512 places. A fetch from another subnet still
/// completes: each of its streams takes the place of the newest stream of the subnet holding the
/// most. The old code reset every stream beyond 512 (6 identities × 96 were enough), so the honest
/// fetch's requests were reset unread and it failed.
#[test]
fn item3_a_few_identities_cannot_take_every_chunk_stream() {
    let p = publish(2);
    let seeder = NodeProc::start(p.home.path(), &[]);
    let rt = rt();
    let held = rt.block_on(async {
        let mut held = Vec::new();
        for i in 0..24 {
            let from = Some(crowd_address(110, 8, i));
            let h = Hostile::connect_from(&seeder.addr, from).await.unwrap();
            let mut streams = Vec::new();
            for _ in 0..96 {
                streams.push(h.open(zdn_protocol::wire::CHUNK_PROTOCOL).await.unwrap());
            }
            held.push((h, streams));
        }
        // Let the seeder take them all in.
        tokio::time::sleep(Duration::from_secs(1)).await;
        held
    });
    let field = tmpdir();
    let (code, out, err) = run(
        field.path(),
        &fetch_json_args(&p.base, &seeder.addr, &p.key),
    );
    assert_eq!(code, 0, "the honest fetch failed: {err}{out}");
    assert_object(field.path(), &p.base, &p.base_file);
    drop(held);
    let stats = seeder.stop();
    // 24 × 96 asked, 32 per peer and 512 in all allowed: most were reset unread (libp2p-stream
    // itself drops some before the server sees them, when they come faster than it takes them).
    assert!(
        stats["streams_refused"].as_u64().unwrap() >= 1000,
        "{stats}"
    );
    // Every place was taken when the honest fetch came: it took the crowd's.
    assert!(stats["streams_evicted"].as_u64().unwrap() >= 1, "{stats}");
}
