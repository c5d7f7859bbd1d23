//! Item 4, trickling: a peer that answers one byte just inside every progress timeout.

use super::*;

use zdn_test_support::trickler::Trickler;

/// A trickler (truthful answers, one byte every 20 s: inside the 30 s progress timeout) is the first
/// peer a fetch asks, for the manifest and then for its have-bitmap, with an honest seeder second.
/// The fetch completes in well under a minute: the manifest read falls under the floor rate after
/// its 30 s slack and the seeder is asked instead; the have-bitmaps are raced, so the trickler,
/// still trickling 2 s after the seeder answered, is left out; the trickler is counted against
/// (its penalty shows in `zdn peers`).
///
/// The old code reset its progress timeout on every byte: the manifest alone (a few KB at one byte
/// per 20 s) would take a day, and its have-bitmap — which `join_all` waited for — 15 minutes.
#[test]
fn item4_a_trickling_peer_does_not_hold_a_fetch() {
    let p = publish(2);
    let seeder = NodeProc::start(p.home.path(), &[]);
    let home = tmpdir();
    let honest = NodeProc::start(home.path(), &["--trust", &p.key]);
    let base: Hash = p.base.parse().unwrap();
    let rt = rt();
    let trickler = rt.block_on(async {
        let h = Hostile::connect(&seeder.addr).await.unwrap();
        let m = h.manifest(base).await.unwrap();
        Trickler::start(m, Duration::from_secs(20)).await.unwrap()
    });
    let t0 = Instant::now();
    let args = at(
        home.path(),
        &[
            "fetch",
            &p.base,
            "--peer",
            &trickler.addr.to_string(),
            "--peer",
            &seeder.addr,
            "--json",
        ],
    );
    let out = wait_with_deadline(spawn_zdn(&args), Duration::from_secs(120));
    let took = t0.elapsed();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(took < Duration::from_secs(75), "the fetch took {took:?}");
    let r = json(&String::from_utf8_lossy(&out.stdout));
    let tid = peer_in(&trickler.addr).unwrap().to_string();
    assert!(
        !r["peers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["peer"] == tid.as_str() && x["chunks"].as_u64() > Some(0)),
        "{r}"
    );
    assert!(
        trickler.requests.load(std::sync::atomic::Ordering::Relaxed) >= 2,
        "the trickler was asked for the manifest and the have-bitmap"
    );
    let peers = json(&ok(home.path(), &["peers", "--json"]));
    let penalty = peers
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["peer"] == tid.as_str())
        .map(|x| x["penalty"].as_f64().unwrap());
    assert!(
        penalty.is_some_and(|v| v >= 20.0),
        "the trickler's penalty: {penalty:?} in {peers}"
    );
    honest.stop();
    assert_object(home.path(), &p.base, &p.base_file);
    seeder.stop();
}
