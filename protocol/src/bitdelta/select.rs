//! Which tensors are quantized and which are kept exactly: the selection rules of `zdn delta encode`.
//!
//! Defaults: 2-D floating-point matrices are quantized (the linear layers); embedding matrices follow
//! the embedding policy; everything else (norms, biases, integer tensors, other ranks) is stored
//! losslessly, or marked unchanged when bit-identical. `--exclude` beats `--include`, and both beat
//! the defaults.

use crate::dtype::DType;
use crate::glob::Glob;

/// How embedding matrices (2-D tensors whose name contains "embed") are stored. docs/quality.md has
/// the measurements behind the default.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EmbeddingPolicy {
    /// Lossless (byte-plane XOR + zstd).
    Exact,
    /// Quantized like the linear layers.
    Quantize,
    /// The base's embeddings are kept: nothing is sent, the fine-tune's change is dropped.
    #[default]
    Base,
}

impl EmbeddingPolicy {
    pub const fn code(self) -> u8 {
        match self {
            EmbeddingPolicy::Exact => 0,
            EmbeddingPolicy::Quantize => 1,
            EmbeddingPolicy::Base => 2,
        }
    }

    pub fn from_code(c: u8) -> Option<Self> {
        [
            EmbeddingPolicy::Exact,
            EmbeddingPolicy::Quantize,
            EmbeddingPolicy::Base,
        ]
        .into_iter()
        .find(|p| p.code() == c)
    }

    pub const fn name(self) -> &'static str {
        match self {
            EmbeddingPolicy::Exact => "exact",
            EmbeddingPolicy::Quantize => "quantize",
            EmbeddingPolicy::Base => "base",
        }
    }
}

impl std::str::FromStr for EmbeddingPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "exact" => Ok(EmbeddingPolicy::Exact),
            "quantize" => Ok(EmbeddingPolicy::Quantize),
            "base" => Ok(EmbeddingPolicy::Base),
            _ => Err(format!(
                "embedding policy must be exact, quantize or base, got {s:?}"
            )),
        }
    }
}

/// What to do with one tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Choice {
    Quantize,
    /// Lossless: unchanged, XOR with the base, or raw.
    Exact,
    /// The base tensor stands in for the fine-tune's (unchanged when they are identical).
    KeepBase,
}

/// The rules, as configured on the command line.
#[derive(Clone, Debug, Default)]
pub struct Selection {
    pub include: Vec<Glob>,
    pub exclude: Vec<Glob>,
    pub embeddings: EmbeddingPolicy,
}

/// Whether a tensor is an embedding matrix by zdn's rule.
pub fn is_embedding(name: &str, shape: &[u64]) -> bool {
    shape.len() == 2 && name.to_ascii_lowercase().contains("embed")
}

impl Selection {
    /// Decides for a target tensor, given the base tensor of the same name if there is one.
    pub fn choose(
        &self,
        name: &str,
        target: (DType, &[u64]),
        base: Option<(DType, &[u64])>,
    ) -> Choice {
        let quantizable = target.0.is_quantizable()
            && matches!(base, Some((bd, bs)) if bd.is_quantizable() && bs == target.1);
        let same_layout = matches!(base, Some((bd, bs)) if bd == target.0 && bs == target.1);
        // Nothing to quantize in an empty tensor; it is recorded as unchanged or raw.
        if self.exclude.iter().any(|g| g.matches(name)) || target.1.contains(&0) {
            return Choice::Exact;
        }
        if self.include.iter().any(|g| g.matches(name)) {
            return if quantizable {
                Choice::Quantize
            } else {
                Choice::Exact
            };
        }
        if is_embedding(name, target.1) {
            return match self.embeddings {
                EmbeddingPolicy::Quantize if quantizable => Choice::Quantize,
                EmbeddingPolicy::Base if same_layout => Choice::KeepBase,
                _ => Choice::Exact,
            };
        }
        if quantizable && target.1.len() == 2 {
            Choice::Quantize
        } else {
            Choice::Exact
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_overrides() {
        let s = Selection::default();
        let m: &[u64] = &[4, 8];
        let v: &[u64] = &[8];
        assert_eq!(
            s.choose("l.weight", (DType::F32, m), Some((DType::F32, m))),
            Choice::Quantize
        );
        assert_eq!(
            s.choose("l.bias", (DType::F32, v), Some((DType::F32, v))),
            Choice::Exact
        );
        assert_eq!(s.choose("l.weight", (DType::F32, m), None), Choice::Exact);
        assert_eq!(
            s.choose("l.weight", (DType::I64, m), Some((DType::I64, m))),
            Choice::Exact
        );
        assert_eq!(
            s.choose(
                "word_embeddings.weight",
                (DType::F32, m),
                Some((DType::F32, m))
            ),
            Choice::KeepBase
        );
        assert_eq!(
            s.choose(
                "word_embeddings.weight",
                (DType::F16, m),
                Some((DType::F32, m))
            ),
            Choice::Exact
        );
        let s = Selection {
            include: vec![Glob::new("*.bias")],
            exclude: vec![Glob::new("l.*")],
            embeddings: EmbeddingPolicy::Quantize,
        };
        assert_eq!(
            s.choose("l.weight", (DType::F32, m), Some((DType::F32, m))),
            Choice::Exact
        );
        assert_eq!(
            s.choose("k.bias", (DType::F32, v), Some((DType::F32, v))),
            Choice::Quantize
        );
        assert_eq!(
            s.choose("x_embed", (DType::BF16, m), Some((DType::F32, m))),
            Choice::Quantize
        );
    }
}
