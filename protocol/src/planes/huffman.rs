//! Canonical Huffman coding, length-limited to [`MAX_CODE_LEN`] bits, of values split into a coded
//! symbol (their top bits) and `r` raw low bits written after each code.
//!
//! A *section* codes `m` values of `a + r` bits each (symbol alphabet `2^a`, `a ≤ 12`):
//!
//! ```text
//! n_runs u16 · n_runs × (start u16 · count u16 · ⌈count/2⌉ bytes of 4-bit code lengths, low nibble first)
//! · 4 × u32 stream lengths · the 4 streams
//! ```
//!
//! Stream `j < 3` codes values `[j·q, (j+1)·q)` with `q = ⌊m/4⌋`, stream 3 codes `[3q, m)`. Bits are
//! packed least significant first; each value is its code (first code bit first, i.e. the canonical
//! code bit-reversed) then its `r` raw bits (bit 0 first). A stream ends at the byte holding its last
//! bit, and the unused high bits of that byte are zero. Code lengths must form a *complete* prefix
//! code (Kraft sum exactly 1): the decoding table then has no holes.
//!
//! The decoder is table-driven: one lookup of the next 12 bits gives symbol and length; it refills a
//! 64-bit buffer without branches and runs the four streams interleaved, so their dependency chains
//! overlap.

use super::format::Cursor;
use super::PlanesError;

/// Longest code.
pub(crate) const MAX_CODE_LEN: u32 = 12;
/// Widest symbol: an alphabet is at most `2^MAX_SYMBOL_BITS` symbols.
pub(crate) const MAX_SYMBOL_BITS: u32 = 12;
/// Streams per section.
pub(crate) const STREAMS: usize = 4;
const TABLE_SIZE: usize = 1 << MAX_CODE_LEN;
/// Start a new run of lengths, rather than write zero lengths, past this many unused symbols.
const RUN_GAP: usize = 8;

/// Code lengths (0 = unused symbol) for symbol `counts`: a complete prefix code, no code longer than
/// [`MAX_CODE_LEN`]. `None` when fewer than two symbols occur (nothing to code) or more than the
/// table can hold. Deterministic: ties are broken by symbol.
pub(crate) fn code_lengths(counts: &[u64]) -> Option<Vec<u8>> {
    let mut leaves: Vec<(u64, usize)> = counts
        .iter()
        .enumerate()
        .filter(|&(_, &c)| c > 0)
        .map(|(s, &c)| (c, s))
        .collect();
    let n = leaves.len();
    if !(2..=TABLE_SIZE).contains(&n) {
        return None;
    }
    leaves.sort_unstable();

    // Two-queue Huffman: leaves in ascending order, internal nodes in creation order (their weights
    // do not decrease); on equal weights the leaf goes first.
    let total = 2 * n - 1;
    let mut weight: Vec<u64> = leaves.iter().map(|l| l.0).collect();
    let mut parent = vec![0usize; total];
    let (mut leaf, mut node) = (0usize, n);
    for k in n..total {
        let mut pick = || {
            let take_leaf = leaf < n && (node >= k || weight[leaf] <= weight[node]);
            if take_leaf {
                leaf += 1;
                leaf - 1
            } else {
                node += 1;
                node - 1
            }
        };
        let a = pick();
        let b = pick();
        parent[a] = k;
        parent[b] = k;
        weight.push(weight[a].saturating_add(weight[b]));
    }
    let mut depth = vec![0u32; total];
    for i in (0..total - 1).rev() {
        depth[i] = depth[parent[i]] + 1;
    }

    // Limit the lengths: clamp, then lengthen the least frequent codes below the limit until the
    // Kraft sum fits, then shorten the most frequent codes that fit the slack until it is exact.
    let max = MAX_CODE_LEN;
    let target = 1u64 << max;
    let mut len: Vec<u32> = depth[..n].iter().map(|&d| d.min(max)).collect();
    let mut kraft: u64 = len.iter().map(|&l| 1u64 << (max - l)).sum();
    let mut p = 0;
    while kraft > target {
        let l = len.get_mut(p)?;
        if *l >= max {
            p += 1;
            continue;
        }
        *l += 1;
        kraft -= 1u64 << (max - *l);
    }
    while kraft < target {
        let slack = target - kraft;
        let l = len
            .iter_mut()
            .rev()
            .find(|l| **l > 1 && (1u64 << (max - **l)) <= slack)?;
        kraft += 1u64 << (max - *l);
        *l -= 1;
    }

    let mut out = vec![0u8; counts.len()];
    for (&(_, sym), &l) in leaves.iter().zip(&len) {
        out[sym] = l as u8;
    }
    Some(out)
}

/// Σ 2^(MAX_CODE_LEN − l) over the used symbols: `2^MAX_CODE_LEN` for a complete code.
fn kraft_sum(lengths: &[u8]) -> u64 {
    lengths
        .iter()
        .filter(|&&l| l > 0 && u32::from(l) <= MAX_CODE_LEN)
        .map(|&l| 1u64 << (MAX_CODE_LEN - u32::from(l)))
        .sum()
}

/// Canonical codes (in increasing (length, symbol) order), bit-reversed for least-significant-first
/// packing. `lengths` must be a valid complete code.
fn reversed_codes(lengths: &[u8]) -> Vec<u16> {
    let mut count = [0u32; MAX_CODE_LEN as usize + 1];
    for &l in lengths {
        if l > 0 {
            count[usize::from(l)] += 1;
        }
    }
    let mut next = [0u32; MAX_CODE_LEN as usize + 1];
    let mut code = 0u32;
    for bits in 1..=MAX_CODE_LEN as usize {
        code = (code + count[bits - 1]) << 1;
        next[bits] = code;
    }
    lengths
        .iter()
        .map(|&l| {
            if l == 0 {
                return 0;
            }
            let c = next[usize::from(l)];
            next[usize::from(l)] += 1;
            ((c as u16).reverse_bits()) >> (16 - u32::from(l))
        })
        .collect()
}

/// Bits the values with symbol `counts` take when coded with `lengths` (codes only, no raw bits).
pub(crate) fn coded_bits(counts: &[u64], lengths: &[u8]) -> u64 {
    counts
        .iter()
        .zip(lengths)
        .map(|(&c, &l)| c.saturating_mul(u64::from(l)))
        .fold(0u64, u64::saturating_add)
}

/// Groups the used symbols into runs (deterministically) for the section's length table.
fn runs(lengths: &[u8]) -> Vec<(usize, usize)> {
    let mut runs: Vec<(usize, usize)> = Vec::new();
    for (s, _) in lengths.iter().enumerate().filter(|(_, &l)| l > 0) {
        match runs.last_mut() {
            Some((_, end)) if s - *end < RUN_GAP => *end = s + 1,
            _ => runs.push((s, s + 1)),
        }
    }
    runs
}

/// Bytes the length table of `lengths` takes in a section.
pub(crate) fn table_bytes(lengths: &[u8]) -> usize {
    2 + runs(lengths)
        .iter()
        .map(|(s, e)| 4 + (e - s).div_ceil(2))
        .sum::<usize>()
}

fn write_lengths(lengths: &[u8], out: &mut Vec<u8>) {
    let runs = runs(lengths);
    out.extend_from_slice(&(runs.len() as u16).to_le_bytes());
    for (start, end) in runs {
        out.extend_from_slice(&(start as u16).to_le_bytes());
        out.extend_from_slice(&((end - start) as u16).to_le_bytes());
        for pair in lengths[start..end].chunks(2) {
            let hi = pair.get(1).copied().unwrap_or(0);
            out.push(pair[0] | (hi << 4));
        }
    }
}

fn lengths_err(block: u64, problem: &'static str) -> PlanesError {
    PlanesError::CodeLengths { block, problem }
}

fn read_lengths(cur: &mut Cursor<'_>, alphabet: usize, block: u64) -> Result<Vec<u8>, PlanesError> {
    let n_runs = usize::from(cur.u16("code length runs")?);
    if n_runs == 0 || n_runs > alphabet {
        return Err(lengths_err(block, "run count is 0 or exceeds the alphabet"));
    }
    let mut lengths = vec![0u8; alphabet];
    let mut free = 0usize;
    for _ in 0..n_runs {
        let start = usize::from(cur.u16("run start")?);
        let count = usize::from(cur.u16("run length")?);
        if count == 0 || start < free || start + count > alphabet {
            return Err(lengths_err(
                block,
                "run is empty, out of order or past the alphabet",
            ));
        }
        let nibbles = cur.bytes(count.div_ceil(2), "code lengths")?;
        for (j, l) in lengths[start..start + count].iter_mut().enumerate() {
            let v = (nibbles[j / 2] >> (4 * (j % 2))) & 15;
            if u32::from(v) > MAX_CODE_LEN {
                return Err(lengths_err(block, "code length exceeds 12"));
            }
            *l = v;
        }
        if count % 2 == 1 && nibbles[count / 2] >> 4 != 0 {
            return Err(lengths_err(block, "padding nibble is not zero"));
        }
        free = start + count;
    }
    if kraft_sum(&lengths) != 1u64 << MAX_CODE_LEN {
        return Err(lengths_err(
            block,
            "code lengths do not form a complete prefix code",
        ));
    }
    Ok(lengths)
}

/// Least-significant-first bit packer writing into a slice: bits gather in a 64-bit accumulator,
/// and each [`SliceWriter::flush`] stores all 8 of its bytes at the write position and advances it
/// by the whole bytes gathered (no branch, no capacity check). The slice needs 8 bytes of room
/// past the last byte kept; the bytes past [`SliceWriter::finish`]'s length are scratch.
struct SliceWriter<'a> {
    dst: &'a mut [u8],
    pos: usize,
    acc: u64,
    n: u32,
}

impl<'a> SliceWriter<'a> {
    fn new(dst: &'a mut [u8]) -> Self {
        SliceWriter {
            dst,
            pos: 0,
            acc: 0,
            n: 0,
        }
    }

    /// Adds the low `count` bits of `bits` (the others zero); at most 56 bits may gather between
    /// two flushes (a flush leaves at most 7).
    #[inline(always)]
    fn put(&mut self, bits: u64, count: u32) {
        self.acc |= bits << self.n;
        self.n += count;
    }

    #[inline(always)]
    fn flush(&mut self) {
        self.dst[self.pos..self.pos + 8].copy_from_slice(&self.acc.to_le_bytes());
        let whole = self.n >> 3;
        self.pos += whole as usize;
        // whole ≤ 7: fewer than 64 bits gathered.
        self.acc >>= 8 * whole;
        self.n &= 7;
    }

    /// The number of bytes written: the last partial byte included (zero-padded).
    fn finish(mut self) -> usize {
        self.flush();
        self.pos + usize::from(self.n > 0)
    }
}

/// Value ranges of the streams of a section of `m` values.
pub(crate) fn stream_bounds(m: usize) -> [usize; STREAMS + 1] {
    let q = m / STREAMS;
    [0, q, 2 * q, 3 * q, m]
}

/// Bytes of a section with code `lengths` whose streams hold `stream_bits` bits each (codes and raw
/// bits): exactly what [`encode_section`] appends.
pub(crate) fn section_len(lengths: &[u8], stream_bits: &[u64; STREAMS]) -> usize {
    table_bytes(lengths)
        + 4 * STREAMS
        + stream_bits
            .iter()
            .map(|&b| b.div_ceil(8) as usize)
            .sum::<usize>()
}

/// Appends a section coding the values of `bytes` (each `width` ≤ 4 bytes, little-endian): symbol
/// `v >> r` with `lengths`, then the `r ≤ 31` low bits raw. Every symbol that occurs must have a code.
pub(crate) fn encode_section(
    lengths: &[u8],
    bytes: &[u8],
    width: usize,
    r: u32,
    out: &mut Vec<u8>,
) {
    write_lengths(lengths, out);
    let m = bytes.len() / width.max(1);
    // The stream lengths go before the streams: reserve them, fill them in after.
    let lens_at = out.len();
    out.extend_from_slice(&[0u8; 4 * STREAMS]);
    let codes = reversed_codes(lengths);
    // Code and length of each symbol in one word: `code | len << 16`.
    let table: Vec<u32> = codes
        .iter()
        .zip(lengths)
        .map(|(&c, &l)| u32::from(c) | (u32::from(l) << 16))
        .collect();
    let bounds = stream_bounds(m);
    for (j, w) in bounds.windows(2).enumerate() {
        let from = out.len();
        let values = &bytes[w[0] * width..w[1] * width];
        // At most 12 code bits and r raw bits per value, and the writer's 8 bytes of room.
        let most = (values.len() / width.max(1)) * (MAX_CODE_LEN + r) as usize / 8 + 1;
        out.resize(from + most + 8, 0);
        let len = match width {
            1 => encode_stream::<1>(&table, values, r, &mut out[from..]),
            2 => encode_stream::<2>(&table, values, r, &mut out[from..]),
            _ => encode_stream::<4>(&table, values, r, &mut out[from..]),
        };
        out.truncate(from + len);
        out[lens_at + 4 * j..lens_at + 4 * j + 4].copy_from_slice(&(len as u32).to_le_bytes());
    }
}

/// Writes one stream into `dst` (room for every value's code and raw bits, and 8 bytes more):
/// each value's code, then its `r` raw bits. Returns its length in bytes.
fn encode_stream<const B: usize>(table: &[u32], values: &[u8], r: u32, dst: &mut [u8]) -> usize {
    let mask = (1u64 << r) - 1;
    let mut bw = SliceWriter::new(dst);
    let code = |v: u32| {
        let e = table[(v >> r) as usize];
        (u64::from(e & 0xffff), e >> 16)
    };
    // Read in the value's own width: a 4-byte load of a copy made by narrower stores stalls on
    // store forwarding (it was most of this loop's time).
    let value = |c: &[u8]| match B {
        1 => u32::from(c[0]),
        2 => u32::from(u16::from_le_bytes([c[0], c[1]])),
        _ => u32::from_le_bytes([c[0], c[1], c[2], c[3]]),
    };
    if B <= 2 {
        // Code (≤ 12 bits) and raw bits (< 16) in one put of ≤ 27 bits; two per flush.
        let mut pairs = values.chunks_exact(2 * B);
        for p in pairs.by_ref() {
            for c in p.chunks_exact(B) {
                let v = value(c);
                let (bits, len) = code(v);
                bw.put(bits | ((u64::from(v) & mask) << len), len + r);
            }
            bw.flush();
        }
        for c in pairs.remainder().chunks_exact(B) {
            let v = value(c);
            let (bits, len) = code(v);
            bw.put(bits | ((u64::from(v) & mask) << len), len + r);
        }
    } else {
        // Code and up to 31 raw bits: ≤ 43 bits, one value per flush.
        for c in values.chunks_exact(B) {
            let v = value(c);
            let (bits, len) = code(v);
            bw.put(bits, len);
            bw.put(u64::from(v) & mask, r);
            bw.flush();
        }
    }
    bw.finish()
}

/// A parsed section: its decoding table and streams.
#[derive(Debug)]
pub(crate) struct Section<'a> {
    /// Entry for the next 12 bits of a stream: `symbol << 4 | code length`.
    table: Box<[u16; TABLE_SIZE]>,
    /// The four streams, back to back; stream `j` is `data[starts[j]..starts[j + 1]]`.
    data: &'a [u8],
    starts: [usize; STREAMS + 1],
}

/// Reads a section over an alphabet of `2^alphabet_bits` symbols. Checks the code lengths (complete
/// code, none over 12) and that the streams are present; not yet their contents.
pub(crate) fn parse_section<'a>(
    cur: &mut Cursor<'a>,
    alphabet_bits: u32,
    block: u64,
) -> Result<Section<'a>, PlanesError> {
    let lengths = read_lengths(cur, 1usize << alphabet_bits, block)?;
    let codes = reversed_codes(&lengths);
    let mut table = Box::new([0u16; TABLE_SIZE]);
    for (sym, (&l, &code)) in lengths.iter().zip(&codes).enumerate() {
        if l == 0 {
            continue;
        }
        let entry = ((sym as u16) << 4) | u16::from(l);
        let mut idx = usize::from(code);
        while idx < TABLE_SIZE {
            table[idx] = entry;
            idx += 1 << l;
        }
    }
    let mut starts = [0usize; STREAMS + 1];
    for j in 0..STREAMS {
        let len = cur.u32("stream length")? as usize;
        starts[j + 1] = starts[j].checked_add(len).ok_or(PlanesError::Truncated {
            what: "streams",
            need: usize::MAX,
            left: cur.remaining(),
        })?;
    }
    let data = cur.bytes(starts[STREAMS], "streams")?;
    Ok(Section {
        table,
        data,
        starts,
    })
}

/// 8 bytes of `data` from `pos`, little-endian, zeros past the end.
#[inline(always)]
fn load(data: &[u8], pos: usize) -> u64 {
    match data.get(pos..pos.saturating_add(8)) {
        Some(b) => <[u8; 8]>::try_from(b).map_or(0, u64::from_le_bytes),
        None => load_tail(data, pos),
    }
}

#[cold]
fn load_tail(data: &[u8], pos: usize) -> u64 {
    let mut a = [0u8; 8];
    if let Some(rest) = data.get(pos..) {
        let k = rest.len().min(8);
        a[..k].copy_from_slice(&rest[..k]);
    }
    u64::from_le_bytes(a)
}

/// One stream being decoded, from the section's `data` (reading past the stream's end into the next
/// stream is harmless: [`Reader::finish`] refuses a stream whose codes used those bits). `buf` holds
/// `cnt` unread bits (and possibly more of the following bits, which the next refill ORs in again);
/// `pos` is the next byte to load.
#[derive(Clone, Copy)]
struct Reader {
    pos: usize,
    buf: u64,
    cnt: u32,
}

impl Reader {
    fn new(start: usize) -> Self {
        Reader {
            pos: start,
            buf: 0,
            cnt: 0,
        }
    }

    /// Tops the buffer up to at least 56 bits.
    #[inline(always)]
    fn refill(&mut self, data: &[u8]) {
        self.buf |= load(data, self.pos) << self.cnt;
        self.pos += ((63 - self.cnt) >> 3) as usize;
        self.cnt |= 56;
    }

    /// Decodes one value from the buffer, which must hold at least `MAX_CODE_LEN + r` bits.
    #[inline(always)]
    fn take(&mut self, table: &[u16; TABLE_SIZE], r: u32, rmask: u64) -> u32 {
        let e = table[(self.buf as usize) & (TABLE_SIZE - 1)];
        let len = u32::from(e & 15);
        let bits = self.buf >> len;
        self.buf = bits >> r;
        self.cnt -= len + r;
        (u32::from(e >> 4) << r) | (bits & rmask) as u32
    }

    /// Refills, then decodes `out.len() / B` values (at most `K`, with `K·(MAX_CODE_LEN + r) ≤ 56`).
    #[inline(always)]
    fn run<const B: usize>(&mut self, out: &mut [u8], c: &Ctx<'_>) {
        self.refill(c.data);
        for o in out.chunks_exact_mut(B) {
            o.copy_from_slice(&self.take(c.table, c.r, c.rmask).to_le_bytes()[..B]);
        }
    }

    /// The stream `data[start..end]` must end exactly where its last value does, with zero padding
    /// bits.
    fn finish(
        &self,
        data: &[u8],
        start: usize,
        end: usize,
        block: u64,
        stream: usize,
    ) -> Result<(), PlanesError> {
        let err = |problem| PlanesError::Stream {
            block,
            stream,
            problem,
        };
        let consumed = ((self.pos - start) as u64 * 8).saturating_sub(u64::from(self.cnt));
        let len = (end - start) as u64;
        if consumed > len * 8 {
            return Err(err("codes run past the end of the stream"));
        }
        if consumed.div_ceil(8) != len {
            return Err(err("stream has bytes after its last value"));
        }
        let used = (consumed % 8) as u32;
        let last = end.checked_sub(1).and_then(|i| data.get(i));
        if used != 0 && last.is_some_and(|&b| b >> used != 0) {
            return Err(err("padding bits after the last value are not zero"));
        }
        Ok(())
    }
}

/// What every step of a section's decoder reads.
struct Ctx<'a> {
    data: &'a [u8],
    table: &'a [u16; TABLE_SIZE],
    r: u32,
    rmask: u64,
}

/// Decodes `a.len() / B` values from `ra` into `a` and as many from `rb` into `b` (same length),
/// alternating between the two streams.
#[inline(always)]
fn pair<const B: usize, const K: usize>(
    ra: &mut Reader,
    a: &mut [u8],
    rb: &mut Reader,
    b: &mut [u8],
    c: &Ctx<'_>,
) {
    let step = B * K;
    let (mut ca, mut cb) = (a.chunks_exact_mut(step), b.chunks_exact_mut(step));
    for (x, y) in (&mut ca).zip(&mut cb) {
        ra.run::<B>(x, c);
        rb.run::<B>(y, c);
    }
    for (rd, rest) in [(ra, ca.into_remainder()), (rb, cb.into_remainder())] {
        for o in rest.chunks_exact_mut(B) {
            rd.run::<B>(o, c);
        }
    }
}

/// Decodes a section into `out`: `out.len() / B` values of `B` bytes (1, 2 or 4) with `r` raw bits
/// each. The caller has checked `r ≤ 31` and that symbol and raw bits fit `B` bytes.
pub(crate) fn decode_section<const B: usize>(
    sec: &Section<'_>,
    r: u32,
    out: &mut [u8],
    block: u64,
) -> Result<(), PlanesError> {
    // As many values per refill as 56 bits always hold.
    match 56 / (MAX_CODE_LEN + r) {
        0 | 1 => decode_streams::<B, 1>(sec, r, out, block),
        2 => decode_streams::<B, 2>(sec, r, out, block),
        _ => decode_streams::<B, 3>(sec, r, out, block),
    }
}

fn decode_streams<const B: usize, const K: usize>(
    sec: &Section<'_>,
    r: u32,
    out: &mut [u8],
    block: u64,
) -> Result<(), PlanesError> {
    let m = out.len() / B;
    let [_, b1, b2, b3, _] = stream_bounds(m);
    let (o0, rest) = out.split_at_mut(b1 * B);
    let (o1, rest) = rest.split_at_mut((b2 - b1) * B);
    let (o2, o3) = rest.split_at_mut((b3 - b2) * B);
    let (o3a, o3b) = o3.split_at_mut((b3 - b2) * B);
    let c = Ctx {
        data: sec.data,
        table: &sec.table,
        r,
        rmask: (1u64 << r) - 1,
    };
    let st = sec.starts;
    let (mut r0, mut r1, mut r2, mut r3) = (
        Reader::new(st[0]),
        Reader::new(st[1]),
        Reader::new(st[2]),
        Reader::new(st[3]),
    );
    // Two streams at a time: two independent dependency chains, and few enough live values to stay
    // in registers.
    pair::<B, K>(&mut r0, o0, &mut r1, o1, &c);
    pair::<B, K>(&mut r2, o2, &mut r3, o3a, &c);
    for o in o3b.chunks_exact_mut(B) {
        r3.run::<B>(o, &c);
    }
    for (j, rd) in [r0, r1, r2, r3].iter().enumerate() {
        rd.finish(sec.data, st[j], st[j + 1], block, j)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
