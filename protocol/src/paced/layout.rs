//! A session's byte stream: the bytes each chunk still needs, chunk after chunk in the `Ready`'s
//! order. A chunk sent whole contributes its stored bytes; a resumed one only the ranges its
//! receiver does not hold (the complement of the request's held ranges). Both ends compute the
//! same [`Segment`]s from the `Ready` and the request, so the stream needs no framing.

use super::message::{HeldChunk, SessionChunk};
use super::ranges::ByteRanges;
use super::PacedError;

/// One piece of the stream: `len` bytes of chunk `chunk` (its index in the layout) from `offset`,
/// at stream offset `stream`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub stream: u64,
    pub chunk: usize,
    pub offset: u32,
    pub len: u32,
}

/// Whether a chunk of `stored_len` bytes whose receiver holds `held` can be resumed: the ranges
/// lie inside it and leave something to send.
pub fn can_resume(held: &ByteRanges, stored_len: u32) -> bool {
    !held.is_empty()
        && held
            .as_slice()
            .last()
            .is_some_and(|&(s, l)| u64::from(s) + u64::from(l) <= u64::from(stored_len))
        && !held.covers(stored_len)
}

/// The held ranges the request gave for `chunk`.
pub fn held_for(held: &[HeldChunk], chunk: u32) -> Option<&ByteRanges> {
    held.binary_search_by_key(&chunk, |h| h.chunk)
        .ok()
        .map(|i| &held[i].ranges)
}

/// The ranges of chunk `c` that the stream carries.
pub fn to_send(c: &SessionChunk, held: &[HeldChunk]) -> Result<ByteRanges, PacedError> {
    if !c.resumed {
        return Ok(ByteRanges::new().missing(c.stored_len));
    }
    match held_for(held, c.chunk) {
        Some(h) if can_resume(h, c.stored_len) => Ok(h.missing(c.stored_len)),
        _ => Err(PacedError::Session(
            "a chunk resumed that the request could not resume",
        )),
    }
}

/// The segments of a session whose `Ready` listed `layout`, for a request that said `held`; and
/// the stream's length.
pub fn segments(
    layout: &[SessionChunk],
    held: &[HeldChunk],
) -> Result<(Vec<Segment>, u64), PacedError> {
    let mut out = Vec::with_capacity(layout.len());
    let mut at: u64 = 0;
    for (k, c) in layout.iter().enumerate() {
        for &(offset, len) in to_send(c, held)?.as_slice() {
            out.push(Segment {
                stream: at,
                chunk: k,
                offset,
                len,
            });
            at += u64::from(len);
        }
    }
    Ok((out, at))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(chunk: u32, r: &[(u32, u32)]) -> HeldChunk {
        HeldChunk {
            chunk,
            ranges: ByteRanges::from_canonical(r.to_vec(), u32::MAX).unwrap(),
        }
    }

    #[test]
    fn resumed_chunks_carry_only_what_is_missing() {
        let layout = [
            SessionChunk {
                chunk: 1,
                stored_len: 100,
                resumed: false,
            },
            SessionChunk {
                chunk: 4,
                stored_len: 50,
                resumed: true,
            },
        ];
        let h = [held(4, &[(0, 10), (20, 5)])];
        let (segs, total) = segments(&layout, &h).unwrap();
        assert_eq!(total, 100 + 10 + 25);
        assert_eq!(
            segs.iter()
                .map(|s| (s.stream, s.chunk, s.offset, s.len))
                .collect::<Vec<_>>(),
            vec![(0, 0, 0, 100), (100, 1, 10, 10), (110, 1, 25, 25)]
        );
        // Resumed without held ranges, or with ranges past its end, or covering it: refused.
        assert!(segments(&layout, &[]).is_err());
        assert!(segments(&layout, &[held(4, &[(45, 6)])]).is_err());
        assert!(segments(&layout, &[held(4, &[(0, 50)])]).is_err());
        assert!(!can_resume(&ByteRanges::new(), 10));
    }
}
