//! Produce-time record validation over real sockets against an in-process broker: compressed batches
//! are checked as Kafka's LogValidator checks them (garbage, forged counts, bombs), per-record errors
//! come back in record_errors (KIP-467), LogAppendTime and the topic's compression.type rewrite what is
//! stored, and ListOffsets by timestamp reads stored batches through the same bounded reader.

mod support;

use kafka_protocol::records::{Compression, RecordBatchDecoder};
use streamhouse_protocol::batch::BatchHeader;
use streamhouse_storage::AppendBatch;
use support::*;

#[tokio::test]
async fn garbage_flagged_as_compressed_is_corrupt_message_and_not_stored() {
    let b = start_with(|_| {}).await;
    let mut c = Client::connect(b.addr).await;
    create_with_configs(&mut c, "garbage", &[]).await;
    let like = batch(3, Compression::None);
    for codec in 1..=4 {
        // The records of an uncompressed batch, flagged as gzip/snappy/lz4/zstd, CRC right.
        let p = produce(
            &mut c,
            9,
            "garbage",
            with_payload(&like, codec, &like[HEADER_LEN..]),
        )
        .await;
        assert_eq!(p.error_code, 2, "codec {codec}: {:?}", p.error_message);
        assert!(p.record_errors.is_empty());
    }
    assert_eq!(
        list_offset(&mut c, "garbage", -1).await.1,
        0,
        "nothing stored"
    );
    // The same connection still produces.
    let p = produce(&mut c, 9, "garbage", batch(2, Compression::Gzip)).await;
    assert_eq!((p.error_code, p.base_offset), (0, 0));
}

#[tokio::test]
async fn forged_record_count_in_a_compressed_batch_is_invalid_record() {
    let b = start_with(|_| {}).await;
    let mut c = Client::connect(b.addr).await;
    create_with_configs(&mut c, "forged", &[]).await;
    for codec in [Compression::Gzip, Compression::Zstd] {
        for claimed in [4i32, 2] {
            // Three records inside; the header claims another count (and a matching last delta).
            let mut data = batch(3, codec).to_vec();
            data[23..27].copy_from_slice(&(claimed - 1).to_be_bytes());
            data[57..61].copy_from_slice(&claimed.to_be_bytes());
            sign(&mut data);
            let p = produce(&mut c, 9, "forged", data.into()).await;
            // Kafka answers INVALID_RECORD ("Incorrect declared batch size"), without record errors.
            assert_eq!(
                p.error_code, 87,
                "{codec:?} {claimed}: {:?}",
                p.error_message
            );
            assert!(p.record_errors.is_empty());
        }
    }
    assert_eq!(
        list_offset(&mut c, "forged", -1).await.1,
        0,
        "nothing stored"
    );
}

#[tokio::test]
async fn compression_bomb_is_refused_at_produce() {
    // The default bound, 64 MiB.
    let b = start_with(|_| {}).await;
    let mut c = Client::connect(b.addr).await;
    create_with_configs(&mut c, "bomb", &[]).await;
    // 256 MiB inflated from a 8 KiB zstd batch.
    let bomb = zstd_bomb_batch(256 << 20);
    assert!(bomb.len() < 16 << 10);
    let p = produce(&mut c, 9, "bomb", bomb).await;
    assert_eq!(p.error_code, 10, "{:?}", p.error_message);
    assert!(p
        .error_message
        .as_deref()
        .is_some_and(|m| m.contains("message.max.decompressed.bytes")));
    assert_eq!(list_offset(&mut c, "bomb", -1).await.1, 0, "nothing stored");
    // Just under the bound is fine as far as size goes (and then fails on its content).
    let p = produce(&mut c, 9, "bomb", zstd_bomb_batch(32 << 20)).await;
    assert_eq!(p.error_code, 87, "{:?}", p.error_message);
}

#[tokio::test]
async fn list_offsets_by_timestamp_reads_a_stored_bomb_within_the_bound() {
    let b = start_with(|_| {}).await;
    let mut c = Client::connect(b.addr).await;
    create_with_configs(&mut c, "stored", &[]).await;
    let ok = produce(&mut c, 9, "stored", batch(2, Compression::Zstd)).await;
    assert_eq!(ok.error_code, 0);
    // Planted past produce validation, as a bomb accepted before validation existed would be.
    let bomb = zstd_bomb_batch(256 << 20);
    let header = BatchHeader::parse(&bomb).unwrap();
    let t = b.broker.storage.topic("stored").unwrap();
    let results = b
        .broker
        .storage
        .submit(vec![AppendBatch {
            topic: t,
            partition: 0,
            header,
            data: bomb,
        }])
        .await
        .wait()
        .await;
    assert!(results[0].is_ok());
    // The bomb's header has the newest maxTimestamp: both lookups land on it and get an error,
    // not 256 MiB of memory (KAFKA_STORAGE_ERROR, as for any unreadable stored batch).
    let (err, _, _) = list_offset(&mut c, "stored", header.max_timestamp).await;
    assert_eq!(err, 56);
    let (err, _, _) = list_offset(&mut c, "stored", -3).await;
    assert_eq!(err, 56);
    // Lookups answered by the good batch still work.
    let (err, offset, _) = list_offset(&mut c, "stored", 0).await;
    assert_eq!((err, offset), (0, 0));
}

#[tokio::test]
async fn keyless_records_on_a_compacted_topic_fail_by_index() {
    let b = start_with(|_| {}).await;
    let mut c = Client::connect(b.addr).await;
    create_with_configs(&mut c, "compacted", &[("cleanup.policy", "compact")]).await;
    let keys = [Some("a"), None, Some("c"), None];
    let data = batch_of(&keys, now_ms(), &[0; 4], Compression::Lz4);
    let p = produce(&mut c, 9, "compacted", data.clone()).await;
    assert_eq!(p.error_code, 87);
    let want = "Compacted topic cannot accept message without key in topic partition compacted-0";
    let got: Vec<(i32, String)> = p
        .record_errors
        .iter()
        .map(|e| {
            (
                e.batch_index,
                e.batch_index_error_message.as_deref().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(got, vec![(1, want.to_string()), (3, want.to_string())]);
    assert!(p
        .error_message
        .as_deref()
        .unwrap()
        .starts_with("One or more records have been rejected due to 2 record errors in total"));
    // Kafka reports the log start offset with a validation failure.
    assert_eq!(p.log_start_offset, 0);
    // Produce v7 has no record_errors: the same error code, the field absent on the wire.
    let p = produce(&mut c, 7, "compacted", data).await;
    assert_eq!(p.error_code, 87);
    assert_eq!(
        list_offset(&mut c, "compacted", -1).await.1,
        0,
        "nothing stored"
    );
    // With keys everywhere it is accepted.
    let p = produce(&mut c, 9, "compacted", batch(3, Compression::None)).await;
    assert_eq!(p.error_code, 0);
}

#[tokio::test]
async fn timestamps_out_of_range_are_invalid_timestamp() {
    let b = start_with(|_| {}).await;
    let mut c = Client::connect(b.addr).await;
    create_with_configs(
        &mut c,
        "ts",
        &[("message.timestamp.before.max.ms", "86400000")],
    )
    .await;
    let now = now_ms();
    // Record 1 is two hours ahead (after.max.ms defaults to one hour), record 2 two days behind
    // (the topic's before.max.ms is one day).
    let data = batch_of(
        &[Some("a"), Some("b"), Some("c")],
        now,
        &[0, 7_200_000, -172_800_000],
        Compression::Snappy,
    );
    let p = produce(&mut c, 9, "ts", data).await;
    assert_eq!(p.error_code, 32, "{:?}", p.error_message);
    assert_eq!(
        p.error_message.as_deref(),
        Some("One or more records have been rejected due to invalid timestamp")
    );
    let idx: Vec<i32> = p.record_errors.iter().map(|e| e.batch_index).collect();
    assert_eq!(idx, vec![1, 2]);
    assert!(p.record_errors[0]
        .batch_index_error_message
        .as_deref()
        .unwrap()
        .contains("is out of range"));
    // A topic may widen the window.
    create_with_configs(
        &mut c,
        "ts-wide",
        &[
            ("message.timestamp.after.max.ms", "86400000"),
            ("message.timestamp.before.max.ms", "604800000"),
        ],
    )
    .await;
    let data = batch_of(
        &[Some("a"), Some("b")],
        now,
        &[7_200_000, -172_800_000],
        Compression::None,
    );
    assert_eq!(produce(&mut c, 9, "ts-wide", data).await.error_code, 0);
}

#[tokio::test]
async fn log_append_time_topic_stamps_batches_with_the_append_time() {
    let b = start_with(|_| {}).await;
    let mut c = Client::connect(b.addr).await;
    create_with_configs(
        &mut c,
        "lat",
        &[("message.timestamp.type", "LogAppendTime")],
    )
    .await;
    let before = now_ms();
    // A producer timestamp far in the past: ignored, not range-checked.
    let p = produce(
        &mut c,
        9,
        "lat",
        batch_of(&[Some("a"), Some("b")], 1_000, &[0, 1], Compression::Gzip),
    )
    .await;
    let after = now_ms();
    assert_eq!(p.error_code, 0, "{:?}", p.error_message);
    assert!(
        (before..=after).contains(&p.log_append_time_ms),
        "{}",
        p.log_append_time_ms
    );
    let mut raw = fetch_raw(&mut c, "lat", 0).await;
    let h = BatchHeader::parse(&raw).unwrap();
    assert_ne!(h.attributes & 8, 0, "LogAppendTime bit");
    assert_eq!(h.max_timestamp, p.log_append_time_ms);
    assert_eq!(h.compression(), 1, "kept gzip: only the header changed");
    // Consumers read each record's timestamp as the batch's maxTimestamp in a LogAppendTime batch
    // (kafka-protocol's decoder reports only the type; the compat scenario checks clients' view).
    let set = RecordBatchDecoder::decode(&mut raw).unwrap();
    assert_eq!(set.records.len(), 2);
    for r in &set.records {
        assert_eq!(
            r.timestamp_type,
            kafka_protocol::records::TimestampType::LogAppend
        );
    }
    // CreateTime topics answer -1.
    create_with_configs(&mut c, "ct", &[]).await;
    let p = produce(&mut c, 9, "ct", batch(1, Compression::None)).await;
    assert_eq!(p.log_append_time_ms, -1);
}

#[tokio::test]
async fn topic_compression_type_recompresses() {
    let b = start_with(|_| {}).await;
    let mut c = Client::connect(b.addr).await;
    for (name, codec, id) in [
        ("to-gzip", "gzip", 1),
        ("to-zstd", "zstd", 4),
        ("to-snappy", "snappy", 2),
        ("to-none", "uncompressed", 0),
    ] {
        create_with_configs(&mut c, name, &[("compression.type", codec)]).await;
        let sent = batch(50, Compression::Lz4);
        let p = produce(&mut c, 9, name, sent.clone()).await;
        assert_eq!(p.error_code, 0, "{name}: {:?}", p.error_message);
        let mut raw = fetch_raw(&mut c, name, 0).await;
        let h = BatchHeader::parse(&raw).unwrap();
        assert_eq!(h.compression(), id, "{name}");
        let got = RecordBatchDecoder::decode(&mut raw).unwrap().records;
        let want = RecordBatchDecoder::decode(&mut sent.clone())
            .unwrap()
            .records;
        assert_eq!(got.len(), 50);
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(
                (g.offset, g.timestamp, &g.key, &g.value, &g.headers),
                (w.offset, w.timestamp, &w.key, &w.value, &w.headers)
            );
        }
    }
}

#[tokio::test]
async fn broker_settings_apply_to_topics_without_their_own() {
    let b = start_with(|c| {
        c.compression_type = "zstd".into();
        c.log_message_timestamp_type = "LogAppendTime".into();
        c.log_message_timestamp_before_max_ms = 1;
    })
    .await;
    let mut c = Client::connect(b.addr).await;
    create_with_configs(&mut c, "broker-wide", &[]).await;
    let p = produce(&mut c, 9, "broker-wide", batch(5, Compression::Gzip)).await;
    assert_eq!(p.error_code, 0);
    assert!(p.log_append_time_ms > 0);
    let raw = fetch_raw(&mut c, "broker-wide", 0).await;
    let h = BatchHeader::parse(&raw).unwrap();
    assert_eq!((h.compression(), h.attributes & 8), (4, 8));
    // before.max.ms of 1 ms applies to CreateTime topics only.
    create_with_configs(&mut c, "ct", &[("message.timestamp.type", "CreateTime")]).await;
    let old = batch_of(&[Some("a")], now_ms() - 60_000, &[0], Compression::None);
    assert_eq!(produce(&mut c, 9, "ct", old).await.error_code, 32);
}
