//! A real `zdn node run` process for the end-to-end tests.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{at, json};

/// A running `zdn node run`, killed on drop.
pub struct NodeProc {
    pub child: Child,
    lines: mpsc::Receiver<String>,
    /// The first address it listens on.
    pub addr: String,
}

impl NodeProc {
    pub fn start(home: &Path, extra: &[&str]) -> NodeProc {
        let mut a = at(
            home,
            &[
                "node",
                "run",
                "--listen",
                "/ip4/127.0.0.1/tcp/0",
                "--no-mdns",
            ],
        );
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
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.starts_with(prefix) => return l,
                Ok(_) => {}
                Err(_) => panic!("no line starting with {prefix:?} within {timeout:?}"),
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
