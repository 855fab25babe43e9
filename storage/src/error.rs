//! Storage errors, each with the Kafka error code a client should see.

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("topic '{0}' already exists")]
    TopicExists(String),
    #[error("unknown topic or partition")]
    UnknownTopicOrPartition,
    #[error("offset {offset} is out of range [{log_start}, {high_watermark}]")]
    OffsetOutOfRange {
        offset: i64,
        log_start: i64,
        high_watermark: i64,
    },
    #[error("out of order sequence number")]
    OutOfOrderSequence,
    #[error("producer epoch is older than the current one")]
    InvalidProducerEpoch,
    /// A transactional batch of a producer with no open transaction holding the partition (KIP-890's
    /// verification: a late batch cannot join a transaction that ended).
    #[error("the producer has no ongoing transaction with this partition")]
    InvalidTxnState,
    #[error("corrupt block in segment {segment_id} at {position}: {reason}")]
    CorruptBlock {
        segment_id: u64,
        position: u64,
        reason: &'static str,
    },
    #[error("metadata store: {0}")]
    Metadata(#[from] rusqlite::Error),
    #[error("metadata store (PostgreSQL): {0}")]
    Postgres(#[from] postgres::Error),
    /// The metadata store could not take the call in time (every connection busy).
    #[error("metadata store: {0}")]
    MetadataBusy(String),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The flush holding a batch (or one sequenced before it) could not be made durable or committed.
    #[error("flush failed: {0}")]
    FlushFailed(String),
    #[error("the storage engine is shutting down")]
    ShuttingDown,
    /// Work handed to a blocking thread or a task did not complete (it panicked, or the runtime is
    /// stopping): retriable for the client.
    #[error("{0} did not complete")]
    TaskFailed(&'static str),
    /// Starting would risk other data: a metadata store and an object-store prefix that do not belong
    /// together (see `engine::identity`).
    #[error("refusing to start: {0}")]
    Refused(String),
    /// The log cleaner met a stored batch it cannot read (background work; never sent).
    #[error("log cleaner: {0}")]
    Cleaner(String),
}

impl StorageError {
    /// The one place storage failures become Kafka error codes.
    pub fn kafka_error_code(&self) -> i16 {
        use kafka_protocol::error::ResponseError as E;
        let e = match self {
            StorageError::TopicExists(_) => E::TopicAlreadyExists,
            StorageError::UnknownTopicOrPartition => E::UnknownTopicOrPartition,
            StorageError::OffsetOutOfRange { .. } => E::OffsetOutOfRange,
            StorageError::OutOfOrderSequence => E::OutOfOrderSequenceNumber,
            StorageError::InvalidProducerEpoch => E::InvalidProducerEpoch,
            StorageError::InvalidTxnState => E::InvalidTxnState,
            // Retriable: the client tries again (the broker may have recovered).
            StorageError::CorruptBlock { .. }
            | StorageError::Metadata(_)
            | StorageError::Postgres(_)
            | StorageError::MetadataBusy(_)
            | StorageError::Io(_)
            | StorageError::FlushFailed(_)
            | StorageError::TaskFailed(_) => E::KafkaStorageError,
            // Retry elsewhere or later.
            StorageError::ShuttingDown => E::NotLeaderOrFollower,
            // A start-up error, never sent.
            StorageError::Refused(_) | StorageError::Cleaner(_) => E::UnknownServerError,
        };
        e.code()
    }
}
