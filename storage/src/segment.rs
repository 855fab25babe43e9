//! The segment format (see docs/segment-format.md): a file header, blocks, and on sealing a footer
//! index. A block holds the batches one partition received in one flush, with their offsets already
//! patched, LZ4-compressed when the producer sent them uncompressed, and a CRC-32C of what is stored.

use bytes::Bytes;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use uuid::Uuid;

use crate::StorageError;

pub const FILE_MAGIC: &[u8; 8] = b"SHSEGMNT";
pub const FORMAT_VERSION: u16 = 1;
pub const FILE_HEADER_LEN: u64 = 32;
pub const BLOCK_MAGIC: u32 = 0x5348_4B31; // "SHK1"
pub const BLOCK_HEADER_LEN: usize = 64;
pub const FOOTER_MAGIC: &[u8; 8] = b"SHSEGEND";
pub const FOOTER_ENTRY_LEN: usize = 52;

pub const CODEC_NONE: u8 = 0;
pub const CODEC_LZ4: u8 = 1;

/// Where a block lives and what it covers; the metadata store keeps one row of this per block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockMeta {
    pub topic_id: Uuid,
    pub partition: i32,
    pub base_offset: i64,
    pub last_offset: i64,
    pub max_timestamp: i64,
    pub segment_id: u64,
    /// Byte position of the block header in the segment.
    pub position: u64,
    pub stored_len: u32,
    pub raw_len: u32,
    pub codec: u8,
    pub crc: u32,
}

impl BlockMeta {
    /// Bytes the block takes in the segment, header included.
    pub fn total_len(&self) -> u64 {
        BLOCK_HEADER_LEN as u64 + self.stored_len as u64
    }
}

/// One block to encode into a segment of one partition: the offsets and largest timestamp it
/// covers, and its batches back to back.
pub struct NewBlock {
    pub base_offset: i64,
    pub last_offset: i64,
    pub max_timestamp: i64,
    pub raw: Vec<u8>,
}

/// Encodes blocks of one partition back to back from [`FILE_HEADER_LEN`] for segment `segment_id`
/// (compaction's and the cleaner's output), each LZ4'd when all its batches are uncompressed.
/// Returns the bytes and the blocks' metadata.
pub fn encode_blocks(
    topic_id: Uuid,
    partition: i32,
    segment_id: u64,
    blocks: impl IntoIterator<Item = NewBlock>,
) -> (Vec<u8>, Vec<BlockMeta>) {
    let mut bytes = Vec::new();
    let mut metas = Vec::new();
    let mut position = FILE_HEADER_LEN;
    for b in blocks {
        let compressible =
            streamhouse_protocol::batch::batches(&b.raw).all(|(_, h)| h.compression() == 0);
        let meta = BlockMeta {
            topic_id,
            partition,
            base_offset: b.base_offset,
            last_offset: b.last_offset,
            max_timestamp: b.max_timestamp,
            segment_id,
            position,
            stored_len: 0,
            raw_len: 0,
            codec: 0,
            crc: 0,
        };
        let (encoded, meta) = encode_block(meta, &b.raw, compressible);
        position += encoded.len() as u64;
        bytes.extend_from_slice(&encoded);
        metas.push(meta);
    }
    (bytes, metas)
}

/// Encodes a block: `raw` is the concatenation of a partition's batches. Compresses with LZ4 when
/// `compressible` (every batch arrived uncompressed) and that makes it smaller.
/// Returns the bytes to write and the metadata (position and segment id left to the caller).
pub fn encode_block(mut meta: BlockMeta, raw: &[u8], compressible: bool) -> (Vec<u8>, BlockMeta) {
    let compressed = if compressible {
        Some(lz4_flex::block::compress(raw))
    } else {
        None
    };
    let (codec, payload): (u8, &[u8]) = match &compressed {
        Some(c) if c.len() < raw.len() => (CODEC_LZ4, c),
        _ => (CODEC_NONE, raw),
    };
    meta.codec = codec;
    meta.raw_len = raw.len() as u32;
    meta.stored_len = payload.len() as u32;
    meta.crc = crc32c::crc32c(payload);
    let mut out = Vec::with_capacity(BLOCK_HEADER_LEN + payload.len());
    out.extend_from_slice(&BLOCK_MAGIC.to_be_bytes());
    out.push(codec);
    out.extend_from_slice(&[0, 0, 0]);
    out.extend_from_slice(meta.topic_id.as_bytes());
    out.extend_from_slice(&meta.partition.to_be_bytes());
    out.extend_from_slice(&meta.raw_len.to_be_bytes());
    out.extend_from_slice(&meta.base_offset.to_be_bytes());
    out.extend_from_slice(&meta.last_offset.to_be_bytes());
    out.extend_from_slice(&meta.max_timestamp.to_be_bytes());
    out.extend_from_slice(&meta.stored_len.to_be_bytes());
    out.extend_from_slice(&meta.crc.to_be_bytes());
    out.extend_from_slice(payload);
    (out, meta)
}

/// Checks a block read back from a segment (header and payload) against its index row and returns
/// the raw batches.
pub fn decode_block(meta: &BlockMeta, bytes: &[u8]) -> Result<Bytes, StorageError> {
    let corrupt = |reason| StorageError::CorruptBlock {
        segment_id: meta.segment_id,
        position: meta.position,
        reason,
    };
    if bytes.len() != meta.total_len() as usize {
        return Err(corrupt("short read"));
    }
    let (header, payload) = bytes.split_at(BLOCK_HEADER_LEN);
    if header[0..4] != BLOCK_MAGIC.to_be_bytes() {
        return Err(corrupt("bad block magic"));
    }
    if header[8..24] != meta.topic_id.as_bytes()[..]
        || header[32..40] != meta.base_offset.to_be_bytes()
    {
        return Err(corrupt("block header does not match the index"));
    }
    if crc32c::crc32c(payload) != meta.crc {
        return Err(corrupt("checksum mismatch"));
    }
    match meta.codec {
        CODEC_NONE => Ok(Bytes::copy_from_slice(payload)),
        CODEC_LZ4 => lz4_flex::block::decompress(payload, meta.raw_len as usize)
            .map(Bytes::from)
            .map_err(|_| corrupt("lz4 payload does not decompress")),
        _ => Err(corrupt("unknown codec")),
    }
}

pub fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:020}.seg"))
}

/// Parses a segment id from a file name written by [`segment_path`].
pub fn segment_id_of(path: &Path) -> Option<u64> {
    let name = path.file_name()?.to_str()?;
    name.strip_suffix(".seg")?.parse().ok()
}

/// The segment being appended to.
pub struct ActiveSegment {
    pub id: u64,
    pub created_ms: i64,
    file: File,
    len: u64,
    /// Blocks written to this segment, for the footer index at sealing.
    index: Vec<BlockMeta>,
}

impl ActiveSegment {
    pub fn create(dir: &Path, id: u64, created_ms: i64) -> Result<Self, StorageError> {
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = OpenOptions::new()
            .create_new(true)
            .read(true)
            .write(true)
            .mode(0o600)
            .open(segment_path(dir, id))?;
        let header = file_header(id, created_ms);
        file.write_all(&header)?;
        file.sync_data()?;
        // The new directory entry must survive a crash too.
        File::open(dir)?.sync_all()?;
        Ok(Self {
            id,
            created_ms,
            file,
            len: FILE_HEADER_LEN,
            index: Vec::new(),
        })
    }

    /// Reopens the active segment after a restart, cutting off anything past the last committed block
    /// (written but never committed, so never acknowledged).
    pub fn reopen(
        dir: &Path,
        id: u64,
        created_ms: i64,
        committed: Vec<BlockMeta>,
    ) -> Result<Self, StorageError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(segment_path(dir, id))?;
        let mut magic = [0u8; 8];
        file.read_exact_at(&mut magic, 0)?;
        if &magic != FILE_MAGIC {
            return Err(StorageError::CorruptBlock {
                segment_id: id,
                position: 0,
                reason: "bad segment magic",
            });
        }
        let len = committed
            .iter()
            .map(|b| b.position + b.total_len())
            .max()
            .unwrap_or(FILE_HEADER_LEN);
        file.set_len(len)?;
        file.sync_all()?;
        Ok(Self {
            id,
            created_ms,
            file,
            len,
            index: committed,
        })
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == FILE_HEADER_LEN
    }

    /// Appends encoded blocks and makes them durable. On error the file is cut back, so a failed flush
    /// leaves nothing behind.
    pub fn append_durable(
        &mut self,
        bytes: &[u8],
        blocks: &[BlockMeta],
    ) -> Result<(), StorageError> {
        let start = self.len;
        let result = self
            .file
            .write_all_at(bytes, start)
            .and_then(|_| self.file.sync_data());
        if let Err(e) = result {
            let _ = self.file.set_len(start);
            return Err(e.into());
        }
        self.len += bytes.len() as u64;
        self.index.extend_from_slice(blocks);
        Ok(())
    }

    /// Writes the footer index (per-partition extents) and syncs. The segment is read-only afterwards.
    pub fn seal(mut self) -> Result<(), StorageError> {
        let index_position = self.len;
        let footer = footer(&self.index, index_position);
        self.file.write_all_at(&footer, index_position)?;
        self.file.sync_data()?;
        self.len += footer.len() as u64;
        self.file.flush()?;
        Ok(())
    }
}

/// Writes a whole sealed segment (compaction's output on local disk) and makes it durable, directory
/// entry included.
pub fn write_sealed(dir: &Path, id: u64, bytes: &[u8]) -> Result<(), StorageError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(0o600)
        .open(segment_path(dir, id))?;
    file.write_all(bytes)?;
    file.sync_data()?;
    File::open(dir)?.sync_all()?;
    Ok(())
}

/// The 32-byte segment header (docs/segment-format.md).
pub fn file_header(id: u64, created_ms: i64) -> Vec<u8> {
    let mut header = Vec::with_capacity(FILE_HEADER_LEN as usize);
    header.extend_from_slice(FILE_MAGIC);
    header.extend_from_slice(&FORMAT_VERSION.to_be_bytes());
    header.extend_from_slice(&0u16.to_be_bytes());
    header.extend_from_slice(&id.to_be_bytes());
    header.extend_from_slice(&created_ms.to_be_bytes());
    header.resize(FILE_HEADER_LEN as usize, 0);
    header
}

/// The footer index of a sealed segment: one entry per block, then the trailer.
pub fn footer(index: &[BlockMeta], index_position: u64) -> Vec<u8> {
    let mut footer = Vec::with_capacity(index.len() * FOOTER_ENTRY_LEN + 24);
    for b in index {
        footer.extend_from_slice(b.topic_id.as_bytes());
        footer.extend_from_slice(&b.partition.to_be_bytes());
        footer.extend_from_slice(&b.base_offset.to_be_bytes());
        footer.extend_from_slice(&b.last_offset.to_be_bytes());
        footer.extend_from_slice(&b.position.to_be_bytes());
        footer.extend_from_slice(&b.stored_len.to_be_bytes());
    }
    let crc = crc32c::crc32c(&footer);
    footer.extend_from_slice(&(index.len() as u32).to_be_bytes());
    footer.extend_from_slice(&crc.to_be_bytes());
    footer.extend_from_slice(&index_position.to_be_bytes());
    footer.extend_from_slice(FOOTER_MAGIC);
    footer
}

/// A whole sealed segment in one buffer: what one flush becomes in an object store.
/// `blocks` are encoded blocks whose positions start at [`FILE_HEADER_LEN`].
pub fn encode_object(id: u64, created_ms: i64, blocks: &[u8], index: &[BlockMeta]) -> Vec<u8> {
    let mut out = file_header(id, created_ms);
    out.extend_from_slice(blocks);
    let index_position = out.len() as u64;
    out.extend_from_slice(&footer(index, index_position));
    out
}

/// Reads `len` bytes at `position` of a segment file.
pub fn read_range(
    dir: &Path,
    segment_id: u64,
    position: u64,
    len: usize,
) -> Result<Vec<u8>, StorageError> {
    let file = File::open(segment_path(dir, segment_id))?;
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, position)?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(base: i64) -> BlockMeta {
        BlockMeta {
            topic_id: Uuid::from_u128(42),
            partition: 3,
            base_offset: base,
            last_offset: base + 9,
            max_timestamp: 77,
            segment_id: 1,
            position: 0,
            stored_len: 0,
            raw_len: 0,
            codec: 0,
            crc: 0,
        }
    }

    #[test]
    fn block_round_trip_with_and_without_lz4() {
        let raw = vec![7u8; 10_000];
        for compressible in [true, false] {
            let (bytes, m) = encode_block(meta(100), &raw, compressible);
            assert_eq!(m.codec, if compressible { CODEC_LZ4 } else { CODEC_NONE });
            assert_eq!(bytes.len() as u64, m.total_len());
            assert_eq!(decode_block(&m, &bytes).unwrap(), Bytes::from(raw.clone()));
        }
    }

    #[test]
    fn incompressible_data_is_stored_plain() {
        let raw: Vec<u8> = (0..64u32)
            .flat_map(|i| i.wrapping_mul(2654435761).to_be_bytes())
            .collect();
        let (_, m) = encode_block(meta(0), &raw, true);
        assert_eq!(m.codec, CODEC_NONE);
    }

    #[test]
    fn corruption_is_detected() {
        let (mut bytes, m) = encode_block(meta(0), b"hello batches", true);
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        assert!(matches!(
            decode_block(&m, &bytes),
            Err(StorageError::CorruptBlock { .. })
        ));
    }

    #[test]
    fn append_reopen_truncates_uncommitted_tail() {
        let dir = tempfile::tempdir().unwrap();
        let mut seg = ActiveSegment::create(dir.path(), 1, 0).unwrap();
        let (b1, mut m1) = encode_block(meta(0), b"first", false);
        m1.position = seg.len();
        seg.append_durable(&b1, &[m1]).unwrap();
        let (b2, mut m2) = encode_block(meta(10), b"second, never committed", false);
        m2.position = seg.len();
        seg.append_durable(&b2, &[m2]).unwrap();
        drop(seg);
        let seg = ActiveSegment::reopen(dir.path(), 1, 0, vec![m1]).unwrap();
        assert_eq!(seg.len(), m1.position + m1.total_len());
        let back = read_range(dir.path(), 1, m1.position, m1.total_len() as usize).unwrap();
        assert_eq!(
            decode_block(&m1, &back).unwrap(),
            Bytes::from_static(b"first")
        );
        seg.seal().unwrap();
    }
}
