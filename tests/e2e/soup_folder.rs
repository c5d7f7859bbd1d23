//! End-to-end tests of soups of a model folder (docs/spec/recipe.md "Folder soups") with the real
//! binary: folder deltas and LoRA adapters of a generated Llama-shaped base, mixed by `zdn soup
//! mix` into the model folder, every tensor checked against the spec's arithmetic computed here
//! from each component applied alone; the recipe fetched by a second node, which builds the same
//! folder from its own store; bad mixes refused with nothing stored or written.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

use crate::common::llama_folder::{read_tree, LlamaSpec};
use crate::common::net::NodeProc;
use crate::common::*;
use crate::folder_delta::tensors;
use crate::lora::{adapter, config};
use zdn_protocol::bitdelta::Granularity;
use zdn_protocol::soup::{Component, Recipe};
use zdn_protocol::{DType, Hash};

fn add(home: &Path, dir: &Path, extra: &[&str]) -> String {
    let mut a = vec!["add", s(dir), "--json"];
    a.extend_from_slice(extra);
    json(&ok(home, &a))["hash"].as_str().unwrap().to_string()
}

/// A fine-tune of the base (`LlamaSpec::small(3)`, seed 1) with `seed` and `changed` tensors,
/// whose tokenizer marks `<s>` and `</s>` special: their rows of the vocabulary matrices are kept
/// exactly, so the mix also writes exact rows over rows rebuilt a block at a time.
fn fine_tune(dir: &Path, seed: u64, changed: &[&str]) {
    let mut spec = LlamaSpec::small(3);
    spec.seed = seed;
    spec.changed = changed.iter().map(|c| c.to_string()).collect();
    spec.write(dir);
    let path = dir.join("tokenizer.json");
    let mut tok: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    for t in tok["added_tokens"].as_array_mut().unwrap() {
        t["special"] = serde_json::Value::Bool(true);
    }
    std::fs::write(&path, serde_json::to_vec(&tok).unwrap()).unwrap();
}

fn bf16_to_f32(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(2)
        .map(|c| f32::from_bits(u32::from(u16::from_le_bytes([c[0], c[1]])) << 16))
        .collect()
}

/// f32 → bf16, round to nearest even (finite values).
fn f32_to_bf16(x: f32) -> [u8; 2] {
    let b = x.to_bits();
    (((b + 0x7fff + ((b >> 16) & 1)) >> 16) as u16).to_le_bytes()
}

/// The spec's mix of one bf16 tensor: W = bf16(base + f32(Σ wᵢ·(Wᵢ − base))), the deltas in
/// f32, their weighted sum in f64.
fn mix(base: &[u8], parts: &[(&[u8], f32)]) -> Vec<u8> {
    let b = bf16_to_f32(base);
    let ws: Vec<(Vec<f32>, f64)> = parts
        .iter()
        .map(|(p, w)| (bf16_to_f32(p), f64::from(*w)))
        .collect();
    (0..b.len())
        .flat_map(|k| {
            let mut terms: Vec<f64> = ws.iter().map(|(v, w)| w * f64::from(v[k] - b[k])).collect();
            terms.sort_by(f64::total_cmp);
            let d = terms.iter().sum::<f64>() as f32;
            f32_to_bf16(b[k] + d)
        })
        .collect()
}

struct Family {
    _t: tempfile::TempDir,
    root: PathBuf,
    home: PathBuf,
    base: PathBuf,
    base_hash: String,
}

fn family() -> Family {
    let t = tmpdir();
    let root = t.path().to_owned();
    let base = root.join("base");
    LlamaSpec::small(3).write(&base);
    let home = root.join("home");
    let base_hash = add(&home, &base, &["--name", "tiny"]);
    Family {
        _t: t,
        root,
        home,
        base,
        base_hash,
    }
}

impl Family {
    /// A folder delta of a fine-tune, encoded and added as `name`.
    fn delta(&self, name: &str, seed: u64, changed: &[&str]) -> String {
        let fine = self.root.join(format!("{name}-model"));
        fine_tune(&fine, seed, changed);
        let d = self.root.join(format!("{name}.delta"));
        delta_encode(&self.base, &fine, &d, &[]);
        add(&self.home, &d, &["--base", &self.base_hash, "--name", name])
    }

    fn apply(&self, obj: &str) -> PathBuf {
        let out = self.root.join(format!("applied-{obj}"));
        ok(&self.home, &["apply", obj, "-o", s(&out)]);
        out
    }

    /// `zdn soup mix` of `parts` with -o: (the recipe's hash, the folder).
    fn mix(&self, name: &str, parts: &[&str]) -> (String, PathBuf) {
        let out = self.root.join(format!("soup-{name}"));
        let mut a = vec!["soup", "mix", "--name", name, "-o", s(&out), "--json"];
        for p in parts {
            a.extend(["--delta", p]);
        }
        let r = json(&ok(&self.home, &a));
        assert_eq!(r["folder"]["output"].as_str().unwrap(), s(&out));
        (r["hash"].as_str().unwrap().to_string(), out)
    }

    fn objects(&self) -> usize {
        ok(&self.home, &["ls"]).lines().count()
    }
}

#[test]
fn folder_deltas_mix_into_a_model_folder_here_and_on_a_fetching_node() {
    let f = family();
    let a = f.delta(
        "ft-a",
        1,
        &[
            "model.layers.0.self_attn.q_proj.weight",
            "model.norm.weight",
            "lm_head.weight",
        ],
    );
    // Every tensor of ft-b differs from the base (another seed).
    let b = f.delta("ft-b", 2, &["model.layers.1.mlp.up_proj.weight"]);
    let (wa, wb) = (f.apply("ft-a"), f.apply("ft-b"));
    let (soup, out) = f.mix("ab", &["ft-a:0.6", "ft-b:0.4"]);

    // Side files and headers as the components rebuild them; every tensor the spec's mix.
    let (base_t, ta, tb, got) = (tensors(&f.base), tensors(&wa), tensors(&wb), tensors(&out));
    assert_eq!(got.len(), base_t.len());
    for (name, (dtype, shape, bytes)) in &got {
        assert_eq!(*dtype, DType::BF16);
        assert_eq!(shape, &ta[name].1);
        let want = mix(&base_t[name].2, &[(&ta[name].2, 0.6), (&tb[name].2, 0.4)]);
        assert!(*bytes == want, "{name} is not the mix");
    }
    let side = |dir: &Path| {
        read_tree(dir)
            .into_iter()
            .filter(|(p, _)| !p.ends_with(".safetensors"))
            .collect::<Vec<_>>()
    };
    assert_eq!(side(&out), side(&wa));
    // The mix moved every tensor off both components somewhere (it is not a copy of either).
    let differs = |t: &std::collections::HashMap<_, (DType, Vec<u64>, Vec<u8>)>| {
        got.iter().filter(|(n, v)| t[*n].2 != v.2).count()
    };
    assert!(differs(&ta) > 20 && differs(&tb) > 20);

    let shown = ok(&f.home, &["delta", "inspect", &soup]);
    assert!(
        shown.contains("mixed exactly into the model folder"),
        "{shown}"
    );
    // `zdn apply SOUP` builds the same folder; one component at weight 1 is that component.
    let again = f.root.join("again");
    ok(&f.home, &["apply", &soup, "-o", s(&again)]);
    assert_eq!(read_tree(&again), read_tree(&out));
    let (_, only_a) = f.mix("a-only", &["ft-a:1"]);
    assert_eq!(read_tree(&only_a), read_tree(&wa));
    assert_ne!(a, b);

    // A second node fetches the recipe with its base and components and builds the same folder.
    let key = ok(&f.home, &["key", "show"]).trim().to_string();
    let seeder = NodeProc::start(&f.home, &[]);
    let field = tmpdir();
    ok(
        field.path(),
        &["fetch", &soup, "--peer", &seeder.addr, "--trust", &key],
    );
    seeder.stop();
    let there = field.path().join("soup");
    ok(field.path(), &["apply", &soup, "-o", s(&there)]);
    assert_eq!(read_tree(&there), read_tree(&out));
}

#[test]
fn adapters_mix_by_their_updates() {
    let f = family();
    let l1 = f.root.join("lora-1");
    adapter(&l1, &config(""), None, false);
    // The same factors at twice the scale: its update is exactly twice the first's.
    let l2 = f.root.join("lora-2");
    let cfg = config("").replace("\"lora_alpha\": 8,", "\"lora_alpha\": 16,");
    assert_ne!(cfg, config(""));
    adapter(&l2, &cfg, None, false);
    add(&f.home, &l1, &["--base", &f.base_hash, "--name", "l1"]);
    add(&f.home, &l2, &["--base", &f.base_hash, "--name", "l2"]);
    let merged = f.apply("l1");
    let (_, one) = f.mix("l1-only", &["l1:1"]);
    assert_eq!(read_tree(&one), read_tree(&merged));
    // 0.5·u + 0.25·(2u) = u, exactly: the mix is the first adapter's merge, bit for bit.
    let (soup, half) = f.mix("halves", &["l1:0.5", "l2:0.25"]);
    assert_eq!(read_tree(&half), read_tree(&merged));
    // Twice the first: differs from it in the targeted tensors only.
    let (_, twice) = f.mix("twice", &["l1:1", "l2:0.5"]);
    let (tm, tt) = (tensors(&merged), tensors(&twice));
    let changed: Vec<&String> = tt.keys().filter(|n| tt[*n].2 != tm[*n].2).collect();
    assert!(!changed.is_empty());
    assert!(changed
        .iter()
        .all(|n| n.contains("q_proj") || n.contains("v_proj")));
    let again = f.root.join("again");
    ok(&f.home, &["apply", &soup, "-o", s(&again)]);
    assert_eq!(read_tree(&again), read_tree(&merged));
}

#[test]
fn bad_folder_soups_are_refused_with_nothing_stored_or_written() {
    let f = family();
    let ft_a: Hash = f.delta("ft-a", 1, &["model.norm.weight"]).parse().unwrap();
    let l1 = f.root.join("lora-1");
    adapter(&l1, &config(""), None, false);
    add(&f.home, &l1, &["--base", &f.base_hash, "--name", "l1"]);
    // Another fine-tune whose config.json differs: its side files are not ft-a's.
    let odd = f.root.join("odd-model");
    let mut spec = LlamaSpec::small(3);
    spec.note = "another note".into();
    spec.changed = vec!["model.norm.weight".into()];
    spec.write(&odd);
    let d = f.root.join("odd.delta");
    delta_encode(&f.base, &odd, &d, &[]);
    add(&f.home, &d, &["--base", &f.base_hash, "--name", "odd"]);
    let before = f.objects();
    let out = f.root.join("out");
    let mix = |parts: &[&str], extra: &[&str]| {
        let mut a = vec!["soup", "mix", "-o", s(&out)];
        for p in parts {
            a.extend(["--delta", p]);
        }
        a.extend_from_slice(extra);
        a.into_iter().map(String::from).collect::<Vec<_>>()
    };
    for (args, needle) in [
        (mix(&["ft-a:0.5", "l1:0.5"], &[]), "a soup mixes one kind"),
        (mix(&["ft-a:1"], &["--bits", "2"]), "mixed exactly"),
        (mix(&["ft-a:1"], &["--scale", "tensor"]), "mixed exactly"),
        (mix(&["ft-a:0.5", "odd:0.5"], &[]), "config.json differs"),
    ] {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        err(&f.home, &a, needle);
        assert!(!out.exists(), "{args:?} left an output");
        assert_eq!(f.objects(), before, "{args:?} stored something");
    }
    // A recipe file added to the store: a folder base's soup carries the default quantization,
    // and mixes folder components only.
    let single = f.root.join("single.safetensors");
    std::fs::copy(f.base.join("model-00001-of-00003.safetensors"), &single).unwrap();
    let single_base: Hash = add(&f.home, &single, &[]).parse().unwrap();
    let fine_single = f.root.join("single-ft.safetensors");
    let mut bytes = std::fs::read(&single).unwrap();
    let n = bytes.len();
    bytes[n - 1] ^= 1;
    std::fs::write(&fine_single, bytes).unwrap();
    let sd = f.root.join("single.bitdelta");
    delta_encode(&single, &fine_single, &sd, &[]);
    let single_delta: Hash = add(&f.home, &sd, &["--base", &single_base.to_string()])
        .parse()
        .unwrap();
    let base: Hash = f.base_hash.parse().unwrap();
    let before = f.objects();
    let recipe = |bits: u32, comps: &[Hash]| {
        let comps = comps
            .iter()
            .map(|&delta| Component { delta, weight: 1.0 })
            .collect();
        Recipe::new(base, bits, Granularity::Row, comps)
            .unwrap()
            .encode()
    };
    let file = f.root.join("r.soup");
    for (bytes, needle) in [
        (recipe(2, &[ft_a]), "default quantization"),
        (
            recipe(1, &[ft_a, single_delta]),
            "is a single-file delta: the soup's base is a model folder",
        ),
    ] {
        std::fs::write(&file, bytes).unwrap();
        err(&f.home, &["add", s(&file), "--base", &f.base_hash], needle);
        assert_eq!(f.objects(), before);
    }

    // A folder soup is written by `zdn apply`, not applied to a file by `delta apply`.
    let soup = json(&ok(
        &f.home,
        &["soup", "mix", "--delta", "ft-a:1", "--json"],
    ))["hash"]
        .as_str()
        .unwrap()
        .to_string();
    let file = f.root.join("x.safetensors");
    std::fs::write(&file, b"not used").unwrap();
    err(
        &f.home,
        &[
            "delta",
            "apply",
            "--base",
            s(&file),
            "--delta",
            &soup,
            "-o",
            s(&out),
        ],
        "zdn apply",
    );
    assert!(!out.exists());
}
