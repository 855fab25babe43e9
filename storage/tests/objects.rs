//! The object-store backend end to end (through `file://`, so the objects can be counted): compaction
//! merges flush objects into one object per partition with identical reads, segments nothing refers to
//! any more are deleted after file.delete.delay.ms, many concurrent producers through several flushes
//! in flight get contiguous offsets in submission order, and a store failing under flushes in flight
//! loses nothing acknowledged while an idempotent producer's retries land once, in order.

mod common;

use common::{append_to, batch, batch_at, off_runtime, values, TestStore};
use kafka_protocol::records::Compression;
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use streamhouse_storage::engine::now_ms;
use streamhouse_storage::{Isolation, Partition, Storage, StorageConfig};

on_each_store!(
    compaction_merges_flush_objects_per_partition_and_reads_stay_identical,
    retention_deletes_old_objects_and_keeps_new_data,
    local_segments_nothing_refers_to_are_deleted,
    concurrent_producers_through_flushes_in_flight_get_contiguous_offsets_in_order,
    a_failed_upload_fails_the_flushes_after_it_and_idempotent_retries_land_once_in_order,
    an_object_committed_for_a_topic_deleted_meanwhile_is_deleted_by_compaction,
    small_compacted_objects_of_a_partition_are_merged_again,
    a_wrong_or_empty_metadata_store_refuses_to_start_and_deletes_nothing,
    only_uploads_left_as_intents_are_deleted_at_start,
    file_objects_are_fsynced,
);

fn object_config(meta: &TestStore, dir: &Path) -> StorageConfig {
    let mut c = meta.config(dir.join("data"));
    c.object_store = Some(format!("file://{}", dir.join("bucket").display()));
    c.compaction_interval = Duration::ZERO; // passes are run by the tests
    c.compaction_min_age = Duration::ZERO;
    c.file_delete_delay = Duration::from_secs(60);
    c
}

fn objects_in(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("bucket").join("segments"))
        .map(|d| d.count())
        .unwrap_or(0)
}

async fn read_all(s: &Arc<Storage>, p: &Partition) -> Vec<(i64, String)> {
    let mut out = Vec::new();
    let mut offset = p.log_start_offset();
    while offset < p.high_watermark() {
        let r = s
            .read(p, offset, 1000, true, Isolation::ReadUncommitted)
            .await
            .unwrap();
        let v = values(&r.records);
        offset = v.last().unwrap().0 + 1;
        out.extend(v.into_iter().filter(|(o, _)| *o >= p.log_start_offset()));
    }
    out
}

async fn compaction_merges_flush_objects_per_partition_and_reads_stay_identical(meta: TestStore) {
    let dir = tempfile::tempdir().unwrap();
    let config = object_config(&meta, dir.path());
    let before;
    {
        let s = Storage::open(config.clone()).await.unwrap();
        let topic = s.create_topic("c", 3, Default::default()).await.unwrap();
        // 20 flushes, each with a batch for every partition (one of them compressed by its producer).
        for i in 0..20 {
            let batches = (0..3)
                .map(|p| {
                    let codec = if p == 2 {
                        Compression::Gzip
                    } else {
                        Compression::None
                    };
                    append_to(&topic, p, batch(i * 4, 4, -1, codec))
                })
                .collect();
            for r in s.append(batches).await {
                r.unwrap();
            }
        }
        assert_eq!(objects_in(dir.path()), 20);
        let mut reads = Vec::new();
        for p in &topic.partitions {
            reads.push(read_all(&s, p).await);
            assert_eq!(s.segments_of(p).len(), 20);
        }
        before = reads;

        let report = s.compact(now_ms()).await.unwrap();
        assert_eq!((report.objects_in, report.objects_out), (20, 3));
        assert_eq!(report.blocks_in, 60);
        assert_eq!(
            report.blocks_out, 3,
            "adjacent blocks merge into one per partition"
        );
        for (p, expected) in topic.partitions.iter().zip(&before) {
            assert_eq!(s.segments_of(p).len(), 1, "one object per partition");
            assert_eq!(&read_all(&s, p).await, expected);
        }
        // Old objects stay for file.delete.delay.ms (a read may still be using them), then go.
        assert_eq!(objects_in(dir.path()), 23);
        assert_eq!(s.delete_retired_segments(now_ms()).await.unwrap(), 0);
        let later = now_ms() + 61_000;
        assert_eq!(s.delete_retired_segments(later).await.unwrap(), 20);
        assert_eq!(objects_in(dir.path()), 3);
        // Nothing left to do: per-partition objects are not compacted again.
        assert_eq!(s.compact(now_ms()).await.unwrap().objects_in, 0);
        // New flushes land after the compacted data and are read in order.
        let r = s
            .append(vec![append_to(
                &topic,
                0,
                batch(80, 2, -1, Compression::None),
            )])
            .await;
        assert_eq!(r[0].as_ref().unwrap().base_offset, 80);
    }
    // Restart on the same metadata and bucket: the same records.
    let s = Storage::open(config).await.unwrap();
    let topic = s.topic("c").unwrap();
    for (i, p) in topic.partitions.iter().enumerate() {
        let mut expected = before[i].clone();
        if i == 0 {
            expected.extend([(80, "v80".to_string()), (81, "v81".to_string())]);
        }
        assert_eq!(read_all(&s, p).await, expected);
    }
}

async fn retention_deletes_old_objects_and_keeps_new_data(meta: TestStore) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = object_config(&meta, dir.path());
    config.file_delete_delay = Duration::ZERO;
    let s = Storage::open(config).await.unwrap();
    let configs = [("retention.ms".to_string(), "60000".to_string())].into();
    let topic = s.create_topic("r", 2, configs).await.unwrap();
    let now = now_ms();
    // Ten old flushes (an hour ago), then five new ones.
    for i in 0..15 {
        let ts = if i < 10 { now - 3_600_000 } else { now };
        let batches = (0..2)
            .map(|p| append_to(&topic, p, batch_at(i * 3, 3, -1, Compression::None, ts)))
            .collect();
        s.append(batches).await;
    }
    assert_eq!(objects_in(dir.path()), 15);
    s.enforce_retention(now_ms()).await.unwrap();
    for p in &topic.partitions {
        assert_eq!(p.log_start_offset(), 30, "earliest moved past the old data");
        let got = read_all(&s, p).await;
        assert_eq!(got.len(), 15, "nothing newer lost");
        assert_eq!(got[0], (30, "v30".to_string()));
    }
    assert_eq!(s.delete_retired_segments(now_ms()).await.unwrap(), 10);
    assert_eq!(objects_in(dir.path()), 5);
}

async fn local_segments_nothing_refers_to_are_deleted(meta: TestStore) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = meta.config(dir.path());
    config.segment_bytes = 100; // roll at every flush
    config.file_delete_delay = Duration::ZERO;
    let s = Storage::open(config).await.unwrap();
    let topic = s.create_topic("l", 1, Default::default()).await.unwrap();
    for i in 0..6 {
        s.append(vec![append_to(
            &topic,
            0,
            batch(i * 5, 5, -1, Compression::None),
        )])
        .await;
    }
    let files = || {
        std::fs::read_dir(dir.path().join("segments"))
            .unwrap()
            .count()
    };
    assert_eq!(files(), 6);
    let p = &topic.partitions[0];
    s.delete_records(p, 30).await.unwrap();
    // Five sealed segments are unreferenced; the active one stays (it is appended to next).
    assert_eq!(s.delete_retired_segments(now_ms()).await.unwrap(), 5);
    assert_eq!(files(), 1);
    let r = s
        .append(vec![append_to(
            &topic,
            0,
            batch(30, 1, -1, Compression::None),
        )])
        .await;
    assert_eq!(r[0].as_ref().unwrap().base_offset, 30);
    assert_eq!(read_all(&s, p).await, vec![(30, "v30".to_string())]);
}

async fn concurrent_producers_through_flushes_in_flight_get_contiguous_offsets_in_order(
    meta: TestStore,
) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = object_config(&meta, dir.path());
    config.max_inflight_flushes = 4;
    let s = Storage::open(config).await.unwrap();
    let topic = s.create_topic("p", 4, Default::default()).await.unwrap();
    let mut tasks = Vec::new();
    for producer in 0..8i32 {
        let (s, topic) = (s.clone(), topic.clone());
        tasks.push(tokio::spawn(async move {
            let partition = producer % 4;
            let mut tickets = Vec::new();
            // Submitted without waiting, like a producer with many requests in flight.
            for i in 0..50 {
                let data = batch(producer * 1000 + i, 1, -1, Compression::None);
                tickets.push(s.submit(vec![append_to(&topic, partition, data)]).await);
            }
            let mut offsets = Vec::new();
            for t in tickets {
                offsets.push(t.wait().await[0].as_ref().unwrap().base_offset);
            }
            (partition, offsets)
        }));
    }
    let mut by_partition: Vec<BTreeSet<i64>> = vec![BTreeSet::new(); 4];
    for t in tasks {
        let (p, offsets) = t.await.unwrap();
        assert!(
            offsets.windows(2).all(|w| w[0] < w[1]),
            "submission order kept"
        );
        by_partition[p as usize].extend(offsets);
    }
    for (p, offsets) in by_partition.iter().enumerate() {
        assert_eq!(offsets.len(), 100);
        assert_eq!(*offsets.iter().next_back().unwrap(), 99, "no gaps");
        let part = &topic.partitions[p];
        assert_eq!(part.high_watermark(), 100);
        let got = read_all(&s, part).await;
        assert_eq!(got.len(), 100);
        assert!(got.iter().enumerate().all(|(i, (o, _))| *o == i as i64));
    }
}

/// An object store whose PUTs fail while `failing` is set (the store "down"), for the write pipeline.
#[derive(Debug)]
struct FaultyStore {
    inner: object_store::memory::InMemory,
    failing: std::sync::atomic::AtomicBool,
    /// Notified when a PUT starts.
    put_started: tokio::sync::Notify,
}

impl std::fmt::Display for FaultyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FaultyStore")
    }
}

#[async_trait::async_trait]
impl object_store::ObjectStore for FaultyStore {
    async fn put_opts(
        &self,
        location: &object_store::path::Path,
        payload: object_store::PutPayload,
        opts: object_store::PutOptions,
    ) -> object_store::Result<object_store::PutResult> {
        self.put_started.notify_one();
        // Slow enough that several flushes are in flight at once.
        tokio::time::sleep(Duration::from_millis(15)).await;
        if self.failing.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(object_store::Error::Generic {
                store: "faulty",
                source: "injected failure".into(),
            });
        }
        self.inner.put_opts(location, payload, opts).await
    }
    async fn put_multipart_opts(
        &self,
        location: &object_store::path::Path,
        opts: object_store::PutMultipartOptions,
    ) -> object_store::Result<Box<dyn object_store::MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }
    async fn get_opts(
        &self,
        location: &object_store::path::Path,
        options: object_store::GetOptions,
    ) -> object_store::Result<object_store::GetResult> {
        self.inner.get_opts(location, options).await
    }
    async fn delete(&self, location: &object_store::path::Path) -> object_store::Result<()> {
        self.inner.delete(location).await
    }
    fn list(
        &self,
        prefix: Option<&object_store::path::Path>,
    ) -> futures_util::stream::BoxStream<'static, object_store::Result<object_store::ObjectMeta>>
    {
        self.inner.list(prefix)
    }
    async fn list_with_delimiter(
        &self,
        prefix: Option<&object_store::path::Path>,
    ) -> object_store::Result<object_store::ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }
    async fn copy(
        &self,
        from: &object_store::path::Path,
        to: &object_store::path::Path,
    ) -> object_store::Result<()> {
        self.inner.copy(from, to).await
    }
    async fn copy_if_not_exists(
        &self,
        from: &object_store::path::Path,
        to: &object_store::path::Path,
    ) -> object_store::Result<()> {
        self.inner.copy_if_not_exists(from, to).await
    }
}

/// A fresh in-memory FaultyStore and a config using it, compaction passes left to the test.
fn faulty_config(meta: &TestStore, dir: &Path) -> (Arc<FaultyStore>, StorageConfig) {
    let store = Arc::new(FaultyStore {
        inner: object_store::memory::InMemory::new(),
        failing: false.into(),
        put_started: Default::default(),
    });
    let mut config = meta.config(dir);
    config.object_store_client = Some(store.clone());
    config.compaction_interval = Duration::ZERO;
    (store, config)
}

async fn a_failed_upload_fails_the_flushes_after_it_and_idempotent_retries_land_once_in_order(
    meta: TestStore,
) {
    let dir = tempfile::tempdir().unwrap();
    let (store, mut config) = faulty_config(&meta, dir.path());
    config.max_inflight_flushes = 4;
    let s = Storage::open(config).await.unwrap();
    let topic = s.create_topic("f", 1, Default::default()).await.unwrap();
    const PID: i64 = 42;
    const BATCHES: i32 = 120;
    // Batch i holds sequences 2i and 2i+1 (values v<seq>); submitted without waiting, the store fails
    // for a while in the middle.
    let submit = |i: i32| {
        let (s, topic) = (s.clone(), topic.clone());
        async move {
            s.submit(vec![append_to(
                &topic,
                0,
                batch(i * 2, 2, PID, Compression::None),
            )])
            .await
        }
    };
    let mut pending: Vec<i32> = (0..BATCHES).collect();
    let mut acked: Vec<(i32, i64)> = Vec::new();
    let mut rounds = 0;
    let mut saw_failures = false;
    while !pending.is_empty() {
        rounds += 1;
        assert!(rounds < 50, "retries do not converge: {pending:?}");
        let mut tickets = Vec::new();
        for (n, &i) in pending.iter().enumerate() {
            if rounds == 1 && n == 30 {
                store
                    .failing
                    .store(true, std::sync::atomic::Ordering::SeqCst);
            }
            if rounds == 1 && n == 60 {
                store
                    .failing
                    .store(false, std::sync::atomic::Ordering::SeqCst);
            }
            tickets.push((i, submit(i).await));
            if rounds == 1 {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        let mut failed = Vec::new();
        for (i, t) in tickets {
            match t.wait().await.remove(0) {
                Ok(outcome) => acked.push((i, outcome.base_offset)),
                Err(_) => failed.push(i),
            }
        }
        saw_failures |= !failed.is_empty();
        // As an idempotent producer does: retry what failed, in order.
        pending = failed;
    }
    assert!(saw_failures, "the store really failed some flushes");
    let p = &topic.partitions[0];
    assert_eq!(
        p.high_watermark(),
        BATCHES as i64 * 2,
        "every batch exactly once"
    );
    let log = read_all(&s, p).await;
    let expected: Vec<(i64, String)> = (0..BATCHES as i64 * 2)
        .map(|o| (o, format!("v{o}")))
        .collect();
    assert_eq!(log, expected, "in sequence order, no duplicates, no gaps");
    for (i, offset) in acked {
        assert_eq!(
            offset,
            i as i64 * 2,
            "batch {i} acknowledged at the offset it holds"
        );
    }
}

async fn an_object_committed_for_a_topic_deleted_meanwhile_is_deleted_by_compaction(
    meta: TestStore,
) {
    use futures_util::StreamExt;
    let dir = tempfile::tempdir().unwrap();
    let (store, mut config) = faulty_config(&meta, dir.path());
    config.compaction_min_age = Duration::ZERO;
    config.file_delete_delay = Duration::ZERO;
    let s = Storage::open(config).await.unwrap();
    // The cluster marker's PUT at start left a notification: take it.
    let _ = tokio::time::timeout(Duration::from_millis(50), store.put_started.notified()).await;
    let topic = s.create_topic("gone", 1, Default::default()).await.unwrap();
    // The PUT takes 15 ms; the topic is deleted while it is in flight, so the commit adds no block.
    let ticket = s
        .submit(vec![append_to(
            &topic,
            0,
            batch(0, 1, -1, Compression::None),
        )])
        .await;
    store.put_started.notified().await;
    s.delete_topic("gone").await.unwrap();
    let _ = ticket.wait().await;
    let objects = || async {
        let store: &dyn object_store::ObjectStore = &*store;
        // Segment objects only (the prefix also holds the cluster marker).
        store.list(Some(&"segments".into())).count().await
    };
    assert_eq!(objects().await, 1, "the object was uploaded and committed");
    assert_eq!(
        s.delete_retired_segments(now_ms()).await.unwrap(),
        0,
        "deleting the topic could not retire an object committed after it"
    );
    s.compact(now_ms()).await.unwrap();
    assert_eq!(s.delete_retired_segments(now_ms()).await.unwrap(), 1);
    assert_eq!(objects().await, 0);
}

async fn small_compacted_objects_of_a_partition_are_merged_again(meta: TestStore) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = object_config(&meta, dir.path());
    config.file_delete_delay = Duration::ZERO;
    let s = Storage::open(config).await.unwrap();
    let topic = s.create_topic("m", 2, Default::default()).await.unwrap();
    // Five rounds of three flushes, each round compacted: five small objects per partition.
    let mut seq = 0;
    for _ in 0..5 {
        for _ in 0..3 {
            let batches = (0..2)
                .map(|p| append_to(&topic, p, batch(seq, 2, -1, Compression::None)))
                .collect();
            for r in s.append(batches).await {
                r.unwrap();
            }
            seq += 2;
        }
        let report = s.compact(now_ms()).await.unwrap();
        assert_eq!((report.objects_in, report.objects_out), (3, 2));
    }
    let before: Vec<_> = {
        let mut v = Vec::new();
        for p in &topic.partitions {
            assert_eq!(s.segments_of(p).len(), 5);
            v.push(read_all(&s, p).await);
        }
        v
    };
    // No flush objects left: the next pass merges each partition's five objects into one.
    let report = s.compact(now_ms()).await.unwrap();
    assert_eq!((report.objects_in, report.objects_out), (10, 2));
    for (p, expected) in topic.partitions.iter().zip(&before) {
        assert_eq!(s.segments_of(p).len(), 1);
        assert_eq!(&read_all(&s, p).await, expected);
    }
    s.delete_retired_segments(now_ms()).await.unwrap();
    assert_eq!(objects_in(dir.path()), 2);
    // Fewer than four small objects: nothing to do.
    assert_eq!(s.compact(now_ms()).await.unwrap().objects_in, 0);
}

fn segment_objects(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir.join("bucket").join("segments"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

async fn write_some(config: &StorageConfig, topic: &str) {
    let s = Storage::open(config.clone()).await.unwrap();
    let t = s.create_topic(topic, 2, Default::default()).await.unwrap();
    for i in 0..3 {
        let r = s
            .append(vec![
                append_to(&t, 0, batch(i * 2, 2, -1, Compression::None)),
                append_to(&t, 1, batch(i * 2, 2, -1, Compression::None)),
            ])
            .await;
        assert!(r.iter().all(|r| r.is_ok()), "{r:?}");
    }
}

/// Issue 9 item 2: an empty or wrong --data-dir over a prefix holding a cluster's segments must refuse
/// to start and touch nothing (it used to delete every object the fresh SQLite did not know).
async fn a_wrong_or_empty_metadata_store_refuses_to_start_and_deletes_nothing(meta: TestStore) {
    let dir = tempfile::tempdir().unwrap();
    let config = object_config(&meta, dir.path());
    write_some(&config, "t").await;
    let before = segment_objects(dir.path());
    assert!(before.len() >= 3, "{before:?}");
    assert!(dir.path().join("bucket/cluster.json").exists());

    // A new, empty metadata store on the same prefix.
    let fresh = TestStore::new(meta.backend());
    let mut empty = config.clone();
    empty.data_dir = dir.path().join("other-data");
    empty.metadata = fresh.location();
    let err = Storage::open(empty).await.err().expect("must refuse");
    assert!(err.to_string().contains("refusing to start"), "{err}");
    assert_eq!(segment_objects(dir.path()), before, "nothing deleted");

    // Another cluster's metadata store (it has its own prefix) pointed at this prefix.
    let other_meta = TestStore::new(meta.backend());
    let mut other = object_config(&other_meta, &dir.path().join("second"));
    write_some(&other, "u").await;
    other.object_store = config.object_store.clone();
    let err = Storage::open(other).await.err().expect("must refuse");
    assert!(err.to_string().contains("belongs to cluster"), "{err}");
    assert_eq!(segment_objects(dir.path()), before, "nothing deleted");

    // The prefix holds data but no marker (e.g. another tool's objects): a fresh store refuses too.
    std::fs::remove_file(dir.path().join("bucket/cluster.json")).unwrap();
    let fresh = TestStore::new(meta.backend());
    let mut empty = config.clone();
    empty.data_dir = dir.path().join("third-data");
    empty.metadata = fresh.location();
    assert!(Storage::open(empty).await.is_err());
    assert_eq!(segment_objects(dir.path()), before, "nothing deleted");

    // The right metadata store still starts (and puts the marker back: it proves the data its own).
    let s = Storage::open(config.clone()).await.unwrap();
    let t = s.topic("t").unwrap();
    assert_eq!(read_all(&s, &t.partitions[0]).await.len(), 6);
    assert!(dir.path().join("bucket/cluster.json").exists());
}

/// Only uploads recorded as intents and never committed are deleted at start; an object under the
/// prefix the metadata knows nothing of (another broker's, say) stays.
async fn only_uploads_left_as_intents_are_deleted_at_start(meta: TestStore) {
    let dir = tempfile::tempdir().unwrap();
    let config = object_config(&meta, dir.path());
    write_some(&config, "t").await;
    let segments = dir.path().join("bucket").join("segments");
    // A crash between PUT and commit: the intent is recorded, the object written, no commit.
    meta.blocking(&config.data_dir, |m| m.record_uploads(&[900]).unwrap());
    std::fs::write(segments.join(format!("{:020}.seg", 900)), b"uncommitted").unwrap();
    // Someone else's object under the same prefix, with a name like ours.
    std::fs::write(segments.join(format!("{:020}.seg", 901)), b"not ours").unwrap();
    let s = Storage::open(config.clone()).await.unwrap();
    let left = segment_objects(dir.path());
    assert!(!left.contains(&format!("{:020}.seg", 900)), "{left:?}");
    assert!(left.contains(&format!("{:020}.seg", 901)), "{left:?}");
    let m = s.metadata();
    assert!(off_runtime(move || m.upload_intents().unwrap()).is_empty());
    // New uploads never reuse an id handed out before.
    let t = s.topic("t").unwrap();
    s.append(vec![append_to(&t, 0, batch(6, 2, -1, Compression::None))])
        .await;
    assert!(s.segments_of(&t.partitions[0]).iter().all(|id| *id != 900));
}

/// `file://` objects are fsync'd like an S3 PUT is durable (object_store's local backend does not).
async fn file_objects_are_fsynced(meta: TestStore) {
    let dir = tempfile::tempdir().unwrap();
    let config = object_config(&meta, dir.path());
    let s = Storage::open(config).await.unwrap();
    let synced = s.object_counters().unwrap().local_syncs;
    assert!(synced >= 1, "the cluster marker");
    let t = s.create_topic("t", 1, Default::default()).await.unwrap();
    s.append(vec![append_to(&t, 0, batch(0, 2, -1, Compression::None))])
        .await;
    assert_eq!(s.object_counters().unwrap().local_syncs, synced + 1);
}
