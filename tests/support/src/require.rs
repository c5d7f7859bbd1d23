//! Preconditions of tests that need something of the machine: root with network namespaces, TUN
//! and `ip` (the link emulator and the scenarios), or a CPU feature (the fast codec kernels).
//!
//! A test whose precondition is missing **fails**, saying what is missing — it never prints
//! "skipping" and passes. It is skipped only when the precondition's name is listed in the
//! environment variable `ZDN_TEST_SKIP` (comma-separated: `netns`, `avx2`, `other-user`): then it says so on
//! stderr and appends a line to the file `ZDN_TEST_SKIP_LOG` names (default
//! `$TMPDIR/zdn-test-skips.log`), so the skips of a run can be counted. CI runs as root on x86-64
//! with AVX2 and sets no `ZDN_TEST_SKIP`: everything runs there.
//!
//! Zero dependencies on purpose: crates that cannot depend on zdn-test-support (zdn-protocol is a
//! dependency of it) include this file with `#[path]`.

// Included by `#[path]` into test crates that use only part of it.
#![allow(dead_code)]

use std::io::Write as _;
use std::path::Path;
use std::process::Command;

/// What a test may need of the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Root, /dev/net/tun and a working `ip netns`.
    Netns,
    /// An x86-64 CPU with AVX2 and F16C (the fast codec kernels).
    Avx2,
    /// Root, `setpriv` and `/usr/bin/python3`: to act as another local user (uid 65534) against a node.
    OtherUser,
}

impl Need {
    fn name(self) -> &'static str {
        match self {
            Need::Netns => "netns",
            Need::Avx2 => "avx2",
            Need::OtherUser => "other-user",
        }
    }

    /// `None` when the machine has it, else what is missing.
    fn missing(self) -> Option<&'static str> {
        match self {
            Need::Netns => {
                // SAFETY: geteuid has no preconditions and cannot fail.
                let root = unsafe { geteuid() } == 0;
                let ip = Command::new("ip")
                    .args(["netns", "list"])
                    .output()
                    .is_ok_and(|o| o.status.success());
                if !root {
                    Some("root (network namespaces and TUN devices need it)")
                } else if !Path::new("/dev/net/tun").exists() {
                    Some("/dev/net/tun")
                } else if !ip {
                    Some("a working `ip netns` (iproute2)")
                } else {
                    None
                }
            }
            Need::Avx2 => {
                #[cfg(target_arch = "x86_64")]
                let has =
                    std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("f16c");
                #[cfg(not(target_arch = "x86_64"))]
                let has = false;
                (!has).then_some("a CPU with AVX2 and F16C")
            }
            Need::OtherUser => {
                // SAFETY: geteuid has no preconditions and cannot fail.
                let root = unsafe { geteuid() } == 0;
                let runs = |cmd: &str| {
                    Command::new(cmd)
                        .arg("--version")
                        .output()
                        .is_ok_and(|o| o.status.success())
                };
                if !root {
                    Some("root (to act as another user)")
                } else if !runs("setpriv") {
                    Some("setpriv (util-linux)")
                } else if !runs("/usr/bin/python3") {
                    Some("/usr/bin/python3 (the other user's client)")
                } else {
                    None
                }
            }
        }
    }
}

extern "C" {
    fn geteuid() -> u32;
}

/// `true` when the machine has what `test` needs. When it does not: panics naming what is
/// missing, unless `ZDN_TEST_SKIP` lists `need` — then the skip is said and logged, and `false`
/// comes back (the test returns without checking anything, and the log counts it).
pub fn require(need: Need, test: &str) -> bool {
    let Some(missing) = need.missing() else {
        return true;
    };
    let listed = std::env::var("ZDN_TEST_SKIP")
        .unwrap_or_default()
        .split(',')
        .any(|s| s.trim() == need.name());
    assert!(
        listed,
        "{test} needs {missing}. Run it where it can (CI does), or skip it explicitly with \
         ZDN_TEST_SKIP={} (skips are counted in ZDN_TEST_SKIP_LOG)",
        need.name()
    );
    let log = std::env::var_os("ZDN_TEST_SKIP_LOG")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("zdn-test-skips.log"));
    eprintln!(
        "SKIPPED {test}: needs {missing} (ZDN_TEST_SKIP={}); counted in {}",
        need.name(),
        log.display()
    );
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
    {
        let _ = writeln!(f, "{test}\t{}", need.name());
    }
    false
}
