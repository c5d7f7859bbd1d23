//! The scenario runner: the shipped scenario files are valid, bad ones are refused with a
//! reason, and `zdn-sim scenario ci-short.toml` runs real zdn nodes end to end — the fetches
//! complete and verify, the report has its fields, the satellite carried at least the payload
//! (and about one copy for three fetchers), the plot is a PNG. Behaviour, not speed.
//!
//! The end-to-end test needs root, `ip` and /dev/net/tun (it says so and passes without running
//! where they are missing) and the `zdn` binary of this build (`cargo test --workspace` builds
//! it; `cargo build -p zdn` otherwise).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use zdn_simulations::scenario::spec::Place;
use zdn_simulations::scenario::Scenario;

const SIM: &str = env!("CARGO_BIN_EXE_zdn-sim");

fn scenarios_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios")
}

fn parse(name: &str, text: &str) -> Result<Scenario, String> {
    Scenario::parse(name, text).map_err(|e| e.to_string())
}

#[test]
fn shipped_scenarios_are_valid() {
    let mut seen = 0;
    for e in std::fs::read_dir(scenarios_dir()).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "toml") {
            let text = std::fs::read_to_string(&p).unwrap();
            parse(&p.display().to_string(), &text).unwrap();
            seen += 1;
        }
    }
    assert!(seen >= 4, "{seen} scenario files");
    // The issue's one-station scenario is what it asks for.
    let text = std::fs::read_to_string(scenarios_dir().join("one-station.toml")).unwrap();
    let s = parse("one-station.toml", &text).unwrap();
    assert_eq!(s.link.rate_bps, 1_000_000);
    assert_eq!(s.link.delay, Duration::from_millis(300));
    assert_eq!(s.link.loss, 0.01);
    assert_eq!(s.link.outages.len(), 2);
    assert!(s
        .link
        .outages
        .iter()
        .all(|o| o.to - o.from == Duration::from_secs(30)));
    assert_eq!(s.fetches.len(), 2);
}

const MINIMAL: &str = r#"
[link]
rate = "1mbit"
delay = "300ms"
[[node]]
name = "dc"
place = "datacenter"
[[node]]
name = "st"
place = "station"
[[node]]
name = "dev"
place = "lan"
[[object]]
name = "x"
generated = "1MiB"
[[fetch]]
node = "st"
object = "x"
"#;

#[test]
fn a_minimal_scenario_gets_defaults() {
    let s = parse("minimal.toml", MINIMAL).unwrap();
    assert_eq!(s.name, "minimal");
    assert_eq!(s.nodes[2].place, Place::Lan);
    assert_eq!(s.nodes[2].station, Some(1));
    assert_eq!(s.nodes[1].profile, "field");
    // A fetch without `from` uses the node's uplink peer.
    assert_eq!(s.fetches[0].from, vec![0]);
    assert_eq!(s.link.queue_bytes, 125_000);
    assert!(s.reference_tcp);
}

#[test]
fn bad_scenarios_are_refused_with_a_reason() {
    let cases = [
        (
            MINIMAL.replace("delay = \"300ms\"", "delay = \"300ms\"\nspeed = 3"),
            "speed",
        ),
        (MINIMAL.replace("1mbit", "fast"), "rate"),
        (
            MINIMAL.replace("place = \"station\"", "place = \"datacenter\""),
            "datacenter",
        ),
        (
            MINIMAL.replace("node = \"st\"", "node = \"dev\"\nfrom = [\"dc\"]"),
            "share no link",
        ),
        (MINIMAL.replace("generated = \"1MiB\"", ""), "exactly one"),
        (
            MINIMAL.replace("object = \"x\"", "object = \"y\""),
            "no object",
        ),
    ];
    for (text, why) in cases {
        let e = parse("bad.toml", &text).unwrap_err();
        assert!(e.contains(why), "{e:?} should mention {why:?}");
    }
}

#[path = "../../tests/support/src/require.rs"]
mod require;
use require::{require, Need};

/// `target/<profile>/zdn`: this test runs as `target/<profile>/deps/scenario-<hash>`.
fn zdn_binary() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let p = exe.parent()?.parent()?.join("zdn");
    p.is_file().then_some(p)
}

#[test]
fn ci_short_scenario_runs_real_nodes_end_to_end() {
    if !require(Need::Netns, "ci_short_scenario_runs_real_nodes_end_to_end") {
        return;
    }
    // `cargo test --workspace` (the README's test command) builds zdn before any test runs.
    let zdn = zdn_binary().expect(
        "no zdn binary next to the test's target directory: build it first (`cargo build -p zdn`)",
    );
    let out = std::env::temp_dir().join(format!("zdn-sim-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let run = Command::new(SIM)
        .arg("scenario")
        .arg(scenarios_dir().join("ci-short.toml"))
        .arg("--zdn")
        .arg(&zdn)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    eprintln!("{stdout}{stderr}");
    assert!(run.status.success(), "zdn-sim failed: {stderr}");

    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("ci-short.json")).unwrap()).unwrap();
    assert_eq!(r["ok"], true);
    // 3 MiB of random bytes in a safetensors file.
    assert!(r["objects"][0]["object_len"].as_u64().unwrap() > 3 << 20);
    assert!(r["error"].is_null());
    let fetches = r["fetches"].as_array().unwrap();
    assert_eq!(fetches.len(), 3);
    for f in fetches {
        assert_eq!(f["completed"], true, "{f}");
        assert_eq!(f["verified"], true, "{f}");
        assert!(f["seconds"].as_f64().unwrap() > 0.0);
        // ci-short.toml allows no retry: every fetch succeeds at its first attempt, the two site
        // devices fetching from the station at once included.
        assert_eq!(f["attempts"].as_u64(), Some(1), "{f}");
        assert_eq!(f["zdn_report"]["object_len"], r["objects"][0]["object_len"]);
    }
    assert_eq!(fetches[0]["over_satellite"], true);
    // The station's lane: goodput while the link is up (1 % loss, a 4 s outage, start-up included).
    let goodput = fetches[0]["goodput"].as_f64().unwrap();
    assert!(goodput >= 0.6, "station goodput {goodput}");
    // What arrived twice (a retransmission of a packet already here) is rare.
    let lane = &fetches[0]["zdn_report"]["paced"];
    let (datagrams, duplicates) = (
        lane["datagrams"].as_u64().unwrap(),
        lane["duplicates"].as_u64().unwrap(),
    );
    assert!(
        duplicates * 100 <= datagrams * 3,
        "{duplicates} of {datagrams} datagrams arrived twice"
    );
    // Resent bytes: what the lane delivered (duplicates included) is at most 3 % over the object.
    let object_len = r["objects"][0]["object_len"].as_u64().unwrap();
    let lane_bytes = lane["payload_bytes"].as_u64().unwrap();
    assert!(
        lane_bytes * 100 <= object_len * 103,
        "the lane delivered {lane_bytes} payload bytes for a {object_len}-byte object"
    );
    assert_eq!(fetches[1]["over_satellite"], false);

    let sat = &r["satellite"][0];
    assert_eq!(sat["station"], "station");
    let payload = sat["payload_bytes"].as_u64().unwrap();
    assert!(
        payload >= 3 << 20,
        "random bytes do not compress: {payload}"
    );
    let down = sat["down_ip_bytes"].as_u64().unwrap();
    assert!(down >= payload, "the satellite carried {down} < {payload}");
    // Three fetchers at the site, one copy over the satellite.
    assert!(down < payload * 3 / 2, "{down} bytes down for {payload}");
    let sat_goodput = sat["goodput"].as_f64().unwrap();
    assert!(sat_goodput >= 0.6, "satellite goodput {sat_goodput}");
    let reference = &sat["reference"];
    assert_eq!(reference["completed"], true, "{reference}");
    assert_eq!(reference["bytes"].as_u64(), Some(payload));
    let tcp = reference["goodput"].as_f64().unwrap();
    assert!(
        (sat_goodput / tcp - sat["zdn_over_tcp"].as_f64().unwrap()).abs() < 1e-6,
        "zdn_over_tcp is zdn's goodput over TCP's"
    );
    // The lane is not worse than TCP carrying the same bytes through a fresh identical link.
    let vs_tcp = sat["zdn_over_tcp"].as_f64().unwrap();
    assert!(vs_tcp >= 0.9, "zdn / TCP goodput {vs_tcp}");

    let series = &r["series"];
    let t = series["t"].as_array().unwrap();
    assert!(t.len() > 10);
    let nodes = series["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 4);
    // Restart after the outage (6–10 s from the link's start, in the middle of the station's
    // fetch): data flows again (16 kB more at the station) within the lane's probe interval (4 s)
    // + 2 round trips (0.4 s) + one sample (0.25 s) of the link's return (docs/spec/lane.md).
    let station = nodes.iter().find(|n| n["name"] == "station").unwrap();
    let received: Vec<u64> = station["received"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    let times: Vec<f64> = t.iter().map(|v| v.as_f64().unwrap()).collect();
    let at_return = times.iter().position(|&x| x >= 10.0).unwrap();
    let resumed = (at_return..times.len())
        .find(|&i| received[i] >= received[at_return] + 16_000)
        .map(|i| times[i] - 10.0);
    assert!(
        fetches[0]["finished_s"].as_f64().unwrap() > 10.0,
        "the station's fetch ended before the link returned: the restart is not measured"
    );
    let resumed = resumed.expect("no data at the station after the outage");
    assert!(
        resumed <= 4.65,
        "data resumed {resumed:.2} s after the link returned"
    );
    for n in nodes {
        let rx: Vec<u64> = n["received"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        assert_eq!(rx.len(), t.len());
        assert!(rx.windows(2).all(|w| w[0] <= w[1]), "cumulative: {n}");
    }
    assert_eq!(r["link"]["outages"][0][0], 6.0);
    // The lane restarts at once when the link returns: the station receives data within 1 s of
    // the outage's end (a 200 ms round trip and 250 ms samples).
    let end = r["link"]["outages"][0][1].as_f64().unwrap();
    let station = nodes.iter().find(|n| n["name"] == "station").unwrap();
    let rx: Vec<u64> = station["received"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    let times: Vec<f64> = t.iter().map(|v| v.as_f64().unwrap()).collect();
    let k = times.iter().position(|&x| x >= end).unwrap();
    let back = (k..rx.len() - 1)
        .find(|&i| rx[i + 1] > rx[i])
        .map(|i| times[i + 1] - end)
        .expect("data after the outage");
    assert!(
        back <= 1.0,
        "first data {back:.2} s after the link returned"
    );
    // The datacenter's only link is the satellite.
    assert_eq!(r["nodes"][0]["sent_ip_bytes"].as_u64(), Some(down));

    let png = std::fs::read(out.join("ci-short.png")).unwrap();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"));
    assert_eq!(r["plot"], "ci-short.png");
    std::fs::remove_dir_all(&out).unwrap();
}
