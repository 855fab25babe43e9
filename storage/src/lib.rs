//! StreamHouse storage: the segment format, the metadata store, the block cache and the write path.
//!
//! Produced batches are gathered for a short flush window, written together as one block per partition
//! into the active segment (appended and fsync'd), their offsets committed in the metadata store in one
//! transaction, and only then acknowledged. The flush unit (a set of blocks plus their index rows) does
//! not depend on the backend, so the S3 backend can turn each flush into one object.

pub mod cache;
pub mod engine;
pub mod error;
pub mod metadata;
pub mod object;
pub mod producer;
pub mod segment;

pub use engine::{
    AppendBatch, AppendOutcome, AppendResult, AppendTicket, Isolation, Partition, ReadResult,
    Storage, StorageConfig, Topic, TransactionVerifier,
};
pub use error::StorageError;
pub use metadata::{
    GroupWrite, MetadataLocation, MetadataStore, OffsetRecord, PostgresMetadata, SqliteMetadata,
    TopicConfigs,
};
