#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use proptest::prelude::*;

/// A config as PEFT 0.13 writes it for a Llama fine-tune (field set and defaults as saved).
pub(crate) const LLAMA_CONFIG: &str = r#"{
  "alpha_pattern": {},
  "auto_mapping": null,
  "base_model_name_or_path": "meta-llama/Llama-2-7b-hf",
  "bias": "none",
  "fan_in_fan_out": false,
  "inference_mode": true,
  "init_lora_weights": true,
  "layer_replication": null,
  "layers_pattern": null,
  "layers_to_transform": null,
  "loftq_config": {},
  "lora_alpha": 32,
  "lora_dropout": 0.05,
  "megatron_config": null,
  "megatron_core": "megatron.core",
  "modules_to_save": null,
  "peft_type": "LORA",
  "r": 16,
  "rank_pattern": {},
  "revision": null,
  "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
  "task_type": "CAUSAL_LM",
  "use_dora": false,
  "use_rslora": false
}"#;

fn with(field: &str, value: Value) -> Vec<u8> {
    let mut v: Value = serde_json::from_str(LLAMA_CONFIG).unwrap();
    v.as_object_mut().unwrap().insert(field.to_owned(), value);
    serde_json::to_vec(&v).unwrap()
}

fn refused_field(json: &[u8]) -> String {
    match AdapterConfig::parse(json) {
        Err(ConfigError::Refused { field, .. }) => field,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn reads_a_peft_config() {
    let c = AdapterConfig::parse(LLAMA_CONFIG.as_bytes()).unwrap();
    assert_eq!(c.rank, 16);
    assert_eq!(c.alpha, 32.0);
    assert!(!c.use_rslora && !c.fan_in_fan_out);
    assert_eq!(
        c.base_model_name_or_path.as_deref(),
        Some("meta-llama/Llama-2-7b-hf")
    );
    assert!(c.targets("model.layers.0.self_attn.q_proj"));
    assert!(c.targets("model.layers.31.mlp.down_proj"));
    assert!(!c.targets("lm_head"));
    assert!(!c.targets("model.embed_tokens"));
    assert_eq!(c.rank_for("model.layers.0.self_attn.q_proj").unwrap(), 16);
    assert_eq!(c.scale_for("model.layers.0.self_attn.q_proj").unwrap(), 2.0);
}

#[test]
fn scale_is_alpha_over_r_or_over_root_r() {
    assert_eq!(scale(16.0, 16, false), Some(1.0));
    assert_eq!(scale(16.0, 16, true), Some(4.0));
    // α/r computed in f64 and rounded once to f32.
    assert_eq!(scale(1.0, 3, false), Some((1.0f64 / 3.0) as f32));
    assert_eq!(scale(5.0, 2, true), Some((5.0f64 / 2f64.sqrt()) as f32));
    assert_eq!(scale(1.0, 0, false), None);
    assert_eq!(scale(1e300, 1, false), None);
    assert_eq!(scale(-8.0, 4, false), Some(-2.0));
    let c = AdapterConfig::parse(&with("use_rslora", Value::Bool(true))).unwrap();
    assert_eq!(c.scale_for("model.layers.0.mlp.up_proj").unwrap(), 8.0);
}

#[test]
fn refuses_what_is_not_a_plain_merge() {
    for (field, value) in [
        ("peft_type", serde_json::json!("IA3")),
        ("use_dora", serde_json::json!(true)),
        ("bias", serde_json::json!("all")),
        ("bias", serde_json::json!("lora_only")),
        ("lora_bias", serde_json::json!(true)),
        ("modules_to_save", serde_json::json!(["lm_head"])),
        ("layers_to_transform", serde_json::json!([0, 1])),
        ("layer_replication", serde_json::json!([[0, 4]])),
        ("trainable_token_indices", serde_json::json!([32000])),
        ("init_lora_weights", serde_json::json!("pissa")),
        ("init_lora_weights", serde_json::json!("pissa_niter_16")),
        ("init_lora_weights", serde_json::json!("olora")),
        ("init_lora_weights", serde_json::json!("loftq")),
        ("init_lora_weights", serde_json::json!("someday")),
        ("target_modules", serde_json::json!("all-linear")),
        ("alora_invocation_tokens", serde_json::json!([1, 2])),
        ("use_qalora", serde_json::json!(true)),
        (
            "target_parameters",
            serde_json::json!(["experts.gate_up_proj"]),
        ),
    ] {
        assert_eq!(
            refused_field(&with(field, value.clone())),
            field,
            "{field} = {value}"
        );
    }
    for ok in ["gaussian", "eva"] {
        AdapterConfig::parse(&with("init_lora_weights", serde_json::json!(ok))).unwrap();
    }
    AdapterConfig::parse(&with("init_lora_weights", serde_json::json!(false))).unwrap();
    AdapterConfig::parse(&with("modules_to_save", serde_json::json!([]))).unwrap();
}

#[test]
fn unknown_fields_only_when_empty() {
    for empty in [
        Value::Null,
        Value::Bool(false),
        serde_json::json!(""),
        serde_json::json!([]),
        serde_json::json!({}),
    ] {
        AdapterConfig::parse(&with("some_future_feature", empty)).unwrap();
    }
    for set in [
        Value::Bool(true),
        serde_json::json!(0),
        serde_json::json!("x"),
        serde_json::json!([1]),
    ] {
        assert!(matches!(
            AdapterConfig::parse(&with("some_future_feature", set)),
            Err(ConfigError::Unknown { .. })
        ));
    }
}

#[test]
fn bad_values_are_clear_errors() {
    for (field, value) in [
        ("r", serde_json::json!(0)),
        ("r", serde_json::json!(-1)),
        ("r", serde_json::json!(8.5)),
        ("r", serde_json::json!(MAX_RANK + 1)),
        ("r", serde_json::json!("16")),
        ("lora_alpha", serde_json::json!("32")),
        ("target_modules", serde_json::json!([])),
        ("target_modules", serde_json::json!([""])),
        ("target_modules", serde_json::json!([1])),
        ("target_modules", serde_json::json!(7)),
        ("fan_in_fan_out", serde_json::json!("yes")),
        ("rank_pattern", serde_json::json!([])),
        ("rank_pattern", serde_json::json!({"q_proj": 0})),
        ("alpha_pattern", serde_json::json!({"q_proj": "x"})),
        ("base_model_name_or_path", serde_json::json!(3)),
    ] {
        assert!(
            matches!(
                AdapterConfig::parse(&with(field, value.clone())),
                Err(ConfigError::Invalid { .. })
            ),
            "{field} = {value}"
        );
    }
    for (field, value) in [
        ("target_modules", serde_json::json!("(?!k_proj).*_proj")),
        ("rank_pattern", serde_json::json!({"[[:alpha:]]_proj": 4})),
        ("exclude_modules", serde_json::json!("(lm_head")),
    ] {
        assert!(matches!(
            AdapterConfig::parse(&with(field, value)),
            Err(ConfigError::Pattern { .. })
        ));
    }
    let mut v: Value = serde_json::from_str(LLAMA_CONFIG).unwrap();
    for f in ["peft_type", "r", "lora_alpha", "target_modules"] {
        let mut w = v.clone();
        w.as_object_mut().unwrap().remove(f);
        assert_eq!(
            AdapterConfig::parse(&serde_json::to_vec(&w).unwrap()),
            Err(ConfigError::Missing(match f {
                "peft_type" => "peft_type",
                "r" => "r",
                "lora_alpha" => "lora_alpha",
                _ => "target_modules",
            }))
        );
    }
    v.as_object_mut().unwrap().clear();
    assert_eq!(AdapterConfig::parse(b"[1]"), Err(ConfigError::NotAnObject));
    assert!(matches!(
        AdapterConfig::parse(b"{\"r\": 4, \"r\": 8}"),
        Err(ConfigError::Json(m)) if m.contains("duplicate key")
    ));
    assert!(matches!(
        AdapterConfig::parse(b"{\"rank_pattern\": {\"a\": 1, \"a\": 2}}"),
        Err(ConfigError::Json(_))
    ));
    let big = vec![b' '; MAX_CONFIG_BYTES + 1];
    assert_eq!(
        AdapterConfig::parse(&big),
        Err(ConfigError::TooLarge {
            len: MAX_CONFIG_BYTES + 1
        })
    );
}

#[test]
fn per_module_patterns() {
    let json = with(
        "rank_pattern",
        serde_json::json!({"layers.0.self_attn.q_proj": 4, "down_proj": 8}),
    );
    let mut v: Value = serde_json::from_slice(&json).unwrap();
    v["alpha_pattern"] = serde_json::json!({"q_proj": 2.5});
    v["exclude_modules"] = serde_json::json!(["layers.1.self_attn.q_proj"]);
    let c = AdapterConfig::parse(&serde_json::to_vec(&v).unwrap()).unwrap();
    assert_eq!(c.rank_for("model.layers.0.self_attn.q_proj").unwrap(), 4);
    assert_eq!(c.rank_for("model.layers.10.self_attn.q_proj").unwrap(), 16);
    assert_eq!(c.rank_for("model.layers.3.mlp.down_proj").unwrap(), 8);
    assert_eq!(c.alpha_for("model.layers.3.self_attn.q_proj").unwrap(), 2.5);
    assert_eq!(
        c.alpha_for("model.layers.3.self_attn.k_proj").unwrap(),
        32.0
    );
    assert_eq!(
        c.scale_for("model.layers.0.self_attn.q_proj").unwrap(),
        0.625
    );
    assert!(!c.targets("model.layers.1.self_attn.q_proj"));
    assert!(c.targets("model.layers.11.self_attn.q_proj"));

    // Two patterns with different ranks for one module: refused, not resolved by file order.
    let c = AdapterConfig::parse(&with(
        "rank_pattern",
        serde_json::json!({"q_proj": 4, "self_attn.q_proj": 8, "k_proj": 2, "self_attn.k_proj": 2}),
    ))
    .unwrap();
    assert!(matches!(
        c.rank_for("model.layers.0.self_attn.q_proj"),
        Err(ConfigError::Ambiguous { .. })
    ));
    assert_eq!(c.rank_for("model.layers.0.self_attn.k_proj").unwrap(), 2);
}

#[test]
fn regular_expressions_select_and_key_as_in_peft() {
    let mut v: Value = serde_json::from_str(LLAMA_CONFIG).unwrap();
    v["target_modules"] = serde_json::json!(r".*\.(q_proj|v_proj)");
    v["exclude_modules"] = serde_json::json!(r".*layers\.1\..*");
    v["rank_pattern"] = serde_json::json!({r"layers\.[02]\.self_attn\.q_proj": 2});
    let c = AdapterConfig::parse(v.to_string().as_bytes()).unwrap();
    assert!(c.targets("model.layers.0.self_attn.q_proj"));
    assert!(c.targets("model.layers.2.self_attn.v_proj"));
    assert!(!c.targets("model.layers.1.self_attn.q_proj"));
    assert!(!c.targets("model.layers.0.self_attn.k_proj"));
    assert_eq!(c.rank_for("model.layers.2.self_attn.q_proj").unwrap(), 2);
    assert_eq!(
        c.rank_for("model.layers.12.self_attn.q_proj").unwrap(),
        c.rank
    );
    // Keys that are regular expressions are capped; module names are not.
    let many: serde_json::Map<String, Value> = (0..=MAX_REGEX_KEYS)
        .map(|i| (format!("layers\\.{i}\\.q_proj"), serde_json::json!(2)))
        .collect();
    v["rank_pattern"] = Value::Object(many);
    assert!(matches!(
        AdapterConfig::parse(v.to_string().as_bytes()),
        Err(ConfigError::Invalid { .. })
    ));
}

#[test]
fn string_target_is_a_full_match() {
    let c = AdapterConfig::parse(&with(
        "target_modules",
        serde_json::json!("model.layers.0.self_attn.q_proj"),
    ))
    .unwrap();
    assert!(c.targets("model.layers.0.self_attn.q_proj"));
    assert!(!c.targets("model.layers.0.self_attn.k_proj"));
    let c = AdapterConfig::parse(&with("target_modules", serde_json::json!("q_proj"))).unwrap();
    assert!(!c.targets("model.layers.0.self_attn.q_proj"));
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        "[a-zA-Z_.*|()-]{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{0,10}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

const FIELDS: &[&str] = &[
    "peft_type",
    "r",
    "lora_alpha",
    "target_modules",
    "exclude_modules",
    "rank_pattern",
    "alpha_pattern",
    "use_rslora",
    "fan_in_fan_out",
    "bias",
    "use_dora",
    "modules_to_save",
    "init_lora_weights",
    "base_model_name_or_path",
    "layers_to_transform",
];

proptest! {
    #[test]
    fn never_panics_on_bytes(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = AdapterConfig::parse(&bytes);
    }

    #[test]
    fn never_panics_on_json(v in json_value()) {
        let _ = AdapterConfig::parse(&serde_json::to_vec(&v).unwrap());
    }

    /// A real config with one field replaced by anything: accepted or a clear error, and when
    /// accepted, its lookups never panic either.
    #[test]
    fn never_panics_on_a_mutated_config(field in prop::sample::select(FIELDS), v in json_value()) {
        if let Ok(c) = AdapterConfig::parse(&with(field, v)) {
            let _ = c.scale_for("model.layers.0.self_attn.q_proj");
            let _ = c.targets("model.layers.0.self_attn.q_proj");
        }
    }
}
