//! Item 6, penalties that stick: one node-wide score per peer.

use super::*;

/// Chunks the liar has served on its streams so far (its `zdn status`).
fn chunks_served(home: &std::path::Path) -> u64 {
    let st = json(&ok(home, &["status"]));
    st["traffic"]["chunks_served"].as_u64().unwrap()
}

/// Chunk bytes the liar has sent, streams and lane together.
fn liar_bytes(home: &std::path::Path) -> u64 {
    let st = json(&ok(home, &["status"]));
    st["traffic"]["chunk_bytes_served"].as_u64().unwrap()
}

/// A seeder that corrupts every chunk is banned by the first transfer it lies to — node-wide. A
/// node fetches the base from it and an honest seeder (the liar is banned, the base completes),
/// then the delta: the liar serves it nothing more. A node that knows its link's rate asks the liar
/// over the paced lane first: the lane's datagrams are sealed under a key only the two ends hold,
/// so a chunk that fails verification there is the liar's doing too, and it is banned before the
/// chunk streams ask it anything.
///
/// The old code banned a peer for one transfer only — the base, the delta and each soup component
/// are separate transfers, so the liar was asked again for each — and the lane never banned: a bad
/// lane chunk stopped the lane, and the chunk streams then asked the liar again.
#[test]
fn item6_a_liar_is_banned_from_every_transfer_and_by_the_lane() {
    let p = publish(2);
    let (liar_home, good, liar) = two_seeders(&p, &["--fault", "corrupt-chunks"]);
    let liar_id = liar.addr.rsplit('/').next().unwrap().to_string();
    let home = tmpdir();
    let node = NodeProc::start(home.path(), &["--trust", &p.key]);
    let fetch = |h: &str| {
        let a = [
            "fetch",
            h,
            "--peer",
            &liar.addr,
            "--peer",
            &good.addr,
            "--no-base",
            "--json",
        ];
        json(&ok(home.path(), &a))
    };
    let r = fetch(&p.base);
    let liar_report = r["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["peer"] == liar_id.as_str())
        .cloned();
    assert!(liar_report.is_some_and(|x| x["banned"] == true), "{r}");
    let after_base = chunks_served(liar_home.path());
    assert!(after_base >= 1, "the liar was asked for chunks of the base");
    fetch(&p.delta);
    assert_eq!(
        chunks_served(liar_home.path()),
        after_base,
        "the liar was asked again by the next transfer"
    );
    let peers = json(&ok(home.path(), &["peers", "--json"]));
    assert!(
        !peers
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["peer"] == liar_id.as_str()),
        "{peers}"
    );
    node.stop();
    assert_object(home.path(), &p.delta, &p.delta_file);

    // The lane: the liar is the first peer asked.
    let lane_bytes_before = liar_bytes(liar_home.path());
    let lane_home = tmpdir();
    let r = json(&ok(
        lane_home.path(),
        &[
            "fetch",
            &p.base,
            "--peer",
            &liar.addr,
            "--peer",
            &good.addr,
            "--trust",
            &p.key,
            "--link-rate",
            "40Mbit",
            "--json",
        ],
    ));
    assert!(
        liar_bytes(liar_home.path()) > lane_bytes_before,
        "the liar's lane was asked: {r}"
    );
    assert_eq!(
        chunks_served(liar_home.path()),
        after_base,
        "the chunk streams asked the liar after its lane chunk failed"
    );
    assert_object(lane_home.path(), &p.base, &p.base_file);
    good.stop();
    liar.stop();
}
