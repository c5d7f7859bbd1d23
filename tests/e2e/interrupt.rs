//! Interrupted commands leave nothing behind: `zdn get -o` of a model folder and of a file, and
//! `zdn delta encode --finetuned OBJ` (which writes the fine-tune out of the store first), stopped
//! by SIGINT, SIGTERM or SIGHUP while they write, remove their temporaries, say so, and end by
//! that signal; the destination never appears.
//!
//! No race decides these tests: the command is stopped (SIGSTOP) as soon as its temporary shows,
//! checked to be still running, sent the signal and continued.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::llama_folder::LlamaSpec;
use crate::common::*;

/// What `dir` holds, by name.
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn spawn(home: &Path, args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_zdn"))
        .args(at(home, args))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: kill(2) on our own child's pid, which has not been waited for yet (so not reused).
    let r = unsafe { libc::kill(child.id() as libc::pid_t, sig) };
    assert_eq!(r, 0, "kill({sig})");
}

/// Waits until an entry of `dir` starts with `prefix`, stops the child, checks it is still
/// running (the test's input too small otherwise), sends `sig`, continues it and waits. Returns
/// the temporary's name and the child's stderr.
fn interrupt_when(mut child: Child, dir: &Path, prefix: &str, sig: i32) -> (String, String) {
    let t0 = Instant::now();
    let seen = loop {
        if let Some(n) = names(dir).into_iter().find(|n| n.starts_with(prefix)) {
            break n;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the command ended before writing {prefix}…"
        );
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "no {prefix}… after 2 min"
        );
        std::thread::sleep(Duration::from_millis(2));
    };
    signal(&child, libc::SIGSTOP);
    assert!(
        child.try_wait().unwrap().is_none(),
        "the command finished before it could be interrupted: make the input larger"
    );
    signal(&child, sig);
    signal(&child, libc::SIGCONT);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.signal(),
        Some(sig),
        "ended by the signal it was sent ({:?}); stderr: {stderr}",
        out.status
    );
    (seen, stderr)
}

/// `n` incompressible bytes.
fn noise(n: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; n];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for b in bytes.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        b.copy_from_slice(&x.to_le_bytes()[..b.len()]);
    }
    bytes
}

const SIZE: usize = 192 << 20;

#[test]
fn an_interrupted_get_leaves_nothing() {
    let home = tmpdir();
    let home = home.path();
    let work = tmpdir();
    let model = work.path().join("model");
    std::fs::create_dir_all(&model).unwrap();
    let bytes = noise(SIZE);
    std::fs::write(model.join("weights.bin"), &bytes).unwrap();
    std::fs::write(model.join("config.json"), "{}").unwrap();
    let single = work.path().join("model.safetensors");
    let t = T {
        name: "w".into(),
        dtype: zdn_protocol::DType::U8,
        shape: vec![SIZE as u64],
        bytes,
    };
    write_model(&single, &[t]);
    let add = |p: &Path| ok(home, &["add", s(p)]).lines().next().unwrap().to_string();
    let (folder_hash, file_hash) = (add(&model), add(&single));
    let out_dir = tmpdir();
    let before = names(out_dir.path());

    // A model folder, Ctrl-C.
    let dest = out_dir.path().join("copy");
    let child = spawn(home, &["get", &folder_hash, "-o", s(&dest)]);
    let (seen, stderr) = interrupt_when(child, out_dir.path(), ".copy.", libc::SIGINT);
    assert!(seen.ends_with(".partial"), "{seen}");
    assert!(stderr.contains("interrupted; removed"), "{stderr}");
    assert!(stderr.contains(&seen), "names what it removed: {stderr}");
    assert_eq!(names(out_dir.path()), before, "left behind");

    // A single file (written as an atomic file), SIGTERM; then SIGHUP (a closed terminal).
    let file = out_dir.path().join("one.safetensors");
    for sig in [libc::SIGTERM, libc::SIGHUP] {
        let child = spawn(home, &["get", &file_hash, "-o", s(&file)]);
        interrupt_when(child, out_dir.path(), ".one.safetensors.", sig);
        assert_eq!(
            names(out_dir.path()),
            before,
            "left behind after signal {sig}"
        );
    }

    // Not interrupted, the same commands write their outputs (and nothing else).
    ok(home, &["get", &folder_hash, "-o", s(&dest)]);
    ok(home, &["get", &file_hash, "-o", s(&file)]);
    assert_eq!(names(out_dir.path()), ["copy", "one.safetensors"]);
    assert_eq!(
        std::fs::read(dest.join("weights.bin")).unwrap(),
        std::fs::read(model.join("weights.bin")).unwrap()
    );
    assert_eq!(
        std::fs::read(&file).unwrap(),
        std::fs::read(&single).unwrap()
    );
}

#[test]
fn an_interrupted_encode_from_the_store_leaves_nothing() {
    let home = tmpdir();
    let home = home.path();
    let work = tmpdir();
    // Llama-shaped, ≈ 110 MB of bf16 each.
    let spec = |shards: usize, seed: u64| LlamaSpec {
        layers: 4,
        hidden: 1024,
        intermediate: 2816,
        vocab: 8000,
        shards,
        seed,
        changed: Vec::new(),
        note: "base".into(),
    };
    let base = work.path().join("base");
    spec(2, 1).write(&base);
    let fine = work.path().join("fine");
    let mut f = spec(3, 1);
    f.changed = vec!["model.layers.1.mlp.up_proj.weight".into()];
    f.note = "fine-tune".into();
    f.write(&fine);
    let add = |dir: &Path| {
        ok(home, &["add", s(dir)])
            .lines()
            .next()
            .unwrap()
            .to_string()
    };
    let (base_hash, fine_hash) = (add(&base), add(&fine));

    let out_dir = tmpdir();
    let before = names(out_dir.path());
    let delta = out_dir.path().join("chat.delta");
    let args = [
        "delta",
        "encode",
        "--base",
        &base_hash,
        "--finetuned",
        &fine_hash,
        "-o",
        s(&delta),
    ];
    let child = spawn(home, &args);
    let (_, stderr) = interrupt_when(child, out_dir.path(), ".zdn-finetuned-", libc::SIGINT);
    assert!(stderr.contains(".zdn-finetuned-"), "{stderr}");
    assert_eq!(names(out_dir.path()), before, "left behind");

    ok(home, &args);
    assert_eq!(names(out_dir.path()), ["chat.delta"]);
}
