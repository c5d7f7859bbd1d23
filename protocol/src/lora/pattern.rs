//! Module-name patterns of a PEFT `adapter_config.json` (`target_modules`, `exclude_modules`,
//! `rank_pattern`, `alpha_pattern`), read as PEFT reads them: Python regular expressions.
//!
//! A pattern of ASCII letters, digits, `_` and `.` (the common case: a module name, where `.`
//! matches any one character but a newline, as in Python) is matched without a regex engine. Any
//! other pattern is compiled by the `regex` crate (linear time in the name, whatever the pattern;
//! its compiled size capped), after refusing what that crate would read differently from Python's
//! `re`: POSIX classes, nested classes and class set operations (`[[:alpha:]]`, `[a[b]]`, `&&`,
//! `--`, `~~` inside a class). What neither reads the same way is refused with [`PatternError`],
//! never reinterpreted: Python-only syntax (lookaround, backreferences, `\Z`) fails to compile.
//! A module name containing a newline matches no pattern (Python's `$` also matches before a final
//! newline; module names have none).

use regex::{Regex, RegexBuilder};

use super::config::MAX_NAME_LEN;

/// Largest compiled program of one pattern, in bytes (the `regex` crate's size limit).
pub const MAX_COMPILED_BYTES: usize = 256 << 10;

/// Why a module pattern is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("pattern is empty")]
    Empty,
    #[error("pattern is {0} bytes; the limit is {MAX_NAME_LEN}")]
    TooLong(usize),
    #[error(
        "pattern {pattern:?}: {problem}; zdn reads Python's regular expressions where the Rust \
         `regex` crate reads them the same way (write the module names out as a list instead)"
    )]
    Unsupported { pattern: String, problem: String },
}

/// A PEFT module-name pattern: a module name (letters, digits, `_`, `.` as any character) or a
/// regular expression.
#[derive(Debug, Clone)]
pub struct ModulePattern {
    source: String,
    /// `None` for a module name; for a regular expression, its full-match and suffix-match forms.
    compiled: Option<Box<(Regex, Regex)>>,
}

impl PartialEq for ModulePattern {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Eq for ModulePattern {}

/// Whether `pattern` is a plain module name (matched without a regex engine).
fn is_plain(pattern: &str) -> bool {
    pattern
        .bytes()
        .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'.')
}

/// The first construct inside a character class that the `regex` crate reads differently from
/// Python (a nested `[`, which also starts a POSIX class, or a set operation `&&`, `--`, `~~`).
fn class_difference(pattern: &str) -> Option<&'static str> {
    let b = pattern.as_bytes();
    let mut i = 0;
    let mut in_class = false;
    // Index of the first byte after the class's `[` (and its `^`): a `]` there is literal.
    let mut class_start = 0;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 1,
            b'[' if !in_class => {
                in_class = true;
                class_start = i + 1 + usize::from(b.get(i + 1) == Some(&b'^'));
                i = class_start;
                if b.get(i) == Some(&b']') {
                    i += 1;
                }
                continue;
            }
            b'[' => return Some("a '[' inside a character class (a nested or POSIX class)"),
            b']' if i > class_start => in_class = false,
            c @ (b'&' | b'-' | b'~') if in_class && b.get(i + 1) == Some(&c) => {
                return Some("a class set operation ('&&', '--' or '~~')")
            }
            _ => {}
        }
        i += 1;
    }
    None
}

fn compile(pattern: &str, wrapped: String) -> Result<Regex, PatternError> {
    RegexBuilder::new(&wrapped)
        .size_limit(MAX_COMPILED_BYTES)
        .dfa_size_limit(MAX_COMPILED_BYTES)
        .build()
        .map_err(|e| PatternError::Unsupported {
            pattern: pattern.to_owned(),
            problem: match e {
                regex::Error::CompiledTooBig(_) => {
                    format!("compiles to more than {MAX_COMPILED_BYTES} bytes")
                }
                e => format!("not a regular expression zdn reads: {e}"),
            },
        })
}

impl ModulePattern {
    pub fn new(pattern: &str) -> Result<Self, PatternError> {
        if pattern.is_empty() {
            return Err(PatternError::Empty);
        }
        if pattern.len() > MAX_NAME_LEN {
            return Err(PatternError::TooLong(pattern.len()));
        }
        if is_plain(pattern) {
            return Ok(ModulePattern {
                source: pattern.to_owned(),
                compiled: None,
            });
        }
        if let Some(problem) = class_difference(pattern) {
            return Err(PatternError::Unsupported {
                pattern: pattern.to_owned(),
                problem: problem.to_owned(),
            });
        }
        // Compiled alone first: only a pattern that parses by itself (its groups balanced) is
        // wrapped, so the wrapping cannot change what it means.
        compile(pattern, pattern.to_owned())?;
        let full = compile(pattern, format!(r"\A(?:{pattern})\z"))?;
        let suffix = compile(pattern, format!(r"\A(?:.*\.)?(?:{pattern})\z"))?;
        Ok(ModulePattern {
            source: pattern.to_owned(),
            compiled: Some(Box::new((full, suffix))),
        })
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether the pattern needs the regex engine (it is not a plain module name).
    pub fn is_regex(&self) -> bool {
        self.compiled.is_some()
    }

    /// Python's `re.fullmatch(pattern, name)`.
    pub fn full_match(&self, name: &str) -> bool {
        if name.contains('\n') {
            return false;
        }
        match &self.compiled {
            Some(c) => c.0.is_match(name),
            None => plain_full_match(&self.source, name),
        }
    }

    /// PEFT's `get_pattern_key` test, `re.match(rf"(.*\.)?({pattern})$", name)`: the pattern matches
    /// the whole name or a suffix of it that follows a `.`.
    pub fn suffix_match(&self, name: &str) -> bool {
        if name.contains('\n') {
            return false;
        }
        let Some(c) = &self.compiled else {
            return plain_suffix_match(&self.source, name);
        };
        c.1.is_match(name)
    }
}

/// A plain pattern's full match: the whole name, one character per pattern byte.
fn plain_full_match(pattern: &str, name: &str) -> bool {
    let mut chars = name.chars();
    for p in pattern.bytes() {
        match chars.next() {
            Some(c) if p == b'.' && c != '\n' => {}
            Some(c) if c.is_ascii() && c as u8 == p => {}
            _ => return false,
        }
    }
    chars.next().is_none()
}

/// A plain pattern has a fixed length in characters, so its suffix match is a full match of the
/// name's last that many characters, which are the whole name or follow a `.`.
fn plain_suffix_match(pattern: &str, name: &str) -> bool {
    let len = pattern.len();
    let count = name.chars().count();
    let Some(skip) = count.checked_sub(len) else {
        return false;
    };
    // `len` ≥ 1, so `skip` < `count` and the character exists.
    let Some((split, _)) = name.char_indices().nth(skip) else {
        return false;
    };
    let (head, tail) = name.split_at(split);
    (head.is_empty() || head.ends_with('.')) && plain_full_match(pattern, tail)
}

/// Which modules an adapter targets (or excludes): PEFT's list form (a module matches a name in the
/// list exactly or ends with `.` + the name) or its string form (a regex full match).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModuleSelector {
    /// Module names or name suffixes, compared literally.
    Names(Vec<String>),
    /// A pattern the whole module name must match.
    Pattern(ModulePattern),
}

impl ModuleSelector {
    /// Whether the module (its full name, e.g. `model.layers.0.self_attn.q_proj`) is selected.
    pub fn matches(&self, module: &str) -> bool {
        match self {
            ModuleSelector::Names(names) => names.iter().any(|n| {
                module == n
                    || module
                        .strip_suffix(n.as_str())
                        .is_some_and(|head| head.ends_with('.'))
            }),
            ModuleSelector::Pattern(p) => p.full_match(module),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn p(s: &str) -> ModulePattern {
        ModulePattern::new(s).unwrap()
    }

    #[test]
    fn refuses_what_python_reads_differently_or_not_at_all() {
        for bad in [
            "[[:alpha:]]_proj",
            "[a[b]]_proj",
            "[a-z&&[^q]]_proj",
            "[a--b]",
            "[a~~b]",
            // Python-only syntax: lookaround, backreferences, \Z.
            "(?!k_)q_proj",
            "(?<=attn\\.)q_proj",
            "(a)\\1",
            "q_proj\\Z",
            // Not a regular expression at all, or not balanced by itself.
            "(q_proj",
            "q_proj)|(v_proj",
            "*q",
        ] {
            assert!(
                matches!(
                    ModulePattern::new(bad),
                    Err(PatternError::Unsupported { .. })
                ),
                "{bad}"
            );
        }
        assert_eq!(ModulePattern::new(""), Err(PatternError::Empty));
        assert_eq!(
            ModulePattern::new(&"a".repeat(MAX_NAME_LEN + 1)),
            Err(PatternError::TooLong(MAX_NAME_LEN + 1))
        );
        // A pattern that would compile to a huge program is refused, not built.
        let huge = format!("(?:{}){{1000}}", "[a-z]".repeat(100));
        assert!(huge.len() <= MAX_NAME_LEN);
        assert!(matches!(
            ModulePattern::new(&huge),
            Err(PatternError::Unsupported { .. })
        ));
    }

    #[test]
    fn regular_expressions_match_as_in_python() {
        // re.fullmatch(r".*\.(q_proj|v_proj)", name), as PEFT uses a string target_modules.
        let m = p(r".*\.(q_proj|v_proj)");
        assert!(m.is_regex());
        assert!(m.full_match("model.layers.0.self_attn.q_proj"));
        assert!(m.full_match("model.layers.31.self_attn.v_proj"));
        assert!(!m.full_match("model.layers.0.self_attn.k_proj"));
        assert!(!m.full_match("model.layers.0.self_attn.q_proj.lora_A"));
        assert!(!m.full_match("q_proj"));
        // Alternation binds inside the pattern, not across the anchors.
        let m = p("q_proj|v_proj");
        assert!(m.full_match("q_proj") && m.full_match("v_proj"));
        assert!(!m.full_match("q_projv_proj") && !m.full_match("xq_proj"));
        let m = p(r"model\.layers\.[0-3]\.self_attn\.[qkv]_proj");
        assert!(m.full_match("model.layers.2.self_attn.k_proj"));
        assert!(!m.full_match("model.layers.4.self_attn.k_proj"));
        assert!(!m.full_match("model_layers.2.self_attn.k_proj"));
        // A class's literal ']' first, and '-' as a range, as in Python.
        assert!(p("[]a]_x").full_match("]_x"));
        assert!(p("[^a-c]_x").full_match("d_x") && !p("[^a-c]_x").full_match("b_x"));
        // `.` does not match a newline; a name with one matches nothing.
        assert!(!p("a.*").full_match("a\nb"));
        assert!(!p("a$").full_match("a\n"));
        // rank_pattern keys: PEFT's re.match(rf"(.*\.)?({key})$", name).
        let m = p(r"layers\.(0|1)\.self_attn\.q_proj");
        assert!(m.suffix_match("model.layers.1.self_attn.q_proj"));
        assert!(!m.suffix_match("model.layers.11.self_attn.q_proj"));
        assert!(!m.suffix_match("model.xlayers.1.self_attn.q_proj"));
        assert!(p("q_proj$").suffix_match("model.layers.0.self_attn.q_proj"));
    }

    #[test]
    fn full_match_is_python_fullmatch() {
        let m = p("model.layers.0.self_attn.q_proj");
        assert!(m.full_match("model.layers.0.self_attn.q_proj"));
        // `.` is any one character, as in Python.
        assert!(m.full_match("model_layers_0_self_attn_q_proj"));
        assert!(!m.full_match("model.layers.0.self_attn.q_proj2"));
        assert!(!m.full_match("model.layers.10.self_attn.q_proj"));
        assert!(!p("q_proj").full_match("model.layers.0.self_attn.q_proj"));
        assert!(!p("a.c").full_match("a\nc"));
        assert!(p("a.c").full_match("aéc"));
    }

    #[test]
    fn suffix_match_is_peft_get_pattern_key() {
        let m = p("q_proj");
        assert!(m.suffix_match("q_proj"));
        assert!(m.suffix_match("model.layers.0.self_attn.q_proj"));
        assert!(!m.suffix_match("model.layers.0.self_attn.xq_proj"));
        assert!(!m.suffix_match("proj"));
        let m = p("layers.0.self_attn.q_proj");
        assert!(m.suffix_match("model.layers.0.self_attn.q_proj"));
        assert!(!m.suffix_match("model.layers.10.self_attn.q_proj"));
        assert!(p("ab").suffix_match("é.ab"));
        assert!(!p("ab").suffix_match("éab"));
    }

    #[test]
    fn selector_list_is_name_or_dotted_suffix() {
        let s = ModuleSelector::Names(vec!["q_proj".into(), "self_attn.o_proj".into()]);
        assert!(s.matches("model.layers.0.self_attn.q_proj"));
        assert!(s.matches("q_proj"));
        assert!(s.matches("model.layers.3.self_attn.o_proj"));
        assert!(!s.matches("model.layers.3.cross_attn.o_proj"));
        assert!(!s.matches("model.layers.0.self_attn.xq_proj"));
        assert!(!s.matches("model.layers.0.self_attn.q_proj.lora_A"));
    }

    proptest! {
        /// `suffix_match` equals its definition written out over every split point.
        #[test]
        fn suffix_match_agrees_with_definition(
            pattern in "[a-c._]{1,5}",
            name in "[a-c._\n]{0,10}",
        ) {
            let m = p(&pattern);
            // Python's `.*` does not cross a newline, nor does the pattern's `.`.
            let by_definition = !name.contains('\n') && (0..=name.len())
                .filter(|&i| name.is_char_boundary(i))
                .any(|i| {
                    let (head, tail) = name.split_at(i);
                    (head.is_empty() || head.ends_with('.')) && m.full_match(tail)
                });
            prop_assert_eq!(m.suffix_match(&name), by_definition);
        }

        /// On plain module names the regex engine and the hand matcher agree.
        #[test]
        fn plain_patterns_match_as_the_regex_engine_does(
            pattern in "[a-c._]{1,5}",
            name in "[a-c._\né]{0,10}",
        ) {
            let plain = p(&pattern);
            prop_assert!(!plain.is_regex());
            let regex = ModulePattern {
                source: pattern.clone(),
                compiled: Some(Box::new((
                    compile(&pattern, format!(r"\A(?:{pattern})\z")).unwrap(),
                    compile(&pattern, format!(r"\A(?:.*\.)?(?:{pattern})\z")).unwrap(),
                ))),
            };
            prop_assert_eq!(plain.full_match(&name), regex.full_match(&name));
            prop_assert_eq!(plain.suffix_match(&name), regex.suffix_match(&name));
        }
    }
}
