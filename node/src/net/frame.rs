//! Length-prefixed frames on a libp2p stream: `len u32 LE | body`. The reader states the largest
//! body it accepts before anything is read, so a peer cannot make us allocate more than that, and
//! the body buffer grows only as bytes actually arrive.
//!
//! Two clocks bound every read and write. The **progress timeout**: no byte for that long is an
//! error. And the **floor rate** ([`FLOOR_RATE`]): once a frame's first byte is here (a read) or
//! its write has begun, the bytes moved so far must keep up with the floor rate after a slack of
//! one progress timeout — a 1 MiB chunk may take 30 s + 256 s, not hours. Without the floor a peer
//! that sends one byte just inside each progress timeout ("trickling") would hold a request
//! forever. Time spent waiting on this node's own rate limiter does not count against the peer.
//! The floor is far below any link zdn targets (a satellite link of 1 Mbit/s moves 30 times as
//! much), so a slow honest peer is not caught by it; one below it ends with
//! [`FrameError::TooSlow`], which a fetch counts as misbehaviour.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::core::upgrade::NegotiationError;
use tokio::time::Instant;

use crate::net::rate_limit::RateLimiter;

/// Bytes moved per step; each step is one progress deadline and one token-bucket take.
pub(crate) const STEP: usize = 16 * 1024;
/// The slowest a frame may move, bytes per second (32 kbit/s), after its slack.
pub const FLOOR_RATE: u64 = 4 * 1024;

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("{what} frame of {len} bytes is over its {max}-byte limit")]
    TooLarge {
        what: &'static str,
        len: u64,
        max: usize,
    },
    #[error("{what}: no progress for {secs} s")]
    Stalled { what: &'static str, secs: u64 },
    #[error("{what}: {bytes} bytes in {secs} s, under the floor of {FLOOR_RATE} bytes/s")]
    TooSlow {
        what: &'static str,
        bytes: u64,
        secs: u64,
    },
    #[error("{what}: stream closed mid-frame")]
    Truncated { what: &'static str },
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: io::Error,
    },
}

impl FrameError {
    /// The peer does not speak the stream's protocol. Streams are negotiated lazily (see the
    /// swarm's configuration: the request goes with the protocol's name), so a refusal shows on
    /// the first read, as this error.
    pub fn unsupported_protocol(&self) -> bool {
        let FrameError::Io { source, .. } = self else {
            return false;
        };
        source
            .get_ref()
            .and_then(|e| e.downcast_ref::<NegotiationError>())
            .is_some_and(|e| matches!(e, NegotiationError::Failed))
    }
}

/// Options shared by a frame read or write.
#[derive(Clone, Debug)]
pub(crate) struct FrameIo {
    pub progress_timeout: Duration,
    pub limiter: Option<Arc<RateLimiter>>,
    /// Bytes per second the frame must keep up with after its slack; 0 = none.
    pub floor_rate: u64,
}

/// A frame's floor clock: since when it runs, the time spent on our own limiter (not the peer's
/// doing), and the bytes moved.
#[derive(Debug)]
struct Floor {
    start: Option<Instant>,
    excused: Duration,
    bytes: u64,
}

impl Floor {
    fn new(running: bool) -> Self {
        Floor {
            start: running.then(Instant::now),
            excused: Duration::ZERO,
            bytes: 0,
        }
    }

    fn moved(&mut self, n: usize) {
        self.start.get_or_insert_with(Instant::now);
        self.bytes += n as u64;
    }
}

impl FrameIo {
    /// Progress timeout `progress_timeout`, the floor rate, no rate limit.
    pub fn new(progress_timeout: Duration) -> Self {
        FrameIo {
            progress_timeout,
            limiter: None,
            floor_rate: FLOOR_RATE,
        }
    }

    pub fn with_limiter(mut self, limiter: Option<Arc<RateLimiter>>) -> Self {
        self.limiter = limiter;
        self
    }

    /// The latest moment the next byte may come before the frame is under the floor.
    fn floor_deadline(&self, f: &Floor) -> Option<Instant> {
        let start = f.start?;
        if self.floor_rate == 0 {
            return None;
        }
        let earned = Duration::from_secs_f64(f.bytes as f64 / self.floor_rate as f64);
        Some(start + f.excused + self.progress_timeout + earned)
    }

    async fn step<T>(
        &self,
        what: &'static str,
        floor: &Floor,
        f: impl std::future::Future<Output = io::Result<T>>,
    ) -> Result<T, FrameError> {
        let progress = Instant::now() + self.progress_timeout;
        let (deadline, slow) = match self.floor_deadline(floor) {
            Some(d) if d < progress => (d, true),
            _ => (progress, false),
        };
        match tokio::time::timeout_at(deadline, f).await {
            Err(_) if slow => Err(FrameError::TooSlow {
                what,
                bytes: floor.bytes,
                secs: floor.start.map_or(0, |s| s.elapsed().as_secs()),
            }),
            Err(_) => Err(FrameError::Stalled {
                what,
                secs: self.progress_timeout.as_secs(),
            }),
            Ok(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
                Err(FrameError::Truncated { what })
            }
            Ok(Err(source)) => Err(FrameError::Io { what, source }),
            Ok(Ok(v)) => Ok(v),
        }
    }

    async fn take(&self, floor: &mut Floor, bytes: usize) {
        if let Some(l) = &self.limiter {
            let t = Instant::now();
            l.take(bytes as u64).await;
            floor.excused += t.elapsed();
        }
    }

    /// Reads one frame whose body is at most `max` bytes. `on_bytes` sees every body byte count as
    /// it arrives (transfer accounting).
    pub async fn read<S: AsyncRead + Unpin>(
        &self,
        s: &mut S,
        what: &'static str,
        max: usize,
        on_bytes: &mut (dyn FnMut(usize) + Send),
    ) -> Result<Vec<u8>, FrameError> {
        self.read_after(s, what, max, None, on_bytes).await
    }

    /// [`Self::read`], where the first byte may take up to `idle` (a stream between requests)
    /// instead of the progress timeout.
    pub async fn read_after<S: AsyncRead + Unpin>(
        &self,
        s: &mut S,
        what: &'static str,
        max: usize,
        idle: Option<Duration>,
        on_bytes: &mut (dyn FnMut(usize) + Send),
    ) -> Result<Vec<u8>, FrameError> {
        let mut floor = Floor::new(false);
        let mut len = [0u8; 4];
        let first = match idle {
            Some(idle) => FrameIo {
                progress_timeout: idle,
                ..self.clone()
            },
            None => self.clone(),
        };
        first
            .step(what, &floor, s.read_exact(&mut len[..1]))
            .await?;
        floor.moved(1);
        self.step(what, &floor, s.read_exact(&mut len[1..])).await?;
        floor.moved(3);
        let len = u32::from_le_bytes(len);
        if len as u64 > max as u64 {
            return Err(FrameError::TooLarge {
                what,
                len: len.into(),
                max,
            });
        }
        let len = len as usize;
        let mut body = Vec::with_capacity(len.min(STEP));
        let mut buf = vec![0u8; STEP.min(len.max(1))];
        while body.len() < len {
            let want = (len - body.len()).min(STEP);
            self.take(&mut floor, want).await;
            let n = self.step(what, &floor, s.read(&mut buf[..want])).await?;
            if n == 0 {
                return Err(FrameError::Truncated { what });
            }
            body.extend_from_slice(&buf[..n]);
            floor.moved(n);
            on_bytes(n);
        }
        Ok(body)
    }

    /// Writes one frame and flushes it.
    pub async fn write<S: AsyncWrite + Unpin>(
        &self,
        s: &mut S,
        what: &'static str,
        body: &[u8],
    ) -> Result<(), FrameError> {
        self.write_parts(s, what, &[body]).await
    }

    /// Writes one frame whose body is `parts` one after another (a header and a shared buffer,
    /// without copying them into one), and flushes it.
    pub async fn write_parts<S: AsyncWrite + Unpin>(
        &self,
        s: &mut S,
        what: &'static str,
        parts: &[&[u8]],
    ) -> Result<(), FrameError> {
        let total: usize = parts.iter().map(|p| p.len()).sum();
        let len = u32::try_from(total).map_err(|_| FrameError::TooLarge {
            what,
            len: total as u64,
            max: u32::MAX as usize,
        })?;
        let mut floor = Floor::new(true);
        self.step(what, &floor, s.write_all(&len.to_le_bytes()))
            .await?;
        floor.moved(4);
        for piece in parts.iter().flat_map(|p| p.chunks(STEP)) {
            self.take(&mut floor, piece.len()).await;
            self.step(what, &floor, s.write_all(piece)).await?;
            floor.moved(piece.len());
        }
        self.step(what, &floor, s.flush()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::io::Cursor;

    fn io() -> FrameIo {
        FrameIo::new(Duration::from_secs(5))
    }

    #[tokio::test]
    async fn round_trip_and_accounting() {
        let body: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
        let mut wire = Cursor::new(Vec::new());
        io().write(&mut wire, "test", &body).await.unwrap();
        let mut r = Cursor::new(wire.into_inner());
        let mut seen = 0usize;
        let got = io()
            .read(&mut r, "test", body.len(), &mut |n| seen += n)
            .await
            .unwrap();
        assert_eq!(got, body);
        assert_eq!(seen, body.len());
    }

    #[tokio::test]
    async fn cap_checked_before_reading_body() {
        let mut wire = Vec::new();
        wire.extend_from_slice(&u32::MAX.to_le_bytes());
        let err = io()
            .read(&mut Cursor::new(wire), "test", 1024, &mut |_| {})
            .await
            .unwrap_err();
        assert!(
            matches!(err, FrameError::TooLarge { len, max: 1024, .. } if len == u32::MAX as u64)
        );
    }

    #[tokio::test]
    async fn truncated_body_is_an_error() {
        let mut wire = Vec::new();
        wire.extend_from_slice(&10u32.to_le_bytes());
        wire.extend_from_slice(b"short");
        let err = io()
            .read(&mut Cursor::new(wire), "test", 1024, &mut |_| {})
            .await
            .unwrap_err();
        assert!(matches!(err, FrameError::Truncated { .. }), "{err}");
    }

    #[tokio::test]
    async fn empty_body() {
        let mut wire = Cursor::new(Vec::new());
        io().write(&mut wire, "test", &[]).await.unwrap();
        let got = io()
            .read(&mut Cursor::new(wire.into_inner()), "test", 0, &mut |_| {})
            .await
            .unwrap();
        assert!(got.is_empty());
    }

    /// A reader that gives a 1 MiB length, then one body byte every `gap`.
    struct Trickle {
        header: Vec<u8>,
        gap: Duration,
        sleep: std::pin::Pin<Box<tokio::time::Sleep>>,
    }

    impl AsyncRead for Trickle {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &mut [u8],
        ) -> std::task::Poll<io::Result<usize>> {
            use std::future::Future;
            use std::task::Poll;
            if !self.header.is_empty() {
                let n = self.header.len().min(buf.len());
                buf[..n].copy_from_slice(&self.header[..n]);
                self.header.drain(..n);
                return Poll::Ready(Ok(n));
            }
            match self.sleep.as_mut().poll(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(()) => {
                    let next = Instant::now() + self.gap;
                    self.sleep.as_mut().reset(next);
                    buf[0] = 0;
                    Poll::Ready(Ok(1))
                }
            }
        }
    }

    /// A peer that sends a byte just inside every progress timeout is cut off by the floor, a
    /// little after its slack (one progress timeout) — not after the hours the 1 MiB would take.
    #[tokio::test]
    async fn a_trickle_is_cut_off_by_the_floor() {
        let gap = Duration::from_millis(800);
        let mut r = Trickle {
            header: (1u32 << 20).to_le_bytes().to_vec(),
            gap,
            sleep: Box::pin(tokio::time::sleep(gap)),
        };
        let t0 = Instant::now();
        let err = FrameIo::new(Duration::from_secs(1))
            .read(&mut r, "test", 2 << 20, &mut |_| {})
            .await
            .unwrap_err();
        assert!(matches!(err, FrameError::TooSlow { .. }), "{err}");
        assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    }
}
