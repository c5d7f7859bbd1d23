//! Length-prefixed frames on a libp2p stream: `len u32 LE | body`. The reader states the largest
//! body it accepts before anything is read, so a peer cannot make us allocate more than that, and
//! the body buffer grows only as bytes actually arrive. Every read and write is bounded by a
//! progress timeout (no bytes for that long ⇒ error), never by a whole-frame deadline: a 1 MiB
//! chunk takes 8 s on a 1 Mbps satellite link, and a whole-response timeout would have to be huge
//! or would fail honest transfers.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::net::rate_limit::RateLimiter;

/// Bytes moved per step; each step is one progress deadline and one token-bucket take.
pub(crate) const STEP: usize = 16 * 1024;

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
    #[error("{what}: stream closed mid-frame")]
    Truncated { what: &'static str },
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: io::Error,
    },
}

/// Options shared by a frame read or write.
#[derive(Clone, Debug)]
pub(crate) struct FrameIo {
    pub progress_timeout: Duration,
    pub limiter: Option<Arc<RateLimiter>>,
}

impl FrameIo {
    async fn step<T>(
        &self,
        what: &'static str,
        f: impl std::future::Future<Output = io::Result<T>>,
    ) -> Result<T, FrameError> {
        match tokio::time::timeout(self.progress_timeout, f).await {
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

    /// Reads one frame whose body is at most `max` bytes. `on_bytes` sees every body byte count as
    /// it arrives (transfer accounting).
    pub async fn read<S: AsyncRead + Unpin>(
        &self,
        s: &mut S,
        what: &'static str,
        max: usize,
        on_bytes: &mut (dyn FnMut(usize) + Send),
    ) -> Result<Vec<u8>, FrameError> {
        let mut len = [0u8; 4];
        self.step(what, s.read_exact(&mut len)).await?;
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
            if let Some(l) = &self.limiter {
                l.take(want as u64).await;
            }
            let n = self.step(what, s.read(&mut buf[..want])).await?;
            if n == 0 {
                return Err(FrameError::Truncated { what });
            }
            body.extend_from_slice(&buf[..n]);
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
        let len = u32::try_from(body.len()).map_err(|_| FrameError::TooLarge {
            what,
            len: body.len() as u64,
            max: u32::MAX as usize,
        })?;
        self.step(what, s.write_all(&len.to_le_bytes())).await?;
        for piece in body.chunks(STEP) {
            if let Some(l) = &self.limiter {
                l.take(piece.len() as u64).await;
            }
            self.step(what, s.write_all(piece)).await?;
        }
        self.step(what, s.flush()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::io::Cursor;

    fn io() -> FrameIo {
        FrameIo {
            progress_timeout: Duration::from_secs(5),
            limiter: None,
        }
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
}
