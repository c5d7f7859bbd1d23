//! End-to-end tests of `zdn soup mix|aggregate` and `zdn delta apply` of a soup recipe, with the real
//! binary on small generated models and a real store.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

use crate::common::soup_family::*;
use crate::common::*;
use serde_json::Value;

fn tensor(path: &Path, name: &str) -> Vec<f32> {
    floats(&tensor_bytes(path, name).unwrap())
}

fn dist(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| f64::from(x - y).powi(2))
        .sum::<f64>()
        .sqrt()
}

/// No output and no leftover temporary file in `dir` besides the inputs that were there.
fn assert_nothing_written(dir: &Path, before: &[PathBuf]) {
    assert_eq!(files_in(dir), before, "a failed command left files behind");
}

#[test]
fn mix_stores_a_small_recipe_builds_and_applies_it() {
    let t = tmpdir();
    let dir = t.path();
    let home = dir.join("home");
    let (base, deltas) = family(dir, "a", 0, &[(1, 1.0, None), (2, 1.0, None)]);
    ok(&home, &["add", s(&base), "--name", "base"]);
    let ha = ok(
        &home,
        &["add", s(&deltas[0]), "--base", "base", "--name", "ft-a"],
    );
    let hb = ok(
        &home,
        &["add", s(&deltas[1]), "--base", "base", "--name", "ft-b"],
    );
    let (ha, hb) = (ha.trim(), hb.trim());

    let r = json(&ok(
        &home,
        &[
            "soup", "mix", "--delta", "ft-a:0.6", "--delta", "ft-b:0.4", "--name", "ab", "--json",
        ],
    ));
    let soup = r["hash"].as_str().unwrap().to_string();
    assert_eq!(r["recipe_bytes"], 117, "{r}");
    let manifest_bytes = r["manifest_bytes"].as_u64().unwrap();
    assert!(
        (150..600).contains(&manifest_bytes),
        "a recipe manifest is a few hundred bytes, got {manifest_bytes}"
    );
    assert_eq!(r["components"].as_array().unwrap().len(), 2);
    let ls = json(&ok(&home, &["ls", "--json"]));
    let entry = ls
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["hash"] == soup.as_str())
        .unwrap()
        .clone();
    assert_eq!(entry["kind"], "soup");
    assert_eq!(entry["object_len"], 117);
    // The stored object is the recipe.
    let recipe = zdn(&at(&home, &["cat", "ab"])
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>());
    assert!(recipe.status.success());
    assert_eq!(recipe.stdout.len(), 117);
    assert!(recipe.stdout.starts_with(b"ZDNS"));

    // Same mix in another order: the same recipe, so the same object.
    let again = ok(
        &home,
        &[
            "soup",
            "mix",
            "--delta",
            &format!("{hb}:0.4"),
            "--delta",
            &format!("{ha}:0.6"),
            "--name",
            "ab",
        ],
    );
    assert_eq!(again.trim(), soup);

    // -o: one re-quantized .bitdelta that applies like any other.
    let out = dir.join("ab.bitdelta");
    let r = json(&ok(
        &home,
        &[
            "soup",
            "mix",
            "--delta",
            "ft-a:0.6",
            "--delta",
            "ft-b:0.4",
            "--name",
            "ab",
            "-o",
            s(&out),
            "--json",
        ],
    ));
    assert_eq!(r["hash"], soup.as_str());
    assert_eq!(r["output"]["inputs"], 2);
    assert_eq!(r["output"]["quantized"], 1, "{r}");
    let inspect = json(&zdn_ok(&["delta", "inspect", s(&out), "--json"]));
    assert_eq!(inspect["n_tensors"], 5);
    let from_file = apply(&home, &base, s(&out), &dir.join("from-file.safetensors"));

    // `delta apply` of the recipe (by name and by hash) builds the same soup from the store.
    let by_name = apply(&home, &base, "ab", &dir.join("by-name.safetensors"));
    let by_hash = apply(&home, &base, &soup, &dir.join("by-hash.safetensors"));
    let want = std::fs::read(&from_file).unwrap();
    assert_eq!(std::fs::read(&by_name).unwrap(), want);
    assert_eq!(std::fs::read(&by_hash).unwrap(), want);

    // The soup is base + 0.6·Δa + 0.4·Δb: exactly (up to f32 rounding) for the lossless bias, and
    // closer than the base for the 1-bit weight.
    let fa = dir.join("a-fine0.safetensors");
    let fb = dir.join("a-fine1.safetensors");
    for (name, exact) in [("layer.bias", true), ("layer.weight", false)] {
        let b = tensor(&base, name);
        let (da, db) = (tensor(&fa, name), tensor(&fb, name));
        let expect: Vec<f32> = b
            .iter()
            .zip(da.iter().zip(&db))
            .map(|(b, (a, c))| b + 0.6 * (a - b) + 0.4 * (c - b))
            .collect();
        let got = tensor(&from_file, name);
        let e = dist(&got, &expect);
        if exact {
            assert!(e < 1e-5, "{name}: error {e}");
        } else {
            assert!(e < 0.8 * dist(&b, &expect), "{name}: error {e}");
        }
    }
    // Unchanged tensors stay bit-exact.
    for name in ["norm.weight", "position_ids", "word_embeddings.weight"] {
        assert_eq!(
            tensor_bytes(&from_file, name),
            tensor_bytes(&base, name),
            "{name}"
        );
    }
    // The store verifies with the soup object in it.
    ok(&home, &["verify"]);
}

#[test]
fn mix_refuses_bad_components() {
    let t = tmpdir();
    let dir = t.path();
    let home = dir.join("home");
    let (base, deltas) = family(
        dir,
        "a",
        0,
        &[(1, 1.0, None), (2, 1.0, Some(&[3, 4])), (3, 1.0, None)],
    );
    let (base2, deltas2) = family(dir, "b", 50, &[(4, 1.0, None)]);
    ok(&home, &["add", s(&base), "--name", "base"]);
    ok(&home, &["add", s(&base2), "--name", "base2"]);
    ok(
        &home,
        &["add", s(&deltas[0]), "--base", "base", "--name", "ft-a"],
    );
    ok(
        &home,
        &["add", s(&deltas[1]), "--base", "base", "--name", "ft-extra"],
    );
    ok(
        &home,
        &["add", s(&deltas[2]), "--base", "base", "--name", "ft-c"],
    );
    ok(
        &home,
        &["add", s(&deltas2[0]), "--base", "base2", "--name", "other"],
    );
    let out = dir.join("soup.bitdelta");
    let before = files_in(dir);
    let mix = |extra: &[&str], needle: &str| {
        let mut args = vec!["soup", "mix", "-o", s(&out)];
        args.extend_from_slice(extra);
        err(&home, &args, needle);
        assert_nothing_written(dir, &before);
    };
    mix(
        &["--delta", "ft-a:0.5", "--delta", "other:0.5"],
        "different bases",
    );
    mix(
        &["--delta", "ft-a:0.5", "--delta", "ft-extra:0.5"],
        "does not match",
    );
    mix(
        &["--delta", "ft-a:0.5", "--delta", "base:0.5"],
        "must be deltas",
    );
    mix(
        &["--delta", "ft-a:0.5", "--delta", "ft-a:0.5"],
        "named twice",
    );
    mix(&[], "at least one component");
    mix(&["--delta", "ft-a:inf"], "not finite");
    mix(&["--delta", "ft-a:NaN"], "not finite");
    mix(&["--delta", "ft-a"], "OBJ:WEIGHT");
    mix(&["--delta", "nothing:1"], "not a hash");
    // Nothing was stored by the failures: only the 6 objects added above.
    let ls = json(&ok(&home, &["ls", "--json"]));
    assert_eq!(ls.as_array().unwrap().len(), 6);

    // delta apply of a store object that is not a soup, or of nothing at all.
    let applied = dir.join("x.safetensors");
    err(
        &home,
        &[
            "delta",
            "apply",
            "--base",
            s(&base),
            "--delta",
            "ft-a",
            "-o",
            s(&applied),
        ],
        "is a delta object",
    );
    err(
        &home,
        &[
            "delta",
            "apply",
            "--base",
            s(&base),
            "--delta",
            "no-such-thing",
            "-o",
            s(&applied),
        ],
        "no such file",
    );
    // A soup applied to the wrong base file is refused.
    ok(
        &home,
        &[
            "soup", "mix", "--delta", "ft-a:0.5", "--delta", "ft-c:0.5", "--name", "ac",
        ],
    );
    err(
        &home,
        &[
            "delta",
            "apply",
            "--base",
            s(&base2),
            "--delta",
            "ac",
            "-o",
            s(&applied),
        ],
        "were made against base",
    );
    assert!(!applied.exists());
}

/// `zdn add` of a recipe file: the store checks the base and every component.
#[test]
fn recipe_files_are_checked_when_added() {
    use zdn_protocol::bitdelta::Granularity;
    use zdn_protocol::soup::{Component, Recipe};
    use zdn_protocol::Hash;

    let t = tmpdir();
    let dir = t.path();
    let home = dir.join("home");
    let (base, deltas) = family(dir, "a", 0, &[(1, 1.0, None), (2, 1.0, None)]);
    let (base2, deltas2) = family(dir, "b", 50, &[(4, 1.0, None)]);
    let add = |args: &[&str]| -> Hash { ok(&home, args).trim().parse().unwrap() };
    let hb = add(&["add", s(&base), "--name", "base"]);
    let hb2 = add(&["add", s(&base2), "--name", "base2"]);
    let h0 = add(&["add", s(&deltas[0]), "--base", "base"]);
    let h1 = add(&["add", s(&deltas[1]), "--base", "base"]);
    let hother = add(&["add", s(&deltas2[0]), "--base", "base2"]);
    let recipe = |base: Hash, comps: &[Hash]| {
        let comps = comps
            .iter()
            .map(|&delta| Component { delta, weight: 0.5 })
            .collect();
        Recipe::new(base, 1, Granularity::Row, comps)
            .unwrap()
            .encode()
    };
    let file = dir.join("r.soup");
    let objects = |home: &Path| json(&ok(home, &["ls", "--json"])).as_array().unwrap().len();
    for (bytes, extra, needle) in [
        (
            recipe(hb, &[h0, hother]),
            None,
            "is a delta of another base",
        ),
        (
            recipe(hb, &[h0, hb2]),
            None,
            "is a base object, not a delta",
        ),
        (
            recipe(hb, &[h0, Hash::of(b"x")]),
            None,
            "is not in the store",
        ),
        (
            recipe(hb, &[h0, h1]),
            Some("base2"),
            "the soup recipe names base",
        ),
        (
            recipe(hb2, &[hother]),
            Some("base"),
            "the soup recipe names base",
        ),
    ] {
        std::fs::write(&file, &bytes).unwrap();
        let mut args = vec!["add", s(&file)];
        if let Some(b) = extra {
            args.extend(["--base", b]);
        }
        err(&home, &args, needle);
        assert_eq!(objects(&home), 5, "{needle}: something was stored");
    }
    let mut bad = recipe(hb, &[h0, h1]);
    bad.push(0);
    std::fs::write(&file, &bad).unwrap();
    err(&home, &["add", s(&file)], "not a valid soup recipe");
    err(
        &home,
        &["add", s(&file), "--base", "base"],
        "not a valid soup recipe",
    );

    // A valid recipe file is stored as a soup (its base read from the recipe) and applies.
    std::fs::write(&file, recipe(hb, &[h1, h0])).unwrap();
    let r = json(&ok(&home, &["add", s(&file), "--name", "half", "--json"]));
    assert_eq!(r["kind"], "soup");
    assert_eq!(objects(&home), 6);
    let out = apply(&home, &base, "half", &dir.join("half.safetensors"));
    assert!(out.exists());
}

/// Six contributors of one base; the last is an attacker (sign flipped, ×100).
fn contributors(dir: &Path) -> (PathBuf, Vec<PathBuf>) {
    let mut fines: Vec<(u32, f32, Option<&[u64]>)> =
        (1..=5).map(|i| (10, 1.0 + 0.05 * i as f32, None)).collect();
    fines.push((10, -100.0, None));
    family(dir, "c", 0, &fines)
}

#[test]
fn aggregate_with_every_method() {
    let t = tmpdir();
    let dir = t.path();
    let home = dir.join("home");
    let (base, inputs) = contributors(dir);
    let honest_fine = dir.join("c-fine0.safetensors");
    let name = "layer.weight";
    let b = tensor(&base, name);
    let honest = tensor(&honest_fine, name);
    let mut errors = std::collections::BTreeMap::new();
    for method in [
        "mean",
        "trimmed:0.2",
        "median",
        "krum:1",
        "multikrum:1:3",
        "signvote",
    ] {
        let out = dir.join(format!("agg-{}.bitdelta", method.replace(':', "_")));
        let mut args = vec![
            "soup",
            "aggregate",
            "--method",
            method,
            "--base",
            s(&base),
            "-o",
            s(&out),
            "--json",
        ];
        args.extend(inputs.iter().map(|p| s(p)));
        let r = json(&zdn_ok(&args));
        assert_eq!(r["inputs"], 6, "{method}: {r}");
        assert_eq!(r["method"], method);
        assert_eq!(r["tensors"], 5);
        match method {
            "krum:1" => assert_eq!(r["selected"].as_array().unwrap().len(), 1),
            "multikrum:1:3" => {
                let sel = r["selected"].as_array().unwrap();
                assert_eq!(sel.len(), 3);
                assert!(
                    !sel.contains(&Value::from(5)),
                    "Krum picked the attacker: {r}"
                );
            }
            _ => assert!(r.get("selected").is_none()),
        }
        let applied = apply(
            &home,
            &base,
            s(&out),
            &dir.join(format!("{method}.safetensors")),
        );
        let e = dist(&tensor(&applied, name), &honest) / dist(&b, &honest);
        errors.insert(method, e);
    }
    eprintln!("relative errors: {errors:?}");
    // One attacker in six moves the mean far away; the robust methods stay near the honest delta.
    assert!(errors["mean"] > 5.0, "{errors:?}");
    for m in [
        "trimmed:0.2",
        "median",
        "krum:1",
        "multikrum:1:3",
        "signvote",
    ] {
        assert!(errors[m] < 1.0, "{m}: {errors:?}");
    }
}

#[test]
fn aggregate_refuses_bad_inputs() {
    let t = tmpdir();
    let dir = t.path();
    let (base, inputs) = family(
        dir,
        "a",
        0,
        &[
            (1, 1.0, None),
            (2, 1.0, None),
            (3, 1.0, None),
            (4, 1.0, Some(&[3, 4])),
            (5, 1.0, Some(&[4, 3])),
        ],
    );
    let (base2, other) = family(dir, "b", 50, &[(6, 1.0, None)]);
    let out = dir.join("agg.bitdelta");
    let before = files_in(dir);
    let agg = |method: &str, base: &Path, ins: &[&PathBuf], needle: &str| {
        let mut args = vec![
            "soup",
            "aggregate",
            "--method",
            method,
            "--base",
            s(base),
            "-o",
            s(&out),
        ];
        args.extend(ins.iter().map(|p| s(p)));
        zdn_err(&args, needle);
        assert_nothing_written(dir, &before);
    };
    let [a, b, c, x1, x2] = [&inputs[0], &inputs[1], &inputs[2], &inputs[3], &inputs[4]];
    agg("mean", &base, &[a, &other[0]], "different bases");
    agg("mean", &base, &[a, x1], "does not match");
    agg("mean", &base, &[x1, x2], "has shape [4, 3], not [3, 4]");
    agg("mean", &base, &[], "no input deltas");
    agg("krum:1", &base, &[a, b, c, a], "n > 2f + 2");
    agg("multikrum:0:5", &base, &[a, b, c], "outside 1..=3");
    agg("mean", &base2, &[a, b], "were made against base");
    agg("mean", &base, &[a, &base], "not a valid .bitdelta");
    // A malformed method is a usage error (clap), also before anything is written.
    let o = zdn(&[
        "soup",
        "aggregate",
        "--method",
        "trimmed:0.7",
        "--base",
        s(&base),
        "-o",
        s(&out),
        s(a),
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("trim fraction"));
    assert_nothing_written(dir, &before);
    // --force takes another base.
    zdn_ok(&[
        "soup",
        "aggregate",
        "--method",
        "mean",
        "--force",
        "--base",
        s(&base2),
        "-o",
        s(&out),
        s(a),
        s(b),
    ]);
    assert!(out.exists());
}
