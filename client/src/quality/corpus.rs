//! A text corpus as a list of sentences: the held-out (and calibration) text of the quality measure.
//!
//! The rule is simple and fixed, so a corpus file always gives the same sentences: each line is a
//! document; a sentence ends at `.`, `!` or `?` (and any closing quotes) followed by whitespace and an
//! upper-case letter, a digit or an opening quote; sentences of fewer than 4 words are dropped, as are
//! repeats (first one kept).

use std::collections::HashSet;
use std::path::Path;

/// Largest corpus file read (the quality measure needs hundreds of sentences, not gigabytes).
pub const MAX_CORPUS_BYTES: u64 = 64 << 20;
/// Fewer words than this and a "sentence" is a heading or a fragment.
const MIN_WORDS: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum CorpusError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is {len} bytes; corpora are limited to {MAX_CORPUS_BYTES} bytes")]
    TooLarge { path: String, len: u64 },
    #[error("{path} is not a text file (a NUL byte at offset {offset})")]
    Binary { path: String, offset: usize },
    #[error("{path} has no sentence of {MIN_WORDS} or more words")]
    Empty { path: String },
}

/// Sentences of a corpus file, in order, without repeats. The file is UTF-8, or Latin-1 when it is not
/// valid UTF-8 (gensim's `lee.cor` has a Latin-1 "£"); a file with NUL bytes is refused as binary.
pub fn read_sentences(path: &Path) -> Result<Vec<String>, CorpusError> {
    let p = || path.display().to_string();
    let len = std::fs::metadata(path)
        .map_err(|source| CorpusError::Io { path: p(), source })?
        .len();
    if len > MAX_CORPUS_BYTES {
        return Err(CorpusError::TooLarge { path: p(), len });
    }
    let bytes = std::fs::read(path).map_err(|source| CorpusError::Io { path: p(), source })?;
    if let Some(offset) = bytes.iter().position(|&b| b == 0) {
        return Err(CorpusError::Binary { path: p(), offset });
    }
    let text = match String::from_utf8(bytes) {
        Ok(t) => t,
        // Latin-1: every byte is the code point of the same value.
        Err(e) => e.into_bytes().iter().map(|&b| char::from(b)).collect(),
    };
    let s = split_sentences(&text);
    if s.is_empty() {
        return Err(CorpusError::Empty { path: p() });
    }
    Ok(s)
}

/// The sentences of `text` by the rule in the module comment.
pub fn split_sentences(text: &str) -> Vec<String> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for line in text.lines() {
        for s in split_line(line) {
            let s = s.split_whitespace().collect::<Vec<_>>().join(" ");
            if s.split(' ').count() >= MIN_WORDS && seen.insert(s.clone()) {
                out.push(s);
            }
        }
    }
    out
}

fn split_line(line: &str) -> Vec<&str> {
    let chars: Vec<(usize, char)> = line.char_indices().collect();
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < chars.len() {
        if matches!(chars[i].1, '.' | '!' | '?')
            && !(chars[i].1 == '.' && is_abbreviation(&chars[..i]))
        {
            let mut j = i + 1;
            while j < chars.len() && matches!(chars[j].1, '"' | '\'' | ')' | '”' | '’') {
                j += 1;
            }
            let mut k = j;
            while k < chars.len() && chars[k].1.is_whitespace() {
                k += 1;
            }
            let starts_sentence = k > j
                && k < chars.len()
                && (chars[k].1.is_uppercase()
                    || chars[k].1.is_ascii_digit()
                    || matches!(chars[k].1, '"' | '\'' | '“' | '‘'));
            if starts_sentence {
                let end = chars.get(j).map_or(line.len(), |c| c.0);
                out.push(line[start..end].trim());
                start = chars[k].0;
                i = k;
                continue;
            }
        }
        i += 1;
    }
    let rest = line[start..].trim();
    if !rest.is_empty() {
        out.push(rest);
    }
    out
}

/// Titles and initials whose full stop does not end a sentence ("Mr. Smith", "J. Smith", "U.S. Senate").
fn is_abbreviation(before: &[(usize, char)]) -> bool {
    const TITLES: [&str; 16] = [
        "Mr", "Mrs", "Ms", "Dr", "St", "Jr", "Sr", "Prof", "Sen", "Gen", "Rep", "Gov", "Lt", "Col",
        "Capt", "Sgt",
    ];
    let word: String = before
        .iter()
        .rev()
        .take_while(|c| c.1.is_alphanumeric() || c.1 == '.')
        .map(|c| c.1)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    let last = word.rsplit('.').next().unwrap_or("");
    TITLES.contains(&last) || (last.chars().count() == 1 && last.chars().all(char::is_uppercase))
}

/// A deterministic draw of `n` items from `items`: shuffled (Fisher–Yates with `seed`), the first
/// `n` kept — calibration text from across a corpus, the same for the same seed.
pub fn draw<T>(items: &mut Vec<T>, seed: u64, n: usize) {
    let mut rng = crate::model::synthetic::Rng::new(seed);
    for i in (1..items.len()).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        items.swap(i, j);
    }
    items.truncate(n);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_at_sentence_ends_only() {
        let t = "Mr. Smith and J. Doe went to the U.S. Senate today. He said \"hello there to all.\" Then 3 people left! \
                 Was it 3.5 per cent? yes it was indeed so.\nShort one.\nA second document has four words.";
        assert_eq!(
            split_sentences(t),
            vec![
                "Mr. Smith and J. Doe went to the U.S. Senate today.",
                "He said \"hello there to all.\"",
                "Then 3 people left!",
                "Was it 3.5 per cent? yes it was indeed so.",
                "A second document has four words.",
            ]
        );
    }

    #[test]
    fn repeats_and_fragments_are_dropped() {
        let t = "The same sentence is here. The same sentence is here.\nToo short.\n\n";
        assert_eq!(split_sentences(t), vec!["The same sentence is here."]);
    }

    #[test]
    fn bad_files_give_named_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.txt");
        std::fs::write(&p, b"Valid text here \x00 then junk").unwrap();
        let e = read_sentences(&p).unwrap_err().to_string();
        assert!(
            e.contains("not a text file") && e.contains("offset 16"),
            "{e}"
        );
        std::fs::write(&p, b"It cost \xa3400 million last year.").unwrap();
        assert_eq!(
            read_sentences(&p).unwrap(),
            vec!["It cost \u{a3}400 million last year."]
        );
        std::fs::write(&p, "no.").unwrap();
        assert!(read_sentences(&p)
            .unwrap_err()
            .to_string()
            .contains("no sentence"));
        let e = read_sentences(&dir.path().join("missing"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing"), "{e}");
    }
}
