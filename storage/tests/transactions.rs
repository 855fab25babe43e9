//! Transactions in the storage engine: a transactional batch opens its producer's transaction on a
//! partition only while the coordinator (here a stand-in verifier) says the transaction holds it; the
//! last stable offset stays at the oldest open transaction's first offset; markers end transactions,
//! an ABORT one adds to the partition's aborted list; read_committed stops at the last stable offset
//! and reports the aborted transactions it returns; all of it survives a restart.

use bytes::Bytes;
use parking_lot::Mutex;
use std::collections::HashSet;
use std::sync::Arc;
use streamhouse_protocol::batch::BatchHeader;
use streamhouse_protocol::control::marker_batch;
use streamhouse_storage::producer::AbortedTxn;
use streamhouse_storage::{AppendBatch, Isolation, Storage, StorageError, TransactionVerifier};
use streamhouse_test_support::batch::{BatchBuilder, Record};
use uuid::Uuid;

mod common;
use common::{append_batch, values, TestStore};

on_each_store!(
    transactions_hold_the_last_stable_offset_and_survive_restart,
    key_compaction_drops_aborted_transactions_and_markers_left_without_data,
);

/// The coordinator's answer: which (producer, epoch, partition) are in an ongoing transaction.
#[derive(Default)]
struct Holds(Mutex<HashSet<(i64, i16, i32)>>);

impl TransactionVerifier for Holds {
    fn verify(
        &self,
        producer_id: i64,
        epoch: i16,
        _topic: Uuid,
        partition: i32,
    ) -> Result<(), StorageError> {
        if self.0.lock().contains(&(producer_id, epoch, partition)) {
            Ok(())
        } else {
            Err(StorageError::InvalidTxnState)
        }
    }
}

fn txn_batch(pid: i64, epoch: i16, seq: i32, values: &[&str]) -> Bytes {
    BatchBuilder::new()
        .transactional(true)
        .producer(pid, epoch, seq)
        .records(
            values
                .iter()
                .map(|v| Record::at(10_000).value(v.to_string())),
        )
        .build()
}

fn plain_batch(values: &[&str]) -> Bytes {
    BatchBuilder::new()
        .records(
            values
                .iter()
                .map(|v| Record::at(10_000).value(v.to_string())),
        )
        .build()
}

fn marker(s: &Storage, pid: i64, epoch: i16, commit: bool) -> AppendBatch {
    let data = Bytes::from(marker_batch(pid, epoch, commit, 0, 10_000));
    AppendBatch {
        topic: s.topic("t").unwrap(),
        partition: 0,
        header: BatchHeader::parse(&data).unwrap(),
        data,
    }
}

async fn append_one(s: &Storage, b: AppendBatch) -> Result<i64, StorageError> {
    s.append(vec![b])
        .await
        .pop()
        .unwrap()
        .map(|o| o.base_offset)
}

async fn transactions_hold_the_last_stable_offset_and_survive_restart(meta: TestStore) {
    let dir = tempfile::tempdir().unwrap();
    let config = meta.config(dir.path());
    let holds = Arc::new(Holds::default());
    {
        let s = Storage::open(config.clone()).await.unwrap();
        s.set_transaction_verifier(holds.clone());
        s.create_topic("t", 1, Default::default()).await.unwrap();
        let p = s.topic("t").unwrap().partitions[0].clone();

        // Not added to a transaction: refused, nothing written.
        let r = append_one(&s, append_batch(&s, "t", txn_batch(7, 0, 0, &["x"]))).await;
        assert!(matches!(r, Err(StorageError::InvalidTxnState)), "{r:?}");
        assert_eq!(p.high_watermark(), 0);

        holds.0.lock().insert((7, 0, 0));
        holds.0.lock().insert((8, 0, 0));
        // Producer 7 opens at 0, 8 at 2; a plain batch after them.
        assert_eq!(
            append_one(&s, append_batch(&s, "t", txn_batch(7, 0, 0, &["a0", "a1"])))
                .await
                .unwrap(),
            0
        );
        assert_eq!(
            append_one(&s, append_batch(&s, "t", txn_batch(8, 0, 0, &["b0"])))
                .await
                .unwrap(),
            2
        );
        assert_eq!(
            append_one(&s, append_batch(&s, "t", plain_batch(&["p0"])))
                .await
                .unwrap(),
            3
        );
        assert_eq!(p.offsets(), (4, 0, 0), "(hwm, lso, log start)");
        let r = s
            .read(&p, 0, 1 << 20, true, Isolation::ReadCommitted)
            .await
            .unwrap();
        assert!(r.records.is_empty(), "nothing is stable yet");
        assert_eq!(r.last_stable_offset, 0);
        let r = s
            .read(&p, 0, 1 << 20, true, Isolation::ReadUncommitted)
            .await
            .unwrap();
        assert_eq!(values(&r.records).len(), 4);

        // 7 aborts (marker at 4): the last stable offset moves to 8's first offset.
        holds.0.lock().remove(&(7, 0, 0));
        assert_eq!(append_one(&s, marker(&s, 7, 0, false)).await.unwrap(), 4);
        assert_eq!(p.last_stable_offset(), 2);
        // A late batch of 7's ended transaction cannot open a new one.
        let r = append_one(&s, append_batch(&s, "t", txn_batch(7, 0, 2, &["late"]))).await;
        assert!(matches!(r, Err(StorageError::InvalidTxnState)), "{r:?}");
        let r = s
            .read(&p, 0, 1 << 20, true, Isolation::ReadCommitted)
            .await
            .unwrap();
        assert_eq!(
            values(&r.records),
            vec![(0, "a0".to_string()), (1, "a1".to_string())]
        );
        let aborted = AbortedTxn {
            producer_id: 7,
            first_offset: 0,
            last_offset: 4,
        };
        assert_eq!(r.aborted, vec![aborted]);

        // 8 commits (marker at 5): everything is stable.
        holds.0.lock().remove(&(8, 0, 0));
        assert_eq!(append_one(&s, marker(&s, 8, 0, true)).await.unwrap(), 5);
        assert_eq!(p.offsets(), (6, 6, 0));
        // A marker of an older epoch than the producer's is refused.
        assert_eq!(append_one(&s, marker(&s, 8, 1, false)).await.unwrap(), 6);
        let r = append_one(&s, marker(&s, 8, 0, false)).await;
        assert!(
            matches!(r, Err(StorageError::InvalidProducerEpoch)),
            "{r:?}"
        );

        // 8 opens another (epoch 1) and the broker stops with it open.
        holds.0.lock().insert((8, 1, 0));
        assert_eq!(
            append_one(&s, append_batch(&s, "t", txn_batch(8, 1, 0, &["c0"])))
                .await
                .unwrap(),
            7
        );
        assert_eq!(p.last_stable_offset(), 7);
    }
    let s = Storage::open(config).await.unwrap();
    s.set_transaction_verifier(holds.clone());
    let p = s.topic("t").unwrap().partitions[0].clone();
    assert_eq!(
        p.offsets(),
        (8, 7, 0),
        "the open transaction holds the LSO after a restart"
    );
    let r = s
        .read(&p, 0, 1 << 20, true, Isolation::ReadCommitted)
        .await
        .unwrap();
    assert_eq!(r.aborted.len(), 1, "the aborted list is restored");
    assert_eq!(
        values(&r.records).len(),
        7,
        "offsets 0-6 (markers included)"
    );
    // Still open: the next batch of the transaction is accepted without asking again.
    holds.0.lock().clear();
    assert_eq!(
        append_one(&s, append_batch(&s, "t", txn_batch(8, 1, 1, &["c1"])))
            .await
            .unwrap(),
        8
    );
    assert_eq!(append_one(&s, marker(&s, 8, 1, false)).await.unwrap(), 9);
    assert_eq!(p.offsets(), (10, 10, 0));
    assert_eq!(p.aborted_between(7, 10).len(), 1);
    // Retention and DeleteRecords drop aborted entries that end before the log start.
    s.delete_records(&p, 5).await.unwrap();
    assert_eq!(
        p.aborted_between(0, 10).len(),
        1,
        "only 8's second one is left"
    );
}

/// One keyed record per (key, value), transactional or not.
fn keyed_batch(pid: i64, epoch: i16, seq: i32, transactional: bool, kv: &[(&str, &str)]) -> Bytes {
    BatchBuilder::new()
        .transactional(transactional)
        .producer(pid, epoch, seq)
        .records(
            kv.iter()
                .map(|(k, v)| Record::at(10_000).key(k.to_string()).value(v.to_string())),
        )
        .build()
}

/// Every batch's (base offset, is control) from `offset` to the high watermark, uncommitted.
async fn batches(s: &Arc<Storage>, p: &streamhouse_storage::Partition) -> Vec<(i64, bool)> {
    let r = s
        .read(p, 0, 1 << 20, true, Isolation::ReadUncommitted)
        .await
        .unwrap();
    streamhouse_protocol::batch::batches(&r.records)
        .map(|(_, h)| (h.base_offset, h.is_control()))
        .collect()
}

/// Kafka's cleaner with transactions: an aborted transaction's batches go; its marker, left without
/// data, stays until its delete horizon; a committed transaction's data and marker stay.
async fn key_compaction_drops_aborted_transactions_and_markers_left_without_data(meta: TestStore) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = meta.config(dir.path());
    config.log_cleaner_enable = false;
    let holds = Arc::new(Holds::default());
    let s = Storage::open(config).await.unwrap();
    s.set_transaction_verifier(holds.clone());
    let configs = [
        ("cleanup.policy", "compact"),
        ("min.cleanable.dirty.ratio", "0.01"),
        ("segment.ms", "1"),
        ("delete.retention.ms", "1000"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    s.create_topic("t", 1, configs).await.unwrap();
    let p = s.topic("t").unwrap().partitions[0].clone();
    holds.0.lock().insert((7, 0, 0));
    holds.0.lock().insert((8, 0, 0));
    let b = keyed_batch(7, 0, 0, true, &[("a", "aborted"), ("b", "aborted")]);
    assert_eq!(append_one(&s, append_batch(&s, "t", b)).await.unwrap(), 0);
    assert_eq!(append_one(&s, marker(&s, 7, 0, false)).await.unwrap(), 2);
    let b = keyed_batch(8, 0, 0, true, &[("a", "committed")]);
    assert_eq!(append_one(&s, append_batch(&s, "t", b)).await.unwrap(), 3);
    assert_eq!(append_one(&s, marker(&s, 8, 0, true)).await.unwrap(), 4);
    let b = keyed_batch(-1, -1, -1, false, &[("c", "c0")]);
    assert_eq!(append_one(&s, append_batch(&s, "t", b)).await.unwrap(), 5);
    assert_eq!(p.last_stable_offset(), 6);

    let now = streamhouse_storage::engine::now_ms();
    assert_eq!(s.clean(now).await.unwrap().partitions, 1);
    assert_eq!(
        batches(&s, &p).await,
        vec![(2, true), (3, false), (4, true), (5, false)],
        "the aborted batch goes, both markers stay"
    );
    // After the horizon (and with new dirty data), the ABORT marker goes; the COMMIT one, whose
    // transaction kept its data, stays.
    let b = keyed_batch(-1, -1, -1, false, &[("d", "d0")]);
    assert_eq!(append_one(&s, append_batch(&s, "t", b)).await.unwrap(), 6);
    assert_eq!(s.clean(now + 1_001).await.unwrap().partitions, 1);
    assert_eq!(
        batches(&s, &p).await,
        vec![(3, false), (4, true), (5, false), (6, false)]
    );
    let r = s
        .read(&p, 0, 1 << 20, true, Isolation::ReadCommitted)
        .await
        .unwrap();
    let v: Vec<String> = values(&r.records).into_iter().map(|(_, v)| v).collect();
    assert!(v.contains(&"committed".to_string()), "{v:?}");
    assert!(!v.contains(&"aborted".to_string()), "{v:?}");
}
