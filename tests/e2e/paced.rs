//! End-to-end tests of the paced lane (`--link-rate`): real `zdn` processes on loopback, chunks
//! sent as paced UDP datagrams and verified before they are stored; a seeder whose datagrams carry
//! corrupt chunks makes the lane stop and the chunk streams finish (and ban it). The lane on a
//! lossy satellite link with outages: simulations/ (`zdn-sim`, docs/field.md).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use crate::common::net::*;
use crate::common::*;

#[test]
fn fetch_over_the_paced_lane_is_verified_and_paced() {
    let p = publish(2);
    let seeder = NodeProc::start(p.home.path(), &[]);
    let field = tmpdir();
    // 40 Mbit/s: the base (17 MB stored) and the delta.
    let mut a = fetch_json_args(&p.delta, &seeder.addr, &p.key).to_vec();
    a.extend(["--link-rate", "40Mbit"]);
    let r = json(&ok(field.path(), &a));
    for (what, r) in [("delta", &r), ("base", &r["base"])] {
        let lane = &r["paced"];
        assert!(lane.is_object(), "{what}: no paced lane in {r}");
        assert_eq!(
            lane["chunks"], r["chunks"],
            "{what}: the lane brought every chunk: {r}"
        );
        assert!(lane.get("stopped").is_none(), "{what}: {lane}");
        assert!(lane["sessions"].as_u64().unwrap() >= 1);
        // Every datagram's payload counted; on loopback nothing is lost, so nothing is repeated.
        assert_eq!(lane["duplicates"], 0, "{what}: {lane}");
    }
    assert_object(field.path(), &p.delta, &p.delta_file);
    assert_object(field.path(), &p.base, &p.base_file);
    let verify = run(field.path(), &["verify"]);
    assert_eq!(verify.0, 0, "{}", verify.1);

    // Paced, not blasted: at 2 Mbit/s the delta takes at least its serialisation time (its base
    // comes on a disk, a bundle). The lane's IP bytes are the payload plus 32 bytes a datagram.
    let slow = tmpdir();
    let bundle = field.path().join("base.zdnb");
    ok(field.path(), &["export", &p.base, "-o", s(&bundle)]);
    ok(slow.path(), &["import", s(&bundle), "--trust-any"]);
    let stored = r["bytes_received"].as_u64().unwrap();
    let t = Instant::now();
    let mut a = fetch_json_args(&p.delta, &seeder.addr, &p.key).to_vec();
    a.extend(["--link-rate", "2Mbit"]);
    let r2 = json(&ok(slow.path(), &a));
    let took = t.elapsed().as_secs_f64();
    let wire_floor = stored as f64 * 8.0 / 2e6;
    eprintln!("2 Mbit/s: {stored} bytes in {took:.2} s (payload alone {wire_floor:.2} s)");
    assert!(
        took >= wire_floor,
        "{stored} bytes at 2 Mbit/s in {took:.2} s"
    );
    assert_eq!(r2["paced"]["chunks"], r2["chunks"], "{r2}");
    assert_object(slow.path(), &p.delta, &p.delta_file);
    seeder.stop();
}

/// A chunk that fails verification on the lane is its sender's doing (the datagrams are sealed
/// under a key only the two ends hold): the liar is banned, and the lane goes on from the next
/// peer, which brings every chunk.
#[test]
fn corrupt_paced_data_bans_the_liar_and_the_lane_goes_on_from_the_next_peer() {
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
            "--link-rate",
            "40Mbit",
            "--json",
        ],
    ));
    let lane = &r["paced"];
    let liar_id = liar.addr.rsplit('/').next().unwrap();
    let honest_id = honest.addr.rsplit('/').next().unwrap();
    assert_eq!(lane["peer"], honest_id, "{r}");
    assert_eq!(lane["chunks"], r["chunks"], "{r}");
    let liar_part = r["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["peer"] == liar_id)
        .cloned();
    assert!(liar_part.is_some_and(|x| x["banned"] == true), "{r}");
    assert_object(field.path(), &p.base, &p.base_file);
    let verify = run(field.path(), &["verify"]);
    assert_eq!(verify.0, 0, "{}", verify.1);
    honest.stop();
    liar.stop();
}

#[test]
fn a_seeder_restarted_mid_lane_is_asked_again_and_the_lane_finishes() {
    let p = publish(2);
    let seeder = NodeProc::start(p.home.path(), &[]);
    let listen = seeder.addr.split("/p2p/").next().unwrap().to_string();
    let field = tmpdir();
    // The base (17 MB stored) at 8 Mbit/s: about 17 s, so the seeder can be killed midway.
    let mut a = at(
        field.path(),
        &fetch_json_args(&p.base, &seeder.addr, &p.key),
    );
    a.extend(["--link-rate".into(), "8Mbit".into()]);
    let fetch = spawn_zdn(&a);
    std::thread::sleep(Duration::from_secs(4));
    // SIGKILL, down for 8 s (as a link outage or a crash would leave it), then back on the same
    // home (same peer id) and port, with a new UDP port for the lane.
    drop(seeder);
    std::thread::sleep(Duration::from_secs(8));
    let seeder = NodeProc::start_on(p.home.path(), &listen, &[]);
    let out = wait_with_deadline(fetch, Duration::from_secs(180));
    assert!(
        out.status.success(),
        "the fetch did not survive the restart: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = json(&String::from_utf8_lossy(&out.stdout));
    let lane = &r["paced"];
    // The lane itself brought every chunk: asked again, not handed to the chunk streams.
    assert_eq!(lane["chunks"], r["chunks"], "{r}");
    assert!(lane.get("stopped").is_none(), "{lane}");
    assert!(lane["resumes"].as_u64().unwrap() >= 1, "{lane}");
    assert!(lane["sessions"].as_u64().unwrap() >= 2, "{lane}");
    assert_object(field.path(), &p.base, &p.base_file);
    seeder.stop();
}

#[test]
fn the_lane_stops_when_the_sync_window_closes_and_resumes_in_the_next() {
    let p = publish(2);
    let seeder = NodeProc::start(p.home.path(), &[]);
    let field = tmpdir();
    // A window that closes 5 s from now and the next one 10 s from now; the base (17 MB stored)
    // takes about 17 s at 8 Mbit/s, so the gap falls in the middle of it.
    let (now_w, next_w) = (sync_window(-60, 5), sync_window(10, 3600));
    let mut a = fetch_json_args(&p.base, &seeder.addr, &p.key).to_vec();
    a.extend([
        "--link-rate",
        "8Mbit",
        "--sync-window",
        &now_w,
        "--sync-window",
        &next_w,
    ]);
    let t = Instant::now();
    let r = json(&ok(field.path(), &a));
    let took = t.elapsed().as_secs_f64();
    let lane = &r["paced"];
    assert_eq!(lane["chunks"], r["chunks"], "{r}");
    assert!(lane["sessions"].as_u64().unwrap() >= 2, "{lane}");
    // Nothing crossed in the gap: the payload's time on the link plus the gap (4 s at least,
    // whole seconds) is a floor. Without the pause this took the payload's time plus ~1 s.
    let wire = r["bytes_received"].as_u64().unwrap() as f64 * 8.0 / 8e6;
    eprintln!("{took:.1} s for {wire:.1} s of payload at 8 Mbit/s");
    assert!(took >= wire + 4.0, "{took:.1} s, payload alone {wire:.1} s");
    assert_object(field.path(), &p.base, &p.base_file);
    seeder.stop();
}

#[test]
fn a_dead_seeder_hands_the_lane_to_the_next_peer_not_after_the_outage_patience() {
    let p = publish(2);
    let (_home, survivor, doomed) = two_seeders(&p, &[]);
    let field = tmpdir();
    // A field fetch (45 minutes of outage patience for its last peer), the doomed seeder asked
    // first. The base (17 MB stored) at 8 Mbit/s takes about 17 s.
    let a = at(
        field.path(),
        &[
            "fetch",
            &p.base,
            "--peer",
            &doomed.addr,
            "--peer",
            &survivor.addr,
            "--trust",
            &p.key,
            "--profile",
            "field",
            "--no-mdns",
            "--link-rate",
            "8Mbit",
            "--json",
        ],
    );
    let t = Instant::now();
    let fetch = spawn_zdn(&a);
    std::thread::sleep(Duration::from_secs(4));
    drop(doomed); // SIGKILL, never back
                  // Not the last peer: the lane hands over to the other at once instead of waiting for it.
    let out = wait_with_deadline(fetch, Duration::from_secs(240));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let took = t.elapsed();
    let r = json(&String::from_utf8_lossy(&out.stdout));
    eprintln!("{took:?}: {}", r["paced"]);
    // The lane went on with the survivor (not the chunk streams, and not after 45 minutes).
    let survivor_id = survivor.addr.rsplit('/').next().unwrap();
    assert_eq!(r["paced"]["peer"], survivor_id, "{r}");
    assert!(r["paced"].get("stopped").is_none(), "{r}");
    assert_object(field.path(), &p.base, &p.base_file);
    survivor.stop();
}

/// The `.held` files (claims of partly received chunks) under a home.
fn held_claims(home: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut dirs = vec![home.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "held") {
                found.push(p);
            }
        }
    }
    found
}

/// Bytes claimed, and the chunk's stored length, by a `.held` file (`net/paced/partial.rs`:
/// magic 8 | stored_len u32 | n u32 | n × (start u32 | len u32) | check 16); `None` if unreadable.
fn claimed(path: &std::path::Path) -> Option<(u64, u64)> {
    let b = std::fs::read(path).ok()?;
    let word = |i: usize| -> Option<u64> {
        Some(u32::from_le_bytes(b.get(i..i + 4)?.try_into().ok()?).into())
    };
    let (stored, n) = (word(8)?, word(12)?);
    let held = (0..n)
        .map(|i| word(20 + 8 * i as usize))
        .sum::<Option<u64>>()?;
    Some((held, stored))
}

#[test]
fn a_fetch_killed_inside_a_chunk_resumes_inside_it() {
    let p = publish(2);
    let seeder = NodeProc::start(p.home.path(), &[]);
    let field = tmpdir();
    // At 256 kbit/s a chunk of the base (about 52 kB stored) takes 1.6 s; what arrived of the one
    // in flight is written to disk every 2 s. Kill -9 the fetch as soon as a chunk is claimed
    // with 4 kB held and 4 kB (130 ms of link time) still missing.
    let mut a = at(
        field.path(),
        &fetch_json_args(&p.base, &seeder.addr, &p.key),
    );
    a.extend(["--link-rate".into(), "256kbit".into()]);
    let mut fetch = spawn_zdn(&a);
    let end = Instant::now() + Duration::from_secs(120);
    let held = loop {
        let inside = held_claims(field.path())
            .iter()
            .filter_map(|c| claimed(c))
            .find(|&(held, stored)| held >= 4096 && held + 4096 <= stored);
        if let Some((held, _)) = inside {
            break held;
        }
        assert!(
            Instant::now() < end,
            "no chunk partly received on disk in 120 s"
        );
        assert!(fetch.try_wait().unwrap().is_none(), "the fetch ended first");
        std::thread::sleep(Duration::from_millis(10));
    };
    fetch.kill().unwrap(); // SIGKILL
    fetch.wait().unwrap();

    // Again: the request names the byte ranges held, the sender skips them, and the chunk they
    // belong to verifies (its bytes came from two processes).
    let mut a = fetch_json_args(&p.base, &seeder.addr, &p.key).to_vec();
    a.extend(["--link-rate", "40Mbit"]);
    let r = json(&ok(field.path(), &a));
    let lane = &r["paced"];
    eprintln!("{held} bytes of a chunk held at the kill; after it: {lane}");
    let stored_before = r["chunks_resumed"].as_u64().unwrap();
    assert_eq!(
        lane["chunks"].as_u64().unwrap() + stored_before,
        r["chunks"].as_u64().unwrap(),
        "{r}"
    );
    assert!(lane.get("stopped").is_none(), "{lane}");
    assert!(lane["held_bytes"].as_u64().unwrap() >= held, "{lane}");
    assert_eq!(lane["held_rejected"], 0, "{lane}");
    assert_object(field.path(), &p.base, &p.base_file);
    let verify = run(field.path(), &["verify"]);
    assert_eq!(verify.0, 0, "{}", verify.1);
    // Every chunk complete: no claim is left behind.
    assert!(
        held_claims(field.path()).is_empty(),
        "{:?}",
        held_claims(field.path())
    );
    seeder.stop();
}

#[test]
fn a_lane_session_rides_out_an_outage_in_one_session() {
    let p = publish(2);
    let seeder = NodeProc::start(p.home.path(), &[]);
    let field = tmpdir();
    // The base (17 MB stored) at 8 Mbit/s: about 17 s. Three seconds in, the seeder is frozen
    // (SIGSTOP) for 40 s: to the fetch, the link is down both ways, longer than the sender's
    // 30 s without a word after which it stops and waits for a probe.
    let mut a = at(
        field.path(),
        &fetch_json_args(&p.base, &seeder.addr, &p.key),
    );
    a.extend(["--link-rate".into(), "8Mbit".into()]);
    let fetch = spawn_zdn(&a);
    std::thread::sleep(Duration::from_secs(3));
    let pid = seeder.child.id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-STOP", &pid])
        .status()
        .unwrap()
        .success());
    std::thread::sleep(Duration::from_secs(40));
    assert!(std::process::Command::new("kill")
        .args(["-CONT", &pid])
        .status()
        .unwrap()
        .success());
    let out = wait_with_deadline(fetch, Duration::from_secs(180));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = json(&String::from_utf8_lossy(&out.stdout));
    let lane = &r["paced"];
    eprintln!("through the outage: {lane}");
    // One session carried it all: not asked again, not handed to the chunk streams.
    assert_eq!(lane["chunks"], r["chunks"], "{r}");
    assert!(lane.get("stopped").is_none(), "{lane}");
    assert_eq!(lane["sessions"], 1, "{lane}");
    assert_eq!(lane["resumes"], 0, "{lane}");
    assert_object(field.path(), &p.base, &p.base_file);
    seeder.stop();
}

/// An object over a session's 64 MiB comes in several sessions, and each next one is asked for
/// while the one before is ending (its request, answer and path check run behind that one's last
/// bytes), so a large object's sessions follow each other without the link idling in between.
#[test]
fn a_large_object_comes_in_sessions_asked_for_before_the_last_one_ends() {
    let home = tmpdir();
    let file = home.path().join("big.safetensors");
    // 72 MiB of bytes that do not compress: two sessions.
    let n = 72usize << 20;
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let bytes: Vec<u8> = (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    write_model(
        &file,
        &[T {
            name: "w".into(),
            dtype: zdn_protocol::DType::U8,
            shape: vec![n as u64],
            bytes,
        }],
    );
    let add = json(&ok(
        home.path(),
        &["add", s(&file), "--name", "big", "--json"],
    ));
    let hash = add["hash"].as_str().unwrap().to_string();
    let key = ok(home.path(), &["key", "show"]).trim().to_string();
    let seeder = NodeProc::start(home.path(), &[]);
    let field = tmpdir();
    let mut a = fetch_json_args(&hash, &seeder.addr, &key).to_vec();
    a.extend(["--link-rate", "200Mbit"]);
    let r = json(&ok(field.path(), &a));
    let lane = &r["paced"];
    eprintln!("two sessions: {lane}");
    assert_eq!(
        lane["chunks"], r["chunks"],
        "the lane brought every chunk: {r}"
    );
    assert!(lane.get("stopped").is_none(), "{lane}");
    assert_eq!(lane["sessions"], 2, "{lane}");
    assert_eq!(
        lane["overlapped"], 1,
        "the second asked for before the first ended: {lane}"
    );
    assert_eq!(lane["duplicates"], 0, "{lane}");
    assert_object(field.path(), &hash, &file);
    seeder.stop();
}
