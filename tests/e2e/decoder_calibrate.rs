//! `zdn delta calibrate` of a folder delta of the real decoder pair (scripts/make-decoder-pair.sh):
//! the scales of the 1-bit projections fitted to the fine-tune's next-token distributions on the
//! pair's calibration conversations, measured by `zdn eval` on the held-out ones.

use std::path::Path;

use crate::common::decoder_pair::{decoder_pair, DecoderPair};
use crate::common::llama_folder::read_tree;
use crate::common::*;
use serde_json::Value;

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// `zdn delta calibrate` of `delta` on the pair's calibration conversations (held-out ones
/// excluded), with extra arguments.
/// A short calibration (16 conversations, 4 steps) with `extra` options; its JSON report.
fn short_calibration(pair: &DecoderPair, delta: &Path, out: &Path, extra: &[&str]) -> Value {
    let mut args = calibrate_args(pair, delta, out);
    args.extend_from_slice(extra);
    args.extend(["--sentences", "16", "--steps", "4", "--json"]);
    json(&zdn_ok(&args))
}

fn calibrate_args<'a>(pair: &'a DecoderPair, delta: &'a Path, out: &'a Path) -> Vec<&'a str> {
    vec![
        "delta",
        "calibrate",
        "--base",
        s(&pair.base),
        "--finetuned",
        s(&pair.finetuned),
        "--delta",
        s(delta),
        "--corpus",
        s(&pair.calibration),
        "--exclude-corpus",
        s(&pair.heldout),
        "-o",
        s(out),
    ]
}

/// Mean next-token KL(fine-tune ‖ applied) of a folder delta on the first 120 held-out
/// conversations.
fn heldout_kl(pair: &DecoderPair, delta: &Path) -> f64 {
    let r = json(&zdn_ok(&[
        "eval",
        "--base",
        s(&pair.base),
        "--finetuned",
        s(&pair.finetuned),
        "--delta",
        s(delta),
        "--corpus",
        s(&pair.heldout),
        "--max-sentences",
        "120",
        "--json",
    ]));
    assert_eq!(r["conversations"], 120);
    f(&r["kl_finetuned_applied"])
}

/// Calibrating the decoder defaults' folder delta changes only scale bytes of `delta.bitdelta`
/// (every other file, and every packed sign, byte-identical), lowers the KL on the calibration
/// text, and brings the applied model closer to the fine-tune on held-out conversations it never
/// saw.
#[test]
fn calibrate_a_folder_delta_of_the_real_pair() {
    let Some(pair) = decoder_pair("decoder_calibrate::calibrate_a_folder_delta_of_the_real_pair")
    else {
        return;
    };
    let dir = tmpdir();
    let (delta, cal) = (dir.path().join("d"), dir.path().join("cal"));
    delta_encode(&pair.base, &pair.finetuned, &delta, &[]);
    let mut args = calibrate_args(&pair, &delta, &cal);
    args.extend(["--sentences", "64", "--steps", "16", "--json"]);
    let rep = json(&zdn_ok(&args));
    println!("{}", serde_json::to_string_pretty(&rep).unwrap());
    // 4 layers × 7 projections, one scale per row (q, k, v, o, gate, up, down: hidden 256, 2 of
    // 4 heads for keys and values, intermediate 688).
    assert_eq!(rep["tensors"], 28);
    assert_eq!(rep["scales"], 4 * (256 + 128 + 128 + 256 + 688 + 688 + 256));
    assert_eq!(rep["conversations"], 64);
    let (first, last) = (f(&rep["kl_first"]), f(&rep["kl_last"]));
    assert!(last < first, "calibration KL {first} → {last}");

    let (a, c) = (read_tree(&delta), read_tree(&cal));
    assert_eq!(
        a.iter().map(|(p, _)| p).collect::<Vec<_>>(),
        c.iter().map(|(p, _)| p).collect::<Vec<_>>()
    );
    for ((path, a), (_, c)) in a.iter().zip(&c) {
        if path == "delta.bitdelta" {
            assert_eq!(assert_only_scales_differ(a, c), 28);
        } else {
            assert_eq!(a, c, "{path}");
        }
    }

    // With --vocabulary the quantized rows of embed_tokens and lm_head are fitted too (one scale
    // per row of the base's 4096); their exact and new rows, other entries, stay as they are.
    let voc = dir.path().join("voc");
    let rep = short_calibration(&pair, &delta, &voc, &["--vocabulary"]);
    assert_eq!(rep["tensors"], 30);
    assert_eq!(rep["scales"], 9600 + 2 * 4096);
    let (a, c) = (
        std::fs::read(delta.join("delta.bitdelta")).unwrap(),
        std::fs::read(voc.join("delta.bitdelta")).unwrap(),
    );
    assert_eq!(assert_only_scales_differ(&a, &c), 30);

    // --special-weight: the same calibration with the special-token positions weighing 100
    // fits every projection's scales differently (nothing else changes); a weight below 1 is
    // refused (and so is the option for a model that is not a decoder: the next test).
    let runs = [
        ("1", dir.path().join("w1")),
        ("100", dir.path().join("w100")),
    ];
    for (w, out) in &runs {
        let rep = short_calibration(&pair, &delta, out, &["--special-weight", w]);
        assert_eq!(f(&rep["special_weight"]), w.parse::<f64>().unwrap());
    }
    let (a, c) = (
        std::fs::read(runs[0].1.join("delta.bitdelta")).unwrap(),
        std::fs::read(runs[1].1.join("delta.bitdelta")).unwrap(),
    );
    assert_eq!(assert_only_scales_differ(&a, &c), 28);
    let w0 = dir.path().join("w0");
    let mut args = calibrate_args(&pair, &delta, &w0);
    args.extend(["--special-weight", "0.5"]);
    zdn_err(&args, "--special-weight must be between 1 and 10000");

    let (uncal, calibrated) = (heldout_kl(&pair, &delta), heldout_kl(&pair, &cal));
    println!("held-out KL: uncalibrated {uncal:.4}, calibrated {calibrated:.4}");
    assert!(
        calibrated < uncal,
        "held-out KL: calibrated {calibrated} vs uncalibrated {uncal}"
    );
}

/// Bad inputs: calibration text that is all held out, an output that exists, a single `.bitdelta`
/// for a decoder folder, a delta with nothing quantized, a decoder-only option for another model;
/// each a clear error, nothing written.
#[test]
fn decoder_calibrate_refuses_bad_inputs_clearly() {
    let Some(pair) =
        decoder_pair("decoder_calibrate::decoder_calibrate_refuses_bad_inputs_clearly")
    else {
        return;
    };
    let dir = tmpdir();
    let (delta, out) = (dir.path().join("d"), dir.path().join("out"));
    delta_encode(&pair.base, &pair.finetuned, &delta, &[]);
    let mut args = calibrate_args(&pair, &delta, &out);
    args[9] = s(&pair.heldout);
    zdn_err(&args, "no conversation left for calibration");
    assert!(!out.exists());

    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("keep"), b"x").unwrap();
    zdn_err(
        &calibrate_args(&pair, &delta, &out),
        "exists and is not an empty folder",
    );
    assert_eq!(std::fs::read(out.join("keep")).unwrap(), b"x");

    let single = delta.join("delta.bitdelta");
    let out2 = dir.path().join("out2");
    zdn_err(&calibrate_args(&pair, &single, &out2), "delta.bitdelta");
    assert!(!out2.exists());

    let lossless = dir.path().join("lossless");
    delta_encode(&pair.base, &pair.finetuned, &lossless, &["--exclude", "*"]);
    zdn_err(
        &calibrate_args(&pair, &lossless, &out2),
        "nothing to calibrate",
    );
    assert!(!out2.exists());

    // --special-weight for a model that is not a decoder (a single safetensors base).
    let mut args = calibrate_args(&pair, &single, &out2);
    args[3] = s(&single);
    args.extend(["--special-weight", "5"]);
    zdn_err(&args, "--special-weight is for decoder folder deltas");
    assert!(!out2.exists());
}
