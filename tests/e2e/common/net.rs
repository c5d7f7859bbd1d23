//! Helpers of the network tests: a publisher's home, running `zdn node run` processes.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;
use zdn::model::synthetic::{write_pair, SyntheticSpec};

use crate::common::*;

/// Chunk size of the published objects: small, so an object has many chunks.
pub const CHUNK: u64 = 64 * 1024;

/// Runs zdn and returns (exit code, stdout, stderr).
pub fn run(home: &Path, a: &[&str]) -> (i32, String, String) {
    let out = zdn(&at(home, a).iter().map(String::as_str).collect::<Vec<_>>());
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `zdn fetch HASH --peer PEER --trust KEY --json`: the arguments most network tests fetch with.
pub fn fetch_json_args<'a>(hash: &'a str, peer: &'a str, key: &'a str) -> [&'a str; 7] {
    ["fetch", hash, "--peer", peer, "--trust", key, "--json"]
}

/// A publisher home with a base and a delta added in small chunks. Returns (base hash, delta
/// hash, publisher key, base stored bytes, the files).
pub struct Published {
    pub home: tempfile::TempDir,
    pub base: String,
    pub delta: String,
    pub key: String,
    pub base_stored: u64,
    pub base_file: PathBuf,
    pub delta_file: PathBuf,
    pub fine_file: PathBuf,
}

pub fn publish(layers: u32) -> Published {
    let home = tmpdir();
    let base_file = home.path().join("base.safetensors");
    let fine_file = home.path().join("fine.safetensors");
    let delta_file = home.path().join("fine.bitdelta");
    let spec = SyntheticSpec {
        layers,
        vocab: 4000,
        seed: 11,
        ..SyntheticSpec::small()
    };
    write_pair(&spec, &base_file, &fine_file).unwrap();
    ok(
        home.path(),
        &[
            "delta",
            "encode",
            "--base",
            s(&base_file),
            "--finetuned",
            s(&fine_file),
            "-o",
            s(&delta_file),
        ],
    );
    // A quality report signed into the delta's manifest (a fixture: its numbers are not measured on
    // this generated model; tests/quality.rs measures the real pair).
    let quality = home.path().join("quality.json");
    std::fs::write(
        &quality,
        serde_json::json!({
            "metric": zdn::quality::eval::METRIC, "corpus": "lee.cor", "corpus_blake3": "00".repeat(32),
            "sentences": 148, "delta": {"mean": 0.9998, "min": 0.9994, "p5": 0.9997},
            "base": {"mean": 0.9753, "min": 0.9497, "p5": 0.9601},
            "delta_bytes": 1, "finetuned_bytes": 2
        })
        .to_string(),
    )
    .unwrap();
    let chunk = CHUNK.to_string();
    let rb = json(&ok(
        home.path(),
        &[
            "add",
            s(&base_file),
            "--name",
            "base",
            "--chunk-size",
            &chunk,
            "--json",
        ],
    ));
    let rd = json(&ok(
        home.path(),
        &[
            "add",
            s(&delta_file),
            "--base",
            "base",
            "--name",
            "fine",
            "--chunk-size",
            &chunk,
            "--quality",
            s(&quality),
            "--json",
        ],
    ));
    let key = ok(home.path(), &["key", "show"]).trim().to_string();
    Published {
        base: rb["hash"].as_str().unwrap().to_string(),
        delta: rd["hash"].as_str().unwrap().to_string(),
        key,
        base_stored: rb["stored_bytes"].as_u64().unwrap(),
        home,
        base_file,
        delta_file,
        fine_file,
    }
}

/// A second home holding the publisher's base and delta (carried as a bundle).
pub fn second_seeder(p: &Published) -> tempfile::TempDir {
    let other = tmpdir();
    let bundle = p.home.path().join("all.zdnb");
    ok(p.home.path(), &["export", &p.delta, "-o", s(&bundle)]);
    ok(other.path(), &["import", s(&bundle), "--trust-any"]);
    other
}

/// Adds `p`'s delta again as `fine-big`, cut into 16-byte chunks so that its manifest is over
/// gossip's 256 KiB (it is announced by hash); returns its hash.
pub fn add_big_delta(p: &Published) -> String {
    let big = json(&ok(
        p.home.path(),
        &[
            "add",
            s(&p.delta_file),
            "--base",
            "base",
            "--name",
            "fine-big",
            "--chunk-size",
            "16",
            "--json",
        ],
    ));
    big["hash"].as_str().unwrap().to_string()
}

/// The publisher's node and a second seeder of the same objects (started with `second_args`,
/// e.g. a fault), with the second seeder's home.
pub fn two_seeders(p: &Published, second_args: &[&str]) -> (tempfile::TempDir, NodeProc, NodeProc) {
    let home = second_seeder(p);
    let publisher = NodeProc::start(p.home.path(), &[]);
    let second = NodeProc::start(home.path(), second_args);
    (home, publisher, second)
}

/// Asserts that `home`'s store holds object `hash` with exactly the bytes of `file`.
pub fn assert_object(home: &Path, hash: &str, file: &Path) {
    let got = home.join("object-check");
    ok(home, &["get", hash, "-o", s(&got)]);
    assert_eq!(std::fs::read(&got).unwrap(), std::fs::read(file).unwrap());
    std::fs::remove_file(&got).unwrap();
}

/// A running `zdn node run`, killed on drop.
pub struct NodeProc {
    pub child: Child,
    pub lines: mpsc::Receiver<String>,
    pub addr: String,
}

impl NodeProc {
    /// `zdn node run` on a free loopback TCP port.
    pub fn start(home: &Path, extra: &[&str]) -> NodeProc {
        NodeProc::start_on(home, "/ip4/127.0.0.1/tcp/0", extra)
    }

    /// `zdn node run --listen <listen>`.
    pub fn start_on(home: &Path, listen: &str, extra: &[&str]) -> NodeProc {
        let mut a = at(home, &["node", "run", "--listen", listen, "--no-mdns"]);
        a.extend(extra.iter().map(|x| x.to_string()));
        let mut child = Command::new(env!("CARGO_BIN_EXE_zdn"))
            .args(&a)
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
        let mut n = NodeProc {
            child,
            lines,
            addr: String::new(),
        };
        let l = n.wait_for("listening ", Duration::from_secs(60));
        n.addr = l.trim_start_matches("listening ").to_string();
        n
    }

    /// Waits for a stdout line starting with `prefix`; panics after `timeout`.
    pub fn wait_for(&mut self, prefix: &str, timeout: Duration) -> String {
        let end = Instant::now() + timeout;
        let mut seen = Vec::new();
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.starts_with(prefix) => return l,
                Ok(l) => seen.push(l),
                Err(_) => panic!(
                    "no line starting with {prefix:?} within {timeout:?}; it said:\n{}",
                    seen.join("\n")
                ),
            }
        }
    }

    /// SIGTERM, wait, and return the `stopped {json}` traffic line.
    pub fn stop(mut self) -> Value {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        let l = self.wait_for("stopped ", Duration::from_secs(30));
        let st = self.child.wait().unwrap();
        assert!(st.success(), "node exited with {st}");
        json(l.trim_start_matches("stopped "))
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `zdn ARGS` in the background with stdout and stderr piped (for [`wait_with_deadline`]).
pub fn spawn_zdn(args: &[String]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_zdn"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits for a child (stdout and stderr piped) to exit; kills it and panics after `limit`.
pub fn wait_with_deadline(mut child: Child, limit: Duration) -> std::process::Output {
    let end = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > end {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "still running after {limit:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    child.wait_with_output().unwrap()
}

/// A sync window "HH:MM:SS-HH:MM:SS" (UTC) from `from` to `to` seconds from now (negative: ago).
pub fn sync_window(from: i64, to: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let fmt = |t: i64| {
        let t = t.rem_euclid(86_400);
        format!("{:02}:{:02}:{:02}", t / 3600, t / 60 % 60, t % 60)
    };
    format!("{}-{}", fmt(now + from), fmt(now + to))
}
