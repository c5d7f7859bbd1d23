//! A decoder's tokenizer: `tokenizer.json` (read by the `tokenizers` crate), the special tokens and
//! chat template of `tokenizer_config.json` (or `chat_template.jinja` beside it), and chat encoding as
//! transformers' `apply_chat_template` does it: render, then encode without adding special tokens
//! (the template writes them).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use tokenizers::Tokenizer;

use super::chat::{ChatError, ChatMessage, ChatTemplate};

/// Largest tokenizer.json / tokenizer_config.json read.
const MAX_TOKENIZER_BYTES: u64 = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("{path}: {problem}")]
    File { path: String, problem: String },
    #[error(
        "{0} has no chat template (tokenizer_config.json \"chat_template\" or chat_template.jinja)"
    )]
    NoTemplate(String),
    #[error(transparent)]
    Chat(#[from] ChatError),
    #[error("encoding: {0}")]
    Encode(String),
}

#[derive(Debug)]
pub struct DecoderTokenizer {
    tokenizer: Tokenizer,
    template: Option<ChatTemplate>,
    special: BTreeSet<u32>,
    /// `bos_token`, `eos_token`, … as tokenizer_config.json names them.
    pub special_tokens: BTreeMap<String, String>,
}

fn read_capped(path: &Path) -> Result<String, TokenizerError> {
    let err = |problem: String| TokenizerError::File {
        path: path.display().to_string(),
        problem,
    };
    let len = std::fs::metadata(path)
        .map_err(|e| err(e.to_string()))?
        .len();
    if len > MAX_TOKENIZER_BYTES {
        return Err(err(format!("{len} bytes; at most 64 MiB")));
    }
    std::fs::read_to_string(path).map_err(|e| err(e.to_string()))
}

/// A special token's text in tokenizer_config.json: a string, or `{"content": "…", …}`.
fn token_text(v: &serde_json::Value) -> Option<String> {
    v.as_str()
        .or_else(|| v.get("content").and_then(|c| c.as_str()))
        .map(str::to_owned)
}

impl DecoderTokenizer {
    /// Reads `tokenizer.json`, and `tokenizer_config.json` and `chat_template.jinja` where present,
    /// from a model folder.
    pub fn open(dir: &Path) -> Result<Self, TokenizerError> {
        let path = dir.join("tokenizer.json");
        let text = read_capped(&path)?;
        let tokenizer =
            Tokenizer::from_bytes(text.as_bytes()).map_err(|e| TokenizerError::File {
                path: path.display().to_string(),
                problem: e.to_string(),
            })?;
        let special = tokenizer
            .get_added_tokens_decoder()
            .into_iter()
            .filter(|(_, t)| t.special)
            .map(|(id, _)| id)
            .collect();
        let mut special_tokens = BTreeMap::new();
        let mut template = None;
        let cfg_path = dir.join("tokenizer_config.json");
        if cfg_path.is_file() {
            let cfg: serde_json::Value =
                serde_json::from_str(&read_capped(&cfg_path)?).map_err(|e| {
                    TokenizerError::File {
                        path: cfg_path.display().to_string(),
                        problem: e.to_string(),
                    }
                })?;
            for key in ["bos_token", "eos_token", "unk_token", "pad_token"] {
                if let Some(t) = cfg.get(key).and_then(token_text) {
                    special_tokens.insert(key.to_owned(), t);
                }
            }
            template = match cfg.get("chat_template") {
                Some(serde_json::Value::String(s)) => Some(s.clone()),
                // A list of named templates: the one named "default".
                Some(serde_json::Value::Array(list)) => list
                    .iter()
                    .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                    .and_then(|t| t.get("template"))
                    .and_then(|t| t.as_str())
                    .map(str::to_owned),
                _ => None,
            };
        }
        let jinja = dir.join("chat_template.jinja");
        if template.is_none() && jinja.is_file() {
            template = Some(read_capped(&jinja)?);
        }
        let template = template
            .map(|s| ChatTemplate::new(s, special_tokens.clone()))
            .transpose()?;
        Ok(DecoderTokenizer {
            tokenizer,
            template,
            special,
            special_tokens,
        })
    }

    /// Token ids of `text`; with `add_special_tokens` the tokenizer's post-processor adds its
    /// tokens (a BOS for Llama tokenizers).
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>, TokenizerError> {
        self.tokenizer
            .encode(text, add_special_tokens)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| TokenizerError::Encode(e.to_string()))
    }

    /// The conversation as the chat template renders it.
    pub fn render_chat(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, TokenizerError> {
        let t = self
            .template
            .as_ref()
            .ok_or_else(|| TokenizerError::NoTemplate("the tokenizer".into()))?;
        Ok(t.render(messages, add_generation_prompt)?)
    }

    /// Token ids of a conversation: rendered by the chat template, encoded without added special
    /// tokens (as transformers' `apply_chat_template(tokenize=True)`).
    pub fn encode_chat(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<Vec<u32>, TokenizerError> {
        self.encode(&self.render_chat(messages, add_generation_prompt)?, false)
    }

    pub fn has_chat_template(&self) -> bool {
        self.template.is_some()
    }

    /// Ids of the added tokens marked special (BOS, EOS, chat role markers, …).
    pub fn special_ids(&self) -> &BTreeSet<u32> {
        &self.special
    }

    /// The id of a token text (added tokens included).
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.tokenizer.token_to_id(text)
    }

    /// The text of a token id (added tokens included).
    pub fn token_text(&self, id: u32) -> Option<String> {
        self.tokenizer.id_to_token(id)
    }

    /// Vocabulary size with added tokens.
    pub fn vocab_size(&self) -> usize {
        self.tokenizer.get_vocab_size(true)
    }
}
