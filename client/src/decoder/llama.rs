//! The Llama decoder forward pass on candle tensors, as Hugging Face's `LlamaForCausalLM` computes it:
//! token embeddings; per layer RMSNorm, causal self-attention with rotary position embeddings (the
//! rotate-half form, θ from the config) and grouped-query attention, a residual, RMSNorm, a SwiGLU MLP
//! and a residual; a final RMSNorm and the output head (`lm_head`, or the embeddings when tied).
//!
//! Weights stay in their stored dtype (bf16 for most checkpoints) and are widened to f32 where they are
//! used; all arithmetic is f32. A batch is right-padded: causal attention means a token never sees the
//! padding after it, so the logits of the real tokens do not depend on the padding.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, D};

use super::config::LlamaConfig;
use super::folder::FolderWeights;
use crate::device::apply::{tensor_from_bytes, CandleApplyError};

#[derive(Debug, thiserror::Error)]
pub enum LlamaError {
    #[error("the model lacks tensor {0:?}")]
    Missing(String),
    #[error("tensor {name:?} has shape {got:?}, the config needs {want:?}")]
    Shape {
        name: String,
        got: Vec<usize>,
        want: Vec<usize>,
    },
    #[error("tensor {name:?} is {dtype:?}; weights must be floating point")]
    Dtype { name: String, dtype: DType },
    #[error("token id {id} is outside the vocabulary of {vocab}")]
    TokenId { id: u32, vocab: usize },
    #[error("a sequence of {len} tokens; the model takes at most {max}")]
    TooLong { len: usize, max: usize },
    #[error(transparent)]
    Load(#[from] CandleApplyError),
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
}

/// The weights of a Llama model by their Hugging Face names, checked against a config.
#[derive(Debug, Clone)]
pub struct LlamaWeights {
    map: HashMap<String, Tensor>,
}

const EMBED: &str = "model.embed_tokens.weight";
const HEAD: &str = "lm_head.weight";
const FINAL_NORM: &str = "model.norm.weight";

impl LlamaWeights {
    /// Takes named tensors (others than the model's are kept but unused) and checks every tensor the
    /// forward pass needs.
    pub fn new(
        tensors: impl IntoIterator<Item = (String, Tensor)>,
        cfg: &LlamaConfig,
    ) -> Result<Self, LlamaError> {
        let w = LlamaWeights {
            map: tensors.into_iter().collect(),
        };
        w.check(cfg)?;
        Ok(w)
    }

    /// Every tensor of a model folder, in its stored dtype, on `device`.
    pub fn load(
        folder: &FolderWeights,
        cfg: &LlamaConfig,
        device: &Device,
    ) -> Result<Self, LlamaError> {
        let mut tensors = Vec::with_capacity(folder.names().len());
        for name in folder.names() {
            let Some(d) = folder.data(name) else { continue };
            tensors.push((
                name.clone(),
                tensor_from_bytes(name, d.dtype, d.shape, d.bytes, device)?,
            ));
            folder.release(name);
        }
        Self::new(tensors, cfg)
    }

    /// Names of the tensors the forward pass reads, for `cfg`.
    pub fn required(cfg: &LlamaConfig) -> Vec<(String, Vec<usize>)> {
        let (h, v) = (cfg.hidden_size, cfg.vocab_size);
        let mut out = vec![(EMBED.to_owned(), vec![v, h])];
        for l in 0..cfg.num_hidden_layers {
            let p = format!("model.layers.{l}");
            out.push((format!("{p}.input_layernorm.weight"), vec![h]));
            out.push((format!("{p}.post_attention_layernorm.weight"), vec![h]));
            for (n, [o, i]) in cfg.layer_linears() {
                out.push((format!("{p}.{n}.weight"), vec![o, i]));
            }
        }
        out.push((FINAL_NORM.to_owned(), vec![h]));
        if !cfg.tie_word_embeddings {
            out.push((HEAD.to_owned(), vec![v, h]));
        }
        out
    }

    fn check(&self, cfg: &LlamaConfig) -> Result<(), LlamaError> {
        for (name, want) in Self::required(cfg) {
            let t = self
                .map
                .get(&name)
                .ok_or(LlamaError::Missing(name.clone()))?;
            if t.dims() != want.as_slice() {
                return Err(LlamaError::Shape {
                    name,
                    got: t.dims().to_vec(),
                    want,
                });
            }
            if !t.dtype().is_float() {
                return Err(LlamaError::Dtype {
                    name,
                    dtype: t.dtype(),
                });
            }
        }
        Ok(())
    }

    /// A weight widened to f32 (checked present by [`Self::new`]).
    fn f32(&self, name: &str) -> Result<Tensor, LlamaError> {
        let t = self
            .map
            .get(name)
            .ok_or_else(|| LlamaError::Missing(name.to_owned()))?;
        Ok(t.to_dtype(DType::F32)?)
    }

    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.map.get(name)
    }

    /// Replaces tensor `name` by `t` of the same shape (calibration swaps in trainable weights);
    /// `false`, and nothing replaced, when there is no such tensor or the shape differs.
    pub fn replace(&mut self, name: &str, t: Tensor) -> bool {
        match self.map.get_mut(name) {
            Some(old) if old.dims() == t.dims() && t.dtype().is_float() => {
                *old = t;
                true
            }
            _ => false,
        }
    }

    /// The named tensors, in no particular order.
    pub fn into_tensors(self) -> Vec<(String, Tensor)> {
        self.map.into_iter().collect()
    }
}

/// Token ids of a batch of sequences, right-padded to the longest.
#[derive(Debug, Clone)]
pub struct DecoderBatch {
    /// `[batch, seq]` u32.
    pub ids: Tensor,
    /// Length of each sequence (the rest is padding).
    pub lengths: Vec<usize>,
}

impl DecoderBatch {
    /// Pads `sequences` with `pad_id` (any id in the vocabulary: padding is never attended to).
    pub fn new(sequences: &[Vec<u32>], pad_id: u32, device: &Device) -> Result<Self, LlamaError> {
        let t = sequences.iter().map(Vec::len).max().unwrap_or(0);
        let mut ids = Vec::with_capacity(sequences.len() * t);
        for s in sequences {
            ids.extend_from_slice(s);
            ids.extend(std::iter::repeat_n(pad_id, t - s.len()));
        }
        Ok(DecoderBatch {
            ids: Tensor::from_vec(ids, (sequences.len(), t), device)?,
            lengths: sequences.iter().map(Vec::len).collect(),
        })
    }
}

/// The forward pass of one configuration; weights are passed per call, so one model serves the base,
/// the fine-tune and any delta-applied weights of the same shape.
#[derive(Debug, Clone)]
pub struct LlamaModel {
    pub cfg: LlamaConfig,
}

impl LlamaModel {
    pub fn new(cfg: LlamaConfig) -> Self {
        LlamaModel { cfg }
    }

    /// Next-token logits, `[batch, seq, vocab]` f32.
    pub fn logits(&self, w: &LlamaWeights, batch: &DecoderBatch) -> Result<Tensor, LlamaError> {
        let cfg = &self.cfg;
        let (b, t) = batch.ids.dims2()?;
        if t > cfg.max_position_embeddings {
            return Err(LlamaError::TooLong {
                len: t,
                max: cfg.max_position_embeddings,
            });
        }
        let flat = batch.ids.flatten_all()?;
        if let Some(&id) = flat
            .to_vec1::<u32>()?
            .iter()
            .find(|&&id| id as usize >= cfg.vocab_size)
        {
            return Err(LlamaError::TokenId {
                id,
                vocab: cfg.vocab_size,
            });
        }
        let h = cfg.hidden_size;
        let device = batch.ids.device();
        let mut x = w.f32(EMBED)?.index_select(&flat, 0)?.reshape((b, t, h))?;
        let rope = Rope::new(cfg, t, device)?;
        let mask = causal_mask(t, device)?;
        for l in 0..cfg.num_hidden_layers {
            x = self.layer(w, l, &x, &rope, &mask)?;
        }
        let x = self.rms_norm(&x, &w.f32(FINAL_NORM)?)?;
        let head = if cfg.tie_word_embeddings {
            w.f32(EMBED)?
        } else {
            w.f32(HEAD)?
        };
        Ok(x.reshape((b * t, h))?
            .matmul(&head.t()?)?
            .reshape((b, t, cfg.vocab_size))?)
    }

    fn rms_norm(&self, x: &Tensor, weight: &Tensor) -> Result<Tensor, LlamaError> {
        let var = x.sqr()?.mean_keepdim(D::Minus1)?;
        let xn = x.broadcast_div(&(var + self.cfg.rms_norm_eps)?.sqrt()?)?;
        Ok(xn.broadcast_mul(weight)?)
    }

    /// `x [b, t, in] · Wᵀ` for the weight `name` (`[out, in]`).
    fn linear(&self, w: &LlamaWeights, name: &str, x: &Tensor) -> Result<Tensor, LlamaError> {
        let wt = w.f32(name)?;
        let (b, t, i) = x.dims3()?;
        let o = wt.dim(0)?;
        Ok(x.reshape((b * t, i))?
            .matmul(&wt.t()?)?
            .reshape((b, t, o))?)
    }

    fn layer(
        &self,
        w: &LlamaWeights,
        l: usize,
        x: &Tensor,
        rope: &Rope,
        mask: &Tensor,
    ) -> Result<Tensor, LlamaError> {
        let cfg = &self.cfg;
        let (b, t, _) = x.dims3()?;
        let (nh, nkv, hd) = (cfg.num_attention_heads, cfg.kv_heads(), cfg.head_dim());
        let p = format!("model.layers.{l}");
        let hn = self.rms_norm(x, &w.f32(&format!("{p}.input_layernorm.weight"))?)?;
        let heads = |name: &str, n: usize| -> Result<Tensor, LlamaError> {
            Ok(self
                .linear(w, &format!("{p}.self_attn.{name}.weight"), &hn)?
                .reshape((b, t, n, hd))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        let q = rope.apply(&heads("q_proj", nh)?)?;
        let k = repeat_kv(&rope.apply(&heads("k_proj", nkv)?)?, nh / nkv)?;
        let v = repeat_kv(&heads("v_proj", nkv)?, nh / nkv)?;
        let scores = (q.matmul(&k.t()?)? * (1.0 / (hd as f64).sqrt()))?.broadcast_add(mask)?;
        let probs = softmax_last(&scores)?;
        let ctx = probs
            .matmul(&v)?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b, t, nh * hd))?;
        let x = (x + self.linear(w, &format!("{p}.self_attn.o_proj.weight"), &ctx)?)?;
        let hn = self.rms_norm(&x, &w.f32(&format!("{p}.post_attention_layernorm.weight"))?)?;
        let gate = self
            .linear(w, &format!("{p}.mlp.gate_proj.weight"), &hn)?
            .silu()?;
        let up = self.linear(w, &format!("{p}.mlp.up_proj.weight"), &hn)?;
        let down = self.linear(w, &format!("{p}.mlp.down_proj.weight"), &(gate * up)?)?;
        Ok((x + down)?)
    }
}

/// Rotary position embeddings, rotate-half form: `x·cos + rotate_half(x)·sin` with
/// `rotate_half([x1, x2]) = [−x2, x1]` over the two halves of each head, angle `pos / θ^(2i/d)`.
struct Rope {
    /// `[1, 1, t, head_dim]`.
    cos: Tensor,
    sin: Tensor,
    half: usize,
}

impl Rope {
    fn new(cfg: &LlamaConfig, t: usize, device: &Device) -> Result<Self, LlamaError> {
        let d = cfg.head_dim();
        let half = d / 2;
        // As transformers computes them: inverse frequencies and angles in f32.
        let inv: Vec<f32> = (0..half)
            .map(|i| (1.0 / cfg.rope_theta.powf((2 * i) as f64 / d as f64)) as f32)
            .collect();
        let mut cos = Vec::with_capacity(t * d);
        let mut sin = Vec::with_capacity(t * d);
        for pos in 0..t {
            let angles: Vec<f32> = inv.iter().map(|&f| pos as f32 * f).collect();
            // Both halves of a head use the same angles.
            for _ in 0..2 {
                cos.extend(angles.iter().map(|a| a.cos()));
                sin.extend(angles.iter().map(|a| a.sin()));
            }
        }
        Ok(Rope {
            cos: Tensor::from_vec(cos, (1, 1, t, d), device)?,
            sin: Tensor::from_vec(sin, (1, 1, t, d), device)?,
            half,
        })
    }

    /// `x`: `[b, heads, t, head_dim]`.
    fn apply(&self, x: &Tensor) -> Result<Tensor, LlamaError> {
        let x1 = x.narrow(D::Minus1, 0, self.half)?;
        let x2 = x.narrow(D::Minus1, self.half, self.half)?;
        let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
        Ok((x.broadcast_mul(&self.cos)? + rotated.broadcast_mul(&self.sin)?)?)
    }
}

/// Each key-value head serves `n` consecutive query heads: `[b, kv, t, d]` → `[b, kv·n, t, d]`.
fn repeat_kv(x: &Tensor, n: usize) -> Result<Tensor, LlamaError> {
    if n == 1 {
        return Ok(x.clone());
    }
    let (b, kv, t, d) = x.dims4()?;
    Ok(x.unsqueeze(2)?
        .expand((b, kv, n, t, d))?
        .contiguous()?
        .reshape((b, kv * n, t, d))?)
}

/// `[1, 1, t, t]`: 0 where a position may attend (itself and earlier), −∞ after.
fn causal_mask(t: usize, device: &Device) -> Result<Tensor, LlamaError> {
    let m: Vec<f32> = (0..t)
        .flat_map(|i| (0..t).map(move |j| if j <= i { 0.0 } else { f32::NEG_INFINITY }))
        .collect();
    Ok(Tensor::from_vec(m, (1, 1, t, t), device)?)
}

fn softmax_last(x: &Tensor) -> Result<Tensor, LlamaError> {
    let m = x.max_keepdim(D::Minus1)?;
    let e = x.broadcast_sub(&m)?.exp()?;
    Ok(e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::synthetic::Rng;

    pub(crate) fn tiny(kv: usize, tied: bool) -> LlamaConfig {
        LlamaConfig::parse(&format!(
            r#"{{"model_type": "llama", "hidden_size": 16, "intermediate_size": 24,
                "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": {kv},
                "vocab_size": 30, "max_position_embeddings": 32, "rms_norm_eps": 1e-5,
                "tie_word_embeddings": {tied}}}"#
        ))
        .unwrap()
    }

    pub(crate) fn random_weights(cfg: &LlamaConfig, seed: u64) -> Vec<(String, Tensor)> {
        let mut rng = Rng::new(seed);
        LlamaWeights::required(cfg)
            .into_iter()
            .map(|(name, dims)| {
                let n: usize = dims.iter().product();
                let offset = if dims.len() == 1 { 1.0 } else { 0.0 };
                let v: Vec<f32> = (0..n).map(|_| offset + 0.3 * rng.normal()).collect();
                (name, Tensor::from_vec(v, dims, &Device::Cpu).unwrap())
            })
            .collect()
    }

    fn logits(cfg: &LlamaConfig, w: &LlamaWeights, seqs: &[Vec<u32>]) -> Vec<Vec<Vec<f32>>> {
        let m = LlamaModel::new(cfg.clone());
        let batch = DecoderBatch::new(seqs, 0, &Device::Cpu).unwrap();
        m.logits(w, &batch).unwrap().to_vec3::<f32>().unwrap()
    }

    /// Padding a sequence, or batching it with a longer one, does not change its logits; a later
    /// token does not change the logits of earlier positions (causality).
    #[test]
    fn padding_and_later_tokens_do_not_change_logits() {
        for (kv, tied) in [(4, false), (2, false), (1, true)] {
            let cfg = tiny(kv, tied);
            let w = LlamaWeights::new(random_weights(&cfg, 3), &cfg).unwrap();
            let a = vec![1u32, 5, 7, 2];
            let long = vec![1u32, 3, 4, 9, 11, 12, 2];
            let alone = logits(&cfg, &w, std::slice::from_ref(&a));
            let batched = logits(&cfg, &w, &[long.clone(), a.clone()]);
            let prefix = logits(&cfg, &w, &[long[..3].to_vec()]);
            for p in 0..a.len() {
                for (x, y) in alone[0][p].iter().zip(&batched[1][p]) {
                    assert!((x - y).abs() < 1e-5, "kv {kv}: {x} vs {y}");
                }
            }
            for p in 0..3 {
                for (x, y) in prefix[0][p].iter().zip(&batched[0][p]) {
                    assert!((x - y).abs() < 1e-5, "kv {kv}: {x} vs {y}");
                }
            }
        }
    }

    /// Position matters (RoPE): the same token after different prefixes of equal content but
    /// another order gives different logits.
    #[test]
    fn order_matters() {
        let cfg = tiny(2, false);
        let w = LlamaWeights::new(random_weights(&cfg, 5), &cfg).unwrap();
        let l = logits(&cfg, &w, &[vec![1, 2, 3, 4], vec![2, 1, 3, 4]]);
        assert!(l[0][3]
            .iter()
            .zip(&l[1][3])
            .any(|(a, b)| (a - b).abs() > 1e-3));
    }

    #[test]
    fn bad_weights_and_inputs_are_named() {
        let cfg = tiny(2, false);
        let mut v = random_weights(&cfg, 1);
        v.retain(|(n, _)| n != "model.layers.1.mlp.down_proj.weight");
        let e = LlamaWeights::new(v, &cfg).unwrap_err().to_string();
        assert!(e.contains("model.layers.1.mlp.down_proj.weight"), "{e}");
        let mut v = random_weights(&cfg, 1);
        v[0].1 = Tensor::zeros((29, 16), DType::F32, &Device::Cpu).unwrap();
        let e = LlamaWeights::new(v, &cfg).unwrap_err().to_string();
        assert!(e.contains("[29, 16]"), "{e}");
        let w = LlamaWeights::new(random_weights(&cfg, 1), &cfg).unwrap();
        let m = LlamaModel::new(cfg.clone());
        let batch = DecoderBatch::new(&[vec![1, 30]], 0, &Device::Cpu).unwrap();
        let e = m.logits(&w, &batch).unwrap_err().to_string();
        assert!(e.contains("token id 30"), "{e}");
        let batch = DecoderBatch::new(&[vec![1; 33]], 0, &Device::Cpu).unwrap();
        let e = m.logits(&w, &batch).unwrap_err().to_string();
        assert!(e.contains("at most 32"), "{e}");
    }

    /// With tied embeddings there is no lm_head: the embeddings are the output head too.
    #[test]
    fn tied_head_uses_the_embeddings() {
        let cfg = tiny(1, true);
        let mut v = random_weights(&cfg, 9);
        let w = LlamaWeights::new(v.clone(), &cfg).unwrap();
        let before = logits(&cfg, &w, &[vec![3, 4]]);
        // Scaling the embeddings changes the tied head's logits.
        for (n, t) in &mut v {
            if n == EMBED {
                *t = (t.clone() * 2.0).unwrap();
            }
        }
        let w2 = LlamaWeights::new(v, &cfg).unwrap();
        let after = logits(&cfg, &w2, &[vec![3, 4]]);
        assert!(before[0][0]
            .iter()
            .zip(&after[0][0])
            .any(|(a, b)| (a - b).abs() > 1e-3));
    }
}
