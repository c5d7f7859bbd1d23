//! Selection by architecture for a folder encode (docs/spec/folder-delta.md "Selection by
//! architecture"): the fine-tune's `config.json` and tokenizer files decide the defaults the user
//! did not set — one scale per row for a known decoder family, and vocabulary matrices quantized
//! row by row with their special tokens' and most-changed rows kept exactly.

use zdn_protocol::bitdelta::{Granularity, TensorData};
use zdn_protocol::folder::architecture::{
    exact_rows, row_change_norms, special_token_ids, Architecture, TensorClass,
};

use super::base::{BaseError, BaseModel};
use crate::fs::mapped_file::MappedFile;

/// What the user left to the architecture, and what it decided.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Defaults {
    pub architecture: Architecture,
    /// Which defaults applied, in words (the report says it).
    pub applied: String,
    /// Vocabulary matrices quantized per row with exact rows.
    #[serde(skip)]
    pub vocab_rows: bool,
    /// The scale granularity of quantized tensors.
    #[serde(skip)]
    pub granularity: Granularity,
    /// Special-token ids the tokenizer declares.
    #[serde(skip)]
    pub special: Vec<u64>,
}

/// What the user chose on the command line (`None`: left to the architecture).
#[derive(Debug, Clone, Copy)]
pub struct Choices {
    pub by_architecture: bool,
    pub granularity: Option<Granularity>,
    pub embeddings_given: bool,
}

/// The defaults for a fine-tune folder's files (relative path, map).
pub fn resolve(choices: Choices, files: &[(String, MappedFile)]) -> Defaults {
    let file = |name: &str| {
        files
            .iter()
            .find(|(p, _)| p == name)
            .map(|(_, m)| m.bytes())
    };
    let architecture = Architecture::from_config(file("config.json"));
    let decoder = choices.by_architecture && architecture.known;
    let vocab_rows = decoder && !choices.embeddings_given;
    let granularity = choices.granularity.unwrap_or(if decoder {
        Granularity::Row
    } else {
        Granularity::Tensor
    });
    let model = architecture.model_type.as_deref().unwrap_or("none");
    let applied = if decoder {
        format!(
            "decoder defaults for model_type {model:?}: projections 1 scale per row unless --scale; {}",
            if vocab_rows {
                "vocabulary matrices per row with special-token and most-changed rows exact"
            } else {
                "vocabulary matrices as --embeddings says"
            }
        )
    } else if choices.by_architecture {
        format!("generic defaults: architecture unknown (model_type {model:?})")
    } else {
        "generic defaults (--architecture generic)".into()
    };
    Defaults {
        special: if vocab_rows {
            special_token_ids(file("tokenizer.json"), file("tokenizer_config.json"))
        } else {
            Vec::new()
        },
        architecture,
        applied,
        vocab_rows,
        granularity,
    }
}

impl Defaults {
    /// The class of a fine-tune tensor.
    pub fn class(&self, name: &str, shape: &[u64]) -> TensorClass {
        self.architecture.classify(name, shape)
    }

    /// Whether a tensor of `class` gets the vocabulary treatment.
    pub fn by_rows(&self, class: TensorClass) -> bool {
        self.vocab_rows && class == TensorClass::Vocabulary
    }

    /// The rows of a vocabulary tensor kept exactly: its first `rows` rows (those paired with the
    /// base) compared with the base's. Empty when the tensor has no float base to compare with.
    pub fn exact_rows_of(
        &self,
        name: &str,
        fine: &TensorData<'_>,
        rows: u64,
        base: &dyn BaseModel,
    ) -> Result<Vec<u64>, BaseError> {
        let mut buf = Vec::new();
        let Some(b) = base.tensor(name, &mut buf)? else {
            return Ok(Vec::new());
        };
        let norms = row_change_norms(fine, &b, rows);
        base.release(name);
        Ok(norms.map_or_else(Vec::new, |n| exact_rows(&n, &self.special)))
    }
}
