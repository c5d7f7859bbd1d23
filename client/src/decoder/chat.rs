//! Chat conversations and their rendering by a model's chat template (the Jinja template of
//! `tokenizer_config.json`), with the options transformers' `apply_chat_template` uses: blocks trimmed
//! (`trim_blocks`, `lstrip_blocks`), `raise_exception`, Python string methods, and the tokenizer's
//! special tokens (`bos_token`, `eos_token`, …) in the context.
//!
//! Conversation files are JSON lines: `{"messages": [{"role": "user", "content": "…"}, …]}`.

use std::collections::BTreeMap;
use std::path::Path;

use minijinja::{Environment, ErrorKind};

/// Largest conversation file read.
pub const MAX_CONVERSATION_FILE_BYTES: u64 = 64 << 20;
/// Largest chat template accepted.
const MAX_TEMPLATE_BYTES: usize = 1 << 20;
/// Template instructions allowed per rendering (a hostile template must not loop forever).
const TEMPLATE_FUEL: u64 = 10_000_000;

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
struct ConversationLine {
    messages: Vec<ChatMessage>,
}

#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    #[error("{path}: {cause}")]
    Io { path: String, cause: std::io::Error },
    #[error("{path} is {len} bytes; conversation files are limited to {MAX_CONVERSATION_FILE_BYTES} bytes")]
    TooLarge { path: String, len: u64 },
    #[error("{path} line {line}: {problem}")]
    Line {
        path: String,
        line: usize,
        problem: String,
    },
    #[error("{path} has no conversation")]
    Empty { path: String },
    #[error("the chat template is {0} bytes (at most 1 MiB)")]
    TemplateTooLarge(usize),
    #[error("chat template: {0}")]
    Template(String),
}

/// The conversations of a JSON-lines file, in order (blank lines are skipped).
pub fn read_conversations(path: &Path) -> Result<Vec<Vec<ChatMessage>>, ChatError> {
    let p = || path.display().to_string();
    let len = std::fs::metadata(path)
        .map_err(|cause| ChatError::Io { path: p(), cause })?
        .len();
    if len > MAX_CONVERSATION_FILE_BYTES {
        return Err(ChatError::TooLarge { path: p(), len });
    }
    let text = std::fs::read_to_string(path).map_err(|cause| ChatError::Io { path: p(), cause })?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |problem: String| ChatError::Line {
            path: p(),
            line: i + 1,
            problem,
        };
        let c: ConversationLine = serde_json::from_str(line).map_err(|e| bad(e.to_string()))?;
        if c.messages.is_empty() {
            return Err(bad("no messages".into()));
        }
        out.push(c.messages);
    }
    if out.is_empty() {
        return Err(ChatError::Empty { path: p() });
    }
    Ok(out)
}

/// A chat template with the special tokens its context names.
#[derive(Debug, Clone)]
pub struct ChatTemplate {
    source: String,
    /// `bos_token`, `eos_token`, … → their text.
    tokens: BTreeMap<String, String>,
}

impl ChatTemplate {
    pub fn new(source: String, tokens: BTreeMap<String, String>) -> Result<Self, ChatError> {
        if source.len() > MAX_TEMPLATE_BYTES {
            return Err(ChatError::TemplateTooLarge(source.len()));
        }
        let t = ChatTemplate { source, tokens };
        // Compile once now, so a broken template is reported when the model is opened.
        Self::environment()?
            .template_from_str(&t.source)
            .map_err(|e| ChatError::Template(e.to_string()))?;
        Ok(t)
    }

    fn environment<'a>() -> Result<Environment<'a>, ChatError> {
        let mut env = Environment::new();
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| ChatError::Template(e.to_string()))?;
        env.set_syntax(syntax);
        env.set_fuel(Some(TEMPLATE_FUEL));
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> Result<String, minijinja::Error> {
                Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
            },
        );
        Ok(env)
    }

    /// The text of `messages`, with the prompt for the assistant's turn appended when
    /// `add_generation_prompt`.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, ChatError> {
        let env = Self::environment()?;
        let tmpl = env
            .template_from_str(&self.source)
            .map_err(|e| ChatError::Template(e.to_string()))?;
        let mut ctx: BTreeMap<String, minijinja::Value> = self
            .tokens
            .iter()
            .map(|(k, v)| (k.clone(), minijinja::Value::from(v.as_str())))
            .collect();
        ctx.insert(
            "messages".into(),
            minijinja::Value::from(minijinja::value::Serde(messages)),
        );
        ctx.insert(
            "add_generation_prompt".into(),
            minijinja::Value::from(add_generation_prompt),
        );
        tmpl.render(ctx)
            .map_err(|e| ChatError::Template(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(role: &str, content: &str) -> ChatMessage {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }

    fn tokens() -> BTreeMap<String, String> {
        [("bos_token", "<s>"), ("eos_token", "</s>")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    /// The template of scripts/make_decoder_pair.py renders as transformers renders it.
    #[test]
    fn renders_like_transformers() {
        let src = "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}{{ '<|user|>\n' + message['content'] + '\n' }}{% elif message['role'] == 'assistant' %}{{ '<|assistant|>\n' + message['content'] + eos_token + '\n' }}{% else %}{{ raise_exception('only user and assistant messages are supported') }}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}";
        let t = ChatTemplate::new(src.into(), tokens()).unwrap();
        let m = [msg("user", "Hi?"), msg("assistant", "Hello.")];
        assert_eq!(
            t.render(&m, false).unwrap(),
            "<s><|user|>\nHi?\n<|assistant|>\nHello.</s>\n"
        );
        assert!(t
            .render(&m[..1], true)
            .unwrap()
            .ends_with("Hi?\n<|assistant|>\n"));
        let e = t.render(&[msg("system", "x")], false).unwrap_err();
        assert!(e.to_string().contains("only user and assistant"), "{e}");
    }

    /// Block tags take their line with them (trim_blocks, lstrip_blocks), and Python's string
    /// methods work, as in transformers.
    #[test]
    fn blocks_are_trimmed_and_python_methods_work() {
        let src = "{% for m in messages %}\n  {% if m.role == 'user' %}\nU: {{ m.content.strip() }}\n  {% endif %}\n{% endfor %}";
        let t = ChatTemplate::new(src.into(), tokens()).unwrap();
        assert_eq!(
            t.render(&[msg("user", "  hi  ")], false).unwrap(),
            "U: hi\n"
        );
    }

    #[test]
    fn broken_and_endless_templates_are_errors() {
        let e = ChatTemplate::new("{% for %}".into(), tokens()).unwrap_err();
        assert!(e.to_string().contains("chat template"), "{e}");
        let t = ChatTemplate::new(
            "{% for a in range(100000) %}{% for b in range(100000) %}x{% endfor %}{% endfor %}"
                .into(),
            tokens(),
        )
        .unwrap();
        let e = t.render(&[], false).unwrap_err().to_string();
        assert!(e.contains("fuel"), "{e}");
        let e = ChatTemplate::new("x".repeat(2 << 20), tokens()).unwrap_err();
        assert!(e.to_string().contains("at most 1 MiB"), "{e}");
    }

    #[test]
    fn conversation_files_are_checked() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("c.jsonl");
        std::fs::write(
            &p,
            "{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}]}\n\n{\"messages\": [{\"role\": \"user\", \"content\": \"b\"}, {\"role\": \"assistant\", \"content\": \"c\"}]}\n",
        )
        .unwrap();
        let c = read_conversations(&p).unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!(c[1][1], msg("assistant", "c"));
        for (body, want) in [
            ("{\"messages\": []}\n", "line 1: no messages"),
            ("{\"messages\": [{\"role\": \"user\"}]}\n", "line 1"),
            ("\n\nnot json\n", "line 3"),
            ("\n", "no conversation"),
        ] {
            std::fs::write(&p, body).unwrap();
            let e = read_conversations(&p).unwrap_err().to_string();
            assert!(e.contains(want), "{body:?}: {e}");
        }
    }
}
