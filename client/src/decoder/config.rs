//! The fields of a decoder's Hugging Face `config.json` that the Llama forward pass needs, checked
//! before anything is allocated from them.

use std::path::Path;

/// Decoder architectures the forward pass implements (`model_type` of config.json).
pub const SUPPORTED_MODEL_TYPES: [&str; 1] = ["llama"];

/// `model_type`s of decoder LLM families: `zdn eval` measures these with the decoder measure (and
/// says which of them the forward pass does not implement yet) instead of the BERT one; the same
/// families get the decoder defaults of a folder encode.
pub use zdn_protocol::folder::architecture::DECODER_FAMILIES as DECODER_MODEL_TYPES;

/// Whether a config.json's `model_type` is a decoder family (see [`DECODER_MODEL_TYPES`]).
pub fn is_decoder_model_type(model_type: &str) -> bool {
    DECODER_MODEL_TYPES.contains(&model_type)
}

/// The `model_type` of a config.json, if it can be read (at most 1 MiB).
pub fn model_type_of(path: &Path) -> Option<String> {
    if std::fs::metadata(path).ok()?.len() > MAX_CONFIG_BYTES {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
    v.get("model_type")?.as_str().map(str::to_owned)
}

/// Largest config.json read.
const MAX_CONFIG_BYTES: u64 = 1 << 20;
/// Largest sizes accepted (a forged config must not make us allocate terabytes).
const MAX_DIM: usize = 1 << 17;
const MAX_VOCAB: usize = 1 << 22;
const MAX_LAYERS: usize = 512;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {problem}")]
    Invalid { path: String, problem: String },
    #[error(
        "{path}: model_type {model_type:?} is not a decoder this forward pass implements (supported: {})",
        SUPPORTED_MODEL_TYPES.join(", ")
    )]
    Unsupported { path: String, model_type: String },
}

#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
pub struct LlamaConfig {
    pub model_type: String,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    /// Key-value heads (grouped-query attention); defaults to `num_attention_heads`.
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    /// Per-head width; defaults to `hidden_size / num_attention_heads`.
    #[serde(default)]
    pub head_dim: Option<usize>,
    pub vocab_size: usize,
    #[serde(default = "default_max_positions")]
    pub max_position_embeddings: usize,
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "default_theta")]
    pub rope_theta: f64,
    #[serde(default)]
    pub rope_scaling: Option<serde_json::Value>,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub mlp_bias: bool,
}

fn default_max_positions() -> usize {
    2048
}
fn default_eps() -> f64 {
    1e-6
}
fn default_theta() -> f64 {
    10000.0
}
fn default_act() -> String {
    "silu".into()
}

impl LlamaConfig {
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let p = || path.display().to_string();
        let err = |problem: String| ConfigError::Invalid { path: p(), problem };
        let len = std::fs::metadata(path)
            .map_err(|e| err(e.to_string()))?
            .len();
        if len > MAX_CONFIG_BYTES {
            return Err(err(format!("{len} bytes; a config.json is at most 1 MiB")));
        }
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        Self::parse(&text).map_err(|e| match e {
            ConfigError::Invalid { problem, .. } => err(problem),
            ConfigError::Unsupported { model_type, .. } => ConfigError::Unsupported {
                path: p(),
                model_type,
            },
        })
    }

    /// Parses and checks config.json text (errors carry an empty path; [`Self::from_file`] fills it).
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let err = |problem: String| ConfigError::Invalid {
            path: String::new(),
            problem,
        };
        let cfg: LlamaConfig = serde_json::from_str(text).map_err(|e| err(e.to_string()))?;
        if !SUPPORTED_MODEL_TYPES.contains(&cfg.model_type.as_str()) {
            return Err(ConfigError::Unsupported {
                path: String::new(),
                model_type: cfg.model_type,
            });
        }
        cfg.check().map_err(err)?;
        Ok(cfg)
    }

    fn check(&self) -> Result<(), String> {
        let dims = [
            self.hidden_size,
            self.intermediate_size,
            self.num_attention_heads,
            self.kv_heads(),
            self.head_dim(),
            self.max_position_embeddings,
        ];
        if dims.iter().any(|&d| d == 0 || d > MAX_DIM) {
            return Err(format!("a dimension is 0 or larger than {MAX_DIM}"));
        }
        if self.vocab_size == 0 || self.vocab_size > MAX_VOCAB {
            return Err(format!(
                "vocab_size {} (must be 1 to {MAX_VOCAB})",
                self.vocab_size
            ));
        }
        if self.num_hidden_layers == 0 || self.num_hidden_layers > MAX_LAYERS {
            return Err(format!(
                "num_hidden_layers {} (must be 1 to {MAX_LAYERS})",
                self.num_hidden_layers
            ));
        }
        if !self.num_attention_heads.is_multiple_of(self.kv_heads()) {
            return Err(format!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                self.num_attention_heads,
                self.kv_heads()
            ));
        }
        if !self.head_dim().is_multiple_of(2) {
            return Err(format!(
                "head_dim {} is odd (rotary embeddings rotate pairs)",
                self.head_dim()
            ));
        }
        if self.hidden_act != "silu" {
            return Err(format!(
                "hidden_act {:?} (only \"silu\" is implemented)",
                self.hidden_act
            ));
        }
        if self.attention_bias || self.mlp_bias {
            return Err("attention_bias / mlp_bias are not implemented".into());
        }
        if !self.plain_rope() {
            return Err("rope_scaling is not implemented (only plain RoPE)".into());
        }
        if !(self.rms_norm_eps > 0.0 && self.rms_norm_eps < 1.0) {
            return Err("rms_norm_eps must be in (0, 1)".into());
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 1.0) {
            return Err("rope_theta must be a finite number above 1".into());
        }
        Ok(())
    }

    /// No rope_scaling, or one that says the default (unscaled) RoPE.
    fn plain_rope(&self) -> bool {
        match &self.rope_scaling {
            None | Some(serde_json::Value::Null) => true,
            Some(serde_json::Value::Object(o)) => {
                let kind = o.get("rope_type").or_else(|| o.get("type"));
                o.is_empty() || kind.and_then(|k| k.as_str()) == Some("default")
            }
            Some(_) => false,
        }
    }

    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    pub fn head_dim(&self) -> usize {
        self.head_dim.unwrap_or_else(|| {
            self.hidden_size
                .checked_div(self.num_attention_heads)
                .unwrap_or(0)
        })
    }

    /// The linear layers of one decoder layer as `(name, [out, in])`: the tensor is
    /// `model.layers.L.{name}.weight`.
    pub fn layer_linears(&self) -> [(&'static str, [usize; 2]); 7] {
        let (h, i) = (self.hidden_size, self.intermediate_size);
        let q = self.num_attention_heads * self.head_dim();
        let kv = self.kv_heads() * self.head_dim();
        [
            ("self_attn.q_proj", [q, h]),
            ("self_attn.k_proj", [kv, h]),
            ("self_attn.v_proj", [kv, h]),
            ("self_attn.o_proj", [h, q]),
            ("mlp.gate_proj", [i, h]),
            ("mlp.up_proj", [i, h]),
            ("mlp.down_proj", [h, i]),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{"model_type": "llama", "hidden_size": 256, "intermediate_size": 688,
        "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 4098,
        "rms_norm_eps": 1e-05, "rope_theta": 10000.0, "rope_scaling": null, "tie_word_embeddings": false,
        "max_position_embeddings": 512, "hidden_act": "silu", "torch_dtype": "bfloat16"}"#;

    #[test]
    fn a_llama_config_is_read_with_defaults() {
        let c = LlamaConfig::parse(GOOD).unwrap();
        assert_eq!((c.kv_heads(), c.head_dim()), (2, 64));
        assert_eq!(c.layer_linears()[1], ("self_attn.k_proj", [128, 256]));
        let c = LlamaConfig::parse(&GOOD.replace(r#""num_key_value_heads": 2,"#, "")).unwrap();
        assert_eq!(c.kv_heads(), 4);
    }

    #[test]
    fn bad_configs_are_refused_with_the_reason() {
        for (from, to, want) in [
            (
                r#""llama""#,
                r#""gemma""#,
                "not a decoder this forward pass implements",
            ),
            (
                r#""num_key_value_heads": 2"#,
                r#""num_key_value_heads": 3"#,
                "multiple",
            ),
            (r#""hidden_size": 256"#, r#""hidden_size": 0"#, "dimension"),
            (
                r#""vocab_size": 4098"#,
                r#""vocab_size": 99999999999"#,
                "vocab_size",
            ),
            (r#""hidden_act": "silu""#, r#""hidden_act": "gelu""#, "gelu"),
            (
                r#""rope_scaling": null"#,
                r#""rope_scaling": {"rope_type": "llama3", "factor": 8.0}"#,
                "rope_scaling",
            ),
            (
                r#""rms_norm_eps": 1e-05"#,
                r#""rms_norm_eps": -1"#,
                "rms_norm_eps",
            ),
            (
                r#""num_hidden_layers": 4"#,
                r#""num_hidden_layers": 100000"#,
                "layers",
            ),
            ("{", "[", "expected"),
        ] {
            let text = GOOD.replacen(from, to, 1);
            assert_ne!(text, GOOD, "{from}");
            let e = LlamaConfig::parse(&text).unwrap_err().to_string();
            assert!(e.contains(want), "{from} → {e}");
        }
    }
}
