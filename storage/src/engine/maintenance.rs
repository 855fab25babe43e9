//! Background upkeep: retention, deleting segments nothing refers to any more, and compaction.
//!
//! - Retention (every retention_check_interval, Kafka's log.retention.check.interval.ms) moves log start
//!   offsets past blocks that are too old (retention.ms) or too many (retention.bytes).
//! - A segment left without blocks (retention, DeleteRecords, deleted topics, compaction) is retired in
//!   the same metadata transaction; its file or object is deleted file.delete.delay.ms later, so reads
//!   that had already looked up its blocks can finish.
//! - Key compaction of compacted topics (every log.cleaner.backoff.ms): see `cleaner`.
//! - Compaction (object stores): flush objects hold the blocks of many partitions, each small. Once older
//!   than compaction_min_age, a run of them is rewritten as one object per partition, adjacent blocks
//!   merged into blocks of up to 1 MiB (batches unchanged, only the block framing is rebuilt); the index
//!   is switched in one metadata transaction and the old objects are retired. A reader of a partition
//!   then needs one ranged GET for many blocks instead of one GET per flush. With no flush objects
//!   waiting, four or more small compacted objects of one partition are merged the same way.

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

use super::{now_ms, Storage};
use crate::metadata::{BlockSwitch, SegmentRecord};
use crate::segment::{self, BlockMeta};
use crate::StorageError;

/// Raw bytes a merged block grows to at most.
pub(super) const MERGED_BLOCK_BYTES: usize = 1 << 20;
/// Flush objects one compaction pass reads at most.
const MAX_OBJECTS_PER_PASS: usize = 2048;

/// What one compaction pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CompactionReport {
    /// Flush objects rewritten.
    pub objects_in: usize,
    /// Per-partition objects written.
    pub objects_out: usize,
    pub blocks_in: usize,
    pub blocks_out: usize,
    pub bytes_out: u64,
    /// The pass stopped at its size limit: more flush objects are waiting.
    pub more: bool,
}

/// Starts the retention, deletion and compaction loops; each stops when the storage is dropped.
pub(super) fn spawn(storage: &Arc<Storage>) {
    let cfg = &storage.config;
    every(storage, cfg.retention_check_interval, |s| {
        Box::pin(async move { s.enforce_retention(now_ms()).await.map(|_| ()) })
    });
    let sweep =
        (cfg.file_delete_delay / 2).clamp(Duration::from_millis(100), Duration::from_secs(30));
    every(storage, sweep, |s| {
        Box::pin(async move { s.delete_retired_segments(now_ms()).await.map(|_| ()) })
    });
    if cfg.log_cleaner_enable {
        every(storage, cfg.cleaner_backoff, |s| {
            Box::pin(async move { s.clean(now_ms()).await.map(|_| ()) })
        });
    }
    if storage.segments.remote() && !cfg.compaction_interval.is_zero() {
        every(storage, cfg.compaction_interval, |s| {
            Box::pin(async move {
                // One pass reads about compaction_target_bytes; keep going while there is more, so
                // compaction keeps up with the write rate, but give the next tick its turn.
                let started = std::time::Instant::now();
                while s.compact(now_ms()).await?.more
                    && started.elapsed() < s.config.compaction_interval
                {}
                Ok(())
            })
        });
    }
}

type Pass = std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), StorageError>> + Send>>;

fn every(storage: &Arc<Storage>, period: Duration, pass: fn(Arc<Storage>) -> Pass) {
    let weak = Arc::downgrade(storage);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period.max(Duration::from_millis(10)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let Some(s) = weak.upgrade() else { break };
            if let Err(e) = pass(s).await {
                tracing::warn!(error = %e, "background storage pass failed");
            }
        }
    });
}

impl Storage {
    /// Applies retention.ms and retention.bytes (topic overrides, else the broker's log.retention.ms and
    /// log.retention.bytes: by default 7 days and no size limit, as Kafka) by moving log start offsets forward past whole blocks that are too old or too many.
    pub async fn enforce_retention(&self, now_ms: i64) -> Result<(), StorageError> {
        for topic in self.topics() {
            // Kafka's rule (UnifiedLog.deleteOldSegments): time and size retention only when the
            // policy contains `delete`; a compact-only topic keeps its records.
            let policy = topic
                .configs
                .get("cleanup.policy")
                .unwrap_or(&self.config.cleanup_policy);
            if !policy.split(',').any(|p| p.trim() == "delete") {
                continue;
            }
            let ms = topic
                .configs
                .get("retention.ms")
                .and_then(|v| v.parse::<i64>().ok())
                .unwrap_or(self.config.retention_ms);
            let bytes = topic
                .configs
                .get("retention.bytes")
                .and_then(|v| v.parse::<i64>().ok())
                .unwrap_or(self.config.retention_bytes);
            for p in &topic.partitions {
                let cutoff = p.retention_cutoff(now_ms, ms, bytes);
                if cutoff > p.log_start_offset() {
                    tracing::info!(topic = %topic.name, partition = p.index, log_start_offset = cutoff, "retention");
                    self.delete_records(p, cutoff).await?;
                }
            }
        }
        Ok(())
    }

    /// Deletes the files or objects of segments retired at least file.delete.delay.ms ago. Returns how
    /// many were deleted.
    pub async fn delete_retired_segments(&self, now_ms: i64) -> Result<usize, StorageError> {
        let delay = self.config.file_delete_delay.as_millis() as i64;
        let due: Vec<u64> = self
            .with_meta(|meta| meta.retired_segments())
            .await?
            .into_iter()
            .filter(|(_, retired_ms)| *retired_ms <= now_ms - delay)
            .map(|(id, _)| id)
            .collect();
        if due.is_empty() {
            return Ok(0);
        }
        self.segments.delete(due.clone()).await?;
        let ids = due.clone();
        self.with_meta(move |meta| meta.forget_retired_segments(&ids))
            .await?;
        tracing::debug!(segments = due.len(), "deleted retired segments");
        Ok(due.len())
    }

    /// One compaction pass (object stores only): rewrites the oldest run of small flush objects, older
    /// than compaction_min_age, as one object per partition.
    pub async fn compact(&self, now_ms: i64) -> Result<CompactionReport, StorageError> {
        if !self.segments.remote() {
            return Ok(CompactionReport::default());
        }
        // One rewrite of the index at a time (the log cleaner takes the same lock).
        let _rewrite = self.rewrites.lock().await;
        let segments = self.with_meta(|meta| meta.segments()).await?;
        // Live blocks by segment, from the index.
        let mut by_segment: HashMap<u64, Vec<BlockMeta>> = HashMap::new();
        for topic in self.topics() {
            for p in &topic.partitions {
                for b in p.all_blocks() {
                    by_segment.entry(b.segment_id).or_default().push(b);
                }
            }
        }
        let stored = |id: &u64| -> u64 {
            by_segment
                .get(id)
                .map(|bs| bs.iter().map(|b| b.total_len()).sum())
                .unwrap_or(0)
        };
        // The oldest flush objects, in id order, stopping at the first one that is too young or too
        // large: a partition's blocks in the run are then a contiguous stretch of its log.
        let min_age = self.config.compaction_min_age.as_millis() as i64;
        let target = self.config.compaction_target_bytes;
        let mut run = Vec::new();
        let mut run_bytes = 0u64;
        let mut more = false;
        for s in segments.iter().filter(|s| s.level == 0 && s.sealed) {
            let size = stored(&s.id);
            if s.created_ms > now_ms - min_age || size >= target {
                break;
            }
            // One pass holds its input in memory: at most about target bytes of it.
            if run.len() >= MAX_OBJECTS_PER_PASS || run_bytes >= target {
                more = true;
                break;
            }
            run.push(s.id);
            run_bytes += size;
        }
        // One object alone is left as it is (splitting it per partition would not give any partition
        // fewer objects), unless nothing refers to it any more.
        let worth_it = match run.as_slice() {
            [] => false,
            [only] => stored(only) == 0,
            _ => true,
        };
        if worth_it {
            return self.rewrite(run, &by_segment, now_ms, more).await;
        }

        // No flush objects to compact: merge a partition's small compacted objects (one per earlier
        // pass) when at least four of them follow each other, up to about target bytes in all.
        let mut by_partition: BTreeMap<(Uuid, i32), Vec<(u64, u64)>> = BTreeMap::new();
        for s in segments.iter().filter(|s| s.level == 1 && s.sealed) {
            if s.created_ms > now_ms - min_age {
                continue;
            }
            if let Some(b) = by_segment.get(&s.id).and_then(|bs| bs.first()) {
                by_partition
                    .entry((b.topic_id, b.partition))
                    .or_default()
                    .push((s.id, stored(&s.id)));
            }
        }
        let (mut run, mut run_bytes, mut more) = (Vec::new(), 0u64, false);
        for objects in by_partition.values() {
            // The oldest small objects of the partition (ids follow its offsets).
            let mut small = Vec::new();
            let mut bytes = 0u64;
            for &(id, size) in objects {
                if size >= target / 4 || bytes + size > target {
                    break;
                }
                small.push(id);
                bytes += size;
            }
            if small.len() < 4 {
                continue;
            }
            if run_bytes + bytes > target && !run.is_empty() {
                more = true;
                break;
            }
            run.extend(small);
            run_bytes += bytes;
        }
        if run.is_empty() {
            return Ok(CompactionReport::default());
        }
        self.rewrite(run, &by_segment, now_ms, more).await
    }

    /// Rewrites the live blocks of `run` (segment ids) as one object per partition, adjacent blocks
    /// merged, then switches the index and retires what no block refers to any more.
    async fn rewrite(
        &self,
        run: Vec<u64>,
        by_segment: &HashMap<u64, Vec<BlockMeta>>,
        now_ms: i64,
        more: bool,
    ) -> Result<CompactionReport, StorageError> {
        // Read each object's live extent with one GET (bypassing the cache: compaction must not
        // evict what consumers read), and split it into the blocks of each partition.
        let reads = run.clone().into_iter().filter_map(|id| {
            let blocks = by_segment.get(&id)?.clone();
            let start = blocks.iter().map(|b| b.position).min()?;
            let end = blocks.iter().map(|b| b.position + b.total_len()).max()?;
            Some(async move {
                let bytes = self.segments.read(id, start, end - start).await?;
                let mut raws = Vec::with_capacity(blocks.len());
                for b in blocks {
                    let at = (b.position - start) as usize;
                    let stored = bytes.get(at..at + b.total_len() as usize).ok_or(
                        StorageError::CorruptBlock {
                            segment_id: id,
                            position: b.position,
                            reason: "object shorter than its index says",
                        },
                    )?;
                    raws.push((b, segment::decode_block(&b, stored)?));
                }
                Ok::<_, StorageError>(raws)
            })
        });
        let read: Vec<Vec<(BlockMeta, Bytes)>> = futures_util::stream::iter(reads)
            .buffer_unordered(8)
            .try_collect()
            .await?;
        let mut by_partition: BTreeMap<(Uuid, i32), Vec<(BlockMeta, Bytes)>> = BTreeMap::new();
        for (b, raw) in read.into_iter().flatten() {
            by_partition
                .entry((b.topic_id, b.partition))
                .or_default()
                .push((b, raw));
        }

        let mut report = CompactionReport {
            objects_in: run.len(),
            more,
            ..Default::default()
        };
        let mut switch = BlockSwitch {
            retire_if_empty: run.clone(),
            ..Default::default()
        };
        let mut uploads = Vec::new();
        for ((topic_id, partition), mut blocks) in by_partition {
            blocks.sort_by_key(|(b, _)| b.base_offset);
            report.blocks_in += blocks.len();
            let id = self.ids.next();
            let groups = merge_groups(&blocks).into_iter().map(|group| {
                let mut raw = Vec::with_capacity(group.iter().map(|(_, r)| r.len()).sum());
                for (_, r) in group {
                    raw.extend_from_slice(r);
                }
                // LZ4'd only when every batch arrived uncompressed (as at write time).
                segment::NewBlock {
                    base_offset: group[0].0.base_offset,
                    last_offset: group[group.len() - 1].0.last_offset,
                    max_timestamp: group
                        .iter()
                        .map(|(b, _)| b.max_timestamp)
                        .max()
                        .unwrap_or(-1),
                    raw,
                }
            });
            let (bytes, metas) = segment::encode_blocks(topic_id, partition, id, groups);
            for (b, _) in &blocks {
                switch
                    .removed
                    .push((b.topic_id, b.partition, b.base_offset, b.segment_id));
            }
            report.blocks_out += metas.len();
            let object = segment::encode_object(id, now_ms, &bytes, &metas);
            report.bytes_out += object.len() as u64;
            switch.segments.push(SegmentRecord {
                id,
                created_ms: now_ms,
                sealed: true,
                level: 1,
            });
            switch.added.extend_from_slice(&metas);
            uploads.push((id, object));
        }
        report.objects_out = uploads.len();
        let ids: Vec<u64> = uploads.iter().map(|(id, _)| *id).collect();
        let put = self.segments.write_segments(uploads).await;
        let switched = match put {
            Ok(_) => {
                self.with_meta(move |meta| meta.switch_blocks(&switch).map(|a| (a, switch)))
                    .await
            }
            Err(e) => Err(e),
        };
        let (added, switch) = match switched {
            Ok(v) => v,
            Err(e) => {
                // Nothing refers to the new objects: remove them (or the next start will).
                let _ = self.discard_uploads(ids).await;
                return Err(e);
            }
        };
        // The same switch in memory. A block is only replaced where the index still holds it.
        let mut removed_by: HashMap<(Uuid, i32), Vec<(i64, u64)>> = HashMap::new();
        for (t, p, base, seg) in &switch.removed {
            removed_by.entry((*t, *p)).or_default().push((*base, *seg));
        }
        let mut added_by: HashMap<(Uuid, i32), Vec<BlockMeta>> = HashMap::new();
        for b in added {
            added_by
                .entry((b.topic_id, b.partition))
                .or_default()
                .push(b);
        }
        for (key, removed) in removed_by {
            let Some(p) = self
                .topic_by_id(key.0)
                .and_then(|t| t.partition(key.1).cloned())
            else {
                continue;
            };
            p.swap_blocks(&removed, &added_by.remove(&key).unwrap_or_default());
        }
        tracing::info!(
            ?report,
            "compacted flush objects into per-partition objects"
        );
        Ok(report)
    }
}

/// Groups a partition's blocks (sorted by offset) into runs to merge: adjacent offsets, up to
/// MERGED_BLOCK_BYTES raw each.
fn merge_groups(blocks: &[(BlockMeta, Bytes)]) -> Vec<&[(BlockMeta, Bytes)]> {
    let mut groups = Vec::new();
    let mut start = 0;
    let mut bytes = 0usize;
    for i in 0..blocks.len() {
        let (b, raw) = &blocks[i];
        let adjacent = i > start && blocks[i - 1].0.last_offset + 1 == b.base_offset;
        if i > start && (!adjacent || bytes + raw.len() > MERGED_BLOCK_BYTES) {
            groups.push(&blocks[start..i]);
            start = i;
            bytes = 0;
        }
        bytes += raw.len();
    }
    if start < blocks.len() {
        groups.push(&blocks[start..]);
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(base: i64, last: i64) -> BlockMeta {
        BlockMeta {
            topic_id: Uuid::nil(),
            partition: 0,
            base_offset: base,
            last_offset: last,
            max_timestamp: 0,
            segment_id: 1,
            position: 32,
            stored_len: 0,
            raw_len: 0,
            codec: 0,
            crc: 0,
        }
    }

    #[test]
    fn merge_groups_split_at_offset_gaps_and_at_the_merged_block_size() {
        let small = Bytes::from(vec![0u8; 1000]);
        let big = Bytes::from(vec![0u8; MERGED_BLOCK_BYTES - 2000]);
        let blocks = vec![
            (block(0, 9), small.clone()),
            (block(10, 19), small.clone()),
            // a gap (20-29 deleted or compacted away elsewhere)
            (block(30, 39), small.clone()),
            (block(40, 49), big.clone()),
            (block(50, 59), big),
        ];
        let groups: Vec<Vec<i64>> = merge_groups(&blocks)
            .iter()
            .map(|g| g.iter().map(|(b, _)| b.base_offset).collect())
            .collect();
        assert_eq!(groups, vec![vec![0, 10], vec![30, 40], vec![50]]);
    }
}
