//! zdn's stream framing (`len u32 LE | body`), written again here so the adversary does not borrow
//! the node's own code: it is what goes on the wire that is under test.

use std::time::Duration;

use anyhow::{bail, Context};
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Writes one frame and flushes it.
pub async fn write<S: AsyncWrite + Unpin>(s: &mut S, body: &[u8]) -> anyhow::Result<()> {
    let len = u32::try_from(body.len()).context("frame too large")?;
    s.write_all(&len.to_le_bytes()).await?;
    s.write_all(body).await?;
    s.flush().await?;
    Ok(())
}

/// Reads one frame of at most `max` bytes within `within`.
pub async fn read<S: AsyncRead + Unpin>(
    s: &mut S,
    max: usize,
    within: Duration,
) -> anyhow::Result<Vec<u8>> {
    tokio::time::timeout(within, async {
        let mut len = [0u8; 4];
        s.read_exact(&mut len).await?;
        let len = u32::from_le_bytes(len) as usize;
        if len > max {
            bail!("frame of {len} bytes over {max}");
        }
        let mut body = vec![0u8; len];
        s.read_exact(&mut body).await?;
        Ok(body)
    })
    .await
    .context("no frame in time")?
}
