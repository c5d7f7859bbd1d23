//! Item 5, trust and gossip: untrusted announcements, replays, and names moving backwards.

use super::*;

/// A station that trusts one publisher (Q) is connected to a hub that forwards every valid
/// announcement, and the hub's own publisher (P), whom the station does not trust, announces
/// three objects. Then Q announces one through the hub. The station acts on Q's announcement and
/// bans no one: a valid manifest from an untrusted publisher is ignored, not blamed.
///
/// The old code counted each of P's three valid announcements against the hub that forwarded
/// them and banned it after the third, so Q's announcement never reached the station.
#[test]
fn item5_a_hub_forwarding_valid_untrusted_announcements_is_not_banned() {
    let p = publish(1);
    // A third object of P's.
    let other = json(&ok(
        p.home.path(),
        &[
            "add",
            s(&p.fine_file),
            "--name",
            "fine-full",
            "--chunk-size",
            "65536",
            "--json",
        ],
    ));
    let other = other["hash"].as_str().unwrap().to_string();
    let hub = NodeProc::start(p.home.path(), &["--trust-any"]);
    // Q: another publisher, with an object of its own.
    let q = tmpdir();
    let qobj = json(&ok(
        q.path(),
        &["add", s(&p.base_file), "--name", "q-base", "--json"],
    ));
    let qobj = qobj["hash"].as_str().unwrap().to_string();
    let qkey = ok(q.path(), &["key", "show"]).trim().to_string();
    let qnode = NodeProc::start(q.path(), &["--peer", &hub.addr]);
    let station_home = tmpdir();
    let station = NodeProc::start(
        station_home.path(),
        &["--peer", &hub.addr, "--trust", &qkey],
    );
    // Gossip meshes form on the heartbeat (1 s): give them a few.
    std::thread::sleep(Duration::from_secs(4));
    for h in [&p.base, &p.delta, &other] {
        ok(p.home.path(), &["announce", h]);
    }
    std::thread::sleep(Duration::from_secs(3));
    ok(q.path(), &["announce", &qobj]);
    let mut lines = Vec::new();
    let end = Instant::now() + Duration::from_secs(60);
    let got = loop {
        let left = end.saturating_duration_since(Instant::now());
        match station.lines.recv_timeout(left) {
            Ok(l) if l.starts_with("announced ") && l.contains(&qobj) => break true,
            Ok(l) => lines.push(l),
            Err(_) => break false,
        }
    };
    assert!(got, "Q's announcement never reached the station: {lines:?}");
    assert!(!lines.iter().any(|l| l.starts_with("banned ")), "{lines:?}");
    let peers = json(&ok(station_home.path(), &["peers", "--json"]));
    let hub_id = hub.addr.rsplit('/').next().unwrap();
    assert!(
        peers
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["peer"] == hub_id),
        "{peers}"
    );
    station.stop();
    qnode.stop();
    hub.stop();
}

/// Waits for a line starting with `prefix` and containing `needle`; `None` after `within`.
fn line_with(node: &mut NodeProc, prefix: &str, needle: &str, within: Duration) -> Option<String> {
    let end = Instant::now() + within;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        match node.lines.recv_timeout(left) {
            Ok(l) if l.starts_with(prefix) && l.contains(needle) => return Some(l),
            Ok(_) => {}
            Err(_) => return None,
        }
    }
}

/// A station auto-fetches a delta announced through its hub. The same announcement, sent again
/// after gossip's own duplicate cache (one minute) has forgotten it, is not acted on again: the
/// station remembers what it has seen.
///
/// The old code took the replay for a new announcement: it logged it and started a second
/// auto-fetch of the same object.
#[test]
fn item5_a_replayed_announcement_starts_nothing() {
    let p = publish(1);
    let hub = NodeProc::start(p.home.path(), &[]);
    let home = tmpdir();
    ok(home.path(), &fetch_json_args(&p.base, &hub.addr, &p.key));
    let mut station = NodeProc::start(
        home.path(),
        &[
            "--peer",
            &hub.addr,
            "--trust",
            &p.key,
            "--auto-fetch",
            "fine*",
            // About gossip: the catch-up on connecting would act first.
            "--no-catch-up",
        ],
    );
    std::thread::sleep(Duration::from_secs(4));
    ok(p.home.path(), &["announce", &p.delta]);
    let l = line_with(
        &mut station,
        "auto-fetch: ",
        &p.delta,
        Duration::from_secs(60),
    );
    assert!(l.is_some_and(|l| l.contains("fetched")));
    // Both sides' gossip caches forget a message after 60 s — the hub's own once it publishes
    // something else (gossipsub drops expired entries when it adds one).
    std::thread::sleep(Duration::from_secs(65));
    ok(p.home.path(), &["announce", &p.base]);
    ok(p.home.path(), &["announce", &p.delta]);
    let again = line_with(
        &mut station,
        "announced ",
        &p.delta,
        Duration::from_secs(15),
    );
    assert_eq!(again, None, "the replay was acted on");
    station.stop();
    hub.stop();
}

/// The publisher's hub announces version 2 of `fine`, which the station auto-fetches; then an
/// attacker replays version 1's (older, validly signed) announcement, which the station fetches
/// too. `fine` still names version 2 afterwards; `zdn rollback` moves it back on purpose.
///
/// The old code pointed a name at whatever was committed last: the replay rolled `fine` back to
/// version 1.
#[test]
fn item5_a_replayed_older_version_does_not_move_a_name_back() {
    let p = publish(1);
    // Version 2: another delta of the same pair (2-bit), added a second later under the same name.
    let v2_file = p.home.path().join("fine-2bit.bitdelta");
    ok(
        p.home.path(),
        &[
            "delta",
            "encode",
            "--base",
            s(&p.base_file),
            "--finetuned",
            s(&p.fine_file),
            "--bits",
            "2",
            "-o",
            s(&v2_file),
        ],
    );
    std::thread::sleep(Duration::from_millis(1100));
    let v2 = json(&ok(
        p.home.path(),
        &[
            "add",
            s(&v2_file),
            "--base",
            "base",
            "--name",
            "fine",
            "--model-version",
            "2",
            "--chunk-size",
            "65536",
            "--json",
        ],
    ));
    let v2 = v2["hash"].as_str().unwrap().to_string();
    let hub = NodeProc::start(p.home.path(), &[]);
    let home = tmpdir();
    ok(home.path(), &fetch_json_args(&p.base, &hub.addr, &p.key));
    let mut station = NodeProc::start(
        home.path(),
        &[
            "--peer",
            &hub.addr,
            "--trust",
            &p.key,
            "--auto-fetch",
            "fine*",
            // About gossip: the catch-up on connecting would act first.
            "--no-catch-up",
        ],
    );
    std::thread::sleep(Duration::from_secs(4));
    for h in [&v2, &p.delta] {
        ok(p.home.path(), &["announce", h]);
        let l = line_with(&mut station, "auto-fetch: ", h, Duration::from_secs(60));
        assert!(l.is_some_and(|l| l.contains("fetched")), "{h}");
    }
    // `get` opens the store itself: once the node has stopped.
    station.stop();
    assert_object(home.path(), &v2, &v2_file);
    assert_object(home.path(), &p.delta, &p.delta_file);
    let named = home.path().join("named");
    ok(home.path(), &["get", "fine", "-o", s(&named)]);
    assert_eq!(
        std::fs::read(&named).unwrap(),
        std::fs::read(&v2_file).unwrap(),
        "`fine` moved back to the replayed older version"
    );
    // Rolling back on purpose.
    ok(home.path(), &["rollback", &p.delta]);
    ok(home.path(), &["get", "fine", "-o", s(&named)]);
    assert_eq!(
        std::fs::read(&named).unwrap(),
        std::fs::read(&p.delta_file).unwrap()
    );
    hub.stop();
}

/// A copy of `home` with its own node identity (its store's node.key left out): the same objects
/// and publisher key, another peer id.
fn copy_home(home: &std::path::Path) -> tempfile::TempDir {
    fn copy(from: &std::path::Path, to: &std::path::Path) {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            let (src, dst) = (e.path(), to.join(e.file_name()));
            if e.file_type().unwrap().is_dir() {
                copy(&src, &dst);
            } else if e.file_name() != "node.key" {
                std::fs::copy(&src, &dst).unwrap();
            }
        }
    }
    let out = tmpdir();
    copy(home, out.path());
    out
}

/// A manifest too big for gossip travels as an announcement by hash. A peer that claims a trusted
/// publisher for a hash it made up (a node with the publisher's objects, made to forge by a fault)
/// is refused: the announcement's signature is not the publisher's, so the station neither logs
/// nor fetches it, and bans the forger after the third. The genuine announcement of the same
/// object, by the publisher's node, is acted on.
///
/// The old code did not sign announcements by hash: the station took the made-up hash for the
/// trusted publisher's, logged it and started an auto-fetch of it.
#[test]
fn item5_an_announcement_by_hash_its_publisher_did_not_sign_is_refused() {
    let p = publish(2);
    let big = add_big_delta(&p);
    let forger_home = copy_home(p.home.path());
    let forger = NodeProc::start(forger_home.path(), &["--fault", "forged-announcements"]);
    let honest = NodeProc::start(p.home.path(), &[]);
    let home = tmpdir();
    ok(home.path(), &fetch_json_args(&p.base, &honest.addr, &p.key));
    let mut station = NodeProc::start(
        home.path(),
        &[
            "--peer",
            &forger.addr,
            "--peer",
            &honest.addr,
            "--trust",
            &p.key,
            "--auto-fetch",
            "fine*",
            // About gossip: the catch-up on connecting would act first.
            "--no-catch-up",
        ],
    );
    std::thread::sleep(Duration::from_secs(4));
    let forger_id = forger.addr.rsplit('/').next().unwrap().to_string();
    for _ in 0..3 {
        ok(forger_home.path(), &["announce", &big]);
    }
    let mut lines = Vec::new();
    let end = Instant::now() + Duration::from_secs(60);
    let banned = loop {
        let left = end.saturating_duration_since(Instant::now());
        match station.lines.recv_timeout(left) {
            Ok(l) if l.starts_with("banned ") => break l,
            Ok(l) => lines.push(l),
            Err(_) => panic!("the forger was not banned: {lines:?}"),
        }
    };
    assert!(
        banned.contains(&forger_id) && banned.contains("its publisher did not sign"),
        "{banned}"
    );
    assert!(
        !lines
            .iter()
            .any(|l| l.starts_with("announced") || l.starts_with("auto-fetch")),
        "a forged announcement was acted on: {lines:?}"
    );
    // The publisher's node announces the real object: the station fetches it.
    ok(p.home.path(), &["announce", &big]);
    let l = line_with(&mut station, "auto-fetch: ", &big, Duration::from_secs(120));
    assert!(l.as_ref().is_some_and(|l| l.contains("fetched")), "{l:?}");
    station.stop();
    honest.stop();
    forger.stop();
}
