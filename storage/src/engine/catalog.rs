//! The catalog: topics, their partitions, and each partition's state (high watermark, last stable
//! offset, log start offset, committed block index, aborted transactions).
//!
//! This is the only code that changes partition state, through four operations: [`Partition::restore`]
//! (recovery), [`Partition::publish`] (a committed flush), [`Partition::truncate_before`]
//! (DeleteRecords, retention) and [`Partition::swap_blocks`] (compaction). Each runs after the matching
//! metadata transaction committed, so memory never shows what the store could still lose.
//!
//! Locking: a partition's state is behind its own `parking_lot::RwLock`, held for one operation (no
//! I/O, no await); readers copy out what they need (block metadata is `Copy`). The topic maps are behind
//! one `RwLock` held only to look up or swap an `Arc<Topic>`; topics are immutable once shared (a
//! config change or new partitions swap in a new `Topic` that shares the old partitions).

use parking_lot::RwLock;
use std::collections::HashMap;
use std::sync::Arc;
use uuid::Uuid;

use super::index::{self, BlockIndex, ReadPlan};
use crate::metadata::TopicConfigs;
use crate::producer::AbortedTxn;
use crate::segment::BlockMeta;

pub struct Topic {
    pub id: Uuid,
    pub name: String,
    pub configs: TopicConfigs,
    pub created_ms: i64,
    pub partitions: Vec<Arc<Partition>>,
}

impl Topic {
    /// One partition, by index (none for a negative or too large one).
    pub fn partition(&self, index: i32) -> Option<&Arc<Partition>> {
        usize::try_from(index)
            .ok()
            .and_then(|i| self.partitions.get(i))
    }
}

pub struct Partition {
    pub topic_id: Uuid,
    pub index: i32,
    state: RwLock<PartitionState>,
}

#[derive(Default)]
struct PartitionState {
    high_watermark: i64,
    /// The first offset of the oldest transaction still open here, else the high watermark (Kafka's
    /// last stable offset): read_committed consumers read up to it.
    last_stable_offset: i64,
    log_start_offset: i64,
    blocks: BlockIndex,
    /// Aborted transactions ending at or after the log start, in marker (last offset) order.
    aborted: Vec<AbortedTxn>,
}

impl Partition {
    pub(super) fn new(topic_id: Uuid, index: i32) -> Self {
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

    /// (high watermark, log start offset), read together.
    pub fn watermarks(&self) -> (i64, i64) {
        let st = self.state.read();
        (st.high_watermark, st.log_start_offset)
    }

    pub fn last_stable_offset(&self) -> i64 {
        self.state.read().last_stable_offset
    }

    /// (high watermark, last stable offset, log start offset), read together.
    pub fn offsets(&self) -> (i64, i64, i64) {
        let st = self.state.read();
        (
            st.high_watermark,
            st.last_stable_offset,
            st.log_start_offset,
        )
    }

    /// The aborted transactions a read of `[from, to)` must report (Kafka's
    /// collectAbortedTransactions): those ending at or after `from` and starting before `to`.
    pub fn aborted_between(&self, from: i64, to: i64) -> Vec<AbortedTxn> {
        let st = self.state.read();
        // Sorted by last offset: skip those ending before `from`.
        let start = st.aborted.partition_point(|a| a.last_offset < from);
        st.aborted[start..]
            .iter()
            .filter(|a| a.first_offset < to)
            .copied()
            .collect()
    }

    // ---- the four state changes ----------------------------------------------------------------

    /// Recovery: the state the metadata store holds (the last stable offset is the high watermark
    /// until [`restore_open_transaction`](Self::restore_open_transaction) says otherwise).
    pub(super) fn restore(&self, high_watermark: i64, log_start_offset: i64) {
        let mut st = self.state.write();
        st.high_watermark = high_watermark;
        st.last_stable_offset = high_watermark;
        st.log_start_offset = log_start_offset;
    }

    /// Recovery: a transaction open here since `first_offset` holds the last stable offset.
    pub(super) fn restore_open_transaction(&self, first_offset: i64) {
        let mut st = self.state.write();
        st.last_stable_offset = st.last_stable_offset.min(first_offset);
    }

    /// Recovery: one aborted transaction (given in marker order).
    pub(super) fn restore_aborted(&self, aborted: AbortedTxn) {
        self.state.write().aborted.push(aborted);
    }

    /// Recovery: one committed block.
    pub(super) fn restore_block(&self, block: BlockMeta) {
        self.state.write().blocks.insert(block.base_offset, block);
    }

    /// A committed flush: its block becomes readable, the high watermark moves to `high_watermark`
    /// (never back), the last stable offset to `last_stable_offset` (the flush's writer computed it
    /// from the transactions open after it), and the transactions it aborted are recorded.
    pub(super) fn publish(
        &self,
        block: BlockMeta,
        high_watermark: i64,
        last_stable_offset: i64,
        aborted: &[AbortedTxn],
    ) {
        let mut st = self.state.write();
        st.blocks.insert(block.base_offset, block);
        st.high_watermark = st.high_watermark.max(high_watermark);
        st.last_stable_offset = last_stable_offset.min(st.high_watermark);
        st.aborted.extend_from_slice(aborted);
    }

    /// DeleteRecords or retention: the log starts at `offset` (never moves back); whole blocks before it
    /// leave the index. Returns the log start offset.
    pub(super) fn truncate_before(&self, offset: i64) -> i64 {
        let mut st = self.state.write();
        st.log_start_offset = st.log_start_offset.max(offset);
        let start = st.log_start_offset;
        st.blocks.retain(|_, b| b.last_offset >= start);
        st.aborted.retain(|a| a.last_offset >= start);
        st.log_start_offset
    }

    /// Compaction: `removed` blocks (base offset, segment) leave the index where it still holds them
    /// in that segment, and `added` ones take their place unless the log start has passed them.
    pub(super) fn swap_blocks(&self, removed: &[(i64, u64)], added: &[BlockMeta]) {
        let mut st = self.state.write();
        for (base, segment) in removed {
            if st
                .blocks
                .get(base)
                .is_some_and(|b| b.segment_id == *segment)
            {
                st.blocks.remove(base);
            }
        }
        for b in added {
            if b.last_offset >= st.log_start_offset {
                st.blocks.insert(b.base_offset, *b);
            }
        }
    }

    // ---- reading the index ---------------------------------------------------------------------

    /// Bytes the partition's readable log takes in its segment store: the stored (possibly
    /// compressed) length of every block in the index (DescribeLogDirs' partition size). A pass over
    /// the index under the read lock.
    pub fn size_bytes(&self) -> u64 {
        self.state
            .read()
            .blocks
            .values()
            .map(|b| b.stored_len as u64)
            .sum()
    }

    /// Plans a read (see [`index::plan_read`]).
    pub(super) fn plan_read(
        &self,
        offset: i64,
        max_bytes: usize,
        max_run: u64,
        cached: impl Fn(&BlockMeta) -> bool,
    ) -> ReadPlan {
        index::plan_read(
            &self.state.read().blocks,
            offset,
            max_bytes,
            max_run,
            cached,
        )
    }

    /// The blocks a read of `max_bytes` from `offset` takes batches from.
    pub(super) fn blocks_from(&self, offset: i64, max_bytes: usize) -> Vec<BlockMeta> {
        index::blocks_from(&self.state.read().blocks, offset, max_bytes)
    }

    /// `first` and the blocks one ranged GET fetches with it.
    pub(super) fn run_from(&self, first: &BlockMeta, max_bytes: u64) -> Vec<BlockMeta> {
        index::run_from(&self.state.read().blocks, first, max_bytes)
    }

    /// Where retention would move the log start (see [`index::retention_cutoff`]).
    pub(super) fn retention_cutoff(
        &self,
        now_ms: i64,
        retention_ms: i64,
        retention_bytes: i64,
    ) -> i64 {
        let st = self.state.read();
        // Never past the last stable offset: an open transaction's records stay until it ends.
        index::retention_cutoff(
            &st.blocks,
            st.log_start_offset,
            st.last_stable_offset,
            now_ms,
            retention_ms,
            retention_bytes,
        )
    }

    pub(super) fn all_blocks(&self) -> Vec<BlockMeta> {
        self.state.read().blocks.values().copied().collect()
    }
}

/// Topics by name and by id.
#[derive(Default)]
pub(super) struct Catalog {
    by_name: HashMap<String, Arc<Topic>>,
    by_id: HashMap<Uuid, Arc<Topic>>,
}

impl Catalog {
    pub(super) fn by_name(&self, name: &str) -> Option<Arc<Topic>> {
        self.by_name.get(name).cloned()
    }

    pub(super) fn by_id(&self, id: &Uuid) -> Option<Arc<Topic>> {
        self.by_id.get(id).cloned()
    }

    pub(super) fn contains_id(&self, id: &Uuid) -> bool {
        self.by_id.contains_key(id)
    }

    pub(super) fn topics(&self) -> impl Iterator<Item = &Arc<Topic>> {
        self.by_id.values()
    }

    /// Adds or replaces a topic under its name and id.
    pub(super) fn insert(&mut self, topic: Arc<Topic>) {
        self.by_name.insert(topic.name.clone(), topic.clone());
        self.by_id.insert(topic.id, topic);
    }

    pub(super) fn remove(&mut self, name: &str, id: &Uuid) {
        self.by_name.remove(name);
        self.by_id.remove(id);
    }

    /// A partition of a live topic.
    pub(super) fn partition(&self, topic_id: &Uuid, index: i32) -> Option<Arc<Partition>> {
        self.by_id
            .get(topic_id)
            .and_then(|t| t.partition(index))
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(base: i64, last: i64, segment: u64) -> BlockMeta {
        BlockMeta {
            topic_id: Uuid::nil(),
            partition: 0,
            base_offset: base,
            last_offset: last,
            max_timestamp: 0,
            segment_id: segment,
            position: 32,
            stored_len: 10,
            raw_len: 10,
            codec: 0,
            crc: 0,
        }
    }

    #[test]
    fn publish_truncate_and_swap_keep_the_index_consistent() {
        let p = Partition::new(Uuid::nil(), 0);
        p.publish(block(0, 9, 1), 10, 10, &[]);
        p.publish(block(10, 19, 2), 20, 20, &[]);
        p.publish(block(20, 29, 3), 15, 15, &[]); // a stale watermark never moves it back
        assert_eq!(p.watermarks(), (20, 0));
        assert_eq!(p.truncate_before(12), 12);
        assert_eq!(p.truncate_before(5), 12, "never back");
        assert_eq!(
            p.all_blocks().len(),
            2,
            "0-9 is gone, 10-19 straddles and stays"
        );
        // Compaction replaced 10-19 (segment 2) and 20-29 (3) by one block; a stale removal of 20 in
        // segment 9 changes nothing.
        p.swap_blocks(&[(10, 2), (20, 9)], &[block(10, 29, 7)]);
        let bases: Vec<(i64, u64)> = p
            .all_blocks()
            .iter()
            .map(|b| (b.base_offset, b.segment_id))
            .collect();
        assert_eq!(bases, vec![(10, 7), (20, 3)]);
        // A merged block entirely before the log start is not added.
        p.truncate_before(25);
        p.swap_blocks(&[], &[block(0, 9, 8)]);
        assert!(p.all_blocks().iter().all(|b| b.segment_id != 8));
    }

    #[test]
    fn the_last_stable_offset_and_aborted_transactions_follow_the_flushes() {
        let p = Partition::new(Uuid::nil(), 0);
        // A transaction opened at 5 holds the last stable offset there.
        p.publish(block(0, 9, 1), 10, 5, &[]);
        assert_eq!(p.offsets(), (10, 5, 0));
        let a = AbortedTxn {
            producer_id: 7,
            first_offset: 5,
            last_offset: 10,
        };
        p.publish(block(10, 10, 1), 11, 11, &[a]);
        assert_eq!(p.last_stable_offset(), 11);
        assert_eq!(p.aborted_between(0, 5), vec![], "starts at 5: not before 5");
        assert_eq!(p.aborted_between(0, 6), vec![a]);
        assert_eq!(p.aborted_between(10, 20), vec![a]);
        assert_eq!(p.aborted_between(11, 20), vec![], "ended before 11");
        p.truncate_before(11);
        assert_eq!(p.aborted_between(0, 20), vec![]);
    }
}
