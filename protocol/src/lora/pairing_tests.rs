#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;

fn config(extra: serde_json::Value) -> AdapterConfig {
    let mut v = serde_json::json!({
        "peft_type": "LORA", "r": 2, "lora_alpha": 4,
        "target_modules": ["q_proj", "v_proj"],
    });
    for (k, x) in extra.as_object().unwrap() {
        v[k] = x.clone();
    }
    AdapterConfig::parse(&serde_json::to_vec(&v).unwrap()).unwrap()
}

fn info(name: &str, dtype: DType, shape: &[u64]) -> TensorInfo {
    TensorInfo {
        name: name.to_owned(),
        dtype,
        shape: shape.to_vec(),
        range: 0..0,
    }
}

/// A two-layer base: q_proj [8, 6], v_proj [4, 6], plus tensors no target names.
fn base() -> BTreeMap<String, TensorMeta> {
    let mut m = BTreeMap::new();
    for l in 0..2 {
        for (p, shape) in [("q_proj", [8, 6]), ("v_proj", [4, 6]), ("k_proj", [4, 6])] {
            m.insert(
                format!("model.layers.{l}.self_attn.{p}.weight"),
                TensorMeta {
                    dtype: DType::BF16,
                    shape: shape.to_vec(),
                },
            );
        }
        m.insert(
            format!("model.layers.{l}.input_layernorm.weight"),
            TensorMeta {
                dtype: DType::BF16,
                shape: vec![6],
            },
        );
    }
    m.insert(
        "model.embed_tokens.weight".into(),
        TensorMeta {
            dtype: DType::BF16,
            shape: vec![10, 6],
        },
    );
    m
}

fn adapter(segment: &str) -> Vec<TensorInfo> {
    let mut v = Vec::new();
    for l in 0..2 {
        for (p, out) in [("q_proj", 8), ("v_proj", 4)] {
            let m = format!("base_model.model.model.layers.{l}.self_attn.{p}");
            v.push(info(
                &format!("{m}.lora_A{segment}.weight"),
                DType::F32,
                &[2, 6],
            ));
            v.push(info(
                &format!("{m}.lora_B{segment}.weight"),
                DType::F32,
                &[out, 2],
            ));
        }
    }
    v
}

#[test]
fn pairs_a_peft_adapter() {
    for segment in ["", ".default"] {
        let plan = pair(&config(serde_json::json!({})), &adapter(segment), &base()).unwrap();
        assert_eq!(
            plan.changed_base_tensors().collect::<Vec<_>>(),
            [
                "model.layers.0.self_attn.q_proj.weight",
                "model.layers.0.self_attn.v_proj.weight",
                "model.layers.1.self_attn.q_proj.weight",
                "model.layers.1.self_attn.v_proj.weight",
            ]
        );
        assert_eq!(
            plan.adapter_name.as_deref(),
            (!segment.is_empty()).then_some("default")
        );
        let m = plan
            .for_base_tensor("model.layers.1.self_attn.q_proj.weight")
            .unwrap();
        assert_eq!(m.module, "model.layers.1.self_attn.q_proj");
        assert_eq!(
            m.lora_a,
            format!("base_model.model.model.layers.1.self_attn.q_proj.lora_A{segment}.weight")
        );
        assert_eq!(m.kind, LayerKind::Linear);
        assert_eq!(
            m.shape,
            MergeShape {
                rows: 8,
                cols: 6,
                rank: 2,
                transposed: false,
                scale: 2.0,
                base_dtype: DType::BF16,
                a_dtype: DType::F32,
                b_dtype: DType::F32,
            }
        );
        assert!(plan
            .for_base_tensor("model.layers.1.self_attn.k_proj.weight")
            .is_none());
    }
}

#[test]
fn fan_in_fan_out_transposes_the_base() {
    let mut b = BTreeMap::new();
    b.insert(
        "transformer.h.0.attn.c_attn.weight".to_owned(),
        TensorMeta {
            dtype: DType::F32,
            shape: vec![6, 18],
        },
    );
    let c = config(serde_json::json!({"target_modules": ["c_attn"], "fan_in_fan_out": true}));
    let a = [
        info(
            "base_model.model.transformer.h.0.attn.c_attn.lora_A.weight",
            DType::F16,
            &[2, 6],
        ),
        info(
            "base_model.model.transformer.h.0.attn.c_attn.lora_B.weight",
            DType::F16,
            &[18, 2],
        ),
    ];
    let plan = pair(&c, &a, &b).unwrap();
    let s = plan.modules[0].shape;
    assert!(s.transposed);
    assert_eq!((s.rows, s.cols), (6, 18));
    // The same tensors without fan_in_fan_out do not fit the base.
    let c = config(serde_json::json!({"target_modules": ["c_attn"]}));
    assert!(matches!(pair(&c, &a, &b), Err(PairError::Shape { .. })));
}

#[test]
fn embeddings_are_transposed() {
    let c = config(serde_json::json!({"target_modules": ["embed_tokens"]}));
    let a = [
        info(
            "base_model.model.model.embed_tokens.lora_embedding_A",
            DType::BF16,
            &[2, 10],
        ),
        info(
            "base_model.model.model.embed_tokens.lora_embedding_B",
            DType::BF16,
            &[6, 2],
        ),
    ];
    let plan = pair(&c, &a, &base()).unwrap();
    let m = &plan.modules[0];
    assert_eq!(m.base_tensor, "model.embed_tokens.weight");
    assert_eq!(m.kind, LayerKind::Embedding);
    assert!(m.shape.transposed);
    assert_eq!(m.shape.a_shape(), [2, 10]);
    assert_eq!(m.shape.b_shape(), [6, 2]);
}

#[test]
fn rank_pattern_sets_a_module_rank() {
    let c = config(serde_json::json!({"rank_pattern": {"layers.1.self_attn.v_proj": 1}}));
    let mut a = adapter("");
    // Layer 1's v_proj pair at rank 1.
    for t in &mut a {
        if t.name.contains("layers.1.self_attn.v_proj.lora_A") {
            t.shape = vec![1, 6];
        }
        if t.name.contains("layers.1.self_attn.v_proj.lora_B") {
            t.shape = vec![4, 1];
        }
    }
    let plan = pair(&c, &a, &base()).unwrap();
    let m = plan
        .for_base_tensor("model.layers.1.self_attn.v_proj.weight")
        .unwrap();
    assert_eq!(m.shape.rank, 1);
    assert_eq!(m.shape.scale, 4.0);
    // Without the pattern, the same file is a rank mismatch.
    assert!(matches!(
        pair(&config(serde_json::json!({})), &a, &base()),
        Err(PairError::RankMismatch {
            want: 2,
            got: 1,
            ..
        })
    ));
}

#[test]
fn every_bad_adapter_is_a_clear_error() {
    let c = config(serde_json::json!({}));
    let b = base();
    let err = |a: Vec<TensorInfo>| pair(&c, &a, &b).unwrap_err();

    let mut a = adapter("");
    a.remove(1);
    assert!(matches!(err(a), PairError::Unpaired { lacks: "B", .. }));

    let mut a = adapter("");
    a.remove(0);
    assert!(matches!(err(a), PairError::Unpaired { lacks: "A", .. }));

    let mut a = adapter("");
    a.push(info(
        "base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight",
        DType::F32,
        &[2, 6],
    ));
    assert!(matches!(err(a), PairError::AdapterNames { .. }));

    let mut a = adapter(".default");
    a.push(info(
        "base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight",
        DType::F32,
        &[2, 6],
    ));
    assert!(matches!(err(a), PairError::Duplicate { side: "A", .. }));

    let mut a = adapter("");
    a[0].shape = vec![3, 6];
    assert!(matches!(err(a), PairError::RankMismatch { got: 3, .. }));

    let mut a = adapter("");
    a[0].shape = vec![2, 7];
    assert!(matches!(err(a), PairError::Shape { .. }));

    let mut a = adapter("");
    a[1].shape = vec![9, 2];
    assert!(matches!(err(a), PairError::Shape { .. }));

    let mut a = adapter("");
    a[1].shape = vec![8, 2, 1];
    assert!(matches!(err(a), PairError::NotMatrix { .. }));

    let mut a = adapter("");
    a[1].dtype = DType::I8;
    assert!(matches!(err(a), PairError::Dtype { .. }));

    // A pair for a module the config does not target.
    let mut a = adapter("");
    a.push(info(
        "base_model.model.model.layers.0.self_attn.k_proj.lora_A.weight",
        DType::F32,
        &[2, 6],
    ));
    a.push(info(
        "base_model.model.model.layers.0.self_attn.k_proj.lora_B.weight",
        DType::F32,
        &[4, 2],
    ));
    assert!(matches!(err(a), PairError::NotTargeted { .. }));

    // An adapter for another base: modules the base lacks.
    let mut a = adapter("");
    for t in &mut a {
        t.name = t.name.replace("self_attn", "attention");
    }
    assert!(matches!(err(a), PairError::BaseMissing { .. }));

    // A targeted module without its pair (a truncated adapter).
    let mut a = adapter("");
    a.truncate(6);
    assert!(
        matches!(err(a), PairError::MissingPair { base_tensor } if base_tensor == "model.layers.1.self_attn.v_proj.weight")
    );

    for (name, want_hint) in [
        ("model.layers.0.self_attn.q_proj.lora_A.weight", None),
        (
            "base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector",
            Some("DoRA"),
        ),
        (
            "base_model.model.model.layers.0.self_attn.q_proj.lora_B.bias",
            Some("bias"),
        ),
        (
            "base_model.model.lm_head.modules_to_save.weight",
            Some("module"),
        ),
        ("base_model.model.lora_A.weight", Some("")),
        ("base_model.model.x..lora_A.weight", Some("")),
        ("base_model.model.x.lora_A..weight", Some("")),
        ("base_model.model.x.lora_A", Some("")),
    ] {
        let mut a = adapter("");
        a.push(info(name, DType::F32, &[2, 6]));
        match (err(a), want_hint) {
            (PairError::NotPeftName(n), None) => assert_eq!(n, name),
            (PairError::NotLoraTensor { hint, .. }, Some(h)) => {
                assert!(hint.contains(h), "{name}: {hint}")
            }
            (e, _) => panic!("{name}: {e}"),
        }
    }
    let mut a = adapter("");
    a.push(info(
        &format!(
            "base_model.model.{}.lora_A.weight",
            "x".repeat(MAX_NAME_LEN)
        ),
        DType::F32,
        &[2, 6],
    ));
    assert!(matches!(err(a), PairError::NameTooLong(_)));

    let mut a = adapter("");
    a[0].name = a[0].name.replace("lora_A.weight", "lora_embedding_A");
    assert!(matches!(err(a), PairError::KindMismatch { .. }));
}
