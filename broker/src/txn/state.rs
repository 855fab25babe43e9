//! One transactional id's state, as Kafka's TransactionMetadata keeps it, and the rules of its state
//! machine (TransactionState's valid previous states), without I/O: the coordinator persists what a
//! rule returns before it takes effect.
//!
//! Empty -> Ongoing (AddPartitionsToTxn / AddOffsetsToTxn) -> PrepareCommit | PrepareAbort (EndTxn,
//! or the broker aborting a timed-out or fenced transaction) -> CompleteCommit | CompleteAbort (the
//! markers are written and committed offsets applied) -> Ongoing (the next transaction) ... Kafka's
//! PrepareEpochFence (the epoch bump before a fencing abort) is folded into PrepareAbort here: the
//! bumped epoch is persisted with it, which is what a restart needs to resume the abort.
//!
//! transaction.version 2 (KIP-890 part 2, EndTxn v5+): every end bumps the epoch, and the markers
//! carry the bumped epoch, so a late batch of the ended transaction is refused by its partition
//! (older epoch) instead of joining the next one. When the epoch is exhausted the markers carry the
//! last epoch and the producer continues under a new producer id at epoch 0 (Kafka's
//! nextProducerId); the id and epoch before the bump are kept to recognise a retried EndTxn.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use uuid::Uuid;

use crate::error;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnState {
    Empty,
    Ongoing,
    PrepareCommit,
    PrepareAbort,
    CompleteCommit,
    CompleteAbort,
    PrepareEpochFence,
    Dead,
}

impl TxnState {
    /// Kafka's name (DescribeTransactions, ListTransactions' state filter, kafka-transactions).
    pub fn name(self) -> &'static str {
        match self {
            TxnState::Empty => "Empty",
            TxnState::Ongoing => "Ongoing",
            TxnState::PrepareCommit => "PrepareCommit",
            TxnState::PrepareAbort => "PrepareAbort",
            TxnState::CompleteCommit => "CompleteCommit",
            TxnState::CompleteAbort => "CompleteAbort",
            TxnState::PrepareEpochFence => "PrepareEpochFence",
            TxnState::Dead => "Dead",
        }
    }

    /// Markers still to be written.
    pub fn is_preparing(self) -> bool {
        matches!(
            self,
            TxnState::PrepareCommit | TxnState::PrepareAbort | TxnState::PrepareEpochFence
        )
    }
}

/// A partition of a transaction: by topic id (what the writer asks about) and name (what the tools
/// show).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TxnPartition {
    pub topic: String,
    pub partition: i32,
    pub topic_id: Uuid,
}

/// An offset committed inside a transaction (TxnOffsetCommit), visible to the group only once the
/// transaction commits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingOffset {
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnMeta {
    pub producer_id: i64,
    pub epoch: i16,
    /// transaction.timeout.ms as the producer asked (capped by transaction.max.timeout.ms).
    pub timeout_ms: i32,
    pub state: TxnState,
    pub partitions: BTreeSet<TxnPartition>,
    /// Groups added with AddOffsetsToTxn.
    pub groups: BTreeSet<String>,
    /// Per group, per "topic" then partition, the offsets committed in the transaction.
    pub offsets: BTreeMap<String, BTreeMap<String, BTreeMap<i32, PendingOffset>>>,
    /// When the current (or, once complete, the last) transaction started; -1 before the first.
    pub start_ms: i64,
    pub update_ms: i64,
    /// The producer id and epoch the transaction continues with once complete, when the epoch is
    /// exhausted by a transaction.version 2 end (Kafka's nextProducerId).
    #[serde(default)]
    pub next_producer: Option<(i64, i16)>,
    /// The producer id and epoch before the last transaction.version 2 end bumped them (Kafka's
    /// lastProducerId / lastProducerEpoch): a retried EndTxn still carries them.
    #[serde(default)]
    pub prev_producer: Option<(i64, i16)>,
}

/// Kafka stops bumping at Short.MaxValue - 1 and hands out a new producer id instead
/// (TransactionMetadata.isEpochExhausted), so a bumped epoch never overflows.
pub fn epoch_exhausted(epoch: i16) -> bool {
    epoch >= i16::MAX - 1
}

impl TxnMeta {
    pub fn new(producer_id: i64, timeout_ms: i32, now_ms: i64) -> TxnMeta {
        TxnMeta {
            producer_id,
            epoch: 0,
            timeout_ms,
            state: TxnState::Empty,
            partitions: BTreeSet::new(),
            groups: BTreeSet::new(),
            offsets: BTreeMap::new(),
            start_ms: -1,
            update_ms: now_ms,
            next_producer: None,
            prev_producer: None,
        }
    }

    /// The producer id and epoch the client continues with (EndTxn v5's answer).
    pub fn continues_as(&self) -> (i64, i16) {
        self.next_producer.unwrap_or((self.producer_id, self.epoch))
    }

    /// The producer's id and epoch against this transaction's (Kafka: INVALID_PRODUCER_ID_MAPPING
    /// for another id, PRODUCER_FENCED for another epoch).
    pub fn check_producer(&self, producer_id: i64, epoch: i16) -> Result<(), i16> {
        if producer_id != self.producer_id {
            Err(error::INVALID_PRODUCER_ID_MAPPING)
        } else if epoch != self.epoch {
            Err(error::PRODUCER_FENCED)
        } else {
            Ok(())
        }
    }

    /// AddPartitionsToTxn / AddOffsetsToTxn: the state after adding, or `None` when nothing changes.
    /// Kafka: while markers are being written the client must wait (CONCURRENT_TRANSACTIONS); from
    /// Empty or a completed transaction a new one begins.
    pub fn add(
        &self,
        partitions: &[TxnPartition],
        group: Option<&str>,
        now_ms: i64,
    ) -> Result<Option<TxnMeta>, i16> {
        match self.state {
            s if s.is_preparing() => return Err(error::CONCURRENT_TRANSACTIONS),
            TxnState::Dead => return Err(error::INVALID_TXN_STATE),
            _ => {}
        }
        let ongoing = self.state == TxnState::Ongoing;
        let known = partitions.iter().all(|p| self.partitions.contains(p))
            && group.is_none_or(|g| self.groups.contains(g));
        if ongoing && known {
            return Ok(None);
        }
        let mut next = self.clone();
        if !ongoing {
            next.state = TxnState::Ongoing;
            next.start_ms = now_ms;
            next.partitions.clear();
            next.groups.clear();
            next.offsets.clear();
        }
        next.partitions.extend(partitions.iter().cloned());
        if let Some(g) = group {
            next.groups.insert(g.to_string());
        }
        next.update_ms = now_ms;
        Ok(Some(next))
    }

    /// EndTxn: `Ok(Some)` the Prepare state to write (markers follow), `Ok(None)` a retry of an
    /// end already complete (answered NONE), or the error Kafka answers. `bump` is set for
    /// transaction.version 2 (EndTxn v5+): the epoch is bumped, and `Some(id)` is the new producer
    /// id to continue with when the epoch is exhausted; an abort with no transaction in progress is
    /// then accepted too (it only bumps the epoch).
    pub fn end(
        &self,
        commit: bool,
        bump: Option<Option<i64>>,
        now_ms: i64,
    ) -> Result<Option<TxnMeta>, i16> {
        let prepare = || {
            let mut next = self.clone();
            next.state = if commit {
                TxnState::PrepareCommit
            } else {
                TxnState::PrepareAbort
            };
            if let Some(new_id) = bump {
                next.prev_producer = Some((self.producer_id, self.epoch));
                next.epoch = self.epoch.saturating_add(1);
                next.next_producer = new_id.map(|id| (id, 0));
            }
            next.update_ms = now_ms;
            next
        };
        let idle = matches!(
            self.state,
            TxnState::Empty | TxnState::CompleteCommit | TxnState::CompleteAbort
        );
        match (self.state, commit) {
            (TxnState::Ongoing, _) => Ok(Some(prepare())),
            (_, false) if idle && bump.is_some() => Ok(Some(prepare())),
            (TxnState::CompleteCommit, true) | (TxnState::CompleteAbort, false) => Ok(None),
            // The same end again while its markers are written: retry later.
            (TxnState::PrepareCommit, true) | (TxnState::PrepareAbort, false) => {
                Err(error::CONCURRENT_TRANSACTIONS)
            }
            _ => Err(error::INVALID_TXN_STATE),
        }
    }

    /// The broker aborts an ongoing transaction whose producer is fenced (a new InitProducerId) or
    /// whose timeout passed: the epoch is bumped (Kafka's prepareFenceProducerEpoch) so the old
    /// producer's requests are refused, and the markers carry the new epoch.
    pub fn fence_and_abort(&self, now_ms: i64) -> TxnMeta {
        let mut next = self.clone();
        if !epoch_exhausted(next.epoch) {
            next.epoch += 1;
        }
        next.state = TxnState::PrepareAbort;
        next.update_ms = now_ms;
        next
    }

    /// Markers written (and a commit's offsets applied): the transaction is complete.
    pub fn completed(&self, now_ms: i64) -> TxnMeta {
        let mut next = self.clone();
        next.state = if self.state == TxnState::PrepareCommit {
            TxnState::CompleteCommit
        } else {
            TxnState::CompleteAbort
        };
        next.partitions.clear();
        next.groups.clear();
        next.offsets.clear();
        // The start time stays until the next transaction begins (DescribeTransactions shows it, as
        // Kafka's txnStartTimestamp).
        next.update_ms = now_ms;
        if let Some((id, epoch)) = next.next_producer.take() {
            next.producer_id = id;
            next.epoch = epoch;
        }
        next
    }

    /// InitProducerId on an idle transactional id: the epoch bumped (or `new_producer_id` at epoch 0
    /// once the epoch is exhausted), the timeout the producer asked for.
    pub fn reinit(&self, timeout_ms: i32, new_producer_id: Option<i64>, now_ms: i64) -> TxnMeta {
        let mut next = self.clone();
        match new_producer_id {
            Some(id) => {
                next.producer_id = id;
                next.epoch = 0;
            }
            None => next.epoch += 1,
        }
        next.timeout_ms = timeout_ms;
        next.prev_producer = None;
        next.state = TxnState::Empty;
        next.partitions.clear();
        next.groups.clear();
        next.offsets.clear();
        next.start_ms = -1;
        next.update_ms = now_ms;
        next
    }

    /// Whether the ongoing transaction has run past its timeout.
    pub fn timed_out(&self, now_ms: i64) -> bool {
        self.state == TxnState::Ongoing && now_ms - self.start_ms > self.timeout_ms as i64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(topic: &str, partition: i32) -> TxnPartition {
        TxnPartition {
            topic: topic.into(),
            partition,
            topic_id: Uuid::nil(),
        }
    }

    #[test]
    fn a_transaction_goes_through_kafkas_states() {
        let m = TxnMeta::new(1000, 60_000, 0);
        assert_eq!(
            m.end(true, None, 1),
            Err(error::INVALID_TXN_STATE),
            "nothing to end"
        );
        let m = m.add(&[p("t", 0)], None, 5).unwrap().unwrap();
        assert_eq!((m.state, m.start_ms), (TxnState::Ongoing, 5));
        assert_eq!(m.add(&[p("t", 0)], None, 6).unwrap(), None, "already in");
        let m = m.add(&[p("t", 1)], Some("g"), 7).unwrap().unwrap();
        assert_eq!((m.partitions.len(), m.start_ms), (2, 5));
        let prepared = m.end(true, None, 8).unwrap().unwrap();
        assert_eq!(prepared.state, TxnState::PrepareCommit);
        assert_eq!(
            prepared.add(&[p("t", 2)], None, 9),
            Err(error::CONCURRENT_TRANSACTIONS)
        );
        assert_eq!(
            prepared.end(true, None, 9),
            Err(error::CONCURRENT_TRANSACTIONS)
        );
        assert_eq!(prepared.end(false, None, 9), Err(error::INVALID_TXN_STATE));
        let done = prepared.completed(10);
        assert_eq!(done.state, TxnState::CompleteCommit);
        assert!(done.partitions.is_empty() && done.groups.is_empty());
        assert_eq!(
            done.end(true, None, 11),
            Ok(None),
            "a retried EndTxn is answered NONE"
        );
        assert_eq!(done.end(false, None, 11), Err(error::INVALID_TXN_STATE));
        // The next transaction starts afresh.
        let next = done.add(&[p("u", 0)], None, 12).unwrap().unwrap();
        assert_eq!(next.partitions.len(), 1);
        assert_eq!(next.start_ms, 12);
    }

    #[test]
    fn a_version_2_end_bumps_the_epoch_and_may_move_to_a_new_producer_id() {
        let m = TxnMeta::new(1000, 100, 0)
            .add(&[p("t", 0)], None, 0)
            .unwrap()
            .unwrap();
        let prepared = m.end(true, Some(None), 1).unwrap().unwrap();
        assert_eq!(
            (prepared.producer_id, prepared.epoch),
            (1000, 1),
            "markers carry the bump"
        );
        assert_eq!(prepared.prev_producer, Some((1000, 0)));
        let done = prepared.completed(2);
        assert_eq!(done.continues_as(), (1000, 1));
        // An abort with nothing in progress only bumps the epoch (v2); v1 refuses it.
        assert_eq!(done.end(false, None, 3), Err(error::INVALID_TXN_STATE));
        let bumped = done.end(false, Some(None), 3).unwrap().unwrap();
        assert!(bumped.partitions.is_empty());
        assert_eq!(bumped.completed(4).continues_as(), (1000, 2));
        // Exhausted: the markers carry the last epoch, the producer goes on as a new id.
        let mut old = m.clone();
        old.epoch = i16::MAX - 1;
        let prepared = old.end(false, Some(Some(2000)), 5).unwrap().unwrap();
        assert_eq!((prepared.producer_id, prepared.epoch), (1000, i16::MAX));
        assert_eq!(prepared.continues_as(), (2000, 0));
        let done = prepared.completed(6);
        assert_eq!(
            (done.producer_id, done.epoch, done.next_producer),
            (2000, 0, None)
        );
    }

    #[test]
    fn fencing_bumps_the_epoch_and_producers_are_checked() {
        let m = TxnMeta::new(1000, 100, 0)
            .add(&[p("t", 0)], None, 0)
            .unwrap()
            .unwrap();
        assert!(!m.timed_out(100) && m.timed_out(101));
        let f = m.fence_and_abort(101);
        assert_eq!((f.state, f.epoch), (TxnState::PrepareAbort, 1));
        assert_eq!(f.check_producer(1000, 0), Err(error::PRODUCER_FENCED));
        assert_eq!(
            f.check_producer(999, 1),
            Err(error::INVALID_PRODUCER_ID_MAPPING)
        );
        assert_eq!(f.check_producer(1000, 1), Ok(()));
        let r = f.completed(102).reinit(500, None, 103);
        assert_eq!((r.epoch, r.timeout_ms, r.state), (2, 500, TxnState::Empty));
        let mut old = r.clone();
        old.epoch = i16::MAX - 1;
        assert!(epoch_exhausted(old.epoch));
        let fresh = old.reinit(500, Some(2000), 104);
        assert_eq!((fresh.producer_id, fresh.epoch), (2000, 0));
    }
}
