//! The storage engine end to end: appends survive a restart, uncommitted segment files are removed,
//! retried idempotent batches are not written twice, and reads honour offsets and byte limits.

use kafka_protocol::records::Compression;
use streamhouse_protocol::batch::validate_produce_batch;
use streamhouse_storage::{AppendBatch, Isolation, Storage, StorageError};

mod common;
use common::{append_batch, batch, off_runtime, values, TestStore};
use streamhouse_storage::metadata::testing::Backend;

on_each_store!(
    appends_survive_restart_and_duplicates_are_not_written_twice,
    many_partitions_in_one_flush_and_deleted_topics,
    delete_records_and_retention_move_the_log_start_offset,
    retention_bytes_keeps_the_newest_blocks,
    the_broker_retention_default_applies_to_topics_without_their_own,
    retention_skips_topics_whose_cleanup_policy_lacks_delete,
    data_dir_and_files_are_private,
    producer_state_expires_and_is_capped,
);

/// ListOffsets by timestamp decompresses through a bounded reader on blocking threads.
fn inflater() -> streamhouse_protocol::compression::Inflater {
    streamhouse_protocol::compression::Inflater::new(1 << 20, 2)
}

async fn appends_survive_restart_and_duplicates_are_not_written_twice(meta: TestStore) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = meta.config(dir.path());
    config.segment_bytes = 600; // roll often
    {
        let s = Storage::open(config.clone()).await.unwrap();
        s.create_topic("t", 1, Default::default()).await.unwrap();
        for i in 0..5 {
            let r = s
                .append(vec![append_batch(
                    &s,
                    "t",
                    batch(i * 3, 3, 77, Compression::None),
                )])
                .await;
            assert_eq!(r[0].as_ref().unwrap().base_offset, i as i64 * 3);
        }
        // A retry of the second batch: same offsets back, nothing written.
        let r = s
            .append(vec![append_batch(
                &s,
                "t",
                batch(3, 3, 77, Compression::None),
            )])
            .await;
        assert_eq!(r[0].as_ref().unwrap().base_offset, 3);
        // A gap in sequences is refused.
        let r = s
            .append(vec![append_batch(
                &s,
                "t",
                batch(40, 1, 77, Compression::None),
            )])
            .await;
        assert!(matches!(r[0], Err(StorageError::OutOfOrderSequence)));
        // A compressed batch lands after them.
        let r = s
            .append(vec![append_batch(
                &s,
                "t",
                batch(15, 2, 77, Compression::Lz4),
            )])
            .await;
        assert_eq!(r[0].as_ref().unwrap().base_offset, 15);
    }
    // A stray segment file (uploaded/written but never committed) is removed on start.
    let stray = dir.path().join("segments").join(format!("{:020}.seg", 999));
    std::fs::write(&stray, b"junk").unwrap();
    let s = Storage::open(config).await.unwrap();
    assert!(!stray.exists());
    let t = s.topic("t").unwrap();
    let p = &t.partitions[0];
    assert_eq!(p.high_watermark(), 17);
    let r = s
        .read(p, 0, 1 << 20, true, Isolation::ReadUncommitted)
        .await
        .unwrap();
    let got = values(&r.records);
    assert_eq!(
        got.iter().map(|(o, _)| *o).collect::<Vec<_>>(),
        (0..17).collect::<Vec<_>>()
    );
    assert_eq!(got[16].1, "v16");
    // Producer state survived too: the retry is still a duplicate after restart.
    let r = s
        .append(vec![append_batch(
            &s,
            "t",
            batch(15, 2, 77, Compression::Lz4),
        )])
        .await;
    assert_eq!(r[0].as_ref().unwrap().base_offset, 15);
    let r = s
        .append(vec![append_batch(
            &s,
            "t",
            batch(17, 1, 77, Compression::None),
        )])
        .await;
    assert_eq!(r[0].as_ref().unwrap().base_offset, 17);
    // Byte limits: a tiny limit still returns the first whole batch (min_one), and nothing without it.
    let r = s
        .read(p, 4, 1, true, Isolation::ReadUncommitted)
        .await
        .unwrap();
    assert_eq!(
        values(&r.records)
            .iter()
            .map(|(o, _)| *o)
            .collect::<Vec<_>>(),
        vec![3, 4, 5]
    );
    assert!(s
        .read(p, 4, 1, false, Isolation::ReadUncommitted)
        .await
        .unwrap()
        .records
        .is_empty());
    assert!(matches!(
        s.read(p, 99, 100, true, Isolation::ReadUncommitted).await,
        Err(StorageError::OffsetOutOfRange { .. })
    ));
    // By timestamp: record timestamps are 10_000 + seq * 10.
    assert_eq!(
        s.offset_for_timestamp(p, 10_095, &inflater())
            .await
            .unwrap(),
        Some((10, 10_100))
    );
    assert_eq!(
        s.offset_for_timestamp(p, 99_999, &inflater())
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        s.max_timestamp_offset(p, &inflater()).await.unwrap(),
        Some((17, 10_170))
    );
}

async fn many_partitions_in_one_flush_and_deleted_topics(meta: TestStore) {
    let dir = tempfile::tempdir().unwrap();
    let s = Storage::open(meta.config(dir.path())).await.unwrap();
    s.create_topic("m", 8, Default::default()).await.unwrap();
    let topic = s.topic("m").unwrap();
    let batches = (0..8)
        .map(|p| {
            let data = batch(0, 2, -1, Compression::None);
            AppendBatch {
                topic: topic.clone(),
                partition: p,
                header: validate_produce_batch(&data).unwrap(),
                data,
            }
        })
        .collect();
    let r = s.append(batches).await;
    assert!(r.iter().all(|r| r.as_ref().unwrap().base_offset == 0));
    assert!(topic.partitions.iter().all(|p| p.high_watermark() == 2));
    s.delete_topic("m").await.unwrap();
    let data = batch(0, 1, -1, Compression::None);
    let r = s
        .append(vec![AppendBatch {
            topic,
            partition: 0,
            header: validate_produce_batch(&data).unwrap(),
            data,
        }])
        .await;
    assert!(matches!(r[0], Err(StorageError::UnknownTopicOrPartition)));
    assert!(
        matches!(s.create_topic("m", 1, Default::default()).await, Ok(t) if t.partitions[0].high_watermark() == 0)
    );
}

async fn delete_records_and_retention_move_the_log_start_offset(meta: TestStore) {
    let dir = tempfile::tempdir().unwrap();
    let config = meta.config(dir.path());
    {
        let s = Storage::open(config.clone()).await.unwrap();
        let configs = [("retention.bytes".to_string(), "-1".to_string())].into();
        s.create_topic("r", 2, configs).await.unwrap();
        let topic = s.topic("r").unwrap();
        for p in 0..2 {
            for i in 0..4 {
                let data = batch(i * 5, 5, -1, Compression::None);
                let b = AppendBatch {
                    topic: topic.clone(),
                    partition: p,
                    header: validate_produce_batch(&data).unwrap(),
                    data,
                };
                s.append(vec![b]).await;
            }
        }
        let p0 = &topic.partitions[0];
        assert!(matches!(
            s.delete_records(p0, 21).await,
            Err(StorageError::OffsetOutOfRange { .. })
        ));
        assert_eq!(s.delete_records(p0, 7).await.unwrap(), 7);
        assert_eq!(
            s.delete_records(p0, 3).await.unwrap(),
            7,
            "never moves back"
        );
        assert!(matches!(
            s.read(p0, 2, 1 << 20, true, Isolation::ReadUncommitted)
                .await,
            Err(StorageError::OffsetOutOfRange { .. })
        ));
        // The batch holding offset 7 (5..9) is still served whole; the one before it is gone.
        let r = s
            .read(p0, 7, 1 << 20, true, Isolation::ReadUncommitted)
            .await
            .unwrap();
        assert_eq!(values(&r.records).first().map(|(o, _)| *o), Some(5));
        // Retention: these records are from 1970, older than the 7-day default: everything goes.
        s.enforce_retention(engine_now()).await.unwrap();
        assert_eq!(topic.partitions[1].log_start_offset(), 20);
        assert_eq!(topic.partitions[1].high_watermark(), 20);
    }
    let s = Storage::open(config).await.unwrap();
    let t = s.topic("r").unwrap();
    assert_eq!(
        (
            t.partitions[0].log_start_offset(),
            t.partitions[1].log_start_offset()
        ),
        (20, 20),
        "kept across restarts"
    );
    assert_eq!(s.delete_records(&t.partitions[0], -1).await.unwrap(), 20);
}

async fn retention_bytes_keeps_the_newest_blocks(meta: TestStore) {
    let dir = tempfile::tempdir().unwrap();
    let s = Storage::open(meta.config(dir.path())).await.unwrap();
    let configs = [
        ("retention.ms".to_string(), "-1".to_string()),
        ("retention.bytes".to_string(), "1".to_string()),
    ]
    .into();
    s.create_topic("b", 1, configs).await.unwrap();
    let topic = s.topic("b").unwrap();
    for i in 0..3 {
        let data = batch(i * 2, 2, -1, Compression::None);
        s.append(vec![AppendBatch {
            topic: topic.clone(),
            partition: 0,
            header: validate_produce_batch(&data).unwrap(),
            data,
        }])
        .await;
    }
    s.enforce_retention(engine_now()).await.unwrap();
    // Only the newest block (offsets 4-5) is kept: it alone exceeds 1 byte, older ones go.
    assert_eq!(topic.partitions[0].log_start_offset(), 4);
    let r = s
        .read(
            &topic.partitions[0],
            4,
            1 << 20,
            true,
            Isolation::ReadUncommitted,
        )
        .await
        .unwrap();
    assert_eq!(
        values(&r.records)
            .iter()
            .map(|(o, _)| *o)
            .collect::<Vec<_>>(),
        vec![4, 5]
    );
}

fn engine_now() -> i64 {
    streamhouse_storage::engine::now_ms()
}

async fn the_broker_retention_default_applies_to_topics_without_their_own(meta: TestStore) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = meta.config(dir.path());
    config.retention_ms = 60_000; // log.retention.ms
    let s = Storage::open(config).await.unwrap();
    let own = [("retention.ms".to_string(), "-1".to_string())].into();
    let kept = s.create_topic("kept", 1, own).await.unwrap();
    let aged = s.create_topic("aged", 1, Default::default()).await.unwrap();
    let hour_ago = engine_now() - 3_600_000;
    for topic in [&kept, &aged] {
        let data = common::batch_at(0, 3, -1, Compression::None, hour_ago);
        s.append(vec![common::append_to(topic, 0, data)]).await;
        let data = common::batch_at(3, 2, -1, Compression::None, engine_now());
        s.append(vec![common::append_to(topic, 0, data)]).await;
    }
    s.enforce_retention(engine_now()).await.unwrap();
    assert_eq!(
        aged.partitions[0].log_start_offset(),
        3,
        "older than log.retention.ms"
    );
    assert_eq!(
        kept.partitions[0].log_start_offset(),
        0,
        "its own retention.ms wins"
    );
}

/// Kafka applies time and size retention only when cleanup.policy contains `delete`: a compact-only
/// topic keeps its records (until key compaction exists, everything).
async fn retention_skips_topics_whose_cleanup_policy_lacks_delete(meta: TestStore) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = meta.config(dir.path());
    config.retention_ms = 60_000;
    let s = Storage::open(config).await.unwrap();
    let policy = |p: &str| {
        [
            ("cleanup.policy".to_string(), p.to_string()),
            ("retention.bytes".to_string(), "1".to_string()),
        ]
        .into()
    };
    let compact = s
        .create_topic("compact", 1, policy("compact"))
        .await
        .unwrap();
    let both = s
        .create_topic("both", 1, policy("compact,delete"))
        .await
        .unwrap();
    let hour_ago = engine_now() - 3_600_000;
    for topic in [&compact, &both] {
        let data = common::batch_at(0, 3, -1, Compression::None, hour_ago);
        s.append(vec![common::append_to(topic, 0, data)]).await;
        let data = common::batch_at(3, 2, -1, Compression::None, engine_now());
        s.append(vec![common::append_to(topic, 0, data)]).await;
    }
    s.enforce_retention(engine_now()).await.unwrap();
    assert_eq!(compact.partitions[0].log_start_offset(), 0, "compact only");
    assert_eq!(both.partitions[0].log_start_offset(), 3, "compact,delete");

    // The broker's log.cleanup.policy is the default of topics without their own (another broker,
    // with a store of its own).
    let dir = tempfile::tempdir().unwrap();
    let meta = TestStore::new(meta.backend());
    let mut config = meta.config(dir.path());
    config.retention_ms = 60_000;
    config.cleanup_policy = "compact".to_string();
    let s = Storage::open(config).await.unwrap();
    let t = s.create_topic("t", 1, Default::default()).await.unwrap();
    let data = common::batch_at(0, 3, -1, Compression::None, hour_ago);
    s.append(vec![common::append_to(&t, 0, data)]).await;
    s.enforce_retention(engine_now()).await.unwrap();
    assert_eq!(t.partitions[0].log_start_offset(), 0, "log.cleanup.policy");
}

/// The data folder holds the log and the metadata (SQLite): readable by its owner only.
async fn data_dir_and_files_are_private(meta: TestStore) {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let s = Storage::open(meta.config(&data)).await.unwrap();
    s.create_topic("t", 1, Default::default()).await.unwrap();
    s.append(vec![append_batch(
        &s,
        "t",
        batch(0, 1, -1, Compression::None),
    )])
    .await;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&data.join("segments")), 0o700);
    match meta.backend() {
        Backend::Sqlite => assert_eq!(mode(&data.join("metadata.db")), 0o600),
        // The store is elsewhere: nothing of it in the data folder.
        Backend::Postgres => assert!(!data.join("metadata.db").exists()),
    }
    for f in std::fs::read_dir(data.join("segments")).unwrap() {
        assert_eq!(mode(&f.unwrap().path()), 0o600);
    }
}

/// Item 11: idempotent-producer state expires after producer.id.expiration.ms (Kafka's rule), in
/// memory and in the metadata store, and past max_producer_states the longest idle go first: client-
/// chosen producer ids can no longer pile up rows forever.
async fn producer_state_expires_and_is_capped(meta: TestStore) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = meta.config(dir.path());
    // The first check runs one interval after the start: the five appends must be done by then (a
    // PostgreSQL commit costs a few ms, so 250 ms leaves a wide margin on a loaded machine).
    let check = std::time::Duration::from_millis(250);
    config.producer_id_expiration_ms = 1000;
    config.producer_id_expiration_check_interval = check;
    config.max_producer_states = 3;
    let s = Storage::open(config).await.unwrap();
    let started = std::time::Instant::now();
    s.create_topic("t", 1, Default::default()).await.unwrap();
    let stored = |s: &Storage| {
        let m = s.metadata();
        off_runtime(move || m.load().unwrap().producers.len())
    };
    for pid in 1..=5 {
        let r = s
            .append(vec![append_batch(
                &s,
                "t",
                batch(0, 2, pid, Compression::None),
            )])
            .await;
        assert!(r[0].is_ok());
    }
    assert!(
        started.elapsed() < check,
        "the appends took {:?}, past the first check: the premise of this test does not hold",
        started.elapsed()
    );
    assert_eq!(stored(&s), 5);
    // The cap applies at the next check (the two longest idle go), the expiry at the first check
    // after 1 s idle. Polled, not slept: on a loaded machine the check's flush commits late.
    let kept_pids = |s: &Storage| {
        let m = s.metadata();
        let mut kept: Vec<i64> = off_runtime(move || m.load().unwrap())
            .producers
            .iter()
            .map(|((pid, _, _), _)| *pid)
            .collect();
        kept.sort_unstable();
        kept
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let kept = loop {
        let kept = kept_pids(&s);
        if kept.len() < 5 || std::time::Instant::now() > deadline {
            break kept;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    };
    assert_eq!(kept, vec![3, 4, 5], "the two longest idle dropped");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while stored(&s) > 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(stored(&s), 0, "all expired");
    // With its state gone, a producer's next batch is accepted as from a new producer (Kafka too).
    let r = s
        .append(vec![append_batch(
            &s,
            "t",
            batch(2, 2, 5, Compression::None),
        )])
        .await;
    assert!(r[0].is_ok());
}
