//! The log cleaner: key compaction of `cleanup.policy=compact` (and `compact,delete`) topics, Kafka's
//! LogCleaner mapped onto the block index. Offsets never change; a compacted log has gaps.
//!
//! One pass (every `log.cleaner.backoff.ms`), for each compacted partition, dirtiest first:
//! - **Clean and dirty.** Blocks in segments the cleaner wrote (level 2) form the clean prefix of
//!   the log; what follows is dirty (Kafka's cleaner checkpoint, here derived from the index, so
//!   nothing more is stored). The cleanable range ends at the first block that is in the head, at or
//!   past the last stable offset, or newer than `min.compaction.lag.ms` (its largest timestamp).
//!   Kafka never cleans the active segment; here the head is the newest block, and the blocks before
//!   it while together under the topic's `segment.bytes` and younger than its `segment.ms`; a newest
//!   block larger than `segment.bytes` is split at a batch (`split_head`), its older batches cleaned,
//!   its head part copied into a level-1 segment (dirty).
//! - **When.** The dirty share of the cleanable bytes reaches `min.cleanable.dirty.ratio`, or the
//!   oldest dirty block is older than `max.compaction.lag.ms`.
//! - **Offset map.** The dirty blocks' keys, as 128-bit hashes, to their latest offset (Kafka's
//!   SkimpyOffsetMap uses MD5), in a table sized once within `log.cleaner.dedupe.buffer.size`
//!   (`map_capacity`); when a block could overfill it the map ends before that block and the rest
//!   waits for the next pass (at least one block is always taken, so a pass makes progress).
//! - **Rewrite.** The log from its start to the map's end is rewritten (protocol's `cleaner`, Kafka's
//!   filterTo rules: latest per key, tombstones until the delete horizon, transaction markers too),
//!   batches of aborted transactions dropped (the aborted index, as Kafka's cleaner uses it), into new
//!   segments of one partition (level 2) of up to `compaction_target_bytes`; each replaces its input
//!   blocks in one metadata transaction (`switch_blocks`), so a crash at any point leaves the index
//!   whole: a switched part is clean, the rest still dirty; unreferenced output is removed at start
//!   (object stores: upload intents; local files: files no segment row names).
//!
//! Cost: a pass reads the partition's log from its start to the map's end once (coalesced ranged
//! reads), and writes one object per 64 MiB of output (usually one per partition pass).

use bytes::Bytes;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use streamhouse_protocol::batch::{self, BatchHeader};
use streamhouse_protocol::cleaner::{self, Filtered, Horizon};
use streamhouse_protocol::control;

use super::maintenance::MERGED_BLOCK_BYTES;
use super::{Partition, Storage, Topic};
use crate::metadata::{BlockSwitch, SegmentRecord};
use crate::producer::AbortedTxn;
use crate::segment::{self, BlockMeta};
use crate::StorageError;

/// Segment level of the cleaner's output.
pub(super) const CLEANED_LEVEL: u8 = 2;
/// Bytes of one bucket of the offset map's table: a 16-byte key hash, an 8-byte offset and
/// hashbrown's control byte.
const MAP_BUCKET_BYTES: u64 = 25;

/// Most keys the offset map may hold in `bytes`: hashbrown's table is a power of two of buckets,
/// at most 7/8 full, so the largest table that fits is allocated once and never grows (the
/// default 128 MiB: 2^22 buckets, 105 MB, 3.67 million keys; Kafka's SkimpyOffsetMap fits 5
/// million in the same buffer).
fn map_capacity(bytes: u64) -> usize {
    let buckets = (bytes / MAP_BUCKET_BYTES).max(1);
    let pow2 = 1u64 << (63 - buckets.leading_zeros());
    (pow2 / 8 * 7).max(1) as usize
}
/// Most bytes one ranged read of consecutive input blocks takes.
const READ_RUN_BYTES: u64 = 8 << 20;

/// What one cleaner pass did, summed over the partitions it cleaned.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CleanReport {
    pub partitions: usize,
    /// Ranged reads of input (GETs on an object store).
    pub reads: usize,
    /// Segments written (PUTs on an object store).
    pub segments_out: usize,
    pub blocks_in: usize,
    pub blocks_out: usize,
    /// Raw (uncompressed block) bytes read and written.
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub batches_in: u64,
    pub batches_out: u64,
    /// Wall-clock milliseconds spent cleaning partitions (reads, rewrites, metadata switches).
    pub millis: u64,
}

/// What the cleaner has done since start, and each compacted partition as the last pass found it
/// (the metrics endpoint).
#[derive(Debug, Default, Clone)]
pub struct CleanerStats {
    pub passes: u64,
    pub totals: CleanReport,
    /// (topic, partition, range) at the start of the last pass.
    pub partitions: Vec<(String, i32, CleanableRange)>,
}

impl CleanReport {
    fn add(&mut self, o: &CleanReport) {
        self.partitions += o.partitions;
        self.reads += o.reads;
        self.segments_out += o.segments_out;
        self.blocks_in += o.blocks_in;
        self.blocks_out += o.blocks_out;
        self.bytes_in += o.bytes_in;
        self.bytes_out += o.bytes_out;
        self.batches_in += o.batches_in;
        self.batches_out += o.batches_out;
        self.millis += o.millis;
    }
}

/// A topic's compaction settings: its own value, else the broker's (Kafka's LogConfig).
#[derive(Debug, Clone, Copy)]
pub(super) struct CleanerSettings {
    min_cleanable_ratio: f64,
    min_lag_ms: i64,
    max_lag_ms: i64,
    delete_retention_ms: i64,
    segment_bytes: u64,
    segment_ms: i64,
}

impl CleanerSettings {
    fn of(topic: &Topic, s: &Storage) -> Self {
        let c = &s.config;
        let get = |k: &str| topic.configs.get(k);
        Self {
            min_cleanable_ratio: get("min.cleanable.dirty.ratio")
                .and_then(|v| v.parse().ok())
                .unwrap_or(c.min_cleanable_ratio),
            min_lag_ms: get("min.compaction.lag.ms")
                .and_then(|v| v.parse().ok())
                .unwrap_or(c.min_compaction_lag_ms),
            max_lag_ms: get("max.compaction.lag.ms")
                .and_then(|v| v.parse().ok())
                .unwrap_or(c.max_compaction_lag_ms),
            delete_retention_ms: get("delete.retention.ms")
                .and_then(|v| v.parse().ok())
                .unwrap_or(c.delete_retention_ms),
            segment_bytes: get("segment.bytes")
                .and_then(|v| v.parse().ok())
                .unwrap_or(c.segment_bytes),
            segment_ms: get("segment.ms")
                .and_then(|v| v.parse().ok())
                .unwrap_or(c.segment_ms),
        }
    }
}

/// `cleanup.policy` (the topic's, else the broker's) contains `compact`.
pub(super) fn is_compacted(topic: &Topic, default_policy: &str) -> bool {
    topic
        .configs
        .get("cleanup.policy")
        .map(String::as_str)
        .unwrap_or(default_policy)
        .split(',')
        .any(|p| p.trim() == "compact")
}

/// A partition's blocks split for cleaning: `[..first_dirty)` clean, `[first_dirty..end)` dirty and
/// cleanable, `[end..)` not cleanable yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CleanableRange {
    pub first_dirty: usize,
    pub end: usize,
    pub clean_bytes: u64,
    pub dirty_bytes: u64,
}

impl CleanableRange {
    pub fn dirty_ratio(&self) -> f64 {
        let total = self.clean_bytes + self.dirty_bytes;
        if total == 0 {
            0.0
        } else {
            self.dirty_bytes as f64 / total as f64
        }
    }
}

/// Where cleaning may go in `blocks` (a partition's index in offset order); pure, tested below.
fn cleanable_range(
    blocks: &[BlockMeta],
    cleaned: impl Fn(&BlockMeta) -> bool,
    last_stable_offset: i64,
    now_ms: i64,
    s: &CleanerSettings,
) -> CleanableRange {
    // The head: the newest block always (Kafka's active segment holds at least the last batch), then
    // older ones while the head stays under segment.bytes and they are younger than segment.ms.
    let mut head_start = blocks.len().saturating_sub(1);
    let mut head_bytes = blocks.last().map_or(0, |b| b.raw_len as u64);
    while head_start > 0 {
        let b = &blocks[head_start - 1];
        let young = b.max_timestamp > now_ms.saturating_sub(s.segment_ms);
        if !young || head_bytes + b.raw_len as u64 >= s.segment_bytes {
            break;
        }
        head_bytes += b.raw_len as u64;
        head_start -= 1;
    }
    let lag_cutoff = now_ms.saturating_sub(s.min_lag_ms.max(0));
    let end = blocks[..head_start]
        .iter()
        .position(|b| b.last_offset >= last_stable_offset || b.max_timestamp > lag_cutoff)
        .unwrap_or(head_start);
    let first_dirty = blocks[..end]
        .iter()
        .position(|b| !cleaned(b))
        .unwrap_or(end);
    let bytes = |r: &[BlockMeta]| r.iter().map(|b| b.raw_len as u64).sum::<u64>();
    CleanableRange {
        first_dirty,
        end,
        clean_bytes: bytes(&blocks[..first_dirty]),
        dirty_bytes: bytes(&blocks[first_dirty..end]),
    }
}

/// Kafka's "log cleaner must clean" rule: dirty enough, or dirty for longer than max.compaction.lag.ms.
/// The part of an oversized newest block that could be split off the head (see [`split_head`])
/// counts as dirty, by its size beyond segment.bytes.
fn due(range: &CleanableRange, blocks: &[BlockMeta], now_ms: i64, s: &CleanerSettings) -> bool {
    let splittable = splittable_head(range, blocks, s);
    let extra = splittable.map_or(0, |b| {
        b.raw_len as u64 - s.segment_bytes.min(b.raw_len as u64)
    });
    if range.first_dirty >= range.end && extra == 0 {
        return false;
    }
    let first_dirty_ts = blocks
        .get(range.first_dirty)
        .map_or(i64::MAX, |b| b.max_timestamp);
    let overdue = first_dirty_ts < now_ms.saturating_sub(s.max_lag_ms);
    let total = range.clean_bytes + range.dirty_bytes + extra;
    let ratio = (range.dirty_bytes + extra) as f64 / total.max(1) as f64;
    ratio >= s.min_cleanable_ratio || overdue
}

/// The newest block, when the head is that block alone, nothing else stops the cleanable range
/// before it, and it holds more than segment.bytes: Kafka's active segment would have rolled
/// inside it, so its older batches are cleanable (one flush can gather up to flush.max.bytes of a
/// partition).
fn splittable_head<'a>(
    range: &CleanableRange,
    blocks: &'a [BlockMeta],
    s: &CleanerSettings,
) -> Option<&'a BlockMeta> {
    let newest = blocks.last()?;
    (range.end + 1 == blocks.len() && newest.raw_len as u64 > s.segment_bytes).then_some(newest)
}

/// Where the head starts inside the newest block `raw`: the newest batches under segment.bytes
/// (the last one always), and any batch at or past the last stable offset or younger than
/// min.compaction.lag.ms. Returns (split offset, batches before it, batches from it), or None when
/// nothing is before it.
fn split_head(
    raw: &Bytes,
    last_stable_offset: i64,
    now_ms: i64,
    s: &CleanerSettings,
) -> Option<(i64, Bytes, Bytes)> {
    let batches: Vec<(usize, BatchHeader)> = batch::batches(raw).collect();
    let lag_cutoff = now_ms.saturating_sub(s.min_lag_ms.max(0));
    let mut head = batches.len().checked_sub(1)?;
    let mut bytes = batches[head].1.total_size() as u64;
    while head > 0 && bytes + (batches[head - 1].1.total_size() as u64) < s.segment_bytes {
        head -= 1;
        bytes += batches[head].1.total_size() as u64;
    }
    let stop = batches[..head]
        .iter()
        .position(|(_, h)| h.last_offset() >= last_stable_offset || h.max_timestamp > lag_cutoff)
        .unwrap_or(head);
    if stop == 0 {
        return None;
    }
    let at = batches[stop].0;
    Some((
        batches[stop].1.base_offset,
        raw.slice(..at),
        raw.slice(at..),
    ))
}

/// A key's 128-bit hash (two SipHash runs with different prefixes; keys are never stored).
fn key_hash(key: &[u8]) -> u128 {
    let half = |salt: u8| {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        salt.hash(&mut h);
        key.hash(&mut h);
        h.finish()
    };
    ((half(0) as u128) << 64) | half(1) as u128
}

/// The aborted transactions of a range, by producer: is a transactional batch in one of them?
struct Aborted(HashMap<i64, Vec<(i64, i64)>>);

impl Aborted {
    fn new(list: Vec<AbortedTxn>) -> Self {
        let mut by = HashMap::<i64, Vec<(i64, i64)>>::new();
        for a in list {
            by.entry(a.producer_id)
                .or_default()
                .push((a.first_offset, a.last_offset));
        }
        Aborted(by)
    }
    fn contains(&self, h: &BatchHeader) -> bool {
        h.is_transactional()
            && !h.is_control()
            && self.0.get(&h.producer_id).is_some_and(|v| {
                v.iter()
                    .any(|(first, last)| *first <= h.base_offset && h.base_offset <= *last)
            })
    }
}

impl Storage {
    /// The cleaner's totals and the partitions' cleanable ranges as of its last pass.
    pub fn cleaner_stats(&self) -> CleanerStats {
        self.cleaner_stats.lock().clone()
    }

    async fn segment_levels(&self) -> Result<HashMap<u64, u8>, StorageError> {
        Ok(self
            .with_meta(|meta| meta.segments())
            .await?
            .into_iter()
            .map(|s| (s.id, s.level))
            .collect())
    }

    /// One cleaner pass over every compacted partition that is due, dirtiest first.
    pub async fn clean(&self, now_ms: i64) -> Result<CleanReport, StorageError> {
        // One rewrite of the index at a time: object compaction and the cleaner never switch the same
        // blocks concurrently.
        let _rewrite = self.rewrites.lock().await;
        let levels = self.segment_levels().await?;
        let mut due_list = Vec::new();
        let mut seen = Vec::new();
        for topic in self.topics() {
            if !is_compacted(&topic, &self.config.cleanup_policy) {
                continue;
            }
            let s = CleanerSettings::of(&topic, self);
            for p in &topic.partitions {
                let blocks = p.all_blocks();
                let range = cleanable_range(
                    &blocks,
                    |b| levels.get(&b.segment_id) == Some(&CLEANED_LEVEL),
                    p.last_stable_offset(),
                    now_ms,
                    &s,
                );
                seen.push((topic.name.clone(), p.index, range));
                if due(&range, &blocks, now_ms, &s) {
                    due_list.push((
                        range.dirty_ratio(),
                        topic.clone(),
                        p.clone(),
                        blocks,
                        range,
                        s,
                    ));
                }
            }
        }
        due_list.sort_by(|a, b| b.0.total_cmp(&a.0));
        let mut report = CleanReport::default();
        for (_, topic, p, blocks, range, s) in due_list {
            let started = std::time::Instant::now();
            let r = self
                .clean_partition(&topic, &p, &blocks, range, s, now_ms, &mut report)
                .await;
            report.millis += started.elapsed().as_millis() as u64;
            // One partition's failure (an unreadable batch, a store error) must not keep the
            // others from being cleaned; it is tried again next pass.
            if let Err(e) = r {
                tracing::warn!(topic = %topic.name, partition = p.index, error = %e, "log cleaner could not clean a partition");
            }
        }
        if report.partitions > 0 {
            tracing::info!(?report, "log cleaner pass");
        }
        let mut stats = self.cleaner_stats.lock();
        stats.passes += 1;
        stats.totals.add(&report);
        stats.partitions = seen;
        drop(stats);
        Ok(report)
    }

    #[allow(clippy::too_many_arguments)]
    async fn clean_partition(
        &self,
        topic: &Topic,
        p: &Arc<Partition>,
        blocks: &[BlockMeta],
        range: CleanableRange,
        s: CleanerSettings,
        now_ms: i64,
        report: &mut CleanReport,
    ) -> Result<(), StorageError> {
        let limit = self.config.max_decompressed_bytes;
        // An oversized newest block: its batches before the head are cleaned too, the head part
        // is rewritten verbatim into a segment of its own that stays dirty (level 1).
        let mut split = None;
        if let Some(newest) = splittable_head(&range, blocks, &s) {
            let raw = self.read_run(std::slice::from_ref(newest), report).await?;
            if let Some(raw) = raw.into_iter().next() {
                split = split_head(&raw, p.last_stable_offset(), now_ms, &s).map(|x| (*newest, x));
            }
        }
        let upto = match &split {
            Some((newest, _)) => newest.last_offset + 1,
            // Only the head was a candidate, and nothing in it can be cleaned yet.
            None if range.first_dirty >= range.end => return Ok(()),
            None => blocks[range.end - 1].last_offset + 1,
        };
        let aborted = Arc::new(Aborted::new(p.aborted_between(p.log_start_offset(), upto)));
        // 1. The offset map over the dirty blocks, as many as fit.
        let capacity = map_capacity(self.config.dedupe_buffer_bytes);
        let dirty_offsets: i64 = blocks[range.first_dirty..range.end]
            .iter()
            .map(|b| b.last_offset - b.base_offset + 1)
            .sum();
        // Sized once: reserving up front keeps the table from doubling past the bound.
        let mut map: HashMap<u128, i64> =
            HashMap::with_capacity(capacity.min(dirty_offsets.max(0) as usize));
        let mut map_end = range.first_dirty;
        let dirty = &blocks[range.first_dirty..range.end];
        for run in plan_runs(dirty) {
            let raws = self.read_run(&run, report).await?;
            let mut stop = false;
            for (b, raw) in run.iter().zip(raws) {
                let offsets = (b.last_offset - b.base_offset + 1).max(0) as usize;
                if map_end > range.first_dirty && map.len() + offsets > capacity {
                    stop = true;
                    break;
                }
                map.extend(scan_keys(raw, aborted.clone(), limit).await?);
                map_end += 1;
            }
            if stop {
                break;
            }
        }
        // The split block's cleanable batches, if the map took every dirty block and has room.
        let split = match split {
            Some((newest, (at, prefix, head)))
                if map_end == range.end
                    && (map_end == range.first_dirty
                        || map.len() + (at - newest.base_offset) as usize <= capacity) =>
            {
                map.extend(scan_keys(prefix.clone(), aborted.clone(), limit).await?);
                Some((newest, prefix, head))
            }
            _ => None,
        };
        let map = Arc::new(map);
        tracing::debug!(topic = %topic.name, partition = p.index, keys = map.len(), "offset map built");

        // 2. Rewrite [log start, map_end) against the map, in output segments of up to
        // compaction_target_bytes, each switched in alone.
        let horizon = Horizon {
            now_ms,
            delete_retention_ms: s.delete_retention_ms,
        };
        let target = self.config.compaction_target_bytes.max(1);
        // Per producer: does its current transaction still have data in the cleaned log?
        let mut txn_data: HashMap<i64, bool> = HashMap::new();
        let mut out = Output::default();
        for run in plan_runs(&blocks[..map_end]) {
            let raws = self.read_run(&run, report).await?;
            for (b, raw) in run.into_iter().zip(raws) {
                report.blocks_in += 1;
                report.bytes_in += raw.len() as u64;
                let state = std::mem::take(&mut txn_data);
                let (batches, state) =
                    filter_off_runtime(raw, &map, &aborted, horizon, limit, state).await?;
                txn_data = state;
                report.batches_in += batches.in_count;
                report.batches_out += batches.kept.len() as u64;
                out.add(b, batches.kept);
                if out.bytes >= target {
                    self.switch_cleaned(p, &mut out, now_ms, report).await?;
                }
            }
        }
        if let Some((newest, prefix, head)) = split {
            report.blocks_in += 1;
            report.bytes_in += (prefix.len() + head.len()) as u64;
            let state = std::mem::take(&mut txn_data);
            let (batches, _) =
                filter_off_runtime(prefix, &map, &aborted, horizon, limit, state).await?;
            report.batches_in += batches.in_count;
            report.batches_out += batches.kept.len() as u64;
            out.add(newest, batches.kept);
            out.head = batch::batches(&head)
                .map(|(pos, h)| (h, head.slice(pos..pos + h.total_size())))
                .collect();
        }
        self.switch_cleaned(p, &mut out, now_ms, report).await?;
        report.partitions += 1;
        Ok(())
    }

    /// The raw bytes of one run of blocks (see [`plan_runs`]), read with one ranged read.
    async fn read_run(
        &self,
        run: &[BlockMeta],
        report: &mut CleanReport,
    ) -> Result<Vec<Bytes>, StorageError> {
        let (Some(first), Some(last)) = (run.first(), run.last()) else {
            return Ok(Vec::new());
        };
        let len = last.position + last.total_len() - first.position;
        let bytes = self
            .segments
            .read(first.segment_id, first.position, len)
            .await?;
        report.reads += 1;
        let mut raws = Vec::with_capacity(run.len());
        for b in run {
            let at = (b.position - first.position) as usize;
            let stored =
                bytes
                    .get(at..at + b.total_len() as usize)
                    .ok_or(StorageError::CorruptBlock {
                        segment_id: b.segment_id,
                        position: b.position,
                        reason: "segment shorter than its index says",
                    })?;
            raws.push(segment::decode_block(b, stored)?);
        }
        Ok(raws)
    }

    /// Writes the pending output as one segment and switches it in for its input blocks.
    async fn switch_cleaned(
        &self,
        p: &Partition,
        out: &mut Output,
        now_ms: i64,
        report: &mut CleanReport,
    ) -> Result<(), StorageError> {
        let Output {
            inputs,
            batches,
            head,
            ..
        } = std::mem::take(out);
        if inputs.is_empty() {
            return Ok(());
        }
        let mut switch = BlockSwitch::default();
        for b in &inputs {
            switch
                .removed
                .push((b.topic_id, b.partition, b.base_offset, b.segment_id));
        }
        let mut uploads = Vec::new();
        // The cleaned batches (level 2: clean), then a split block's head (level 1: still dirty).
        for (level, batches) in [(CLEANED_LEVEL, &batches), (1, &head)] {
            if batches.is_empty() {
                continue;
            }
            let id = self.ids.next();
            let (bytes, metas) = encode_cleaned(p, id, batches);
            report.blocks_out += metas.len();
            report.bytes_out += batches.iter().map(|(_, b)| b.len() as u64).sum::<u64>();
            report.segments_out += 1;
            let object = segment::encode_object(id, now_ms, &bytes, &metas);
            switch.segments.push(SegmentRecord {
                id,
                created_ms: now_ms,
                sealed: true,
                level,
            });
            switch.added.extend(metas);
            uploads.push((id, object));
        }
        let ids: Vec<u64> = uploads.iter().map(|(id, _)| *id).collect();
        if !uploads.is_empty() {
            self.segments.write_segments(uploads).await?;
        }
        let switched = self
            .with_meta(move |meta| meta.switch_blocks(&switch).map(|a| (a, switch)))
            .await;
        let (added, switch) = match switched {
            Ok(v) => v,
            Err(e) => {
                let _ = self.discard_uploads(ids).await;
                return Err(e);
            }
        };
        let removed: Vec<(i64, u64)> = switch.removed.iter().map(|r| (r.2, r.3)).collect();
        p.swap_blocks(&removed, &added);
        Ok(())
    }
}

/// `blocks` (consecutive in offset order) in runs one ranged read each fetches: blocks stored back to
/// back in one segment, up to READ_RUN_BYTES. A pass holds one run at a time.
fn plan_runs(blocks: &[BlockMeta]) -> Vec<Vec<BlockMeta>> {
    let mut runs: Vec<(Vec<BlockMeta>, u64)> = Vec::new();
    for b in blocks {
        match runs.last_mut() {
            Some((run, bytes))
                if run.last().is_some_and(|l| {
                    l.segment_id == b.segment_id && l.position + l.total_len() == b.position
                }) && *bytes + b.total_len() <= READ_RUN_BYTES =>
            {
                run.push(*b);
                *bytes += b.total_len();
            }
            _ => runs.push((vec![*b], b.total_len())),
        }
    }
    runs.into_iter().map(|(run, _)| run).collect()
}

/// Output waiting to be written: the input blocks it replaces and the batches kept from them.
#[derive(Default)]
struct Output {
    inputs: Vec<BlockMeta>,
    /// (header, batch bytes) in offset order.
    batches: Vec<(BatchHeader, Bytes)>,
    /// The head part of a split newest block, copied as it is (always the last input).
    head: Vec<(BatchHeader, Bytes)>,
    bytes: u64,
}

impl Output {
    fn add(&mut self, input: BlockMeta, kept: Vec<(BatchHeader, Bytes)>) {
        self.inputs.push(input);
        self.bytes += kept.iter().map(|(_, b)| b.len() as u64).sum::<u64>();
        self.batches.extend(kept);
    }
}

/// Kept batches grouped into blocks of up to MERGED_BLOCK_BYTES raw, encoded back to back from
/// FILE_HEADER_LEN.
fn encode_cleaned(
    p: &Partition,
    id: u64,
    batches: &[(BatchHeader, Bytes)],
) -> (Vec<u8>, Vec<BlockMeta>) {
    let mut groups = Vec::new();
    let mut start = 0;
    while start < batches.len() {
        let mut end = start + 1;
        let mut raw_len = batches[start].1.len();
        while end < batches.len() && raw_len + batches[end].1.len() <= MERGED_BLOCK_BYTES {
            raw_len += batches[end].1.len();
            end += 1;
        }
        let group = &batches[start..end];
        let mut raw = Vec::with_capacity(raw_len);
        for (_, b) in group {
            raw.extend_from_slice(b);
        }
        groups.push(segment::NewBlock {
            base_offset: group[0].0.base_offset,
            last_offset: group[group.len() - 1].0.last_offset(),
            max_timestamp: group
                .iter()
                .map(|(h, _)| h.max_timestamp)
                .max()
                .unwrap_or(-1),
            raw,
        });
        start = end;
    }
    segment::encode_blocks(p.topic_id, p.index, id, groups)
}

/// The key hashes and offsets of a block's batches for the offset map (control batches and
/// aborted transactions' batches left out, as Kafka's buildOffsetMap), on a blocking thread.
async fn scan_keys(
    raw: Bytes,
    aborted: Arc<Aborted>,
    limit: u64,
) -> Result<Vec<(u128, i64)>, StorageError> {
    tokio::task::spawn_blocking(move || {
        let mut keys = Vec::new();
        for (pos, h) in batch::batches(&raw) {
            if h.is_control() || aborted.contains(&h) {
                continue;
            }
            let one = &raw[pos..pos + h.total_size()];
            cleaner::for_each_key(one, limit, |o, k| keys.push((key_hash(k), o)))
                .map_err(|e| StorageError::Cleaner(e.to_string()))?;
        }
        Ok(keys)
    })
    .await
    .map_err(|_| StorageError::TaskFailed("the cleaner's key scan"))?
}

/// [`filter_block`] on a blocking thread.
async fn filter_off_runtime(
    raw: Bytes,
    map: &Arc<HashMap<u128, i64>>,
    aborted: &Arc<Aborted>,
    horizon: Horizon,
    limit: u64,
    txn_data: HashMap<i64, bool>,
) -> Result<(FilteredBlock, HashMap<i64, bool>), StorageError> {
    let (map, aborted) = (map.clone(), aborted.clone());
    tokio::task::spawn_blocking(move || {
        filter_block(&raw, &map, &aborted, horizon, limit, txn_data)
    })
    .await
    .map_err(|_| StorageError::TaskFailed("the cleaner's rewrite"))?
}

struct FilteredBlock {
    in_count: u64,
    kept: Vec<(BatchHeader, Bytes)>,
}

/// Cleans the batches of one block (a blocking thread's work). `txn_data` carries, per producer,
/// whether its open transaction kept data so far (Kafka's CleanedTransactionMetadata): a marker
/// whose transaction kept nothing gets a delete horizon, and goes once it has passed.
fn filter_block(
    raw: &Bytes,
    map: &HashMap<u128, i64>,
    aborted: &Aborted,
    horizon: Horizon,
    limit: u64,
    mut txn_data: HashMap<i64, bool>,
) -> Result<(FilteredBlock, HashMap<i64, bool>), StorageError> {
    let mut kept = Vec::new();
    let mut in_count = 0;
    for (pos, h) in batch::batches(raw) {
        in_count += 1;
        let one = raw.slice(pos..pos + h.total_size());
        let result = if h.is_control() {
            let had_data = txn_data.remove(&h.producer_id).unwrap_or(false);
            let is_marker = control::marker_kind(&one).is_some();
            let discardable = is_marker && !had_data;
            match cleaner::delete_horizon(&h) {
                Some(hz) if discardable && hz <= horizon.now_ms => Filtered::Removed,
                None if discardable => {
                    cleaner::filter_batch(&one, limit, horizon, true, |_, _| true)
                        .map_err(|e| StorageError::Cleaner(e.to_string()))?
                }
                _ => Filtered::Kept,
            }
        } else if aborted.contains(&h) {
            Filtered::Removed
        } else {
            let r = cleaner::filter_batch(&one, limit, horizon, false, |offset, key| {
                map.get(&key_hash(key))
                    .is_none_or(|latest| offset >= *latest)
            })
            .map_err(|e| StorageError::Cleaner(e.to_string()))?;
            if h.is_transactional() && r != Filtered::Removed {
                txn_data.insert(h.producer_id, true);
            } else if h.is_transactional() {
                txn_data.entry(h.producer_id).or_insert(false);
            }
            r
        };
        match result {
            Filtered::Kept => kept.push((h, one)),
            Filtered::Removed => {}
            Filtered::Rebuilt(b) => {
                let b = Bytes::from(b);
                let h =
                    BatchHeader::parse(&b).ok_or(StorageError::Cleaner("rebuilt batch".into()))?;
                kept.push((h, b));
            }
        }
    }
    Ok((FilteredBlock { in_count, kept }, txn_data))
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn block(base: i64, last: i64, ts: i64, raw_len: u32, segment: u64) -> BlockMeta {
        BlockMeta {
            topic_id: Uuid::nil(),
            partition: 0,
            base_offset: base,
            last_offset: last,
            max_timestamp: ts,
            segment_id: segment,
            position: 32,
            stored_len: raw_len,
            raw_len,
            codec: 0,
            crc: 0,
        }
    }

    fn settings() -> CleanerSettings {
        CleanerSettings {
            min_cleanable_ratio: 0.5,
            min_lag_ms: 0,
            max_lag_ms: i64::MAX,
            delete_retention_ms: 86_400_000,
            segment_bytes: 1000,
            segment_ms: 10_000,
        }
    }

    #[test]
    fn the_head_and_the_stable_offset_bound_the_cleanable_range() {
        let now = 100_000;
        // Old blocks 0..3, then young ones of 400 bytes each.
        let blocks = vec![
            block(0, 9, 1_000, 400, 1),
            block(10, 19, 1_000, 400, 1),
            block(20, 29, 1_000, 400, 1),
            block(30, 39, now - 10, 400, 2),
            block(40, 49, now - 5, 400, 2),
            block(50, 59, now - 1, 400, 2),
        ];
        // The head: 50-59 always, 40-49 (800 < 1000); 30-39 would make it 1200.
        let r = cleanable_range(&blocks, |_| false, 60, now, &settings());
        assert_eq!((r.first_dirty, r.end), (0, 4));
        // An open transaction from offset 25 stops it at the block holding 25.
        let r = cleanable_range(&blocks, |_| false, 25, now, &settings());
        assert_eq!(r.end, 2);
        // min.compaction.lag.ms keeps the young blocks out.
        let mut s = settings();
        s.min_lag_ms = 50;
        let r = cleanable_range(&blocks, |_| false, 60, now, &s);
        assert_eq!(r.end, 3);
        // Old data past segment.ms is not head, even when small.
        let old = vec![block(0, 9, 1_000, 10, 1), block(10, 19, 1_000, 10, 1)];
        let r = cleanable_range(&old, |_| false, 20, now, &settings());
        assert_eq!(r.end, 1);
        // A single block is always the head.
        let r = cleanable_range(&old[..1], |_| false, 20, now, &settings());
        assert_eq!(r.end, 0);
    }

    #[test]
    fn cleaning_is_due_at_the_dirty_ratio_or_past_the_max_lag() {
        let now = 100_000;
        let blocks = vec![
            block(0, 9, 1_000, 600, 7),
            block(10, 19, 1_000, 400, 1),
            block(20, 29, now, 400, 1),
        ];
        let cleaned = |b: &BlockMeta| b.segment_id == 7;
        let r = cleanable_range(&blocks, cleaned, 30, now, &settings());
        assert_eq!(
            (r.first_dirty, r.end, r.clean_bytes, r.dirty_bytes),
            (1, 2, 600, 400)
        );
        assert!(!due(&r, &blocks, now, &settings()));
        let mut s = settings();
        s.min_cleanable_ratio = 0.4;
        assert!(due(&r, &blocks, now, &s));
        let mut s = settings();
        s.max_lag_ms = 1_000;
        assert!(due(&r, &blocks, now, &s));
        // Nothing dirty: never due.
        let r = cleanable_range(&blocks[..1], cleaned, 30, now, &settings());
        assert!(!due(&r, &blocks, now, &s));
    }

    #[test]
    fn the_offset_map_fits_the_dedupe_buffer() {
        // 128 MiB: 2^22 buckets of 25 bytes (105 MB), 7/8 of them usable.
        assert_eq!(map_capacity(128 << 20), (1 << 22) / 8 * 7);
        for bytes in [1u64 << 10, 1 << 20, 100 << 20, 128 << 20, 1 << 30] {
            let keys = map_capacity(bytes);
            let m: HashMap<u128, i64> = HashMap::with_capacity(keys);
            // hashbrown gives at least what was asked without a larger table than the bound.
            assert!(m.capacity() >= keys);
            let buckets = m.capacity() as u64 * 8 / 7;
            assert!(buckets * MAP_BUCKET_BYTES <= bytes, "{bytes}");
        }
        assert_eq!(map_capacity(0), 1);
    }

    #[test]
    fn key_hashes_differ_per_key_and_are_stable() {
        assert_eq!(key_hash(b"a"), key_hash(b"a"));
        assert_ne!(key_hash(b"a"), key_hash(b"b"));
        assert_ne!(key_hash(b""), key_hash(b"\0"));
    }
}
