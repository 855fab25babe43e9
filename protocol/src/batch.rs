//! Record batches (magic v2), handled without decoding records into objects.
//!
//! Layout (Kafka's DefaultRecordBatch):
//! ```text
//!  0 baseOffset i64 | 8 batchLength i32 | 12 partitionLeaderEpoch i32 | 16 magic i8 | 17 crc u32
//! 21 attributes i16 | 23 lastOffsetDelta i32 | 27 baseTimestamp i64 | 35 maxTimestamp i64
//! 43 producerId i64 | 51 producerEpoch i16 | 53 baseSequence i32 | 57 recordCount i32 | 61 records
//! ```
//! The CRC-32C covers attributes to the end, so baseOffset and partitionLeaderEpoch can be patched in
//! place when offsets are assigned at commit.

/// Size of the fixed batch header.
pub const BATCH_HEADER_LEN: usize = 61;
/// Bytes before `batchLength`'s count starts (baseOffset + batchLength).
pub const LOG_OVERHEAD: usize = 12;
pub(crate) const CRC_OFFSET: usize = 17;
pub(crate) const ATTRIBUTES_OFFSET: usize = 21;
pub(crate) const MAX_TIMESTAMP_OFFSET: usize = 35;
/// Attributes bit 3: the batch's timestamps are LogAppendTime.
pub const TIMESTAMP_TYPE_MASK: i16 = 0x8;

/// Why a produced batch was refused; `kafka_error_code` maps it to Kafka's code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// Bad CRC, a size that does not add up, or records that do not decompress with the batch's
    /// codec: CORRUPT_MESSAGE, as Kafka's `ensureValid` ("otherwise corrupt" in Kafka's error table;
    /// Kafka itself answers UNKNOWN_SERVER_ERROR for an undecodable payload, by accident of its
    /// exception mapping).
    #[error("corrupt record batch: {0}")]
    Corrupt(&'static str),
    /// Structurally valid bytes that break a record rule: INVALID_RECORD (Kafka's LogValidator).
    #[error("invalid record batch: {0}")]
    InvalidRecord(&'static str),
    /// The records inflate to more than `message.max.decompressed.bytes` (a StreamHouse bound; Kafka
    /// has none and spends the CPU): MESSAGE_TOO_LARGE, which Java producers answer by splitting.
    #[error("the record batch decompresses to more than message.max.decompressed.bytes ({0})")]
    DecompressedTooLarge(u64),
    /// The batch as it would be stored (after recompression) is over max.message.bytes:
    /// MESSAGE_TOO_LARGE (Kafka's RecordTooLargeException after validation).
    #[error(
        "the record batch is {size} bytes after recompression, larger than max.message.bytes {max}"
    )]
    TooLarge { size: usize, max: i32 },
    /// Some records break a per-record rule (KIP-467): INVALID_TIMESTAMP if any is a timestamp error,
    /// else INVALID_RECORD, with each bad record's batch index and message.
    #[error("{}", .0.message())]
    Records(RecordErrors),
}

impl BatchError {
    pub fn kafka_error_code(&self) -> i16 {
        use kafka_protocol::error::ResponseError as E;
        let e = match self {
            BatchError::Corrupt(_) => E::CorruptMessage,
            BatchError::InvalidRecord(_) => E::InvalidRecord,
            BatchError::DecompressedTooLarge(_) | BatchError::TooLarge { .. } => E::MessageTooLarge,
            BatchError::Records(r) if r.invalid_timestamp => E::InvalidTimestamp,
            BatchError::Records(_) => E::InvalidRecord,
        };
        e.code()
    }

    /// Per-record errors (Produce v8+ `record_errors`): only for [`BatchError::Records`], as Kafka
    /// fills them only for its RecordValidationException.
    pub fn record_errors(&self) -> &[RecordError] {
        match self {
            BatchError::Records(r) => &r.errors,
            _ => &[],
        }
    }
}

/// One bad record: its index in the batch and why (ProduceResponse.RecordError).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordError {
    pub batch_index: i32,
    pub message: String,
}

/// The record errors of a batch, as Kafka's LogValidator.processRecordErrors reports them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordErrors {
    pub invalid_timestamp: bool,
    pub errors: Vec<RecordError>,
}

impl RecordErrors {
    /// The top-level error_message, Kafka's words: a fixed one for timestamps, else the count and the
    /// first three errors in Java's `List<RecordError>.toString()` form.
    pub fn message(&self) -> String {
        if self.invalid_timestamp {
            return "One or more records have been rejected due to invalid timestamp".to_string();
        }
        let first: Vec<String> = self
            .errors
            .iter()
            .take(3)
            .map(|e| {
                format!(
                    "RecordError(batchIndex={}, message='{}')",
                    e.batch_index, e.message
                )
            })
            .collect();
        format!(
            "One or more records have been rejected due to {} record errors in total, and only \
             showing the first three errors at most: [{}]",
            self.errors.len(),
            first.join(", ")
        )
    }
}

/// The fields of a batch header the broker needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: i64,
    pub batch_length: i32,
    pub magic: i8,
    pub crc: u32,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub record_count: i32,
}

impl BatchHeader {
    /// Parses the fixed header; `None` when fewer than [`BATCH_HEADER_LEN`] bytes are given.
    pub fn parse(b: &[u8]) -> Option<BatchHeader> {
        if b.len() < BATCH_HEADER_LEN {
            return None;
        }
        let i64_at = |o: usize| i64::from_be_bytes(b[o..o + 8].try_into().unwrap_or([0; 8]));
        let i32_at = |o: usize| i32::from_be_bytes(b[o..o + 4].try_into().unwrap_or([0; 4]));
        let i16_at = |o: usize| i16::from_be_bytes([b[o], b[o + 1]]);
        Some(BatchHeader {
            base_offset: i64_at(0),
            batch_length: i32_at(8),
            magic: b[16] as i8,
            crc: i32_at(CRC_OFFSET) as u32,
            attributes: i16_at(ATTRIBUTES_OFFSET),
            last_offset_delta: i32_at(23),
            base_timestamp: i64_at(27),
            max_timestamp: i64_at(35),
            producer_id: i64_at(43),
            producer_epoch: i16_at(51),
            base_sequence: i32_at(53),
            record_count: i32_at(57),
        })
    }

    /// Total bytes of the batch on the wire, header included.
    pub fn total_size(&self) -> usize {
        LOG_OVERHEAD + self.batch_length.max(0) as usize
    }
    /// Compression codec: 0 none, 1 gzip, 2 snappy, 3 lz4, 4 zstd.
    pub fn compression(&self) -> u8 {
        (self.attributes & 0x7) as u8
    }
    /// Attributes bit 3: timestamps are the broker's append time (the batch's maxTimestamp).
    pub fn is_log_append_time(&self) -> bool {
        self.attributes & TIMESTAMP_TYPE_MASK != 0
    }
    pub fn is_transactional(&self) -> bool {
        self.attributes & 0x10 != 0
    }
    pub fn is_control(&self) -> bool {
        self.attributes & 0x20 != 0
    }
    pub fn last_offset(&self) -> i64 {
        self.base_offset + self.last_offset_delta as i64
    }
    /// Offsets the batch occupies (its records may have been compacted away, never fewer offsets).
    pub fn offset_count(&self) -> i64 {
        self.last_offset_delta as i64 + 1
    }
    pub fn last_sequence(&self) -> i32 {
        if self.base_sequence < 0 {
            return -1;
        }
        // Sequences wrap at i32::MAX (Kafka's DefaultRecordBatch.incrementSequence).
        let last = self.base_sequence as i64 + self.last_offset_delta as i64;
        (last % (i32::MAX as i64 + 1)) as i32
    }
    pub fn has_producer_id(&self) -> bool {
        self.producer_id >= 0
    }
}

/// The header rules of one Produce partition's records, which for Produce v3+ must be exactly one
/// magic-v2 batch (Kafka's ProduceRequest.validateRecords, then LogValidator.validateBatch). Returns
/// the header; the records themselves are checked by [`crate::validator`].
pub fn check_batch_header(data: &[u8]) -> Result<BatchHeader, BatchError> {
    let h = BatchHeader::parse(data).ok_or(BatchError::Corrupt("shorter than a batch header"))?;
    if h.magic != 2 {
        return Err(BatchError::InvalidRecord(
            "produce v3+ accepts only magic v2 record batches",
        ));
    }
    if h.batch_length < (BATCH_HEADER_LEN - LOG_OVERHEAD) as i32 {
        return Err(BatchError::Corrupt("batch length smaller than its header"));
    }
    let total = h.total_size();
    if total > data.len() {
        return Err(BatchError::Corrupt("batch length exceeds the bytes sent"));
    }
    if total < data.len() {
        return Err(BatchError::InvalidRecord(
            "produce requests must contain exactly one record batch",
        ));
    }
    if crc32c::crc32c(&data[ATTRIBUTES_OFFSET..total]) != h.crc {
        return Err(BatchError::Corrupt("CRC mismatch"));
    }
    if h.record_count <= 0
        || h.last_offset_delta < 0
        || h.record_count as i64 != h.last_offset_delta as i64 + 1
    {
        // Kafka's LogValidator: "Inner record count must match the last offset delta + 1".
        return Err(BatchError::InvalidRecord(
            "record count does not match last offset delta",
        ));
    }
    if h.is_control() {
        return Err(BatchError::InvalidRecord(
            "clients may not produce control batches",
        ));
    }
    if h.has_producer_id() && h.base_sequence < 0 {
        // LogValidator.validateBatch: an idempotent batch needs a sequence.
        return Err(BatchError::InvalidRecord(
            "invalid sequence number in a record batch with a producer id",
        ));
    }
    if h.compression() > 4 {
        return Err(BatchError::Corrupt("unknown compression codec"));
    }
    Ok(h)
}

/// Decompressed bytes a batch may inflate to unless the broker says otherwise
/// (`message.max.decompressed.bytes`; see the broker's configuration for the why of 64 MiB).
pub const DEFAULT_MAX_DECOMPRESSED_BYTES: u64 = 64 << 20;

/// Structural validation of one produced batch, without topic rules: the header
/// ([`check_batch_header`]) and every record, decompressed within
/// [`DEFAULT_MAX_DECOMPRESSED_BYTES`]. Returns the header.
pub fn validate_produce_batch(data: &[u8]) -> Result<BatchHeader, BatchError> {
    let h = check_batch_header(data)?;
    let mut records = crate::records::Records::open(data, &h, DEFAULT_MAX_DECOMPRESSED_BYTES)?;
    let mut index = 0;
    while let Some(r) = records.next_record()? {
        if r.offset_delta != index {
            return Err(BatchError::InvalidRecord(
                "record offset deltas are not consecutive",
            ));
        }
        index += 1;
    }
    Ok(h)
}

/// Zig-zag varint (i32), as records use. Returns the value and the bytes it took.
pub fn read_varint(b: &[u8]) -> Option<(i32, usize)> {
    let (v, n) = read_unsigned_varlong(b, 5)?;
    let v = v as u32;
    Some((((v >> 1) as i32) ^ -((v & 1) as i32), n))
}

/// Zig-zag varlong (i64).
pub fn read_varlong(b: &[u8]) -> Option<(i64, usize)> {
    let (v, n) = read_unsigned_varlong(b, 10)?;
    Some((((v >> 1) as i64) ^ -((v & 1) as i64), n))
}

fn read_unsigned_varlong(b: &[u8], max_len: usize) -> Option<(u64, usize)> {
    let mut v: u64 = 0;
    for (i, &byte) in b.iter().take(max_len).enumerate() {
        v |= ((byte & 0x7f) as u64) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

/// Sets baseOffset and partitionLeaderEpoch of the batch at the start of `batch` (not CRC-covered).
pub fn patch_offsets(batch: &mut [u8], base_offset: i64, leader_epoch: i32) {
    if batch.len() >= BATCH_HEADER_LEN {
        batch[0..8].copy_from_slice(&base_offset.to_be_bytes());
        batch[12..16].copy_from_slice(&leader_epoch.to_be_bytes());
    }
}

/// Iterates over stored batches laid end to end: yields (byte position, header).
/// Stops at the first incomplete batch.
pub fn batches(data: &[u8]) -> impl Iterator<Item = (usize, BatchHeader)> + '_ {
    let mut pos = 0usize;
    std::iter::from_fn(move || {
        let h = BatchHeader::parse(data.get(pos..)?)?;
        let size = h.total_size();
        if size < BATCH_HEADER_LEN || pos + size > data.len() {
            return None;
        }
        let at = pos;
        pos += size;
        Some((at, h))
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use bytes::BytesMut;
    use kafka_protocol::records::{
        Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
    };

    pub(crate) fn encode(records: usize, compression: Compression) -> Vec<u8> {
        let recs: Vec<Record> = (0..records)
            .map(|i| Record {
                transactional: false,
                control: false,
                partition_leader_epoch: -1,
                producer_id: 7,
                producer_epoch: 0,
                timestamp_type: TimestampType::Creation,
                offset: i as i64,
                sequence: i as i32,
                timestamp: 1_000 + i as i64,
                key: Some(bytes::Bytes::from(format!("k{i}"))),
                value: Some(bytes::Bytes::from(format!("value-{i}"))),
                headers: Default::default(),
                delete_horizon: false,
            })
            .collect();
        let mut buf = BytesMut::new();
        let opts = RecordEncodeOptions {
            version: 2,
            compression,
        };
        RecordBatchEncoder::encode(&mut buf, &recs, &opts).unwrap();
        buf.to_vec()
    }

    /// A batch with one record per key (`None`: no key), record i stamped `base_ts + ts_deltas[i]`.
    pub(crate) fn encode_records(
        keys: &[Option<&str>],
        base_ts: i64,
        ts_deltas: &[i64],
        compression: Compression,
    ) -> Vec<u8> {
        let recs: Vec<Record> = keys
            .iter()
            .zip(ts_deltas)
            .enumerate()
            .map(|(i, (k, d))| Record {
                transactional: false,
                control: false,
                partition_leader_epoch: -1,
                producer_id: 7,
                producer_epoch: 0,
                timestamp_type: TimestampType::Creation,
                offset: i as i64,
                sequence: i as i32,
                timestamp: base_ts + d,
                key: k.map(|k| bytes::Bytes::from(k.to_string())),
                value: Some(bytes::Bytes::from(format!("value-{i}"))),
                headers: Default::default(),
                delete_horizon: false,
            })
            .collect();
        let mut buf = BytesMut::new();
        let opts = RecordEncodeOptions {
            version: 2,
            compression,
        };
        RecordBatchEncoder::encode(&mut buf, &recs, &opts).unwrap();
        buf.to_vec()
    }

    #[test]
    fn accepts_valid_batches_of_every_codec() {
        for c in [
            Compression::None,
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            let b = encode(10, c);
            let h = validate_produce_batch(&b).unwrap();
            assert_eq!(h.record_count, 10);
            assert_eq!(h.last_offset_delta, 9);
            assert_eq!(h.producer_id, 7);
            assert_eq!(h.last_sequence(), 9);
        }
    }

    #[test]
    fn rejects_bad_crc() {
        let mut b = encode(3, Compression::None);
        let last = b.len() - 1;
        b[last] ^= 0xff;
        assert_eq!(
            validate_produce_batch(&b),
            Err(BatchError::Corrupt("CRC mismatch"))
        );
    }

    pub(crate) fn refresh_crc(b: &mut [u8]) {
        let crc = crc32c::crc32c(&b[ATTRIBUTES_OFFSET..]);
        b[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_be_bytes());
    }

    #[test]
    fn rejects_forged_record_count_under_valid_crc() {
        let mut b = encode(3, Compression::None);
        // Claim 1,000,000 records (and a matching last offset delta) and re-sign the batch.
        b[57..61].copy_from_slice(&1_000_000i32.to_be_bytes());
        b[23..27].copy_from_slice(&999_999i32.to_be_bytes());
        refresh_crc(&mut b);
        assert!(matches!(
            validate_produce_batch(&b),
            Err(BatchError::InvalidRecord(_))
        ));
        // A count that disagrees with the last offset delta.
        let mut b = encode(3, Compression::None);
        b[57..61].copy_from_slice(&2i32.to_be_bytes());
        refresh_crc(&mut b);
        assert!(matches!(
            validate_produce_batch(&b),
            Err(BatchError::InvalidRecord(_))
        ));
    }

    #[test]
    fn rejects_two_batches_and_truncation() {
        let mut b = encode(2, Compression::None);
        b.extend(encode(2, Compression::None));
        assert!(matches!(
            validate_produce_batch(&b),
            Err(BatchError::InvalidRecord(_))
        ));
        let b = encode(2, Compression::None);
        assert!(matches!(
            validate_produce_batch(&b[..b.len() - 1]),
            Err(BatchError::Corrupt(_))
        ));
    }

    #[test]
    fn patching_offsets_keeps_crc_valid() {
        let mut b = encode(4, Compression::Lz4);
        patch_offsets(&mut b, 1234, 0);
        let h = validate_produce_batch(&b).unwrap();
        assert_eq!(h.base_offset, 1234);
        assert_eq!(h.last_offset(), 1237);
    }

    #[test]
    fn iterates_batches() {
        let mut b = encode(2, Compression::None);
        let first = b.len();
        b.extend(encode(3, Compression::Gzip));
        let got: Vec<_> = batches(&b).map(|(p, h)| (p, h.record_count)).collect();
        assert_eq!(got, vec![(0, 2), (first, 3)]);
        assert_eq!(batches(&b[..b.len() - 1]).count(), 1);
    }

    proptest::proptest! {
        #[test]
        fn validation_never_panics(data in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let _ = validate_produce_batch(&data);
            let _ = batches(&data).count();
        }
    }
}
