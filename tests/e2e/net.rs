//! End-to-end tests of the network: real `zdn node run` processes talking libp2p over
//! loopback, `zdn fetch` verifying every byte, a corrupt seeder banned, a killed fetch resumed,
//! a seeder killed and restarted mid-transfer re-dialed, gossip with auto-fetch, and bad requests
//! that must not hurt a node. The DHT: `kad.rs`; a station's link to its hub: `station.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::net::*;
use crate::common::*;

/// A field station that fetched the base from `publisher` and now runs a node connected to
/// `publisher` and `other`, auto-fetching deltas named `fine*`.
fn field_station(
    p: &Published,
    publisher: &NodeProc,
    other: &NodeProc,
) -> (tempfile::TempDir, NodeProc) {
    let field = tmpdir();
    ok(
        field.path(),
        &[
            "fetch",
            &p.base,
            "--peer",
            &publisher.addr,
            "--trust",
            &p.key,
        ],
    );
    let node = NodeProc::start(
        field.path(),
        &[
            "--peer",
            &publisher.addr,
            "--peer",
            &other.addr,
            "--trust",
            &p.key,
            "--auto-fetch",
            "fine*",
            // These tests are about gossip: the catch-up on connecting would fetch first.
            "--no-catch-up",
        ],
    );
    // Connected to both before anything is announced: an announcement published before the
    // station's connection (and its gossip subscription) exists never reaches it, and a loaded
    // machine can take seconds to dial (a CI run saw "no line starting with announced").
    let end = std::time::Instant::now() + Duration::from_secs(60);
    while json(&ok(field.path(), &["peers", "--json"]))
        .as_array()
        .map_or(0, Vec::len)
        < 2
    {
        assert!(
            std::time::Instant::now() < end,
            "the station did not connect to its two peers within 60 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    (field, node)
}

#[test]
fn fetch_from_a_node_verified_base_first_then_apply() {
    let p = publish(2);
    let seeder = NodeProc::start(p.home.path(), &[]);
    let field = tmpdir();
    let out = field.path().join("fetched.bitdelta");

    // Unknown publisher: refused with its own exit code, nothing kept.
    let (code, _, err) = run(field.path(), &["fetch", &p.delta, "--peer", &seeder.addr]);
    assert_eq!(code, 5, "{err}");
    assert!(err.contains("not a trusted publisher"), "{err}");

    // Unknown hash: not found.
    let nothing = "00".repeat(32);
    let (code, _, err) = run(
        field.path(),
        &["fetch", &nothing, "--peer", &seeder.addr, "--trust", &p.key],
    );
    assert_eq!(code, 2, "{err}");

    // The delta, whose base is missing: the base comes first, both verified.
    let r = json(&ok(
        field.path(),
        &[
            "fetch",
            &p.delta,
            "--peer",
            &seeder.addr,
            "--trust",
            &p.key,
            "-o",
            s(&out),
            "--json",
        ],
    ));
    assert_eq!(r["kind"], "delta");
    assert_eq!(r["base"]["hash"], p.base.as_str());
    // The publisher's signed quality report arrives with the manifest.
    assert_eq!(r["quality"]["delta"]["mean"], 0.9998);
    assert_eq!(
        std::fs::read(&out).unwrap(),
        std::fs::read(&p.delta_file).unwrap()
    );
    let base_out = field.path().join("base.safetensors");
    ok(field.path(), &["get", &p.base, "-o", s(&base_out)]);
    assert_eq!(
        std::fs::read(&base_out).unwrap(),
        std::fs::read(&p.base_file).unwrap()
    );
    let verify = run(field.path(), &["verify"]);
    assert_eq!(verify.0, 0, "{}", verify.1);

    // A second fetch transfers nothing.
    let again = json(&ok(
        field.path(),
        &fetch_json_args(&p.delta, &seeder.addr, &p.key),
    ));
    assert_eq!(again["already_present"], true);

    // The fetched pair applies to the same bytes as on the publisher's side.
    let applied_here = field.path().join("applied.safetensors");
    let applied_there = p.home.path().join("applied.safetensors");
    for (b, d, o) in [
        (&base_out, &out, &applied_here),
        (&p.base_file, &p.delta_file, &applied_there),
    ] {
        ok(
            field.path(),
            &[
                "delta",
                "apply",
                "--base",
                s(b),
                "--delta",
                s(d),
                "-o",
                s(o),
            ],
        );
    }
    assert_eq!(
        std::fs::read(&applied_here).unwrap(),
        std::fs::read(&applied_there).unwrap()
    );
    let _ = p.fine_file;

    let traffic = seeder.stop();
    assert!(traffic["chunks_served"].as_u64().unwrap() > 0);
}

/// Copies the publisher's objects into a second seeder's store through a bundle.
#[test]
fn corrupt_seeder_is_banned_and_the_fetch_completes_from_the_other() {
    let p = publish(2);
    let (_liar_home, honest, liar) = two_seeders(&p, &["--fault", "corrupt-chunks"]);
    let field = tmpdir();
    let r = json(&ok(
        field.path(),
        &[
            "fetch",
            &p.base,
            "--peer",
            &liar.addr,
            "--peer",
            &honest.addr,
            "--trust",
            &p.key,
            "--json",
        ],
    ));
    let peers = r["peers"].as_array().unwrap();
    let liar_id = liar.addr.rsplit('/').next().unwrap();
    let liar_report = peers.iter().find(|x| x["peer"] == liar_id);
    assert!(
        liar_report.is_some_and(|x| x["banned"] == true),
        "liar not banned: {r}"
    );
    assert_object(field.path(), &p.base, &p.base_file);
    // Both nodes stay up.
    honest.stop();
    liar.stop();
}

#[test]
fn stalled_seeder_does_not_stop_the_fetch() {
    let p = publish(1);
    let (_staller_home, honest, staller) = two_seeders(&p, &["--fault", "stall-chunks"]);
    let field = tmpdir();
    let t0 = Instant::now();
    ok(
        field.path(),
        &[
            "fetch",
            &p.base,
            "--peer",
            &staller.addr,
            "--peer",
            &honest.addr,
            "--trust",
            &p.key,
            "--json",
        ],
    );
    // The honest peer carries the transfer; the stalled requests are worked around (end game
    // and the progress timeout), not waited out one by one.
    assert!(
        t0.elapsed() < Duration::from_secs(120),
        "{:?}",
        t0.elapsed()
    );
    honest.stop();
    staller.stop();
}

#[test]
fn killed_fetch_resumes_without_downloading_verified_chunks_again() {
    let p = publish(2);
    // ~1.5 MB/s so the fetch takes several seconds and can be killed midway.
    let seeder = NodeProc::start(p.home.path(), &["--max-upload-rate", "1500k"]);
    let field = tmpdir();
    let a = at(
        field.path(),
        &fetch_json_args(&p.base, &seeder.addr, &p.key),
    );
    let mut first = Command::new(env!("CARGO_BIN_EXE_zdn"))
        .args(&a)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(4));
    assert!(
        first.try_wait().unwrap().is_none(),
        "fetch finished too soon to test resume"
    );
    first.kill().unwrap(); // SIGKILL
    first.wait().unwrap();

    let r = json(&ok(
        field.path(),
        &fetch_json_args(&p.base, &seeder.addr, &p.key),
    ));
    let resumed = r["chunks_resumed"].as_u64().unwrap();
    assert!(resumed > 0, "nothing was kept from the killed run: {r}");
    assert_object(field.path(), &p.base, &p.base_file);

    // Bytes the seeder sent over both runs: at most the object's stored bytes plus one chunk
    // per peer (the chunk in flight when the fetch was killed).
    let served = seeder.stop()["chunk_bytes_served"].as_u64().unwrap();
    eprintln!(
        "resumed {resumed} chunks; served {served} bytes over both runs for an object of {} stored bytes",
        p.base_stored
    );
    assert!(
        served <= p.base_stored + CHUNK,
        "served {served} > stored {} + one chunk",
        p.base_stored
    );
}

#[test]
fn gossip_announcement_auto_fetches_the_delta_from_two_seeders() {
    let p = publish(2);
    let (_second, publisher, seeder2) = two_seeders(&p, &[]);

    // The field node has the base already (fetched earlier) and auto-fetches deltas.
    let (field, mut node) = field_station(&p, &publisher, &seeder2);
    // Announce through the publisher's running node (its control socket).
    ok(p.home.path(), &["announce", &p.delta]);
    let l = node.wait_for("auto-fetch: ", Duration::from_secs(120));
    assert!(l.contains("fetched") && l.ends_with("from 2 peers"), "{l}");
    let status = json(&ok(field.path(), &["status"]));
    assert!(status["objects"]
        .as_array()
        .unwrap()
        .iter()
        .any(|o| o["hash"] == p.delta.as_str()));
    node.stop();
    assert_object(field.path(), &p.delta, &p.delta_file);
    publisher.stop();
    seeder2.stop();
}

/// A delta whose manifest is over gossip's 256 KiB (here: 16-byte chunks, as a 70B model's
/// manifest is by its chunk count) is announced by hash; the station fetches the manifest by hash,
/// verifies it and auto-fetches the object. Before, `zdn announce` refused it.
#[test]
fn a_manifest_too_big_for_gossip_is_announced_by_hash_and_auto_fetched() {
    let p = publish(2);
    let big_hash = add_big_delta(&p);
    let (_second, publisher, seeder2) = two_seeders(&p, &[]);
    let (field, mut node) = field_station(&p, &publisher, &seeder2);
    ok(p.home.path(), &["announce", &big_hash]);
    let l = node.wait_for("announced", Duration::from_secs(60));
    assert!(
        l.starts_with("announced by hash delta") && l.contains(&big_hash),
        "{l}"
    );
    let l = node.wait_for("auto-fetch: ", Duration::from_secs(300));
    assert!(l.contains("fetched") && l.contains(&big_hash), "{l}");
    // The station kept the publisher's signed announcement with the object: it can announce it
    // too.
    ok(field.path(), &["announce", &big_hash]);
    node.stop();
    let v = json(&ok(field.path(), &["verify", &big_hash, "--json"]));
    assert_eq!(v["problems"].as_array().map(Vec::len), Some(0), "{v}");
    let out = field.path().join("out.bitdelta");
    ok(field.path(), &["get", &big_hash, "-o", s(&out)]);
    assert_eq!(
        std::fs::read(&out).unwrap(),
        std::fs::read(&p.delta_file).unwrap()
    );
    publisher.stop();
    seeder2.stop();
}

/// An object whose manifest is too big for gossip, got by a plain `zdn fetch HASH` (not
/// announced to this station): the fetch also asks the peer for the publisher's signed
/// announcement and keeps it, so the station can announce the object in turn.
#[test]
fn an_object_fetched_by_hash_alone_can_be_announced_by_hash_in_turn() {
    let p = publish(2);
    let big_hash = add_big_delta(&p);
    let publisher = NodeProc::start(p.home.path(), &[]);
    let field = tmpdir();
    let r = json(&ok(
        field.path(),
        &fetch_json_args(&big_hash, &publisher.addr, &p.key),
    ));
    assert_eq!(r["hash"], big_hash.as_str(), "{r}");
    let node = NodeProc::start(
        field.path(),
        &["--peer", &publisher.addr, "--trust", &p.key],
    );
    let (code, out, err) = run(field.path(), &["announce", &big_hash]);
    assert_eq!(code, 0, "{out}{err}");
    node.stop();
    publisher.stop();

    // A seeder that holds the object but answers with an announcement its publisher did not
    // sign: the object is still fetched (every byte verified), the forgery is not kept, and the
    // seeder is banned for it.
    let forger_home = tmpdir();
    let bundle = p.home.path().join("big.zdnb");
    ok(p.home.path(), &["export", &big_hash, "-o", s(&bundle)]);
    ok(forger_home.path(), &["import", s(&bundle), "--trust-any"]);
    let forger = NodeProc::start(forger_home.path(), &["--fault", "forged-announcements"]);
    let other = tmpdir();
    let r = json(&ok(
        other.path(),
        &fetch_json_args(&big_hash, &forger.addr, &p.key),
    ));
    assert_eq!(r["hash"], big_hash.as_str(), "{r}");
    assert_eq!(r["peers"][0]["banned"], true, "{r}");
    let node = NodeProc::start(other.path(), &["--trust", &p.key]);
    let (code, _, err) = run(other.path(), &["announce", &big_hash]);
    assert_ne!(code, 0, "a forged announcement was kept");
    assert!(err.contains("has none"), "{err}");
    node.stop();
    forger.stop();
}

#[test]
fn bogus_announcements_get_the_sender_banned_and_honest_gossip_still_works() {
    let p = publish(1);
    let (bogus_home, publisher, bogus) = two_seeders(&p, &["--fault", "bogus-announcements"]);
    let (field, mut node) = field_station(&p, &publisher, &bogus);
    // Garbage and a manifest with a broken signature, through the bogus node.
    let (code, _, err) = run(bogus_home.path(), &["announce", &p.delta]);
    assert_eq!(code, 0, "{err}");
    let bogus_id = bogus.addr.rsplit('/').next().unwrap().to_string();
    let l = node.wait_for("banned ", Duration::from_secs(60));
    assert!(l.contains(&bogus_id), "{l}");
    // The node stays up, forgets the bogus peer, and still acts on a valid announcement.
    ok(p.home.path(), &["announce", &p.delta]);
    let l = node.wait_for("auto-fetch: ", Duration::from_secs(120));
    assert!(l.contains("fetched"), "{l}");
    let peers = json(&ok(field.path(), &["peers", "--json"]));
    assert!(
        !peers
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["peer"] == bogus_id.as_str()),
        "{peers}"
    );
    node.stop();
    publisher.stop();
    bogus.stop();
}

#[test]
fn fetch_through_a_running_node_on_a_fresh_home() {
    let p = publish(1);
    let seeder = NodeProc::start(p.home.path(), &[]);
    // A home with nothing in it yet: the node creates the store, its key and the control socket.
    let field = tmpdir();
    let node = NodeProc::start(field.path(), &["--trust", &p.key]);
    let status = json(&ok(field.path(), &["status", "--json"]));
    assert_eq!(status["listen"][0], node.addr.as_str(), "{status}");
    assert_eq!(status["objects"].as_array().unwrap().len(), 0);
    // The store is the node's now: `zdn fetch` goes through its control socket, and the node
    // writes -o.
    let out = field.path().join("via-node.bitdelta");
    let r = json(&ok(
        field.path(),
        &[
            "fetch",
            &p.delta,
            "--peer",
            &seeder.addr,
            "-o",
            s(&out),
            "--json",
        ],
    ));
    assert_eq!(r["hash"], p.delta.as_str());
    assert_eq!(
        std::fs::read(&out).unwrap(),
        std::fs::read(&p.delta_file).unwrap()
    );
    let peers = json(&ok(field.path(), &["peers", "--json"]));
    let seeder_id = seeder.addr.rsplit('/').next().unwrap();
    assert!(
        peers
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["peer"] == seeder_id),
        "{peers}"
    );
    node.stop();
    assert_object(field.path(), &p.delta, &p.delta_file);
    seeder.stop();
}

/// A sync window opening `delay` from now and lasting an hour.
fn window_from_now(delay: Duration) -> String {
    let d = delay.as_secs() as i64;
    sync_window(d, d + 3600)
}

#[test]
fn sync_window_holds_the_fetch_until_it_opens() {
    let p = publish(1);
    let seeder = NodeProc::start(p.home.path(), &[]);
    let field = tmpdir();
    let window = window_from_now(Duration::from_secs(5));
    let t0 = Instant::now();
    let r = json(&ok(
        field.path(),
        &[
            "fetch",
            &p.delta,
            "--peer",
            &seeder.addr,
            "--trust",
            &p.key,
            "--sync-window",
            &window,
            "--json",
        ],
    ));
    let waited = t0.elapsed();
    assert_eq!(r["hash"], p.delta.as_str());
    // Seconds are whole: the window opens 4–5 s after it was computed.
    assert!(waited >= Duration::from_secs(3), "did not wait: {waited:?}");
    // A malformed window is refused up front.
    let (code, _, err) = run(
        field.path(),
        &[
            "fetch",
            &p.delta,
            "--peer",
            &seeder.addr,
            "--sync-window",
            "25:00-26:00",
        ],
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("sync window"), "{err}");
    seeder.stop();
}

#[test]
fn node_runs_from_a_config_file() {
    let p = publish(1);
    let seeder = NodeProc::start(p.home.path(), &[]);
    let field = tmpdir();
    let cfg = field.path().join("node.toml");
    std::fs::write(
        &cfg,
        format!(
            "profile = \"field\"\npeers = [\"{}\"]\ntrusted_publishers = [\"{}\"]\nauto_fetch = [\"fine*\"]\nmax_rate = \"8Mbit\"\nmdns = false\n",
            seeder.addr, p.key
        ),
    )
    .unwrap();
    let node = NodeProc::start(field.path(), &["--config", s(&cfg)]);
    let st = json(&ok(field.path(), &["status", "--json"]));
    assert_eq!(st["profile"], "field", "{st}");
    // The peer from the file was dialed, and the trust from the file applies to fetches.
    let r = json(&ok(field.path(), &["fetch", &p.base, "--json"]));
    assert_eq!(r["hash"], p.base.as_str(), "{r}");
    node.stop();
    // A file with an unknown key is refused with its name.
    std::fs::write(&cfg, "profil = \"field\"\n").unwrap();
    let (code, _, err) = run(field.path(), &["node", "run", "--config", s(&cfg)]);
    assert_eq!(code, 1);
    assert!(err.contains("node.toml") && err.contains("profil"), "{err}");
    seeder.stop();
}

#[test]
fn fetch_over_quic() {
    let p = publish(1);
    let mut seeder = NodeProc::start(p.home.path(), &["--listen", "/ip4/127.0.0.1/udp/0/quic-v1"]);
    let quic = seeder.wait_for("listening /ip4/127.0.0.1/udp/", Duration::from_secs(30));
    let quic = quic.trim_start_matches("listening ").to_string();
    assert!(quic.contains("/quic-v1/p2p/"), "{quic}");
    let field = tmpdir();
    ok(
        field.path(),
        &["fetch", &p.delta, "--peer", &quic, "--trust", &p.key],
    );
    assert_object(field.path(), &p.delta, &p.delta_file);
    assert_object(field.path(), &p.base, &p.base_file);
    seeder.stop();
}

#[test]
fn seeder_killed_and_restarted_mid_transfer_is_redialed_and_the_fetch_completes() {
    let p = publish(2);
    // ~1.5 MB/s so the transfer takes several seconds and the seeder can be killed midway.
    let rate = ["--max-upload-rate", "1500k"];
    let seeder = NodeProc::start(p.home.path(), &rate);
    let listen = seeder.addr.split("/p2p/").next().unwrap().to_string();
    let field = tmpdir();
    let a = at(
        field.path(),
        &fetch_json_args(&p.base, &seeder.addr, &p.key),
    );
    let fetch = spawn_zdn(&a);
    std::thread::sleep(Duration::from_millis(2500));
    // SIGKILL: no goodbye on the connection, the store as a crash leaves it. Down for longer
    // than the scheduler's own retries last (about 7 s of back-off before it drops a peer), so
    // only a re-dial can save the transfer.
    drop(seeder);
    std::thread::sleep(Duration::from_secs(10));
    // Same home (same peer id), same port.
    let seeder = NodeProc::start_on(p.home.path(), &listen, &rate);
    let out = wait_with_deadline(fetch, Duration::from_secs(180));
    assert!(
        out.status.success(),
        "the fetch did not survive the restart: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = json(&String::from_utf8_lossy(&out.stdout));
    eprintln!("{}", r["peers"]);
    let peer = &r["peers"][0];
    assert!(
        peer["reconnects"].as_u64().unwrap() >= 1,
        "no re-dial recorded: {r}"
    );
    assert!(r["chunks_resumed"].as_u64().unwrap() == 0, "{r}");
    assert_object(field.path(), &p.base, &p.base_file);
    seeder.stop();
}

/// Three site devices' nodes fetch from one station's node at once, round after round, each round
/// with fresh homes (new identities, new ports): every fetch succeeds at once, no request is asked
/// twice, no inbound stream is dropped at the station. Before: libp2p-stream handed inbound streams
/// over a channel of one and reset the second of two streams opened in the same turn of the swarm
/// (the device saw "connection is closed" on its first write; a fetch failed or waited ~4 s), and a
/// node dialing from its listening port collided with the previous round's TIME_WAIT connections
/// ("address already in use").
#[test]
fn devices_fetching_from_one_station_at_once_all_succeed_first_time() {
    let p = publish(2);
    let station = NodeProc::start(p.home.path(), &["--profile", "field"]);
    for round in 0..6 {
        let homes: Vec<tempfile::TempDir> = (0..3).map(|_| tmpdir()).collect();
        let devices: Vec<NodeProc> = homes
            .iter()
            .map(|h| {
                NodeProc::start(
                    h.path(),
                    &[
                        "--profile",
                        "edge",
                        "--peer",
                        &station.addr,
                        "--trust",
                        &p.key,
                    ],
                )
            })
            .collect();
        let fetches: Vec<_> = homes
            .iter()
            .map(|h| spawn_zdn(&at(h.path(), &["fetch", &p.base, "--json"])))
            .collect();
        for (i, f) in fetches.into_iter().enumerate() {
            let out = wait_with_deadline(f, Duration::from_secs(120));
            assert!(
                out.status.success(),
                "round {round}, device {i}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        for (i, d) in devices.into_iter().enumerate() {
            let stats = d.stop();
            assert_eq!(
                stats["asks_retried"], 0,
                "round {round}, device {i} asked again: {stats}"
            );
        }
    }
    let stats = station.stop();
    assert_eq!(stats["streams_dropped"], 0, "{stats}");
}
