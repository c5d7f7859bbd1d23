//! One member path of a folder: relative, `/`-separated, UTF-8 (the type guarantees it), with no
//! empty, `.` or `..` component, no leading or trailing `/`, no backslash, no control character,
//! at most [`MAX_PATH_LEN`] bytes with components of at most [`MAX_COMPONENT_LEN`] bytes. Such a
//! path joined below any folder names a file inside that folder, on every platform zdn runs on.

use super::{MAX_COMPONENT_LEN, MAX_PATH_LEN};

/// What is wrong with a member path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("empty path")]
    Empty,
    #[error("{0} bytes long, the limit is {MAX_PATH_LEN}")]
    TooLong(usize),
    #[error("absolute (starts with '/'); paths are relative to the folder")]
    Absolute,
    #[error("ends with '/'")]
    TrailingSlash,
    #[error("contains a backslash")]
    Backslash,
    #[error("contains a control character")]
    Control,
    #[error("has an empty component ('//')")]
    EmptyComponent,
    #[error("has a {0:?} component")]
    Dots(&'static str),
    #[error("has a component of {0} bytes, the limit is {MAX_COMPONENT_LEN}")]
    ComponentTooLong(usize),
}

/// Checks one member path (see the module documentation for the rules).
pub fn check_path(path: &str) -> Result<(), PathError> {
    if path.is_empty() {
        return Err(PathError::Empty);
    }
    if path.len() > MAX_PATH_LEN {
        return Err(PathError::TooLong(path.len()));
    }
    if path.starts_with('/') {
        return Err(PathError::Absolute);
    }
    if path.ends_with('/') {
        return Err(PathError::TrailingSlash);
    }
    if path.contains('\\') {
        return Err(PathError::Backslash);
    }
    if path.chars().any(char::is_control) {
        return Err(PathError::Control);
    }
    for c in path.split('/') {
        match c {
            "" => return Err(PathError::EmptyComponent),
            "." => return Err(PathError::Dots(".")),
            ".." => return Err(PathError::Dots("..")),
            _ if c.len() > MAX_COMPONENT_LEN => return Err(PathError::ComponentTooLong(c.len())),
            _ => {}
        }
    }
    Ok(())
}

/// The folders a path lies in, innermost last: `a/b/c.json` → `a`, `a/b`.
pub fn parents(path: &str) -> impl Iterator<Item = &str> {
    path.match_indices('/').map(move |(i, _)| &path[..i])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_paths() {
        for p in [
            "config.json",
            "model-00001-of-00003.safetensors",
            ".gitattributes",
            "1_Pooling/config.json",
            "a/b/c/d.e",
            "...",
            "..a",
            "a..",
            "tokenizer.model",
            "名前.json",
        ] {
            assert_eq!(check_path(p), Ok(()), "{p}");
        }
        let long = "a".repeat(MAX_COMPONENT_LEN);
        assert_eq!(check_path(&long), Ok(()));
        let deep = vec!["d"; MAX_PATH_LEN / 2].join("/");
        assert_eq!(check_path(&deep), Ok(()));
    }

    #[test]
    fn bad_paths() {
        let cases: &[(&str, PathError)] = &[
            ("", PathError::Empty),
            ("/etc/passwd", PathError::Absolute),
            ("a/", PathError::TrailingSlash),
            ("a\\b", PathError::Backslash),
            ("..\\x", PathError::Backslash),
            ("a\nb", PathError::Control),
            ("a\0b", PathError::Control),
            ("a\u{7f}", PathError::Control),
            ("a\u{85}", PathError::Control),
            ("a//b", PathError::EmptyComponent),
            (".", PathError::Dots(".")),
            ("..", PathError::Dots("..")),
            ("../x", PathError::Dots("..")),
            ("a/../../x", PathError::Dots("..")),
            ("a/./b", PathError::Dots(".")),
            ("a/..", PathError::Dots("..")),
        ];
        for (p, e) in cases {
            assert_eq!(check_path(p).as_ref(), Err(e), "{p:?}");
        }
        assert_eq!(
            check_path(&"a".repeat(MAX_COMPONENT_LEN + 1)),
            Err(PathError::ComponentTooLong(MAX_COMPONENT_LEN + 1))
        );
        let long = vec!["d"; MAX_PATH_LEN / 2 + 1].join("/");
        assert_eq!(check_path(&long), Err(PathError::TooLong(long.len())));
    }

    #[test]
    fn parents_of_a_path() {
        assert_eq!(parents("a/b/c.json").collect::<Vec<_>>(), ["a", "a/b"]);
        assert_eq!(parents("c.json").count(), 0);
    }
}
