//! End-to-end tests of the DHT (Kademlia provider records), real `zdn` processes on loopback:
//! a fetch that knows only a bootstrap node finds the publisher through the provider records.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashSet;
use std::time::{Duration, Instant};

use crate::common::net::*;
use crate::common::*;
use serde_json::Value;

/// Waits until `node` has logged `provided <hash> in the DHT` for every hash in `hashes`.
fn wait_provided(node: &mut NodeProc, hashes: &[&str]) {
    let end = Instant::now() + Duration::from_secs(60);
    let mut left: HashSet<&str> = hashes.iter().copied().collect();
    while !left.is_empty() {
        let l = node.wait_for("provided ", end.saturating_duration_since(Instant::now()));
        left.retain(|h| !l.contains(h));
    }
}

/// The part `peer` had in a fetch report (and its base's), if any.
fn part<'a>(r: &'a Value, peer: &str) -> Option<&'a Value> {
    r["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["peer"] == peer)
}

#[test]
fn fetch_finds_the_publisher_through_a_bootstrap_node_by_provider_records() {
    let p = publish(2);
    // B: a bootstrap node with an empty store.
    let b_home = tmpdir();
    let b = NodeProc::start(b_home.path(), &[]);
    // A: the publisher, knowing only B. It announces what it holds in the DHT.
    let mut a = NodeProc::start(p.home.path(), &["--bootstrap", &b.addr]);
    wait_provided(&mut a, &[&p.base, &p.delta]);
    let a_id = a.addr.rsplit('/').next().unwrap().to_string();

    // C knows only B, which has neither object: the delta (and first its missing base) come
    // from A, found through B's provider records.
    let c = tmpdir();
    let out = c.path().join("fine.bitdelta");
    let r = json(&ok(
        c.path(),
        &[
            "fetch",
            &p.delta,
            "--peer",
            &b.addr,
            "--trust",
            &p.key,
            "-o",
            s(&out),
            "--json",
        ],
    ));
    // The delta's lookup found A (the base, fetched first, then had A connected already).
    assert_eq!(part(&r, &a_id).unwrap()["from_dht"], true, "{r}");
    for report in [&r, &r["base"]] {
        let from_a = part(report, &a_id).unwrap_or_else(|| panic!("A not in {report}"));
        assert!(from_a["chunks"].as_u64().unwrap() > 0, "{report}");
    }
    assert_eq!(r["base"]["hash"], p.base.as_str());
    assert_eq!(
        std::fs::read(&out).unwrap(),
        std::fs::read(&p.delta_file).unwrap()
    );
    assert_object(c.path(), &p.base, &p.base_file);
    assert_object(c.path(), &p.delta, &p.delta_file);

    // A field node (DHT client) with B only as its bootstrap node finds A the same way.
    let f = tmpdir();
    let r = json(&ok(
        f.path(),
        &[
            "fetch",
            &p.base,
            "--profile",
            "field",
            "--no-mdns",
            "--bootstrap",
            &b.addr,
            "--trust",
            &p.key,
            "--json",
        ],
    ));
    assert_eq!(part(&r, &a_id).unwrap()["from_dht"], true, "{r}");
    assert_object(f.path(), &p.base, &p.base_file);

    // Without the DHT, B is all it knows and B has nothing: not found.
    let g = tmpdir();
    let (code, _, err) = run(
        g.path(),
        &[
            "fetch", &p.base, "--no-dht", "--peer", &b.addr, "--trust", &p.key,
        ],
    );
    assert_eq!(code, 2, "{err}");

    // B stored records, not objects: it served no chunk.
    let st = json(&ok(b_home.path(), &["status", "--json"]));
    assert_eq!(st["objects"].as_array().unwrap().len(), 0, "{st}");
    assert_eq!(b.stop()["chunks_served"], 0);
    assert!(a.stop()["chunks_served"].as_u64().unwrap() > 0);
}

#[test]
fn field_publisher_is_found_by_the_external_address_in_its_record() {
    let p = publish(1);
    let b_home = tmpdir();
    let b = NodeProc::start(b_home.path(), &[]);
    // A field node is a DHT client: no server has it in its routing table, so its provider
    // records are useful only with the address they carry.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("/ip4/127.0.0.1/tcp/{port}");
    let mut f = NodeProc::start_on(
        p.home.path(),
        &listen,
        &[
            "--profile",
            "field",
            "--external-address",
            &listen,
            "--bootstrap",
            &b.addr,
        ],
    );
    wait_provided(&mut f, &[&p.base]);
    let f_id = f.addr.rsplit('/').next().unwrap().to_string();

    let c = tmpdir();
    let r = json(&ok(c.path(), &fetch_json_args(&p.base, &b.addr, &p.key)));
    assert_eq!(part(&r, &f_id).unwrap()["from_dht"], true, "{r}");
    assert_object(c.path(), &p.base, &p.base_file);
    b.stop();
    f.stop();
}
