//! End-to-end tests of folder deltas (docs/spec/folder-delta.md) with the real binary: a generated
//! Llama-shaped base in 3 shards and a fine-tune in 5 with a grown vocabulary (embed_tokens and
//! lm_head 320 → 322 rows), changed tensors, changed config and tokenizer, unchanged side files.
//! Encode → the folder rebuilt byte for byte (lossless) or tensor for tensor (1-bit) by
//! `zdn delta apply` from disk and by `zdn apply` from the store, also on a second node after a
//! fetch; bad deltas, wrong bases and busy outputs are refused and leave the store as it was.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::common::llama_folder::{read_tree, LlamaSpec};
use crate::common::net::NodeProc;
use crate::common::*;
use serde_json::Value;
use zdn_protocol::bitdelta::{reconstruct, BitDeltaFile, TensorData};
use zdn_protocol::folder::delta::{base_rows, EXACT_SUFFIX, GROWN_SUFFIX};
use zdn_protocol::safetensors;

const CHUNK: &str = "16384";

/// (base folder, fine-tune folder) under `root`.
fn pair(root: &Path) -> (PathBuf, PathBuf) {
    let base = root.join("Llama-tiny");
    LlamaSpec::small(3).write(&base);
    let fine = root.join("Llama-tiny-chat");
    let mut spec = LlamaSpec::small(5);
    spec.vocab = 322;
    spec.note = "chat fine-tune".into();
    spec.changed = vec![
        "model.layers.0.self_attn.q_proj.weight".into(),
        "model.layers.2.mlp.down_proj.weight".into(),
        "model.norm.weight".into(),
        "lm_head.weight".into(),
    ];
    spec.write(&fine);
    std::fs::write(fine.join("chat_template.jinja"), "<|user|>{{ m }}<|end|>").unwrap();
    // The chat tokens the fine-tune declares special: their rows of lm_head are kept exactly.
    // As a real fine-tune's, its tokenizer.json is the base's with the tokens added.
    let path = fine.join("tokenizer.json");
    let mut tokenizer: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    tokenizer["added_tokens"] = serde_json::json!([
        {"id": 1, "content": "<s>", "special": true},
        {"id": 2, "content": "</s>", "special": true},
        {"id": 320, "content": "<|user|>", "special": true},
        {"id": 321, "content": "<|end|>", "special": true},
    ]);
    let text = serde_json::to_string_pretty(&tokenizer).unwrap() + "\n";
    std::fs::write(&path, text).unwrap();
    (base, fine)
}

fn add(home: &Path, dir: &Path, extra: &[&str]) -> String {
    let mut a = vec!["add", s(dir), "--chunk-size", CHUNK, "--json"];
    a.extend_from_slice(extra);
    json(&ok(home, &a))["hash"].as_str().unwrap().to_string()
}

/// Every tensor of every shard of `dir`: name → (dtype, shape, bytes).
pub(crate) fn tensors(dir: &Path) -> HashMap<String, (zdn_protocol::DType, Vec<u64>, Vec<u8>)> {
    let mut out = HashMap::new();
    for (path, bytes) in read_tree(dir) {
        if !path.ends_with(".safetensors") {
            continue;
        }
        let h = safetensors::parse(&bytes).unwrap();
        for t in h.tensors {
            out.insert(
                t.name.clone(),
                (t.dtype, t.shape.clone(), bytes[t.range.clone()].to_vec()),
            );
        }
    }
    out
}

/// What the delta says each fine-tune tensor is: reconstructed here from `delta.bitdelta` and
/// the base's tensors through the protocol crate, independently of the binary's assembly.
fn expected_tensors(base: &Path, delta: &Path) -> HashMap<String, Vec<u8>> {
    let base_t = tensors(base);
    let bytes = std::fs::read(delta.join("delta.bitdelta")).unwrap();
    let f = BitDeltaFile::parse(&bytes).unwrap();
    let layout: Value =
        serde_json::from_slice(&std::fs::read(delta.join("zdn-delta.json")).unwrap()).unwrap();
    let mut out: HashMap<String, Vec<u8>> = HashMap::new();
    for (i, e) in f.entries.iter().enumerate() {
        let mut buf = vec![0u8; e.byte_len() as usize];
        if let Some(name) = e.name.strip_suffix(GROWN_SUFFIX) {
            reconstruct(e, f.block(i), None, &mut buf).unwrap();
            out.get_mut(name).unwrap().extend_from_slice(&buf);
            continue;
        }
        if let Some(name) = e.name.strip_suffix(EXACT_SUFFIX) {
            // Row k of this entry replaces row indices[k] of the tensor.
            reconstruct(e, f.block(i), None, &mut buf).unwrap();
            let x = layout["exact_rows"]
                .as_array()
                .unwrap()
                .iter()
                .find(|x| x["name"] == name)
                .unwrap();
            let t = out.get_mut(name).unwrap();
            let row = buf.len() / e.shape[0] as usize;
            for (k, at) in x["indices"].as_array().unwrap().iter().enumerate() {
                let at = at.as_u64().unwrap() as usize * row;
                t[at..at + row].copy_from_slice(&buf[k * row..(k + 1) * row]);
            }
            continue;
        }
        let b = base_t.get(&e.name).map(|(d, s, b)| TensorData {
            dtype: *d,
            shape: s,
            bytes: b,
        });
        let b = b.and_then(|b| base_rows(e, b));
        reconstruct(e, f.block(i), b.as_ref(), &mut buf).unwrap();
        out.insert(e.name.clone(), buf);
    }
    out
}

fn header_bytes(file: &[u8]) -> &[u8] {
    &file[..safetensors::parse(file).unwrap().data_start]
}

#[test]
fn a_lossless_folder_delta_rebuilds_the_fine_tune_byte_for_byte() {
    let t = tmpdir();
    let (base, fine) = pair(t.path());
    let d = t.path().join("chat.delta");
    let r = delta_encode(&base, &fine, &d, &["--exclude", "*"]);
    // Two shard layouts: every tensor was paired by name, none stored raw for want of a base
    // tensor but the grown rows.
    assert_eq!(r["finetune_only"], serde_json::json!([]));
    assert_eq!(
        r["grown"],
        serde_json::json!(["model.embed_tokens.weight", "lm_head.weight"])
    );
    let from = |p: &str| {
        r["files"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["path"] == p)
            .unwrap()["from"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(from("generation_config.json"), "base");
    assert_eq!(from("special_tokens_map.json"), "base");
    // Side files that changed a little go as patches against the base's, a rewritten one whole.
    assert_eq!(from("config.json"), "patched");
    assert_eq!(from("tokenizer.json"), "patched");
    assert_eq!(from("chat_template.jinja"), "carried");
    assert_eq!(from("model-00004-of-00005.safetensors"), "tensors");
    // Only what differs is sent, and a patch costs the change, not the file.
    assert!(!d.join("files/generation_config.json").exists());
    assert!(!d.join("files/tokenizer.json").exists());
    let patch = std::fs::metadata(d.join("patches/tokenizer.json"))
        .unwrap()
        .len();
    let file = std::fs::metadata(fine.join("tokenizer.json"))
        .unwrap()
        .len();
    assert!(
        patch * 20 < file,
        "patch {patch} bytes of a {file}-byte file"
    );
    let layout: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("zdn-delta.json")).unwrap()).unwrap();
    assert_eq!(layout["format"], "zdn-folder-delta/2");

    let out = t.path().join("rebuilt");
    zdn_ok(&delta_apply_args(&base, &d, &out));
    assert_eq!(read_tree(&out), read_tree(&fine));
}

/// `delta inspect` of the folder delta `d` from the store (`store`, `shown` its text) and from
/// disk (`disk`) say how each file travels: the same table, the patches' sizes those on disk.
fn assert_files_shown(store: &Value, disk: &Value, shown: &str, d: &Path) {
    assert_eq!(disk["files"], store["files"]);
    let tok = store["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == "tokenizer.json")
        .unwrap();
    assert_eq!(tok["from"], "patched");
    let patch = std::fs::metadata(d.join("patches/tokenizer.json"))
        .unwrap()
        .len();
    assert_eq!(tok["member_bytes"], patch);
    assert!(shown.contains("patched  tokenizer.json"), "{shown}");
}

#[test]
fn a_one_bit_folder_delta_goes_through_the_store_and_a_second_node() {
    let publisher = tmpdir();
    let (base, fine) = pair(publisher.path());
    let d = publisher.path().join("chat.delta");
    let r = delta_encode(&base, &fine, &d, &[]);
    let fine_bytes: u64 = read_tree(&fine).iter().map(|f| f.1.len() as u64).sum();
    assert!(
        r["delta_bytes"].as_u64().unwrap() * 4 < fine_bytes,
        "a 1-bit folder delta should be a fraction of the bf16 fine-tune: {} of {fine_bytes}",
        r["delta_bytes"]
    );
    // The decoder defaults (config.json says llama): projections with row scales, vocabulary
    // matrices by rows with the special tokens' rows exact (ids 1 and 2; 320 and 321 are new rows).
    assert!(r["defaults"]["applied"]
        .as_str()
        .unwrap()
        .starts_with("decoder defaults"));
    let exact = r["exact_rows"].as_array().unwrap();
    let lm = exact
        .iter()
        .find(|x| x["name"] == "lm_head.weight")
        .unwrap();
    assert_eq!(lm["special"], 2, "{lm}");
    let q = r["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "model.layers.0.self_attn.q_proj.weight")
        .unwrap();
    assert_eq!(
        (q["encoding"].as_str(), q["class"].as_str()),
        (Some("sign1"), Some("projection"))
    );
    let home = publisher.path();
    let base_hash = add(home, &base, &[]);
    // A decoder quality report (the raw `zdn eval --json` of the decoder table) rides signed in
    // the manifest and is shown by `delta inspect`, as is the folder delta's delta.bitdelta.
    let report = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../docs/results/decoder-pair-folder/2.eval.json");
    let delta_hash = add(home, &d, &["--base", &base_hash, "--quality", s(&report)]);
    let shown = ok(home, &["delta", "inspect", &delta_hash]);
    assert!(shown.contains("KL(fine-tune ‖ applied) 0.0813"), "{shown}");
    let v = json(&ok(home, &["delta", "inspect", &delta_hash, "--json"]));
    assert_eq!(v["quality"]["conversations"], 303);
    assert_eq!(
        v["n_tensors"].as_u64().unwrap() as usize,
        r["tensors"].as_array().unwrap().len()
    );
    let on_disk = json(&zdn_ok(&["delta", "inspect", s(&d), "--json"]));
    assert_eq!(on_disk["file_bytes"], v["file_bytes"]);
    assert_files_shown(&v, &on_disk, &shown, &d);

    // From the store and from disk: the same folder.
    let from_store = publisher.path().join("from-store");
    ok(home, &["apply", &delta_hash, "-o", s(&from_store)]);
    let from_disk = publisher.path().join("from-disk");
    zdn_ok(&delta_apply_args(&base, &d, &from_disk));
    let tree = read_tree(&from_store);
    assert_eq!(tree, read_tree(&from_disk));

    // The fine-tune's file set, shard layout and headers; side files exact.
    let fine_tree = read_tree(&fine);
    let names = |t: &[(String, Vec<u8>)]| t.iter().map(|f| f.0.clone()).collect::<Vec<_>>();
    assert_eq!(names(&tree), names(&fine_tree));
    for ((path, got), (_, want)) in tree.iter().zip(&fine_tree) {
        if path.ends_with(".safetensors") {
            assert_eq!(header_bytes(got), header_bytes(want), "{path}");
            assert_eq!(got.len(), want.len(), "{path}");
        } else {
            assert_eq!(got, want, "{path}");
        }
    }
    // Every tensor is what the delta says; unchanged ones are the fine-tune's exactly.
    let expected = expected_tensors(&base, &d);
    let got = tensors(&from_store);
    let fine_t = tensors(&fine);
    assert_eq!(got.len(), fine_t.len());
    for (name, (_, shape, bytes)) in &got {
        assert_eq!(bytes, &expected[name], "{name}");
        assert_eq!(shape, &fine_t[name].1, "{name}");
    }
    assert_eq!(
        got["model.layers.1.self_attn.k_proj.weight"].2,
        fine_t["model.layers.1.self_attn.k_proj.weight"].2
    );
    // The special tokens' rows (1 and 2, 64 bf16 each) are the fine-tune's exactly, the others not.
    let row = |t: &Vec<u8>, i: usize| t[i * 128..(i + 1) * 128].to_vec();
    for i in [1, 2] {
        assert_eq!(
            row(&got["lm_head.weight"].2, i),
            row(&fine_t["lm_head.weight"].2, i)
        );
    }
    assert_ne!(
        row(&got["lm_head.weight"].2, 3),
        row(&fine_t["lm_head.weight"].2, 3)
    );
    // The grown rows are the fine-tune's exactly.
    let rows = |t: &Vec<u8>| t[320 * 64 * 2..].to_vec();
    assert_eq!(
        rows(&got["lm_head.weight"].2),
        rows(&fine_t["lm_head.weight"].2)
    );

    // Encoded against the base object in the store (no loose base): the same delta, byte for byte.
    let d2 = publisher.path().join("chat2.delta");
    ok(
        home,
        &[
            "delta",
            "encode",
            "--base",
            &base_hash,
            "--finetuned",
            s(&fine),
            "-o",
            s(&d2),
        ],
    );
    assert_eq!(read_tree(&d2), read_tree(&d));
    // And with the fine-tune an object in the store too (written out beside the output, verified,
    // and removed after): the same delta again. A delta is not a fine-tune.
    let fine_hash = add(home, &fine, &[]);
    let d3 = publisher.path().join("chat3.delta");
    let chat4 = publisher.path().join("chat4.delta");
    let encode_args = |fine: &str, out: &Path| -> Vec<String> {
        let args = ["delta", "encode", "--base", &base_hash, "--finetuned", fine];
        let mut v: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        v.extend(["-o".to_string(), s(out).to_string()]);
        v
    };
    fn strs(v: &[String]) -> Vec<&str> {
        v.iter().map(String::as_str).collect()
    }
    ok(home, &strs(&encode_args(&fine_hash, &d3)));
    assert_eq!(read_tree(&d3), read_tree(&d));
    err(
        home,
        &strs(&encode_args(&delta_hash, &chat4)),
        "a fine-tune is a model",
    );
    let left: Vec<_> = std::fs::read_dir(publisher.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".zdn-finetuned-") || n == "chat4.delta")
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");

    // A second node fetches the delta (and its base) and applies it from its own store.
    let key = ok(home, &["key", "show"]).trim().to_string();
    let seeder = NodeProc::start(home, &[]);
    let field = tmpdir();
    ok(
        field.path(),
        &[
            "fetch",
            &delta_hash,
            "--peer",
            &seeder.addr,
            "--trust",
            &key,
        ],
    );
    seeder.stop();
    let out = field.path().join("chat");
    ok(field.path(), &["apply", &delta_hash, "-o", s(&out)]);
    assert_eq!(read_tree(&out), tree);
}

/// `--bits-for GLOB=BITS`: the matching quantized tensors get those bits, every other one
/// `--bits`; the folder rebuilds as the delta says. Refused for a single file and when malformed.
#[test]
fn bits_for_gives_the_matching_tensors_their_bits() {
    let t = tmpdir();
    let (base, fine) = pair(t.path());
    let d = t.path().join("mixed.delta");
    let r = delta_encode(
        &base,
        &fine,
        &d,
        &[
            "--bits-for",
            "model.layers.0.*=2",
            "--bits-for",
            "*.down_proj.*=4",
        ],
    );
    let encodings: HashMap<String, String> = r["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["name"].as_str().unwrap().to_owned(),
                t["encoding"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let quantized: Vec<&String> = encodings
        .iter()
        .filter(|(_, e)| e.starts_with("sign") || e.starts_with("bits"))
        .map(|(n, _)| n)
        .collect();
    assert!(quantized.len() > 10, "{encodings:?}");
    for name in quantized {
        // The first match wins: layer 0's down_proj is 2-bit.
        let want = if name.starts_with("model.layers.0.") {
            "bits2"
        } else if name.contains(".down_proj.") {
            "bits4"
        } else {
            "sign1"
        };
        assert_eq!(encodings[name], want, "{name}");
    }
    let out = t.path().join("out");
    zdn_ok(&delta_apply_args(&base, &d, &out));
    let expected = expected_tensors(&base, &d);
    for (name, (_, _, bytes)) in tensors(&out) {
        assert_eq!(bytes, expected[&name], "{name}");
    }

    let single = t.path().join("single.bitdelta");
    let (b, f) = (
        base.join("model-00001-of-00003.safetensors"),
        base.join("model-00002-of-00003.safetensors"),
    );
    let mut single_args = delta_encode_args(&b, &f, &single);
    single_args.extend(["--bits-for", "*=2"]);
    zdn_err(&single_args, "--bits-for is for a fine-tune folder");
    // Malformed: a usage error (exit 2) naming the option, nothing written.
    for bad in ["*", "=2", "*=3"] {
        let o = t.path().join("bad.delta");
        let mut args = delta_encode_args(&base, &fine, &o);
        args.extend(["--bits-for", bad]);
        let out = zdn(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad}: {err}");
        assert!(err.contains("--bits-for"), "{bad}: {err}");
        assert!(!o.exists());
    }
}

/// `cp -r from to`; returns `to`.
fn copy_tree(from: &Path, to: &Path) -> PathBuf {
    let copied = std::process::Command::new("cp")
        .args(["-r", s(from), s(to)])
        .status()
        .unwrap();
    assert!(copied.success());
    to.to_owned()
}

/// A patch that does not rebuild its file (its bytes altered), and a right patch applied to a
/// base whose file of that path differs (forced past the base check): refused by apply, naming
/// the file, nothing left at the output.
#[test]
fn a_bad_patch_or_another_base_file_is_refused() {
    let t = tmpdir();
    let (base, fine) = pair(t.path());
    let d = t.path().join("chat.delta");
    delta_encode(&base, &fine, &d, &[]);
    let bad_patch = copy_tree(&d, &t.path().join("bad-patch"));
    let p = bad_patch.join("patches/tokenizer.json");
    let mut b = std::fs::read(&p).unwrap();
    let mid = b.len() / 2;
    b[mid] ^= 0x55;
    std::fs::write(&p, b).unwrap();
    // Refused where it is published too: `zdn add` rebuilds every patch against the base in the
    // store (and hashes every carried file); the store is left as it was.
    let home = t.path().join("home");
    let base_hash = add(&home, &base, &[]);
    err(
        &home,
        &["add", s(&bad_patch), "--base", &base_hash],
        "\"tokenizer.json\": its",
    );
    let carried = copy_tree(&d, &t.path().join("bad-carried"));
    let c = carried.join("files/chat_template.jinja");
    let mut b = std::fs::read(&c).unwrap();
    b[0] ^= 1;
    std::fs::write(&c, b).unwrap();
    err(
        &home,
        &["add", s(&carried), "--base", &base_hash],
        "\"chat_template.jinja\": its bytes do not hash to the layout's blake3",
    );
    assert_eq!(
        json(&ok(&home, &["ls", "--json"]))
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let other_base = copy_tree(&base, &t.path().join("other-base"));
    let tok = other_base.join("tokenizer.json");
    let text = std::fs::read_to_string(&tok)
        .unwrap()
        .replacen("tok1", "tokX", 1);
    std::fs::write(&tok, text).unwrap();
    let out = t.path().join("out");
    let mut forced = delta_apply_args(&other_base, &d, &out);
    forced.push("--force");
    for (args, needle) in [
        (delta_apply_args(&base, &bad_patch, &out), "tokenizer.json"),
        (
            forced,
            "tokenizer.json: patched: the base's file of this path hashes to",
        ),
    ] {
        zdn_err(&args, needle);
        assert!(!out.exists(), "an output was left behind");
    }
}

#[test]
fn bad_folder_deltas_and_wrong_bases_are_refused() {
    let t = tmpdir();
    let (base, fine) = pair(t.path());
    let d = t.path().join("chat.delta");
    delta_encode(&base, &fine, &d, &[]);
    let home = t.path().join("home");
    let base_hash = add(&home, &base, &[]);
    let count = || {
        json(&ok(&home, &["ls", "--json"]))
            .as_array()
            .unwrap()
            .len()
    };

    // Another base (the fine-tune itself, as a base object): refused, store unchanged.
    let other = add(&home, &fine, &[]);
    assert_eq!(count(), 2);
    let e = err(
        &home,
        &["add", s(&d), "--base", &other],
        "made against base",
    );
    assert!(e.contains("store is unchanged"), "{e}");
    // A folder delta without --base, and a model folder with one.
    err(&home, &["add", s(&d)], "folder delta");
    err(
        &home,
        &["add", s(&base), "--base", &base_hash],
        "--base is for deltas",
    );
    assert_eq!(count(), 2);

    // Tampered copies, each refused by add and by apply, the store and the output untouched.
    let copy = |name: &str| copy_tree(&d, &t.path().join(name));
    let layout = std::fs::read_to_string(d.join("zdn-delta.json")).unwrap();
    let cases: Vec<(PathBuf, &str)> = vec![
        {
            let c = copy("stray");
            std::fs::write(c.join("files/extra.txt"), "x").unwrap();
            (c, "not part of the fine-tune's layout")
        },
        {
            let c = copy("escape");
            std::fs::write(
                c.join("zdn-delta.json"),
                layout.replacen("\"config.json\"", "\"../config.json\"", 1),
            )
            .unwrap();
            (c, "config.json")
        },
        {
            let c = copy("missing");
            std::fs::remove_file(c.join("patches/config.json")).unwrap();
            (c, "lacks its member")
        },
        {
            let c = copy("old-format");
            std::fs::write(
                c.join("zdn-delta.json"),
                layout.replacen("zdn-folder-delta/2", "zdn-folder-delta/1", 1),
            )
            .unwrap();
            (c, "but its files need \"zdn-folder-delta/2\"")
        },
        {
            let c = copy("header");
            let h = c.join("headers/model-00002-of-00005.safetensors");
            let mut b = std::fs::read(&h).unwrap();
            let n = b.len();
            b[n - 3] = b'9';
            std::fs::write(&h, b).unwrap();
            (c, "model-00002-of-00005.safetensors")
        },
        {
            let c = copy("carried");
            std::fs::write(c.join("files/chat_template.jinja"), b"{}").unwrap();
            (c, "chat_template.jinja")
        },
    ];
    for (c, needle) in &cases {
        err(&home, &["add", s(c), "--base", &base_hash], needle);
        let out = t.path().join("out");
        zdn_err(&delta_apply_args(&base, c, &out), needle);
        assert!(!out.exists(), "{}: an output was left behind", c.display());
    }
    assert_eq!(count(), 2);

    // The right delta, applied to the wrong base or into a non-empty folder: refused.
    let out = t.path().join("out");
    zdn_err(
        &delta_apply_args(&fine, &d, &out),
        "was made for base object",
    );
    assert!(!out.exists());
    let delta_hash = add(&home, &d, &["--base", &base_hash]);
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("keep.txt"), "mine").unwrap();
    err(
        &home,
        &["apply", &delta_hash, "-o", s(&out)],
        "not an empty folder",
    );
    assert_eq!(std::fs::read(out.join("keep.txt")).unwrap(), b"mine");
    // `zdn apply` of a base: refused with the reason.
    err(
        &home,
        &["apply", &base_hash, "-o", s(&t.path().join("x"))],
        "has no base",
    );
}

#[test]
fn a_single_file_delta_is_applied_from_the_store() {
    let t = tmpdir();
    let (b, f) = (
        t.path().join("base.safetensors"),
        t.path().join("ft.safetensors"),
    );
    let w = |seed| T::f32("w", &[64, 32], values(64 * 32, seed, 0.1));
    write_model(&b, &[w(1), T::f32("n", &[32], values(32, 3, 1.0))]);
    write_model(&f, &[w(2), T::f32("n", &[32], values(32, 4, 1.0))]);
    let d = t.path().join("ft.bitdelta");
    zdn_ok(&delta_encode_args(&b, &f, &d));
    let home = t.path().join("home");
    let base_hash = add(&home, &b, &[]);
    let delta_hash = add(&home, &d, &["--base", &base_hash]);
    let (from_store, from_disk) = (
        t.path().join("a.safetensors"),
        t.path().join("b.safetensors"),
    );
    ok(&home, &["apply", &delta_hash, "-o", s(&from_store)]);
    zdn_ok(&delta_apply_args(&b, &d, &from_disk));
    assert_eq!(
        std::fs::read(&from_store).unwrap(),
        std::fs::read(&from_disk).unwrap()
    );
}
