//! Idempotent-producer state per (producer id, partition), following Kafka's ProducerStateManager:
//! the last five batches are remembered so a retried batch is acknowledged with its original offset
//! instead of being written twice; a transactional producer's entry also holds the first offset of its
//! transaction still open on the partition (currentTxnFirstOffset), which holds the last stable offset
//! back until the transaction's marker is written.

use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use streamhouse_protocol::batch::BatchHeader;

use crate::StorageError;

/// Kafka keeps metadata for this many recent batches per producer and partition
/// (ProducerStateEntry.NUM_BATCHES_TO_RETAIN), matching max.in.flight.requests.per.connection <= 5.
pub const BATCHES_TO_RETAIN: usize = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecentBatch {
    pub first_seq: i32,
    pub last_seq: i32,
    pub base_offset: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProducerEntry {
    pub epoch: i16,
    pub recent: VecDeque<RecentBatch>,
    /// When this broker last appended a batch of the producer here (wall clock, ms): the entry expires
    /// producer.id.expiration.ms later. Kafka counts from the batch's own max timestamp; the append
    /// time is used here so a producer stamping its records in the future cannot keep state forever.
    pub last_append_ms: i64,
    /// The first offset of this producer's open transaction on the partition (Kafka's
    /// currentTxnFirstOffset): set by its first transactional batch, cleared by the marker.
    pub txn_first_offset: Option<i64>,
}

/// An aborted transaction on one partition (an entry of Kafka's transaction index): the records of
/// `producer_id` from `first_offset` to the ABORT marker at `last_offset` are to be dropped by
/// read_committed consumers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AbortedTxn {
    pub producer_id: i64,
    pub first_offset: i64,
    pub last_offset: i64,
}

/// What to do with a batch from an idempotent producer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SequenceCheck {
    Append,
    /// Already written: acknowledge with the original base offset.
    Duplicate {
        base_offset: i64,
    },
}

impl ProducerEntry {
    /// Checks a batch against this entry (`None` for a producer this partition has not seen).
    /// Mirrors ProducerAppendInfo.checkProducerEpoch / checkSequence and findDuplicateBatch.
    pub fn check(
        entry: Option<&ProducerEntry>,
        h: &BatchHeader,
    ) -> Result<SequenceCheck, StorageError> {
        let Some(entry) = entry else {
            // No state (new producer, or its state is gone): any sequence is accepted.
            return Ok(SequenceCheck::Append);
        };
        if h.producer_epoch < entry.epoch {
            return Err(StorageError::InvalidProducerEpoch);
        }
        if h.producer_epoch == entry.epoch {
            if let Some(d) = entry
                .recent
                .iter()
                .find(|b| b.first_seq == h.base_sequence && b.last_seq == h.last_sequence())
            {
                return Ok(SequenceCheck::Duplicate {
                    base_offset: d.base_offset,
                });
            }
            let last = entry.recent.back().map(|b| b.last_seq).unwrap_or(-1);
            if !in_sequence(last, h.base_sequence) {
                return Err(StorageError::OutOfOrderSequence);
            }
        } else if h.base_sequence != 0 {
            // A bumped epoch must start again at sequence 0.
            return Err(StorageError::OutOfOrderSequence);
        }
        Ok(SequenceCheck::Append)
    }

    /// Checks a transaction marker of `epoch` against this entry: a marker of an older epoch is refused
    /// (Kafka's ProducerAppendInfo.checkProducerEpoch for markers).
    pub fn check_marker(entry: Option<&ProducerEntry>, epoch: i16) -> Result<(), StorageError> {
        match entry {
            Some(e) if epoch < e.epoch => Err(StorageError::InvalidProducerEpoch),
            _ => Ok(()),
        }
    }

    /// Records an appended marker (Kafka's appendEndTxnMarker): the epoch moves to the marker's and the
    /// open transaction ends. Returns the transaction's first offset, if one was open here.
    pub fn record_marker(&mut self, epoch: i16, now_ms: i64) -> Option<i64> {
        self.last_append_ms = now_ms;
        self.bump_epoch(epoch);
        self.txn_first_offset.take()
    }

    fn bump_epoch(&mut self, epoch: i16) {
        if epoch != self.epoch {
            self.epoch = epoch;
            self.recent.clear();
        }
    }

    /// Records an appended batch, appended at `now_ms`. A transactional batch opens the producer's
    /// transaction on the partition if none is open.
    pub fn record(&mut self, h: &BatchHeader, base_offset: i64, now_ms: i64) {
        self.last_append_ms = now_ms;
        self.bump_epoch(h.producer_epoch);
        if h.is_transactional() && self.txn_first_offset.is_none() {
            self.txn_first_offset = Some(base_offset);
        }
        if self.recent.len() == BATCHES_TO_RETAIN {
            self.recent.pop_front();
        }
        self.recent.push_back(RecentBatch {
            first_seq: h.base_sequence,
            last_seq: h.last_sequence(),
            base_offset,
        });
    }
}

fn in_sequence(last_seq: i32, next_seq: i32) -> bool {
    // Sequences wrap from i32::MAX to 0.
    next_seq == last_seq.wrapping_add(1)
        || (last_seq == i32::MAX && next_seq == 0)
        || last_seq == -1 && next_seq == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(epoch: i16, seq: i32, count: i32) -> BatchHeader {
        BatchHeader {
            base_offset: 0,
            batch_length: 0,
            magic: 2,
            crc: 0,
            attributes: 0,
            last_offset_delta: count - 1,
            base_timestamp: 0,
            max_timestamp: 0,
            producer_id: 1,
            producer_epoch: epoch,
            base_sequence: seq,
            record_count: count,
        }
    }

    #[test]
    fn sequences_duplicates_and_gaps() {
        let mut e = ProducerEntry::default();
        assert_eq!(
            ProducerEntry::check(None, &header(0, 5, 1)).unwrap(),
            SequenceCheck::Append
        );
        e.record(&header(0, 0, 3), 100, 0);
        assert_eq!(
            ProducerEntry::check(Some(&e), &header(0, 3, 2)).unwrap(),
            SequenceCheck::Append
        );
        e.record(&header(0, 3, 2), 103, 0);
        assert_eq!(
            ProducerEntry::check(Some(&e), &header(0, 0, 3)).unwrap(),
            SequenceCheck::Duplicate { base_offset: 100 }
        );
        assert!(matches!(
            ProducerEntry::check(Some(&e), &header(0, 9, 1)),
            Err(StorageError::OutOfOrderSequence)
        ));
        assert!(matches!(
            ProducerEntry::check(Some(&e), &header(1, 4, 1)),
            Err(StorageError::OutOfOrderSequence)
        ));
        assert_eq!(
            ProducerEntry::check(Some(&e), &header(1, 0, 1)).unwrap(),
            SequenceCheck::Append
        );
        e.record(&header(1, 0, 1), 105, 0);
        assert!(matches!(
            ProducerEntry::check(Some(&e), &header(0, 5, 1)),
            Err(StorageError::InvalidProducerEpoch)
        ));
    }

    #[test]
    fn a_transaction_opens_at_its_first_batch_and_ends_at_its_marker() {
        let mut e = ProducerEntry::default();
        let mut h = header(0, 0, 2);
        h.attributes = 0x10;
        e.record(&h, 40, 0);
        let mut h2 = header(0, 2, 1);
        h2.attributes = 0x10;
        e.record(&h2, 42, 0);
        assert_eq!(e.txn_first_offset, Some(40));
        assert!(ProducerEntry::check_marker(Some(&e), 0).is_ok());
        assert_eq!(e.record_marker(1, 0), Some(40));
        assert_eq!((e.txn_first_offset, e.epoch), (None, 1));
        assert!(
            e.recent.is_empty(),
            "a new epoch starts its sequences again"
        );
        assert!(matches!(
            ProducerEntry::check_marker(Some(&e), 0),
            Err(StorageError::InvalidProducerEpoch)
        ));
        // A non-transactional batch opens nothing.
        e.record(&header(1, 0, 1), 50, 0);
        assert_eq!(e.txn_first_offset, None);
    }

    #[test]
    fn only_five_batches_are_remembered() {
        let mut e = ProducerEntry::default();
        for i in 0..7 {
            e.record(&header(0, i, 1), i as i64, 0);
        }
        assert_eq!(e.recent.len(), BATCHES_TO_RETAIN);
        assert_eq!(e.recent.front().unwrap().first_seq, 2);
    }
}
