//! The storage engine: the topic catalog, the read path, and (in submodules) the write path and the
//! background upkeep.
//!
//! - `writer`: produce requests of all partitions are gathered into flushes, offsets assigned by patching
//!   baseOffset, each flush made durable (local append + fsync, or one object PUT) and committed in one
//!   metadata transaction, several in flight, committed in order; nothing is acknowledged or readable
//!   before it is both durable and committed.
//! - `maintenance`: retention, deletion of segments nothing refers to any more, compaction of small
//!   objects into per-partition objects.
//! - here: reads through the block cache, with coalesced ranged GETs and read-ahead in object stores.

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use parking_lot::RwLock;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use streamhouse_protocol::batch::{self, BatchHeader};
use streamhouse_protocol::compression::Inflater;
use tokio::sync::{mpsc, oneshot, watch};
use uuid::Uuid;

mod identity;
mod maintenance;
mod writer;

pub use maintenance::CompactionReport;

use crate::cache::BlockCache;
use crate::metadata::{
    Commit, MetadataStore, SegmentRecord, Snapshot, SqliteMetadata, TopicConfigs, TopicRecord,
};
use crate::object::ObjectSegments;
use crate::producer::{ProducerEntry, SequenceCheck};
use crate::segment::{self, ActiveSegment, BlockMeta};
use crate::StorageError;
use writer::Writer;

/// Leader epoch written into every stored batch: a single broker never changes leader.
pub const LEADER_EPOCH: i32 = 0;

#[derive(Debug, Clone)]
pub struct StorageConfig {
    pub data_dir: PathBuf,
    /// How long the writer gathers produce requests before a flush, on top of the natural group
    /// commit (requests arriving while a flush is made durable form the next one).
    pub flush_interval: Duration,
    /// A flush starts early once this many bytes are pending.
    pub flush_max_bytes: usize,
    /// Roll the active segment past this size...
    pub segment_bytes: u64,
    /// ...or this age.
    pub segment_ms: i64,
    pub cache_bytes: u64,
    /// fsync the metadata WAL at every commit (SQLite synchronous=FULL).
    pub sync_metadata: bool,
    /// Segments in an object store (`s3://bucket/prefix`, `memory://`, `file:///path`) instead of
    /// local segment files: each flush becomes one object.
    pub object_store: Option<String>,
    /// An object store client to use instead of one built from `object_store` (embedding; tests that
    /// inject faults).
    pub object_store_client: Option<Arc<dyn object_store::ObjectStore>>,
    /// How often retention.ms / retention.bytes are applied (Kafka's log.retention.check.interval.ms).
    pub retention_check_interval: Duration,
    /// Retention time of topics without a retention.ms override (Kafka's log.retention.ms; -1: forever).
    pub retention_ms: i64,
    /// Retained bytes per partition of topics without a retention.bytes override (-1: no limit).
    pub retention_bytes: i64,
    /// cleanup.policy of topics without their own (Kafka's log.cleanup.policy): retention applies only
    /// when it contains `delete`.
    pub cleanup_policy: String,
    /// Flushes being made durable at once (object PUTs overlap; committed in order).
    pub max_inflight_flushes: usize,
    /// How long a segment no block refers to any more is kept before its file or object is deleted, so
    /// reads that started before it was dropped can finish (Kafka's file.delete.delay.ms).
    pub file_delete_delay: Duration,
    /// How often small flush objects are merged into per-partition objects (object stores only; 0: never).
    pub compaction_interval: Duration,
    /// Flush objects younger than this are left for the next compaction pass.
    pub compaction_min_age: Duration,
    /// Objects at least this large are not compacted again; also about the most one pass reads.
    pub compaction_target_bytes: u64,
    /// Bytes a sequential reader's next blocks are fetched ahead of it (object stores).
    pub read_ahead_bytes: usize,
    /// Idempotent-producer state not appended to for this long is dropped (Kafka's
    /// producer.id.expiration.ms)...
    pub producer_id_expiration_ms: i64,
    /// ...checked this often (producer.id.expiration.check.interval.ms).
    pub producer_id_expiration_check_interval: Duration,
    /// Most (producer, partition) states kept; past it the longest idle are dropped early.
    pub max_producer_states: usize,
}

impl StorageConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            flush_interval: Duration::ZERO,
            flush_max_bytes: 8 << 20,
            segment_bytes: 256 << 20,
            segment_ms: 10 * 60 * 1000,
            cache_bytes: 256 << 20,
            sync_metadata: true,
            object_store: None,
            object_store_client: None,
            retention_check_interval: Duration::from_secs(300),
            retention_ms: 604_800_000,
            retention_bytes: -1,
            cleanup_policy: "delete".to_string(),
            max_inflight_flushes: 4,
            file_delete_delay: Duration::from_secs(60),
            compaction_interval: Duration::from_secs(60),
            compaction_min_age: Duration::from_secs(30),
            compaction_target_bytes: 64 << 20,
            read_ahead_bytes: 4 << 20,
            producer_id_expiration_ms: 86_400_000,
            producer_id_expiration_check_interval: Duration::from_secs(600),
            max_producer_states: 500_000,
        }
    }
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub struct Topic {
    pub id: Uuid,
    pub name: String,
    pub configs: TopicConfigs,
    pub created_ms: i64,
    pub partitions: Vec<Arc<Partition>>,
}

pub struct Partition {
    pub topic_id: Uuid,
    pub index: i32,
    state: RwLock<PartitionState>,
}

#[derive(Default)]
struct PartitionState {
    high_watermark: i64,
    log_start_offset: i64,
    /// Committed blocks by base offset.
    blocks: BTreeMap<i64, BlockMeta>,
}

impl Partition {
    fn new(topic_id: Uuid, index: i32) -> Self {
        Self {
            topic_id,
            index,
            state: RwLock::new(PartitionState::default()),
        }
    }
    pub fn high_watermark(&self) -> i64 {
        self.state.read().high_watermark
    }
    pub fn log_start_offset(&self) -> i64 {
        self.state.read().log_start_offset
    }
    /// Blocks from the one holding `offset` onwards, until `max_bytes` of raw data are covered.
    fn blocks_from(&self, offset: i64, max_bytes: usize) -> Vec<BlockMeta> {
        let st = self.state.read();
        let start = st
            .blocks
            .range(..=offset)
            .next_back()
            .map(|(k, _)| *k)
            .unwrap_or(offset);
        let mut out = Vec::new();
        let mut covered = 0usize;
        for b in st.blocks.range(start..).map(|(_, b)| b) {
            if b.last_offset < offset {
                continue;
            }
            out.push(*b);
            covered += b.raw_len as usize;
            if covered >= max_bytes {
                break;
            }
        }
        out
    }
    /// `first` and the partition's blocks stored right after it in the same segment, up to
    /// `max_bytes` stored: what one ranged GET can fetch together.
    fn run_from(&self, first: &BlockMeta, max_bytes: u64) -> Vec<BlockMeta> {
        let st = self.state.read();
        let mut run = vec![*first];
        let mut end = first.position + first.total_len();
        let mut bytes = first.total_len();
        for b in st.blocks.range(first.base_offset + 1..).map(|(_, b)| b) {
            if b.segment_id != first.segment_id
                || b.position != end
                || bytes + b.total_len() > max_bytes
            {
                break;
            }
            run.push(*b);
            end += b.total_len();
            bytes += b.total_len();
        }
        run
    }
    fn all_blocks(&self) -> Vec<BlockMeta> {
        self.state.read().blocks.values().copied().collect()
    }
}

/// A validated batch to append to one partition.
pub struct AppendBatch {
    pub topic: Arc<Topic>,
    pub partition: i32,
    pub header: BatchHeader,
    pub data: Bytes,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendOutcome {
    pub base_offset: i64,
    pub log_start_offset: i64,
}

pub type AppendResult = Result<AppendOutcome, StorageError>;

#[derive(Debug, Clone)]
pub struct ReadResult {
    pub high_watermark: i64,
    pub log_start_offset: i64,
    /// Whole batches, the first one holding the requested offset; empty at the end of the log.
    pub records: Bytes,
}

/// A queued append; [`AppendTicket::wait`] resolves when it is committed (or failed).
pub struct AppendTicket {
    rx: Option<oneshot::Receiver<Vec<AppendResult>>>,
    n: usize,
}

impl AppendTicket {
    pub async fn wait(self) -> Vec<AppendResult> {
        let failed = |n| (0..n).map(|_| Err(StorageError::ShuttingDown)).collect();
        match self.rx {
            Some(rx) => rx.await.unwrap_or_else(|_| failed(self.n)),
            None => failed(self.n),
        }
    }
}

struct AppendRequest {
    batches: Vec<AppendBatch>,
    reply: oneshot::Sender<Vec<AppendResult>>,
    /// When it was queued: the flush window counts from the first request of a flush.
    queued_at: tokio::time::Instant,
}

#[derive(Default)]
struct Catalog {
    by_name: HashMap<String, Arc<Topic>>,
    by_id: HashMap<Uuid, Arc<Topic>>,
}

pub struct Storage {
    config: StorageConfig,
    segments_dir: PathBuf,
    meta: Arc<dyn MetadataStore>,
    catalog: RwLock<Catalog>,
    cache: BlockCache,
    writer: mpsc::Sender<AppendRequest>,
    commits: watch::Sender<u64>,
    objects: Option<Arc<ObjectSegments>>,
    /// The next segment id; ids are never reused, not even those of uploads never committed.
    next_segment_id: std::sync::atomic::AtomicU64,
    /// Read-aheads running at once.
    read_ahead_permits: Arc<tokio::sync::Semaphore>,
    /// Fetch prefetches running at once.
    prefetch_permits: Arc<tokio::sync::Semaphore>,
    /// The cluster this metadata store (and object-store prefix) belongs to.
    cluster_id: String,
}

impl Storage {
    /// Opens the data directory, recovers, and starts the writer task.
    pub async fn open(config: StorageConfig) -> Result<Arc<Storage>, StorageError> {
        let dir = config.data_dir.clone();
        let sync = config.sync_metadata;
        let meta: Arc<dyn MetadataStore> = tokio::task::spawn_blocking(move || {
            private_dir(&dir)?;
            private_dir(&dir.join("segments"))?;
            let db = dir.join("metadata.db");
            private_file(&db)?;
            Ok::<_, StorageError>(Arc::new(SqliteMetadata::open(&db, sync)?))
        })
        .await
        .map_err(|_| StorageError::ShuttingDown)??;
        Self::open_with(config, meta).await
    }

    pub async fn open_with(
        config: StorageConfig,
        meta: Arc<dyn MetadataStore>,
    ) -> Result<Arc<Storage>, StorageError> {
        let segments_dir = config.data_dir.join("segments");
        let objects = match (&config.object_store_client, &config.object_store) {
            (Some(store), _) => Some(Arc::new(ObjectSegments::with_store(store.clone(), ""))),
            (None, Some(url)) => Some(Arc::new(ObjectSegments::open(url)?)),
            (None, None) => None,
        };
        // Before anything in the store is read or deleted: do this metadata and this prefix belong
        // together?
        let cluster_id = identity::cluster_id(&meta, objects.as_deref(), &config.data_dir).await?;
        let (tx, rx) = mpsc::channel(4096);
        let (commits, _) = watch::channel(0u64);
        let storage = Arc::new(Storage {
            cache: BlockCache::new(config.cache_bytes),
            config,
            segments_dir,
            meta,
            catalog: RwLock::new(Catalog::default()),
            writer: tx,
            commits,
            objects,
            next_segment_id: std::sync::atomic::AtomicU64::new(1),
            read_ahead_permits: Arc::new(tokio::sync::Semaphore::new(4)),
            prefetch_permits: Arc::new(tokio::sync::Semaphore::new(32)),
            cluster_id,
        });
        let st = storage.clone();
        let writer = tokio::task::spawn_blocking(move || st.recover())
            .await
            .map_err(|_| StorageError::ShuttingDown)??;
        // Uploads whose commit never happened (a crash between PUT and commit): their intents are left.
        let intents = storage.with_meta(|meta| meta.upload_intents()).await?;
        if !intents.is_empty() {
            tracing::info!(
                objects = intents.len(),
                "deleting uploads that were never committed"
            );
            storage.discard_uploads(intents).await?;
        }
        // Segments retired before the restart can go now: no reader can still be using them.
        storage.delete_retired_segments(i64::MAX).await?;
        tokio::spawn(writer.run(rx));
        maintenance::spawn(&storage);
        Ok(storage)
    }

    /// Loads the catalog and index, removes segment files the metadata does not know (written but never
    /// committed), and cuts the active segment back to its last committed block.
    fn recover(self: &Arc<Self>) -> Result<Writer, StorageError> {
        let snap = self.meta.load()?;
        let mut catalog = Catalog::default();
        for t in &snap.topics {
            let partitions = (0..t.partitions)
                .map(|p| Arc::new(Partition::new(t.id, p)))
                .collect();
            let topic = Arc::new(Topic {
                id: t.id,
                name: t.name.clone(),
                configs: t.configs.clone(),
                created_ms: t.created_ms,
                partitions,
            });
            catalog.by_name.insert(t.name.clone(), topic.clone());
            catalog.by_id.insert(t.id, topic);
        }
        let partition = |c: &Catalog, id: Uuid, p: i32| {
            c.by_id
                .get(&id)
                .and_then(|t| t.partitions.get(p as usize))
                .cloned()
        };
        for p in &snap.partitions {
            if let Some(part) = partition(&catalog, p.topic_id, p.partition) {
                let mut st = part.state.write();
                st.high_watermark = p.high_watermark;
                st.log_start_offset = p.log_start_offset;
            }
        }
        for b in &snap.blocks {
            if let Some(part) = partition(&catalog, b.topic_id, b.partition) {
                part.state.write().blocks.insert(b.base_offset, *b);
            }
        }
        let (active, max_id) = self.reopen_active_segment(&snap)?;
        *self.catalog.write() = catalog;
        tracing::info!(
            topics = snap.topics.len(),
            blocks = snap.blocks.len(),
            segments = snap.segments.len(),
            "storage recovered"
        );
        self.reserve_segment_ids_above(max_id);
        Ok(Writer::new(
            self.clone(),
            active,
            snap.producers.into_iter().collect(),
        ))
    }

    /// Removes local segment files the metadata store does not know (written but never committed, or
    /// dropped and waiting for deletion) and reopens the active segment, cut back to its last committed
    /// block. Returns it and the highest segment id seen.
    fn reopen_active_segment(
        &self,
        snap: &Snapshot,
    ) -> Result<(Option<ActiveSegment>, u64), StorageError> {
        let known: HashMap<u64, SegmentRecord> = snap.segments.iter().map(|s| (s.id, *s)).collect();
        let mut max_id = snap
            .segments
            .iter()
            .map(|s| s.id)
            .chain(snap.retired.iter().map(|r| r.0))
            .chain(snap.intents.iter().copied())
            .chain([snap.max_segment_id])
            .max()
            .unwrap_or(0);
        for entry in std::fs::read_dir(&self.segments_dir)? {
            let path = entry?.path();
            match segment::segment_id_of(&path) {
                Some(id) if known.contains_key(&id) => {}
                // A segment file of ours (this broker's private segments folder, named as it names
                // them) written but never committed, or retired before the restart.
                Some(id) => {
                    tracing::info!(
                        ?path,
                        "removing segment file the metadata store does not reference"
                    );
                    max_id = max_id.max(id);
                    std::fs::remove_file(&path)?;
                }
                None => tracing::warn!(?path, "leaving alone a file that is not a segment"),
            }
        }
        let mut active = None;
        if let Some(s) = snap
            .segments
            .iter()
            .find(|s| !s.sealed && segment::segment_path(&self.segments_dir, s.id).exists())
        {
            let blocks = snap
                .blocks
                .iter()
                .filter(|b| b.segment_id == s.id)
                .copied()
                .collect();
            active = Some(ActiveSegment::reopen(
                &self.segments_dir,
                s.id,
                s.created_ms,
                blocks,
            )?);
        }
        Ok((active, max_id))
    }

    fn new_segment_id(&self) -> u64 {
        self.next_segment_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    fn reserve_segment_ids_above(&self, id: u64) {
        self.next_segment_id
            .fetch_max(id + 1, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn config(&self) -> &StorageConfig {
        &self.config
    }

    /// The cluster id, kept in the metadata store (and in S3 mode in the prefix's marker object).
    pub fn cluster_id(&self) -> &str {
        &self.cluster_id
    }

    /// Uploads a new segment object: its upload intent is recorded durably first, so that a crash
    /// before its commit leaves a trace proving the object ours to delete (see `identity`).
    async fn upload(
        &self,
        objects: &ObjectSegments,
        ids_and_objects: Vec<(u64, Vec<u8>)>,
    ) -> Result<(), StorageError> {
        let ids: Vec<u64> = ids_and_objects.iter().map(|(id, _)| *id).collect();
        self.with_meta(move |meta| meta.record_uploads(&ids))
            .await?;
        futures_util::stream::iter(
            ids_and_objects
                .into_iter()
                .map(|(id, object)| objects.put(id, object)),
        )
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect()
    }

    /// Deletes uploaded objects that will never be committed, then their intents. Only ids with an
    /// intent (or retired ones) ever come here: nothing is deleted because a listing showed it.
    async fn discard_uploads(&self, ids: Vec<u64>) -> Result<(), StorageError> {
        let Some(objects) = &self.objects else {
            return self.with_meta(move |meta| meta.forget_uploads(&ids)).await;
        };
        let live: std::collections::HashSet<u64> = self
            .with_meta(|meta| meta.segments())
            .await?
            .iter()
            .map(|s| s.id)
            .collect();
        let dead: Vec<u64> = ids
            .iter()
            .copied()
            .filter(|id| !live.contains(id))
            .collect();
        futures_util::stream::iter(dead.into_iter().map(|id| objects.delete(id)))
            .buffer_unordered(16)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<Vec<()>, _>>()?;
        self.with_meta(move |meta| meta.forget_uploads(&ids)).await
    }

    pub fn topic(&self, name: &str) -> Option<Arc<Topic>> {
        self.catalog.read().by_name.get(name).cloned()
    }

    pub fn topic_by_id(&self, id: Uuid) -> Option<Arc<Topic>> {
        self.catalog.read().by_id.get(&id).cloned()
    }

    /// Partitions of all topics.
    pub fn partition_count(&self) -> usize {
        self.catalog
            .read()
            .by_id
            .values()
            .map(|t| t.partitions.len())
            .sum()
    }

    /// All topics, sorted by name.
    pub fn topics(&self) -> Vec<Arc<Topic>> {
        let mut v: Vec<_> = self.catalog.read().by_name.values().cloned().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    pub async fn create_topic(
        &self,
        name: &str,
        partitions: i32,
        configs: TopicConfigs,
    ) -> Result<Arc<Topic>, StorageError> {
        if let Some(t) = self.topic(name) {
            return Err(StorageError::TopicExists(t.name.clone()));
        }
        let record = TopicRecord {
            id: Uuid::new_v4(),
            name: name.to_string(),
            partitions,
            configs,
            created_ms: now_ms(),
        };
        let r = record.clone();
        self.with_meta(move |meta| meta.create_topic(&r)).await?;
        let topic = Arc::new(Topic {
            id: record.id,
            name: record.name.clone(),
            configs: record.configs,
            created_ms: record.created_ms,
            partitions: (0..partitions)
                .map(|p| Arc::new(Partition::new(record.id, p)))
                .collect(),
        });
        let mut c = self.catalog.write();
        if let Some(existing) = c.by_name.get(name) {
            // Lost a race with a concurrent create of the same name: the store refused one of us.
            return Ok(existing.clone());
        }
        c.by_name.insert(topic.name.clone(), topic.clone());
        c.by_id.insert(topic.id, topic.clone());
        Ok(topic)
    }

    /// Grows a topic to `partitions` partitions; existing partitions and their data are untouched.
    pub async fn create_partitions(
        &self,
        name: &str,
        partitions: i32,
    ) -> Result<Arc<Topic>, StorageError> {
        let topic = self
            .topic(name)
            .ok_or(StorageError::UnknownTopicOrPartition)?;
        let id = topic.id;
        self.with_meta(move |meta| meta.add_partitions(id, partitions))
            .await?;
        let mut grown: Vec<Arc<Partition>> = topic.partitions.clone();
        grown.extend(
            (topic.partitions.len() as i32..partitions).map(|p| Arc::new(Partition::new(id, p))),
        );
        Ok(self.replace_topic(&topic, grown, topic.configs.clone()))
    }

    /// DeleteRecords: makes `before` the partition's log start offset (-1: the high watermark). Returns
    /// the new low watermark. Whole blocks below it leave the index; a batch straddling it stays and
    /// clients skip its older records, as with Kafka's segments.
    pub async fn delete_records(
        &self,
        partition: &Partition,
        before: i64,
    ) -> Result<i64, StorageError> {
        let (hwm, lso) = {
            let st = partition.state.read();
            (st.high_watermark, st.log_start_offset)
        };
        let before = if before == -1 { hwm } else { before };
        if before < 0 || before > hwm {
            return Err(StorageError::OffsetOutOfRange {
                offset: before,
                log_start: lso,
                high_watermark: hwm,
            });
        }
        if before <= lso {
            return Ok(lso);
        }
        let (topic_id, index) = (partition.topic_id, partition.index);
        self.with_meta(move |meta| meta.truncate_head(topic_id, index, before))
            .await?;
        let mut st = partition.state.write();
        st.log_start_offset = st.log_start_offset.max(before);
        st.blocks.retain(|_, b| b.last_offset >= before);
        Ok(st.log_start_offset)
    }

    /// Replaces a topic's configuration overrides.
    pub async fn set_topic_configs(
        &self,
        name: &str,
        configs: TopicConfigs,
    ) -> Result<Arc<Topic>, StorageError> {
        let topic = self
            .topic(name)
            .ok_or(StorageError::UnknownTopicOrPartition)?;
        let (id, c) = (topic.id, configs.clone());
        self.with_meta(move |meta| meta.set_topic_configs(id, &c))
            .await?;
        Ok(self.replace_topic(&topic, topic.partitions.clone(), configs))
    }

    /// Swaps in a new `Topic` value (topics are immutable once shared), keeping the partitions' state.
    fn replace_topic(
        &self,
        old: &Topic,
        partitions: Vec<Arc<Partition>>,
        configs: TopicConfigs,
    ) -> Arc<Topic> {
        let topic = Arc::new(Topic {
            id: old.id,
            name: old.name.clone(),
            configs,
            created_ms: old.created_ms,
            partitions,
        });
        let mut c = self.catalog.write();
        if c.by_id.contains_key(&old.id) {
            c.by_name.insert(topic.name.clone(), topic.clone());
            c.by_id.insert(topic.id, topic.clone());
        }
        topic
    }

    pub async fn delete_topic(&self, name: &str) -> Result<Uuid, StorageError> {
        let topic = self
            .topic(name)
            .ok_or(StorageError::UnknownTopicOrPartition)?;
        let id = topic.id;
        self.with_meta(move |meta| meta.delete_topic(id)).await?;
        let mut c = self.catalog.write();
        c.by_name.remove(name);
        c.by_id.remove(&id);
        Ok(id)
    }

    pub async fn allocate_producer_id(&self) -> Result<i64, StorageError> {
        self.with_meta(|meta| meta.allocate_producer_id()).await
    }

    /// Runs metadata-store calls on the blocking pool (SQLite blocks the thread).
    async fn with_meta<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn MetadataStore) -> Result<T, StorageError> + Send + 'static,
    ) -> Result<T, StorageError> {
        let meta = self.meta.clone();
        tokio::task::spawn_blocking(move || f(meta.as_ref()))
            .await
            .map_err(|_| StorageError::ShuttingDown)?
    }

    /// Queues batches (of any partitions) for the next flush. Call in the order the batches must be
    /// sequenced; the returned ticket resolves once they are durable and committed, one result per batch.
    pub async fn submit(&self, batches: Vec<AppendBatch>) -> AppendTicket {
        let n = batches.len();
        let (reply, rx) = oneshot::channel();
        let request = AppendRequest {
            batches,
            reply,
            queued_at: tokio::time::Instant::now(),
        };
        let rx = match self.writer.send(request).await {
            Ok(()) => Some(rx),
            Err(_) => None,
        };
        AppendTicket { rx, n }
    }

    /// [`submit`](Self::submit) and wait.
    pub async fn append(&self, batches: Vec<AppendBatch>) -> Vec<AppendResult> {
        self.submit(batches).await.wait().await
    }

    /// A receiver that changes at every commit: fetch long-polls wait on it.
    pub fn subscribe_commits(&self) -> watch::Receiver<u64> {
        self.commits.subscribe()
    }

    /// Reads whole batches from `offset`, up to `max_bytes`; with `min_one`, the first batch is returned
    /// even if larger (KIP-74), so a consumer can always make progress.
    pub async fn read(
        self: &Arc<Self>,
        partition: &Partition,
        offset: i64,
        max_bytes: usize,
        min_one: bool,
    ) -> Result<ReadResult, StorageError> {
        let (hwm, lso) = {
            let st = partition.state.read();
            (st.high_watermark, st.log_start_offset)
        };
        let result = |records| ReadResult {
            high_watermark: hwm,
            log_start_offset: lso,
            records,
        };
        if offset < lso || offset > hwm {
            return Err(StorageError::OffsetOutOfRange {
                offset,
                log_start: lso,
                high_watermark: hwm,
            });
        }
        if offset == hwm || (max_bytes == 0 && !min_one) {
            return Ok(result(Bytes::new()));
        }
        let mut parts: Vec<Bytes> = Vec::new();
        let mut total = 0usize;
        let needed = partition.blocks_from(offset, max_bytes.max(1));
        // Only an object store needs the misses up front (local reads go block by block).
        let missing: Vec<BlockMeta> = match self.objects {
            Some(_) => needed
                .iter()
                .filter(|b| !self.cache.contains(b.segment_id, b.position))
                .copied()
                .collect(),
            None => Vec::new(),
        };
        let missed = !missing.is_empty();
        if missing.len() > 1 {
            // Fetch the missing runs concurrently rather than one GET after another; errors surface
            // below, where each block is read in order.
            let starts = run_starts(partition, missing, self.read_ahead_budget() as u64);
            let _ = self.load_runs(partition, starts).await;
        }
        let mut next_offset = offset;
        'blocks: for meta in needed {
            let raw = self.block(Some(partition), &meta).await?;
            next_offset = meta.last_offset + 1;
            for (pos, h) in batch::batches(&raw) {
                if h.last_offset() < offset || h.base_offset >= hwm {
                    continue;
                }
                let size = h.total_size();
                if total + size > max_bytes && !(min_one && total == 0) {
                    break 'blocks;
                }
                parts.push(raw.slice(pos..pos + size));
                total += size;
            }
        }
        if missed {
            // A consumer reading from the store (behind the cached tail): fetch what it reads next.
            self.read_ahead(partition, next_offset);
        }
        Ok(result(concat(parts)))
    }

    /// An upper bound of the record bytes [`read`](Self::read) returns for the same arguments, from the
    /// block index alone (no I/O): the raw bytes of the blocks it would take batches from. With
    /// `min_one`, at least the first of those blocks (KIP-74 returns its first batch whole).
    pub fn read_bound(
        &self,
        partition: &Partition,
        offset: i64,
        max_bytes: usize,
        min_one: bool,
    ) -> usize {
        let (hwm, lso) = {
            let st = partition.state.read();
            (st.high_watermark, st.log_start_offset)
        };
        if offset < lso || offset >= hwm || (max_bytes == 0 && !min_one) {
            return 0;
        }
        partition
            .blocks_from(offset, max_bytes.max(1))
            .iter()
            .map(|b| b.raw_len as usize)
            .sum()
    }

    /// Whether segments live in an object store (S3 mode) rather than in local files.
    pub fn uses_object_store(&self) -> bool {
        self.objects.is_some()
    }

    /// Starts loading, in the background, the blocks a read of `max_bytes` from `offset` will need, when
    /// they are in an object store and not cached. A fetch over many partitions calls it for all of them
    /// first, so their GETs overlap instead of running one partition after the other.
    pub fn prefetch(self: &Arc<Self>, partition: &Partition, offset: i64, max_bytes: usize) {
        if self.objects.is_none() || max_bytes == 0 {
            return;
        }
        let missing: Vec<BlockMeta> = partition
            .blocks_from(offset, max_bytes)
            .into_iter()
            .filter(|b| !self.cache.contains(b.segment_id, b.position))
            .collect();
        if missing.is_empty() {
            return;
        }
        let Ok(permit) = self.prefetch_permits.clone().try_acquire_owned() else {
            return;
        };
        let Some(partition) = self
            .topic_by_id(partition.topic_id)
            .and_then(|t| t.partitions.get(partition.index as usize).cloned())
        else {
            return;
        };
        let starts = run_starts(&partition, missing, self.read_ahead_budget() as u64);
        let storage = self.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _ = storage.load_runs(&partition, starts).await;
        });
    }

    /// Bytes fetched ahead of one partition's reader: read_ahead_bytes, but at most 1/32 of the cache part
    /// that holds blocks read back, so that what many partitions fetched ahead is still there when
    /// their consumers get to it.
    fn read_ahead_budget(&self) -> usize {
        self.config
            .read_ahead_bytes
            .min((self.cache.loaded_capacity() / 32) as usize)
    }

    /// Loads the blocks after `offset` (up to the read-ahead budget) into the cache in the background, with
    /// at most a few read-aheads running at once.
    fn read_ahead(self: &Arc<Self>, partition: &Partition, offset: i64) {
        let ahead = self.read_ahead_budget();
        if ahead == 0 {
            return;
        }
        let Ok(permit) = self.read_ahead_permits.clone().try_acquire_owned() else {
            return;
        };
        let wanted: Vec<BlockMeta> = partition
            .blocks_from(offset, ahead)
            .into_iter()
            .filter(|b| !self.cache.contains(b.segment_id, b.position))
            .collect();
        if wanted.is_empty() {
            return;
        }
        let Some(topic) = self.topic_by_id(partition.topic_id) else {
            return;
        };
        let Some(partition) = topic.partitions.get(partition.index as usize).cloned() else {
            return;
        };
        let starts = run_starts(&partition, wanted, ahead as u64);
        let storage = self.clone();
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = storage.load_runs(&partition, starts).await {
                tracing::debug!(error = %e, "read-ahead stopped");
            }
        });
    }

    /// Loads runs of blocks into the cache, up to 8 ranged GETs at once.
    async fn load_runs(
        &self,
        partition: &Partition,
        starts: Vec<BlockMeta>,
    ) -> Result<(), StorageError> {
        let loads = starts
            .into_iter()
            .map(|m| async move { self.block(Some(partition), &m).await });
        let mut loads = futures_util::stream::iter(loads).buffer_unordered(8);
        while let Some(r) = loads.next().await {
            r?;
        }
        Ok(())
    }

    /// The first offset at or after the log start whose record timestamp is >= `timestamp`, with that
    /// timestamp (ListOffsets; Kafka's FileRecords.searchForTimestamp). Batches are picked by their
    /// header's maxTimestamp; only a candidate is decompressed, through `inflater` (bounded, on a
    /// blocking thread).
    pub async fn offset_for_timestamp(
        &self,
        partition: &Partition,
        timestamp: i64,
        inflater: &Inflater,
    ) -> Result<Option<(i64, i64)>, StorageError> {
        let log_start = partition.log_start_offset();
        for meta in partition
            .all_blocks()
            .into_iter()
            .filter(|b| b.max_timestamp >= timestamp && b.last_offset >= log_start)
        {
            let raw = self.block(Some(partition), &meta).await?;
            for (pos, h) in batch::batches(&raw) {
                if h.max_timestamp < timestamp || h.last_offset() < log_start {
                    continue;
                }
                let one = raw.slice(pos..pos + h.total_size());
                let found = records_with_timestamps(inflater, &meta, one, move |offset, ts| {
                    ts >= timestamp && offset >= log_start
                })
                .await?;
                // A header claiming more than its records hold is passed over, as Kafka does.
                if found.is_some() {
                    return Ok(found);
                }
            }
        }
        Ok(None)
    }

    /// The offset and timestamp of the record with the largest timestamp (ListOffsets MAX_TIMESTAMP):
    /// as Kafka, the earliest batch whose header maxTimestamp is the partition's largest, and in it the
    /// first record with that timestamp. Only that batch is decompressed.
    pub async fn max_timestamp_offset(
        &self,
        partition: &Partition,
        inflater: &Inflater,
    ) -> Result<Option<(i64, i64)>, StorageError> {
        let blocks = partition.all_blocks();
        let Some(best) = blocks
            .iter()
            .max_by_key(|b| (b.max_timestamp, -b.base_offset))
        else {
            return Ok(None);
        };
        let raw = self.block(Some(partition), best).await?;
        let max = best.max_timestamp;
        for (pos, h) in batch::batches(&raw) {
            if h.max_timestamp != max {
                continue;
            }
            let one = raw.slice(pos..pos + h.total_size());
            let found =
                records_with_timestamps(inflater, best, one, move |_, ts| ts == max).await?;
            if found.is_some() {
                return Ok(found);
            }
        }
        Ok(None)
    }

    /// A block's raw batches, from the cache or storage. From an object store, one ranged GET also
    /// fetches the partition's blocks stored right after it in the same object (up to
    /// read_ahead_bytes; compacted objects hold one partition's blocks back to back), and those go to
    /// the cache too.
    async fn block(
        &self,
        partition: Option<&Partition>,
        meta: &BlockMeta,
    ) -> Result<Bytes, StorageError> {
        let m = *meta;
        // Concurrent misses on one block share a single read (the cache's single-flight insert).
        self.cache
            .get_or_load(meta.segment_id, meta.position, async move {
                let Some(objects) = &self.objects else {
                    let dir = self.segments_dir.clone();
                    let bytes = tokio::task::spawn_blocking(move || {
                        segment::read_range(&dir, m.segment_id, m.position, m.total_len() as usize)
                    })
                    .await
                    .map_err(|_| StorageError::ShuttingDown)??;
                    return segment::decode_block(&m, &bytes);
                };
                let run = match partition {
                    Some(p) => p.run_from(&m, self.read_ahead_budget() as u64),
                    None => vec![m],
                };
                let end = run
                    .last()
                    .map(|b| b.position + b.total_len())
                    .unwrap_or(m.position + m.total_len());
                let bytes = objects
                    .read_range(m.segment_id, m.position, end - m.position)
                    .await?;
                let mut first = None;
                for b in &run {
                    let at = (b.position - m.position) as usize;
                    let stored = bytes.get(at..at + b.total_len() as usize).ok_or(
                        StorageError::CorruptBlock {
                            segment_id: b.segment_id,
                            position: b.position,
                            reason: "object shorter than its index says",
                        },
                    )?;
                    if b.position == m.position {
                        first = Some(segment::decode_block(b, stored)?);
                    } else if !self.cache.contains(b.segment_id, b.position) {
                        self.cache.insert_loaded(
                            b.segment_id,
                            b.position,
                            segment::decode_block(b, stored)?,
                        );
                    }
                }
                first.ok_or(StorageError::ShuttingDown)
            })
            .await
    }

    /// Object-store request counters, when segments live in one.
    pub fn object_counters(&self) -> Option<crate::object::ObjectCounters> {
        self.objects.as_ref().map(|o| o.counters())
    }

    /// The metadata store, for coordinators that keep their state beside the log's.
    pub fn metadata(&self) -> Arc<dyn MetadataStore> {
        self.meta.clone()
    }

    pub fn cache_weight(&self) -> u64 {
        self.cache.weight()
    }

    /// The segments (files or objects) holding a partition's blocks, by id.
    pub fn segments_of(&self, partition: &Partition) -> Vec<u64> {
        let mut ids: Vec<u64> = partition
            .all_blocks()
            .iter()
            .map(|b| b.segment_id)
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// Block cache hits and misses since start.
    pub fn cache_stats(&self) -> crate::cache::CacheStats {
        self.cache.stats()
    }
}

/// Creates `dir` (and its parents) if needed and makes it readable by its owner only (0700): it holds
/// the log and the metadata.
fn private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// Creates `path` if needed with mode 0600 and makes an existing one 0600 (SQLite gives its -wal and
/// -shm files the database file's mode).
fn private_file(path: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
}

/// The first block of each run of `blocks` that one ranged GET covers (the partition's blocks stored back
/// to back in one object, up to `max_bytes`): loading those loads them all.
fn run_starts(partition: &Partition, blocks: Vec<BlockMeta>, max_bytes: u64) -> Vec<BlockMeta> {
    let mut starts: Vec<BlockMeta> = Vec::new();
    let mut covered: Option<(u64, u64)> = None; // (segment, end of the last run)
    for b in blocks {
        if covered.is_some_and(|(seg, end)| seg == b.segment_id && b.position < end) {
            continue;
        }
        let run = partition.run_from(&b, max_bytes);
        let end = run.last().map(|r| r.position + r.total_len()).unwrap_or(0);
        covered = Some((b.segment_id, end));
        starts.push(b);
    }
    starts
}

fn concat(parts: Vec<Bytes>) -> Bytes {
    match parts.len() {
        0 => Bytes::new(),
        1 => parts.into_iter().next().unwrap_or_default(),
        _ => {
            let mut out = BytesMut::with_capacity(parts.iter().map(|p| p.len()).sum());
            for p in parts {
                out.extend_from_slice(&p);
            }
            out.freeze()
        }
    }
}

/// The first record of one stored batch for which `pick(offset, timestamp)` holds, read on a blocking
/// thread through the bounded streaming reader (a stored bomb is an error, never an allocation).
async fn records_with_timestamps(
    inflater: &Inflater,
    meta: &BlockMeta,
    batch: Bytes,
    pick: impl FnMut(i64, i64) -> bool + Send + 'static,
) -> Result<Option<(i64, i64)>, StorageError> {
    let found = inflater
        .run(move |limit| streamhouse_protocol::records::find_record(&batch, limit, pick))
        .await
        .ok_or(StorageError::ShuttingDown)?;
    found.map_err(|e| StorageError::CorruptBlock {
        segment_id: meta.segment_id,
        position: meta.position,
        reason: match e {
            batch::BatchError::DecompressedTooLarge(_) => {
                "a batch decompresses to more than message.max.decompressed.bytes"
            }
            _ => "a batch's records do not parse",
        },
    })
}
