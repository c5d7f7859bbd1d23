//! Local surfaces: the control socket of a running node is its owner's alone,
//! and key files others can read are refused. A local user who could reach the socket could make
//! the node write any stored object to any path it can write.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use zdn_test_support::require::{require, Need};

use crate::common::net::*;
use crate::common::*;

/// The one file called `name` anywhere under `dir`.
fn find(dir: &Path, name: &str) -> PathBuf {
    fn walk(dir: &Path, name: &str, found: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.file_name().is_some_and(|n| n == name) {
                found.push(p.clone());
            }
            if std::fs::symlink_metadata(&p).unwrap().is_dir() {
                walk(&p, name, found);
            }
        }
    }
    let mut found = Vec::new();
    walk(dir, name, &mut found);
    assert_eq!(found.len(), 1, "{name} under {}: {found:?}", dir.display());
    found.remove(0)
}

/// The system's Python (not a shim under root's home, which another user cannot run).
const PYTHON: &str = "/usr/bin/python3";

/// Asks the node for its status over `socket` as uid/gid 65534 (a raw client: whatever the node
/// sends back, or the error the connection met).
fn status_as_another_user(socket: &Path) -> String {
    let script = "import socket,sys\n\
        s=socket.socket(socket.AF_UNIX)\n\
        try:\n    s.connect(sys.argv[1]); s.sendall(b'{\"op\":\"status\"}\\n'); s.settimeout(10)\n    \
        d=b''\n    while True:\n        b=s.recv(65536)\n        if not b: break\n        d+=b\n    \
        print('REPLY', d.decode(errors='replace'))\n\
        except OSError as e:\n    print('ERROR', e.__class__.__name__, e)\n";
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            PYTHON,
            "-c",
            script,
        ])
        .arg(socket)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn set_mode(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Before: the socket was bound with the umask's mode (0755 under the usual 022, connectable by
/// anyone who can reach it) and served whoever connected.
#[test]
fn the_control_socket_is_its_owners_alone() {
    let home = tmpdir();
    let node = NodeProc::start(home.path(), &[]);
    let socket = find(home.path(), "node.sock");
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{}", socket.display());
    // The owner still reaches it.
    let st = json(&ok(home.path(), &["status", "--json"]));
    assert!(st["peer_id"].is_string(), "{st}");
    if !require(
        Need::OtherUser,
        "local::the_control_socket_is_its_owners_alone",
    ) {
        return;
    }
    // Let another user reach the directory: the socket's mode stops it...
    let mut dir = socket.parent();
    while let Some(d) = dir {
        if !d.starts_with(home.path().parent().unwrap()) || d == home.path().parent().unwrap() {
            break;
        }
        set_mode(d, 0o755);
        dir = d.parent();
    }
    let refused = status_as_another_user(&socket);
    assert!(refused.starts_with("ERROR PermissionError"), "{refused}");
    // ...and with the mode loosened by hand, the credential check: closed unread, nothing sent.
    set_mode(&socket, 0o666);
    let closed = status_as_another_user(&socket);
    // The connection got through (no PermissionError) and nothing came back: empty, or the
    // closed socket broke the request's write.
    assert!(
        closed.trim() == "REPLY"
            || closed.starts_with("ERROR ConnectionResetError")
            || closed.starts_with("ERROR BrokenPipeError"),
        "{closed}"
    );
    let st = json(&ok(home.path(), &["status", "--json"]));
    assert!(st["peer_id"].is_string(), "{st}");
    node.stop();
}

/// Before: `node.key` was read whatever its mode.
#[test]
fn a_node_key_others_can_read_is_refused() {
    let home = tmpdir();
    NodeProc::start(home.path(), &[]).stop();
    let key = find(home.path(), "node.key");
    set_mode(&key, 0o644);
    let (code, _, e) = run(
        home.path(),
        &["node", "run", "--listen", "/ip4/127.0.0.1/tcp/0"],
    );
    assert_ne!(code, 0);
    assert!(
        e.contains("readable by others") && e.contains("chmod 600"),
        "{e}"
    );
    set_mode(&key, 0o600);
    NodeProc::start(home.path(), &[]).stop();
}
