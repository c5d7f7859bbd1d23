//! A soup recipe names its component deltas inside the object, not in the manifest; these
//! end-to-end tests check that the store and the network follow them: `zdn fetch` of a soup brings
//! its base and components (and a second mix of the same components costs only its recipe),
//! `export` carries them, `import` and `verify` check them, `gc` keeps them, and `delta inspect`
//! describes a recipe.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

use crate::common::net::{fetch_json_args, NodeProc};
use crate::common::soup_family::*;
use crate::common::*;

/// A publisher home with a base, two deltas `ft-a`/`ft-b` and the soups `ab` (0.6/0.4) and `ba`
/// (0.3/0.7). Returns (base file, soup ab hash, soup ba hash).
fn publish(dir: &Path, home: &Path) -> (std::path::PathBuf, String, String) {
    let (base, deltas) = family(dir, "a", 0, &[(1, 1.0, None), (2, 1.0, None)]);
    ok(home, &["add", s(&base), "--name", "base"]);
    ok(
        home,
        &["add", s(&deltas[0]), "--base", "base", "--name", "ft-a"],
    );
    ok(
        home,
        &["add", s(&deltas[1]), "--base", "base", "--name", "ft-b"],
    );
    let mix = |name: &str, wa: &str, wb: &str| {
        ok(
            home,
            &[
                "soup",
                "mix",
                "--delta",
                &format!("ft-a:{wa}"),
                "--delta",
                &format!("ft-b:{wb}"),
                "--name",
                name,
            ],
        )
        .trim()
        .to_string()
    };
    let ab = mix("ab", "0.6", "0.4");
    let ba = mix("ba", "0.3", "0.7");
    (base, ab, ba)
}

fn objects(home: &Path) -> usize {
    json(&ok(home, &["ls", "--json"])).as_array().unwrap().len()
}

#[test]
fn fetching_a_soup_brings_its_components_and_another_mix_costs_only_its_recipe() {
    let t = tmpdir();
    let dir = t.path();
    let (publ, field) = (dir.join("publisher"), dir.join("field"));
    let (base, ab, ba) = publish(dir, &publ);
    let key = ok(&publ, &["key", "show"]).trim().to_string();
    let want = apply(&publ, &base, "ab", &dir.join("want.safetensors"));
    let node = NodeProc::start(&publ, &[]);

    let r = json(&ok(&field, &fetch_json_args(&ab, &node.addr, &key)));
    assert_eq!(r["kind"], "soup", "{r}");
    assert_eq!(r["base"]["kind"], "base", "{r}");
    let comps = r["components"].as_array().unwrap();
    assert_eq!(comps.len(), 2, "{r}");
    for c in comps {
        assert_eq!(c["kind"], "delta");
        assert_eq!(c["already_present"], false);
        assert!(c["bytes_received"].as_u64().unwrap() > 0, "{c}");
    }
    assert_eq!(objects(&field), 4);
    ok(&field, &["verify"]);
    // The field station builds the same soup from what it fetched.
    let field_base = dir.join("field-base.safetensors");
    let base_hash = r["base"]["hash"].as_str().unwrap();
    ok(&field, &["get", base_hash, "-o", s(&field_base)]);
    let got = apply(&field, &field_base, &ab, &dir.join("got.safetensors"));
    assert_eq!(std::fs::read(&got).unwrap(), std::fs::read(&want).unwrap());

    // A second mix of the same components: only its recipe crosses the link.
    let r = json(&ok(&field, &fetch_json_args(&ba, &node.addr, &key)));
    let received = r["bytes_received"].as_u64().unwrap();
    assert!(received > 0 && received < 1024, "{r}");
    assert!(r["base"].is_null(), "{r}");
    let comps = r["components"].as_array().unwrap();
    assert_eq!(comps.len(), 2);
    assert!(comps.iter().all(|c| c["already_present"] == true), "{r}");
    assert!(comps.iter().all(|c| c["bytes_received"] == 0), "{r}");
    // Text output names the components.
    let text = ok(
        &field,
        &["fetch", &ba, "--peer", &node.addr, "--trust", &key],
    );
    assert!(text.contains("needs 2 component deltas"), "{text}");
    node.stop();
}

#[test]
fn export_import_gc_verify_and_inspect_follow_a_soups_components() {
    let t = tmpdir();
    let dir = t.path();
    let publ = dir.join("publisher");
    let (base, _, _) = publish(dir, &publ);
    let want = apply(&publ, &base, "ab", &dir.join("want.safetensors"));

    // inspect: the recipe, with the components' names from the store.
    let i = json(&ok(&publ, &["delta", "inspect", "ab", "--json"]));
    assert_eq!(i["kind"], "soup", "{i}");
    assert_eq!(i["name"], "ab");
    assert_eq!(i["recipe_bytes"], 117);
    assert_eq!(i["base_present"], true);
    let names: Vec<&str> = i["components"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 2);
    assert!(names.contains(&"ft-a") && names.contains(&"ft-b"), "{i}");
    let text = ok(&publ, &["delta", "inspect", "ab"]);
    assert!(
        text.contains("soup recipe \"ab\": 117 bytes, 2 components"),
        "{text}"
    );
    // A recipe file (`zdn cat`) is described the same way, without a store.
    let recipe_file = dir.join("ab.soup");
    let cat = zdn(&at(&publ, &["cat", "ab"])
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>());
    std::fs::write(&recipe_file, &cat.stdout).unwrap();
    let i = json(&zdn_ok(&["delta", "inspect", s(&recipe_file), "--json"]));
    assert_eq!(i["kind"], "soup");
    assert_eq!(i["components"].as_array().unwrap().len(), 2);

    // export carries base, components and recipe; import into an empty store; the soup applies.
    let full = dir.join("ab.zdnb");
    ok(&publ, &["export", "ab", "-o", s(&full)]);
    let other = dir.join("other");
    let r = json(&ok(&other, &["import", s(&full), "--trust-any", "--json"]));
    assert_eq!(r["manifests"].as_array().unwrap().len(), 4, "{r}");
    ok(&other, &["verify"]);
    let got = apply(&other, &base, "ab", &dir.join("got.safetensors"));
    assert_eq!(std::fs::read(&got).unwrap(), std::fs::read(&want).unwrap());

    // --no-base: the recipe alone (a few hundred bytes). A store with the components takes it; a
    // store without them refuses it and stays as it was.
    let lone = dir.join("ba.zdnb");
    ok(&publ, &["export", "ba", "--no-base", "-o", s(&lone)]);
    let len = std::fs::metadata(&lone).unwrap().len();
    assert!(len < 1024, "a recipe bundle is small, got {len} bytes");
    let bare = dir.join("bare");
    let base_only = dir.join("base.zdnb");
    ok(&publ, &["export", "base", "-o", s(&base_only)]);
    ok(&bare, &["import", s(&base_only), "--trust-any"]);
    err(
        &bare,
        &["import", s(&lone), "--trust-any"],
        "is neither in the bundle nor in the store",
    );
    assert_eq!(objects(&bare), 1);
    ok(&bare, &["verify"]);
    ok(&other, &["import", s(&lone), "--trust-any"]);
    assert_eq!(objects(&other), 5);
    apply(&other, &base, "ba", &dir.join("ba.safetensors"));

    // gc: pinned soups keep their components and base.
    for o in ["base", "ft-a", "ft-b", "ab"] {
        ok(&publ, &["unpin", o]);
    }
    let g = json(&ok(&publ, &["gc", "--json"]));
    assert_eq!(
        g["manifests_removed"], 1,
        "only the unpinned soup ab goes: {g}"
    );
    assert_eq!(objects(&publ), 4);
    ok(&publ, &["verify"]);
    apply(&publ, &base, "ba", &dir.join("ba-after-gc.safetensors"));
    ok(&publ, &["unpin", "ba"]);
    let g = json(&ok(&publ, &["gc", "--json"]));
    assert_eq!(g["manifests_removed"], 4, "{g}");
    assert_eq!(objects(&publ), 0);
}
