//! End-to-end tests of LoRA adapters (docs/spec/lora.md) with the real binary: a PEFT adapter
//! folder (config, safetensors weights, README) of a generated Llama-shaped base in 3 shards is
//! added as an object whose base is that model, fetched by a second node with its base, and merged
//! by `zdn apply` from the store and by `zdn delta apply` from disk into the same folder: the base's
//! files, with exactly the targeted tensors changed, each within bf16 rounding of W + (α/r)·B·A
//! computed here in f64. Bad adapters are refused and leave the store as it was.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::common::llama_folder::{read_tree, LlamaSpec};
use crate::common::net::NodeProc;
use crate::common::*;
use zdn_protocol::safetensors::{self, encode_header, TensorLayout};
use zdn_protocol::DType;

const RANK: u64 = 4;
const ALPHA: f64 = 8.0;
const HIDDEN: u64 = 64;
const LAYERS: u32 = 3;

pub(crate) fn config(extra: &str) -> String {
    format!(
        r#"{{"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": {RANK}, "lora_alpha": {ALPHA},
  "lora_dropout": 0.05, "bias": "none", "fan_in_fan_out": false, "use_rslora": false,
  "target_modules": ["q_proj", "v_proj"], "base_model_name_or_path": "Llama-tiny"{extra}}}"#
    )
}

/// A (f32, [r, in]) and B (bf16, [out, r]) of each targeted module, from a simple generator.
fn factors(layer: u32, module: &str) -> (Vec<f32>, Vec<f32>) {
    let seed = layer * 7 + module.len() as u32;
    let gen = |n: u64, k: u32| -> Vec<f32> {
        (0..n)
            .map(|i| {
                (((i as u32).wrapping_mul(2654435761) ^ (seed + k)) % 1000) as f32 / 1000.0 - 0.5
            })
            .collect()
    };
    // B's values are kept representable in bf16 (their f32 has a zero low half).
    let b: Vec<f32> = gen(HIDDEN * RANK, 1)
        .into_iter()
        .map(|x| f32::from_bits((x * 0.1).to_bits() & 0xffff_0000))
        .collect();
    (gen(RANK * HIDDEN, 0), b)
}

pub(crate) fn adapter(dir: &Path, cfg: &str, skip: Option<&str>, bad_shape: bool) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("adapter_config.json"), cfg).unwrap();
    std::fs::write(dir.join("README.md"), "# a LoRA of Llama-tiny\n").unwrap();
    let mut layouts = Vec::new();
    let mut data = Vec::new();
    for l in 0..LAYERS {
        for m in ["q_proj", "v_proj"] {
            let (a, b) = factors(l, m);
            let p = format!("base_model.model.model.layers.{l}.self_attn.{m}");
            let a_name = format!("{p}.lora_A.weight");
            if skip != Some(a_name.as_str()) {
                let cols = if bad_shape && l == 1 {
                    HIDDEN - 1
                } else {
                    HIDDEN
                };
                layouts.push(TensorLayout {
                    name: a_name,
                    dtype: DType::F32,
                    shape: vec![RANK, cols],
                });
                data.push(
                    a[..(RANK * cols) as usize]
                        .iter()
                        .flat_map(|x| x.to_le_bytes())
                        .collect::<Vec<u8>>(),
                );
            }
            layouts.push(TensorLayout {
                name: format!("{p}.lora_B.weight"),
                dtype: DType::BF16,
                shape: vec![HIDDEN, RANK],
            });
            data.push(
                b.iter()
                    .flat_map(|x| ((x.to_bits() >> 16) as u16).to_le_bytes())
                    .collect(),
            );
        }
    }
    let (mut file, _) = encode_header(&layouts, &BTreeMap::new()).unwrap();
    for d in data {
        file.extend_from_slice(&d);
    }
    std::fs::write(dir.join("adapter_model.safetensors"), file).unwrap();
}

fn bf16s(b: &[u8]) -> Vec<f64> {
    b.chunks_exact(2)
        .map(|c| {
            f64::from(f32::from_bits(
                u32::from(u16::from_le_bytes([c[0], c[1]])) << 16,
            ))
        })
        .collect()
}

/// Checks `out` against the base: every file the base's; every tensor the base's but the targeted
/// ones, which are W + (α/r)·B·A within bf16 rounding.
fn check_merged(base: &Path, out: &Path) {
    let (bt, ot) = (read_tree(base), read_tree(out));
    assert_eq!(
        bt.iter().map(|f| &f.0).collect::<Vec<_>>(),
        ot.iter().map(|f| &f.0).collect::<Vec<_>>()
    );
    let mut merged = 0;
    for ((path, b), (_, o)) in bt.iter().zip(&ot) {
        if !path.ends_with(".safetensors") {
            assert_eq!(b, o, "{path}");
            continue;
        }
        let h = safetensors::parse(b).unwrap();
        assert_eq!(&o[..h.data_start], &b[..h.data_start], "{path}: header");
        for t in &h.tensors {
            let (bb, ob) = (&b[t.range.clone()], &o[t.range.clone()]);
            let target = ["q_proj", "v_proj"]
                .iter()
                .find(|m| t.name.ends_with(&format!("self_attn.{m}.weight")));
            let Some(m) = target else {
                assert_eq!(bb, ob, "{}: not targeted, must be the base's", t.name);
                continue;
            };
            let l: u32 = t.name.split('.').nth(2).unwrap().parse().unwrap();
            let (a, bm) = factors(l, m);
            let (w, got) = (bf16s(bb), bf16s(ob));
            let s = ALPHA / RANK as f64;
            let mut changed = 0;
            for i in 0..HIDDEN as usize {
                for j in 0..HIDDEN as usize {
                    let d: f64 = (0..RANK as usize)
                        .map(|k| {
                            f64::from(bm[i * RANK as usize + k])
                                * f64::from(a[k * HIDDEN as usize + j])
                        })
                        .sum();
                    let want = w[i * 64 + j] + s * d;
                    let g = got[i * 64 + j];
                    assert!(
                        (g - want).abs() <= want.abs() * 2f64.powi(-7) + 1e-6,
                        "{}[{i},{j}]: {g} vs {want}",
                        t.name
                    );
                    changed += usize::from(g != w[i * 64 + j]);
                }
            }
            assert!(
                changed > (HIDDEN * HIDDEN / 2) as usize,
                "{}: the merge changed too little",
                t.name
            );
            merged += 1;
        }
    }
    assert_eq!(merged, 2 * LAYERS as usize);
}

fn add(home: &Path, dir: &Path, extra: &[&str]) -> String {
    let mut a = vec!["add", s(dir), "--json"];
    a.extend_from_slice(extra);
    json(&ok(home, &a))["hash"].as_str().unwrap().to_string()
}

#[test]
fn an_adapter_is_an_object_merged_from_the_store_and_from_disk() {
    let t = tmpdir();
    let base = t.path().join("Llama-tiny");
    LlamaSpec::small(3).write(&base);
    let lora = t.path().join("lora");
    adapter(&lora, &config(""), None, false);
    let home = t.path().join("home");
    let base_hash = add(&home, &base, &[]);
    let lora_hash = add(&home, &lora, &["--base", &base_hash, "--name", "tiny-lora"]);

    let from_disk = t.path().join("from-disk");
    zdn_ok(&delta_apply_args(&base, &lora, &from_disk));
    check_merged(&base, &from_disk);
    // The same adapter with its targets as a regular expression (PEFT's string form) merges the
    // same bytes; one Python reads but zdn's engine does not is refused, naming it.
    let regex = t.path().join("lora-regex");
    let targets = r#"["q_proj", "v_proj"]"#;
    adapter(
        &regex,
        &config("").replace(targets, r#"".*\\.(q_proj|v_proj)""#),
        None,
        false,
    );
    let by_regex = t.path().join("by-regex");
    zdn_ok(&delta_apply_args(&base, &regex, &by_regex));
    assert_eq!(read_tree(&by_regex), read_tree(&from_disk));
    let lookahead = t.path().join("lora-lookahead");
    adapter(
        &lookahead,
        &config("").replace(targets, r#"".*\\.(?!k_)[qv]_proj""#),
        None,
        false,
    );
    err(
        &home,
        &["add", s(&lookahead), "--base", &base_hash],
        "(?!k_)",
    );

    // A second node fetches the adapter with its base, and merges it from its own store.
    let key = ok(&home, &["key", "show"]).trim().to_string();
    let seeder = NodeProc::start(&home, &[]);
    let field = tmpdir();
    ok(
        field.path(),
        &["fetch", &lora_hash, "--peer", &seeder.addr, "--trust", &key],
    );
    seeder.stop();
    let from_store = field.path().join("merged");
    ok(field.path(), &["apply", "tiny-lora", "-o", s(&from_store)]);
    assert_eq!(read_tree(&from_store), read_tree(&from_disk));
}

#[test]
fn bad_adapters_are_refused_and_leave_the_store_as_it_was() {
    let t = tmpdir();
    let base = t.path().join("Llama-tiny");
    LlamaSpec::small(3).write(&base);
    let home = t.path().join("home");
    let base_hash = add(&home, &base, &[]);
    let case = |name: &str, cfg: String, skip: Option<&str>, bad: bool| -> PathBuf {
        let d = t.path().join(name);
        adapter(&d, &cfg, skip, bad);
        d
    };
    let cases = [
        (
            case(
                "unpaired",
                config(""),
                Some("base_model.model.model.layers.2.self_attn.v_proj.lora_A.weight"),
                false,
            ),
            "v_proj",
        ),
        (case("shape", config(""), None, true), "layers.1"),
        (
            case("dora", config(r#", "use_dora": true"#), None, false),
            "use_dora",
        ),
        (
            case(
                "peft",
                config("").replace("\"LORA\"", "\"IA3\""),
                None,
                false,
            ),
            "IA3",
        ),
        (
            case(
                "targets",
                config("").replace(r#"["q_proj", "v_proj"]"#, r#"["q_proj"]"#),
                None,
                false,
            ),
            "v_proj",
        ),
    ];
    for (d, needle) in &cases {
        err(&home, &["add", s(d), "--base", &base_hash], needle);
        let out = t.path().join("out");
        zdn_err(&delta_apply_args(&base, d, &out), needle);
        assert!(!out.exists(), "{}: output left behind", d.display());
    }
    assert_eq!(
        json(&ok(&home, &["ls", "--json"]))
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // A good adapter against a base that lacks its modules: refused.
    let other = t.path().join("other.safetensors");
    write_model(
        &other,
        &[T {
            name: "w".into(),
            dtype: DType::F32,
            shape: vec![2, 2],
            bytes: vec![0; 16],
        }],
    );
    let other_hash = add(&home, &other, &[]);
    let good = case("good", config(""), None, false);
    err(&home, &["add", s(&good), "--base", &other_hash], "q_proj");
}

/// A bf16 value's bits as an integer in the order of the values, adjacent values one apart.
fn bf16_order(bits: u16) -> i32 {
    if bits & 0x8000 != 0 {
        -i32::from(bits & 0x7fff)
    } else {
        i32::from(bits)
    }
}

fn bf16_values(bytes: &[u8]) -> Vec<u16> {
    bytes
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect()
}

/// PEFT's own `merge_and_unload()` (peft 0.21.2, torch 2.9.1 on the CPU) of two adapters of a tiny
/// Llama saved by transformers, committed by `scripts/peft-merge-compare.sh golden
/// tests/vectors/peft_merge` (docs/spec/lora.md § 7): an f32 adapter (r = 8, α = 16) and a bf16
/// one (r = 12, α = 20, rsLoRA, rank_pattern, alpha_pattern), all seven projections. zdn's merge,
/// from the store and from disk, must be the spec's arithmetic computed there in numpy, byte for
/// byte; and it must differ from PEFT's merge in exactly as many elements, by at most as many bf16
/// ulps, as that script recorded (none for the f32 adapter; the bf16 adapter's delta is rounded to
/// bf16 by PEFT before it is added). Every other tensor is the base's.
#[test]
fn the_merge_is_the_spec_arithmetic_and_differs_from_peft_as_recorded() {
    let v = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/vectors/peft_merge");
    let expected: serde_json::Value =
        serde_json::from_slice(&std::fs::read(v.join("expected.json")).unwrap()).unwrap();
    let base = v.join("base");
    let base_file = std::fs::read(base.join("model.safetensors")).unwrap();
    let base_header = safetensors::parse(&base_file).unwrap();
    let t = tmpdir();
    let home = t.path().join("home");
    let base_hash = add(&home, &base, &[]);
    let configs = expected["configs"].as_object().unwrap();
    assert_eq!(configs.len(), 2);
    for (name, rows) in configs {
        let rows = rows.as_object().unwrap();
        assert_eq!(rows.len(), 14, "{name}: 7 projections × 2 layers");
        let dir = v.join(name);
        let hash = add(&home, &dir.join("adapter"), &["--base", &base_hash]);
        let from_store = t.path().join(format!("{name}-store"));
        ok(&home, &["apply", &hash, "-o", s(&from_store)]);
        let from_disk = t.path().join(format!("{name}-disk"));
        zdn_ok(&delta_apply_args(&base, &dir.join("adapter"), &from_disk));
        assert_eq!(read_tree(&from_store), read_tree(&from_disk), "{name}");
        let out = from_store.join("model.safetensors");
        for tensor in &base_header.tensors {
            let got = tensor_bytes(&out, &tensor.name).unwrap();
            let Some(row) = rows.get(&tensor.name) else {
                assert_eq!(
                    got,
                    base_file[tensor.range.clone()],
                    "{name}: {}",
                    tensor.name
                );
                continue;
            };
            let spec = tensor_bytes(&dir.join("zdn_arith.safetensors"), &tensor.name).unwrap();
            assert!(
                got == spec,
                "{name}: {} is not the spec's arithmetic",
                tensor.name
            );
            let peft = bf16_values(
                &tensor_bytes(&dir.join("peft_merged.safetensors"), &tensor.name).unwrap(),
            );
            let ulps: Vec<u32> = bf16_values(&got)
                .iter()
                .zip(&peft)
                .map(|(&z, &p)| bf16_order(z).abs_diff(bf16_order(p)))
                .collect();
            assert_eq!(ulps.len(), peft.len());
            let differing = ulps.iter().filter(|&&u| u != 0).count() as u64;
            assert_eq!(
                differing,
                row["differing_from_peft"].as_u64().unwrap(),
                "{name}: {}",
                tensor.name
            );
            assert_eq!(
                u64::from(ulps.iter().copied().max().unwrap()),
                row["max_ulps_from_peft"].as_u64().unwrap(),
                "{name}: {}",
                tensor.name
            );
        }
    }
}
