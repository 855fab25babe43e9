//! Length-prefixed frames: a 4-byte big-endian size, then that many bytes.
//!
//! The size is checked against the configured maximum before a single byte of the body is buffered,
//! so a hostile prefix such as 0x7fffffff costs nothing but a closed connection.

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Why a frame could not be read. Every variant ends the connection.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {size} bytes exceeds the maximum of {max}")]
    TooLarge { size: i64, max: usize },
    #[error("negative or empty frame size {0}")]
    InvalidSize(i32),
    #[error("connection closed in the middle of a frame")]
    Truncated,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Reads frames from a stream, reusing one buffer.
///
/// The buffer grows only as a frame's bytes arrive (at most [`READ_CHUNK`] ahead of them), so a client
/// that announces a large frame and sends nothing more pins no more than that. [`read_size`] and
/// [`read_body`] split a frame in two so the caller can wait (for memory, say) between them; both are
/// cancel-safe: what was read stays in the buffer.
///
/// [`read_size`]: FrameReader::read_size
/// [`read_body`]: FrameReader::read_body
pub struct FrameReader<R> {
    reader: R,
    buf: BytesMut,
    max_frame: usize,
}

/// How far ahead of the bytes received the buffer may grow: one socket read's worth.
pub const READ_CHUNK: usize = 64 * 1024;

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(reader: R, max_frame: usize) -> Self {
        Self {
            reader,
            buf: BytesMut::with_capacity(4096),
            max_frame,
        }
    }

    /// The next frame's body, or `None` on a clean end of stream between frames.
    pub async fn read_frame(&mut self) -> Result<Option<Bytes>, FrameError> {
        match self.read_size().await? {
            Some(size) => self.read_body(size).await.map(Some),
            None => Ok(None),
        }
    }

    /// Waits for the next frame's size prefix (checked against the cap) without consuming it; `None` on
    /// a clean end of stream between frames.
    pub async fn read_size(&mut self) -> Result<Option<usize>, FrameError> {
        while self.buf.len() < 4 {
            if self.fill(4).await? == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(FrameError::Truncated)
                };
            }
        }
        let size = i32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]);
        check_size(size, self.max_frame)?;
        Ok(Some(size as usize))
    }

    /// Reads the body of the frame whose size [`read_size`](Self::read_size) returned.
    pub async fn read_body(&mut self, size: usize) -> Result<Bytes, FrameError> {
        while self.buf.len() < 4 + size {
            if self.fill(4 + size).await? == 0 {
                return Err(FrameError::Truncated);
            }
        }
        self.buf.advance(4);
        Ok(self.buf.split_to(size).freeze())
    }

    /// Whether part of a frame has arrived (its size prefix or more).
    pub fn partial(&self) -> bool {
        !self.buf.is_empty()
    }

    /// One read into the buffer, growing it by at most READ_CHUNK towards `want` bytes in all.
    async fn fill(&mut self, want: usize) -> Result<usize, FrameError> {
        let free = self.buf.capacity() - self.buf.len();
        if free == 0 {
            let missing = want.saturating_sub(self.buf.len()).max(1);
            self.buf.reserve(missing.min(READ_CHUNK));
        }
        Ok(self.reader.read_buf(&mut self.buf).await?)
    }
}

/// Validates a frame size read from the wire against the cap.
pub fn check_size(size: i32, max_frame: usize) -> Result<(), FrameError> {
    if size <= 0 {
        return Err(FrameError::InvalidSize(size));
    }
    if size as usize > max_frame {
        return Err(FrameError::TooLarge {
            size: size as i64,
            max: max_frame,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn frames(input: &[u8], max: usize) -> Result<Vec<Bytes>, FrameError> {
        let mut r = FrameReader::new(input, max);
        let mut out = Vec::new();
        while let Some(f) = r.read_frame().await? {
            out.push(f);
        }
        Ok(out)
    }

    #[tokio::test]
    async fn reads_back_to_back_frames() {
        let input = [0, 0, 0, 2, b'a', b'b', 0, 0, 0, 1, b'c'];
        let got = frames(&input, 100).await.unwrap();
        assert_eq!(
            got,
            vec![Bytes::from_static(b"ab"), Bytes::from_static(b"c")]
        );
    }

    #[tokio::test]
    async fn rejects_huge_prefix_before_allocating() {
        let input = [0x7f, 0xff, 0xff, 0xff, 1, 2, 3];
        assert!(matches!(
            frames(&input, 1 << 20).await,
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[tokio::test]
    async fn rejects_negative_and_zero_sizes() {
        assert!(matches!(
            frames(&[0xff, 0xff, 0xff, 0xff], 100).await,
            Err(FrameError::InvalidSize(-1))
        ));
        assert!(matches!(
            frames(&[0, 0, 0, 0], 100).await,
            Err(FrameError::InvalidSize(0))
        ));
    }

    #[tokio::test]
    async fn a_large_announced_frame_pins_memory_only_as_it_arrives() {
        // 100 MB announced, 10 bytes sent, then silence.
        let (mut tx, rx) = tokio::io::duplex(1 << 20);
        let mut r = FrameReader::new(rx, 200 << 20);
        use tokio::io::AsyncWriteExt;
        tx.write_all(&(100i32 << 20).to_be_bytes()).await.unwrap();
        tx.write_all(&[7u8; 10]).await.unwrap();
        assert_eq!(r.read_size().await.unwrap(), Some(100 << 20));
        let body =
            tokio::time::timeout(std::time::Duration::from_millis(50), r.read_body(100 << 20));
        assert!(body.await.is_err(), "still waiting for the rest");
        assert!(
            r.buf.capacity() <= 4096 + READ_CHUNK,
            "{}",
            r.buf.capacity()
        );
        assert!(r.partial());
    }

    #[tokio::test]
    async fn truncated_frame_is_an_error() {
        assert!(matches!(
            frames(&[0, 0, 0, 5, 1, 2], 100).await,
            Err(FrameError::Truncated)
        ));
        assert!(matches!(
            frames(&[0, 0], 100).await,
            Err(FrameError::Truncated)
        ));
    }
}
