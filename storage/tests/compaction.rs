//! Key compaction (the log cleaner) end to end, on local segments and on an object store (`file://`),
//! on each metadata store: the latest value per key survives with its offset, the head stays, offsets
//! keep their gaps across a restart, tombstones go after delete.retention.ms, a small offset map takes
//! several passes to the same result, and batches keep their producer fields.

mod common;

use bytes::Bytes;
use common::{append_to, TestStore};
use kafka_protocol::records::{Compression, RecordBatchDecoder};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use streamhouse_storage::engine::now_ms;
use streamhouse_storage::{Isolation, Partition, Storage, StorageConfig, Topic};
use streamhouse_test_support::batch::{BatchBuilder, Record};

on_each_store!(
    local_compaction_keeps_the_latest_value_per_key_at_its_offset,
    object_store_compaction_keeps_the_latest_value_per_key_at_its_offset,
    tombstones_go_after_delete_retention_ms,
    a_small_offset_map_takes_several_passes_to_the_same_log,
    a_flush_larger_than_segment_bytes_is_split_at_the_head,
);

const KEYS: usize = 10;

fn config(meta: &TestStore, dir: &Path, object_store: bool) -> StorageConfig {
    let mut c = meta.config(dir.join("data"));
    if object_store {
        c.object_store = Some(format!("file://{}", dir.join("bucket").display()));
        c.compaction_interval = Duration::ZERO;
        c.compaction_min_age = Duration::ZERO;
    }
    // Passes are run by the tests.
    c.log_cleaner_enable = false;
    c
}

fn compact_configs(extra: &[(&str, &str)]) -> streamhouse_storage::TopicConfigs {
    let mut c: streamhouse_storage::TopicConfigs = [
        ("cleanup.policy", "compact"),
        ("min.cleanable.dirty.ratio", "0.01"),
        // Only the newest block is the head.
        ("segment.ms", "1"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    for (k, v) in extra {
        c.insert(k.to_string(), v.to_string());
    }
    c
}

/// One batch of `n` records from sequence `seq`, keys `k<seq % KEYS>`, values `v<seq>` (None: a
/// tombstone for every record), producer 7.
fn keyed(seq: i32, n: usize, tombstones: bool, compression: Compression) -> Bytes {
    keyed_from(seq, seq as usize, n, tombstones, compression)
}

/// As [`keyed`], the keys counted from `key0` instead of the sequence.
fn keyed_from(
    seq: i32,
    key0: usize,
    n: usize,
    tombstones: bool,
    compression: Compression,
) -> Bytes {
    let ts = now_ms() - 60_000;
    BatchBuilder::new()
        .compression(compression)
        .producer(7, 0, seq)
        .records((0..n).map(|i| {
            let s = seq as usize + i;
            let r = Record::at(ts + s as i64).key(format!("k{}", (key0 + i) % KEYS));
            if tombstones {
                r
            } else {
                r.value(format!("v{s}"))
            }
        }))
        .build()
}

async fn append(s: &Storage, t: &Arc<Topic>, data: Bytes) {
    let r = s.append(vec![append_to(t, 0, data)]).await;
    assert!(r[0].is_ok(), "{:?}", r[0]);
}

/// (offset, key, value) of every record from the log start, each batch's producer id checked.
async fn read_all(s: &Arc<Storage>, p: &Partition) -> Vec<(i64, String, Option<String>)> {
    let mut out = Vec::new();
    let mut offset = p.log_start_offset();
    while offset < p.high_watermark() {
        let r = s
            .read(p, offset, 1 << 20, true, Isolation::ReadUncommitted)
            .await
            .unwrap();
        let mut b = r.records.clone();
        let mut last = offset;
        for batch in RecordBatchDecoder::decode_all(&mut b).unwrap() {
            for rec in batch.records {
                assert_eq!((rec.producer_id, rec.producer_epoch), (7, 0));
                last = last.max(rec.offset);
                if rec.offset >= offset {
                    out.push((
                        rec.offset,
                        String::from_utf8_lossy(rec.key.as_deref().unwrap_or_default()).into(),
                        rec.value
                            .as_deref()
                            .map(|v| String::from_utf8_lossy(v).into_owned()),
                    ));
                }
            }
        }
        offset = last + 1;
    }
    out
}

/// 20 batches of 10 records over KEYS keys: after cleaning, the first 19 blocks hold one record per
/// key, each the latest at its own offset, and the last block (the head) is whole.
async fn writes_and_cleans(meta: TestStore, object_store: bool) {
    let dir = tempfile::tempdir().unwrap();
    let s = Storage::open(config(&meta, dir.path(), object_store))
        .await
        .unwrap();
    let t = s.create_topic("c", 1, compact_configs(&[])).await.unwrap();
    for i in 0..20 {
        let c = [Compression::None, Compression::Lz4, Compression::Zstd][i % 3];
        append(&s, &t, keyed(i as i32 * 10, 10, false, c)).await;
    }
    let p = t.partitions[0].clone();
    let before = read_all(&s, &p).await;
    assert_eq!(before.len(), 200);

    let report = s.clean(now_ms()).await.unwrap();
    assert_eq!(report.partitions, 1, "{report:?}");
    assert_eq!(report.blocks_in, 19, "the head is not cleaned: {report:?}");
    assert_eq!(report.segments_out, 1);
    let after = read_all(&s, &p).await;
    // Offsets 180..189 (the 19th block) hold each key's latest value before the head.
    let mut expected: Vec<(i64, String, Option<String>)> = (180..190)
        .map(|o| (o, format!("k{}", o % 10), Some(format!("v{o}"))))
        .collect();
    expected.extend(before[190..].iter().cloned());
    assert_eq!(after, expected);
    assert_eq!((p.log_start_offset(), p.high_watermark()), (0, 200));
    // Reading from inside a gap starts at the next record kept.
    let r = s
        .read(&p, 5, 1 << 20, true, Isolation::ReadUncommitted)
        .await
        .unwrap();
    assert_eq!(common::values(&r.records)[0].0, 180);
    // Nothing dirty: the next pass does nothing.
    assert_eq!(s.clean(now_ms()).await.unwrap().partitions, 0);

    // The same log after a restart, and new writes clean again against it.
    drop(s);
    let s = Storage::open(config(&meta, dir.path(), object_store))
        .await
        .unwrap();
    let t = s.topic("c").unwrap();
    let p = t.partitions[0].clone();
    assert_eq!(read_all(&s, &p).await, after);
    append(&s, &t, keyed(200, 10, false, Compression::Gzip)).await;
    append(&s, &t, keyed(210, 10, false, Compression::None)).await;
    let report = s.clean(now_ms()).await.unwrap();
    assert_eq!(report.partitions, 1, "{report:?}");
    let again = read_all(&s, &p).await;
    let offsets: Vec<i64> = again.iter().map(|r| r.0).collect();
    let mut want: Vec<i64> = (200..210).collect();
    want.extend(210..220);
    assert_eq!(offsets, want, "{again:?}");
    // Object compaction leaves the cleaner's objects alone and merges what came after.
    if object_store {
        s.compact(now_ms()).await.unwrap();
        assert_eq!(read_all(&s, &p).await, again);
    }
}

async fn local_compaction_keeps_the_latest_value_per_key_at_its_offset(meta: TestStore) {
    writes_and_cleans(meta, false).await
}

async fn object_store_compaction_keeps_the_latest_value_per_key_at_its_offset(meta: TestStore) {
    writes_and_cleans(meta, true).await
}

async fn tombstones_go_after_delete_retention_ms(meta: TestStore) {
    let dir = tempfile::tempdir().unwrap();
    let s = Storage::open(config(&meta, dir.path(), false))
        .await
        .unwrap();
    let t = s
        .create_topic("c", 1, compact_configs(&[("delete.retention.ms", "1000")]))
        .await
        .unwrap();
    let p = t.partitions[0].clone();
    append(&s, &t, keyed(0, 10, false, Compression::None)).await;
    // Tombstones for k0..k4, then the head.
    append(&s, &t, keyed(10, 5, true, Compression::Snappy)).await;
    append(&s, &t, keyed(15, 5, false, Compression::None)).await;
    let now = now_ms();
    s.clean(now).await.unwrap();
    // k5..k9 at 5..9 are the latest before the head (the head is not in the offset map).
    let log = read_all(&s, &p).await;
    let offsets: Vec<i64> = log.iter().map(|r| r.0).collect();
    assert_eq!(offsets, (5..20).collect::<Vec<_>>());
    let tombstones: Vec<i64> = log.iter().filter(|r| r.2.is_none()).map(|r| r.0).collect();
    assert_eq!(
        tombstones,
        vec![10, 11, 12, 13, 14],
        "kept until the horizon"
    );

    // New values of k5..k9 only, cleaned after the horizon: the tombstones of k0..k4 go although no
    // newer record of their keys does.
    append(&s, &t, keyed_from(20, 5, 5, false, Compression::None)).await;
    append(&s, &t, keyed_from(25, 5, 5, false, Compression::None)).await;
    s.clean(now + 1_001).await.unwrap();
    let log = read_all(&s, &p).await;
    let got: Vec<(i64, &str)> = log.iter().map(|r| (r.0, r.1.as_str())).collect();
    let want: Vec<(i64, String)> = (20..30).map(|o| (o, format!("k{}", 5 + o % 5))).collect();
    let want: Vec<(i64, &str)> = want.iter().map(|(o, k)| (*o, k.as_str())).collect();
    assert_eq!(got, want);
    assert!(log.iter().all(|r| r.2.is_some()), "{log:?}");
}

async fn a_small_offset_map_takes_several_passes_to_the_same_log(meta: TestStore) {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(&meta, dir.path(), false);
    // Room for 14 keys (16 buckets of 25 bytes): one block of 10 records per pass.
    c.dedupe_buffer_bytes = 25 * 16;
    let s = Storage::open(c).await.unwrap();
    let t = s.create_topic("c", 1, compact_configs(&[])).await.unwrap();
    let p = t.partitions[0].clone();
    for i in 0..6 {
        append(&s, &t, keyed(i * 10, 10, false, Compression::None)).await;
    }
    let mut passes = 0;
    while s.clean(now_ms()).await.unwrap().partitions > 0 {
        passes += 1;
        assert!(passes < 20);
    }
    assert_eq!(passes, 5, "one dirty block per pass");
    let log = read_all(&s, &p).await;
    let offsets: Vec<i64> = log.iter().map(|r| r.0).collect();
    let mut want: Vec<i64> = (40..50).collect();
    want.extend(50..60);
    assert_eq!(offsets, want);
}

/// One flush holding more than segment.bytes of a partition (six batches in one block): the head is
/// its newest batches under segment.bytes, the rest is cleaned; the head stays dirty for the next
/// pass, so nothing more happens without new data.
async fn a_flush_larger_than_segment_bytes_is_split_at_the_head(meta: TestStore) {
    for object_store in [false, true] {
        // A store of its own for each backend.
        let meta = TestStore::new(meta.backend());
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(config(&meta, dir.path(), object_store))
            .await
            .unwrap();
        let one = keyed(0, 10, false, Compression::None).len();
        // Room for two batches in the head, not three.
        let segment_bytes = (2 * one + one / 2).to_string();
        let t = s
            .create_topic(
                "c",
                1,
                compact_configs(&[("segment.bytes", &segment_bytes)]),
            )
            .await
            .unwrap();
        let p = t.partitions[0].clone();
        let flush: Vec<_> = (0..6)
            .map(|i| append_to(&t, 0, keyed(i * 10, 10, false, Compression::None)))
            .collect();
        assert!(s.append(flush).await.iter().all(|r| r.is_ok()));
        assert_eq!(s.segments_of(&p).len(), 1, "one flush, one block");
        let report = s.clean(now_ms()).await.unwrap();
        assert_eq!(report.partitions, 1, "{report:?}");
        let offsets: Vec<i64> = read_all(&s, &p).await.iter().map(|r| r.0).collect();
        assert_eq!(
            offsets,
            (30..60).collect::<Vec<_>>(),
            "object store: {object_store}"
        );
        assert_eq!(s.clean(now_ms()).await.unwrap().partitions, 0);
        // New data makes the old head cleanable.
        append(&s, &t, keyed(60, 10, false, Compression::None)).await;
        s.clean(now_ms()).await.unwrap();
        let offsets: Vec<i64> = read_all(&s, &p).await.iter().map(|r| r.0).collect();
        assert_eq!(offsets, (50..70).collect::<Vec<_>>());
    }
}
