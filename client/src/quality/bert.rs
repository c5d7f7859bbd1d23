//! A BERT encoder forward pass on candle tensors: the architecture of all-MiniLM-L6-v2 and other
//! sentence-transformers BERT models. Embeddings (word + position + token type, LayerNorm), N layers of
//! self-attention and a GELU feed-forward (post-LayerNorm), then mean pooling over the attention mask
//! and L2 normalisation: a sentence embedding.
//!
//! Written with differentiable candle ops only, so the same forward pass serves evaluation and scale
//! calibration (gradients flow to whatever tensors the weights were built from).

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor, D};

/// The fields of a Hugging Face `config.json` that the forward pass needs.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct BertConfig {
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    pub vocab_size: usize,
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "default_act")]
    pub hidden_act: String,
}

fn default_type_vocab() -> usize {
    2
}
fn default_eps() -> f64 {
    1e-12
}
fn default_act() -> String {
    "gelu".into()
}

/// Largest sizes accepted from a config file (a forged config must not make us allocate terabytes).
const MAX_DIM: usize = 1 << 16;
const MAX_LAYERS: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum BertError {
    #[error("{path}: {problem}")]
    Config { path: String, problem: String },
    #[error("the model lacks tensor {0:?}")]
    Missing(String),
    #[error("tensor {name:?} has shape {got:?}, the config needs {want:?}")]
    Shape {
        name: String,
        got: Vec<usize>,
        want: Vec<usize>,
    },
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
}

impl BertConfig {
    pub fn from_file(path: &Path) -> Result<Self, BertError> {
        let err = |problem: String| BertError::Config {
            path: path.display().to_string(),
            problem,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let cfg: BertConfig = serde_json::from_str(&text).map_err(|e| err(e.to_string()))?;
        cfg.check().map_err(err)?;
        Ok(cfg)
    }

    fn check(&self) -> Result<(), String> {
        let dims = [
            self.hidden_size,
            self.intermediate_size,
            self.max_position_embeddings,
            self.num_attention_heads,
            self.type_vocab_size,
        ];
        if dims.iter().any(|&d| d == 0 || d > MAX_DIM) || self.vocab_size == 0 {
            return Err("a dimension is 0 or larger than 65536".into());
        }
        if self.num_hidden_layers > MAX_LAYERS {
            return Err(format!(
                "{} layers (at most {MAX_LAYERS})",
                self.num_hidden_layers
            ));
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err("hidden_size is not a multiple of num_attention_heads".into());
        }
        if self.hidden_act != "gelu" {
            return Err(format!(
                "hidden_act {:?} (only \"gelu\", the erf form, is implemented)",
                self.hidden_act
            ));
        }
        if !(self.layer_norm_eps > 0.0 && self.layer_norm_eps < 1.0) {
            return Err("layer_norm_eps must be in (0, 1)".into());
        }
        Ok(())
    }
}

/// Token ids of a batch of sentences, padded to the longest, with the attention mask.
#[derive(Debug, Clone)]
pub struct TokenBatch {
    /// `[batch, seq]` u32.
    pub ids: Tensor,
    /// `[batch, seq]` f32: 1 for a token, 0 for padding.
    pub mask: Tensor,
}

impl TokenBatch {
    /// Pads `sentences` (token ids, special tokens included) with `pad_id`.
    pub fn new(sentences: &[Vec<u32>], pad_id: u32, device: &Device) -> Result<Self, BertError> {
        let b = sentences.len();
        let t = sentences.iter().map(Vec::len).max().unwrap_or(0);
        let mut ids = Vec::with_capacity(b * t);
        let mut mask = Vec::with_capacity(b * t);
        for s in sentences {
            ids.extend_from_slice(s);
            ids.extend(std::iter::repeat_n(pad_id, t - s.len()));
            mask.extend(std::iter::repeat_n(1f32, s.len()));
            mask.extend(std::iter::repeat_n(0f32, t - s.len()));
        }
        Ok(TokenBatch {
            ids: Tensor::from_vec(ids, (b, t), device)?,
            mask: Tensor::from_vec(mask, (b, t), device)?,
        })
    }
}

/// The linear sublayers of one encoder layer as `(name, [out, in])`: `encoder.layer.L.{name}.weight`
/// is `[out, in]` and its `.bias` is `[out]`. One list for the weight checks, the matrices
/// calibration and quantization work on, and the synthetic models of the tests.
pub fn layer_linears<T: Copy>(hidden: T, intermediate: T) -> [(&'static str, [T; 2]); 6] {
    [
        ("attention.self.query", [hidden, hidden]),
        ("attention.self.key", [hidden, hidden]),
        ("attention.self.value", [hidden, hidden]),
        ("attention.output.dense", [hidden, hidden]),
        ("intermediate.dense", [intermediate, hidden]),
        ("output.dense", [hidden, intermediate]),
    ]
}

/// The weights of a BERT encoder by their Hugging Face names (an optional `bert.` prefix is accepted),
/// in f32. Values may be graph nodes (for calibration).
#[derive(Debug, Clone)]
pub struct BertWeights {
    map: HashMap<String, Tensor>,
    prefix: &'static str,
}

impl BertWeights {
    /// Takes the floating-point tensors of a model (converted to f32); others are ignored.
    pub fn new(tensors: impl IntoIterator<Item = (String, Tensor)>) -> Result<Self, BertError> {
        let mut map = HashMap::new();
        for (name, t) in tensors {
            if t.dtype().is_float() {
                let t = if t.dtype() == DType::F32 {
                    t
                } else {
                    t.to_dtype(DType::F32)?
                };
                map.insert(name, t);
            }
        }
        let prefix = if map.contains_key("embeddings.word_embeddings.weight") {
            ""
        } else {
            "bert."
        };
        Ok(BertWeights { map, prefix })
    }

    /// Replaces one tensor (same name, same shape expected by the caller).
    pub fn set(&mut self, name: &str, t: Tensor) {
        self.map.insert(name.to_owned(), t);
    }

    /// Names of the linear-layer weight matrices the forward pass uses.
    pub fn linear_names(cfg: &BertConfig) -> Vec<String> {
        let mut v = Vec::new();
        for l in 0..cfg.num_hidden_layers {
            for (n, _) in layer_linears(cfg.hidden_size, cfg.intermediate_size) {
                v.push(format!("encoder.layer.{l}.{n}.weight"));
            }
        }
        v
    }

    fn get(&self, name: &str, want: &[usize]) -> Result<&Tensor, BertError> {
        let full = format!("{}{name}", self.prefix);
        let t = self
            .map
            .get(&full)
            .or_else(|| self.map.get(name))
            .ok_or(BertError::Missing(full))?;
        if t.dims() != want {
            return Err(BertError::Shape {
                name: name.to_owned(),
                got: t.dims().to_vec(),
                want: want.to_vec(),
            });
        }
        Ok(t)
    }

    /// Checks that every tensor the forward pass needs is there with the right shape.
    pub fn check(&self, cfg: &BertConfig) -> Result<(), BertError> {
        let h = cfg.hidden_size;
        self.get("embeddings.word_embeddings.weight", &[cfg.vocab_size, h])?;
        self.get(
            "embeddings.position_embeddings.weight",
            &[cfg.max_position_embeddings, h],
        )?;
        self.get(
            "embeddings.token_type_embeddings.weight",
            &[cfg.type_vocab_size, h],
        )?;
        for l in 0..cfg.num_hidden_layers {
            let p = format!("encoder.layer.{l}");
            for (n, [out, inp]) in layer_linears(h, cfg.intermediate_size) {
                self.get(&format!("{p}.{n}.weight"), &[out, inp])?;
                self.get(&format!("{p}.{n}.bias"), &[out])?;
            }
        }
        Ok(())
    }
}

/// The forward pass.
#[derive(Debug, Clone)]
pub struct BertEncoder {
    pub cfg: BertConfig,
}

impl BertEncoder {
    pub fn new(cfg: BertConfig) -> Self {
        BertEncoder { cfg }
    }

    /// Last hidden states, `[batch, seq, hidden]`.
    pub fn hidden_states(&self, w: &BertWeights, batch: &TokenBatch) -> Result<Tensor, BertError> {
        let cfg = &self.cfg;
        let h = cfg.hidden_size;
        let (b, t) = batch.ids.dims2()?;
        if t > cfg.max_position_embeddings {
            return Err(BertError::Candle(candle_core::Error::Msg(format!(
                "{t} tokens, the model takes at most {}",
                cfg.max_position_embeddings
            ))));
        }
        let word = w
            .get("embeddings.word_embeddings.weight", &[cfg.vocab_size, h])?
            .index_select(&batch.ids.flatten_all()?, 0)?
            .reshape((b, t, h))?;
        let pos = w
            .get(
                "embeddings.position_embeddings.weight",
                &[cfg.max_position_embeddings, h],
            )?
            .narrow(0, 0, t)?;
        let ty = w
            .get(
                "embeddings.token_type_embeddings.weight",
                &[cfg.type_vocab_size, h],
            )?
            .narrow(0, 0, 1)?;
        let x = word.broadcast_add(&pos)?.broadcast_add(&ty)?;
        let mut x = self
            .layer_norm(w, "embeddings.LayerNorm", &x)?
            .reshape((b * t, h))?;
        // Padding gets −10000 before the softmax, as BERT does: exp underflows to exactly 0 in f32.
        let bias = ((batch.mask.clone() - 1.0)? * 10000.0)?.reshape((b, 1, 1, t))?;
        for l in 0..cfg.num_hidden_layers {
            x = self.layer(w, l, &x, &bias, b, t)?;
        }
        Ok(x.reshape((b, t, h))?)
    }

    /// Mean-pooled, L2-normalised sentence embeddings, `[batch, hidden]`.
    pub fn embed(&self, w: &BertWeights, batch: &TokenBatch) -> Result<Tensor, BertError> {
        let x = self.hidden_states(w, batch)?;
        pool_normalize(&x, &batch.mask)
    }

    fn layer_norm(&self, w: &BertWeights, prefix: &str, x: &Tensor) -> Result<Tensor, BertError> {
        let h = self.cfg.hidden_size;
        let g = w.get(&format!("{prefix}.weight"), &[h])?;
        let beta = w.get(&format!("{prefix}.bias"), &[h])?;
        let mean = x.mean_keepdim(D::Minus1)?;
        let xc = x.broadcast_sub(&mean)?;
        let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
        let xn = xc.broadcast_div(&(var + self.cfg.layer_norm_eps)?.sqrt()?)?;
        Ok(xn.broadcast_mul(g)?.broadcast_add(beta)?)
    }

    fn linear(
        &self,
        w: &BertWeights,
        prefix: &str,
        x: &Tensor,
        out: usize,
        inp: usize,
    ) -> Result<Tensor, BertError> {
        let wt = w.get(&format!("{prefix}.weight"), &[out, inp])?;
        let bias = w.get(&format!("{prefix}.bias"), &[out])?;
        Ok(x.matmul(&wt.t()?)?.broadcast_add(bias)?)
    }

    fn layer(
        &self,
        w: &BertWeights,
        l: usize,
        x: &Tensor,
        bias: &Tensor,
        b: usize,
        t: usize,
    ) -> Result<Tensor, BertError> {
        let cfg = &self.cfg;
        let (h, nh) = (cfg.hidden_size, cfg.num_attention_heads);
        let dh = h / nh;
        let p = format!("encoder.layer.{l}");
        let heads = |name: &str| -> Result<Tensor, BertError> {
            Ok(self
                .linear(w, &format!("{p}.attention.self.{name}"), x, h, h)?
                .reshape((b, t, nh, dh))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        let (q, k, v) = (heads("query")?, heads("key")?, heads("value")?);
        let scores = (q.matmul(&k.t()?)? * (1.0 / (dh as f64).sqrt()))?.broadcast_add(bias)?;
        let probs = softmax_last(&scores)?;
        let ctx = probs
            .matmul(&v)?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b * t, h))?;
        let attn = self.linear(w, &format!("{p}.attention.output.dense"), &ctx, h, h)?;
        let x = self.layer_norm(w, &format!("{p}.attention.output.LayerNorm"), &(x + attn)?)?;
        let inter = self
            .linear(
                w,
                &format!("{p}.intermediate.dense"),
                &x,
                cfg.intermediate_size,
                h,
            )?
            .gelu_erf()?;
        let out = self.linear(
            w,
            &format!("{p}.output.dense"),
            &inter,
            h,
            cfg.intermediate_size,
        )?;
        self.layer_norm(w, &format!("{p}.output.LayerNorm"), &(x + out)?)
    }
}

fn softmax_last(x: &Tensor) -> Result<Tensor, BertError> {
    // The max is a constant shift (the softmax does not depend on it): no gradient through it.
    let m = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&m)?.exp()?;
    Ok(e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?)
}

/// Mean over the tokens the mask keeps, then L2 normalisation (sentence-transformers' Pooling with
/// `pooling_mode_mean_tokens` and Normalize).
pub fn pool_normalize(x: &Tensor, mask: &Tensor) -> Result<Tensor, BertError> {
    let m = mask.unsqueeze(2)?;
    let sum = x.broadcast_mul(&m)?.sum(1)?;
    let count = m.sum(1)?.clamp(1e-9, f64::MAX)?;
    let mean = sum.broadcast_div(&count)?;
    let norm = mean.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12, f64::MAX)?;
    Ok(mean.broadcast_div(&norm)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::synthetic::Rng;

    fn tiny() -> BertConfig {
        BertConfig {
            hidden_size: 8,
            num_hidden_layers: 2,
            num_attention_heads: 2,
            intermediate_size: 16,
            max_position_embeddings: 16,
            vocab_size: 20,
            type_vocab_size: 2,
            layer_norm_eps: 1e-12,
            hidden_act: "gelu".into(),
        }
    }

    fn random_weights(cfg: &BertConfig, seed: u64) -> BertWeights {
        let mut rng = Rng::new(seed);
        let mut v = Vec::new();
        let h = cfg.hidden_size;
        let mut t = |name: String, dims: Vec<usize>, offset: f32| {
            let n: usize = dims.iter().product();
            let data: Vec<f32> = (0..n).map(|_| offset + 0.3 * rng.normal()).collect();
            v.push((name, Tensor::from_vec(data, dims, &Device::Cpu).unwrap()));
        };
        t(
            "embeddings.word_embeddings.weight".into(),
            vec![cfg.vocab_size, h],
            0.0,
        );
        t(
            "embeddings.position_embeddings.weight".into(),
            vec![cfg.max_position_embeddings, h],
            0.0,
        );
        t(
            "embeddings.token_type_embeddings.weight".into(),
            vec![2, h],
            0.0,
        );
        t("embeddings.LayerNorm.weight".into(), vec![h], 1.0);
        t("embeddings.LayerNorm.bias".into(), vec![h], 0.0);
        for l in 0..cfg.num_hidden_layers {
            let p = format!("encoder.layer.{l}");
            for (n, [out, inp]) in layer_linears(h, cfg.intermediate_size) {
                t(format!("{p}.{n}.weight"), vec![out, inp], 0.0);
                t(format!("{p}.{n}.bias"), vec![out], 0.0);
            }
            t(
                format!("{p}.attention.output.LayerNorm.weight"),
                vec![h],
                1.0,
            );
            t(format!("{p}.attention.output.LayerNorm.bias"), vec![h], 0.0);
            t(format!("{p}.output.LayerNorm.weight"), vec![h], 1.0);
            t(format!("{p}.output.LayerNorm.bias"), vec![h], 0.0);
        }
        BertWeights::new(v).unwrap()
    }

    /// Padding a sentence (or batching it with a longer one) does not change its embedding.
    #[test]
    fn padding_does_not_change_embeddings() {
        let cfg = tiny();
        let w = random_weights(&cfg, 3);
        w.check(&cfg).unwrap();
        let enc = BertEncoder::new(cfg);
        let a = vec![1u32, 5, 7, 2];
        let long = vec![1u32, 3, 4, 9, 11, 12, 2];
        let alone = enc
            .embed(
                &w,
                &TokenBatch::new(std::slice::from_ref(&a), 0, &Device::Cpu).unwrap(),
            )
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        let batched = enc
            .embed(&w, &TokenBatch::new(&[long, a], 0, &Device::Cpu).unwrap())
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        for (x, y) in alone[0].iter().zip(&batched[1]) {
            assert!((x - y).abs() < 1e-5, "{x} vs {y}");
        }
        let norm: f32 = batched[0].iter().map(|x| x * x).sum();
        assert!((norm - 1.0).abs() < 1e-5);
    }

    #[test]
    fn different_weights_give_different_embeddings() {
        let cfg = tiny();
        let enc = BertEncoder::new(cfg.clone());
        let batch = TokenBatch::new(&[vec![1, 5, 7, 2]], 0, &Device::Cpu).unwrap();
        let e1 = enc
            .embed(&random_weights(&cfg, 1), &batch)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        let e2 = enc
            .embed(&random_weights(&cfg, 2), &batch)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        assert!(e1[0].iter().zip(&e2[0]).any(|(a, b)| (a - b).abs() > 1e-3));
    }

    #[test]
    fn missing_and_misshapen_tensors_are_named() {
        let cfg = tiny();
        let mut w = random_weights(&cfg, 1);
        w.map.remove("encoder.layer.1.output.dense.weight");
        let e = w.check(&cfg).unwrap_err();
        assert!(
            e.to_string()
                .contains("encoder.layer.1.output.dense.weight"),
            "{e}"
        );
        let mut w = random_weights(&cfg, 1);
        w.set(
            "encoder.layer.0.attention.self.key.weight",
            Tensor::zeros((8, 7), DType::F32, &Device::Cpu).unwrap(),
        );
        let e = w.check(&cfg).unwrap_err();
        assert!(e.to_string().contains("[8, 7]"), "{e}");
    }

    #[test]
    fn bad_configs_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.json");
        for (body, want) in [
            (
                r#"{"hidden_size": 10, "num_hidden_layers": 1, "num_attention_heads": 3, "intermediate_size": 4, "max_position_embeddings": 8, "vocab_size": 5}"#,
                "multiple",
            ),
            (
                r#"{"hidden_size": 0, "num_hidden_layers": 1, "num_attention_heads": 1, "intermediate_size": 4, "max_position_embeddings": 8, "vocab_size": 5}"#,
                "dimension",
            ),
            (
                r#"{"hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 4, "max_position_embeddings": 8, "vocab_size": 5, "hidden_act": "relu"}"#,
                "relu",
            ),
            ("not json", "expected"),
        ] {
            std::fs::write(&p, body).unwrap();
            let e = BertConfig::from_file(&p).unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
        }
    }
}
