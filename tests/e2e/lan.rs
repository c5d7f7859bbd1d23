//! mDNS on a real LAN segment: two network namespaces joined by a veth pair (one Ethernet segment,
//! multicast included). A device's node finds the station's node by mDNS alone — no `--peer`, no
//! DHT — and fetches an object through it, verified. Needs root (`ZDN_TEST_SKIP=netns` skips it,
//! counted).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use zdn_test_support::require::{require, Need};

use crate::common::net::*;
use crate::common::*;

/// Two namespaces on one veth segment (10.77.<n>.1 and .2), deleted on drop.
struct Segment {
    ns: [String; 2],
}

impl Segment {
    fn create(n: u8) -> Segment {
        let ns = [format!("zdnlan{n}a"), format!("zdnlan{n}b")];
        let ip = |args: &[&str]| {
            let out = Command::new("ip").args(args).output().unwrap();
            assert!(
                out.status.success(),
                "ip {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        for name in &ns {
            let _ = Command::new("ip").args(["netns", "del", name]).output();
            ip(&["netns", "add", name]);
            ip(&["-n", name, "link", "set", "lo", "up"]);
        }
        let seg = Segment { ns };
        let (a, b) = (&seg.ns[0], &seg.ns[1]);
        ip(&[
            "link", "add", "zdnv0", "netns", a, "type", "veth", "peer", "name", "zdnv1", "netns", b,
        ]);
        for (i, name) in seg.ns.iter().enumerate() {
            let dev = format!("zdnv{i}");
            let addr = format!("10.77.{n}.{}/24", i + 1);
            ip(&["-n", name, "addr", "add", &addr, "dev", &dev]);
            ip(&["-n", name, "link", "set", &dev, "up"]);
            // Multicast (mDNS: 224.0.0.251) goes out of the segment.
            ip(&["-n", name, "route", "add", "224.0.0.0/4", "dev", &dev]);
        }
        seg
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        for name in &self.ns {
            let _ = Command::new("ip").args(["netns", "del", name]).output();
        }
    }
}

/// `zdn node run` in namespace `ns`, its stdout lines on a channel; killed on drop.
struct NsNode {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl NsNode {
    fn start(ns: &str, home: &std::path::Path, extra: &[&str]) -> NsNode {
        let mut args = vec![
            "netns".to_string(),
            "exec".into(),
            ns.into(),
            env!("CARGO_BIN_EXE_zdn").into(),
        ];
        args.extend(at(home, &["node", "run"]));
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut child = Command::new("ip")
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let (tx, lines) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        NsNode { child, lines }
    }

    fn wait_for(&self, prefix: &str, within: Duration) -> String {
        let end = Instant::now() + within;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.starts_with(prefix) => return l,
                Ok(_) => {}
                Err(_) => panic!("no line starting with {prefix:?} within {within:?}"),
            }
        }
    }
}

impl Drop for NsNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `zdn ARGS` in namespace `ns` (a command that talks to the node there over its control socket).
fn zdn_in(ns: &str, home: &std::path::Path, a: &[&str]) -> std::process::Output {
    let mut args = vec![
        "netns".to_string(),
        "exec".into(),
        ns.into(),
        env!("CARGO_BIN_EXE_zdn").into(),
    ];
    args.extend(at(home, a));
    Command::new("ip").args(&args).output().unwrap()
}

#[test]
fn a_device_finds_the_station_by_mdns_and_fetches_through_it() {
    if !require(
        Need::Netns,
        "lan::a_device_finds_the_station_by_mdns_and_fetches_through_it",
    ) {
        return;
    }
    let p = publish(2);
    let seg = Segment::create(1);
    let station = NsNode::start(
        &seg.ns[0],
        p.home.path(),
        &["--profile", "edge", "--listen", "/ip4/10.77.1.1/tcp/4801"],
    );
    station.wait_for("listening ", Duration::from_secs(60));
    let device_home = tmpdir();
    let device = NsNode::start(
        &seg.ns[1],
        device_home.path(),
        &[
            "--profile",
            "edge",
            "--listen",
            "/ip4/10.77.1.2/tcp/4801",
            "--trust",
            &p.key,
        ],
    );
    device.wait_for("listening ", Duration::from_secs(60));
    // No --peer anywhere: only mDNS can introduce them.
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        let out = zdn_in(&seg.ns[1], device_home.path(), &["peers", "--json"]);
        let peers = json(&String::from_utf8_lossy(&out.stdout));
        if peers.as_array().is_some_and(|a| !a.is_empty()) {
            let addrs = peers[0]["addresses"].to_string();
            assert!(addrs.contains("10.77.1.1"), "found at {addrs}");
            break;
        }
        assert!(
            Instant::now() < end,
            "the device found no peer by mDNS within 60 s"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let out = zdn_in(
        &seg.ns[1],
        device_home.path(),
        &["fetch", &p.delta, "--json"],
    );
    assert!(
        out.status.success(),
        "fetch through the device's node: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = json(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(r["hash"], p.delta.as_str());
    assert_eq!(r["base"]["hash"], p.base.as_str(), "the base came first");
    drop(device);
    assert_object(device_home.path(), &p.delta, &p.delta_file);
    assert_object(device_home.path(), &p.base, &p.base_file);
}
