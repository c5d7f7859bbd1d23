//! Names only move forward. A name points at the newest object committed under it; committing an
//! object that is older than the one the name points at (by the publisher's `created_at`, then by
//! version) stores it but leaves the name where it is, so a replayed older manifest — fetched
//! because someone announced it again — cannot roll a name back. Rolling back is explicit
//! ([`super::ObjectStore::set_name`], `zdn rollback`).

use std::cmp::Ordering;

use zdn_protocol::manifest::Manifest;

/// Whether committing `new` should move its name away from `current`: unless `current` is newer.
pub(crate) fn moves_name(new: &Manifest, current: &Manifest) -> bool {
    let order = current
        .created_at
        .cmp(&new.created_at)
        .then_with(|| version_order(&current.version, &new.version));
    order != Ordering::Greater
}

/// Versions compared piece by piece, numbers as numbers: "1.10" after "1.9", "v2" after "v1".
pub(crate) fn version_order(a: &str, b: &str) -> Ordering {
    let (mut x, mut y) = (pieces(a), pieces(b));
    loop {
        match (x.next(), y.next()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(p), Some(q)) => {
                let o = match (p.parse::<u128>(), q.parse::<u128>()) {
                    (Ok(m), Ok(n)) => m.cmp(&n),
                    _ => p.cmp(q),
                };
                if o != Ordering::Equal {
                    return o;
                }
            }
        }
    }
}

/// Runs of digits and runs of anything else.
fn pieces(s: &str) -> impl Iterator<Item = &str> {
    let mut rest = s;
    std::iter::from_fn(move || {
        let first = rest.chars().next()?;
        let digits = first.is_ascii_digit();
        let end = rest
            .find(|c: char| c.is_ascii_digit() != digits)
            .unwrap_or(rest.len());
        let (p, r) = rest.split_at(end);
        rest = r;
        Some(p)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use zdn_protocol::manifest::Kind;
    use zdn_protocol::Hash;

    fn m(created_at: u64, version: &str) -> Manifest {
        Manifest {
            kind: Kind::Delta,
            name: "n".into(),
            version: version.into(),
            created_at,
            base: None,
            object_len: 0,
            object_hash: Hash::of(b""),
            chunks: Vec::new(),
            tensors: Vec::new(),
            extra: Vec::new(),
            files: Vec::new(),
        }
    }

    #[test]
    fn forward_only() {
        assert!(moves_name(&m(2, "1"), &m(1, "9")), "newer");
        assert!(!moves_name(&m(1, "9"), &m(2, "1")), "a replayed older one");
        assert!(
            moves_name(&m(5, "1.10"), &m(5, "1.9")),
            "same second, higher version"
        );
        assert!(!moves_name(&m(5, "1.9"), &m(5, "1.10")));
        assert!(moves_name(&m(5, "1"), &m(5, "1")), "the same again");
    }

    #[test]
    fn versions() {
        assert_eq!(version_order("1.10", "1.9"), Ordering::Greater);
        assert_eq!(version_order("v2", "v10"), Ordering::Less);
        assert_eq!(version_order("1.0", "1.0"), Ordering::Equal);
        assert_eq!(version_order("1.0", "1.0.1"), Ordering::Less);
        assert_eq!(version_order("", "a"), Ordering::Less);
        assert_eq!(
            version_order("99999999999999999999999999999999999999999", "1"),
            Ordering::Greater
        );
    }
}
