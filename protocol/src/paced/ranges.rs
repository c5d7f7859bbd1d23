//! [`ByteRanges`]: a set of byte ranges inside one chunk, kept canonical (ascending, non-empty,
//! with a gap between neighbours), so one set has one encoding. The paced lane uses it for the
//! bytes of a partly received chunk that the receiver already holds (a request names them and the
//! sender skips them) and for the bytes still missing (the complement).

/// Ascending, disjoint, non-adjacent, non-empty `(start, len)` ranges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ByteRanges(Vec<(u32, u32)>);

impl ByteRanges {
    pub fn new() -> Self {
        ByteRanges(Vec::new())
    }

    /// The ranges if they are canonical and end at or before `limit`; `None` otherwise.
    pub fn from_canonical(ranges: Vec<(u32, u32)>, limit: u32) -> Option<Self> {
        let mut floor: Option<u64> = None;
        for &(s, l) in &ranges {
            let end = u64::from(s) + u64::from(l);
            if l == 0 || end > u64::from(limit) || floor.is_some_and(|f| u64::from(s) <= f) {
                return None;
            }
            floor = Some(end);
        }
        Some(ByteRanges(ranges))
    }

    pub fn as_slice(&self) -> &[(u32, u32)] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Bytes covered.
    pub fn bytes(&self) -> u64 {
        self.0.iter().map(|&(_, l)| u64::from(l)).sum()
    }

    /// Whether `[0, len)` is covered.
    pub fn covers(&self, len: u32) -> bool {
        len == 0 || self.0.first().is_some_and(|&(s, l)| s == 0 && l >= len)
    }

    /// Adds `[start, end)`, merging what it touches.
    pub fn insert(&mut self, start: u32, end: u32) {
        if end <= start {
            return;
        }
        // The first range that ends at or after `start` (it may touch or overlap).
        let i = self
            .0
            .partition_point(|&(s, l)| u64::from(s) + u64::from(l) < u64::from(start));
        let mut lo = start;
        let mut hi = u64::from(end);
        let mut j = i;
        while j < self.0.len() && u64::from(self.0[j].0) <= hi {
            let (s, l) = self.0[j];
            lo = lo.min(s);
            hi = hi.max(u64::from(s) + u64::from(l));
            j += 1;
        }
        // `hi` ≤ u32::MAX + 1 only if a range reached it; ranges are built from u32 ends.
        let len = (hi - u64::from(lo)).min(u64::from(u32::MAX)) as u32;
        self.0.splice(i..j, [(lo, len)]);
    }

    /// What `[0, len)` lacks: the complement, canonical.
    pub fn missing(&self, len: u32) -> ByteRanges {
        let mut out = Vec::new();
        let mut at: u32 = 0;
        for &(s, l) in &self.0 {
            if s >= len {
                break;
            }
            if s > at {
                out.push((at, s - at));
            }
            at = at.max(s.saturating_add(l).min(len));
        }
        if at < len {
            out.push((at, len - at));
        }
        ByteRanges(out)
    }

    /// Keeps at most `n` ranges: the first `n` (later ones are simply not claimed, so their bytes
    /// are asked for again).
    pub fn truncate(&mut self, n: usize) {
        self.0.truncate(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn insert_merges_and_missing_complements() {
        let mut r = ByteRanges::new();
        r.insert(10, 20);
        r.insert(30, 40);
        assert_eq!(r.as_slice(), &[(10, 10), (30, 10)]);
        r.insert(20, 30);
        assert_eq!(r.as_slice(), &[(10, 30)], "adjacent runs become one");
        r.insert(0, 5);
        r.insert(3, 12);
        assert_eq!(r.as_slice(), &[(0, 40)]);
        assert!(r.covers(40));
        assert!(!r.covers(41));
        assert_eq!(r.missing(50).as_slice(), &[(40, 10)]);
        let mut g = ByteRanges::new();
        g.insert(5, 10);
        assert_eq!(g.missing(20).as_slice(), &[(0, 5), (10, 10)]);
        assert_eq!(g.missing(7).as_slice(), &[(0, 5)]);
        assert_eq!(ByteRanges::new().missing(3).as_slice(), &[(0, 3)]);
    }

    #[test]
    fn canonical_form_is_checked() {
        assert!(ByteRanges::from_canonical(vec![(0, 5), (6, 1)], 10).is_some());
        assert!(ByteRanges::from_canonical(vec![(0, 5), (5, 1)], 10).is_none());
        assert!(ByteRanges::from_canonical(vec![(6, 1), (0, 5)], 10).is_none());
        assert!(ByteRanges::from_canonical(vec![(0, 0)], 10).is_none());
        assert!(ByteRanges::from_canonical(vec![(8, 3)], 10).is_none());
        assert!(ByteRanges::from_canonical(vec![(u32::MAX, 1)], u32::MAX).is_none());
    }

    proptest! {
        /// Inserting in any order gives the canonical union; held and missing partition the chunk.
        #[test]
        fn insert_is_a_union(spans in proptest::collection::vec((0u32..500, 1u32..60), 0..40)) {
            let len = 520u32;
            let mut r = ByteRanges::new();
            let mut want = vec![false; len as usize];
            for &(s, l) in &spans {
                let e = (s + l).min(len);
                r.insert(s, e);
                for b in &mut want[s as usize..e as usize] {
                    *b = true;
                }
            }
            prop_assert!(ByteRanges::from_canonical(r.as_slice().to_vec(), len).is_some());
            let mut got = vec![false; len as usize];
            for &(s, l) in r.as_slice() {
                for b in &mut got[s as usize..(s + l) as usize] {
                    *b = true;
                }
            }
            prop_assert_eq!(&got, &want);
            let m = r.missing(len);
            prop_assert_eq!(m.bytes() + r.bytes(), u64::from(len));
            for &(s, l) in m.as_slice() {
                prop_assert!(want[s as usize..(s + l) as usize].iter().all(|b| !b));
            }
        }
    }
}
