//! End-to-end tests of model folders as objects (docs/spec/manifest.md "Folders") with the real binary on
//! a real rocksdb store: a generated Llama-shaped folder (3 shards, index, config, tokenizer, chat
//! template) through add, get, cat, ls, verify, pin, gc, export and import; a second version and a
//! re-sharded copy store only what is new; bad folders are refused and leave the store as it was;
//! a folder object moves between nodes (fetch, gossip).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::llama_folder::{read_tree, LlamaSpec};
use crate::common::net::NodeProc;
use crate::common::*;
use serde_json::Value;

/// 16 KiB chunks: several chunks per tensor, so chunk cuts inside tensors are exercised too.
const CHUNK: &str = "16384";

fn base_folder(root: &Path) -> PathBuf {
    let dir = root.join("Llama-tiny");
    LlamaSpec::small(3).write(&dir);
    // A side file in a sub-folder and an empty file are members too.
    std::fs::create_dir_all(dir.join("original")).unwrap();
    std::fs::write(dir.join("original/params.json"), b"{\"dim\": 64}\n").unwrap();
    std::fs::write(dir.join("added_tokens.json"), b"").unwrap();
    dir
}

fn add(home: &Path, dir: &Path, extra: &[&str]) -> Value {
    let mut a = vec!["add", s(dir), "--chunk-size", CHUNK, "--json"];
    a.extend_from_slice(extra);
    json(&ok(home, &a))
}

/// `add` of a folder that must succeed: its JSON report and what it said on stderr.
fn add_saying(home: &Path, dir: &Path) -> (Value, String) {
    let out = zdn(&at(home, &["add", s(dir), "--chunk-size", CHUNK, "--json"])
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>());
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    (json(&String::from_utf8_lossy(&out.stdout)), stderr)
}

fn ls(home: &Path) -> Vec<Value> {
    json(&ok(home, &["ls", "--json"]))
        .as_array()
        .unwrap()
        .clone()
}

fn verify(home: &Path) -> Value {
    let out = zdn(&at(home, &["verify", "--json"])
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>());
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "verify found problems: {text}");
    json(&text)
}

fn cat(home: &Path, args: &[&str]) -> Vec<u8> {
    let out = zdn(&at(home, &[&["cat"], args].concat())
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[test]
fn a_folder_is_one_object_through_every_store_command() {
    let t = tmpdir();
    let dir = base_folder(t.path());
    let home = t.path().join("home");
    let r = add(&home, &dir, &[]);
    let hash = r["hash"].as_str().unwrap().to_string();
    let tree = read_tree(&dir);
    assert_eq!(tree.len(), 12);
    assert_eq!(r["files"], 12);
    assert_eq!(r["kind"], "base");
    assert_eq!(r["name"], "Llama-tiny");
    assert_eq!(
        r["object_len"].as_u64().unwrap(),
        tree.iter().map(|(_, b)| b.len() as u64).sum::<u64>()
    );
    assert_eq!(r["new_chunks"], r["chunks"]);

    // The same folder again: the same object, nothing new.
    let again = add(&home, &dir, &[]);
    assert_eq!(again["hash"], hash.as_str());
    assert_eq!(again["already_present"], true);
    assert_eq!(again["new_chunks"], 0);

    // A clone's `.git` (LFS objects: the weights again) and a download's `.cache/huggingface`
    // notes are left out, and said so: the same object.
    std::fs::create_dir_all(dir.join(".git/lfs/objects/ab")).unwrap();
    std::fs::write(dir.join(".git/lfs/objects/ab/cd"), vec![7u8; 4096]).unwrap();
    std::fs::create_dir_all(dir.join(".cache/huggingface/download")).unwrap();
    std::fs::write(
        dir.join(".cache/huggingface/download/config.json.metadata"),
        b"etag\n1733500000.0\n",
    )
    .unwrap();
    let (r, stderr) = add_saying(&home, &dir);
    assert!(
        stderr.contains("left out .cache/huggingface, .git"),
        "{stderr}"
    );
    assert_eq!(r["hash"], hash.as_str());
    std::fs::remove_dir_all(dir.join(".git")).unwrap();
    std::fs::remove_dir_all(dir.join(".cache")).unwrap();

    // ls: one object with its file count; --files lists the members.
    let objects = ls(&home);
    assert_eq!(objects.len(), 1);
    assert_eq!(objects[0]["files"], 12);
    let text = ok(&home, &["ls"]);
    assert!(text.lines().nth(1).unwrap().contains(" 12 "), "{text}");
    let files = json(&ok(&home, &["ls", "--files", "Llama-tiny", "--json"]));
    let paths: Vec<&str> = files
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    let want: Vec<&str> = tree.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(paths, want);

    // get -o DIR: every file back byte for byte; an existing non-empty folder needs --force.
    let out = t.path().join("out");
    ok(&home, &["get", &hash, "-o", s(&out)]);
    assert_eq!(read_tree(&out), tree);
    std::fs::write(out.join("mine.txt"), b"keep me").unwrap();
    err(&home, &["get", &hash, "-o", s(&out)], "--force");
    std::fs::write(out.join("config.json"), b"overwritten").unwrap();
    ok(&home, &["get", &hash, "-o", s(&out), "--force"]);
    assert_eq!(std::fs::read(out.join("mine.txt")).unwrap(), b"keep me");
    assert_eq!(
        std::fs::read(out.join("config.json")).unwrap(),
        std::fs::read(dir.join("config.json")).unwrap()
    );
    // A folder object cannot be written over a file.
    let a_file = t.path().join("a-file");
    std::fs::write(&a_file, b"x").unwrap();
    err(&home, &["get", &hash, "-o", s(&a_file)], "not a folder");

    // cat: one member, byte for byte; a folder needs the member named.
    for (p, bytes) in &tree {
        assert_eq!(&cat(&home, &[&hash, p]), bytes, "{p}");
    }
    err(&home, &["cat", &hash], "say which one");
    err(
        &home,
        &["cat", &hash, "nope.json"],
        "has no file \"nope.json\"",
    );

    // verify, pin, gc.
    let v = verify(&home);
    assert_eq!(v["objects_checked"], 1);
    assert_eq!(v["unreferenced_chunks"], 0);
    let g = json(&ok(&home, &["gc", "--json"]));
    assert_eq!(g["manifests_removed"], 0);

    // export → import on a second station (trusting the publisher) → get, byte for byte.
    let bundle = t.path().join("llama.zdnb");
    ok(&home, &["export", "Llama-tiny", "-o", s(&bundle)]);
    let station = t.path().join("station");
    let imported = ok(&station, &["import", s(&bundle), "--trust-any"]);
    assert_eq!(imported.trim(), hash);
    let out2 = t.path().join("out2");
    ok(&station, &["get", "Llama-tiny", "-o", s(&out2)]);
    assert_eq!(read_tree(&out2), tree);
    let v = verify(&station);
    assert_eq!(v["objects_checked"], 1);

    // Unpinned, gc removes the object and every chunk.
    ok(&home, &["unpin", &hash]);
    let g = json(&ok(&home, &["gc", "--json"]));
    assert_eq!(g["manifests_removed"], 1);
    assert_eq!(g["chunks_removed"], r["chunks"]);
    assert!(ls(&home).is_empty());
    assert_eq!(verify(&home)["chunks_checked"], 0);
}

/// A snapshot of the Hugging Face cache (files are links into the repository's `blobs/`) is
/// added as the folder it stands for: the same files as a plain copy, named by its repository.
#[test]
fn a_hugging_face_cache_snapshot_is_added_through_its_links() {
    use std::os::unix::fs::symlink;
    let t = tmpdir();
    let dir = base_folder(t.path());
    let repo = t.path().join("hub/models--org--Llama-tiny");
    let snap = repo.join("snapshots/0123abcd");
    std::fs::create_dir_all(repo.join("blobs")).unwrap();
    for (i, (path, bytes)) in read_tree(&dir).into_iter().enumerate() {
        let blob = format!("blob{i:03}");
        std::fs::write(repo.join("blobs").join(&blob), bytes).unwrap();
        let link = snap.join(&path);
        std::fs::create_dir_all(link.parent().unwrap()).unwrap();
        let up = "../".repeat(path.matches('/').count() + 2);
        symlink(format!("{up}blobs/{blob}"), &link).unwrap();
    }
    let home = t.path().join("home");
    let plain = add(&home, &dir, &[]);
    let (cached, stderr) = add_saying(&home, &snap);
    assert!(
        stderr.contains("12 files read through their links"),
        "{stderr}"
    );
    assert_eq!(cached["name"], "org/Llama-tiny");
    // The same files: every chunk already stored by the plain copy, and written back the same.
    assert_eq!(cached["object_len"], plain["object_len"]);
    assert_eq!(cached["files"], 12);
    assert_eq!(cached["new_chunks"], 0);
    let back = t.path().join("back");
    ok(&home, &["get", "org/Llama-tiny", "-o", s(&back)]);
    assert_eq!(read_tree(&back), read_tree(&dir));
    // A link out of the repository's blobs is refused, and nothing is stored.
    symlink(dir.join("config.json"), snap.join("extra.json")).unwrap();
    let e = err(
        &home,
        &["add", s(&snap), "--name", "other"],
        "symbolic link",
    );
    assert!(e.contains("extra.json"), "{e}");
    assert_eq!(ls(&home).len(), 2);
}

#[test]
fn a_second_version_stores_only_what_changed() {
    let t = tmpdir();
    let home = t.path().join("home");
    let v1 = t.path().join("v1");
    LlamaSpec::small(3).write(&v1);
    let r1 = add(&home, &v1, &[]);

    // One tensor of the second shard changed (same shapes, so the shard's header is the same),
    // and config.json changed.
    let changed = "model.layers.1.mlp.up_proj.weight";
    let spec = LlamaSpec {
        changed: vec![changed.into()],
        note: "fine-tuned".into(),
        ..LlamaSpec::small(3)
    };
    let k = spec
        .shard_layouts()
        .iter()
        .position(|s| s.iter().any(|t| t.name == changed))
        .unwrap();
    assert_eq!(k, 1, "the changed tensor is in the second shard");
    let v2 = t.path().join("v2");
    spec.write(&v2);
    let r2 = add(&home, &v2, &["--name", "v2"]);
    assert_ne!(r2["hash"], r1["hash"]);
    // New: the changed tensor's chunks (172·64 bf16 = 22 016 bytes: 2 chunks of 16 KiB) and
    // config.json's chunk. Nothing else is stored again.
    assert_eq!(r2["new_chunks"], 3, "{r2}");
    let config = std::fs::metadata(v2.join("config.json")).unwrap().len();
    assert_eq!(
        r2["dedup_bytes"].as_u64().unwrap(),
        r2["object_len"].as_u64().unwrap() - 22_016 - config,
        "{r2}"
    );

    // The same tensors re-sharded in 2 files: only the shard headers and the index are new.
    let v3 = t.path().join("v3");
    LlamaSpec::small(2).write(&v3);
    let r3 = add(&home, &v3, &["--name", "v3"]);
    assert_eq!(r3["new_chunks"], 3, "2 shard headers and the index: {r3}");
    let out = t.path().join("out3");
    ok(&home, &["get", "v3", "-o", s(&out)]);
    assert_eq!(read_tree(&out), read_tree(&v3));
    verify(&home);
}

/// Refused: every bad folder gives a clear error and leaves the store exactly as it was.
#[test]
fn bad_folders_are_refused_and_leave_the_store_as_it_was() {
    let t = tmpdir();
    let home = t.path().join("home");
    let good = base_folder(t.path());
    let before = add(&home, &good, &[]);
    let listed = ls(&home);
    let chunks = verify(&home)["chunks_checked"].clone();

    let case = |name: &str, make: &dyn Fn(&Path), needle: &str| {
        let dir = t.path().join(name);
        LlamaSpec::small(3).write(&dir);
        make(&dir);
        err(&home, &["add", s(&dir), "--chunk-size", CHUNK], needle);
        assert_eq!(ls(&home), listed, "{name}: the store's objects changed");
        let v = verify(&home);
        assert_eq!(
            v["chunks_checked"], chunks,
            "{name}: chunks were left behind"
        );
        assert_eq!(v["unreferenced_chunks"], 0, "{name}");
    };
    let index = |dir: &Path| -> Value {
        json(&std::fs::read_to_string(dir.join("model.safetensors.index.json")).unwrap())
    };
    let write_index = |dir: &Path, v: &Value| {
        std::fs::write(
            dir.join("model.safetensors.index.json"),
            serde_json::to_string(v).unwrap(),
        )
        .unwrap()
    };

    case(
        "dotdot",
        &|d| {
            let mut v = index(d);
            v["weight_map"]["lm_head.weight"] = "../model-00003-of-00003.safetensors".into();
            write_index(d, &v);
        },
        "\"..\" component",
    );
    case(
        "missing-shard",
        &|d| std::fs::remove_file(d.join("model-00002-of-00003.safetensors")).unwrap(),
        "names shard \"model-00002-of-00003.safetensors\", which is not in the folder",
    );
    case(
        "absent-tensor",
        &|d| {
            let mut v = index(d);
            v["weight_map"]["model.layers.9.mlp.up_proj.weight"] =
                "model-00001-of-00003.safetensors".into();
            write_index(d, &v);
        },
        "puts tensor \"model.layers.9.mlp.up_proj.weight\" in \"model-00001-of-00003.safetensors\", which does not hold it",
    );
    case(
        "unlisted-tensor",
        &|d| {
            let mut v = index(d);
            v["weight_map"]
                .as_object_mut()
                .unwrap()
                .remove("model.norm.weight");
            write_index(d, &v);
        },
        "does not list tensor \"model.norm.weight\"",
    );
    case(
        "corrupt-shard",
        &|d| std::fs::write(d.join("model-00001-of-00003.safetensors"), b"garbage!!").unwrap(),
        "model-00001-of-00003.safetensors: not a valid safetensors file",
    );
    case(
        "duplicate-tensor",
        &|d| {
            std::fs::copy(
                d.join("model-00001-of-00003.safetensors"),
                d.join("copy.safetensors"),
            )
            .unwrap();
        },
        "a model folder holds each tensor once",
    );
    case(
        "case-duplicates",
        &|d| std::fs::write(d.join("CONFIG.json"), b"{}").unwrap(),
        "differ only in letter case",
    );
    case(
        "backslash",
        &|d| std::fs::write(d.join("a\\b.json"), b"{}").unwrap(),
        "contains a backslash",
    );
    case(
        "symlink",
        &|d| std::os::unix::fs::symlink("/etc/passwd", d.join("passwd")).unwrap(),
        "is a symbolic link",
    );
    case(
        "fifo",
        &|d| {
            let p = std::ffi::CString::new(d.join("pipe").to_str().unwrap()).unwrap();
            // SAFETY: a valid NUL-terminated path; mkfifo has no other precondition.
            assert_eq!(unsafe { libc::mkfifo(p.as_ptr(), 0o600) }, 0);
        },
        "not a regular file or folder",
    );
    case(
        "too-many-files",
        &|d| {
            std::fs::create_dir(d.join("many")).unwrap();
            for i in 0..4100 {
                std::fs::write(d.join(format!("many/{i}")), b"").unwrap();
            }
        },
        "more than 4096 files",
    );
    case(
        "empty",
        &|d| {
            std::fs::remove_dir_all(d).unwrap();
            std::fs::create_dir(d).unwrap();
        },
        "the folder has no files",
    );
    // The good folder is still there and intact.
    assert_eq!(verify(&home)["objects_checked"], 1);
    assert_eq!(add(&home, &good, &[])["hash"], before["hash"]);
}

#[test]
fn a_folder_object_moves_between_nodes() {
    let publisher = tmpdir();
    let dir = base_folder(publisher.path());
    let hash = add(publisher.path(), &dir, &[])["hash"]
        .as_str()
        .unwrap()
        .to_string();
    let key = ok(publisher.path(), &["key", "show"]).trim().to_string();
    let tree = read_tree(&dir);
    let seeder = NodeProc::start(publisher.path(), &[]);

    // A one-shot fetch, written out as a folder.
    let field = tmpdir();
    let out = field.path().join("llama");
    let r = json(&ok(
        field.path(),
        &[
            "fetch",
            &hash,
            "--peer",
            &seeder.addr,
            "--trust",
            &key,
            "-o",
            s(&out),
            "--json",
        ],
    ));
    assert_eq!(r["hash"], hash.as_str());
    assert_eq!(read_tree(&out), tree);

    // Gossip: a running field node receives the announcement (a version 2 manifest, decoded and
    // checked); then `zdn fetch` goes through its control socket and the node writes -o as a
    // folder through its store thread.
    let field2 = tmpdir();
    let mut node = NodeProc::start(field2.path(), &["--peer", &seeder.addr, "--trust", &key]);
    ok(publisher.path(), &["announce", &hash]);
    let l = node.wait_for("announced ", Duration::from_secs(120));
    assert!(l.starts_with(&format!("announced base {hash} ")), "{l}");
    let out2 = field2.path().join("llama");
    ok(
        field2.path(),
        &["fetch", &hash, "--peer", &seeder.addr, "-o", s(&out2)],
    );
    assert_eq!(read_tree(&out2), tree);
    node.stop();
    verify(field2.path());
    seeder.stop();
}
