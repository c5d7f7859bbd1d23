#![allow(clippy::unwrap_used, clippy::expect_used)]
use super::*;
use proptest::prelude::*;

fn roundtrip(bytes: &[u8], width: usize, r: u32) {
    let a = (8 * width) as u32 - r;
    let mut counts = vec![0u64; 1 << a];
    for c in bytes.chunks_exact(width) {
        let mut v = [0u8; 4];
        v[..width].copy_from_slice(c);
        counts[(u32::from_le_bytes(v) >> r) as usize] += 1;
    }
    let Some(lengths) = code_lengths(&counts) else {
        return;
    };
    let mut enc = vec![0xa5];
    encode_section(&lengths, bytes, width, r, &mut enc);
    assert_eq!(enc[0], 0xa5, "appends");
    let enc = enc.split_off(1);
    assert_eq!(
        enc,
        reference_section(&lengths, bytes, width, r),
        "not the bytes of the reference encoder"
    );
    assert_eq!(
        enc.len(),
        section_len(&lengths, &stream_bits(&lengths, bytes, width, r))
    );
    assert_eq!(table_bytes(&lengths), {
        let mut t = Vec::new();
        write_lengths(&lengths, &mut t);
        t.len()
    });
    let mut cur = Cursor::new(&enc);
    let sec = parse_section(&mut cur, a, 0).unwrap();
    assert_eq!(cur.remaining(), 0);
    let mut out = vec![0u8; bytes.len() / width * width];
    match width {
        1 => decode_section::<1>(&sec, r, &mut out, 0),
        2 => decode_section::<2>(&sec, r, &mut out, 0),
        _ => decode_section::<4>(&sec, r, &mut out, 0),
    }
    .unwrap();
    assert_eq!(out, &bytes[..out.len()]);
}

#[test]
fn lengths_are_limited_and_complete() {
    // Fibonacci counts give a maximally deep unlimited tree.
    let mut counts = vec![0u64; 40];
    let (mut a, mut b) = (1u64, 1u64);
    for c in &mut counts {
        *c = a;
        (a, b) = (b, a + b);
    }
    let l = code_lengths(&counts).unwrap();
    assert!(l.iter().all(|&x| (1..=12).contains(&x)));
    assert_eq!(kraft_sum(&l), 4096);
    // The most frequent symbol gets the shortest code.
    assert_eq!(l[39], *l.iter().min().unwrap());
}

#[test]
fn degenerate_alphabets() {
    assert_eq!(code_lengths(&[0, 5, 0]), None);
    assert_eq!(code_lengths(&[0, 0]), None);
    assert_eq!(code_lengths(&[3, 3]), Some(vec![1, 1]));
    // A full 4096-symbol alphabet with equal counts: every code is 12 bits.
    let l = code_lengths(&[1u64; 4096]).unwrap();
    assert!(l.iter().all(|&x| x == 12));
}

#[test]
fn canonical_codes_are_prefix_free() {
    let l = [2u8, 1, 3, 3];
    let c = reversed_codes(&l);
    // canonical: sym1 = 0, sym0 = 10, sym2 = 110, sym3 = 111 (MSB first) → reversed
    assert_eq!(c, vec![0b01, 0b0, 0b011, 0b111]);
}

#[test]
fn incomplete_or_oversubscribed_tables_are_refused() {
    for lengths in [vec![1u8, 2], vec![1, 1, 1], vec![2, 2, 2]] {
        let mut enc = Vec::new();
        write_lengths(&lengths, &mut enc);
        let mut cur = Cursor::new(&enc);
        assert!(matches!(
            read_lengths(&mut cur, 4, 0),
            Err(PlanesError::CodeLengths { .. })
        ));
    }
}

#[test]
fn stream_end_checks() {
    let bytes: Vec<u8> = (0..100u8).map(|i| i % 7).collect();
    let mut counts = vec![0u64; 256];
    for &b in &bytes {
        counts[usize::from(b)] += 1;
    }
    let lengths = code_lengths(&counts).unwrap();
    let mut enc = Vec::new();
    encode_section(&lengths, &bytes, 1, 0, &mut enc);
    let sec = parse_section(&mut Cursor::new(&enc), 8, 0).unwrap();
    // One value fewer leaves stream 3 with unread bytes; one more runs past its end.
    let mut short = vec![0u8; 99];
    assert!(decode_section::<1>(&sec, 0, &mut short, 0).is_err());
    let mut long = vec![0u8; 104];
    assert!(decode_section::<1>(&sec, 0, &mut long, 0).is_err());
}

/// Bits of each stream of a section of `bytes` (codes and raw bits), counted value by value.
fn stream_bits(lengths: &[u8], bytes: &[u8], width: usize, r: u32) -> [u64; STREAMS] {
    let b = stream_bounds(bytes.len() / width);
    std::array::from_fn(|j| {
        bytes[b[j] * width..b[j + 1] * width]
            .chunks_exact(width)
            .map(|c| {
                let mut v = [0u8; 4];
                v[..width].copy_from_slice(c);
                u64::from(lengths[(u32::from_le_bytes(v) >> r) as usize]) + u64::from(r)
            })
            .sum()
    })
}

/// The section encoder as first written (one put per code and per raw field, each stream in its
/// own buffer): the reference the faster [`encode_section`] must match byte for byte.
fn reference_section(lengths: &[u8], bytes: &[u8], width: usize, r: u32) -> Vec<u8> {
    struct Bits {
        out: Vec<u8>,
        acc: u64,
        n: u32,
    }
    impl Bits {
        fn put(&mut self, bits: u64, count: u32) {
            self.acc |= bits << self.n;
            self.n += count;
            if self.n >= 32 {
                self.out.extend_from_slice(&(self.acc as u32).to_le_bytes());
                self.acc >>= 32;
                self.n -= 32;
            }
        }
        fn finish(mut self) -> Vec<u8> {
            let bytes = self.n.div_ceil(8) as usize;
            self.out.extend_from_slice(&self.acc.to_le_bytes()[..bytes]);
            self.out
        }
    }
    let mut out = Vec::new();
    write_lengths(lengths, &mut out);
    let codes = reversed_codes(lengths);
    let bounds = stream_bounds(bytes.len() / width);
    let mask = (1u64 << r) - 1;
    let streams: Vec<Vec<u8>> = bounds
        .windows(2)
        .map(|w| {
            let mut bw = Bits {
                out: Vec::new(),
                acc: 0,
                n: 0,
            };
            for c in bytes[w[0] * width..w[1] * width].chunks_exact(width) {
                let mut a = [0u8; 4];
                a[..width].copy_from_slice(c);
                let v = u32::from_le_bytes(a);
                let sym = (v >> r) as usize;
                bw.put(u64::from(codes[sym]), u32::from(lengths[sym]));
                bw.put(u64::from(v) & mask, r);
            }
            bw.finish()
        })
        .collect();
    for s in &streams {
        out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    }
    for s in &streams {
        out.extend_from_slice(s);
    }
    out
}

proptest! {
    #[test]
    fn sections_round_trip(
        bytes in proptest::collection::vec(any::<u8>(), 0..600),
        width in prop_oneof![Just(1usize), Just(2), Just(4)],
        skew in 0u32..8,
    ) {
        // Skew the distribution so codes of many lengths occur.
        let bytes: Vec<u8> = bytes.iter().map(|&b| b >> (skew % 8)).collect();
        let w = (8 * width) as u32;
        for r in [w.saturating_sub(12), w.saturating_sub(12) + 1, w - 1] {
            roundtrip(&bytes, width, r);
        }
    }

    #[test]
    fn limited_lengths_stay_complete(counts in proptest::collection::vec(0u64..1_000_000, 2..600)) {
        if let Some(l) = code_lengths(&counts) {
            prop_assert_eq!(kraft_sum(&l), 4096);
            for (c, x) in counts.iter().zip(&l) {
                prop_assert_eq!(*c > 0, *x > 0);
            }
        }
    }
}
