//! An add's chunks compressed on every core, window by window, in object order.
//!
//! A window of [`WINDOW`] chunks is compressed by as many workers as there are cores, each taking
//! the next chunk as it finishes one (chunks of one window differ in cost: a tensor's last chunk is
//! short, a norm vector is tiny). Compression runs on its own thread, one window ahead of the
//! caller, which hashes, releases and writes the previous window meanwhile. Each chunk's stored
//! bytes depend only on its own bytes, so the result is the same whatever the worker count, and it
//! is handed over in object order. At most three windows are alive at a time: the one being
//! written, one waiting, one being compressed.

use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::sync_channel;

use zdn_protocol::chunk::{self, ChunkRef};
use zdn_protocol::manifest::TensorEntry;
use zdn_protocol::DType;

/// Chunks compressed between two writes to the store: bounds memory to a few windows of chunks.
pub(super) const WINDOW: usize = 32;

pub(super) struct Compressed {
    pub r: ChunkRef,
    pub stored: Vec<u8>,
}

/// One window of an object: its chunk ranges, their bytes and their compressed chunks, in order.
pub(super) struct Window<'a> {
    pub ranges: &'a [Range<u64>],
    pub pieces: Vec<&'a [u8]>,
    pub compressed: Vec<Compressed>,
}

/// The bytes of a chunk range of the object (or why they cannot be had).
pub(super) type Slicer<'s, 'a, E> = &'s (dyn Fn(&Range<u64>) -> Result<&'a [u8], E> + Sync);

/// Tensors sorted by (offset, length), to find the one a chunk lies in by binary search.
pub(super) struct TensorSpans(Vec<(u64, u64, u8)>);

impl TensorSpans {
    pub(super) fn new(tensors: &[TensorEntry]) -> Self {
        let mut v: Vec<(u64, u64, u8)> =
            tensors.iter().map(|t| (t.offset, t.len, t.dtype)).collect();
        v.sort_unstable();
        TensorSpans(v)
    }

    /// The dtype of the tensor a chunk lies in, when it holds whole elements of one tensor (then a
    /// float tensor's chunk can use the planes codec).
    fn element_dtype(&self, r: &Range<u64>) -> Option<DType> {
        let i = self.0.partition_point(|t| t.0 <= r.start).checked_sub(1)?;
        let (offset, len, code) = self.0[i];
        if r.end > offset.saturating_add(len) {
            return None;
        }
        let dtype = DType::from_code(code)?;
        let size = dtype.size() as u64;
        ((r.start - offset).is_multiple_of(size) && (r.end - r.start).is_multiple_of(size))
            .then_some(dtype)
    }
}

fn compress_one(r: &Range<u64>, data: &[u8], level: i32, spans: &TensorSpans) -> Compressed {
    let (codec, stored, id) = chunk::encode_elements(data, level, spans.element_dtype(r));
    Compressed {
        r: ChunkRef {
            id,
            offset: r.start,
            // `chunk::plan` keeps every range ≤ MAX_CHUNK_SIZE.
            len: data.len() as u32,
            codec,
        },
        stored,
    }
}

/// Compresses one window on `workers` threads (this one among them); output in object order.
fn compress_window(
    ranges: &[Range<u64>],
    pieces: &[&[u8]],
    level: i32,
    spans: &TensorSpans,
    workers: usize,
) -> Vec<Compressed> {
    let next = AtomicUsize::new(0);
    let work = || {
        let mut done = Vec::new();
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let (Some(r), Some(d)) = (ranges.get(i), pieces.get(i)) else {
                return done;
            };
            done.push((i, compress_one(r, d, level, spans)));
        }
    };
    let helpers = workers.min(pieces.len()).saturating_sub(1);
    let mut all = std::thread::scope(|s| {
        let jobs: Vec<_> = (0..helpers).map(|_| s.spawn(work)).collect();
        let mut all = work();
        for j in jobs {
            all.extend(j.join().unwrap_or_else(|p| std::panic::resume_unwind(p)));
        }
        all
    });
    all.sort_unstable_by_key(|(i, _)| *i);
    all.into_iter().map(|(_, c)| c).collect()
}

/// Hands each window of `ranges` (the bytes of a range from `slice`), compressed, to `consume`, in
/// order, while the next window is compressed on `workers` threads. Stops at the first error of
/// `slice` or `consume`.
pub(super) fn compress_windows<'a, E: Send>(
    ranges: &'a [Range<u64>],
    slice: Slicer<'_, 'a, E>,
    level: i32,
    spans: &TensorSpans,
    workers: usize,
    consume: &mut dyn FnMut(Window<'a>) -> Result<(), E>,
) -> Result<(), E> {
    std::thread::scope(|s| {
        // One window waiting beside the one being compressed and the one being consumed.
        let (tx, rx) = sync_channel::<Result<Window<'a>, E>>(1);
        let producer = s.spawn(move || {
            for window in ranges.chunks(WINDOW) {
                let pieces = match window.iter().map(slice).collect::<Result<Vec<_>, E>>() {
                    Ok(p) => p,
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                };
                let compressed = compress_window(window, &pieces, level, spans, workers);
                let w = Window {
                    ranges: window,
                    pieces,
                    compressed,
                };
                if tx.send(Ok(w)).is_err() {
                    // The consumer stopped on an error.
                    return;
                }
            }
        });
        let mut result = Ok(());
        for w in rx.iter() {
            if let Err(e) = w.and_then(&mut *consume) {
                result = Err(e);
                break;
            }
        }
        // Unblocks a producer waiting to send, so that it stops.
        drop(rx);
        producer
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p));
        result
    })
}

/// Worker threads for compression: one per core.
pub(super) fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use zdn_protocol::Hash;

    /// An object of bf16 "tensors" and a few bytes between them, cut into chunks of uneven size.
    fn object() -> (Vec<u8>, Vec<TensorEntry>, Vec<Range<u64>>) {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut data = Vec::new();
        let mut tensors = Vec::new();
        for t in 0..5u64 {
            data.extend_from_slice(&[7u8; 10]);
            let offset = data.len() as u64;
            let n = 20_000 + 7_919 * t as usize;
            for _ in 0..n {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let u = ((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0;
                data.extend_from_slice(&(((u * 0.04).to_bits() >> 16) as u16).to_le_bytes());
            }
            tensors.push(TensorEntry {
                name: format!("t{t}"),
                dtype: DType::BF16.code(),
                shape: vec![n as u64],
                offset,
                len: 2 * n as u64,
            });
        }
        let cuts: Vec<u64> = tensors.iter().map(|t| t.offset).collect();
        let ranges = chunk::plan(data.len() as u64, &cuts, 3000).unwrap();
        (data, tensors, ranges)
    }

    fn run(workers: usize) -> (Vec<ChunkRef>, Hash) {
        let (data, tensors, ranges) = object();
        assert!(ranges.len() > 3 * WINDOW, "several windows");
        let spans = TensorSpans::new(&tensors);
        let slice = |r: &Range<u64>| -> Result<&[u8], String> {
            Ok(&data[r.start as usize..r.end as usize])
        };
        let mut refs = Vec::new();
        let mut stored = blake3::Hasher::new();
        compress_windows(&ranges, &slice, 3, &spans, workers, &mut |w| {
            assert_eq!(w.ranges.len(), w.compressed.len());
            for (c, piece) in w.compressed.iter().zip(&w.pieces) {
                assert_eq!(c.r.len as usize, piece.len());
                stored.update(&c.stored);
                refs.push(c.r.clone());
            }
            Ok(())
        })
        .unwrap();
        (refs, Hash::from(stored.finalize()))
    }

    #[test]
    fn any_worker_count_gives_the_same_chunks_in_order() {
        let (one, stored_one) = run(1);
        chunk::check_coverage(&one, object().0.len() as u64).unwrap();
        assert!(one.iter().any(|c| c.codec == chunk::Codec::Planes));
        for workers in [2, 3, 8] {
            let (many, stored_many) = run(workers);
            assert_eq!(many, one, "{workers} workers");
            assert_eq!(stored_many, stored_one, "{workers} workers");
        }
    }

    #[test]
    fn errors_stop_the_pipeline() {
        let (data, tensors, ranges) = object();
        let spans = TensorSpans::new(&tensors);
        // A slice error in the third window reaches the caller after two windows.
        let bad = ranges[2 * WINDOW + 1].clone();
        let slice = |r: &Range<u64>| -> Result<&[u8], String> {
            if *r == bad {
                return Err("bad range".into());
            }
            Ok(&data[r.start as usize..r.end as usize])
        };
        let mut seen = 0;
        let got = compress_windows(&ranges, &slice, 3, &spans, 2, &mut |_| {
            seen += 1;
            Ok(())
        });
        assert_eq!(got, Err("bad range".to_string()));
        assert_eq!(seen, 2);
        // An error of the consumer stops the producer and is returned.
        let slice = |r: &Range<u64>| -> Result<&[u8], String> {
            Ok(&data[r.start as usize..r.end as usize])
        };
        let mut seen = 0;
        let got = compress_windows(&ranges, &slice, 3, &spans, 2, &mut |_| {
            seen += 1;
            if seen == 2 {
                return Err("disk full".to_string());
            }
            Ok(())
        });
        assert_eq!(got, Err("disk full".to_string()));
        assert_eq!(seen, 2);
    }
}
