//! Small generated Llama-shaped model folders, as Hugging Face publishes them: weights in
//! `model-0000k-of-0000n.safetensors` shards, `model.safetensors.index.json`, `config.json`,
//! `generation_config.json`, `tokenizer.json`, `tokenizer_config.json` (with a chat template),
//! `special_tokens_map.json`, `chat_template.jinja`. Names and shapes follow Llama-2; sizes are
//! tiny; values are deterministic bf16 from a seed per tensor.

use std::collections::BTreeMap;
use std::path::Path;

use zdn_protocol::safetensors::{encode_header, TensorLayout};
use zdn_protocol::DType;

/// The shape of a generated folder.
#[derive(Debug, Clone)]
pub struct LlamaSpec {
    pub layers: u32,
    pub hidden: u64,
    pub intermediate: u64,
    pub vocab: u64,
    pub shards: usize,
    pub seed: u64,
    /// Tensors whose values come from another seed (a fine-tune that changed only these).
    pub changed: Vec<String>,
    /// Written into config.json (a changed side file).
    pub note: String,
}

impl LlamaSpec {
    pub fn small(shards: usize) -> Self {
        LlamaSpec {
            layers: 3,
            hidden: 64,
            intermediate: 172,
            vocab: 320,
            shards,
            seed: 1,
            changed: Vec::new(),
            note: "base".into(),
        }
    }

    /// Tensors in Hugging Face order (embeddings, layers, final norm, head), bf16.
    pub fn layouts(&self) -> Vec<TensorLayout> {
        let (h, i, v) = (self.hidden, self.intermediate, self.vocab);
        let mut out = vec![("model.embed_tokens.weight".to_string(), vec![v, h])];
        for l in 0..self.layers {
            let p = format!("model.layers.{l}");
            out.push((format!("{p}.input_layernorm.weight"), vec![h]));
            for m in ["q_proj", "k_proj", "v_proj", "o_proj"] {
                out.push((format!("{p}.self_attn.{m}.weight"), vec![h, h]));
            }
            out.push((format!("{p}.post_attention_layernorm.weight"), vec![h]));
            out.push((format!("{p}.mlp.gate_proj.weight"), vec![i, h]));
            out.push((format!("{p}.mlp.up_proj.weight"), vec![i, h]));
            out.push((format!("{p}.mlp.down_proj.weight"), vec![h, i]));
        }
        out.push(("model.norm.weight".into(), vec![h]));
        out.push(("lm_head.weight".into(), vec![v, h]));
        out.into_iter()
            .map(|(name, shape)| TensorLayout {
                name,
                dtype: DType::BF16,
                shape,
            })
            .collect()
    }

    /// The tensors split into `shards` runs of about equal bytes, in order.
    pub fn shard_layouts(&self) -> Vec<Vec<TensorLayout>> {
        let all = self.layouts();
        let total: u64 = all.iter().map(|t| t.byte_len().unwrap()).sum();
        let per = total.div_ceil(self.shards as u64);
        let mut out = vec![Vec::new(); self.shards];
        let mut acc = 0u64;
        for t in all {
            let k = ((acc / per) as usize).min(self.shards - 1);
            acc += t.byte_len().unwrap();
            out[k].push(t);
        }
        out
    }

    pub fn shard_name(&self, k: usize) -> String {
        format!("model-{:05}-of-{:05}.safetensors", k + 1, self.shards)
    }

    fn values(&self, t: &TensorLayout) -> Vec<u8> {
        let seed = if self.changed.contains(&t.name) {
            self.seed.wrapping_mul(31).wrapping_add(7)
        } else {
            self.seed
        };
        let mut x = seed
            ^ t.name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
            });
        let n = t.byte_len().unwrap() / 2;
        (0..n)
            .flat_map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let u = ((x >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.08;
                ((u.to_bits() >> 16) as u16).to_le_bytes()
            })
            .collect()
    }

    /// Writes the folder into `dir` (created).
    pub fn write(&self, dir: &Path) {
        std::fs::create_dir_all(dir).unwrap();
        let mut weight_map = BTreeMap::new();
        let mut total = 0u64;
        for (k, shard) in self.shard_layouts().iter().enumerate() {
            let mut meta = BTreeMap::new();
            meta.insert("format".to_string(), "pt".to_string());
            let (mut file, _) = encode_header(shard, &meta).unwrap();
            for t in shard {
                file.extend_from_slice(&self.values(t));
                total += t.byte_len().unwrap();
                weight_map.insert(t.name.clone(), self.shard_name(k));
            }
            std::fs::write(dir.join(self.shard_name(k)), file).unwrap();
        }
        let index = serde_json::json!({
            "metadata": { "total_size": total },
            "weight_map": weight_map,
        });
        let write = |name: &str, v: serde_json::Value| {
            std::fs::write(
                dir.join(name),
                serde_json::to_string_pretty(&v).unwrap() + "\n",
            )
            .unwrap()
        };
        write("model.safetensors.index.json", index);
        write(
            "config.json",
            serde_json::json!({
                "architectures": ["LlamaForCausalLM"],
                "model_type": "llama",
                "hidden_size": self.hidden,
                "intermediate_size": self.intermediate,
                "num_hidden_layers": self.layers,
                "num_attention_heads": 4,
                "vocab_size": self.vocab,
                "torch_dtype": "bfloat16",
                "zdn_test_note": self.note,
            }),
        );
        write(
            "generation_config.json",
            serde_json::json!({"bos_token_id": 1, "eos_token_id": 2, "temperature": 0.6}),
        );
        let vocab: BTreeMap<String, u64> =
            (0..self.vocab).map(|i| (format!("tok{i}"), i)).collect();
        write(
            "tokenizer.json",
            serde_json::json!({
                "version": "1.0",
                "model": {"type": "BPE", "vocab": vocab, "merges": []},
                "added_tokens": [{"id": 1, "content": "<s>"}, {"id": 2, "content": "</s>"}],
            }),
        );
        let template = "{% for m in messages %}<|{{ m.role }}|>\n{{ m.content }}</s>\n{% endfor %}";
        write(
            "tokenizer_config.json",
            serde_json::json!({"bos_token": "<s>", "eos_token": "</s>", "chat_template": template}),
        );
        write(
            "special_tokens_map.json",
            serde_json::json!({"bos_token": "<s>", "eos_token": "</s>"}),
        );
        std::fs::write(dir.join("chat_template.jinja"), template).unwrap();
    }
}

/// Every regular file under `dir`, as (relative path, bytes), sorted.
pub fn read_tree(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut todo = vec![(dir.to_path_buf(), String::new())];
    while let Some((d, prefix)) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let name = format!("{prefix}{}", e.file_name().to_str().unwrap());
            let t = e.file_type().unwrap();
            if t.is_dir() {
                todo.push((e.path(), format!("{name}/")));
            } else {
                assert!(t.is_file(), "{name} is not a regular file");
                out.push((name, std::fs::read(e.path()).unwrap()));
            }
        }
    }
    out.sort();
    out
}
