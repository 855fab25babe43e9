//! The read path: batches from an offset through the block cache, planned against the partition's
//! block index (`index::plan_read`), with the loads for what is not cached coalesced into one ranged
//! read per run of blocks and run concurrently; on a remote store (S3) also prefetch across a fetch's
//! partitions and read-ahead for consumers reading behind the cached tail. ListOffsets by timestamp
//! reads one batch through the bounded reader.

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use std::sync::Arc;
use streamhouse_protocol::batch;
use streamhouse_protocol::compression::Inflater;

use super::{Isolation, Partition, ReadResult, Storage};
use crate::segment::{self, BlockMeta};
use crate::StorageError;

impl Storage {
    /// Reads whole batches from `offset`, up to `max_bytes`; with `min_one`, the first batch is returned
    /// even if larger (KIP-74), so a consumer can always make progress.
    ///
    /// At read_committed the read stops at the last stable offset and reports the aborted
    /// transactions overlapping what it returns (Kafka's fetch with maxOffset = LSO and
    /// collectAbortedTransactions over [offset, end of the returned batches)).
    pub async fn read(
        self: &Arc<Self>,
        partition: &Partition,
        offset: i64,
        max_bytes: usize,
        min_one: bool,
        isolation: Isolation,
    ) -> Result<ReadResult, StorageError> {
        let (hwm, stable, lso) = partition.offsets();
        let upper = match isolation {
            Isolation::ReadUncommitted => hwm,
            Isolation::ReadCommitted => stable,
        };
        let result = |records, aborted| ReadResult {
            high_watermark: hwm,
            last_stable_offset: stable,
            log_start_offset: lso,
            records,
            aborted,
        };
        if offset < lso || offset > hwm {
            return Err(StorageError::OffsetOutOfRange {
                offset,
                log_start: lso,
                high_watermark: hwm,
            });
        }
        if offset >= upper || (max_bytes == 0 && !min_one) {
            return Ok(result(Bytes::new(), Vec::new()));
        }
        let plan = self.plan(partition, offset, max_bytes, self.coalesce_bytes());
        let missed = !plan.loads.is_empty();
        if plan.loads.len() > 1 {
            // Fetch the missing runs concurrently rather than one after another; errors surface below,
            // where each block is read in order.
            let _ = self.load_runs(partition, plan.loads).await;
        }
        let mut parts: Vec<Bytes> = Vec::new();
        let mut total = 0usize;
        let mut next_offset = offset;
        // The offset after the last batch returned.
        let mut end = None;
        'blocks: for meta in plan.blocks {
            let raw = self.block(partition, &meta).await?;
            next_offset = meta.last_offset + 1;
            for (pos, h) in batch::batches(&raw) {
                if h.last_offset() < offset || h.base_offset >= upper {
                    continue;
                }
                let size = h.total_size();
                if total + size > max_bytes && !(min_one && total == 0) {
                    break 'blocks;
                }
                parts.push(raw.slice(pos..pos + size));
                total += size;
                end = Some(h.last_offset() + 1);
            }
        }
        if missed && self.segments.remote() {
            // A consumer reading from the store (behind the cached tail): fetch what it reads next.
            self.read_ahead(partition, next_offset);
        }
        let aborted = match (isolation, end) {
            (Isolation::ReadCommitted, Some(end)) => partition.aborted_between(offset, end),
            _ => Vec::new(),
        };
        Ok(result(concat(parts), aborted))
    }

    /// The read plan for `max_bytes` from `offset`, loads grouped into runs of at most `max_run` bytes.
    fn plan(
        &self,
        partition: &Partition,
        offset: i64,
        max_bytes: usize,
        max_run: u64,
    ) -> super::index::ReadPlan {
        partition.plan_read(offset, max_bytes, max_run, |b| {
            self.cache.contains(b.segment_id, b.position)
        })
    }

    /// An upper bound of the record bytes [`read`](Self::read) returns for the same arguments, from the
    /// block index alone (no I/O): the raw bytes of the blocks it would take batches from. With
    /// `min_one`, at least the first of those blocks (KIP-74 returns its first batch whole).
    pub fn read_bound(
        &self,
        partition: &Partition,
        offset: i64,
        max_bytes: usize,
        min_one: bool,
    ) -> usize {
        let (hwm, lso) = partition.watermarks();
        if offset < lso || offset >= hwm || (max_bytes == 0 && !min_one) {
            return 0;
        }
        partition
            .blocks_from(offset, max_bytes.max(1))
            .iter()
            .map(|b| b.raw_len as usize)
            .sum()
    }

    /// Starts loading, in the background, the blocks a read of `max_bytes` from `offset` will need and
    /// the cache lacks, where a read costs a round trip (a remote store; nothing to do on local disk).
    /// A fetch over many partitions calls it for all of them first, so their loads overlap instead of
    /// running one partition after the other.
    pub fn prefetch(self: &Arc<Self>, partition: &Partition, offset: i64, max_bytes: usize) {
        if !self.segments.remote() || max_bytes == 0 {
            return;
        }
        let plan = self.plan(partition, offset, max_bytes, self.coalesce_bytes());
        if plan.loads.is_empty() {
            return;
        }
        let Ok(permit) = self.prefetch_permits.clone().try_acquire_owned() else {
            return;
        };
        let Some(partition) = self.live_partition(partition) else {
            return;
        };
        let storage = self.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _ = storage.load_runs(&partition, plan.loads).await;
        });
    }

    /// Bytes fetched ahead of one partition's reader: read_ahead_bytes, but at most 1/32 of the cache part
    /// that holds blocks read back, so that what many partitions fetched ahead is still there when
    /// their consumers get to it. Also the most one coalesced read covers.
    fn coalesce_bytes(&self) -> u64 {
        self.config
            .read_ahead_bytes
            .min((self.cache.loaded_capacity() / 32) as usize) as u64
    }

    /// Loads the blocks after `offset` (up to the read-ahead budget) into the cache in the background,
    /// with at most a few read-aheads running at once.
    fn read_ahead(self: &Arc<Self>, partition: &Partition, offset: i64) {
        let ahead = self.coalesce_bytes();
        if ahead == 0 {
            return;
        }
        let Ok(permit) = self.read_ahead_permits.clone().try_acquire_owned() else {
            return;
        };
        let plan = self.plan(partition, offset, ahead as usize, ahead);
        if plan.loads.is_empty() {
            return;
        }
        let Some(partition) = self.live_partition(partition) else {
            return;
        };
        let storage = self.clone();
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = storage.load_runs(&partition, plan.loads).await {
                tracing::debug!(error = %e, "read-ahead stopped");
            }
        });
    }

    /// The catalog's `Arc` of a partition, for background work that outlives the caller's borrow.
    fn live_partition(&self, partition: &Partition) -> Option<Arc<Partition>> {
        self.topic_by_id(partition.topic_id)
            .and_then(|t| t.partition(partition.index).cloned())
    }

    /// Loads runs of blocks into the cache, up to 8 reads at once.
    async fn load_runs(
        &self,
        partition: &Partition,
        starts: Vec<BlockMeta>,
    ) -> Result<(), StorageError> {
        let loads = starts
            .into_iter()
            .map(|m| async move { self.block(partition, &m).await });
        let mut loads = futures_util::stream::iter(loads).buffer_unordered(8);
        while let Some(r) = loads.next().await {
            r?;
        }
        Ok(())
    }

    /// The first offset at or after the log start whose record timestamp is >= `timestamp`, with that
    /// timestamp (ListOffsets; Kafka's FileRecords.searchForTimestamp). Batches are picked by their
    /// header's maxTimestamp; only a candidate is decompressed, through `inflater` (bounded, on a
    /// blocking thread).
    pub async fn offset_for_timestamp(
        &self,
        partition: &Partition,
        timestamp: i64,
        inflater: &Inflater,
    ) -> Result<Option<(i64, i64)>, StorageError> {
        let log_start = partition.log_start_offset();
        for meta in partition
            .all_blocks()
            .into_iter()
            .filter(|b| b.max_timestamp >= timestamp && b.last_offset >= log_start)
        {
            let raw = self.block(partition, &meta).await?;
            for (pos, h) in batch::batches(&raw) {
                if h.max_timestamp < timestamp || h.last_offset() < log_start {
                    continue;
                }
                let one = raw.slice(pos..pos + h.total_size());
                let found = records_with_timestamps(inflater, &meta, one, move |offset, ts| {
                    ts >= timestamp && offset >= log_start
                })
                .await?;
                // A header claiming more than its records hold is passed over, as Kafka does.
                if found.is_some() {
                    return Ok(found);
                }
            }
        }
        Ok(None)
    }

    /// The offset and timestamp of the record with the largest timestamp (ListOffsets MAX_TIMESTAMP):
    /// as Kafka, the earliest batch whose header maxTimestamp is the partition's largest, and in it the
    /// first record with that timestamp. Only that batch is decompressed.
    pub async fn max_timestamp_offset(
        &self,
        partition: &Partition,
        inflater: &Inflater,
    ) -> Result<Option<(i64, i64)>, StorageError> {
        let blocks = partition.all_blocks();
        let Some(best) = blocks
            .iter()
            .max_by_key(|b| (b.max_timestamp, -b.base_offset))
        else {
            return Ok(None);
        };
        let raw = self.block(partition, best).await?;
        let max = best.max_timestamp;
        for (pos, h) in batch::batches(&raw) {
            if h.max_timestamp != max {
                continue;
            }
            let one = raw.slice(pos..pos + h.total_size());
            let found =
                records_with_timestamps(inflater, best, one, move |_, ts| ts == max).await?;
            if found.is_some() {
                return Ok(found);
            }
        }
        Ok(None)
    }

    /// A block's raw batches, from the cache or the segment store. On a remote store one read also
    /// fetches the partition's blocks stored right after it in the same segment (up to the read-ahead
    /// budget; compacted objects hold one partition's blocks back to back), and those go to the cache
    /// too. Concurrent misses on one block share a single read (the cache's single-flight insert).
    async fn block(&self, partition: &Partition, meta: &BlockMeta) -> Result<Bytes, StorageError> {
        let m = *meta;
        self.cache
            .get_or_load(meta.segment_id, meta.position, async move {
                let run = if self.segments.remote() {
                    partition.run_from(&m, self.coalesce_bytes())
                } else {
                    vec![m]
                };
                let end = run
                    .last()
                    .map(|b| b.position + b.total_len())
                    .unwrap_or(m.position + m.total_len());
                let bytes = self
                    .segments
                    .read(m.segment_id, m.position, end - m.position)
                    .await?;
                let mut first = None;
                for b in &run {
                    let at = (b.position - m.position) as usize;
                    let stored = bytes.get(at..at + b.total_len() as usize).ok_or(
                        StorageError::CorruptBlock {
                            segment_id: b.segment_id,
                            position: b.position,
                            reason: "segment shorter than its index says",
                        },
                    )?;
                    if b.position == m.position {
                        first = Some(segment::decode_block(b, stored)?);
                    } else if !self.cache.contains(b.segment_id, b.position) {
                        self.cache.insert_loaded(
                            b.segment_id,
                            b.position,
                            segment::decode_block(b, stored)?,
                        );
                    }
                }
                first.ok_or(StorageError::CorruptBlock {
                    segment_id: m.segment_id,
                    position: m.position,
                    reason: "block missing from its own read",
                })
            })
            .await
    }
}

fn concat(parts: Vec<Bytes>) -> Bytes {
    match parts.len() {
        0 => Bytes::new(),
        1 => parts.into_iter().next().unwrap_or_default(),
        _ => {
            let mut out = BytesMut::with_capacity(parts.iter().map(|p| p.len()).sum());
            for p in parts {
                out.extend_from_slice(&p);
            }
            out.freeze()
        }
    }
}

/// The first record of one stored batch for which `pick(offset, timestamp)` holds, read on a blocking
/// thread through the bounded streaming reader (a stored bomb is an error, never an allocation).
async fn records_with_timestamps(
    inflater: &Inflater,
    meta: &BlockMeta,
    batch: Bytes,
    pick: impl FnMut(i64, i64) -> bool + Send + 'static,
) -> Result<Option<(i64, i64)>, StorageError> {
    let found = inflater
        .run(move |limit| streamhouse_protocol::records::find_record(&batch, limit, pick))
        .await
        .ok_or(StorageError::TaskFailed("a decompression"))?;
    found.map_err(|e| StorageError::CorruptBlock {
        segment_id: meta.segment_id,
        position: meta.position,
        reason: match e {
            batch::BatchError::DecompressedTooLarge(_) => {
                "a batch decompresses to more than message.max.decompressed.bytes"
            }
            _ => "a batch's records do not parse",
        },
    })
}
