//! Quality on the real model pair: the candle BERT forward against an independent reference, `zdn eval`
//! (sentence-embedding cosine on held-out text) and `zdn delta calibrate` (scale distillation).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use crate::common::*;
use candle_core::Device;
use serde_json::Value;
use zdn::model::file::ModelFile;
use zdn::quality::embedder::{row_cosines, SentenceEmbedder};
use zdn::quality::eval::bert_weights;

fn model_dir(weights: &Path) -> &Path {
    weights.parent().unwrap()
}

/// Token ids from Hugging Face's Python tokenizer and embeddings from a numpy BERT in f64
/// (scripts/bert_reference.py) agree with ours.
#[test]
fn embeddings_match_an_independent_reference() {
    let (base, fine) = minilm();
    let reference: Value =
        serde_json::from_str(include_str!("../vectors/minilm_reference.json")).unwrap();
    let dir = model_dir(&base);
    let emb = SentenceEmbedder::open(
        &dir.join("config.json"),
        &dir.join("tokenizer.json"),
        Device::Cpu,
    )
    .unwrap();
    let cases = reference.as_array().unwrap();
    let sentences: Vec<String> = cases
        .iter()
        .map(|c| c["sentence"].as_str().unwrap().to_owned())
        .collect();
    let tokens = emb.tokenize(&sentences).unwrap();
    let wb = bert_weights(&ModelFile::open(&base).unwrap(), &Device::Cpu, "base").unwrap();
    let wf = bert_weights(&ModelFile::open(&fine).unwrap(), &Device::Cpu, "fine").unwrap();
    let eb = emb.embed(&wb, &tokens, 2).unwrap();
    let ef = emb.embed(&wf, &tokens, 2).unwrap();
    let cos = row_cosines(&eb, &ef).unwrap();
    let (eb, ef) = (eb.to_vec2::<f32>().unwrap(), ef.to_vec2::<f32>().unwrap());
    for (i, c) in cases.iter().enumerate() {
        let ids: Vec<u32> = c["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(tokens[i], ids, "token ids of {:?}", sentences[i]);
        for (key, ours) in [("base_first8", &eb[i]), ("finetuned_first8", &ef[i])] {
            for (j, want) in c[key].as_array().unwrap().iter().enumerate() {
                let want = want.as_f64().unwrap() as f32;
                assert!(
                    (ours[j] - want).abs() < 2e-5,
                    "{key}[{j}] of sentence {i}: {} vs reference {want}",
                    ours[j]
                );
            }
        }
        let want = c["cos_base_finetuned"].as_f64().unwrap();
        assert!(
            (f64::from(cos[i]) - want).abs() < 1e-5,
            "cosine {} vs {want}",
            cos[i]
        );
    }
}

fn encode_row_delta(base: &Path, fine: &Path, out: &Path) {
    zdn_ok(&[
        "delta",
        "encode",
        "--base",
        s(base),
        "--finetuned",
        s(fine),
        "-o",
        s(out),
        "--scale",
        "row",
        "--json",
    ]);
}

fn eval_json(base: &Path, fine: &Path, delta: &Path, corpus: &Path, max: &str) -> Value {
    serde_json::from_str(&zdn_ok(&[
        "eval",
        "--base",
        s(base),
        "--finetuned",
        s(fine),
        "--delta",
        s(delta),
        "--corpus",
        s(corpus),
        "--max-sentences",
        max,
        "--json",
    ]))
    .unwrap()
}

/// `zdn eval` on the real pair and the Lee corpus: the delta is much closer to the fine-tune than the
/// base is; then `zdn delta calibrate` changes only scale bytes and lowers the calibration loss.
#[test]
fn eval_and_calibrate_on_the_real_pair() {
    let (base, fine) = minilm();
    let (heldout, background) = lee_corpus();
    let dir = tmpdir();
    let delta = dir.path().join("row.bitdelta");
    encode_row_delta(&base, &fine, &delta);
    let r = eval_json(&base, &fine, &delta, &heldout, "1000");
    assert_eq!(r["sentences"], 148);
    let (d, b) = (
        r["delta"]["mean"].as_f64().unwrap(),
        r["base"]["mean"].as_f64().unwrap(),
    );
    // Reference points (on 152 sentences of the same text): base 0.9753, 1-bit per-row 0.99896.
    assert!((0.96..0.985).contains(&b), "base cosine {b}");
    assert!(d > 0.998 && d > b, "delta cosine {d} (base {b})");
    assert!(r["delta"]["min"].as_f64().unwrap() <= d);

    let cal = dir.path().join("cal.bitdelta");
    let rep: Value = serde_json::from_str(&zdn_ok(&[
        "delta",
        "calibrate",
        "--base",
        s(&base),
        "--finetuned",
        s(&fine),
        "--delta",
        s(&delta),
        "--corpus",
        s(&background),
        "--exclude-corpus",
        s(&heldout),
        "-o",
        s(&cal),
        "--sentences",
        "32",
        "--batch",
        "8",
        "--steps",
        "24",
        "--json",
    ]))
    .unwrap();
    assert_eq!(rep["tensors"], 36);
    let (first, last) = (
        rep["loss_first"].as_f64().unwrap(),
        rep["loss_last"].as_f64().unwrap(),
    );
    assert!(last < first, "calibration loss {first} → {last}");
    let (a, c) = (std::fs::read(&delta).unwrap(), std::fs::read(&cal).unwrap());
    assert_eq!(a.len(), c.len());
    assert_ne!(a, c);
    assert_only_scales_differ(&a, &c);
    // Calibrated on other text, it is closer to the fine-tune than the uncalibrated delta on the
    // held-out sentences (never seen by the calibration).
    let r1 = eval_json(&base, &fine, &delta, &heldout, "48");
    let r2 = eval_json(&base, &fine, &cal, &heldout, "48");
    assert_eq!(r2["sentences"], 48);
    let (uncal, calibrated) = (
        r1["delta"]["mean"].as_f64().unwrap(),
        r2["delta"]["mean"].as_f64().unwrap(),
    );
    assert!(
        calibrated > uncal,
        "held-out cosine: calibrated {calibrated} vs uncalibrated {uncal}"
    );
}

#[test]
fn eval_refuses_bad_inputs_clearly() {
    let (base, fine) = minilm();
    let (heldout, _) = lee_corpus();
    let dir = tmpdir();
    let delta = dir.path().join("d.bitdelta");
    encode_row_delta(&base, &fine, &delta);
    // The fine-tune given as the base: not the base the delta records.
    zdn_err(
        &[
            "eval",
            "--base",
            s(&fine),
            "--finetuned",
            s(&fine),
            "--delta",
            s(&delta),
            "--corpus",
            s(&heldout),
            "--tokenizer",
            s(&model_dir(&base).join("tokenizer.json")),
            "--config",
            s(&model_dir(&base).join("config.json")),
        ],
        "was made for base",
    );
    zdn_err(
        &[
            "eval",
            "--base",
            s(&base),
            "--finetuned",
            s(&fine),
            "--delta",
            s(&delta),
            "--corpus",
            s(&heldout),
            "--tokenizer",
            s(&dir.path().join("none.json")),
        ],
        "none.json",
    );
    let junk = dir.path().join("junk.bitdelta");
    std::fs::write(&junk, b"not a delta").unwrap();
    zdn_err(
        &[
            "eval",
            "--base",
            s(&base),
            "--finetuned",
            s(&fine),
            "--delta",
            s(&junk),
            "--corpus",
            s(&heldout),
        ],
        "junk.bitdelta",
    );
}

/// `zdn add --quality` signs the report into the delta's manifest; `zdn delta inspect OBJ` shows it;
/// a file that is not a quality report is refused and nothing is added.
#[test]
fn quality_report_travels_in_the_manifest() {
    let dir = tmpdir();
    let home = dir.path().join("home");
    let (b, f, d) = (
        dir.path().join("b.safetensors"),
        dir.path().join("f.safetensors"),
        dir.path().join("d.bitdelta"),
    );
    let w = values(64 * 32, 1, 0.1);
    let ft: Vec<f32> = w
        .iter()
        .zip(values(64 * 32, 2, 0.01))
        .map(|(a, x)| a + x)
        .collect();
    write_model(&b, &[T::f32("l.weight", &[64, 32], w)]);
    write_model(&f, &[T::f32("l.weight", &[64, 32], ft)]);
    zdn_ok(&[
        "delta",
        "encode",
        "--base",
        s(&b),
        "--finetuned",
        s(&f),
        "-o",
        s(&d),
    ]);
    let h = s(&home).to_owned();
    zdn_ok(&["--home", &h, "add", s(&b), "--name", "m"]);
    let report = serde_json::json!({
        "metric": zdn::quality::eval::METRIC, "corpus": "lee.cor",
        "corpus_blake3": "0c5dd802c2c49366d3c6b1a3c59d4c5e3d2f5fbb7e3c1b0a9f8e7d6c5b4a3928",
        "sentences": 148, "delta": {"mean": 0.9998, "min": 0.9994, "p5": 0.9997},
        "base": {"mean": 0.9753, "min": 0.9497, "p5": 0.9601},
        "delta_bytes": 1521564, "finetuned_bytes": 90864192
    });
    let q = dir.path().join("q.json");
    std::fs::write(&q, report.to_string()).unwrap();
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, r#"{"metric": "x"}"#).unwrap();
    zdn_err(
        &[
            "--home",
            &h,
            "add",
            s(&d),
            "--base",
            "m",
            "--name",
            "ft",
            "--quality",
            s(&bad),
        ],
        "not a quality report",
    );
    let ls = zdn_ok(&["--home", &h, "ls", "--json"]);
    assert!(!ls.contains("\"ft\""), "{ls}");
    zdn_ok(&[
        "--home",
        &h,
        "add",
        s(&d),
        "--base",
        "m",
        "--name",
        "ft",
        "--quality",
        s(&q),
    ]);
    let v: Value =
        serde_json::from_str(&zdn_ok(&["--home", &h, "delta", "inspect", "ft", "--json"])).unwrap();
    assert_eq!(v["quality"]["delta"]["mean"], 0.9998);
    assert_eq!(v["quality"]["sentences"], 148);
    let text = zdn_ok(&["--home", &h, "delta", "inspect", "ft"]);
    assert!(text.contains("mean cosine 0.9998"), "{text}");
    zdn_err(
        &["--home", &h, "delta", "inspect", "nothing-here"],
        "neither a file nor an object",
    );
}
