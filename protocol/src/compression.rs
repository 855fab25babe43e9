//! The record-batch codecs (attributes bits 0-2), as streams: decompression never holds more than a
//! bounded amount of inflated data, and the compressors the broker uses when a topic's
//! `compression.type` asks it to recompress.
//!
//! Kafka reads compressed batches as streams too (DefaultRecordBatch.compressedIterator) but has no
//! bound on the inflated size: a 1 MB zstd batch of zeros inflates to 32 GiB and Kafka spends the CPU.
//! Here every decompressor sits behind [`Limited`], which fails with [`TooLarge`] once more than the
//! limit (`message.max.decompressed.bytes`) comes out, and the decoders' own buffers are bounded by
//! their format (gzip: a 32 KiB window; lz4: blocks of at most 4 MiB, three in linked mode; zstd: the
//! window, capped at max(8 MiB, limit) below; snappy: one block, whose declared length is checked
//! against the limit before it is allocated). Formats, as Kafka's clients write and Kafka's broker reads them:
//! - gzip: RFC 1952 members, several back to back allowed (java.util.zip.GZIPInputStream).
//! - snappy: xerial's SnappyOutputStream framing (a 16-byte header, then blocks each prefixed by its
//!   compressed length as a big-endian u32), or a single raw snappy block when the header is absent,
//!   as librdkafka produces and xerial's SnappyInputStream falls back to.
//! - lz4: the LZ4 frame format (Kafka's Lz4BlockInputStream/OutputStream).
//! - zstd: zstd frames (zstd-jni's ZstdInputStream).

use std::io::{self, Read, Write};
use std::sync::Arc;

/// Where decompression runs: on tokio's blocking threads, at most `concurrency` at once (a semaphore),
/// so bombs queue up instead of taking the async runtime's threads or every CPU, with the
/// inflated-size bound (`message.max.decompressed.bytes`) they must stay under.
#[derive(Clone, Debug)]
pub struct Inflater {
    max_bytes: u64,
    permits: Arc<tokio::sync::Semaphore>,
}

impl Inflater {
    pub fn new(max_bytes: u64, concurrency: usize) -> Inflater {
        Inflater {
            max_bytes,
            permits: Arc::new(tokio::sync::Semaphore::new(concurrency.max(1))),
        }
    }

    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// Runs `f(max_bytes)` on a blocking thread once a slot is free; `None` if the runtime is
    /// shutting down (or `f` panicked).
    pub async fn run<T, F>(&self, f: F) -> Option<T>
    where
        F: FnOnce(u64) -> T + Send + 'static,
        T: Send + 'static,
    {
        let permit = self.permits.clone().acquire_owned().await.ok()?;
        let max = self.max_bytes;
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            f(max)
        })
        .await
        .ok()
    }
}

/// A codec id from the batch attributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    None = 0,
    Gzip = 1,
    Snappy = 2,
    Lz4 = 3,
    Zstd = 4,
}

impl Codec {
    /// The codec of batch attributes; `None` for the reserved ids 5-7.
    pub fn from_attributes(attributes: i16) -> Option<Codec> {
        Some(match attributes & 0x7 {
            0 => Codec::None,
            1 => Codec::Gzip,
            2 => Codec::Snappy,
            3 => Codec::Lz4,
            4 => Codec::Zstd,
            _ => return None,
        })
    }

    pub fn id(self) -> i16 {
        self as i16
    }

    /// The codec a `compression.type` value names (`uncompressed` is [`Codec::None`]); `None` for
    /// `producer` (keep the producer's) and for unknown names.
    pub fn from_config(name: &str) -> Option<Codec> {
        Some(match name {
            "uncompressed" => Codec::None,
            "gzip" => Codec::Gzip,
            "snappy" => Codec::Snappy,
            "lz4" => Codec::Lz4,
            "zstd" => Codec::Zstd,
            _ => return None,
        })
    }
}

/// The error a [`Limited`] reader raises when more than its limit comes out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("decompressed data exceeds {limit} bytes")]
pub struct TooLarge {
    pub limit: u64,
}

/// True when an i/o error is (or wraps) [`TooLarge`].
pub fn is_too_large(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<TooLarge>())
}

/// Passes at most `limit` bytes through; the first byte beyond is an error, not a silent end, so a
/// batch that inflates past the limit is refused rather than read as truncated.
pub struct Limited<R> {
    inner: R,
    limit: u64,
    remaining: u64,
}

impl<R: Read> Limited<R> {
    pub fn new(inner: R, limit: u64) -> Self {
        Limited {
            inner,
            limit,
            remaining: limit,
        }
    }

    /// Bytes that came out so far.
    pub fn produced(&self) -> u64 {
        self.limit - self.remaining
    }
}

impl<R: Read> Read for Limited<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.remaining == 0 {
            let mut probe = [0u8; 1];
            return match self.inner.read(&mut probe)? {
                0 => Ok(0),
                _ => Err(io::Error::other(TooLarge { limit: self.limit })),
            };
        }
        let want = buf
            .len()
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        self.remaining -= n as u64;
        Ok(n)
    }
}

/// zstd's decoder allocates the window a frame declares (up to 2 GiB by the format), whatever the
/// frame's content turns out to be. Producers declare 2^21 at their default level 3 and 2^23 at level
/// 19; only the "ultra" levels 20-22 declare more (up to 2^27, zstd's default cap). So the cap is 2^23,
/// raised up to 2^27 as far as the inflated-size limit itself: the window never costs more than
/// max(8 MiB, limit). A frame over the cap is refused as undecodable.
fn zstd_window_log_max(limit: u64) -> u32 {
    (63 - limit.max(1).leading_zeros()).clamp(23, 27)
}

/// A reader of the decompressed records of a batch payload, producing at most `limit` bytes.
pub fn decompressor<'a>(
    codec: Codec,
    payload: &'a [u8],
    limit: u64,
) -> io::Result<Limited<Box<dyn Read + Send + 'a>>> {
    let inner: Box<dyn Read + Send + 'a> = match codec {
        Codec::None => Box::new(payload),
        Codec::Gzip => Box::new(flate2::read::MultiGzDecoder::new(payload)),
        Codec::Snappy => Box::new(SnappyReader::new(payload, limit)),
        Codec::Lz4 => {
            // Kafka's Lz4BlockInputStream reads only standard frames; the legacy format would let a
            // payload make the decoder allocate 2 x 8 MiB blocks.
            if !payload.starts_with(&LZ4_FRAME_MAGIC) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "lz4: not an LZ4 frame",
                ));
            }
            Box::new(lz4_flex::frame::FrameDecoder::new(payload))
        }
        Codec::Zstd => {
            let mut d = zstd::stream::read::Decoder::with_buffer(payload)?;
            d.window_log_max(zstd_window_log_max(limit))?;
            Box::new(d)
        }
    };
    Ok(Limited::new(inner, limit))
}

/// 0x184D2204 little-endian: the LZ4 frame magic number.
const LZ4_FRAME_MAGIC: [u8; 4] = [0x04, 0x22, 0x4d, 0x18];

const SNAPPY_MAGIC: &[u8; 8] = b"\x82SNAPPY\x00";
/// xerial's header: the magic, then version 1 and minimum compatible version 1 (big-endian i32s).
const SNAPPY_HEADER: &[u8; 16] = b"\x82SNAPPY\x00\x00\x00\x00\x01\x00\x00\x00\x01";
/// Uncompressed bytes per xerial block, as SnappyOutputStream writes them.
const SNAPPY_BLOCK: usize = 32 * 1024;

/// Snappy in xerial framing or raw, decompressed block by block.
struct SnappyReader<'a> {
    rest: &'a [u8],
    /// The whole payload is one raw block (no xerial header).
    raw: bool,
    limit: u64,
    produced: u64,
    block: Vec<u8>,
    at: usize,
}

impl<'a> SnappyReader<'a> {
    fn new(payload: &'a [u8], limit: u64) -> Self {
        let framed = payload.len() >= SNAPPY_HEADER.len() && payload.starts_with(SNAPPY_MAGIC);
        SnappyReader {
            rest: if framed {
                &payload[SNAPPY_HEADER.len()..]
            } else {
                payload
            },
            raw: !framed,
            limit,
            produced: 0,
            block: Vec::new(),
            at: 0,
        }
    }

    fn corrupt(what: &str) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, format!("snappy: {what}"))
    }

    /// Decompresses the next block into `self.block`; false at the end of the stream.
    fn next_block(&mut self) -> io::Result<bool> {
        if self.rest.is_empty() {
            return Ok(false);
        }
        let compressed = if self.raw {
            std::mem::take(&mut self.rest)
        } else {
            // A second stream appended to the first starts with its own header (xerial skips it).
            if self.rest.len() >= SNAPPY_HEADER.len() && self.rest.starts_with(SNAPPY_MAGIC) {
                self.rest = &self.rest[SNAPPY_HEADER.len()..];
                return self.next_block();
            }
            let len = self
                .rest
                .get(..4)
                .ok_or_else(|| Self::corrupt("truncated block length"))?;
            let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
            let block = self
                .rest
                .get(4..4usize.saturating_add(len))
                .ok_or_else(|| Self::corrupt("block longer than the payload"))?;
            self.rest = &self.rest[4 + len..];
            block
        };
        let size =
            snap::raw::decompress_len(compressed).map_err(|e| Self::corrupt(&e.to_string()))?;
        // The declared size is checked before anything is allocated for it.
        if self.produced.saturating_add(size as u64) > self.limit {
            return Err(io::Error::other(TooLarge { limit: self.limit }));
        }
        self.block.clear();
        self.block.resize(size, 0);
        let n = snap::raw::Decoder::new()
            .decompress(compressed, &mut self.block)
            .map_err(|e| Self::corrupt(&e.to_string()))?;
        self.block.truncate(n);
        self.produced += n as u64;
        self.at = 0;
        Ok(true)
    }
}

impl Read for SnappyReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.at == self.block.len() {
            if !self.next_block()? {
                return Ok(0);
            }
        }
        let n = buf.len().min(self.block.len() - self.at);
        buf[..n].copy_from_slice(&self.block[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// A compressor writing one codec's stream into a `Vec`, for recompression.
pub struct Compressor {
    inner: CompressorKind,
}

enum CompressorKind {
    None(Vec<u8>),
    Gzip(flate2::write::GzEncoder<Vec<u8>>),
    Snappy { out: Vec<u8>, pending: Vec<u8> },
    Lz4(lz4_flex::frame::FrameEncoder<Vec<u8>>),
    Zstd(zstd::stream::write::Encoder<'static, Vec<u8>>),
}

impl Compressor {
    /// Levels are Kafka's defaults (`compression.gzip.level` 6 as Deflater's default,
    /// `compression.zstd.level` 3); lz4 frames use independent 64 KiB blocks, as Kafka's
    /// Lz4BlockOutputStream writes them.
    pub fn new(codec: Codec) -> io::Result<Compressor> {
        let inner = match codec {
            Codec::None => CompressorKind::None(Vec::new()),
            Codec::Gzip => CompressorKind::Gzip(flate2::write::GzEncoder::new(
                Vec::new(),
                flate2::Compression::new(6),
            )),
            Codec::Snappy => CompressorKind::Snappy {
                out: SNAPPY_HEADER.to_vec(),
                pending: Vec::with_capacity(SNAPPY_BLOCK),
            },
            Codec::Lz4 => {
                let info = lz4_flex::frame::FrameInfo::new()
                    .block_size(lz4_flex::frame::BlockSize::Max64KB)
                    .block_mode(lz4_flex::frame::BlockMode::Independent);
                CompressorKind::Lz4(lz4_flex::frame::FrameEncoder::with_frame_info(
                    info,
                    Vec::new(),
                ))
            }
            Codec::Zstd => CompressorKind::Zstd(zstd::stream::write::Encoder::new(Vec::new(), 3)?),
        };
        Ok(Compressor { inner })
    }

    pub fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        match &mut self.inner {
            CompressorKind::None(v) => {
                v.extend_from_slice(data);
                Ok(())
            }
            CompressorKind::Gzip(w) => w.write_all(data),
            CompressorKind::Snappy { out, pending } => {
                let mut data = data;
                while !data.is_empty() {
                    let take = (SNAPPY_BLOCK - pending.len()).min(data.len());
                    pending.extend_from_slice(&data[..take]);
                    data = &data[take..];
                    if pending.len() == SNAPPY_BLOCK {
                        snappy_block(out, pending)?;
                    }
                }
                Ok(())
            }
            CompressorKind::Lz4(w) => w.write_all(data),
            CompressorKind::Zstd(w) => w.write_all(data),
        }
    }

    /// Bytes of compressed output so far (a lower bound while the codec buffers).
    pub fn len(&self) -> usize {
        match &self.inner {
            CompressorKind::None(v) => v.len(),
            CompressorKind::Gzip(w) => w.get_ref().len(),
            CompressorKind::Snappy { out, .. } => out.len(),
            CompressorKind::Lz4(w) => w.get_ref().len(),
            CompressorKind::Zstd(w) => w.get_ref().len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn finish(self) -> io::Result<Vec<u8>> {
        match self.inner {
            CompressorKind::None(v) => Ok(v),
            CompressorKind::Gzip(w) => w.finish(),
            CompressorKind::Snappy {
                mut out,
                mut pending,
            } => {
                if !pending.is_empty() {
                    snappy_block(&mut out, &mut pending)?;
                }
                Ok(out)
            }
            CompressorKind::Lz4(w) => w.finish().map_err(io::Error::other),
            CompressorKind::Zstd(w) => w.finish(),
        }
    }
}

fn snappy_block(out: &mut Vec<u8>, pending: &mut Vec<u8>) -> io::Result<()> {
    let block = snap::raw::Encoder::new()
        .compress_vec(pending)
        .map_err(io::Error::other)?;
    out.extend_from_slice(&(block.len() as u32).to_be_bytes());
    out.extend_from_slice(&block);
    pending.clear();
    Ok(())
}

/// Compresses `data` in one go (tests and tools).
pub fn compress(codec: Codec, data: &[u8]) -> io::Result<Vec<u8>> {
    let mut c = Compressor::new(codec)?;
    c.write_all(data)?;
    c.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    const CODECS: [Codec; 5] = [
        Codec::None,
        Codec::Gzip,
        Codec::Snappy,
        Codec::Lz4,
        Codec::Zstd,
    ];

    fn inflate(codec: Codec, payload: &[u8], limit: u64) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        decompressor(codec, payload, limit)?.read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn round_trips_every_codec() {
        let data: Vec<u8> = (0..200_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        for c in CODECS {
            let z = compress(c, &data).unwrap();
            assert_eq!(inflate(c, &z, 1 << 30).unwrap(), data, "{c:?}");
        }
    }

    #[test]
    fn limit_is_exact_for_every_codec() {
        let data = vec![7u8; 100_000];
        for c in CODECS {
            let z = compress(c, &data).unwrap();
            assert_eq!(inflate(c, &z, 100_000).unwrap().len(), 100_000, "{c:?}");
            let e = inflate(c, &z, 99_999).unwrap_err();
            assert!(is_too_large(&e), "{c:?}: {e}");
        }
    }

    #[test]
    fn reads_what_other_encoders_write() {
        // kafka-protocol's encoders stand in for the clients': xerial snappy, lz4 frames, zstd, gzip.
        use kafka_protocol::records::Compression;
        let b = crate::batch::tests::encode(50, Compression::Snappy);
        let out = inflate(Codec::Snappy, &b[61..], 1 << 20).unwrap();
        let plain = crate::batch::tests::encode(50, Compression::None);
        assert_eq!(out, plain[61..]);
        // Raw snappy without xerial's header, as librdkafka writes it.
        let raw = snap::raw::Encoder::new()
            .compress_vec(&plain[61..])
            .unwrap();
        assert_eq!(inflate(Codec::Snappy, &raw, 1 << 20).unwrap(), plain[61..]);
        // Two gzip members back to back read as one stream, as GZIPInputStream does.
        let mut two = compress(Codec::Gzip, b"ab").unwrap();
        two.extend(compress(Codec::Gzip, b"cd").unwrap());
        assert_eq!(inflate(Codec::Gzip, &two, 10).unwrap(), b"abcd");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for c in [Codec::Gzip, Codec::Snappy, Codec::Lz4, Codec::Zstd] {
            let e = inflate(c, b"\x00this is not compressed at all\xff\xff", 1 << 20).unwrap_err();
            assert!(!is_too_large(&e), "{c:?}");
        }
    }

    #[test]
    fn snappy_declared_block_size_is_checked_before_allocating() {
        // A raw snappy block declaring 2^32-1 bytes (varint ff ff ff ff 0f) and carrying nothing.
        let e = inflate(Codec::Snappy, b"\xff\xff\xff\xff\x0f\x00", 1 << 20).unwrap_err();
        assert!(is_too_large(&e), "{e}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn inflater_runs_a_bounded_number_at_once() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let inflater = Inflater::new(123, 2);
        let running = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let (inflater, running, peak) = (inflater.clone(), running.clone(), peak.clone());
                tokio::spawn(async move {
                    inflater
                        .run(move |max| {
                            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                            peak.fetch_max(now, Ordering::SeqCst);
                            std::thread::sleep(std::time::Duration::from_millis(20));
                            running.fetch_sub(1, Ordering::SeqCst);
                            max
                        })
                        .await
                })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.unwrap(), Some(123));
        }
        assert_eq!(peak.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn zstd_window_is_capped_by_the_limit() {
        assert_eq!(zstd_window_log_max(64 << 20), 26);
        assert_eq!(zstd_window_log_max(1), 23);
        assert_eq!(zstd_window_log_max(u64::MAX), 27);
    }
}
