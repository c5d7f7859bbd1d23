//! End-to-end tests of a field station's link to its hub, with real `zdn node run` processes over
//! loopback: a station that starts while its hub is down connects when it comes up (and again
//! after losing it), a fetch that starts during an outage waits for it, and the catch-up on
//! connecting — what was announced while the station was away, remembered across restarts, from
//! the publisher or a seeder, forged lists refused.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::net::*;
use crate::common::*;

/// A field station's fetch that starts while its seeder cannot be reached (the link is down)
/// keeps dialing it, says so, and completes once the seeder is back; with the default profile
/// the same fetch fails at once.
#[test]
fn a_field_fetch_started_while_its_seeder_is_down_waits_for_it() {
    let p = publish(1);
    let seeder = NodeProc::start(p.home.path(), &[]);
    let addr = seeder.addr.clone();
    let listen = addr.split("/p2p/").next().unwrap().to_string();
    seeder.stop();

    let field = tmpdir();
    let t0 = Instant::now();
    let (code, _, err) = run(field.path(), &fetch_json_args(&p.base, &addr, &p.key));
    assert_ne!(code, 0, "the default profile fails at once");
    assert!(err.contains("Connection refused"), "{err}");
    assert!(t0.elapsed() < Duration::from_secs(30), "{:?}", t0.elapsed());

    let mut args = fetch_json_args(&p.base, &addr, &p.key).to_vec();
    args.extend(["--profile", "field"]);
    let fetch = spawn_zdn(&at(field.path(), &args));
    std::thread::sleep(Duration::from_secs(5));
    let mut fetch = fetch;
    assert!(
        fetch.try_wait().unwrap().is_none(),
        "the field fetch gave up while its seeder was down"
    );
    // Same home (same peer id), same port.
    let seeder = NodeProc::start_on(p.home.path(), &listen, &[]);
    let out = wait_with_deadline(fetch, Duration::from_secs(120));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("no peer reachable (dialing"),
        "said why it waited: {stderr}"
    );
    assert_object(field.path(), &p.base, &p.base_file);
    seeder.stop();
}

/// A station that was not connected when a delta was published (gossip reached nobody) learns of
/// it when it connects: it asks the peer for the announcements made while it was away, verifies
/// each, and auto-fetches the delta as if it had been gossiped.
#[test]
fn a_station_connecting_after_a_publication_catches_up_and_auto_fetches() {
    let p = publish(2);
    // Published (added) while no station was there to hear it (`zdn announce` now would fail:
    // nobody is subscribed).
    let publisher = NodeProc::start(p.home.path(), &[]);
    let field = tmpdir();
    ok(
        field.path(),
        &fetch_json_args(&p.base, &publisher.addr, &p.key)[..],
    );
    let station_args = [
        "--peer",
        &publisher.addr,
        "--trust",
        &p.key,
        "--auto-fetch",
        "fine*",
    ];
    let mut node = NodeProc::start(field.path(), &station_args);
    let l = node.wait_for("caught up from", Duration::from_secs(60));
    assert!(l.ends_with("announcements (all it keeps)"), "{l}");
    let l = node.wait_for("announced", Duration::from_secs(60));
    assert!(
        l.starts_with("announced by hash delta") && l.contains(&p.delta),
        "{l}"
    );
    let l = node.wait_for("auto-fetch: ", Duration::from_secs(120));
    assert!(l.contains("fetched") && l.contains(&p.delta), "{l}");
    node.stop();
    assert_object(field.path(), &p.delta, &p.delta_file);

    // Restarted, the station asks only for what was made since its last catch-up (less a day of
    // clock skew): when that was is kept in its store. The publisher answers a node once a
    // minute and says when it may ask again: the station asks once more then.
    let caught_up_before = unix_now();
    let mut node = NodeProc::start(field.path(), &station_args);
    let l = node.wait_for("caught up from", Duration::from_secs(150));
    let since: u64 = l
        .rsplit_once("since unix time ")
        .and_then(|(_, t)| t.trim_end_matches(')').parse().ok())
        .unwrap_or_else(|| panic!("asked for everything again: {l}"));
    assert!(
        since <= caught_up_before - 86_400 && since + 86_400 + 600 >= caught_up_before,
        "since {since}, restarted at {caught_up_before}: {l}"
    );
    node.stop();
    publisher.stop();
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A peer whose list of recent announcements holds one its publisher did not sign is penalised
/// as for gossiping it, and nothing of its list is acted on.
#[test]
fn forged_recent_announcements_are_refused_and_counted_against_the_peer() {
    let p = publish(1);
    let liar = NodeProc::start(p.home.path(), &["--fault", "forged-announcements"]);
    let field = tmpdir();
    ok(
        field.path(),
        &fetch_json_args(&p.base, &liar.addr, &p.key)[..],
    );
    let node = NodeProc::start(
        field.path(),
        &[
            "--peer",
            &liar.addr,
            "--trust",
            &p.key,
            "--auto-fetch",
            "fine*",
        ],
    );
    let end = Instant::now() + Duration::from_secs(60);
    let penalty = loop {
        let peers = json(&ok(field.path(), &["peers", "--json"]));
        let pen = peers
            .as_array()
            .and_then(|a| a.first())
            .and_then(|x| x["penalty"].as_f64())
            .unwrap_or(0.0);
        if pen > 0.0 || Instant::now() > end {
            break pen;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(penalty >= 39.0, "penalty {penalty}");
    let status = json(&ok(field.path(), &["status"]));
    assert!(!status["objects"]
        .as_array()
        .unwrap()
        .iter()
        .any(|o| o["hash"] == p.delta.as_str()));
    node.stop();
    liar.stop();
}

/// Whether the station's node (home `field`) is connected to `peer` now.
fn connected_to(field: &Path, peer: &str) -> bool {
    json(&ok(field, &["peers", "--json"]))
        .as_array()
        .is_some_and(|a| a.iter().any(|x| x["peer"] == peer))
}

/// A field station whose hub is down when the station starts (its satellite link still
/// acquiring, say) keeps dialing it: once the hub is up the station connects, catches up and
/// auto-fetches what was published meanwhile. Its connection lost later (the hub restarted),
/// it connects again by itself.
#[test]
fn a_station_started_while_its_hub_is_down_connects_when_the_hub_comes_up() {
    let p = publish(2);
    let hub = NodeProc::start(p.home.path(), &[]);
    let (hub_addr, hub_id) = (
        hub.addr.clone(),
        hub.addr.rsplit('/').next().unwrap().to_string(),
    );
    let listen = hub_addr.split("/p2p/").next().unwrap().to_string();
    let field = tmpdir();
    ok(
        field.path(),
        &fetch_json_args(&p.base, &hub_addr, &p.key)[..],
    );
    hub.stop();

    let station_args = [
        "--profile",
        "field",
        "--peer",
        &hub_addr,
        "--trust",
        &p.key,
        "--auto-fetch",
        "fine*",
    ];
    let mut station = NodeProc::start(field.path(), &station_args);
    std::thread::sleep(Duration::from_secs(3));
    assert!(!connected_to(field.path(), &hub_id));
    // Same home (same peer id), same port.
    let hub = NodeProc::start_on(p.home.path(), &listen, &[]);
    let l = station.wait_for("auto-fetch: ", Duration::from_secs(120));
    assert!(l.contains("fetched") && l.contains(&p.delta), "{l}");

    // The hub goes away and comes back: the station connects again without being told.
    hub.stop();
    let end = Instant::now() + Duration::from_secs(60);
    while connected_to(field.path(), &hub_id) {
        assert!(Instant::now() < end, "still connected to a stopped hub");
        std::thread::sleep(Duration::from_millis(200));
    }
    let hub = NodeProc::start_on(p.home.path(), &listen, &[]);
    let end = Instant::now() + Duration::from_secs(120);
    while !connected_to(field.path(), &hub_id) {
        assert!(Instant::now() < end, "not connected again within 120 s");
        std::thread::sleep(Duration::from_millis(200));
    }
    station.stop();
    hub.stop();
    assert_object(field.path(), &p.delta, &p.delta_file);
}

/// Through a hub: a seeding node that fetched the delta from the publisher keeps its publisher's
/// signed announcement, so a station that connects only to the seeder, after the publication,
/// catches up from it.
#[test]
fn a_station_catches_up_from_a_seeder_that_fetched_the_delta() {
    let p = publish(1);
    let publisher = NodeProc::start(p.home.path(), &[]);
    let hub = tmpdir();
    let seeder = NodeProc::start(hub.path(), &["--peer", &publisher.addr, "--trust", &p.key]);
    // Through the running seeder's control socket: its own node fetches.
    for h in [&p.base, &p.delta] {
        ok(hub.path(), &["fetch", h]);
    }
    // The seeder asks for the announcement after the fetch, in the background.
    std::thread::sleep(Duration::from_secs(2));
    publisher.stop();
    let field = tmpdir();
    ok(
        field.path(),
        &fetch_json_args(&p.base, &seeder.addr, &p.key)[..],
    );
    let mut node = NodeProc::start(
        field.path(),
        &[
            "--peer",
            &seeder.addr,
            "--trust",
            &p.key,
            "--auto-fetch",
            "fine*",
        ],
    );
    let l = node.wait_for("auto-fetch: ", Duration::from_secs(120));
    assert!(l.contains("fetched") && l.contains(&p.delta), "{l}");
    node.stop();
    assert_object(field.path(), &p.delta, &p.delta_file);
    seeder.stop();
}
