//! Transaction markers: the control batches a transaction coordinator writes into every partition of
//! a transaction when it ends (Kafka's EndTransactionMarker, written by
//! MemoryRecords.withEndTransactionMarker).
//!
//! A marker is a magic v2 batch with the transactional and control attributes set, the producer's id
//! and epoch, base sequence -1 and one record: key = (version i16 0, type i16: 0 ABORT, 1 COMMIT),
//! value = (version i16 0, coordinator epoch i32). Consumers never hand control records to the
//! application; read_committed ones use the ABORT markers with the fetch's aborted-transaction list.

use crate::batch::{BatchHeader, ATTRIBUTES_OFFSET, BATCH_HEADER_LEN, CRC_OFFSET};

/// Attributes of a marker batch: transactional (bit 4) and control (bit 5), no compression.
pub const MARKER_ATTRIBUTES: i16 = 0x10 | 0x20;

/// One marker batch (offset 0; the writer patches its offset like any other batch).
pub fn marker_batch(
    producer_id: i64,
    producer_epoch: i16,
    commit: bool,
    coordinator_epoch: i32,
    timestamp_ms: i64,
) -> Vec<u8> {
    let mut key = Vec::with_capacity(4);
    key.extend_from_slice(&0i16.to_be_bytes());
    key.extend_from_slice(&(commit as i16).to_be_bytes());
    let mut value = Vec::with_capacity(6);
    value.extend_from_slice(&0i16.to_be_bytes());
    value.extend_from_slice(&coordinator_epoch.to_be_bytes());
    batch_of(
        MARKER_ATTRIBUTES,
        producer_id,
        producer_epoch,
        &[(Some(&key), Some(&value))],
        timestamp_ms,
    )
}

/// A record's key and value (None: null).
pub type KeyValue<'a> = (Option<&'a [u8]>, Option<&'a [u8]>);

/// An uncompressed batch of (key, value) records without a producer (offsets from 0, one
/// timestamp): the records the broker writes itself into its internal topics.
pub fn plain_batch(records: &[KeyValue<'_>], timestamp_ms: i64) -> Vec<u8> {
    batch_of(0, -1, -1, records, timestamp_ms)
}

fn batch_of(
    attributes: i16,
    producer_id: i64,
    producer_epoch: i16,
    records: &[KeyValue<'_>],
    timestamp_ms: i64,
) -> Vec<u8> {
    let mut payload = Vec::new();
    let mut body = Vec::new();
    for (delta, (key, value)) in records.iter().enumerate() {
        body.clear();
        body.push(0u8); // record attributes
        put_varint(&mut body, 0); // timestamp delta
        put_varint(&mut body, delta as i64); // offset delta
        for field in [key, value] {
            match field {
                Some(b) => {
                    put_varint(&mut body, b.len() as i64);
                    body.extend_from_slice(b);
                }
                None => put_varint(&mut body, -1),
            }
        }
        put_varint(&mut body, 0); // headers
        put_varint(&mut payload, body.len() as i64);
        payload.extend_from_slice(&body);
    }
    let total = BATCH_HEADER_LEN + payload.len();
    let mut b = Vec::with_capacity(total);
    b.extend_from_slice(&0i64.to_be_bytes()); // base offset
    b.extend_from_slice(&((total - 12) as i32).to_be_bytes()); // batch length
    b.extend_from_slice(&(-1i32).to_be_bytes()); // partition leader epoch
    b.push(2); // magic
    b.extend_from_slice(&0u32.to_be_bytes()); // crc, below
    b.extend_from_slice(&attributes.to_be_bytes());
    let last_delta = records.len().saturating_sub(1) as i32;
    b.extend_from_slice(&last_delta.to_be_bytes());
    b.extend_from_slice(&timestamp_ms.to_be_bytes());
    b.extend_from_slice(&timestamp_ms.to_be_bytes());
    b.extend_from_slice(&producer_id.to_be_bytes());
    b.extend_from_slice(&producer_epoch.to_be_bytes());
    b.extend_from_slice(&(-1i32).to_be_bytes()); // base sequence
    b.extend_from_slice(&(records.len() as i32).to_be_bytes());
    b.extend_from_slice(&payload);
    let crc = crc32c::crc32c(&b[ATTRIBUTES_OFFSET..]);
    b[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_be_bytes());
    b
}

/// The marker a stored control batch holds: `Some(true)` COMMIT, `Some(false)` ABORT, `None` when
/// `batch` is not a marker batch.
pub fn marker_kind(batch: &[u8]) -> Option<bool> {
    let h = BatchHeader::parse(batch)?;
    if !h.is_control() || h.compression() != 0 {
        return None;
    }
    let rec = batch.get(BATCH_HEADER_LEN..)?;
    let (_, n) = crate::batch::read_varint(rec)?;
    let mut at = n + 1; // length, attributes
    let (_, n) = crate::batch::read_varlong(rec.get(at..)?)?;
    at += n;
    let (_, n) = crate::batch::read_varint(rec.get(at..)?)?;
    at += n;
    let (klen, n) = crate::batch::read_varint(rec.get(at..)?)?;
    at += n;
    let key = rec.get(at..at + usize::try_from(klen).ok()?)?;
    match key.get(2..4)? {
        [0, 0] => Some(false),
        [0, 1] => Some(true),
        _ => None,
    }
}

fn put_varint(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::check_batch_header;
    use kafka_protocol::records::RecordBatchDecoder;

    #[test]
    fn plain_batches_decode_with_null_values_and_pass_validation() {
        let b = plain_batch(&[(Some(b"k1"), Some(b"v1")), (Some(b"k2"), None)], 1_000);
        let h = check_batch_header(&b).unwrap();
        assert_eq!(
            (h.record_count, h.last_offset_delta, h.producer_id),
            (2, 1, -1)
        );
        let mut buf = bytes::Bytes::from(b);
        let set = RecordBatchDecoder::decode(&mut buf).unwrap();
        let got: Vec<_> = set
            .records
            .iter()
            .map(|r| (r.offset, r.key.clone(), r.value.clone(), r.timestamp))
            .collect();
        assert_eq!(
            got,
            vec![
                (
                    0,
                    Some(bytes::Bytes::from_static(b"k1")),
                    Some(bytes::Bytes::from_static(b"v1")),
                    1_000
                ),
                (1, Some(bytes::Bytes::from_static(b"k2")), None, 1_000),
            ]
        );
    }

    #[test]
    fn markers_decode_as_kafka_control_records() {
        for commit in [true, false] {
            let b = marker_batch(4001, 3, commit, 0, 1_700_000_000_000);
            // A valid batch with a good CRC (the validator's check refuses it only for being a control
            // batch from a client).
            assert!(check_batch_header(&b).is_err());
            let h = BatchHeader::parse(&b).unwrap();
            assert!(h.is_control() && h.is_transactional());
            assert_eq!(
                (h.producer_id, h.producer_epoch, h.base_sequence),
                (4001, 3, -1)
            );
            assert_eq!(marker_kind(&b), Some(commit));
            let mut buf = bytes::Bytes::from(b.clone());
            let set = RecordBatchDecoder::decode(&mut buf).unwrap();
            assert_eq!(set.records.len(), 1);
            let r = &set.records[0];
            assert!(r.control && r.transactional);
            let key = r.key.as_ref().unwrap();
            assert_eq!(&key[..], &[0, 0, 0, commit as u8]);
            assert_eq!(&r.value.as_ref().unwrap()[..], &[0, 0, 0, 0, 0, 0]);
        }
    }
}
