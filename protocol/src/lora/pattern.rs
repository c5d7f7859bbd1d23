//! Module-name patterns of a PEFT `adapter_config.json` (`target_modules`, `exclude_modules`,
//! `rank_pattern`, `alpha_pattern`), read exactly as PEFT reads them for the subset zdn accepts.
//!
//! PEFT treats these strings as Python regular expressions. zdn has no regex engine, so it accepts
//! only patterns made of ASCII letters, digits, `_` and `.`, where the one regex metacharacter, `.`,
//! matches any one character but a newline, exactly as in Python. Every other pattern is refused
//! with [`PatternError`]; none is reinterpreted.

use super::config::MAX_NAME_LEN;

/// Why a module pattern is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("pattern is empty")]
    Empty,
    #[error("pattern is {0} bytes; the limit is {MAX_NAME_LEN}")]
    TooLong(usize),
    #[error(
        "pattern {pattern:?} contains {found:?}: zdn reads module patterns without a regex engine \
         and accepts only ASCII letters, digits, '_' and '.' (where '.' matches any one character, \
         as in Python); write the module names out as a list instead"
    )]
    Unsupported { pattern: String, found: char },
}

/// A PEFT module-name pattern in zdn's regex subset: literal ASCII letters, digits and `_`, and `.`
/// matching any one character but a newline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModulePattern {
    source: String,
}

impl ModulePattern {
    pub fn new(pattern: &str) -> Result<Self, PatternError> {
        if pattern.is_empty() {
            return Err(PatternError::Empty);
        }
        if pattern.len() > MAX_NAME_LEN {
            return Err(PatternError::TooLong(pattern.len()));
        }
        if let Some(found) = pattern
            .chars()
            .find(|&c| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
        {
            return Err(PatternError::Unsupported {
                pattern: pattern.to_owned(),
                found,
            });
        }
        Ok(ModulePattern {
            source: pattern.to_owned(),
        })
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Python's `re.fullmatch(pattern, name)`: the whole name, one character per pattern byte.
    pub fn full_match(&self, name: &str) -> bool {
        let mut chars = name.chars();
        for p in self.source.bytes() {
            match chars.next() {
                Some(c) if p == b'.' && c != '\n' => {}
                Some(c) if c.is_ascii() && c as u8 == p => {}
                _ => return false,
            }
        }
        chars.next().is_none()
    }

    /// PEFT's `get_pattern_key` test, `re.match(rf"(.*\.)?({pattern})$", name)`: the pattern matches
    /// the whole name or a suffix of it that follows a `.`. The pattern has a fixed length in
    /// characters, so the suffix is the last that many characters.
    pub fn suffix_match(&self, name: &str) -> bool {
        let len = self.source.len();
        let count = name.chars().count();
        let Some(skip) = count.checked_sub(len) else {
            return false;
        };
        // `len` ≥ 1, so `skip` < `count` and the character exists.
        let Some((split, _)) = name.char_indices().nth(skip) else {
            return false;
        };
        let (head, tail) = name.split_at(split);
        (head.is_empty() || head.ends_with('.')) && self.full_match(tail)
    }
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
    fn refuses_regex_syntax() {
        for bad in [
            ".*q_proj",
            "q_proj|v_proj",
            "(q|v)_proj",
            "all-linear",
            "q_proj$",
            r"layers\.0",
            "[qv]_proj",
            "é",
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
            let by_definition = (0..=name.len())
                .filter(|&i| name.is_char_boundary(i))
                .any(|i| {
                    let (head, tail) = name.split_at(i);
                    (head.is_empty() || head.ends_with('.')) && m.full_match(tail)
                });
            prop_assert_eq!(m.suffix_match(&name), by_definition);
        }
    }
}
