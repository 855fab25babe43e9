//! The storage engine's settings, with their defaults in one place (`StorageConfig::new`); the broker
//! fills them from its own settings table.

use std::path::PathBuf;

use crate::metadata::MetadataLocation;
use std::sync::Arc;
use std::time::Duration;

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
    /// The metadata store: SQLite in the data folder (the default), or a PostgreSQL database.
    pub metadata: MetadataLocation,
    /// Every metadata commit durable before it returns (SQLite synchronous=FULL; PostgreSQL
    /// synchronous_commit on).
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
    /// Most bytes a stored compressed batch is inflated to where the engine reads records (the log
    /// cleaner); the broker's message.max.decompressed.bytes.
    pub max_decompressed_bytes: u64,
    /// Key compaction of compacted topics runs (Kafka's log.cleaner.enable)...
    pub log_cleaner_enable: bool,
    /// ...a pass this often (log.cleaner.backoff.ms).
    pub cleaner_backoff: Duration,
    /// Memory the cleaner's offset map may take (log.cleaner.dedupe.buffer.size): a table of 25-byte
    /// buckets, at most 7/8 full, in the largest power of two that fits (128 MiB: 3.67 million
    /// distinct keys per pass); the rest waits for the next pass.
    pub dedupe_buffer_bytes: u64,
    /// Defaults of the topic settings min.cleanable.dirty.ratio, min.compaction.lag.ms,
    /// max.compaction.lag.ms and delete.retention.ms (log.cleaner.min.cleanable.ratio, ...).
    pub min_cleanable_ratio: f64,
    pub min_compaction_lag_ms: i64,
    pub max_compaction_lag_ms: i64,
    pub delete_retention_ms: i64,
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
            metadata: MetadataLocation::Sqlite,
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
            max_decompressed_bytes: 64 << 20,
            log_cleaner_enable: true,
            cleaner_backoff: Duration::from_secs(15),
            dedupe_buffer_bytes: 128 << 20,
            min_cleanable_ratio: 0.5,
            min_compaction_lag_ms: 0,
            max_compaction_lag_ms: i64::MAX,
            delete_retention_ms: 86_400_000,
        }
    }
}
