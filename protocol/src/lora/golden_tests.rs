//! Golden vectors of the LoRA merge, through the whole sans-IO path (config → pairing → merge).
//!
//! Made by `python3 scripts/lora_golden.py` (numpy 2.4.6): an independent reference in numpy f32
//! scalar arithmetic, checked there against PEFT's formula W + (B @ A)·s in f64. Regenerate by running
//! it and pasting its hex here; the outputs must not change.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use super::*;
use crate::dtype::DType;
use crate::safetensors::TensorInfo;

struct Golden {
    base_dtype: DType,
    a_dtype: DType,
    b_dtype: DType,
    /// The base tensor's `[rows, cols]` as stored.
    base_shape: [u64; 2],
    rank: u64,
    alpha: f64,
    rslora: bool,
    fan_in_fan_out: bool,
    scale_bits: u32,
    base: &'static str,
    a: &'static str,
    b: &'static str,
    out: &'static str,
}

const CASES: [Golden; 3] = [
    Golden {
        base_dtype: DType::BF16,
        a_dtype: DType::BF16,
        b_dtype: DType::BF16,
        base_shape: [4, 3],
        rank: 2,
        alpha: 5.0,
        rslora: false,
        fan_in_fan_out: false,
        scale_bits: 0x4020_0000,
        base: "c03f473e16bf6fbf1cbedbbea6be193dde3fb7bf613f3abf",
        a: "1d3e273fab3fdd3ee53f61bf",
        b: "fcbfa9bfb3bf683eaabf41bf8abfd13f",
        out: "2ebf0fc188c09dbfb6bfb3c0d3bfb0c086bfa6bdce40fdc0",
    },
    Golden {
        base_dtype: DType::F16,
        a_dtype: DType::F32,
        b_dtype: DType::BF16,
        base_shape: [4, 3],
        rank: 2,
        alpha: 5.0,
        rslora: true,
        fan_in_fan_out: false,
        scale_bits: 0x4062_4630,
        base: "3b3d363674ba34beafbe48be873f442ce5b4203cb03f743f",
        a: "347fe4bfeca1693fff88edbe2a94f63f06dac93f604b90bf",
        b: "5b3ff33f16bf8b3fb8bf423ef3bee1bf",
        out: "6b48de4ae3c8c648fc40f0c41f4a08c3303df2c7b4c8d348",
    },
    Golden {
        base_dtype: DType::F32,
        a_dtype: DType::F16,
        b_dtype: DType::F32,
        base_shape: [3, 4],
        rank: 2,
        alpha: 3.0,
        rslora: false,
        fan_in_fan_out: true,
        scale_bits: 0x3fc0_0000,
        base: "6224653f1d69b93f43dcbbbfa24e9b3faee4a53ff09defbf528e16bf7250183feb446f3f63e6bfbf8d38ca3e61e48c3f",
        a: "32bf2a2b353dc4b7b03cd6ba",
        b: "62d0bfbf53a33ebda91daa3fbebb773ef69c4f3f602ef2bf53b1c33fa3e0bc3f",
        out: "011e9f40ea1214c011d211c00f1d7fc055518b3fc6e6aabfd22276c07a4c5440c845f7bfaa2a493f89ea8c406a750c40",
    },
];

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn golden_merges() {
    const MODULE: &str = "model.layers.0.self_attn.q_proj";
    for g in &CASES {
        let config = AdapterConfig::parse(
            serde_json::json!({
                "peft_type": "LORA", "r": g.rank, "lora_alpha": g.alpha, "use_rslora": g.rslora,
                "fan_in_fan_out": g.fan_in_fan_out, "target_modules": ["q_proj"], "bias": "none",
            })
            .to_string()
            .as_bytes(),
        )
        .unwrap();
        let [rows, cols] = g.base_shape;
        let (in_features, out_features) = if g.fan_in_fan_out {
            (rows, cols)
        } else {
            (cols, rows)
        };
        let info = |side: &str, dtype, shape: [u64; 2]| TensorInfo {
            name: format!("{PEFT_PREFIX}{MODULE}.lora_{side}.default.weight"),
            dtype,
            shape: shape.to_vec(),
            range: 0..0,
        };
        let adapter = [
            info("A", g.a_dtype, [g.rank, in_features]),
            info("B", g.b_dtype, [out_features, g.rank]),
        ];
        let base = BTreeMap::from([(
            format!("{MODULE}.weight"),
            TensorMeta {
                dtype: g.base_dtype,
                shape: g.base_shape.to_vec(),
            },
        )]);
        let plan = pair(&config, &adapter, &base).unwrap();
        let m = plan.for_base_tensor("model.layers.0.self_attn.q_proj.weight");
        let shape = m.unwrap().shape;
        assert_eq!(shape.scale.to_bits(), g.scale_bits);

        let (w, a, b) = (unhex(g.base), unhex(g.a), unhex(g.b));
        let mut out = vec![0u8; w.len()];
        merge_tensor(&shape, &w, &a, &b, &mut out).unwrap();
        assert_eq!(out, unhex(g.out), "{:?}", g.base_dtype);
        // Row by row gives the same bytes.
        let f = LoraFactors::new(shape, &a, &b).unwrap();
        let mut rows_out = w.clone();
        let row = (cols as usize) * g.base_dtype.size();
        for (i, chunk) in rows_out.chunks_mut(row).enumerate() {
            f.merge_rows_in_place(i as u64, chunk).unwrap();
        }
        assert_eq!(rows_out, unhex(g.out));
    }
}
