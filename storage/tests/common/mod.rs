//! Record batches for the storage tests (made by streamhouse-test-support's builder), appended and
//! read back, and [`on_each_store!`]: every test runs on each metadata store.
#![allow(dead_code)]

#[allow(unused_imports)]
pub use streamhouse_storage::metadata::testing::{off_runtime, TestStore};

/// Runs each async test body `async fn name(meta: TestStore)` once per metadata store, as the tests
/// `name::sqlite` and `name::postgres`, each with a fresh store (PostgreSQL: a database of its own on
/// the server STREAMHOUSE_TEST_POSTGRES names; without it the postgres variants fail, saying how to
/// start one).
#[macro_export]
macro_rules! on_each_store {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test]
            async fn sqlite() {
                super::$name($crate::common::TestStore::sqlite()).await
            }
            #[tokio::test]
            async fn postgres() {
                super::$name($crate::common::TestStore::postgres()).await
            }
        }
    )*};
}

use bytes::Bytes;
use kafka_protocol::records::Compression;
use streamhouse_protocol::batch::validate_produce_batch;
use streamhouse_storage::{AppendBatch, Storage};
use streamhouse_test_support::batch::{BatchBuilder, Record};

pub fn batch(first_seq: i32, n: usize, producer_id: i64, compression: Compression) -> Bytes {
    batch_at(first_seq, n, producer_id, compression, 10_000)
}

/// `n` records with sequences from `first_seq`, values `v<seq>`, timestamps from `timestamp`.
pub fn batch_at(
    first_seq: i32,
    n: usize,
    producer_id: i64,
    compression: Compression,
    timestamp: i64,
) -> Bytes {
    BatchBuilder::new()
        .compression(compression)
        .producer(producer_id, 0, first_seq)
        .records((0..n).map(|i| {
            let seq = first_seq as i64 + i as i64;
            Record::at(timestamp + seq * 10).value(format!("v{seq}"))
        }))
        .build()
}

pub fn append_batch(storage: &Storage, topic: &str, data: Bytes) -> AppendBatch {
    AppendBatch {
        topic: storage.topic(topic).unwrap(),
        partition: 0,
        header: validate_produce_batch(&data).unwrap(),
        data,
    }
}

pub fn values(records: &Bytes) -> Vec<(i64, String)> {
    let mut b = records.clone();
    kafka_protocol::records::RecordBatchDecoder::decode_all(&mut b)
        .unwrap()
        .iter()
        .flat_map(|s| {
            s.records.iter().map(|r| {
                (
                    r.offset,
                    String::from_utf8_lossy(r.value.as_deref().unwrap_or_default()).into_owned(),
                )
            })
        })
        .collect()
}

pub fn append_to(
    topic: &std::sync::Arc<streamhouse_storage::Topic>,
    partition: i32,
    data: Bytes,
) -> AppendBatch {
    AppendBatch {
        topic: topic.clone(),
        partition,
        header: validate_produce_batch(&data).unwrap(),
        data,
    }
}
