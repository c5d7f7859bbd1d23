//! The mutations: what an input is made of before a parser sees it.

/// xorshift64*: small, fast, deterministic from its seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform-ish in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}

/// Numbers that sit on the edges of length and count checks.
const INTERESTING: [u32; 12] = [
    0,
    1,
    2,
    7,
    8,
    31,
    32,
    255,
    256,
    0x7fff_ffff,
    0x8000_0000,
    u32::MAX,
];

/// Builds the next input into `out`: a corpus entry with 1-8 mutations, sometimes random bytes.
pub fn next_input(rng: &mut Rng, corpus: &[Vec<u8>], out: &mut Vec<u8>, max: usize) {
    out.clear();
    if corpus.is_empty() || rng.below(64) == 0 {
        let n = rng.below(256);
        out.extend((0..n).map(|_| rng.next_u64() as u8));
        return;
    }
    out.extend_from_slice(&corpus[rng.below(corpus.len())]);
    for _ in 0..=rng.below(8) {
        mutate(rng, corpus, out);
    }
    out.truncate(max);
}

fn mutate(rng: &mut Rng, corpus: &[Vec<u8>], b: &mut Vec<u8>) {
    let len = b.len();
    match rng.below(9) {
        0 if len > 0 => {
            let i = rng.below(len);
            b[i] ^= 1 << rng.below(8);
        }
        1 if len > 0 => {
            let i = rng.below(len);
            b[i] = [0, 1, 0x7f, 0x80, 0xff, rng.next_u64() as u8][rng.below(6)];
        }
        2 if len >= 4 => {
            let i = rng.below(len - 3);
            let v = INTERESTING[rng.below(INTERESTING.len())];
            let v = if rng.below(2) == 0 { v } else { v.swap_bytes() };
            b[i..i + 4].copy_from_slice(&v.to_le_bytes());
        }
        3 => {
            let i = rng.below(len + 1);
            let n = 1 + rng.below(16);
            let ins: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
            b.splice(i..i, ins);
        }
        4 if len > 0 => {
            let i = rng.below(len);
            let n = 1 + rng.below((len - i).min(64));
            b.drain(i..i + n);
        }
        5 if len > 0 => {
            let i = rng.below(len);
            let n = 1 + rng.below((len - i).min(64));
            let dup = b[i..i + n].to_vec();
            let at = rng.below(len + 1);
            b.splice(at..at, dup);
        }
        6 if !corpus.is_empty() => {
            // Splice: this input's head, another's tail.
            let other = &corpus[rng.below(corpus.len())];
            let cut = rng.below(len + 1);
            let from = rng.below(other.len() + 1);
            b.truncate(cut);
            b.extend_from_slice(&other[from..]);
        }
        7 if len > 0 => b.truncate(rng.below(len)),
        _ if len > 0 => {
            // A small number nudged: lengths and counts one off.
            let i = rng.below(len);
            b[i] = b[i].wrapping_add(if rng.below(2) == 0 { 1 } else { 255 });
        }
        _ => b.push(rng.next_u64() as u8),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_bounded() {
        let corpus = vec![vec![1u8; 100], vec![2u8; 10]];
        let (mut a, mut b) = (Rng::new(7), Rng::new(7));
        let (mut x, mut y) = (Vec::new(), Vec::new());
        for _ in 0..1000 {
            next_input(&mut a, &corpus, &mut x, 300);
            next_input(&mut b, &corpus, &mut y, 300);
            assert_eq!(x, y);
            assert!(x.len() <= 300);
        }
    }
}
