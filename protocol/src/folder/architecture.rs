//! Selection by architecture (docs/spec/folder-delta.md "Selection by architecture"): what a
//! folder delta does with each tensor of a decoder LLM, read from the fine-tune's `config.json`
//! and tokenizer files. Sans-IO: bytes in, decisions out.
//!
//! For a known decoder family the **vocabulary matrices** (`embed_tokens`, `lm_head`: rank 2 with
//! `vocab_size` rows) are quantized row by row, with the rows a chat fine-tune trains much more
//! than the rest — its special tokens, and rows whose change is far above the typical row's — kept
//! exactly; **projections** (every other matrix) are quantized with one scale per row; vectors
//! (norms, biases) are kept exactly. An unknown architecture gets the generic rules and the report
//! says so.

use std::collections::BTreeSet;

/// Decoder families whose tensors follow the Hugging Face Llama naming (`model.embed_tokens`,
/// `*_proj`, `*norm`, `lm_head`) and get the decoder defaults.
pub const DECODER_FAMILIES: [&str; 11] = [
    "llama",
    "mistral",
    "mixtral",
    "qwen2",
    "qwen3",
    "gemma",
    "gemma2",
    "gemma3_text",
    "phi",
    "phi3",
    "olmo",
];

/// Largest `config.json` read.
pub const MAX_CONFIG_LEN: usize = 1 << 20;
/// Largest tokenizer file read for its special tokens.
pub const MAX_TOKENIZER_LEN: usize = 64 << 20;
/// A vocabulary row is kept exactly when its change is at least this many times the median row's.
pub const OUTLIER_FACTOR: f64 = 4.0;
/// At most this share of a vocabulary matrix's rows is kept exactly (1/32), special tokens first,
/// then by size of change.
pub const MAX_EXACT_SHARE: u64 = 32;

/// What the fine-tune's `config.json` says.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Architecture {
    pub model_type: Option<String>,
    /// A family in [`DECODER_FAMILIES`]: the decoder defaults apply.
    pub known: bool,
    pub tie_word_embeddings: bool,
    pub vocab_size: Option<u64>,
}

impl Architecture {
    /// Reads `config.json` (absent, too large or not JSON: an unknown architecture).
    pub fn from_config(config: Option<&[u8]>) -> Self {
        let v: Option<serde_json::Value> = config
            .filter(|c| c.len() <= MAX_CONFIG_LEN)
            .and_then(|c| serde_json::from_slice(c).ok());
        let field = |k: &str| v.as_ref().and_then(|v| v.get(k));
        let model_type = field("model_type")
            .and_then(|m| m.as_str())
            .map(|s| s.chars().take(64).collect::<String>());
        Architecture {
            known: model_type
                .as_deref()
                .is_some_and(|m| DECODER_FAMILIES.contains(&m)),
            tie_word_embeddings: field("tie_word_embeddings")
                .and_then(|t| t.as_bool())
                .unwrap_or(false),
            vocab_size: field("vocab_size").and_then(|t| t.as_u64()),
            model_type,
        }
    }

    /// How a fine-tune tensor is treated under these defaults.
    pub fn classify(&self, name: &str, shape: &[u64]) -> TensorClass {
        match shape {
            [rows, _] if self.is_vocabulary(name, *rows) => TensorClass::Vocabulary,
            [_, _] => TensorClass::Projection,
            _ => TensorClass::Vector,
        }
    }

    /// By name (`embed_tokens`, `lm_head` and their older spellings), or a matrix of `vocab_size`
    /// rows named like an embedding or a head (a projection that happens to have as many rows is
    /// not one).
    fn is_vocabulary(&self, name: &str, rows: u64) -> bool {
        const NAMES: [&str; 6] = [
            "embed_tokens.weight",
            "lm_head.weight",
            "wte.weight",
            "embed_in.weight",
            "embed_out.weight",
            "word_embeddings.weight",
        ];
        let lower = name.to_ascii_lowercase();
        NAMES.iter().any(|n| lower.ends_with(n))
            || (self.vocab_size == Some(rows)
                && (lower.contains("embed") || lower.contains("head")))
    }
}

/// The classes of tensors the defaults treat differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TensorClass {
    /// `embed_tokens`, `lm_head`: rows per token.
    Vocabulary,
    /// Every other matrix (attention and MLP projections).
    Projection,
    /// Vectors and everything not 2-D (norms, biases).
    Vector,
}

/// The ids of the special tokens a tokenizer declares: `added_tokens` entries of `tokenizer.json`
/// and `added_tokens_decoder` entries of `tokenizer_config.json` marked `"special": true`. Files
/// absent, too large or malformed add nothing.
pub fn special_token_ids(tokenizer: Option<&[u8]>, tokenizer_config: Option<&[u8]>) -> Vec<u64> {
    let parse = |b: Option<&[u8]>| -> Option<serde_json::Value> {
        b.filter(|b| b.len() <= MAX_TOKENIZER_LEN)
            .and_then(|b| serde_json::from_slice(b).ok())
    };
    let special = |t: &serde_json::Value| t.get("special").and_then(|s| s.as_bool()) == Some(true);
    let mut ids = BTreeSet::new();
    if let Some(list) = parse(tokenizer)
        .as_ref()
        .and_then(|v| v.get("added_tokens"))
        .and_then(|a| a.as_array())
    {
        ids.extend(
            list.iter()
                .filter(|t| special(t))
                .filter_map(|t| t.get("id").and_then(|i| i.as_u64())),
        );
    }
    if let Some(map) = parse(tokenizer_config)
        .as_ref()
        .and_then(|v| v.get("added_tokens_decoder"))
        .and_then(|a| a.as_object())
    {
        ids.extend(
            map.iter()
                .filter(|(_, t)| special(t))
                .filter_map(|(id, _)| id.parse::<u64>().ok()),
        );
    }
    ids.into_iter().collect()
}

/// The rows of a vocabulary matrix kept exactly: the special tokens' rows (those below `rows`),
/// then rows whose change (`norms[i]`, any non-negative size such as an L2 norm) is at least
/// [`OUTLIER_FACTOR`] × the median row's and non-zero, largest first; at most `rows /`
/// [`MAX_EXACT_SHARE`] in all (at least the special tokens', up to that share). Sorted.
pub fn exact_rows(norms: &[f64], special: &[u64]) -> Vec<u64> {
    let rows = norms.len() as u64;
    let cap = (rows / MAX_EXACT_SHARE).max(1) as usize;
    let mut chosen: BTreeSet<u64> = special
        .iter()
        .copied()
        .filter(|&i| i < rows)
        .take(cap)
        .collect();
    let mut sorted: Vec<f64> = norms.iter().copied().filter(|n| n.is_finite()).collect();
    sorted.sort_unstable_by(f64::total_cmp);
    let median = sorted.get(sorted.len() / 2).copied().unwrap_or(0.0);
    let mut outliers: Vec<(f64, u64)> = norms
        .iter()
        .enumerate()
        .filter(|(_, &n)| n.is_finite() && n > 0.0 && n >= OUTLIER_FACTOR * median)
        .map(|(i, &n)| (n, i as u64))
        .collect();
    outliers.sort_unstable_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    for (_, i) in outliers {
        if chosen.len() >= cap {
            break;
        }
        chosen.insert(i);
    }
    chosen.into_iter().collect()
}

/// The size of each row's change, ‖fine_i − base_i‖₂, over the first `rows` rows of two float
/// tensors with the same trailing dimensions (any of F32/F16/BF16); `None` when they are not that.
pub fn row_change_norms(
    fine: &crate::bitdelta::TensorData<'_>,
    base: &crate::bitdelta::TensorData<'_>,
    rows: u64,
) -> Option<Vec<f64>> {
    use crate::dtype::read_f32;
    let (_, frest) = fine.shape.split_first()?;
    let (_, brest) = base.shape.split_first()?;
    if frest != brest || rows > fine.shape[0] || rows > base.shape[0] {
        return None;
    }
    let width = usize::try_from(frest.iter().product::<u64>()).ok()?;
    let rows = usize::try_from(rows).ok()?;
    let mut out = Vec::with_capacity(rows);
    for r in 0..rows {
        let mut sum = 0.0f64;
        for c in 0..width {
            let i = r.checked_mul(width)?.checked_add(c)?;
            let d = f64::from(read_f32(fine.dtype, fine.bytes, i)?)
                - f64::from(read_f32(base.dtype, base.bytes, i)?);
            sum += d * d;
        }
        out.push(sum.sqrt());
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn configs_are_read_and_tensors_classified() {
        let a = Architecture::from_config(Some(
            br#"{"model_type": "llama", "vocab_size": 32002, "tie_word_embeddings": false}"#,
        ));
        assert!(a.known && !a.tie_word_embeddings);
        assert_eq!(a.vocab_size, Some(32002));
        use TensorClass::*;
        assert_eq!(
            a.classify("model.embed_tokens.weight", &[32002, 64]),
            Vocabulary
        );
        assert_eq!(a.classify("lm_head.weight", &[32002, 64]), Vocabulary);
        assert_eq!(
            a.classify("transformer.wte.weight", &[32002, 64]),
            Vocabulary
        );
        assert_eq!(
            a.classify("model.layers.0.mlp.up_proj.weight", &[172, 64]),
            Projection
        );
        assert_eq!(a.classify("model.norm.weight", &[64]), Vector);
        // As many rows as the vocabulary, but a projection by name.
        assert_eq!(
            a.classify("model.layers.0.self_attn.q_proj.weight", &[32002, 64]),
            Projection
        );
        assert_eq!(a.classify("output_head.weight", &[32002, 64]), Vocabulary);
        let u = Architecture::from_config(Some(br#"{"model_type": "bert"}"#));
        assert!(!u.known);
        assert!(!Architecture::from_config(None).known);
        assert!(!Architecture::from_config(Some(b"not json")).known);
        let big = vec![b' '; MAX_CONFIG_LEN + 1];
        assert!(!Architecture::from_config(Some(&big)).known);
    }

    #[test]
    fn special_tokens_come_from_both_tokenizer_files() {
        let tok = br#"{"added_tokens": [{"id": 0, "content": "<unk>", "special": true},
            {"id": 7, "content": "word", "special": false}, {"id": 32001, "special": true}]}"#;
        let cfg = br#"{"added_tokens_decoder": {"2": {"content": "</s>", "special": true},
            "9": {"content": "x", "special": false}}}"#;
        assert_eq!(special_token_ids(Some(tok), Some(cfg)), [0, 2, 32001]);
        assert!(special_token_ids(Some(b"{"), None).is_empty());
    }

    #[test]
    fn exact_rows_are_special_tokens_then_outliers_within_the_cap() {
        let mut norms = vec![1.0; 64];
        norms[10] = 9.0;
        norms[20] = 5.0;
        norms[30] = 3.9;
        // Cap 64/32 = 2: the special token, then the largest outlier.
        assert_eq!(exact_rows(&norms, &[3, 100]), [3, 10]);
        let norms = vec![1.0; 640];
        let mut n = norms.clone();
        n[10] = 9.0;
        n[20] = 5.0;
        n[30] = 3.9;
        assert_eq!(exact_rows(&n, &[]), [10, 20]);
        // Unchanged rows: nothing but the special tokens.
        assert_eq!(exact_rows(&vec![0.0; 640], &[1]), [1]);
    }

    #[test]
    fn row_changes_are_measured_over_the_common_rows() {
        use crate::bitdelta::TensorData;
        use crate::DType;
        let f: Vec<u8> = [1.0f32, 1.0, 0.0, 0.0, 3.0, 4.0]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        let b: Vec<u8> = [0.0f32, 1.0, 0.0, 0.0]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        let (fs, bs) = ([3u64, 2], [2u64, 2]);
        let fine = TensorData::new(DType::F32, &fs, &f).unwrap();
        let base = TensorData::new(DType::F32, &bs, &b).unwrap();
        assert_eq!(row_change_norms(&fine, &base, 2).unwrap(), [1.0, 0.0]);
        assert!(row_change_norms(&fine, &base, 3).is_none());
    }

    proptest! {
        #[test]
        fn exact_rows_are_sorted_unique_in_range_and_capped(
            norms in proptest::collection::vec(0.0f64..100.0, 0..300),
            special in proptest::collection::vec(0u64..400, 0..20),
        ) {
            let r = exact_rows(&norms, &special);
            prop_assert!(r.windows(2).all(|w| w[0] < w[1]));
            prop_assert!(r.iter().all(|&i| i < norms.len() as u64));
            prop_assert!(r.len() <= ((norms.len() as u64 / MAX_EXACT_SHARE).max(1)) as usize);
        }

        #[test]
        fn readers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = Architecture::from_config(Some(&bytes));
            let _ = special_token_ids(Some(&bytes), Some(&bytes));
        }
    }
}
