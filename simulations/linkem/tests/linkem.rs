//! The emulator is faithful: with real namespaces, TUN devices and UDP traffic through
//! `zdn-linkem up`, the measured rate is within 2 % of the set rate, the added delay within 5 ms
//! of the set delay, and loss within statistical bounds. Needs root, `ip` and /dev/net/tun: where
//! they are missing the tests fail, unless skipped explicitly (`ZDN_TEST_SKIP=netns`, counted).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_zdn-linkem");

#[path = "../../../tests/support/src/require.rs"]
mod require;
use require::{require, Need};

struct Link {
    child: Child,
    ns_a: String,
    ns_b: String,
    addr_b: String,
}

impl Link {
    fn up(name: &str, subnet: u8, opts: &[&str]) -> Link {
        let mut child = Command::new(BIN)
            .args(["up", name, "--subnet", &subnet.to_string(), "--secs", "120"])
            .args(opts)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let a = lines.next().unwrap().unwrap();
        let b = lines.next().unwrap().unwrap();
        assert_eq!(lines.next().unwrap().unwrap(), "ready");
        let a: Vec<&str> = a.split(' ').collect();
        let b: Vec<&str> = b.split(' ').collect();
        Link {
            child,
            ns_a: a[1].into(),
            ns_b: b[1].into(),
            addr_b: b[2].into(),
        }
    }

    fn exec(&self, ns: &str, args: &[&str]) -> Child {
        Command::new("ip")
            .args(["netns", "exec", ns, BIN])
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap()
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

fn json(c: Child) -> serde_json_lite::Value {
    let out = c.wait_with_output().unwrap();
    serde_json_lite::parse(&String::from_utf8_lossy(&out.stdout))
}

/// A tiny reader for the flat JSON the tool prints (numbers and one array of numbers).
mod serde_json_lite {
    use std::collections::HashMap;

    #[derive(Debug)]
    pub struct Value(pub HashMap<String, Vec<f64>>);

    impl Value {
        pub fn num(&self, k: &str) -> f64 {
            self.0[k][0]
        }
        pub fn list(&self, k: &str) -> &[f64] {
            &self.0[k]
        }
    }

    pub fn parse(s: &str) -> Value {
        let s = s.trim().trim_start_matches('{').trim_end_matches('}');
        let mut m = HashMap::new();
        let mut rest = s;
        while let Some(start) = rest.find('"') {
            let after = &rest[start + 1..];
            let end = after.find('"').unwrap();
            let key = after[..end].to_string();
            let v = after[end + 1..].trim_start_matches(':');
            let (val, next) = if let Some(arr) = v.strip_prefix('[') {
                let close = arr.find(']').unwrap();
                let nums = arr[..close]
                    .split(',')
                    .filter(|x| !x.is_empty())
                    .map(|x| x.trim().parse().unwrap())
                    .collect();
                (nums, &arr[close + 1..])
            } else {
                let close = v.find(',').unwrap_or(v.len());
                (vec![v[..close].trim().parse().unwrap()], &v[close..])
            };
            m.insert(key, val);
            rest = next;
        }
        Value(m)
    }
}

#[test]
fn rate_is_within_two_percent() {
    if !require(Need::Netns, "rate_is_within_two_percent") {
        return;
    }
    let link = Link::up(
        "lkrate",
        11,
        &["--rate", "2mbit", "--delay", "20ms", "--queue", "200000"],
    );
    let to = format!("{}:9001", link.addr_b);
    let sink = link.exec(&link.ns_b, &["udp-sink", "0.0.0.0:9001", "8"]);
    std::thread::sleep(Duration::from_millis(300));
    // Offer twice the link rate for 5 s: the link, not the sender, sets the pace.
    let blast = link.exec(&link.ns_a, &["udp-blast", &to, "4mbit", "5", "1000"]);
    json(blast);
    let r = json(sink);
    let span = r.num("last_s") - r.num("first_s");
    // Packets after the first, over the time between first and last arrival.
    let rate = (r.num("ip_bytes") - 1028.0) * 8.0 / span;
    let err = (rate - 2e6).abs() / 2e6;
    eprintln!(
        "measured {rate:.0} bit/s for 2 Mbit/s set ({:.2} %)",
        err * 100.0
    );
    assert!(err < 0.02, "rate {rate}");
}

#[test]
fn delay_is_within_five_ms() {
    if !require(Need::Netns, "delay_is_within_five_ms") {
        return;
    }
    let link = Link::up("lkdelay", 12, &["--rate", "100mbit", "--delay", "150ms"]);
    let to = format!("{}:9002", link.addr_b);
    let echo = link.exec(&link.ns_b, &["udp-echo", "0.0.0.0:9002", "10"]);
    std::thread::sleep(Duration::from_millis(300));
    let r = json(link.exec(&link.ns_a, &["udp-ping", &to, "20"]));
    let rtts = r.list("rtts_ms");
    assert_eq!(rtts.len(), 20, "{rtts:?}");
    let min = rtts.iter().copied().fold(f64::INFINITY, f64::min);
    let one_way = min / 2.0;
    eprintln!("one-way delay {one_way:.2} ms for 150 ms set");
    assert!((one_way - 150.0).abs() < 5.0, "{rtts:?}");
    drop(echo);
}

#[test]
fn loss_is_within_statistical_bounds() {
    if !require(Need::Netns, "loss_is_within_statistical_bounds") {
        return;
    }
    let link = Link::up(
        "lkloss",
        13,
        &[
            "--rate", "100mbit", "--delay", "5ms", "--loss", "0.05", "--seed", "42",
        ],
    );
    let to = format!("{}:9003", link.addr_b);
    let sink = link.exec(&link.ns_b, &["udp-sink", "0.0.0.0:9003", "6"]);
    std::thread::sleep(Duration::from_millis(300));
    let sent = json(link.exec(&link.ns_a, &["udp-blast", &to, "4mbit", "4", "472"])).num("sent");
    let got = json(sink).num("packets");
    let n = sent;
    let expected = n * 0.95;
    let sigma = (n * 0.05 * 0.95).sqrt();
    eprintln!("sent {n}, received {got}, expected {expected:.0} ± {sigma:.1}");
    assert!((got - expected).abs() < 5.0 * sigma, "sent {n} got {got}");
}
