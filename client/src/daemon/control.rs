//! The local control endpoint of a running node: a Unix socket `<store>/node.sock`. A client sends
//! one JSON request line and reads JSON lines back: zero or more progress lines, then one reply.
//! The store is locked by the running node, so this is how `zdn fetch`, `zdn status`, `zdn peers`
//! and `zdn announce` reach it.

use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;

/// Longest request or reply line accepted.
pub const MAX_LINE: usize = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum ControlRequest {
    Status,
    Peers,
    Announce {
        hash: String,
    },
    Fetch {
        hash: String,
        peers: Vec<String>,
        fetch_base: bool,
    },
    /// Write an object from the node's store to a file (verified, atomic).
    Get {
        hash: String,
        output: String,
    },
}

/// One line from the node: progress (`progress` set) or the final reply.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ControlLine {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<serde_json::Value>,
    #[serde(default)]
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The process exit code the CLI should use for this error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("no node is running on this store ({0})")]
    NotRunning(String),
    #[error("control socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("control socket: bad line: {0}")]
    Protocol(String),
}

pub fn socket_path(store_dir: &Path) -> PathBuf {
    store_dir.join("node.sock")
}

async fn read_line<R: AsyncRead + Unpin>(
    r: &mut BufReader<R>,
) -> Result<Option<String>, ControlError> {
    let mut buf = Vec::new();
    let mut limited = (&mut *r).take(MAX_LINE as u64 + 1);
    let n = limited.read_until(b'\n', &mut buf).await?;
    if n == 0 {
        return Ok(None);
    }
    if buf.len() > MAX_LINE {
        return Err(ControlError::Protocol("line too long".into()));
    }
    String::from_utf8(buf)
        .map(Some)
        .map_err(|_| ControlError::Protocol("not UTF-8".into()))
}

/// Sends `req` to the node on `socket`; calls `on_progress` for progress lines; returns the reply.
pub async fn request(
    socket: &Path,
    req: &ControlRequest,
    on_progress: &mut (dyn FnMut(&serde_json::Value) + Send),
) -> Result<ControlLine, ControlError> {
    let stream = UnixStream::connect(socket)
        .await
        .map_err(|e| ControlError::NotRunning(format!("{}: {e}", socket.display())))?;
    let (r, mut w) = stream.into_split();
    let mut line = serde_json::to_string(req).map_err(|e| ControlError::Protocol(e.to_string()))?;
    line.push('\n');
    w.write_all(line.as_bytes()).await?;
    let mut r = BufReader::new(r);
    while let Some(l) = read_line(&mut r).await? {
        let l: ControlLine =
            serde_json::from_str(&l).map_err(|e| ControlError::Protocol(e.to_string()))?;
        match &l.progress {
            Some(p) => on_progress(p),
            None => return Ok(l),
        }
    }
    Err(ControlError::Protocol(
        "the node closed the connection without a reply".into(),
    ))
}

/// Whether a node answers on `socket`.
pub async fn is_running(socket: &Path) -> bool {
    UnixStream::connect(socket).await.is_ok()
}

/// What serves requests: gets the request and a channel for progress lines, returns the reply.
pub trait ControlHandler: Send + Sync + 'static {
    fn handle(
        &self,
        req: ControlRequest,
        progress: mpsc::Sender<serde_json::Value>,
    ) -> impl Future<Output = ControlLine> + Send;
}

/// Binds the control socket in `store_dir`, replacing a stale one left by a killed node (but not
/// one a live node answers on). The socket is bound under a random name, made owner-only (mode
/// 0600, whatever the umask) and only then renamed into place, so no other user ever finds it open;
/// [`run`] also checks each caller's credentials ([`caller_allowed`]).
pub async fn bind(store_dir: &Path) -> Result<UnixListener, ControlError> {
    std::fs::create_dir_all(store_dir)?;
    let path = socket_path(store_dir);
    if is_running(&path).await {
        return Err(ControlError::Protocol(format!(
            "a node is already running on {}",
            store_dir.display()
        )));
    }
    let mut nonce = [0u8; 8];
    getrandom::getrandom(&mut nonce).map_err(|e| ControlError::Protocol(e.to_string()))?;
    let aside = store_dir.join(format!(".node.sock.{:016x}", u64::from_le_bytes(nonce)));
    let listener = UnixListener::bind(&aside)?;
    let placed =
        std::fs::set_permissions(&aside, std::fs::Permissions::from_mode(0o600)).and_then(|()| {
            let _ = std::fs::remove_file(&path);
            std::fs::rename(&aside, &path)
        });
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&aside);
        return Err(e.into());
    }
    Ok(listener)
}

/// Whether a process running as `uid` may use the control socket of a node running as
/// `node_uid`: the same user, or root. Anyone else could make the node write any stored object to
/// any path it can write.
pub fn caller_allowed(uid: u32, node_uid: u32) -> bool {
    uid == node_uid || uid == 0
}

/// Serves connections on `listener` until `shutdown` completes.
pub async fn run<H: ControlHandler>(
    listener: UnixListener,
    handler: Arc<H>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                // SAFETY: geteuid has no preconditions and cannot fail.
                let node_uid = unsafe { libc::geteuid() };
                match stream.peer_cred() {
                    Ok(c) if caller_allowed(c.uid(), node_uid) => {}
                    // Another user (or credentials the kernel would not give): closed unread.
                    _ => continue,
                }
                let h = handler.clone();
                tasks.spawn(async move { serve_one(stream, h).await });
            }
        }
    }
    tasks.abort_all();
}

async fn serve_one<H: ControlHandler>(stream: UnixStream, handler: Arc<H>) {
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    let reply = match read_line(&mut r).await {
        Ok(Some(line)) => match serde_json::from_str::<ControlRequest>(&line) {
            Ok(req) => {
                let (tx, mut rx) = mpsc::channel(16);
                let work = handler.handle(req, tx);
                tokio::pin!(work);
                loop {
                    tokio::select! {
                        reply = &mut work => break reply,
                        Some(p) = rx.recv() => {
                            let l = ControlLine { progress: Some(p), ..Default::default() };
                            if write_line(&mut w, &l).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            }
            Err(e) => ControlLine {
                error: Some(format!("bad request: {e}")),
                ..Default::default()
            },
        },
        _ => return,
    };
    let _ = write_line(&mut w, &reply).await;
}

async fn write_line(
    w: &mut tokio::net::unix::OwnedWriteHalf,
    l: &ControlLine,
) -> std::io::Result<()> {
    let mut s = serde_json::to_string(l).map_err(std::io::Error::other)?;
    s.push('\n');
    w.write_all(s.as_bytes()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo;
    impl ControlHandler for Echo {
        async fn handle(
            &self,
            req: ControlRequest,
            _progress: mpsc::Sender<serde_json::Value>,
        ) -> ControlLine {
            ControlLine {
                ok: true,
                result: serde_json::to_value(req).ok(),
                ..Default::default()
            }
        }
    }

    async fn raw(path: &Path, bytes: &[u8]) -> String {
        let mut s = UnixStream::connect(path).await.unwrap();
        s.write_all(bytes).await.unwrap();
        let _ = s.shutdown().await;
        let mut out = String::new();
        let _ = s.read_to_string(&mut out).await;
        out
    }

    #[tokio::test]
    async fn bad_requests_get_errors_not_crashes() {
        let dir = tempfile::tempdir().unwrap();
        let listener = bind(dir.path()).await.unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(run(listener, Arc::new(Echo), async {
            let _ = stopped.await;
        }));
        let path = socket_path(dir.path());
        // Malformed JSON and an unknown operation: an error reply naming the problem.
        for bad in [&b"{not json\n"[..], b"{\"op\":\"format-disk\"}\n"] {
            let reply: ControlLine = serde_json::from_str(raw(&path, bad).await.trim()).unwrap();
            assert!(!reply.ok && reply.error.unwrap().contains("bad request"));
        }
        // Truncated (no newline, then end of input): an error reply too.
        let reply: ControlLine =
            serde_json::from_str(raw(&path, b"{\"op\":\"sta").await.trim()).unwrap();
        assert!(!reply.ok && reply.error.unwrap().contains("EOF while parsing"));
        // Oversized (over MAX_LINE): refused before parsing, the connection just closes.
        assert_eq!(raw(&path, &vec![b'x'; MAX_LINE + 10]).await, "");
        // A second node on the same store is refused while this one answers.
        assert!(bind(dir.path()).await.is_err());
        // And a good request still works.
        let line = request(&path, &ControlRequest::Status, &mut |_| {})
            .await
            .unwrap();
        assert!(line.ok);
        let _ = stop.send(());
        server.await.unwrap();
    }
}
