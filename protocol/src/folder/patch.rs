//! A side file sent as a patch against the base's file of the same path (docs/spec/folder-delta.md
//! "Patched files"): a zstd frame (RFC 8878) whose dictionary is the base file's bytes taken as raw
//! content — what `zstd --patch-from=BASE` writes. A fine-tune that adds two tokens changes a few
//! hundred bytes of a `tokenizer.json` of megabytes; carried whole, the file would cost its full
//! compressed size on the link, as a patch it costs the change.
//!
//! Decoding is defined by the zstd format alone, so any conforming decoder rebuilds the same bytes;
//! encoding is zdn's choice (level, window) and may change between versions, which changes a new
//! delta's hash but never what it rebuilds. Everything is bounded before allocation: both files at
//! most [`MAX_PATCHED_LEN`], the output exactly the length the layout states.

use zstd::zstd_safe::{CCtx, CParameter, DCtx};

use super::delta::OutputFile;
use crate::Hash;

/// Largest base file or patched file (either side): a 262k-token `tokenizer.json` is about 33 MB.
pub const MAX_PATCHED_LEN: u64 = 64 << 20;
/// Largest patch member read.
pub const MAX_PATCH_LEN: u64 = MAX_PATCHED_LEN;
/// zstd level of patches zdn writes, with long-distance matching: on an 8 MB tokenizer.json with
/// one token added and one renamed, level 3 wrote 873 bytes in 0.04 s and 30 MB of memory, level 19
/// 753 bytes in 4 s and 190 MB (the `zstd` command line, `--patch-from`).
pub const PATCH_LEVEL: i32 = 3;

/// Why a patch cannot be made or applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatchError {
    #[error("{what} is {len} bytes, over the {MAX_PATCHED_LEN}-byte limit for patched files")]
    TooLarge { what: &'static str, len: u64 },
    #[error("zstd: {0}")]
    Zstd(&'static str),
    #[error("the patch rebuilds {got} bytes, the layout says {want}")]
    Length { got: u64, want: u64 },
}

fn zstd_err(code: usize) -> PatchError {
    PatchError::Zstd(zstd::zstd_safe::get_error_name(code))
}

fn check_len(what: &'static str, len: usize) -> Result<(), PatchError> {
    match u64::try_from(len) {
        Ok(l) if l <= MAX_PATCHED_LEN => Ok(()),
        _ => Err(PatchError::TooLarge {
            what,
            len: len as u64,
        }),
    }
}

/// The zstd window (log2 bytes) that lets every byte of `target` refer to any byte of `base`: the
/// two lengths together, as `zstd --patch-from` sets it, at least zstd's minimum of 2^10.
fn window_log(base: usize, target: usize) -> u32 {
    let span = (base + target).max(1 << 10);
    usize::BITS - (span - 1).leading_zeros()
}

/// The patch that rebuilds `target` from `base` (both at most [`MAX_PATCHED_LEN`] bytes).
pub fn encode(base: &[u8], target: &[u8]) -> Result<Vec<u8>, PatchError> {
    check_len("the base file", base.len())?;
    check_len("the file", target.len())?;
    let mut cctx = CCtx::create();
    let params = [
        CParameter::CompressionLevel(PATCH_LEVEL),
        CParameter::WindowLog(window_log(base.len(), target.len())),
        CParameter::EnableLongDistanceMatching(true),
        CParameter::ContentSizeFlag(true),
        CParameter::ChecksumFlag(false),
    ];
    for p in params {
        cctx.set_parameter(p).map_err(zstd_err)?;
    }
    cctx.ref_prefix(base).map_err(zstd_err)?;
    let mut out = Vec::with_capacity(zstd::zstd_safe::compress_bound(target.len()));
    cctx.compress2(&mut out, target).map_err(zstd_err)?;
    Ok(out)
}

/// The patch of `target` against `base` when it is worth sending: both within the limit and the
/// patch smaller than `target` compressed on its own at the store's level (what carrying it whole
/// would cost on the link).
pub fn encode_if_smaller(base: &[u8], target: &[u8]) -> Option<Vec<u8>> {
    let p = encode(base, target).ok()?;
    let alone = zstd::bulk::compress(target, crate::bitdelta::DEFAULT_ZSTD_LEVEL)
        .map_or(target.len(), |z| z.len());
    (p.len() < alone).then_some(p)
}

/// Rebuilds a file of exactly `len` bytes from `base` and its patch. Nothing beyond `len` bytes is
/// ever written (the output buffer is that size); a patch that rebuilds any other length, or is not
/// a zstd frame made with this base, is refused.
pub fn decode(base: &[u8], patch: &[u8], len: u64) -> Result<Vec<u8>, PatchError> {
    check_len("the base file", base.len())?;
    check_len("the patch", patch.len())?;
    if len > MAX_PATCHED_LEN {
        return Err(PatchError::TooLarge {
            what: "the patched file",
            len,
        });
    }
    let want = len as usize;
    let mut dctx = DCtx::create();
    dctx.ref_prefix(base).map_err(zstd_err)?;
    // One byte of room beyond `len`, so that a frame rebuilding more is seen as such (rather than
    // as "destination too small" with nothing to tell it from a corrupt frame).
    let mut out: Vec<u8> = Vec::with_capacity(want + 1);
    let n = dctx.decompress(&mut out, patch).map_err(zstd_err)?;
    if n != want || out.len() != want {
        return Err(PatchError::Length {
            got: n as u64,
            want: len,
        });
    }
    Ok(out)
}

/// Why a `patched` file of a folder delta's layout cannot be rebuilt.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatchedFileError {
    #[error("the base's file of this path hashes to {actual}, the layout says {expected} (is this the delta's base?)")]
    BaseFile { expected: Hash, actual: Hash },
    #[error("its patch: {0}")]
    Patch(#[from] PatchError),
    #[error("the rebuilt bytes hash to {actual}, the layout says {expected}")]
    Result { expected: Hash, actual: Hash },
    #[error("the layout names no {0} for it")]
    NoHash(&'static str),
}

/// A `patched` file of a folder delta's layout rebuilt from the base's file of the same path and
/// its patch member, both hashes checked: the base file's against the layout's `base_blake3`
/// before it is used, the result's against `blake3`. What every reader of a folder delta (apply,
/// the store's check when one is added) does with a patched file.
pub fn rebuild_file(
    file: &OutputFile,
    base_file: &[u8],
    patch: &[u8],
) -> Result<Vec<u8>, PatchedFileError> {
    let base_expected = file
        .base_blake3
        .ok_or(PatchedFileError::NoHash("base_blake3"))?;
    let expected = file.blake3.ok_or(PatchedFileError::NoHash("blake3"))?;
    let actual = Hash::of(base_file);
    if actual != base_expected {
        return Err(PatchedFileError::BaseFile {
            expected: base_expected,
            actual,
        });
    }
    let bytes = decode(base_file, patch, file.len)?;
    let actual = Hash::of(&bytes);
    if actual != expected {
        return Err(PatchedFileError::Result { expected, actual });
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use proptest::prelude::*;

    /// A tokenizer-like JSON file and the same with two tokens added.
    fn pair() -> (Vec<u8>, Vec<u8>) {
        let vocab: String = (0..3000).map(|i| format!("\"tok{i:05}\": {i}, ")).collect();
        let base = format!("{{\"added_tokens\": [], \"model\": {{\"vocab\": {{{vocab}}}}}}}");
        let fine = base.replace(
            "\"added_tokens\": []",
            "\"added_tokens\": [{\"id\": 3000, \"content\": \"<|user|>\"}, {\"id\": 3001, \"content\": \"<|assistant|>\"}]",
        );
        (base.into_bytes(), fine.into_bytes())
    }

    #[test]
    fn a_small_change_costs_little_and_rebuilds_exactly() {
        let (base, fine) = pair();
        let p = encode(&base, &fine).unwrap();
        assert!(p.len() < 200, "patch {} bytes of {}", p.len(), fine.len());
        assert_eq!(decode(&base, &p, fine.len() as u64).unwrap(), fine);
        assert_eq!(encode_if_smaller(&base, &fine), Some(p));
    }

    #[test]
    fn an_unrelated_file_is_not_worth_a_patch() {
        let (base, _) = pair();
        // Noise: nothing in the base to refer to, nothing to compress.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let other: Vec<u8> = (0..20_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 32) as u8
            })
            .collect();
        assert_eq!(encode_if_smaller(&base, &other), None);
        assert_eq!(encode_if_smaller(b"", b""), None);
    }

    #[test]
    fn the_wrong_length_or_base_is_refused() {
        let (base, fine) = pair();
        let p = encode(&base, &fine).unwrap();
        let n = fine.len() as u64;
        assert!(matches!(
            decode(&base, &p, n - 1),
            Err(PatchError::Zstd(_) | PatchError::Length { .. })
        ));
        assert_eq!(
            decode(&base, &p, n + 1),
            Err(PatchError::Length {
                got: n,
                want: n + 1
            })
        );
        // Another base of the same length rebuilds other bytes or fails: never the file.
        let mut other = base.clone();
        other[100] ^= 1;
        assert_ne!(decode(&other, &p, n).ok(), Some(fine.clone()));
        assert!(decode(&base, &p[..p.len() / 2], n).is_err());
        assert!(decode(&base, b"not a zstd frame", n).is_err());
    }

    #[test]
    fn a_patched_file_is_rebuilt_only_with_both_hashes_right() {
        use super::super::delta::Source;
        let (base, fine) = pair();
        let p = encode(&base, &fine).unwrap();
        let file = OutputFile {
            path: "tokenizer.json".into(),
            from: Source::Patched,
            len: fine.len() as u64,
            blake3: Some(Hash::of(&fine)),
            base_blake3: Some(Hash::of(&base)),
        };
        assert_eq!(rebuild_file(&file, &base, &p).unwrap(), fine);
        let mut other = base.clone();
        other[10] ^= 1;
        assert_eq!(
            rebuild_file(&file, &other, &p),
            Err(PatchedFileError::BaseFile {
                expected: Hash::of(&base),
                actual: Hash::of(&other)
            })
        );
        let wrong = OutputFile {
            blake3: Some(Hash::of(b"x")),
            ..file.clone()
        };
        assert_eq!(
            rebuild_file(&wrong, &base, &p),
            Err(PatchedFileError::Result {
                expected: Hash::of(b"x"),
                actual: Hash::of(&fine)
            })
        );
        assert!(matches!(
            rebuild_file(&file, &base, &p[..p.len() / 2]),
            Err(PatchedFileError::Patch(_))
        ));
        for f in [
            OutputFile {
                blake3: None,
                ..file.clone()
            },
            OutputFile {
                base_blake3: None,
                ..file.clone()
            },
        ] {
            assert!(matches!(
                rebuild_file(&f, &base, &p),
                Err(PatchedFileError::NoHash(_))
            ));
        }
    }

    #[test]
    fn sizes_are_capped_before_anything_is_allocated() {
        let e = decode(b"", b"", MAX_PATCHED_LEN + 1).unwrap_err();
        assert!(matches!(e, PatchError::TooLarge { .. }), "{e}");
    }

    #[test]
    fn the_window_covers_both_files() {
        assert_eq!(window_log(0, 0), 10);
        assert_eq!(window_log(1000, 24), 10);
        assert_eq!(window_log(1000, 25), 11);
        assert_eq!(window_log(32 << 20, 32 << 20), 26);
        assert_eq!(window_log(64 << 20, 64 << 20), 27);
    }

    /// A frame made by the zstd 1.5.4 command line (`zstd -19 --patch-from=BASE TARGET`), not
    /// by zdn, from the base `"zdn base file\n"` × 8 and the target with its first three `base`
    /// made `BASE`: what any conforming encoder writes rebuilds the file here.
    #[test]
    fn golden_patch_decodes() {
        let base = "zdn base file\n".repeat(8);
        let target = base.replacen("base", "BASE", 3);
        let golden = include_bytes!("../../tests/vectors/folder_patch.zst");
        assert_eq!(
            decode(base.as_bytes(), golden, target.len() as u64).unwrap(),
            target.as_bytes()
        );
    }

    proptest! {
        #[test]
        fn any_pair_round_trips(
            base in proptest::collection::vec(any::<u8>(), 0..4096),
            edits in proptest::collection::vec((any::<u16>(), any::<u8>()), 0..16),
            tail in proptest::collection::vec(any::<u8>(), 0..256),
        ) {
            let mut target = base.clone();
            for (at, b) in edits {
                if !target.is_empty() {
                    let i = usize::from(at) % target.len();
                    target[i] = b;
                }
            }
            target.extend_from_slice(&tail);
            let p = encode(&base, &target).unwrap();
            prop_assert_eq!(decode(&base, &p, target.len() as u64).unwrap(), target);
        }

        #[test]
        fn hostile_patches_never_panic(
            base in proptest::collection::vec(any::<u8>(), 0..512),
            patch in proptest::collection::vec(any::<u8>(), 0..512),
            len in 0u64..4096,
        ) {
            if let Ok(out) = decode(&base, &patch, len) {
                prop_assert_eq!(out.len() as u64, len);
            }
        }
    }
}
