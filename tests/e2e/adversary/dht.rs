//! Item 8, the DHT's provider records.

use super::*;

use zdn_test_support::crowd::crowd_address;

/// Waits for `provided <hash>` lines naming every one of `hashes`, in any order; the hashes not
/// seen after `within`.
fn provided<'a>(node: &mut NodeProc, hashes: &[&'a str], within: Duration) -> Vec<&'a str> {
    let end = Instant::now() + within;
    let mut left = hashes.to_vec();
    while !left.is_empty() {
        match node
            .lines
            .recv_timeout(end.saturating_duration_since(Instant::now()))
        {
            Ok(l) if l.starts_with("provided ") => left.retain(|h| !l.contains(h)),
            Ok(_) => {}
            Err(_) => break,
        }
    }
    left
}

/// Before the publisher A joins, an attacker gives the bootstrap node B (a DHT server with an empty
/// store) 20 provider records for the delta from 20 fresh identities in one subnet — a key holds
/// 20 — and floods it with 36 864 records of random keys from 72 identities in 18 subnets. Then A
/// publishes its records through B — B lists A among the delta's providers, asked directly — and
/// C, which knows only B, fetches the delta: B's records lead it to A (and, for the missing base
/// first, too). Then B itself fetches the objects and announces them in the DHT.
///
/// The old code kept the first 16 384 keys and the first 20 providers of a key, its own records
/// counted with everyone's: A's records were refused (the delta's key was full of sybils, the
/// store of junk), so C found nobody, and B's own announcement of the base failed silently.
#[test]
fn item8_a_flood_of_provider_records_crowds_out_no_one() {
    let p = publish(1);
    let b_home = tmpdir();
    // B trusts the publisher: it fetches the objects itself at the end.
    let mut b = NodeProc::start(b_home.path(), &["--trust", &p.key]);
    let delta: Hash = p.delta.parse().unwrap();
    rt().block_on(async {
        let mut crowd = Vec::new();
        for i in 0..20u8 {
            let from = format!("127.130.0.{}", i + 1);
            let h = Hostile::connect_from(&b.addr, Some(from.parse().unwrap()))
                .await
                .unwrap();
            let at = format!("/ip4/{from}/tcp/9").parse().unwrap();
            h.add_providers([*delta.as_bytes()], &at).await.unwrap();
            crowd.push(h);
        }
        let mut seed = 1u64;
        for i in 0..72 {
            let from = crowd_address(131, 18, i);
            let h = Hostile::connect_from(&b.addr, Some(from)).await.unwrap();
            let keys = (0..512).map(|_| {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                *Hash::of(&seed.to_le_bytes()).as_bytes()
            });
            let at = format!("/ip4/{from}/tcp/9").parse().unwrap();
            assert_eq!(h.add_providers(keys, &at).await.unwrap(), 512);
            crowd.push(h);
        }
        // Let B take them in before the connections go.
        tokio::time::sleep(Duration::from_secs(3)).await;
        drop(crowd);
    });
    let mut a = NodeProc::start(p.home.path(), &["--bootstrap", &b.addr]);
    let missing = provided(&mut a, &[&p.base, &p.delta], Duration::from_secs(60));
    assert!(missing.is_empty(), "A did not publish {missing:?}");
    let a_id = a.addr.rsplit('/').next().unwrap().to_string();
    // B itself lists A among the delta's providers (C could also find A by walking the DHT to A).
    let listed = rt().block_on(async {
        let asker = Hostile::connect(&b.addr).await.unwrap();
        asker.providers_of(*delta.as_bytes()).await.unwrap()
    });
    assert!(
        listed.iter().any(|p| p.to_string() == a_id),
        "B lists {} providers of the delta, not A",
        listed.len()
    );
    let c = tmpdir();
    let (code, out, err) = run(
        c.path(),
        &[
            "fetch", &p.delta, "--peer", &b.addr, "--trust", &p.key, "--json",
        ],
    );
    assert_eq!(code, 0, "C found no provider: {err}{out}");
    let r = json(&out);
    let from_a = r["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["peer"] == a_id.as_str())
        .cloned();
    assert!(from_a.is_some_and(|x| x["from_dht"] == true), "{r}");
    assert_object(c.path(), &p.delta, &p.delta_file);
    // B's own records: kept however full the store is of others'.
    ok(
        b_home.path(),
        &["fetch", &p.delta, "--peer", &a.addr, "--json"],
    );
    let missing = provided(&mut b, &[&p.base], Duration::from_secs(60));
    assert!(
        missing.is_empty(),
        "B did not announce the base it now holds"
    );
    b.stop();
    a.stop();
}
