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
pub struct FrameReader<R> {
    reader: R,
    buf: BytesMut,
    max_frame: usize,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(reader: R, max_frame: usize) -> Self {
        Self {
            reader,
            buf: BytesMut::with_capacity(64 * 1024),
            max_frame,
        }
    }

    /// The next frame's body, or `None` on a clean end of stream between frames.
    pub async fn read_frame(&mut self) -> Result<Option<Bytes>, FrameError> {
        loop {
            if let Some(frame) = self.parse_frame()? {
                return Ok(Some(frame));
            }
            if self.reader.read_buf(&mut self.buf).await? == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(FrameError::Truncated)
                };
            }
        }
    }

    fn parse_frame(&mut self) -> Result<Option<Bytes>, FrameError> {
        if self.buf.len() < 4 {
            return Ok(None);
        }
        let size = i32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]);
        check_size(size, self.max_frame)?;
        let size = size as usize;
        if self.buf.len() < 4 + size {
            // Reserve only what this frame, already checked against the cap, still needs.
            self.buf.reserve(4 + size - self.buf.len());
            return Ok(None);
        }
        self.buf.advance(4);
        Ok(Some(self.buf.split_to(size).freeze()))
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
