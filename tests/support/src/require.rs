//! Preconditions of tests that need something of the machine: root with network namespaces, TUN
//! and `ip` (the link emulator and the scenarios), a CPU feature (the fast codec kernels), or the
//! real decoder pair (the decoder tests).
//!
//! A test whose precondition is missing **fails**, saying what is missing — it never prints
//! "skipping" and passes. It is skipped only when the precondition's name is listed in the
//! environment variable `ZDN_TEST_SKIP` (comma-separated: `netns`, `avx2`, `decoder-pair`,
//! `other-user`): then it says so on stderr and appends a line to the file `ZDN_TEST_SKIP_LOG` names (default
//! `$TMPDIR/zdn-test-skips.log`), so the skips of a run can be counted. CI runs as root on x86-64
//! with AVX2 and sets no `ZDN_TEST_SKIP`: everything runs there.
//!
//! Zero dependencies on purpose: crates that cannot depend on zdn-test-support (zdn-protocol is a
//! dependency of it) include this file with `#[path]`.

// Included by `#[path]` into test crates that use only part of it.
#![allow(dead_code)]

use std::io::Write as _;
use std::path::{Path, PathBuf};
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
    /// The real decoder pair of `scripts/make-decoder-pair.sh` in [`decoder_pair_dir`], made, or
    /// what makes it: CPython 3.11 as `python3` (the script then installs its pinned packages from
    /// PyPI and trains the pair, about 12 minutes of CPU; a missing PyPI fails the test that tried).
    DecoderPair,
}

/// Where the decoder pair is made and kept: `$ZDN_DECODER_DIR`, else `zdn-decoder-pair` in the
/// user's cache folder (`$XDG_CACHE_HOME`, else `$HOME/.cache`), shared by every checkout and
/// build folder since it takes minutes and gigabytes to make.
pub fn decoder_pair_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("ZDN_DECODER_DIR") {
        return PathBuf::from(d);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    cache.join("zdn-decoder-pair")
}

impl Need {
    fn name(self) -> &'static str {
        match self {
            Need::Netns => "netns",
            Need::Avx2 => "avx2",
            Need::OtherUser => "other-user",
            Need::DecoderPair => "decoder-pair",
        }
    }

    /// `None` when the machine has it, else what is missing.
    fn missing(self) -> Option<String> {
        match self {
            Need::Netns => {
                // SAFETY: geteuid has no preconditions and cannot fail.
                let root = unsafe { geteuid() } == 0;
                let ip = Command::new("ip")
                    .args(["netns", "list"])
                    .output()
                    .is_ok_and(|o| o.status.success());
                if !root {
                    Some("root (network namespaces and TUN devices need it)".into())
                } else if !Path::new("/dev/net/tun").exists() {
                    Some("/dev/net/tun".into())
                } else if !ip {
                    Some("a working `ip netns` (iproute2)".into())
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
                (!has).then(|| "a CPU with AVX2 and F16C".into())
            }
            Need::DecoderPair => {
                let dir = decoder_pair_dir();
                // The script's own mark of a finished pair (it checks every output's sha256).
                let made = dir.join("pair.done").is_file();
                let python311 = Command::new("python3")
                    .args([
                        "-c",
                        "import sys; sys.exit(sys.version_info[:2] != (3, 11))",
                    ])
                    .output()
                    .is_ok_and(|o| o.status.success());
                (!made && !python311).then(|| {
                    format!(
                        "the decoder pair in {} (made by scripts/make-decoder-pair.sh; set \
                         ZDN_DECODER_DIR where it is), or CPython 3.11 as python3 to make it",
                        dir.display()
                    )
                })
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
                    Some("root (to act as another user)".into())
                } else if !runs("setpriv") {
                    Some("setpriv (util-linux)".into())
                } else if !runs("/usr/bin/python3") {
                    Some("/usr/bin/python3 (the other user's client)".into())
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
