//! `Glob`: the tensor-name patterns of `--include` / `--exclude`.
//!
//! A deliberately small dialect, so a pattern means the same thing in every zdn version: `*` matches any
//! run of characters (dots included), `?` one character; everything else is literal.

/// A compiled glob pattern over tensor names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    pattern: Vec<char>,
    source: String,
}

impl Glob {
    pub fn new(pattern: &str) -> Self {
        Glob {
            pattern: pattern.chars().collect(),
            source: pattern.to_owned(),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether `name` matches the whole pattern. Iterative with one backtrack point, so O(n·m) worst case
    /// and no recursion depth to exhaust on hostile patterns.
    pub fn matches(&self, name: &str) -> bool {
        let text: Vec<char> = name.chars().collect();
        let p = &self.pattern;
        let (mut pi, mut ti) = (0usize, 0usize);
        let mut star: Option<(usize, usize)> = None;
        while ti < text.len() {
            match p.get(pi) {
                Some('*') => {
                    star = Some((pi, ti));
                    pi += 1;
                }
                Some(&c) if c == '?' || c == text[ti] => {
                    pi += 1;
                    ti += 1;
                }
                _ => match star {
                    Some((sp, st)) => {
                        pi = sp + 1;
                        ti = st + 1;
                        star = Some((sp, st + 1));
                    }
                    None => return false,
                },
            }
        }
        p[pi..].iter().all(|&c| c == '*')
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn examples() {
        let g = Glob::new("encoder.layer.*.attention.*.weight");
        assert!(g.matches("encoder.layer.0.attention.self.query.weight"));
        assert!(!g.matches("encoder.layer.0.attention.self.query.bias"));
        assert!(Glob::new("*").matches(""));
        assert!(Glob::new("*embeddings*").matches("embeddings.word_embeddings.weight"));
        assert!(Glob::new("a?c").matches("abc"));
        assert!(!Glob::new("a?c").matches("ac"));
        assert!(!Glob::new("abc").matches("abcd"));
        assert!(Glob::new("**x").matches("yyx"));
    }
}
