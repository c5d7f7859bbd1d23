//! Child processes of a run (zdn nodes and fetches, the TCP reference's ends): killed on drop, so
//! a failed or interrupted run leaves nothing behind; their output goes to log files.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::error::ScenarioError;

/// `log` + `.ext` (names may contain dots, so not `with_extension`).
fn log_file(log: &Path, ext: &str) -> PathBuf {
    let mut s = log.as_os_str().to_owned();
    s.push(".");
    s.push(ext);
    PathBuf::from(s)
}

/// A child process killed on drop (a failed run leaves no node behind), with its log files.
#[derive(Debug)]
pub struct Reaped {
    child: Option<Child>,
    pub log: PathBuf,
}

impl Reaped {
    /// Starts `cmd` with its stdout and stderr going to `log.out` and `log.err`.
    pub fn spawn(mut cmd: Command, log: &Path, what: &str) -> Result<Reaped, ScenarioError> {
        let file = |ext: &str| {
            let p = log_file(log, ext);
            File::create(&p).map_err(|e| ScenarioError::io("creating", p, e))
        };
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file("out")?)
            .stderr(file("err")?)
            .spawn()
            .map_err(|source| ScenarioError::Spawn {
                what: what.to_owned(),
                source,
            })?;
        Ok(Reaped {
            child: Some(child),
            log: log.to_owned(),
        })
    }

    /// The exit status, once it has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    pub fn stdout(&self) -> String {
        std::fs::read_to_string(log_file(&self.log, "out")).unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(log_file(&self.log, "err")).unwrap_or_default()
    }

    /// SIGTERM (`ip netns exec` execs the program, so the pid is zdn's), then SIGKILL if it has
    /// not stopped within `grace`.
    pub fn terminate(&mut self, grace: Duration) -> Option<ExitStatus> {
        let c = self.child.as_mut()?;
        if let Ok(Some(s)) = c.try_wait() {
            return Some(s);
        }
        if let Ok(pid) = libc::pid_t::try_from(c.id()) {
            // SAFETY: signalling our own child, which has not been reaped (try_wait said so).
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = c.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = c.kill();
        c.wait().ok()
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
