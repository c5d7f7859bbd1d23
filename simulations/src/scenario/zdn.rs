//! Driving the real `zdn` binary: store commands on a node's home (add, export, import, key),
//! `zdn node run` and `zdn fetch` as processes inside a namespace. The runner knows zdn only
//! through its command line and its JSON output, so this crate does not depend on zdn's crates.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::error::ScenarioError;
use super::process::Reaped;

/// The `zdn` executable.
#[derive(Debug, Clone)]
pub struct Zdn {
    pub exe: PathBuf,
}

/// The fields of `zdn add --json` the runner uses.
#[derive(Debug, Clone, Deserialize)]
pub struct AddReport {
    pub hash: String,
    pub object_len: u64,
    pub chunks: usize,
    /// Stored (compressed) bytes of the whole object: what a fetcher with none of it receives.
    pub stored_bytes: u64,
}

/// The fields of `zdn fetch --json` the runner uses.
#[derive(Debug, Clone, Deserialize)]
pub struct FetchReport {
    pub object_len: u64,
    pub already_present: bool,
    pub chunks: usize,
    pub chunks_resumed: usize,
    pub bytes_received: u64,
    pub seconds: f64,
}

impl Zdn {
    /// `explicit`, else the `zdn` next to the running executable (`cargo build` puts every
    /// binary of the workspace in one directory).
    pub fn locate(explicit: Option<PathBuf>) -> Result<Zdn, ScenarioError> {
        let exe = match explicit {
            Some(p) => p,
            None => std::env::current_exe()
                .ok()
                .and_then(|e| e.parent().map(|d| d.join("zdn")))
                .unwrap_or_else(|| PathBuf::from("zdn")),
        };
        if !exe.is_file() {
            return Err(ScenarioError::Unavailable(format!(
                "no zdn binary at {} (build it with `cargo build -p zdn`, or pass --zdn PATH)",
                exe.display()
            )));
        }
        Ok(Zdn { exe })
    }

    fn command(&self, home: &Path) -> Command {
        let mut c = Command::new(&self.exe);
        c.arg("--home").arg(home);
        c
    }

    /// Runs `zdn --home HOME ARGS...` to completion; its stdout, or its stderr as the error.
    pub fn run<S: AsRef<OsStr>>(&self, home: &Path, args: &[S]) -> Result<String, ScenarioError> {
        let command = args
            .iter()
            .map(|a| a.as_ref().to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ");
        let out = self
            .command(home)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|source| ScenarioError::Spawn {
                what: format!("zdn {command}"),
                source,
            })?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            return Err(ScenarioError::Zdn {
                command,
                message: err.trim().lines().last().unwrap_or("no output").to_owned(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `zdn add FILE --name NAME [--base BASE] --json`.
    pub fn add(
        &self,
        home: &Path,
        file: &Path,
        name: &str,
        base: Option<&str>,
    ) -> Result<AddReport, ScenarioError> {
        let o = OsStr::new;
        let mut args = vec![o("add"), file.as_os_str(), o("--name"), o(name)];
        if let Some(b) = base {
            args.extend([o("--base"), o(b)]);
        }
        args.push(o("--json"));
        let out = self.run(home, &args)?;
        serde_json::from_str(&out).map_err(|e| ScenarioError::Zdn {
            command: format!("add {}", file.display()),
            message: format!("unexpected output ({e}): {out}"),
        })
    }

    /// The public half of the home's publisher key (64 hex digits).
    pub fn publisher_key(&self, home: &Path) -> Result<String, ScenarioError> {
        Ok(self.run(home, &["key", "show"])?.trim().to_owned())
    }

    /// Starts `zdn --home HOME ARGS...` inside network namespace `ns`, its stdout and stderr
    /// going to `log.out` and `log.err`.
    pub fn spawn_in<S: AsRef<OsStr>>(
        &self,
        ns: &str,
        home: &Path,
        args: &[S],
        log: &Path,
    ) -> Result<Reaped, ScenarioError> {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns])
            .arg(&self.exe)
            .arg("--home")
            .arg(home)
            .args(args);
        Reaped::spawn(c, log, &format!("zdn in {ns}"))
    }
}

/// A running `zdn node run`.
#[derive(Debug)]
pub struct NodeProcess {
    pub process: Reaped,
    pub peer_id: String,
}

impl NodeProcess {
    /// Starts the node and waits (at most `within`) for its `peer` and first `listening` lines.
    pub fn start(
        zdn: &Zdn,
        ns: &str,
        home: &Path,
        args: &[String],
        log: &Path,
        within: Duration,
    ) -> Result<NodeProcess, ScenarioError> {
        let mut run = vec!["node".to_owned(), "run".to_owned()];
        run.extend(args.iter().cloned());
        let mut process = zdn.spawn_in(ns, home, &run, log)?;
        let deadline = Instant::now() + within;
        loop {
            let out = process.stdout();
            let peer = out.lines().find_map(|l| l.strip_prefix("peer "));
            if let (Some(peer), true) = (peer, out.lines().any(|l| l.starts_with("listening "))) {
                return Ok(NodeProcess {
                    peer_id: peer.trim().to_owned(),
                    process,
                });
            }
            let exited = process.try_wait();
            if exited.is_some() || Instant::now() >= deadline {
                return Err(ScenarioError::Zdn {
                    command: format!("node run {}", args.join(" ")),
                    message: format!(
                        "{} in {ns}: {}",
                        match exited {
                            Some(s) => format!("exited ({s})"),
                            None => format!("not listening after {within:?}"),
                        },
                        process.stderr().trim()
                    ),
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the node cleanly; the JSON of its `stopped` line (its traffic counters), if any.
    pub fn stop(&mut self) -> Option<serde_json::Value> {
        self.process.terminate(Duration::from_secs(15));
        self.process
            .stdout()
            .lines()
            .find_map(|l| l.strip_prefix("stopped "))
            .and_then(|j| serde_json::from_str(j).ok())
    }
}
