//! The storage engine: the topic catalog, the group-commit writer and the read path.
//!
//! Write path (DEVELOPERS.md): the writer task gathers the batches of all partitions that arrive within
//! `flush_interval` (or until `flush_max_bytes`), assigns offsets by patching baseOffset, writes one block
//! per partition to the active segment and fsyncs it, commits blocks, high watermarks and producer state
//! in one metadata transaction, and only then publishes the new high watermarks, wakes fetch long-polls
//! and answers the producers. Nothing is acknowledged or readable before it is both durable and committed.

use bytes::{Bytes, BytesMut};
use parking_lot::RwLock;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use streamhouse_protocol::batch::{self, BatchHeader};
use tokio::sync::{mpsc, oneshot, watch};
use uuid::Uuid;

use crate::cache::BlockCache;
use crate::metadata::{
    Commit, MetadataStore, SegmentRecord, SqliteMetadata, TopicConfigs, TopicRecord,
};
use crate::object::ObjectSegments;
use crate::producer::{ProducerEntry, SequenceCheck};
use crate::segment::{self, ActiveSegment, BlockMeta};
use crate::StorageError;

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
    /// How often retention.ms / retention.bytes are applied (Kafka's log.retention.check.interval.ms).
    pub retention_check_interval: Duration,
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
            retention_check_interval: Duration::from_secs(300),
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
}

impl Storage {
    /// Opens the data directory, recovers, and starts the writer task.
    pub async fn open(config: StorageConfig) -> Result<Arc<Storage>, StorageError> {
        let dir = config.data_dir.clone();
        let sync = config.sync_metadata;
        let meta: Arc<dyn MetadataStore> = tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(dir.join("segments"))?;
            Ok::<_, StorageError>(Arc::new(SqliteMetadata::open(
                &dir.join("metadata.db"),
                sync,
            )?))
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
        let objects = match &config.object_store {
            Some(url) => Some(Arc::new(ObjectSegments::open(url)?)),
            None => None,
        };
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
        });
        let st = storage.clone();
        let mut writer = tokio::task::spawn_blocking(move || st.recover())
            .await
            .map_err(|_| StorageError::ShuttingDown)??;
        if let Some(objects) = &storage.objects {
            // Ids are never reused, not even those of orphaned uploads; then orphans are removed.
            let known: std::collections::HashSet<u64> =
                storage.meta.load()?.segments.iter().map(|s| s.id).collect();
            writer.next_segment_id = writer.next_segment_id.max(objects.max_id().await? + 1);
            let removed = objects.collect_garbage(&known).await?;
            tracing::info!(removed, "object store checked for uncommitted uploads");
        }
        tokio::spawn(writer.run(rx));
        let weak = Arc::downgrade(&storage);
        let every = storage.config.retention_check_interval;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(s) = weak.upgrade() else { break };
                if let Err(e) = s.enforce_retention(now_ms()).await {
                    tracing::warn!(error = %e, "retention pass failed");
                }
            }
        });
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
        let mut by_segment: HashMap<u64, Vec<BlockMeta>> = HashMap::new();
        for b in &snap.blocks {
            if let Some(part) = partition(&catalog, b.topic_id, b.partition) {
                part.state.write().blocks.insert(b.base_offset, *b);
                by_segment.entry(b.segment_id).or_default().push(*b);
            }
        }
        let known: HashMap<u64, SegmentRecord> = snap.segments.iter().map(|s| (s.id, *s)).collect();
        let mut max_id = snap.segments.iter().map(|s| s.id).max().unwrap_or(0);
        for entry in std::fs::read_dir(&self.segments_dir)? {
            let path = entry?.path();
            match segment::segment_id_of(&path) {
                Some(id) if known.contains_key(&id) => {}
                other => {
                    tracing::warn!(?path, "removing segment file unknown to the metadata store");
                    max_id = max_id.max(other.unwrap_or(0));
                    std::fs::remove_file(&path)?;
                }
            }
        }
        let mut active = None;
        for s in snap.segments.iter().filter(|s| !s.sealed) {
            let blocks = by_segment.remove(&s.id).unwrap_or_default();
            if active.is_none() && segment::segment_path(&self.segments_dir, s.id).exists() {
                active = Some(ActiveSegment::reopen(
                    &self.segments_dir,
                    s.id,
                    s.created_ms,
                    blocks,
                )?);
            }
        }
        *self.catalog.write() = catalog;
        tracing::info!(
            topics = snap.topics.len(),
            blocks = snap.blocks.len(),
            segments = snap.segments.len(),
            "storage recovered"
        );
        Ok(Writer {
            storage: self.clone(),
            active,
            next_segment_id: max_id + 1,
            producers: snap.producers.into_iter().collect(),
        })
    }

    pub fn config(&self) -> &StorageConfig {
        &self.config
    }

    pub fn topic(&self, name: &str) -> Option<Arc<Topic>> {
        self.catalog.read().by_name.get(name).cloned()
    }

    pub fn topic_by_id(&self, id: Uuid) -> Option<Arc<Topic>> {
        self.catalog.read().by_id.get(&id).cloned()
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
        let meta = self.meta.clone();
        let r = record.clone();
        tokio::task::spawn_blocking(move || meta.create_topic(&r))
            .await
            .map_err(|_| StorageError::ShuttingDown)??;
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
        let meta = self.meta.clone();
        let id = topic.id;
        tokio::task::spawn_blocking(move || meta.add_partitions(id, partitions))
            .await
            .map_err(|_| StorageError::ShuttingDown)??;
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
        let meta = self.meta.clone();
        let (topic_id, index) = (partition.topic_id, partition.index);
        tokio::task::spawn_blocking(move || meta.truncate_head(topic_id, index, before))
            .await
            .map_err(|_| StorageError::ShuttingDown)??;
        let mut st = partition.state.write();
        st.log_start_offset = st.log_start_offset.max(before);
        st.blocks.retain(|_, b| b.last_offset >= before);
        Ok(st.log_start_offset)
    }

    /// Applies retention.ms and retention.bytes (topic overrides, else Kafka's defaults: 7 days, no
    /// size limit) by moving log start offsets forward past whole blocks that are too old or too many.
    pub async fn enforce_retention(&self, now_ms: i64) -> Result<(), StorageError> {
        for topic in self.topics() {
            let ms = topic
                .configs
                .get("retention.ms")
                .and_then(|v| v.parse::<i64>().ok())
                .unwrap_or(604_800_000);
            let bytes = topic
                .configs
                .get("retention.bytes")
                .and_then(|v| v.parse::<i64>().ok())
                .unwrap_or(-1);
            for p in &topic.partitions {
                let cutoff = {
                    let st = p.state.read();
                    let mut cutoff = st.log_start_offset;
                    if ms >= 0 {
                        // Blocks whose newest record is older than the retention time.
                        for b in st.blocks.values() {
                            if b.max_timestamp >= now_ms - ms {
                                break;
                            }
                            cutoff = cutoff.max(b.last_offset + 1);
                        }
                    }
                    if bytes >= 0 {
                        // Kafka's rule: drop the oldest while what remains is still at least retention.bytes.
                        let mut excess =
                            st.blocks.values().map(|b| b.raw_len as i64).sum::<i64>() - bytes;
                        for b in st.blocks.values() {
                            if excess - (b.raw_len as i64) < 0 {
                                break;
                            }
                            excess -= b.raw_len as i64;
                            cutoff = cutoff.max(b.last_offset + 1);
                        }
                    }
                    cutoff.min(st.high_watermark)
                };
                if cutoff > p.log_start_offset() {
                    tracing::info!(topic = %topic.name, partition = p.index, log_start_offset = cutoff, "retention");
                    self.delete_records(p, cutoff).await?;
                }
            }
        }
        Ok(())
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
        let meta = self.meta.clone();
        let (id, c) = (topic.id, configs.clone());
        tokio::task::spawn_blocking(move || meta.set_topic_configs(id, &c))
            .await
            .map_err(|_| StorageError::ShuttingDown)??;
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
        let meta = self.meta.clone();
        let id = topic.id;
        tokio::task::spawn_blocking(move || meta.delete_topic(id))
            .await
            .map_err(|_| StorageError::ShuttingDown)??;
        let mut c = self.catalog.write();
        c.by_name.remove(name);
        c.by_id.remove(&id);
        Ok(id)
    }

    pub async fn allocate_producer_id(&self) -> Result<i64, StorageError> {
        let meta = self.meta.clone();
        tokio::task::spawn_blocking(move || meta.allocate_producer_id())
            .await
            .map_err(|_| StorageError::ShuttingDown)?
    }

    /// Queues batches (of any partitions) for the next flush. Call in the order the batches must be
    /// sequenced; the returned ticket resolves once they are durable and committed, one result per batch.
    pub async fn submit(&self, batches: Vec<AppendBatch>) -> AppendTicket {
        let n = batches.len();
        let (reply, rx) = oneshot::channel();
        let rx = match self.writer.send(AppendRequest { batches, reply }).await {
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
        &self,
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
        'blocks: for meta in partition.blocks_from(offset, max_bytes.max(1)) {
            let raw = self.block(&meta).await?;
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
        Ok(result(concat(parts)))
    }

    /// The first offset whose record timestamp is >= `timestamp`, with that timestamp (ListOffsets).
    pub async fn offset_for_timestamp(
        &self,
        partition: &Partition,
        timestamp: i64,
    ) -> Result<Option<(i64, i64)>, StorageError> {
        for meta in partition
            .all_blocks()
            .into_iter()
            .filter(|b| b.max_timestamp >= timestamp)
        {
            let raw = self.block(&meta).await?;
            for (pos, h) in batch::batches(&raw) {
                if h.max_timestamp < timestamp {
                    continue;
                }
                let found = records_with_timestamps(&raw.slice(pos..pos + h.total_size()))
                    .into_iter()
                    .find(|(_, ts)| *ts >= timestamp);
                return Ok(Some(found.unwrap_or((h.base_offset, h.max_timestamp))));
            }
        }
        Ok(None)
    }

    /// The offset and timestamp of the record with the largest timestamp (ListOffsets MAX_TIMESTAMP).
    pub async fn max_timestamp_offset(
        &self,
        partition: &Partition,
    ) -> Result<Option<(i64, i64)>, StorageError> {
        let blocks = partition.all_blocks();
        let Some(best) = blocks
            .iter()
            .max_by_key(|b| (b.max_timestamp, -b.base_offset))
        else {
            return Ok(None);
        };
        let raw = self.block(best).await?;
        let mut found: Option<(i64, i64)> = None;
        for (pos, h) in batch::batches(&raw) {
            for (offset, ts) in records_with_timestamps(&raw.slice(pos..pos + h.total_size())) {
                if found.is_none_or(|(_, t)| ts > t) {
                    found = Some((offset, ts));
                }
            }
        }
        Ok(found)
    }

    /// A block's raw batches, from the cache or the segment file.
    async fn block(&self, meta: &BlockMeta) -> Result<Bytes, StorageError> {
        let m = *meta;
        // Concurrent misses on one block share a single read (the cache's single-flight insert).
        self.cache
            .get_or_load(meta.segment_id, meta.position, async move {
                let bytes = match &self.objects {
                    Some(objects) => objects
                        .read_range(m.segment_id, m.position, m.total_len())
                        .await?
                        .to_vec(),
                    None => {
                        let dir = self.segments_dir.clone();
                        tokio::task::spawn_blocking(move || {
                            segment::read_range(
                                &dir,
                                m.segment_id,
                                m.position,
                                m.total_len() as usize,
                            )
                        })
                        .await
                        .map_err(|_| StorageError::ShuttingDown)??
                    }
                };
                segment::decode_block(&m, &bytes)
            })
            .await
    }

    /// Object-store request counters (PUTs, GETs, bytes read), when segments live in one.
    pub fn object_counters(&self) -> Option<(u64, u64, u64)> {
        use std::sync::atomic::Ordering::Relaxed;
        self.objects.as_ref().map(|o| {
            (
                o.puts.load(Relaxed),
                o.gets.load(Relaxed),
                o.get_bytes.load(Relaxed),
            )
        })
    }

    /// The metadata store, for coordinators that keep their state beside the log's.
    pub fn metadata(&self) -> Arc<dyn MetadataStore> {
        self.meta.clone()
    }

    pub fn cache_weight(&self) -> u64 {
        self.cache.weight()
    }
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

/// (offset, timestamp) of every record in one stored batch. Decodes records (decompressing), so it is
/// only used off the hot path, by ListOffsets.
fn records_with_timestamps(batch: &Bytes) -> Vec<(i64, i64)> {
    let mut buf = batch.clone();
    match kafka_protocol::records::RecordBatchDecoder::decode(&mut buf) {
        Ok(set) => set
            .records
            .iter()
            .map(|r| (r.offset, r.timestamp))
            .collect(),
        Err(_) => Vec::new(),
    }
}

type ProducerKey = (i64, Uuid, i32);

/// Owns the active segment and the producer state; the only task that appends or commits.
struct Writer {
    storage: Arc<Storage>,
    active: Option<ActiveSegment>,
    next_segment_id: u64,
    producers: HashMap<ProducerKey, ProducerEntry>,
}

/// A partition's share of one flush.
struct PartitionBlock {
    partition: Arc<Partition>,
    base_offset: i64,
    next_offset: i64,
    max_timestamp: i64,
    compressible: bool,
    raw: Vec<u8>,
}

impl Writer {
    async fn run(mut self, mut rx: mpsc::Receiver<AppendRequest>) {
        let interval = self.storage.config.flush_interval;
        let max_bytes = self.storage.config.flush_max_bytes;
        while let Some(first) = rx.recv().await {
            let mut pending_bytes = size_of(&first);
            let mut pending = vec![first];
            let deadline = tokio::time::Instant::now() + interval;
            while pending_bytes < max_bytes {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(req)) => {
                        pending_bytes += size_of(&req);
                        pending.push(req);
                    }
                    Ok(None) | Err(_) => break,
                }
            }
            let started = std::time::Instant::now();
            let n = pending.len();
            self.flush(pending).await;
            tracing::debug!(
                requests = n,
                bytes = pending_bytes,
                micros = started.elapsed().as_micros() as u64,
                "flushed"
            );
        }
        tracing::debug!("writer stopped");
    }

    async fn flush(&mut self, requests: Vec<AppendRequest>) {
        let mut results: Vec<Vec<Option<AppendResult>>> = requests
            .iter()
            .map(|r| (0..r.batches.len()).map(|_| None).collect())
            .collect();
        let mut blocks: Vec<PartitionBlock> = Vec::new();
        let mut block_of: HashMap<(Uuid, i32), usize> = HashMap::new();
        let mut undo: HashMap<ProducerKey, Option<ProducerEntry>> = HashMap::new();
        // Appended (request, batch, block) triples, to fill in results once committed.
        let mut staged: Vec<(usize, usize, usize, i64)> = Vec::new();

        for (ri, req) in requests.iter().enumerate() {
            for (bi, b) in req.batches.iter().enumerate() {
                let live = self.storage.topic_by_id(b.topic.id).is_some();
                let Some(partition) = b
                    .topic
                    .partitions
                    .get(b.partition as usize)
                    .filter(|_| live)
                else {
                    results[ri][bi] = Some(Err(StorageError::UnknownTopicOrPartition));
                    continue;
                };
                let key = (b.topic.id, b.partition);
                let slot = *block_of.entry(key).or_insert_with(|| {
                    let hwm = partition.high_watermark();
                    blocks.push(PartitionBlock {
                        partition: partition.clone(),
                        base_offset: hwm,
                        next_offset: hwm,
                        max_timestamp: -1,
                        compressible: true,
                        raw: Vec::new(),
                    });
                    blocks.len() - 1
                });
                let h = &b.header;
                let pkey = (h.producer_id, b.topic.id, b.partition);
                if h.has_producer_id() && h.base_sequence >= 0 {
                    match ProducerEntry::check(self.producers.get(&pkey), h) {
                        Err(e) => {
                            results[ri][bi] = Some(Err(e));
                            continue;
                        }
                        Ok(SequenceCheck::Duplicate { base_offset }) => {
                            let lso = partition.log_start_offset();
                            results[ri][bi] = Some(Ok(AppendOutcome {
                                base_offset,
                                log_start_offset: lso,
                            }));
                            continue;
                        }
                        Ok(SequenceCheck::Append) => {}
                    }
                }
                let blk = &mut blocks[slot];
                let base = blk.next_offset;
                let at = blk.raw.len();
                blk.raw.extend_from_slice(&b.data);
                batch::patch_offsets(&mut blk.raw[at..], base, LEADER_EPOCH);
                blk.next_offset += h.offset_count();
                blk.max_timestamp = blk.max_timestamp.max(h.max_timestamp);
                blk.compressible &= h.compression() == 0;
                if h.has_producer_id() && h.base_sequence >= 0 {
                    undo.entry(pkey)
                        .or_insert_with(|| self.producers.get(&pkey).cloned());
                    self.producers.entry(pkey).or_default().record(h, base);
                }
                staged.push((ri, bi, slot, base));
            }
        }

        blocks.retain(|b| !b.raw.is_empty());
        if !blocks.is_empty() {
            let touched: Vec<_> = undo
                .keys()
                .map(|k| (*k, self.producers.get(k).cloned().unwrap_or_default()))
                .collect();
            match self.write_and_commit(&blocks, touched).await {
                Ok(metas) => {
                    for (blk, meta) in blocks.iter().zip(metas) {
                        let mut st = blk.partition.state.write();
                        st.blocks.insert(meta.base_offset, meta);
                        st.high_watermark = blk.next_offset;
                    }
                    self.storage.commits.send_modify(|c| *c += 1);
                }
                Err(e) => {
                    tracing::error!(error = %e, "flush failed; producers get a retriable error");
                    for (k, v) in undo {
                        match v {
                            Some(v) => self.producers.insert(k, v),
                            None => self.producers.remove(&k),
                        };
                    }
                    for (ri, bi, _, _) in staged.drain(..) {
                        results[ri][bi] =
                            Some(Err(StorageError::Io(std::io::Error::other(e.to_string()))));
                    }
                }
            }
        }
        for (ri, bi, slot, base) in staged {
            let lso = blocks
                .get(slot)
                .map(|b| b.partition.log_start_offset())
                .unwrap_or(0);
            results[ri][bi] = Some(Ok(AppendOutcome {
                base_offset: base,
                log_start_offset: lso,
            }));
        }
        for (req, res) in requests.into_iter().zip(results) {
            let res = res
                .into_iter()
                .map(|r| r.unwrap_or(Err(StorageError::ShuttingDown)))
                .collect();
            let _ = req.reply.send(res);
        }
    }

    /// Rolls the segment if due, appends and fsyncs the blocks, commits them; returns their index rows.
    async fn write_and_commit(
        &mut self,
        blocks: &[PartitionBlock],
        producers: Vec<(ProducerKey, ProducerEntry)>,
    ) -> Result<Vec<BlockMeta>, StorageError> {
        if let Some(objects) = self.storage.objects.clone() {
            return self.put_and_commit(&objects, blocks, producers).await;
        }
        let cfg = &self.storage.config;
        let now = now_ms();
        let due = self.active.as_ref().is_none_or(|a| {
            !a.is_empty() && (a.len() >= cfg.segment_bytes || now - a.created_ms >= cfg.segment_ms)
        });
        let mut commit = Commit::default();
        let mut old = None;
        if due {
            old = self.active.take();
            commit.sealed_segment = old.as_ref().map(|s| s.id);
            commit.new_segment = Some(SegmentRecord {
                id: self.next_segment_id,
                created_ms: now,
                sealed: false,
            });
            self.next_segment_id += 1;
        }
        let mut active = self.active.take();
        let new_segment = commit.new_segment;

        let segment_id = new_segment
            .map(|s| s.id)
            .or(active.as_ref().map(|a| a.id))
            .unwrap_or(0);
        let position = active
            .as_ref()
            .map(|a| a.len())
            .unwrap_or(segment::FILE_HEADER_LEN);
        let EncodedFlush {
            bytes: encoded,
            metas,
            raws,
            high_watermarks,
        } = encode_flush(blocks, segment_id, position);
        commit.high_watermarks = high_watermarks;
        commit.blocks = metas.clone();
        commit.producers = producers;

        let storage = self.storage.clone();
        let (active, result) = tokio::task::spawn_blocking(move || {
            let dir = &storage.segments_dir;
            let run = |active: &mut Option<ActiveSegment>| -> Result<(), StorageError> {
                if let Some(s) = new_segment {
                    if let Some(old) = old {
                        old.seal()?;
                    }
                    *active = Some(ActiveSegment::create(dir, s.id, s.created_ms)?);
                }
                let seg = active.as_mut().ok_or(StorageError::ShuttingDown)?;
                seg.append_durable(&encoded, &commit.blocks)?;
                storage.meta.commit(&commit)
            };
            let r = run(&mut active);
            (active, r)
        })
        .await
        .map_err(|_| StorageError::ShuttingDown)?;
        self.active = active;
        if let Err(e) = result {
            // Whatever was appended is not committed: forget the segment handle so the next flush
            // reopens cleanly from the committed index.
            if let Some(seg) = self.active.take() {
                let committed = self.storage.committed_blocks_of(seg.id);
                let (dir, id, created) =
                    (self.storage.segments_dir.clone(), seg.id, seg.created_ms);
                drop(seg);
                self.active = tokio::task::spawn_blocking(move || {
                    ActiveSegment::reopen(&dir, id, created, committed).ok()
                })
                .await
                .ok()
                .flatten();
            }
            return Err(e);
        }
        for (meta, raw) in metas.iter().zip(raws) {
            self.storage
                .cache
                .insert(meta.segment_id, meta.position, raw);
        }
        Ok(metas)
    }
}

impl Writer {
    /// Object-store flush: the blocks of every partition, with the footer index, as one object; PUT
    /// (retried by the client), then committed. A PUT that succeeds but whose commit fails leaves an
    /// orphan that the next start removes; the producers get an error and retry.
    async fn put_and_commit(
        &mut self,
        objects: &ObjectSegments,
        blocks: &[PartitionBlock],
        producers: Vec<(ProducerKey, ProducerEntry)>,
    ) -> Result<Vec<BlockMeta>, StorageError> {
        let id = self.next_segment_id;
        self.next_segment_id += 1;
        let now = now_ms();
        let mut commit = Commit {
            new_segment: Some(SegmentRecord {
                id,
                created_ms: now,
                sealed: true,
            }),
            producers,
            ..Default::default()
        };
        let EncodedFlush {
            bytes: encoded,
            metas,
            raws,
            high_watermarks,
        } = encode_flush(blocks, id, segment::FILE_HEADER_LEN);
        commit.high_watermarks = high_watermarks;
        commit.blocks = metas.clone();
        objects
            .put(id, segment::encode_object(id, now, &encoded, &metas))
            .await?;
        let meta = self.storage.meta.clone();
        tokio::task::spawn_blocking(move || meta.commit(&commit))
            .await
            .map_err(|_| StorageError::ShuttingDown)??;
        // Objects just written are served from memory.
        for (meta, raw) in metas.iter().zip(raws) {
            self.storage
                .cache
                .insert(meta.segment_id, meta.position, raw);
        }
        Ok(metas)
    }
}

impl Storage {
    fn committed_blocks_of(&self, segment_id: u64) -> Vec<BlockMeta> {
        let c = self.catalog.read();
        c.by_id
            .values()
            .flat_map(|t| t.partitions.iter())
            .flat_map(|p| p.all_blocks())
            .filter(|b| b.segment_id == segment_id)
            .collect()
    }
}

/// A flush's blocks, encoded back to back for one segment from `position` on.
struct EncodedFlush {
    bytes: Vec<u8>,
    metas: Vec<BlockMeta>,
    /// The uncompressed batches of each block, for the cache.
    raws: Vec<Bytes>,
    high_watermarks: Vec<(Uuid, i32, i64)>,
}

fn encode_flush(blocks: &[PartitionBlock], segment_id: u64, mut position: u64) -> EncodedFlush {
    let mut out = EncodedFlush {
        bytes: Vec::new(),
        metas: Vec::with_capacity(blocks.len()),
        raws: Vec::with_capacity(blocks.len()),
        high_watermarks: Vec::with_capacity(blocks.len()),
    };
    for blk in blocks {
        let meta = BlockMeta {
            topic_id: blk.partition.topic_id,
            partition: blk.partition.index,
            base_offset: blk.base_offset,
            last_offset: blk.next_offset - 1,
            max_timestamp: blk.max_timestamp,
            segment_id,
            position,
            stored_len: 0,
            raw_len: 0,
            codec: 0,
            crc: 0,
        };
        let (bytes, meta) = segment::encode_block(meta, &blk.raw, blk.compressible);
        position += bytes.len() as u64;
        out.bytes.extend_from_slice(&bytes);
        out.metas.push(meta);
        out.raws.push(Bytes::copy_from_slice(&blk.raw));
        out.high_watermarks
            .push((meta.topic_id, meta.partition, blk.next_offset));
    }
    out
}

fn size_of(req: &AppendRequest) -> usize {
    req.batches.iter().map(|b| b.data.len()).sum()
}
