//! End-to-end tests of `zdn delta …` on small generated models: the real binary, real files.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common::*;
use serde_json::Value;
use zdn_protocol::DType;

/// A base with a linear layer (odd shape), a bias, an int64 base-only tensor, an embedding, a
/// zero-sized tensor, and a fine-tune that changes most of them.
fn pair(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let base = dir.join("base.safetensors");
    let fine = dir.join("fine.safetensors");
    let w = values(37 * 13, 1, 0.2);
    let dw = values(37 * 13, 2, 0.01);
    let emb = values(50 * 12, 3, 0.1);
    let pos: Vec<u8> = (0..7i64).flat_map(i64::to_le_bytes).collect();
    write_model(
        &base,
        &[
            T::f32("layer.weight", &[37, 13], w.clone()),
            T::f32("layer.bias", &[37], values(37, 4, 0.1)),
            T::f32("word_embeddings.weight", &[50, 12], emb.clone()),
            T::f32("norm.weight", &[5], [1.0; 5]),
            T::f32("empty.weight", &[0, 4], []),
            T {
                name: "position_ids".into(),
                dtype: DType::I64,
                shape: vec![7],
                bytes: pos,
            },
        ],
    );
    write_model(
        &fine,
        &[
            T::f32(
                "layer.weight",
                &[37, 13],
                w.iter().zip(&dw).map(|(a, b)| a + b),
            ),
            T::f32("layer.bias", &[37], values(37, 5, 0.1)),
            T::f32(
                "word_embeddings.weight",
                &[50, 12],
                emb.iter().map(|v| v * 1.001),
            ),
            T::f32("norm.weight", &[5], [1.0; 5]),
            T::f32("empty.weight", &[0, 4], []),
            T::f32("head.weight", &[3, 4], values(12, 6, 1.0)),
        ],
    );
    (base, fine)
}

#[test]
fn encode_inspect_apply_eval_every_setting() {
    let dir = tmpdir();
    let (base, fine) = pair(dir.path());
    let mut last_err = f64::INFINITY;
    for (bits, scale) in [
        ("1", "tensor"),
        ("1", "row"),
        ("1", "group:5"),
        ("2", "group:5"),
        ("4", "group:5"),
    ] {
        let d = dir.path().join(format!("d{bits}{scale}.bitdelta"));
        let enc: Value = serde_json::from_str(&zdn_ok(&[
            "delta",
            "encode",
            "--base",
            s(&base),
            "--finetuned",
            s(&fine),
            "-o",
            s(&d),
            "--bits",
            bits,
            "--scale",
            scale,
            "--json",
        ]))
        .unwrap();
        assert_eq!(
            enc["skipped_base_only"],
            serde_json::json!(["position_ids"])
        );
        assert_eq!(enc["finetune_only"], serde_json::json!(["head.weight"]));
        let enc_of = |name: &str| {
            enc["tensors"]
                .as_array()
                .unwrap()
                .iter()
                .find(|t| t["name"] == name)
                .unwrap()["encoding"]
                .clone()
        };
        let want = match bits {
            "1" => "sign1",
            "2" => "bits2",
            _ => "bits4",
        };
        assert_eq!(enc_of("layer.weight"), want);
        assert_eq!(enc_of("layer.bias"), "xor");
        assert_eq!(enc_of("norm.weight"), "unchanged");
        assert_eq!(enc_of("word_embeddings.weight"), "base");
        assert_eq!(enc_of("head.weight"), "raw");
        assert_eq!(enc_of("empty.weight"), "unchanged");

        let insp: Value =
            serde_json::from_str(&zdn_ok(&["delta", "inspect", s(&d), "--json"])).unwrap();
        assert_eq!(insp["file_bytes"], enc["file_bytes"]);
        assert_eq!(insp["n_tensors"], 6);
        assert!(zdn_ok(&["delta", "inspect", s(&d)]).contains("layer.weight"));

        let out1 = dir.path().join("out1.safetensors");
        let out2 = dir.path().join("out2.safetensors");
        zdn_ok(&[
            "delta",
            "apply",
            "--base",
            s(&base),
            "--delta",
            s(&d),
            "-o",
            s(&out1),
        ]);
        zdn_ok(&[
            "delta",
            "apply",
            "--base",
            s(&base),
            "--delta",
            s(&d),
            "-o",
            s(&out2),
        ]);
        assert_eq!(
            std::fs::read(&out1).unwrap(),
            std::fs::read(&out2).unwrap(),
            "apply is deterministic"
        );
        for exact in ["layer.bias", "norm.weight", "head.weight", "empty.weight"] {
            assert_eq!(
                tensor_bytes(&out1, exact),
                tensor_bytes(&fine, exact),
                "{exact} is lossless"
            );
        }
        assert_eq!(
            tensor_bytes(&out1, "word_embeddings.weight"),
            tensor_bytes(&base, "word_embeddings.weight")
        );
        assert_eq!(tensor_bytes(&out1, "position_ids"), None);

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
            q < 1.0,
            "{bits}-bit {scale}: quantized delta error {q} not better than the base"
        );
        if scale == "group:5" {
            assert!(
                q <= last_err,
                "more bits must not be worse: {q} > {last_err}"
            );
            last_err = q;
        }
    }
    // Encoding is deterministic too.
    let a = dir.path().join("a.bitdelta");
    let b = dir.path().join("b.bitdelta");
    for p in [&a, &b] {
        zdn_ok(&[
            "delta",
            "encode",
            "--base",
            s(&base),
            "--finetuned",
            s(&fine),
            "-o",
            s(p),
            "--scale",
            "row",
        ]);
    }
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
}

#[test]
fn include_exclude_and_embedding_policies() {
    let dir = tmpdir();
    let (base, fine) = pair(dir.path());
    let d = dir.path().join("d.bitdelta");
    let enc: Value = serde_json::from_str(&zdn_ok(&[
        "delta",
        "encode",
        "--base",
        s(&base),
        "--finetuned",
        s(&fine),
        "-o",
        s(&d),
        "--include",
        "*.bias",
        "--exclude",
        "layer.w*",
        "--embeddings",
        "quantize",
        "--json",
    ]))
    .unwrap();
    let enc_of = |name: &str| {
        enc["tensors"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == name)
            .unwrap()["encoding"]
            .clone()
    };
    assert_eq!(enc_of("layer.bias"), "sign1");
    assert_eq!(enc_of("layer.weight"), "xor");
    assert_eq!(enc_of("word_embeddings.weight"), "sign1");
    zdn_ok(&[
        "delta",
        "encode",
        "--base",
        s(&base),
        "--finetuned",
        s(&fine),
        "-o",
        s(&d),
        "--embeddings",
        "exact",
    ]);
    let out = dir.path().join("o.safetensors");
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
    assert_eq!(
        tensor_bytes(&out, "word_embeddings.weight"),
        tensor_bytes(&fine, "word_embeddings.weight")
    );
}

#[test]
fn bad_delta_files_are_named_errors() {
    let dir = tmpdir();
    let (base, fine) = pair(dir.path());
    let d = dir.path().join("d.bitdelta");
    zdn_ok(&[
        "delta",
        "encode",
        "--base",
        s(&base),
        "--finetuned",
        s(&fine),
        "-o",
        s(&d),
    ]);
    let good = std::fs::read(&d).unwrap();
    let bad = dir.path().join("bad.bitdelta");
    let out = dir.path().join("out.safetensors");
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (good[..good.len() - 3].to_vec(), "truncated"),
        (good[..10].to_vec(), "truncated"),
        (
            b"garbage that is long enough to have a header".to_vec(),
            "not a .bitdelta file",
        ),
        (
            {
                let mut g = good.clone();
                g[8] = 9;
                g
            },
            "unsupported .bitdelta version 9",
        ),
        (
            {
                let mut g = good.clone();
                g.extend_from_slice(b"xx");
                g
            },
            "trailing bytes",
        ),
        (Vec::new(), "truncated"),
    ];
    for (bytes, needle) in cases {
        std::fs::write(&bad, &bytes).unwrap();
        zdn_err(&["delta", "inspect", s(&bad)], needle);
        zdn_err(
            &[
                "delta",
                "apply",
                "--base",
                s(&base),
                "--delta",
                s(&bad),
                "-o",
                s(&out),
            ],
            needle,
        );
        assert!(!out.exists());
    }
    zdn_err(
        &["delta", "inspect", s(&dir.path().join("missing"))],
        "cannot read",
    );
    zdn_err(&["delta", "inspect", s(dir.path())], "is a directory");
}

#[test]
fn bad_models_are_named_errors() {
    let dir = tmpdir();
    let (base, fine) = pair(dir.path());
    let d = dir.path().join("d.bitdelta");
    let enc = |b: &std::path::Path, f: &std::path::Path, needle: &str| {
        zdn_err(
            &[
                "delta",
                "encode",
                "--base",
                s(b),
                "--finetuned",
                s(f),
                "-o",
                s(&d),
            ],
            needle,
        );
        assert!(!d.exists(), "no output after a failed encode");
    };
    // Bad header.
    let junk = dir.path().join("junk.safetensors");
    std::fs::write(&junk, b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all").unwrap();
    enc(&base, &junk, "not a valid safetensors file");
    enc(&junk, &fine, "not a valid safetensors file");
    std::fs::write(&junk, [1u8, 2]).unwrap();
    enc(&base, &junk, "too short");
    // Shape and dtype mismatch.
    let other = dir.path().join("other.safetensors");
    write_model(
        &other,
        &[T::f32("layer.weight", &[13, 37], values(481, 1, 1.0))],
    );
    enc(&base, &other, "differs from fine-tune shape");
    let pos_f32 = dir.path().join("pos.safetensors");
    write_model(&pos_f32, &[T::f32("position_ids", &[7], values(7, 1, 1.0))]);
    enc(&base, &pos_f32, "incompatible");
    // NaN / Inf in a quantized tensor: named, and nothing written.
    let nan = dir.path().join("nan.safetensors");
    let mut w = values(37 * 13, 1, 0.2);
    w[100] = f32::NAN;
    write_model(&nan, &[T::f32("layer.weight", &[37, 13], w.clone())]);
    let e = zdn_err(
        &[
            "delta",
            "encode",
            "--base",
            s(&base),
            "--finetuned",
            s(&nan),
            "-o",
            s(&d),
        ],
        "layer.weight",
    );
    assert!(e.contains("element 100"), "{e}");
    w[100] = f32::INFINITY;
    write_model(&nan, &[T::f32("layer.weight", &[37, 13], w)]);
    enc(&base, &nan, "non-finite");
    assert_eq!(
        files_in(dir.path())
            .iter()
            .filter(|p| s(p).contains("partial"))
            .count(),
        0
    );
    // Empty fine-tune.
    let empty = dir.path().join("empty.safetensors");
    write_model(&empty, &[]);
    enc(&base, &empty, "has no tensors");
    // Unwritable output.
    zdn_err(
        &[
            "delta",
            "encode",
            "--base",
            s(&base),
            "--finetuned",
            s(&fine),
            "-o",
            "/proc/zdn-cannot-write/x.bitdelta",
        ],
        "cannot create output",
    );
    // Bad option values.
    let out = zdn(&[
        "delta",
        "encode",
        "--base",
        s(&base),
        "--finetuned",
        s(&fine),
        "-o",
        s(&d),
        "--bits",
        "3",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bits must be 1, 2 or 4"));
    let out = zdn(&[
        "delta",
        "encode",
        "--base",
        s(&base),
        "--finetuned",
        s(&fine),
        "-o",
        s(&d),
        "--scale",
        "group:0",
    ]);
    assert_eq!(out.status.code(), Some(2));
    zdn_err(
        &[
            "delta",
            "encode",
            "--base",
            s(&base),
            "--finetuned",
            s(&fine),
            "-o",
            s(&d),
            "--clip=-1",
        ],
        "--clip",
    );
}

#[test]
fn wrong_base_is_refused_unless_forced() {
    let dir = tmpdir();
    let (base, fine) = pair(dir.path());
    let d = dir.path().join("d.bitdelta");
    zdn_ok(&[
        "delta",
        "encode",
        "--base",
        s(&base),
        "--finetuned",
        s(&fine),
        "-o",
        s(&d),
    ]);
    // Same layout, different values: a different base.
    let other = dir.path().join("other.safetensors");
    let mut bytes = std::fs::read(&base).unwrap();
    let last = bytes.len() - 60;
    bytes[last] ^= 1;
    std::fs::write(&other, &bytes).unwrap();
    let out = dir.path().join("o.safetensors");
    zdn_err(
        &[
            "delta",
            "apply",
            "--base",
            s(&other),
            "--delta",
            s(&d),
            "-o",
            s(&out),
        ],
        "use --force",
    );
    assert!(!out.exists());
    let r: Value = serde_json::from_str(&zdn_ok(&[
        "delta",
        "apply",
        "--base",
        s(&other),
        "--delta",
        s(&d),
        "-o",
        s(&out),
        "--force",
        "--json",
    ]))
    .unwrap();
    assert_eq!(r["base_verified"], false);
    // A base missing a tensor the delta needs.
    let partial = dir.path().join("partial.safetensors");
    write_model(&partial, &[T::f32("layer.bias", &[37], values(37, 4, 0.1))]);
    zdn_err(
        &[
            "delta",
            "apply",
            "--base",
            s(&partial),
            "--delta",
            s(&d),
            "-o",
            s(&out),
            "--force",
        ],
        "lacks",
    );
}

#[test]
fn help_teaches() {
    let h = zdn_ok(&["delta", "encode", "--help"]);
    for word in [
        "--bits",
        "--scale",
        "group:N",
        "--clip",
        "--include",
        "--exclude",
        "--embeddings",
        "Example",
    ] {
        assert!(h.contains(word), "encode --help lacks {word}");
    }
    assert!(zdn_ok(&["--help"]).contains("demo"));
}

/// `zdn delta apply --device`: `cpu` writes the default's bytes; `cuda:0` writes them too on a GPU
/// machine with a zdn built with `--features cuda`, and elsewhere fails clearly (no driver, or the
/// feature not built) before creating the output; a value that is no device is a usage error.
#[test]
fn apply_on_a_device() {
    let dir = tmpdir();
    let (base, fine) = pair(dir.path());
    let d = dir.path().join("d.bitdelta");
    zdn_ok(&[
        "delta",
        "encode",
        "--base",
        s(&base),
        "--finetuned",
        s(&fine),
        "-o",
        s(&d),
        "--bits",
        "2",
        "--scale",
        "group:5",
    ]);
    let apply = |device: Option<&str>, out: &std::path::Path| {
        let mut args = vec![
            "delta",
            "apply",
            "--base",
            s(&base),
            "--delta",
            s(&d),
            "-o",
            s(out),
        ];
        if let Some(dev) = device {
            args.extend(["--device", dev, "--json"]);
        }
        zdn(&args)
    };
    let reference = dir.path().join("ref.safetensors");
    assert!(apply(None, &reference).status.success());
    let cpu = dir.path().join("cpu.safetensors");
    let out = apply(Some("cpu"), &cpu);
    assert!(out.status.success());
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (r["device"].as_str(), r["tensors_on_device"].as_u64()),
        (Some("cpu"), Some(0))
    );
    assert_eq!(
        std::fs::read(&cpu).unwrap(),
        std::fs::read(&reference).unwrap()
    );

    let gpu = dir.path().join("gpu.safetensors");
    #[cfg(feature = "cuda")]
    let gpu_here = zdn_cuda::gpu::driver_present();
    #[cfg(not(feature = "cuda"))]
    let gpu_here = false;
    if gpu_here {
        let out = apply(Some("cuda:0"), &gpu);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let r: Value = serde_json::from_slice(&out.stdout).unwrap();
        // layer.weight is the one quantized tensor.
        assert_eq!(r["tensors_on_device"], 1);
        assert_eq!(
            std::fs::read(&gpu).unwrap(),
            std::fs::read(&reference).unwrap()
        );
    } else {
        let why = if cfg!(feature = "cuda") {
            "no CUDA driver found"
        } else {
            "built without GPU support"
        };
        zdn_err(
            &[
                "delta",
                "apply",
                "--base",
                s(&base),
                "--delta",
                s(&d),
                "-o",
                s(&gpu),
                "--device",
                "cuda:0",
            ],
            why,
        );
        assert!(!gpu.exists());
    }
    let bad = apply(Some("gpu0"), &gpu);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("expected cpu or cuda:N"));
}
