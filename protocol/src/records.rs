//! The records inside a magic v2 batch, read one at a time: straight from the batch's bytes when it is
//! uncompressed, or from a bounded streaming decompressor ([`crate::compression`]) when not, so at most
//! one record is held at once, never the whole inflated payload.
//!
//! Record layout (Kafka's DefaultRecord): `length varint | attributes i8 | timestampDelta varlong |
//! offsetDelta varint | key (varint length, -1 null) | value (same) | headers count varint | headers`.
//! As Kafka's DefaultRecordBatch.RecordIterator, exactly the header's record count is read: a stream
//! ending before it is "premature EOF", bytes left after it are "records still remaining"; both are
//! INVALID_RECORD.

use std::io::{self, BufRead, BufReader, Read};

use crate::batch::{read_varint, read_varlong, BatchError, BatchHeader, BATCH_HEADER_LEN};
use crate::compression::{self, Codec, Limited};

/// One record's fields, borrowed from the batch or from the reader's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordView<'a> {
    pub attributes: i8,
    pub timestamp_delta: i64,
    pub offset_delta: i32,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    /// Everything after the offset delta (key, value, headers), for re-encoding a record verbatim.
    pub tail: &'a [u8],
}

const PREMATURE_EOF: BatchError =
    BatchError::InvalidRecord("Incorrect declared batch size, premature EOF reached");
const REMAINING: BatchError =
    BatchError::InvalidRecord("Incorrect declared batch size, records still remaining in file");
const MALFORMED: BatchError = BatchError::InvalidRecord("malformed record");

/// Parses a record body (the bytes its length prefix covers); every field must end exactly at its end.
pub fn parse_record(body: &[u8]) -> Result<RecordView<'_>, BatchError> {
    let (&attributes, rec) = body.split_first().ok_or(MALFORMED)?;
    let (timestamp_delta, n) = read_varlong(rec).ok_or(MALFORMED)?;
    let rec = &rec[n..];
    let (offset_delta, n) = read_varint(rec).ok_or(MALFORMED)?;
    let tail = &rec[n..];
    let (key, rec) = nullable_bytes(tail)?;
    let (value, mut rec) = nullable_bytes(rec)?;
    let (headers, n) = read_varint(rec).ok_or(MALFORMED)?;
    if headers < 0 {
        return Err(MALFORMED);
    }
    rec = &rec[n..];
    for _ in 0..headers {
        let (klen, n) = read_varint(rec).ok_or(MALFORMED)?;
        if klen < 0 {
            return Err(BatchError::InvalidRecord("null header key"));
        }
        rec = rec.get(n + klen as usize..).ok_or(MALFORMED)?;
        rec = nullable_bytes(rec)?.1;
    }
    if !rec.is_empty() {
        return Err(BatchError::InvalidRecord(
            "record length does not match its fields",
        ));
    }
    Ok(RecordView {
        attributes: attributes as i8,
        timestamp_delta,
        offset_delta,
        key,
        value,
        tail,
    })
}

fn nullable_bytes(b: &[u8]) -> Result<(Option<&[u8]>, &[u8]), BatchError> {
    let (len, n) = read_varint(b).ok_or(MALFORMED)?;
    if len < 0 {
        return Ok((None, &b[n..]));
    }
    let end = n.checked_add(len as usize).ok_or(MALFORMED)?;
    let v = b.get(n..end).ok_or(MALFORMED)?;
    Ok((Some(v), &b[end..]))
}

/// Read size of the decompressed stream: large enough that per-byte varint reads are cheap.
const STREAM_BUFFER: usize = 16 * 1024;
/// A record body is read in steps of this size, so a forged length allocates only what arrives.
const BODY_STEP: usize = 64 * 1024;

type Stream<'a> = BufReader<Limited<Box<dyn Read + Send + 'a>>>;

enum Source<'a> {
    Slice(&'a [u8]),
    Stream { r: Stream<'a>, buf: Vec<u8> },
}

/// The records of one batch, in order.
pub struct Records<'a> {
    source: Source<'a>,
    expected: i32,
    read: i32,
}

impl<'a> Records<'a> {
    /// Opens the records of `batch` (a whole batch, header included); compressed payloads are read
    /// through a decompressor that fails once more than `limit` bytes come out.
    pub fn open(batch: &'a [u8], header: &BatchHeader, limit: u64) -> Result<Self, BatchError> {
        let end = header.total_size().min(batch.len());
        let payload = batch.get(BATCH_HEADER_LEN..end).ok_or(PREMATURE_EOF)?;
        let codec = Codec::from_attributes(header.attributes)
            .ok_or(BatchError::Corrupt("unknown compression codec"))?;
        let source = match codec {
            Codec::None => Source::Slice(payload),
            c => Source::Stream {
                r: BufReader::with_capacity(
                    STREAM_BUFFER,
                    compression::decompressor(c, payload, limit).map_err(inflate_error)?,
                ),
                buf: Vec::new(),
            },
        };
        Ok(Records {
            source,
            expected: header.record_count.max(0),
            read: 0,
        })
    }

    /// Records read so far.
    pub fn count(&self) -> i32 {
        self.read
    }

    /// The next record; `None` after the header's count, once nothing is left behind it.
    pub fn next_record(&mut self) -> Result<Option<RecordView<'_>>, BatchError> {
        if self.read >= self.expected {
            let empty = match &mut self.source {
                Source::Slice(rest) => rest.is_empty(),
                Source::Stream { r, .. } => r.fill_buf().map_err(inflate_error)?.is_empty(),
            };
            return if empty { Ok(None) } else { Err(REMAINING) };
        }
        self.read += 1;
        let body = match &mut self.source {
            Source::Slice(rest) => {
                let (len, n) = read_varint(rest).ok_or(PREMATURE_EOF)?;
                if len < 0 {
                    return Err(MALFORMED);
                }
                let end = n.checked_add(len as usize).ok_or(MALFORMED)?;
                let body = rest.get(n..end).ok_or(PREMATURE_EOF)?;
                *rest = &rest[end..];
                body
            }
            Source::Stream { r, buf } => {
                let len = stream_varint(r)?;
                if len < 0 {
                    return Err(MALFORMED);
                }
                read_body(r, buf, len as usize)?;
                &buf[..]
            }
        };
        parse_record(body).map(Some)
    }
}

/// Maps a decompression failure: past the limit is [`BatchError::DecompressedTooLarge`], anything
/// else means the payload is not what its codec says (CORRUPT_MESSAGE).
fn inflate_error(e: io::Error) -> BatchError {
    if let Some(t) = e
        .get_ref()
        .and_then(|i| i.downcast_ref::<compression::TooLarge>())
    {
        return BatchError::DecompressedTooLarge(t.limit);
    }
    BatchError::Corrupt("the records do not decompress with the batch's codec")
}

fn stream_varint(r: &mut Stream<'_>) -> Result<i32, BatchError> {
    let mut v: u32 = 0;
    for i in 0..5 {
        let byte = {
            let b = r.fill_buf().map_err(inflate_error)?;
            let &byte = b.first().ok_or(PREMATURE_EOF)?;
            byte
        };
        r.consume(1);
        v |= ((byte & 0x7f) as u32) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(((v >> 1) as i32) ^ -((v & 1) as i32));
        }
    }
    Err(MALFORMED)
}

fn read_body(r: &mut Stream<'_>, buf: &mut Vec<u8>, len: usize) -> Result<(), BatchError> {
    buf.clear();
    while buf.len() < len {
        let step = (len - buf.len()).min(BODY_STEP);
        let at = buf.len();
        // Exact growth: the buffer never holds more than the record (itself within the limit).
        buf.reserve_exact(step);
        buf.resize(at + step, 0);
        let mut filled = at;
        while filled < at + step {
            match r.read(&mut buf[filled..at + step]) {
                Ok(0) => return Err(PREMATURE_EOF),
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(inflate_error(e)),
            }
        }
    }
    Ok(())
}

/// A record's timestamp as Kafka reports it: the batch's maxTimestamp in a LogAppendTime batch,
/// else baseTimestamp + delta.
pub fn record_timestamp(header: &BatchHeader, record: &RecordView<'_>) -> i64 {
    if header.is_log_append_time() {
        header.max_timestamp
    } else {
        header.base_timestamp.wrapping_add(record.timestamp_delta)
    }
}

/// The first record of a stored batch for which `pick(offset, timestamp)` holds, as (offset,
/// timestamp): ListOffsets by timestamp and MAX_TIMESTAMP (Kafka's FileRecords.searchForTimestamp and
/// RecordBatch.offsetOfMaxTimestamp). Reads through the same bounded reader as produce validation.
pub fn find_record(
    batch: &[u8],
    limit: u64,
    mut pick: impl FnMut(i64, i64) -> bool,
) -> Result<Option<(i64, i64)>, BatchError> {
    let h = BatchHeader::parse(batch).ok_or(PREMATURE_EOF)?;
    let mut records = Records::open(batch, &h, limit)?;
    while let Some(r) = records.next_record()? {
        let offset = h.base_offset.wrapping_add(r.offset_delta as i64);
        let ts = record_timestamp(&h, &r);
        if pick(offset, ts) {
            return Ok(Some((offset, ts)));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::tests::encode;
    use kafka_protocol::records::Compression;

    const ALL: [Compression; 5] = [
        Compression::None,
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
        Compression::Zstd,
    ];

    fn read_all(b: &[u8], limit: u64) -> Result<Vec<(i32, i64, Vec<u8>)>, BatchError> {
        let h = BatchHeader::parse(b).unwrap();
        let mut rs = Records::open(b, &h, limit)?;
        let mut out = Vec::new();
        while let Some(r) = rs.next_record()? {
            out.push((r.offset_delta, r.timestamp_delta, r.key.unwrap().to_vec()));
        }
        Ok(out)
    }

    #[test]
    fn reads_records_of_every_codec() {
        for c in ALL {
            let b = encode(20, c);
            let got = read_all(&b, 1 << 20).unwrap();
            assert_eq!(got.len(), 20, "{c:?}");
            for (i, (delta, ts, key)) in got.into_iter().enumerate() {
                assert_eq!(delta, i as i32);
                assert_eq!(ts, i as i64);
                assert_eq!(key, format!("k{i}").into_bytes());
            }
        }
    }

    fn with_count(mut b: Vec<u8>, count: i32) -> Vec<u8> {
        b[57..61].copy_from_slice(&count.to_be_bytes());
        b
    }

    #[test]
    fn record_count_must_match_for_every_codec() {
        for c in ALL {
            let b = with_count(encode(5, c), 6);
            assert_eq!(read_all(&b, 1 << 20), Err(PREMATURE_EOF), "{c:?}");
            let b = with_count(encode(5, c), 4);
            assert_eq!(read_all(&b, 1 << 20), Err(REMAINING), "{c:?}");
        }
    }

    #[test]
    fn limit_applies_to_the_inflated_records() {
        for c in ALL.into_iter().skip(1) {
            let b = encode(200, c);
            let inflated = encode(200, Compression::None).len() - BATCH_HEADER_LEN;
            assert!(read_all(&b, inflated as u64).is_ok(), "{c:?}");
            assert!(
                matches!(
                    read_all(&b, inflated as u64 - 1),
                    Err(BatchError::DecompressedTooLarge(_))
                ),
                "{c:?}"
            );
        }
    }

    #[test]
    fn finds_records_by_timestamp() {
        for c in ALL {
            let mut b = encode(10, c);
            crate::batch::patch_offsets(&mut b, 100, 0);
            // encode() stamps record i with 1000 + i.
            assert_eq!(
                find_record(&b, 1 << 20, |_, ts| ts >= 1004).unwrap(),
                Some((104, 1004))
            );
            assert_eq!(find_record(&b, 1 << 20, |_, ts| ts > 5000).unwrap(), None);
        }
    }
}
