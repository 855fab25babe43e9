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

use bytes::Bytes;
use parking_lot::RwLock;
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};
use streamhouse_protocol::batch::BatchHeader;
use tokio::sync::{mpsc, oneshot, watch};
use uuid::Uuid;

mod catalog;
mod cleaner;
mod config;
mod identity;
pub mod index;
mod maintenance;
mod read;
mod recovery;
mod segments;
mod writer;

use catalog::Catalog;
pub use catalog::{Partition, Topic};
pub use config::StorageConfig;
use segments::{LocalSegments, ObjectStoreSegments, SegmentIds, SegmentStore};

pub use cleaner::{CleanReport, CleanableRange, CleanerStats};
pub use maintenance::CompactionReport;

use crate::cache::BlockCache;
use crate::metadata::{MetadataStore, TopicConfigs, TopicRecord};
use crate::object::ObjectSegments;
use crate::producer::AbortedTxn;
use crate::StorageError;

/// Leader epoch written into every stored batch: a single broker never changes leader.
pub const LEADER_EPOCH: i32 = 0;

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
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
    pub last_stable_offset: i64,
    pub log_start_offset: i64,
    /// Whole batches, the first one holding the requested offset; empty at the end of the log (at
    /// read_committed: at the last stable offset).
    pub records: Bytes,
    /// At read_committed, the aborted transactions overlapping the returned batches.
    pub aborted: Vec<AbortedTxn>,
}

/// Which records a read may return (Kafka's IsolationLevel).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isolation {
    /// Up to the high watermark.
    ReadUncommitted,
    /// Up to the last stable offset, with the aborted transactions in that range.
    ReadCommitted,
}

impl Isolation {
    /// From the wire: 1 is READ_COMMITTED, anything else READ_UNCOMMITTED (as Kafka's
    /// IsolationLevel.forId would refuse others, a fetch answers them as the default).
    pub fn from_wire(level: i8) -> Isolation {
        if level == 1 {
            Isolation::ReadCommitted
        } else {
            Isolation::ReadUncommitted
        }
    }
}

/// Asked by the writer before a transactional batch opens its producer's transaction on a partition:
/// does the producer's ongoing transaction, at this epoch, hold the partition? The broker's
/// transaction coordinator answers: `Ok`, `InvalidProducerEpoch` for an epoch older than the
/// transaction's, else `InvalidTxnState`. Called on the writer's task: it must not block (a short
/// lock at most).
pub trait TransactionVerifier: Send + Sync + 'static {
    fn verify(
        &self,
        producer_id: i64,
        epoch: i16,
        topic_id: Uuid,
        partition: i32,
    ) -> Result<(), StorageError>;
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

pub struct Storage {
    config: StorageConfig,
    meta: Arc<dyn MetadataStore>,
    catalog: RwLock<Catalog>,
    cache: BlockCache,
    writer: mpsc::Sender<AppendRequest>,
    commits: watch::Sender<u64>,
    /// Local files or an object store, chosen once at open.
    segments: Arc<dyn SegmentStore>,
    ids: Arc<SegmentIds>,
    /// Read-aheads running at once.
    read_ahead_permits: Arc<tokio::sync::Semaphore>,
    /// Fetch prefetches running at once.
    prefetch_permits: Arc<tokio::sync::Semaphore>,
    /// The cluster this metadata store (and object-store prefix) belongs to.
    cluster_id: String,
    /// The transaction coordinator, once the broker has started it: until then (and without one)
    /// transactional batches are refused.
    verifier: OnceLock<Arc<dyn TransactionVerifier>>,
    /// Held by object compaction and the log cleaner for a whole pass: both replace blocks in the
    /// index, and must never switch the same ones at once.
    rewrites: tokio::sync::Mutex<()>,
    /// Written by the cleaner at the end of each pass, read by the metrics endpoint (held for a copy).
    cleaner_stats: parking_lot::Mutex<cleaner::CleanerStats>,
}

impl Storage {
    /// Opens the data directory, recovers, and starts the writer task.
    pub async fn open(config: StorageConfig) -> Result<Arc<Storage>, StorageError> {
        let dir = config.data_dir.clone();
        let sync = config.sync_metadata;
        let location = config.metadata.clone();
        let meta = tokio::task::spawn_blocking(move || {
            private_dir(&dir)?;
            private_dir(&dir.join("segments"))?;
            crate::metadata::open(&location, &dir, sync)
        })
        .await
        .map_err(|_| StorageError::TaskFailed("opening the metadata store"))??;
        Self::open_with(config, meta).await
    }

    pub async fn open_with(
        config: StorageConfig,
        meta: Arc<dyn MetadataStore>,
    ) -> Result<Arc<Storage>, StorageError> {
        let objects = match (&config.object_store_client, &config.object_store) {
            (Some(store), _) => Some(Arc::new(ObjectSegments::with_store(store.clone(), ""))),
            (None, Some(url)) => Some(Arc::new(ObjectSegments::open(url)?)),
            (None, None) => None,
        };
        // Before anything in the store is read or deleted: do this metadata and this prefix belong
        // together?
        let cluster_id = identity::cluster_id(&meta, objects.as_deref(), &config.data_dir).await?;
        let ids = Arc::new(SegmentIds::new());
        // The one place local files and object stores part ways.
        let segments: Arc<dyn SegmentStore> = match objects {
            Some(objects) => Arc::new(ObjectStoreSegments::new(objects, meta.clone(), ids.clone())),
            None => Arc::new(LocalSegments::new(
                config.data_dir.join("segments"),
                ids.clone(),
                config.segment_bytes,
                config.segment_ms,
            )),
        };
        let (tx, rx) = mpsc::channel(4096);
        let (commits, _) = watch::channel(0u64);
        let storage = Arc::new(Storage {
            cache: BlockCache::new(config.cache_bytes),
            config,
            meta,
            catalog: RwLock::new(Catalog::default()),
            writer: tx,
            commits,
            segments,
            ids,
            read_ahead_permits: Arc::new(tokio::sync::Semaphore::new(4)),
            prefetch_permits: Arc::new(tokio::sync::Semaphore::new(32)),
            cluster_id,
            verifier: OnceLock::new(),
            rewrites: tokio::sync::Mutex::new(()),
            cleaner_stats: Default::default(),
        });
        let st = storage.clone();
        let writer = tokio::task::spawn_blocking(move || st.recover())
            .await
            .map_err(|_| StorageError::TaskFailed("recovery"))??;
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

    pub fn config(&self) -> &StorageConfig {
        &self.config
    }

    /// Installs the transaction coordinator the writer asks about transactional batches (once).
    pub fn set_transaction_verifier(&self, verifier: Arc<dyn TransactionVerifier>) {
        let _ = self.verifier.set(verifier);
    }

    fn verify_transaction(
        &self,
        producer_id: i64,
        epoch: i16,
        topic_id: Uuid,
        partition: i32,
    ) -> Result<(), StorageError> {
        match self.verifier.get() {
            Some(v) => v.verify(producer_id, epoch, topic_id, partition),
            None => Err(StorageError::InvalidTxnState),
        }
    }

    /// The cluster id, kept in the metadata store (and in S3 mode in the prefix's marker object).
    pub fn cluster_id(&self) -> &str {
        &self.cluster_id
    }

    /// Deletes uploaded objects that will never be committed, then their intents. Only ids with an
    /// intent (or retired ones) ever come here: nothing is deleted because a listing showed it.
    async fn discard_uploads(&self, ids: Vec<u64>) -> Result<(), StorageError> {
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
        self.segments.delete(dead).await?;
        self.with_meta(move |meta| meta.forget_uploads(&ids)).await
    }

    pub fn topic(&self, name: &str) -> Option<Arc<Topic>> {
        self.catalog.read().by_name(name)
    }

    pub fn topic_by_id(&self, id: Uuid) -> Option<Arc<Topic>> {
        self.catalog.read().by_id(&id)
    }

    /// Partitions of all topics.
    pub fn partition_count(&self) -> usize {
        self.catalog
            .read()
            .topics()
            .map(|t| t.partitions.len())
            .sum()
    }

    /// All topics, sorted by name.
    pub fn topics(&self) -> Vec<Arc<Topic>> {
        let mut v: Vec<_> = self.catalog.read().topics().cloned().collect();
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
        if let Some(existing) = c.by_name(name) {
            // Lost a race with a concurrent create of the same name: the store refused one of us.
            return Ok(existing);
        }
        c.insert(topic.clone());
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
        let (hwm, lso) = partition.watermarks();
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
        Ok(partition.truncate_before(before))
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
        if c.contains_id(&old.id) {
            c.insert(topic.clone());
        }
        topic
    }

    pub async fn delete_topic(&self, name: &str) -> Result<Uuid, StorageError> {
        let topic = self
            .topic(name)
            .ok_or(StorageError::UnknownTopicOrPartition)?;
        let id = topic.id;
        self.with_meta(move |meta| meta.delete_topic(id)).await?;
        self.catalog.write().remove(name, &id);
        Ok(id)
    }

    pub async fn allocate_producer_id(&self) -> Result<i64, StorageError> {
        self.with_meta(|meta| meta.allocate_producer_id()).await
    }

    /// The committed producer state of a partition (DescribeProducers): what the last committed
    /// flush wrote, by producer id.
    pub async fn producers_of(
        &self,
        partition: &Partition,
    ) -> Result<Vec<(i64, crate::producer::ProducerEntry)>, StorageError> {
        let (topic_id, index) = (partition.topic_id, partition.index);
        self.with_meta(move |meta| meta.producers_of(topic_id, index))
            .await
    }

    /// Runs metadata-store calls on the blocking pool: they block the thread (the blocking rule in
    /// `metadata`).
    async fn with_meta<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn MetadataStore) -> Result<T, StorageError> + Send + 'static,
    ) -> Result<T, StorageError> {
        let meta = self.meta.clone();
        tokio::task::spawn_blocking(move || f(meta.as_ref()))
            .await
            .map_err(|_| StorageError::TaskFailed("a metadata call"))?
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

    /// [`submit`](Self::submit) from a thread outside the async runtime (a coordinator's writer
    /// thread): blocks while the writer's queue is full. Never call it on a runtime thread.
    pub fn submit_blocking(&self, batches: Vec<AppendBatch>) -> AppendTicket {
        let n = batches.len();
        let (reply, rx) = oneshot::channel();
        let request = AppendRequest {
            batches,
            reply,
            queued_at: tokio::time::Instant::now(),
        };
        let rx = self.writer.blocking_send(request).ok().map(|()| rx);
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

    /// Object-store request counters, when segments live in one.
    pub fn object_counters(&self) -> Option<crate::object::ObjectCounters> {
        self.segments.counters()
    }

    /// The metadata store, for coordinators that keep their state beside the log's.
    pub fn metadata(&self) -> Arc<dyn MetadataStore> {
        self.meta.clone()
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
