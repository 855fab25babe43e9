//! Produce-time validation of a record batch against its topic's rules, and the rewrites Kafka makes
//! there (Kafka's LogValidator, for magic v2 batches from clients):
//! - the header ([`check_batch_header`]), then every record, decompressed through the bounded streaming
//!   reader ([`crate::records`]): the count must match the header, each record must be well formed;
//! - per-record rules, all records checked and every failure reported by batch index (KIP-467):
//!   a record without a key on a compacted topic is INVALID_RECORD; with `message.timestamp.type`
//!   CreateTime, a timestamp more than `message.timestamp.before.max.ms` before or
//!   `message.timestamp.after.max.ms` after now is INVALID_TIMESTAMP (KIP-937); a producer-set
//!   LogAppendTime flag is INVALID_TIMESTAMP unless the CreateTime range check applies;
//! - the batch is kept verbatim when it can be (offsets are assigned later by patching baseOffset,
//!   outside the CRC). Its header is patched in place (attributes' timestamp-type bit, maxTimestamp,
//!   CRC) when the topic is LogAppendTime (maxTimestamp = now) or the producer's maxTimestamp or type
//!   bit is not the records' (Kafka's setMaxTimestamp). Records are re-encoded only where Kafka
//!   re-encodes them: the topic's `compression.type` names a codec other than the batch's, or the
//!   inner offset deltas are not 0, 1, 2... (Kafka rewrites such batches rather than refusing them).
//!   A rebuilt batch keeps each record's timestamp, key, value and headers, the producer id, epoch,
//!   base sequence and transactional flag, and must still fit `max.message.bytes`.
//!
//! Sans-IO and synchronous: the broker runs it on a blocking thread when [`is_heavy`] says it
//! decompresses or compresses.

use crate::batch::{
    check_batch_header, BatchError, BatchHeader, RecordError, RecordErrors, ATTRIBUTES_OFFSET,
    BATCH_HEADER_LEN, CRC_OFFSET, LOG_OVERHEAD, MAX_TIMESTAMP_OFFSET, TIMESTAMP_TYPE_MASK,
};
use crate::compression::{Codec, Compressor};
use crate::records::{record_timestamp, RecordView, Records};

/// `message.timestamp.type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimestampType {
    CreateTime,
    LogAppendTime,
}

impl TimestampType {
    pub fn from_config(v: &str) -> Option<TimestampType> {
        match v {
            "CreateTime" => Some(TimestampType::CreateTime),
            "LogAppendTime" => Some(TimestampType::LogAppendTime),
            _ => None,
        }
    }
}

/// The topic's rules for one batch.
#[derive(Debug, Clone)]
pub struct Rules {
    /// "topic-partition", as Kafka's messages name it.
    pub topic_partition: String,
    /// The append time (LogAppendTime) and the reference for the timestamp range.
    pub now_ms: i64,
    pub timestamp_type: TimestampType,
    pub timestamp_before_max_ms: i64,
    pub timestamp_after_max_ms: i64,
    /// `cleanup.policy` contains `compact`: every record needs a key.
    pub compacted: bool,
    /// The topic's `compression.type` codec; `None` for `producer` (keep the batch's).
    pub target: Option<Codec>,
    pub max_message_bytes: i32,
    /// The bound on a batch's inflated records (`message.max.decompressed.bytes`).
    pub max_decompressed_bytes: u64,
}

/// A batch that passed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Validated {
    /// The header of the batch to store (the rewritten one, if rewritten).
    pub header: BatchHeader,
    /// The bytes to store instead of the producer's, when the batch changed.
    pub rewritten: Option<Vec<u8>>,
    /// The append time for a LogAppendTime topic (the produce response's log_append_time_ms), else -1.
    pub log_append_time_ms: i64,
}

/// True when validating `h` decompresses or compresses: the caller should run it off the async
/// runtime's threads.
pub fn is_heavy(h: &BatchHeader, rules: &Rules) -> bool {
    h.compression() != 0 || rules.target.is_some_and(|t| t.id() != 0)
}

/// Validates one produced batch (`data` is the partition's whole records field) against `rules`.
pub fn validate(data: &[u8], rules: &Rules) -> Result<Validated, BatchError> {
    let h = check_batch_header(data)?;
    let source = Codec::from_attributes(h.attributes)
        .ok_or(BatchError::Corrupt("unknown compression codec"))?;
    let target = rules.target.unwrap_or(source);
    let records = match check_records(data, &h, rules, (target != source).then_some(target))? {
        Pass::Done(r) => r,
        // Offsets deltas not 0, 1, 2...: rebuild in the same codec (a second, bounded pass).
        Pass::Renumber => match check_records(data, &h, rules, Some(target))? {
            Pass::Done(r) => r,
            Pass::Renumber => return Err(BatchError::InvalidRecord("record offsets")),
        },
    };
    let log_append_time = rules.timestamp_type == TimestampType::LogAppendTime;
    let max_timestamp = if log_append_time {
        rules.now_ms
    } else {
        records.max_timestamp
    };
    let type_bit = if log_append_time {
        TIMESTAMP_TYPE_MASK
    } else {
        0
    };
    let out = match records.rebuilt {
        Some(payload) => {
            let size = BATCH_HEADER_LEN + payload.len();
            if size > rules.max_message_bytes.max(0) as usize {
                return Err(BatchError::TooLarge {
                    size,
                    max: rules.max_message_bytes,
                });
            }
            let mut b = Vec::with_capacity(size);
            b.extend_from_slice(&data[..BATCH_HEADER_LEN]);
            b.extend_from_slice(&payload);
            let len = (size - LOG_OVERHEAD) as i32;
            b[8..12].copy_from_slice(&len.to_be_bytes());
            let attributes = (h.attributes & !(0x7 | TIMESTAMP_TYPE_MASK)) | target.id() | type_bit;
            finish_header(&mut b, attributes, max_timestamp);
            Some(b)
        }
        None if h.max_timestamp != max_timestamp
            || (h.attributes & TIMESTAMP_TYPE_MASK) != type_bit =>
        {
            let mut b = data.to_vec();
            finish_header(
                &mut b,
                (h.attributes & !TIMESTAMP_TYPE_MASK) | type_bit,
                max_timestamp,
            );
            Some(b)
        }
        None => None,
    };
    let header = match &out {
        Some(b) => BatchHeader::parse(b).ok_or(BatchError::Corrupt("rewritten batch"))?,
        None => h,
    };
    Ok(Validated {
        header,
        rewritten: out,
        log_append_time_ms: if log_append_time { rules.now_ms } else { -1 },
    })
}

/// Sets attributes and maxTimestamp and signs the batch again.
fn finish_header(b: &mut [u8], attributes: i16, max_timestamp: i64) {
    b[ATTRIBUTES_OFFSET..ATTRIBUTES_OFFSET + 2].copy_from_slice(&attributes.to_be_bytes());
    b[MAX_TIMESTAMP_OFFSET..MAX_TIMESTAMP_OFFSET + 8].copy_from_slice(&max_timestamp.to_be_bytes());
    let crc = crc32c::crc32c(&b[ATTRIBUTES_OFFSET..]);
    b[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_be_bytes());
}

struct Checked {
    /// The largest record timestamp (-1, Kafka's NO_TIMESTAMP, if none).
    max_timestamp: i64,
    /// The records re-encoded in the target codec, when rebuilding.
    rebuilt: Option<Vec<u8>>,
}

enum Pass {
    Done(Checked),
    /// Kept verbatim would give wrong offsets: run again rebuilding.
    Renumber,
}

/// One pass over the records: structure, per-record rules, and (with `rebuild`) re-encoding.
fn check_records(
    data: &[u8],
    h: &BatchHeader,
    rules: &Rules,
    rebuild: Option<Codec>,
) -> Result<Pass, BatchError> {
    let mut records = Records::open(data, h, rules.max_decompressed_bytes)?;
    let mut out = match rebuild {
        Some(c) => Some(Compressor::new(c).map_err(|_| BatchError::Corrupt("compressor"))?),
        None => None,
    };
    let mut errors = Vec::new();
    let mut invalid_timestamp = false;
    let mut max_timestamp = -1i64;
    let mut encoded = Vec::new();
    let mut index: i32 = 0;
    while let Some(r) = records.next_record()? {
        let ts = record_timestamp(h, &r);
        match record_error(h, &r, ts, rules) {
            Some((is_timestamp, message)) => {
                invalid_timestamp |= is_timestamp;
                errors.push(RecordError {
                    batch_index: index,
                    message,
                });
            }
            None => {
                max_timestamp = max_timestamp.max(ts);
                if r.offset_delta != index && out.is_none() {
                    return Ok(Pass::Renumber);
                }
            }
        }
        if let (Some(c), true) = (&mut out, errors.is_empty()) {
            encode_record(&mut encoded, &r, ts.wrapping_sub(h.base_timestamp), index);
            c.write_all(&encoded)
                .map_err(|_| BatchError::Corrupt("compressor"))?;
            // The output only grows: stop as soon as it cannot fit.
            if c.len() > rules.max_message_bytes.max(0) as usize {
                return Err(BatchError::TooLarge {
                    size: c.len() + BATCH_HEADER_LEN,
                    max: rules.max_message_bytes,
                });
            }
        }
        index += 1;
    }
    if !errors.is_empty() {
        return Err(BatchError::Records(RecordErrors {
            invalid_timestamp,
            errors,
        }));
    }
    let rebuilt = match out {
        Some(c) => Some(c.finish().map_err(|_| BatchError::Corrupt("compressor"))?),
        None => None,
    };
    Ok(Pass::Done(Checked {
        max_timestamp,
        rebuilt,
    }))
}

/// Kafka's LogValidator.validateRecord for magic v2: the key rule first, then the timestamp rule.
/// Returns (is a timestamp error, message).
fn record_error(
    h: &BatchHeader,
    r: &RecordView<'_>,
    ts: i64,
    rules: &Rules,
) -> Option<(bool, String)> {
    if rules.compacted && r.key.is_none() {
        return Some((
            false,
            format!(
                "Compacted topic cannot accept message without key in topic partition {}",
                rules.topic_partition
            ),
        ));
    }
    let offset = h.base_offset.wrapping_add(r.offset_delta as i64);
    // Java's long arithmetic wraps; so does this, to give the same verdicts and the same numbers.
    if rules.timestamp_type == TimestampType::CreateTime && ts != -1 {
        let diff = rules.now_ms.wrapping_sub(ts);
        if diff > rules.timestamp_before_max_ms
            || diff.wrapping_neg() > rules.timestamp_after_max_ms
        {
            return Some((
                true,
                format!(
                    "Timestamp {ts} of message with offset {offset} is out of range. The timestamp \
                     should be within [{}, {}]",
                    rules.now_ms.wrapping_sub(rules.timestamp_before_max_ms),
                    rules.now_ms.wrapping_add(rules.timestamp_after_max_ms)
                ),
            ));
        }
    } else if h.is_log_append_time() {
        return Some((
            true,
            format!(
                "Invalid timestamp type in message DefaultRecord(offset={offset}, timestamp={ts}, \
                 key={} bytes, value={} bytes). Producer should not set timestamp type to \
                 LogAppendTime.",
                r.key.map_or(0, <[u8]>::len),
                r.value.map_or(0, <[u8]>::len)
            ),
        ));
    }
    None
}

/// A record with the given timestamp and offset deltas, its other fields verbatim, length-prefixed.
pub(crate) fn encode_record(
    out: &mut Vec<u8>,
    r: &RecordView<'_>,
    timestamp_delta: i64,
    offset_delta: i32,
) {
    let mut body = [0u8; 1 + 10 + 5];
    body[0] = r.attributes as u8;
    let mut n = 1;
    n += put_varlong(&mut body[n..], timestamp_delta);
    n += put_varlong(&mut body[n..], offset_delta as i64);
    out.clear();
    let mut len = [0u8; 10];
    let l = put_varlong(&mut len, (n + r.tail.len()) as i64);
    out.extend_from_slice(&len[..l]);
    out.extend_from_slice(&body[..n]);
    out.extend_from_slice(r.tail);
}

/// Zig-zag varlong; a varint of a value within i32 is the same bytes. Returns the bytes written.
fn put_varlong(out: &mut [u8], v: i64) -> usize {
    let mut u = ((v << 1) ^ (v >> 63)) as u64;
    let mut i = 0;
    loop {
        if u < 0x80 {
            out[i] = u as u8;
            return i + 1;
        }
        out[i] = (u as u8 & 0x7f) | 0x80;
        u >>= 7;
        i += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::tests::{encode, encode_records, refresh_crc};
    use kafka_protocol::records::Compression;

    const NOW: i64 = 1_700_000_000_000;

    pub(crate) fn rules() -> Rules {
        Rules {
            topic_partition: "t-0".into(),
            now_ms: NOW,
            timestamp_type: TimestampType::CreateTime,
            timestamp_before_max_ms: i64::MAX,
            timestamp_after_max_ms: 3_600_000,
            compacted: false,
            target: None,
            max_message_bytes: 1_048_588,
            max_decompressed_bytes: 1 << 20,
        }
    }

    const ALL: [Compression; 5] = [
        Compression::None,
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
        Compression::Zstd,
    ];

    #[test]
    fn valid_batches_stay_verbatim() {
        for c in ALL {
            let b = encode(10, c);
            let v = validate(&b, &rules()).unwrap();
            assert_eq!(v.rewritten, None, "{c:?}");
            assert_eq!(v.log_append_time_ms, -1);
            assert_eq!(v.header.record_count, 10);
        }
    }

    #[test]
    fn forged_inner_count_of_a_compressed_batch_is_invalid_record() {
        for c in ALL {
            // 10 records inside, the header says 11 (count and last offset delta agree, CRC redone).
            let mut b = encode(10, c);
            b[23..27].copy_from_slice(&10i32.to_be_bytes());
            b[57..61].copy_from_slice(&11i32.to_be_bytes());
            refresh_crc(&mut b);
            let e = validate(&b, &rules()).unwrap_err();
            assert_eq!(e.kafka_error_code(), 87, "{c:?}: {e}");
            let mut b = encode(10, c);
            b[23..27].copy_from_slice(&8i32.to_be_bytes());
            b[57..61].copy_from_slice(&9i32.to_be_bytes());
            refresh_crc(&mut b);
            assert_eq!(validate(&b, &rules()).unwrap_err().kafka_error_code(), 87);
        }
    }

    #[test]
    fn garbage_flagged_as_compressed_is_corrupt_message() {
        for codec in 1..=4i16 {
            let mut b = encode(3, Compression::None);
            // Same bytes, flagged as compressed: they are not a valid stream of that codec.
            let a = i16::from_be_bytes([b[21], b[22]]) | codec;
            b[21..23].copy_from_slice(&a.to_be_bytes());
            refresh_crc(&mut b);
            let e = validate(&b, &rules()).unwrap_err();
            assert_eq!(e.kafka_error_code(), 2, "codec {codec}: {e}");
        }
    }

    #[test]
    fn keyless_records_on_a_compacted_topic_fail_each_by_index() {
        let b = encode_records(
            &[Some("a"), None, Some("c"), None, None, None],
            NOW,
            &[0; 6],
            Compression::Lz4,
        );
        let r = Rules {
            compacted: true,
            ..rules()
        };
        let e = validate(&b, &r).unwrap_err();
        assert_eq!(e.kafka_error_code(), 87);
        let idx: Vec<i32> = e.record_errors().iter().map(|e| e.batch_index).collect();
        assert_eq!(idx, vec![1, 3, 4, 5]);
        let m = "Compacted topic cannot accept message without key in topic partition t-0";
        assert!(e.record_errors().iter().all(|e| e.message == m));
        assert_eq!(
            e.to_string(),
            format!(
                "One or more records have been rejected due to 4 record errors in total, and only \
                 showing the first three errors at most: [RecordError(batchIndex=1, message='{m}'), \
                 RecordError(batchIndex=3, message='{m}'), RecordError(batchIndex=4, message='{m}')]"
            )
        );
        // Keys present: accepted.
        assert!(validate(&encode(3, Compression::None), &r).is_ok());
    }

    #[test]
    fn timestamps_out_of_range_are_invalid_timestamp() {
        // Records 1 and 2 are two hours ahead, beyond the 1-hour default of after.max.ms.
        let b = encode_records(
            &[Some("a"), Some("b"), Some("c")],
            NOW,
            &[0, 7_200_000, 7_300_000],
            Compression::None,
        );
        let e = validate(&b, &rules()).unwrap_err();
        assert_eq!(e.kafka_error_code(), 32);
        assert_eq!(
            e.to_string(),
            "One or more records have been rejected due to invalid timestamp"
        );
        let errs = e.record_errors();
        assert_eq!(errs.len(), 2);
        assert_eq!(errs[0].batch_index, 1);
        // Kafka's numbers: now - Long.MAX wraps to a negative number, as in Java.
        assert_eq!(
            errs[0].message,
            format!(
                "Timestamp {} of message with offset 1 is out of range. The timestamp should be \
                 within [{}, {}]",
                NOW + 7_200_000,
                NOW - i64::MAX,
                NOW + 3_600_000
            )
        );
        // before.max.ms: a day-old record with a one-hour bound.
        let old = encode_records(&[Some("a")], NOW - 86_400_000, &[0], Compression::Zstd);
        let r = Rules {
            timestamp_before_max_ms: 3_600_000,
            ..rules()
        };
        assert_eq!(validate(&old, &r).unwrap_err().kafka_error_code(), 32);
        assert!(validate(&old, &rules()).is_ok());
        // A key error and a timestamp error in one batch: INVALID_TIMESTAMP, both listed.
        let mixed = encode_records(
            &[Some("a"), None, Some("c")],
            NOW,
            &[0, 0, 7_200_000],
            Compression::None,
        );
        let r = Rules {
            compacted: true,
            ..rules()
        };
        let e = validate(&mixed, &r).unwrap_err();
        assert_eq!(e.kafka_error_code(), 32);
        assert_eq!(
            e.record_errors()
                .iter()
                .map(|e| e.batch_index)
                .collect::<Vec<_>>(),
            vec![1, 2]
        );
    }

    #[test]
    fn log_append_time_sets_the_type_bit_and_max_timestamp_without_re_encoding() {
        for c in ALL {
            let b = encode_records(&[Some("a"), Some("b")], NOW - 1_000_000_000_000, &[0, 5], c);
            let r = Rules {
                timestamp_type: TimestampType::LogAppendTime,
                ..rules()
            };
            let v = validate(&b, &r).unwrap();
            assert_eq!(v.log_append_time_ms, NOW);
            let out = v.rewritten.unwrap();
            assert_eq!(out.len(), b.len(), "{c:?}");
            // Only attributes, maxTimestamp and the CRC changed; the records are the producer's.
            assert_eq!(out[BATCH_HEADER_LEN..], b[BATCH_HEADER_LEN..]);
            let h = check_batch_header(&out).unwrap();
            assert!(h.is_log_append_time());
            assert_eq!(h.max_timestamp, NOW);
            assert_eq!(h.compression(), b[22] & 7);
            // A producer may not set the flag itself on such a topic.
            let e = validate(&out, &r).unwrap_err();
            assert_eq!(e.kafka_error_code(), 32);
            assert!(e.record_errors()[0]
                .message
                .ends_with("Producer should not set timestamp type to LogAppendTime."));
        }
    }

    #[test]
    fn a_lying_max_timestamp_is_corrected() {
        let mut b = encode_records(&[Some("a"), Some("b")], NOW, &[0, 9], Compression::Gzip);
        b[35..43].copy_from_slice(&(NOW + 1_000_000_000).to_be_bytes());
        refresh_crc(&mut b);
        let v = validate(&b, &rules()).unwrap();
        assert_eq!(v.header.max_timestamp, NOW + 9);
        assert_eq!(
            check_batch_header(&v.rewritten.unwrap())
                .unwrap()
                .max_timestamp,
            NOW + 9
        );
    }

    fn decoded(b: &[u8]) -> Vec<kafka_protocol::records::Record> {
        let mut buf = bytes::Bytes::copy_from_slice(b);
        kafka_protocol::records::RecordBatchDecoder::decode(&mut buf)
            .unwrap()
            .records
    }

    #[test]
    fn recompresses_to_the_topic_codec_keeping_every_field() {
        for from in ALL {
            for (to, id) in [
                (Codec::None, 0),
                (Codec::Gzip, 1),
                (Codec::Snappy, 2),
                (Codec::Lz4, 3),
                (Codec::Zstd, 4),
            ] {
                let b = encode(30, from);
                let r = Rules {
                    target: Some(to),
                    ..rules()
                };
                let v = validate(&b, &r).unwrap();
                let out = v.rewritten.clone().unwrap_or(b.clone());
                if from as i16 == id {
                    assert_eq!(v.rewritten, None, "{from:?} -> {to:?} stays verbatim");
                }
                let h = check_batch_header(&out).unwrap();
                assert_eq!(h.compression() as i16, id);
                let want = check_batch_header(&b).unwrap();
                assert_eq!(
                    (
                        h.producer_id,
                        h.producer_epoch,
                        h.base_sequence,
                        h.record_count
                    ),
                    (
                        want.producer_id,
                        want.producer_epoch,
                        want.base_sequence,
                        want.record_count
                    )
                );
                assert_eq!(h.base_timestamp, want.base_timestamp);
                assert_eq!(h.max_timestamp, want.max_timestamp);
                let (a, e) = (decoded(&out), decoded(&b));
                assert_eq!(a.len(), 30);
                for (x, y) in a.iter().zip(&e) {
                    assert_eq!(
                        (
                            x.offset,
                            x.timestamp,
                            &x.key,
                            &x.value,
                            &x.headers,
                            x.sequence
                        ),
                        (
                            y.offset,
                            y.timestamp,
                            &y.key,
                            &y.value,
                            &y.headers,
                            y.sequence
                        )
                    );
                }
                // The rebuilt batch passes validation again, verbatim.
                assert_eq!(validate(&out, &r).unwrap().rewritten, None);
            }
        }
    }

    #[test]
    fn recompression_respects_max_message_bytes() {
        // Highly compressible records: fine as zstd, too large uncompressed.
        let b = encode_records(&[Some("a"); 200], NOW, &[0; 200], Compression::Zstd);
        let r = Rules {
            target: Some(Codec::None),
            max_message_bytes: 2_000,
            ..rules()
        };
        assert!(b.len() < 2_000);
        assert!(matches!(
            validate(&b, &r),
            Err(BatchError::TooLarge { max: 2_000, .. })
        ));
    }

    #[test]
    fn non_consecutive_offset_deltas_are_renumbered() {
        // Rebuild a batch by hand whose records carry offset deltas 0, 2, 4.
        let b = encode(3, Compression::None);
        let mut recs = Records::open(&b, &check_batch_header(&b).unwrap(), 1 << 20).unwrap();
        let mut payload = Vec::new();
        let mut one = Vec::new();
        let mut i = 0;
        while let Some(r) = recs.next_record().unwrap() {
            encode_record(&mut one, &r, r.timestamp_delta, i * 2);
            payload.extend_from_slice(&one);
            i += 1;
        }
        for codec in [Codec::None, Codec::Zstd] {
            let z = crate::compression::compress(codec, &payload).unwrap();
            let mut batch = b[..BATCH_HEADER_LEN].to_vec();
            batch.extend_from_slice(&z);
            let len = (batch.len() - LOG_OVERHEAD) as i32;
            batch[8..12].copy_from_slice(&len.to_be_bytes());
            let a = i16::from_be_bytes([batch[21], batch[22]]) | codec.id();
            batch[21..23].copy_from_slice(&a.to_be_bytes());
            refresh_crc(&mut batch);
            let v = validate(&batch, &rules()).unwrap();
            let out = v.rewritten.unwrap();
            let offsets: Vec<i64> = decoded(&out).iter().map(|r| r.offset).collect();
            assert_eq!(offsets, vec![0, 1, 2], "{codec:?}");
        }
    }

    #[test]
    fn decompression_bound_is_enforced() {
        let b = encode(500, Compression::Zstd);
        let r = Rules {
            max_decompressed_bytes: 1_000,
            ..rules()
        };
        assert_eq!(
            validate(&b, &r),
            Err(BatchError::DecompressedTooLarge(1_000))
        );
        assert_eq!(validate(&b, &r).unwrap_err().kafka_error_code(), 10);
    }
}
