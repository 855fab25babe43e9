//! Key compaction of one stored batch: Kafka's MemoryRecords.filterTo as the log cleaner calls it
//! (LogCleaner.cleanInto with its RecordFilter), sans-IO.
//!
//! The caller decides, per record, whether it is the latest of its key (the offset map); this module
//! applies the rest of Kafka's rules and rewrites the batch:
//! - a record without a key is dropped (Kafka counts it as invalid; produce refuses them on compact
//!   topics, so only old data can hold one);
//! - a tombstone (null value) that is the latest of its key is kept until the batch's delete horizon
//!   (KIP-534): the first cleaning that keeps a tombstone sets the horizon to now +
//!   `delete.retention.ms` (attributes bit 6, the horizon stored as the base timestamp, record
//!   timestamp deltas taken from it), and cleanings after it drop the tombstone;
//! - a batch whose every record stays, and that needs no horizon, is kept verbatim; one left with no
//!   records is removed; otherwise it is rebuilt in its own codec with the retained records, keeping
//!   its base offset and last offset delta (so the producer's last sequence is unchanged, as Kafka's
//!   buildRetainedRecordsInto keeps it), producer id, epoch, base sequence, partition leader epoch and
//!   flags, each record with its offset, timestamp, key, value and headers.

use crate::batch::{
    BatchError, BatchHeader, ATTRIBUTES_OFFSET, BATCH_HEADER_LEN, CRC_OFFSET, LOG_OVERHEAD,
    MAX_TIMESTAMP_OFFSET,
};
use crate::compression::{Codec, Compressor};
use crate::records::{record_timestamp, RecordView, Records};
use crate::validator::encode_record;

/// Attributes bit 6: the base timestamp is the batch's delete horizon (KIP-534).
pub const DELETE_HORIZON_MASK: i16 = 0x40;
const BASE_TIMESTAMP_OFFSET: usize = 27;
const RECORD_COUNT_OFFSET: usize = 57;

/// The delete horizon of a stored batch, if one was set.
pub fn delete_horizon(h: &BatchHeader) -> Option<i64> {
    (h.attributes & DELETE_HORIZON_MASK != 0).then_some(h.base_timestamp)
}

/// The key of every keyed record of `batch`, with its offset (building the offset map).
pub fn for_each_key(
    batch: &[u8],
    limit: u64,
    mut f: impl FnMut(i64, &[u8]),
) -> Result<(), BatchError> {
    let h = BatchHeader::parse(batch).ok_or(BatchError::Corrupt("shorter than a batch header"))?;
    let mut records = Records::open(batch, &h, limit)?;
    while let Some(r) = records.next_record()? {
        if let Some(key) = r.key {
            f(h.base_offset.wrapping_add(r.offset_delta as i64), key);
        }
    }
    Ok(())
}

/// What cleaning did to a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filtered {
    /// Unchanged: store it as it is.
    Kept,
    /// No record is left: drop the batch.
    Removed,
    /// The batch to store instead.
    Rebuilt(Vec<u8>),
}

/// The clock and the setting the tombstone rule needs.
#[derive(Debug, Clone, Copy)]
pub struct Horizon {
    pub now_ms: i64,
    /// The topic's `delete.retention.ms`.
    pub delete_retention_ms: i64,
}

/// Cleans one batch. `latest(offset, key)` says whether the record is the latest of its key.
/// `force_horizon` sets a delete horizon even without tombstones (transaction markers whose data is
/// gone, which Kafka keeps until their horizon as it keeps tombstones).
pub fn filter_batch(
    batch: &[u8],
    limit: u64,
    horizon: Horizon,
    force_horizon: bool,
    mut latest: impl FnMut(i64, &[u8]) -> bool,
) -> Result<Filtered, BatchError> {
    let h = BatchHeader::parse(batch).ok_or(BatchError::Corrupt("shorter than a batch header"))?;
    let codec = Codec::from_attributes(h.attributes)
        .ok_or(BatchError::Corrupt("unknown compression codec"))?;
    let current = delete_horizon(&h);
    // Kafka's shouldRetainDeletes: no horizon yet, or not reached.
    let deletes_kept = current.is_none_or(|hz| horizon.now_ms < hz);
    // Retained records: (timestamp, offset delta, attributes, key/value/headers bytes).
    let mut kept: Vec<(i64, i32, i8, Vec<u8>)> = Vec::new();
    let mut tombstones = false;
    let mut records = Records::open(batch, &h, limit)?;
    while let Some(r) = records.next_record()? {
        let Some(key) = r.key else { continue };
        let offset = h.base_offset.wrapping_add(r.offset_delta as i64);
        if !latest(offset, key) || (r.value.is_none() && !deletes_kept) {
            continue;
        }
        tombstones |= r.value.is_none();
        kept.push((
            record_timestamp(&h, &r),
            r.offset_delta,
            r.attributes,
            r.tail.to_vec(),
        ));
    }
    let total = records.count();
    let needs_horizon = current.is_none() && (tombstones || force_horizon);
    if kept.is_empty() {
        return Ok(Filtered::Removed);
    }
    if kept.len() as i32 == total && !needs_horizon {
        return Ok(Filtered::Kept);
    }
    let new_horizon = if needs_horizon {
        Some(horizon.now_ms.saturating_add(horizon.delete_retention_ms))
    } else {
        current
    };
    let base_ts = new_horizon.unwrap_or(kept[0].0);
    let max_ts = if h.is_log_append_time() {
        h.max_timestamp
    } else {
        kept.iter().map(|(ts, ..)| *ts).max().unwrap_or(-1)
    };
    let mut c = Compressor::new(codec).map_err(|_| BatchError::Corrupt("compressor"))?;
    let mut enc = Vec::new();
    for (ts, delta, attributes, tail) in &kept {
        let view = RecordView {
            attributes: *attributes,
            timestamp_delta: 0,
            offset_delta: 0,
            key: None,
            value: None,
            tail,
        };
        encode_record(&mut enc, &view, ts.wrapping_sub(base_ts), *delta);
        c.write_all(&enc)
            .map_err(|_| BatchError::Corrupt("compressor"))?;
    }
    let payload = c.finish().map_err(|_| BatchError::Corrupt("compressor"))?;
    let size = BATCH_HEADER_LEN + payload.len();
    let mut b = Vec::with_capacity(size);
    b.extend_from_slice(&batch[..BATCH_HEADER_LEN]);
    b.extend_from_slice(&payload);
    b[8..12].copy_from_slice(&((size - LOG_OVERHEAD) as i32).to_be_bytes());
    let attributes = if new_horizon.is_some() {
        h.attributes | DELETE_HORIZON_MASK
    } else {
        h.attributes & !DELETE_HORIZON_MASK
    };
    b[ATTRIBUTES_OFFSET..ATTRIBUTES_OFFSET + 2].copy_from_slice(&attributes.to_be_bytes());
    b[BASE_TIMESTAMP_OFFSET..BASE_TIMESTAMP_OFFSET + 8].copy_from_slice(&base_ts.to_be_bytes());
    b[MAX_TIMESTAMP_OFFSET..MAX_TIMESTAMP_OFFSET + 8].copy_from_slice(&max_ts.to_be_bytes());
    b[RECORD_COUNT_OFFSET..RECORD_COUNT_OFFSET + 4]
        .copy_from_slice(&(kept.len() as i32).to_be_bytes());
    let crc = crc32c::crc32c(&b[ATTRIBUTES_OFFSET..]);
    b[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_be_bytes());
    Ok(Filtered::Rebuilt(b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::records::{
        Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions,
        TimestampType,
    };

    const NOW: i64 = 1_700_000_000_000;
    const LIMIT: u64 = 64 << 20;

    /// One batch at base offset 100 of (key, value) records, producer 7 epoch 3 sequence 40.
    fn batch(records: &[(Option<&str>, Option<&str>)], compression: Compression) -> Vec<u8> {
        let recs: Vec<Record> = records
            .iter()
            .enumerate()
            .map(|(i, (k, v))| Record {
                transactional: false,
                control: false,
                partition_leader_epoch: 5,
                producer_id: 7,
                producer_epoch: 3,
                timestamp_type: TimestampType::Creation,
                offset: 100 + i as i64,
                sequence: 40 + i as i32,
                timestamp: 1_000 + 10 * i as i64,
                key: k.map(|k| bytes::Bytes::from(k.to_string())),
                value: v.map(|v| bytes::Bytes::from(v.to_string())),
                headers: [(
                    kafka_protocol::protocol::StrBytes::from_static_str("h"),
                    Some(bytes::Bytes::from_static(b"x")),
                )]
                .into_iter()
                .collect(),
                delete_horizon: false,
            })
            .collect();
        let mut out = bytes::BytesMut::new();
        RecordBatchEncoder::encode(
            &mut out,
            &recs,
            &RecordEncodeOptions {
                version: 2,
                compression,
            },
        )
        .unwrap();
        out.to_vec()
    }

    fn decode(b: &[u8]) -> Vec<Record> {
        let mut buf = bytes::Bytes::copy_from_slice(b);
        RecordBatchDecoder::decode(&mut buf).unwrap().records
    }

    fn at(now_ms: i64) -> Horizon {
        Horizon {
            now_ms,
            delete_retention_ms: 1_000,
        }
    }

    #[test]
    fn keeps_the_latest_per_key_with_every_field_in_the_batch_codec() {
        for c in [
            Compression::None,
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            let b = batch(
                &[
                    (Some("a"), Some("1")),
                    (Some("b"), Some("2")),
                    (Some("a"), Some("3")),
                    (Some("c"), Some("4")),
                ],
                c,
            );
            // "a" at 100 is superseded by 102; "c" (103) is the batch's last offset and goes too.
            let out = filter_batch(&b, LIMIT, at(NOW), false, |o, _| o != 100 && o != 103).unwrap();
            let Filtered::Rebuilt(out) = out else {
                panic!("{c:?}: {out:?}")
            };
            let h = BatchHeader::parse(&out).unwrap();
            assert_eq!(
                h.compression(),
                BatchHeader::parse(&b).unwrap().compression()
            );
            assert_eq!((h.base_offset, h.last_offset_delta), (100, 3));
            assert_eq!(
                (h.producer_id, h.producer_epoch, h.base_sequence),
                (7, 3, 40)
            );
            assert_eq!(h.record_count, 2);
            assert_eq!(h.max_timestamp, 1_020);
            let recs = decode(&out);
            let got: Vec<(i64, i64, Option<&[u8]>)> = recs
                .iter()
                .map(|r| (r.offset, r.timestamp, r.value.as_deref()))
                .collect();
            assert_eq!(
                got,
                vec![(101, 1_010, Some(&b"2"[..])), (102, 1_020, Some(&b"3"[..]))]
            );
            assert!(recs.iter().all(|r| r.headers.len() == 1));
        }
    }

    #[test]
    fn whole_batches_stay_verbatim_or_go() {
        let b = batch(
            &[(Some("a"), Some("1")), (Some("b"), Some("2"))],
            Compression::None,
        );
        assert_eq!(
            filter_batch(&b, LIMIT, at(NOW), false, |_, _| true).unwrap(),
            Filtered::Kept
        );
        assert_eq!(
            filter_batch(&b, LIMIT, at(NOW), false, |_, _| false).unwrap(),
            Filtered::Removed
        );
    }

    #[test]
    fn keyless_records_are_dropped() {
        let b = batch(
            &[(None, Some("1")), (Some("b"), Some("2"))],
            Compression::None,
        );
        let Filtered::Rebuilt(out) = filter_batch(&b, LIMIT, at(NOW), false, |_, _| true).unwrap()
        else {
            panic!()
        };
        assert_eq!(decode(&out).len(), 1);
    }

    #[test]
    fn tombstones_get_a_delete_horizon_then_go_after_it() {
        let b = batch(
            &[(Some("a"), None), (Some("b"), Some("2"))],
            Compression::Lz4,
        );
        let Filtered::Rebuilt(first) =
            filter_batch(&b, LIMIT, at(NOW), false, |_, _| true).unwrap()
        else {
            panic!()
        };
        let h = BatchHeader::parse(&first).unwrap();
        assert_eq!(delete_horizon(&h), Some(NOW + 1_000));
        // Record timestamps survive the new base timestamp.
        let recs = decode(&first);
        assert_eq!(
            recs.iter().map(|r| r.timestamp).collect::<Vec<_>>(),
            vec![1_000, 1_010]
        );
        assert!(recs[0].value.is_none());
        // Before the horizon nothing changes; after it the tombstone goes.
        assert_eq!(
            filter_batch(&first, LIMIT, at(NOW + 999), false, |_, _| true).unwrap(),
            Filtered::Kept
        );
        let Filtered::Rebuilt(second) =
            filter_batch(&first, LIMIT, at(NOW + 1_000), false, |_, _| true).unwrap()
        else {
            panic!()
        };
        let recs = decode(&second);
        assert_eq!(recs.len(), 1);
        assert_eq!((recs[0].offset, recs[0].timestamp), (101, 1_010));
    }

    #[test]
    fn a_forced_horizon_marks_a_batch_without_tombstones() {
        let b = batch(&[(Some("a"), Some("1"))], Compression::None);
        let Filtered::Rebuilt(out) = filter_batch(&b, LIMIT, at(NOW), true, |_, _| true).unwrap()
        else {
            panic!()
        };
        assert_eq!(
            delete_horizon(&BatchHeader::parse(&out).unwrap()),
            Some(NOW + 1_000)
        );
        assert_eq!(decode(&out)[0].timestamp, 1_000);
    }

    #[test]
    fn for_each_key_lists_offsets_and_keys() {
        let b = batch(
            &[(Some("a"), Some("1")), (None, Some("2"))],
            Compression::Gzip,
        );
        let mut seen = Vec::new();
        for_each_key(&b, LIMIT, |o, k| seen.push((o, k.to_vec()))).unwrap();
        assert_eq!(seen, vec![(100, b"a".to_vec())]);
    }
}
