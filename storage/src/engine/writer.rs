//! The write path: a sequencer task and a committer task, with several flushes in flight.
//!
//! The sequencer gathers the produce requests of all partitions for one flush, checks idempotent
//! producers' sequences, assigns offsets by patching baseOffset, encodes one block per partition and
//! starts making the flush durable: an append + fdatasync of the active segment on local disk, one object
//! PUT in an object store. It hands the flush to the committer and goes on with the next one, so up to
//! `max_inflight_flushes` flushes are in flight (PUTs overlap; on local disk the data fsync of one flush
//! overlaps the metadata commit of the one before).
//!
//! The committer takes flushes strictly in the order they were sequenced: it waits until a flush is
//! durable, commits its index rows, high watermarks and producer state in one metadata transaction, and
//! only then publishes the high watermarks, wakes fetch long-polls and answers the producers. Nothing is
//! acknowledged or readable before it is both durable and committed.
//!
//! Transactions: a transactional batch opens its producer's transaction on the partition (unless one is
//! open) only while the transaction coordinator says the producer's transaction holds the partition
//! (KIP-890's verification, asked at sequencing so a batch sequenced after the transaction's marker
//! is refused rather than left dangling); a marker (a control batch only the coordinator writes) ends
//! it. The last stable offset published with each block is the first offset of the oldest
//! transaction still open on the partition, else its high watermark; an ABORT marker adds the
//! transaction to the partition's aborted list, committed in the flush's transaction.
//!
//! A failed flush fails every flush sequenced after it (their offsets and sequence numbers followed
//! from it): the sequencer waits for the in-flight ones to finish, then rebuilds its state (next offsets,
//! producer state, the active segment) from the metadata store, as a restart would.

use bytes::Bytes;
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use streamhouse_protocol::{batch, control};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use uuid::Uuid;

use super::segments::Durable;
use super::{now_ms, AppendOutcome, AppendRequest, AppendResult, Partition, Storage, LEADER_EPOCH};
use crate::metadata::Commit;
use crate::producer::{AbortedTxn, ProducerEntry, SequenceCheck};
use crate::segment::{self, BlockMeta};
use crate::StorageError;

pub(super) type ProducerKey = (i64, Uuid, i32);

/// Owns the producer state and sequencing; the only task that writes flushes to the segment store.
pub(super) struct Writer {
    storage: Arc<Storage>,
    producers: HashMap<ProducerKey, ProducerEntry>,
    /// Per partition, the transactions open on it: (first offset, producer id). Derived from
    /// `producers` (their `txn_first_offset`), kept beside it to find the oldest at once.
    open_txns: HashMap<(Uuid, i32), BTreeSet<(i64, i64)>>,
    /// Next offset per partition, counting flushes that are in flight (not committed yet).
    next_offsets: HashMap<(Uuid, i32), i64>,
    /// Bumped at every reset after a failure; flushes of a failed generation are all failed.
    generation: u64,
    /// Flushes handed to the committer so far.
    sequenced: u64,
    /// The last durable step failed: rebuild state before the next flush.
    needs_reset: bool,
}

/// What the committer tells the sequencer.
struct Progress {
    /// Highest generation with a failed flush (0: none).
    failed_generation: AtomicU64,
    /// Number of flushes the committer has finished (committed or failed).
    finished: watch::Sender<u64>,
}

/// A sequenced flush on its way to the committer.
struct Flush {
    generation: u64,
    durable: Durable,
    commit: Commit,
    published: Vec<Published>,
    requests: Vec<AppendRequest>,
    results: Vec<Vec<Option<AppendResult>>>,
    /// Batches answered with an offset once this flush commits: (request, batch, base offset, partition).
    /// Duplicates of an earlier batch are here too, so they are never acknowledged before the flush that
    /// holds the original is committed (commits happen in order).
    staged: Vec<(usize, usize, i64, Arc<Partition>)>,
    _permit: OwnedSemaphorePermit,
}

/// What a committed flush makes visible in one partition.
struct Published {
    partition: Arc<Partition>,
    block: BlockMeta,
    high_watermark: i64,
    last_stable_offset: i64,
    aborted: Vec<AbortedTxn>,
    /// The block's raw batches, for the cache.
    raw: Bytes,
}

/// A partition's share of one flush.
pub(super) struct PartitionBlock {
    partition: Arc<Partition>,
    base_offset: i64,
    next_offset: i64,
    max_timestamp: i64,
    compressible: bool,
    raw: Vec<u8>,
    /// Transactions its ABORT markers ended.
    aborted: Vec<AbortedTxn>,
}

impl PartitionBlock {
    /// Appends a batch at the partition's next offset (patching its baseOffset); returns that offset.
    fn append(&mut self, b: &super::AppendBatch) -> i64 {
        let h = &b.header;
        let base = self.next_offset;
        let at = self.raw.len();
        self.raw.extend_from_slice(&b.data);
        batch::patch_offsets(&mut self.raw[at..], base, LEADER_EPOCH);
        self.next_offset += h.offset_count();
        self.max_timestamp = self.max_timestamp.max(h.max_timestamp);
        self.compressible &= h.compression() == 0;
        base
    }
}

/// The open transactions per partition, from producer state.
fn open_txns(
    producers: &HashMap<ProducerKey, ProducerEntry>,
) -> HashMap<(Uuid, i32), BTreeSet<(i64, i64)>> {
    let mut open: HashMap<(Uuid, i32), BTreeSet<(i64, i64)>> = HashMap::new();
    for ((pid, topic, partition), e) in producers {
        if let Some(first) = e.txn_first_offset {
            open.entry((*topic, *partition))
                .or_default()
                .insert((first, *pid));
        }
    }
    open
}

impl Writer {
    pub(super) fn new(
        storage: Arc<Storage>,
        producers: HashMap<ProducerKey, ProducerEntry>,
    ) -> Self {
        Self {
            storage,
            open_txns: open_txns(&producers),
            producers,
            next_offsets: HashMap::new(),
            generation: 1,
            sequenced: 0,
            needs_reset: false,
        }
    }

    pub(super) async fn run(mut self, mut rx: mpsc::Receiver<AppendRequest>) {
        let interval = self.storage.config.flush_interval;
        let max_bytes = self.storage.config.flush_max_bytes;
        let permits = Arc::new(Semaphore::new(
            self.storage.config.max_inflight_flushes.max(1),
        ));
        let progress = Arc::new(Progress {
            failed_generation: AtomicU64::new(0),
            finished: watch::channel(0).0,
        });
        let (to_committer, committer_rx) = mpsc::unbounded_channel();
        let committer = tokio::spawn(commit_loop(
            self.storage.clone(),
            committer_rx,
            progress.clone(),
        ));
        let mut expiry =
            tokio::time::interval(self.storage.config.producer_id_expiration_check_interval);
        expiry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        expiry.tick().await;
        loop {
            // A slot in the pipeline first: while every slot is busy, requests keep queueing and
            // then form one larger flush.
            let Ok(permit) = permits.clone().acquire_owned().await else {
                break;
            };
            let first = tokio::select! {
                r = rx.recv() => match r {
                    Some(first) => first,
                    None => break,
                },
                _ = expiry.tick() => {
                    // Expired producer state leaves memory now and the metadata store with the
                    // flushes, in order (a flush in flight cannot write it back afterwards).
                    let expired = self.expire_producers(now_ms());
                    if !expired.is_empty() {
                        let flush = self.expiry_flush(expired, permit);
                        self.sequenced += 1;
                        if to_committer.send(flush).is_err() {
                            break;
                        }
                    }
                    continue;
                }
            };
            // The window counts from the first request's arrival, so time spent waiting for a slot
            // is not added to it.
            let deadline = first.queued_at + interval;
            let mut pending_bytes = size_of(&first);
            let mut pending = vec![first];
            while pending_bytes < max_bytes {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(req)) => {
                        pending_bytes += size_of(&req);
                        pending.push(req);
                    }
                    Ok(None) | Err(_) => break,
                }
            }
            if self.needs_reset
                || progress.failed_generation.load(Ordering::Acquire) >= self.generation
            {
                // Let everything in flight finish (it fails or has committed), then start again from
                // what the metadata store holds.
                let sequenced = self.sequenced;
                let _ = progress
                    .finished
                    .subscribe()
                    .wait_for(|f| *f >= sequenced)
                    .await;
                if let Err(e) = self.reset().await {
                    tracing::error!(error = %e, "writer cannot reload its state; failing produce requests");
                    self.needs_reset = true;
                    fail_all(pending, &e);
                    continue;
                }
            }
            if *progress.finished.borrow() >= self.sequenced {
                // Nothing in flight: the published high watermarks are the next offsets.
                self.next_offsets.clear();
            }
            let flush = self.sequence(pending, permit).await;
            self.sequenced += 1;
            if to_committer.send(flush).is_err() {
                break;
            }
        }
        drop(to_committer);
        let _ = committer.await;
        tracing::debug!("writer stopped");
    }

    /// Drops producer state idle for producer.id.expiration.ms (Kafka's ProducerStateManager
    /// .removeExpiredProducers), and past max_producer_states the longest idle beyond that. Returns
    /// what was dropped.
    fn expire_producers(&mut self, now_ms: i64) -> Vec<ProducerKey> {
        let cfg = &self.storage.config;
        let ttl = cfg.producer_id_expiration_ms;
        // A producer with a transaction open never expires (Kafka's removeExpiredProducers skips
        // entries with a currentTxnFirstOffset): its state holds the last stable offset.
        let mut expired: Vec<ProducerKey> = self
            .producers
            .iter()
            .filter(|(_, e)| e.txn_first_offset.is_none())
            .filter(|(_, e)| ttl >= 0 && now_ms - e.last_append_ms >= ttl)
            .map(|(k, _)| *k)
            .collect();
        for k in &expired {
            self.producers.remove(k);
        }
        if self.producers.len() > cfg.max_producer_states {
            let mut by_age: Vec<(i64, ProducerKey)> = self
                .producers
                .iter()
                .filter(|(_, e)| e.txn_first_offset.is_none())
                .map(|(k, e)| (e.last_append_ms, *k))
                .collect();
            by_age.sort_unstable();
            let excess = self.producers.len() - cfg.max_producer_states;
            tracing::warn!(
                dropped = excess,
                "more idempotent producer states than max.producer.states; dropping the longest idle"
            );
            for (_, k) in by_age.into_iter().take(excess) {
                self.producers.remove(&k);
                expired.push(k);
            }
        }
        expired
    }

    /// A flush that only removes expired producer state.
    fn expiry_flush(&self, expired: Vec<ProducerKey>, permit: OwnedSemaphorePermit) -> Flush {
        Flush {
            generation: self.generation,
            durable: Durable::Done(Ok(())),
            commit: Commit {
                expired_producers: expired,
                ..Default::default()
            },
            published: Vec::new(),
            requests: Vec::new(),
            results: Vec::new(),
            staged: Vec::new(),
            _permit: permit,
        }
    }

    /// Rebuilds the writer's state from the metadata store after a failed flush.
    async fn reset(&mut self) -> Result<(), StorageError> {
        let storage = self.storage.clone();
        let producers = tokio::task::spawn_blocking(move || {
            let snap = storage.meta.load()?;
            storage.reconcile_segments(&snap)?;
            Ok::<_, StorageError>(snap.producers)
        })
        .await
        .map_err(|_| StorageError::TaskFailed("reloading the writer's state"))??;
        self.producers = producers.into_iter().collect();
        self.open_txns = open_txns(&self.producers);
        self.next_offsets.clear();
        self.needs_reset = false;
        self.generation += 1;
        tracing::info!(
            generation = self.generation,
            "writer state reloaded after a failed flush"
        );
        Ok(())
    }

    /// Sequences one flush and starts making it durable.
    async fn sequence(
        &mut self,
        requests: Vec<AppendRequest>,
        permit: OwnedSemaphorePermit,
    ) -> Flush {
        let mut results: Vec<Vec<Option<AppendResult>>> = requests
            .iter()
            .map(|r| (0..r.batches.len()).map(|_| None).collect())
            .collect();
        let mut blocks: Vec<PartitionBlock> = Vec::new();
        let mut block_of: HashMap<(Uuid, i32), usize> = HashMap::new();
        let mut touched: Vec<ProducerKey> = Vec::new();
        let mut staged = Vec::new();

        for (ri, req) in requests.iter().enumerate() {
            for (bi, b) in req.batches.iter().enumerate() {
                let live = self.storage.topic_by_id(b.topic.id).is_some();
                let Some(partition) = b
                    .topic
                    .partitions
                    .get(b.partition as usize)
                    .filter(|_| live)
                else {
                    results[ri][bi] = Some(Err(StorageError::UnknownTopicOrPartition));
                    continue;
                };
                let key = (b.topic.id, b.partition);
                let next_offsets = &self.next_offsets;
                let slot = *block_of.entry(key).or_insert_with(|| {
                    let next = next_offsets
                        .get(&key)
                        .copied()
                        .unwrap_or_else(|| partition.high_watermark());
                    blocks.push(PartitionBlock {
                        partition: partition.clone(),
                        base_offset: next,
                        next_offset: next,
                        max_timestamp: -1,
                        compressible: true,
                        raw: Vec::new(),
                        aborted: Vec::new(),
                    });
                    blocks.len() - 1
                });
                let h = &b.header;
                let pkey = (h.producer_id, b.topic.id, b.partition);
                if h.is_control() {
                    // A transaction marker (only the coordinator writes them; produce refuses
                    // control batches from clients).
                    if let Err(e) =
                        ProducerEntry::check_marker(self.producers.get(&pkey), h.producer_epoch)
                    {
                        results[ri][bi] = Some(Err(e));
                        continue;
                    }
                    let commit = control::marker_kind(&b.data) == Some(true);
                    let base = blocks[slot].append(b);
                    let entry = self.producers.entry(pkey).or_default();
                    if let Some(first) = entry.record_marker(h.producer_epoch, now_ms()) {
                        if let Some(open) = self.open_txns.get_mut(&key) {
                            open.remove(&(first, h.producer_id));
                        }
                        if !commit {
                            blocks[slot].aborted.push(AbortedTxn {
                                producer_id: h.producer_id,
                                first_offset: first,
                                last_offset: base,
                            });
                        }
                    }
                    touched.push(pkey);
                    staged.push((ri, bi, base, partition.clone()));
                    continue;
                }
                let idempotent = h.has_producer_id() && h.base_sequence >= 0;
                if idempotent {
                    match ProducerEntry::check(self.producers.get(&pkey), h) {
                        Err(e) => {
                            results[ri][bi] = Some(Err(e));
                            continue;
                        }
                        Ok(SequenceCheck::Duplicate { base_offset }) => {
                            staged.push((ri, bi, base_offset, partition.clone()));
                            continue;
                        }
                        Ok(SequenceCheck::Append) => {}
                    }
                }
                if h.is_transactional() {
                    let open_here = self.producers.get(&pkey).is_some_and(|e| {
                        e.txn_first_offset.is_some() && e.epoch == h.producer_epoch
                    });
                    // A batch that would open the transaction here must be in the coordinator's
                    // ongoing transaction of this producer and epoch; one sequenced after the
                    // marker finds the transaction ended.
                    if !open_here {
                        if let Err(e) = self.storage.verify_transaction(
                            h.producer_id,
                            h.producer_epoch,
                            b.topic.id,
                            b.partition,
                        ) {
                            results[ri][bi] = Some(Err(e));
                            continue;
                        }
                    }
                    if !idempotent {
                        // Kafka: a transactional batch must carry a sequence (InvalidRecordException).
                        results[ri][bi] = Some(Err(StorageError::InvalidTxnState));
                        continue;
                    }
                }
                let base = blocks[slot].append(b);
                if idempotent {
                    let entry = self.producers.entry(pkey).or_default();
                    let was_open = entry.txn_first_offset.is_some();
                    entry.record(h, base, now_ms());
                    if let (false, Some(first)) = (was_open, entry.txn_first_offset) {
                        self.open_txns
                            .entry(key)
                            .or_default()
                            .insert((first, h.producer_id));
                    }
                    touched.push(pkey);
                }
                staged.push((ri, bi, base, partition.clone()));
            }
        }
        blocks.retain(|b| !b.raw.is_empty());
        for b in &blocks {
            self.next_offsets
                .insert((b.partition.topic_id, b.partition.index), b.next_offset);
        }
        // The last stable offset each block publishes: the oldest transaction still open after this
        // flush, else the new high watermark.
        let stable: Vec<i64> = blocks
            .iter()
            .map(|b| {
                let key = (b.partition.topic_id, b.partition.index);
                self.open_txns
                    .get(&key)
                    .and_then(|open| open.first())
                    .map_or(b.next_offset, |(first, _)| *first)
            })
            .collect();
        self.open_txns.retain(|_, open| !open.is_empty());
        touched.sort_unstable();
        touched.dedup();
        let mut commit = Commit {
            producers: touched
                .into_iter()
                .map(|k| (k, self.producers.get(&k).cloned().unwrap_or_default()))
                .collect(),
            aborted: blocks
                .iter()
                .flat_map(|b| {
                    let (t, p) = (b.partition.topic_id, b.partition.index);
                    b.aborted.iter().map(move |a| (t, p, *a))
                })
                .collect(),
            ..Default::default()
        };

        let (durable, encoded) = if blocks.is_empty() {
            (Durable::Done(Ok(())), None)
        } else {
            let (durable, encoded) = self
                .storage
                .segments
                .write_flush(&blocks, &mut commit)
                .await;
            if matches!(durable, Durable::Done(Err(_))) {
                // A local append failed part-way: rebuild from what is committed before the next one.
                self.needs_reset = true;
            }
            (durable, Some(encoded))
        };
        let published = match encoded {
            Some(enc) => {
                commit.blocks = enc.metas.clone();
                commit.high_watermarks = enc.high_watermarks;
                blocks
                    .iter()
                    .zip(stable)
                    .zip(enc.metas)
                    .zip(enc.raws)
                    .map(|(((b, last_stable_offset), block), raw)| Published {
                        partition: b.partition.clone(),
                        block,
                        high_watermark: b.next_offset,
                        last_stable_offset,
                        aborted: b.aborted.clone(),
                        raw,
                    })
                    .collect()
            }
            None => Vec::new(),
        };
        Flush {
            generation: self.generation,
            durable,
            commit,
            published,
            requests,
            results,
            staged,
            _permit: permit,
        }
    }
}

/// Commits flushes in the order they were sequenced, then publishes and answers them.
async fn commit_loop(
    storage: Arc<Storage>,
    mut rx: mpsc::UnboundedReceiver<Flush>,
    progress: Arc<Progress>,
) {
    while let Some(flush) = rx.recv().await {
        let Flush {
            generation,
            durable,
            commit,
            published,
            requests,
            mut results,
            staged,
            _permit,
        } = flush;
        let started = std::time::Instant::now();
        let earlier_failed = progress.failed_generation.load(Ordering::Acquire) >= generation;
        let mut uploaded = None;
        let outcome = if earlier_failed {
            if let Durable::Upload { segment_id, task } = durable {
                let _ = task.await;
                uploaded = Some(segment_id);
            }
            Err(StorageError::FlushFailed(
                "an earlier flush failed".to_string(),
            ))
        } else {
            let durable = match durable {
                Durable::Done(r) => r,
                Durable::Upload { segment_id, task } => {
                    uploaded = Some(segment_id);
                    task.await
                        .unwrap_or(Err(StorageError::TaskFailed("an upload")))
                }
            };
            match durable {
                Ok(()) if commit.is_empty() => Ok(()),
                Ok(()) => {
                    let meta = storage.meta.clone();
                    tokio::task::spawn_blocking(move || meta.commit(&commit))
                        .await
                        .unwrap_or(Err(StorageError::TaskFailed("a metadata commit")))
                }
                Err(e) => Err(e),
            }
        };
        match &outcome {
            Ok(()) => {
                if !published.is_empty() {
                    for p in published {
                        p.partition.publish(
                            p.block,
                            p.high_watermark,
                            p.last_stable_offset,
                            &p.aborted,
                        );
                        // Blocks just written are served from memory.
                        storage
                            .cache
                            .insert_written(p.block.segment_id, p.block.position, p.raw);
                    }
                    storage.commits.send_modify(|c| *c += 1);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, generation, "flush failed; producers get a retriable error");
                progress
                    .failed_generation
                    .fetch_max(generation, Ordering::AcqRel);
                if let Some(id) = uploaded {
                    // Never committed: remove it now rather than at the next start.
                    let storage = storage.clone();
                    tokio::spawn(async move { storage.discard_uploads(vec![id]).await });
                }
            }
        }
        for (ri, bi, base, partition) in staged {
            results[ri][bi] = Some(match &outcome {
                Ok(()) => Ok(AppendOutcome {
                    base_offset: base,
                    log_start_offset: partition.log_start_offset(),
                }),
                Err(e) => Err(StorageError::FlushFailed(e.to_string())),
            });
        }
        for (req, res) in requests.into_iter().zip(results) {
            let res = res
                .into_iter()
                .map(|r| r.unwrap_or(Err(StorageError::TaskFailed("sequencing a batch"))))
                .collect();
            let _ = req.reply.send(res);
        }
        tracing::trace!(
            micros = started.elapsed().as_micros() as u64,
            "flush committed"
        );
        progress.finished.send_modify(|f| *f += 1);
    }
}

fn fail_all(requests: Vec<AppendRequest>, e: &StorageError) {
    for req in requests {
        let res = req
            .batches
            .iter()
            .map(|_| Err(StorageError::FlushFailed(e.to_string())))
            .collect();
        let _ = req.reply.send(res);
    }
}

/// A flush's blocks, encoded back to back for one segment from `position` on.
pub(super) struct EncodedFlush {
    pub(super) bytes: Vec<u8>,
    pub(super) metas: Vec<BlockMeta>,
    /// The uncompressed batches of each block, for the cache.
    pub(super) raws: Vec<Bytes>,
    pub(super) high_watermarks: Vec<(Uuid, i32, i64)>,
}

pub(super) fn encode_flush(
    blocks: &[PartitionBlock],
    segment_id: u64,
    mut position: u64,
) -> EncodedFlush {
    let mut out = EncodedFlush {
        bytes: Vec::new(),
        metas: Vec::with_capacity(blocks.len()),
        raws: Vec::with_capacity(blocks.len()),
        high_watermarks: Vec::with_capacity(blocks.len()),
    };
    for blk in blocks {
        let meta = BlockMeta {
            topic_id: blk.partition.topic_id,
            partition: blk.partition.index,
            base_offset: blk.base_offset,
            last_offset: blk.next_offset - 1,
            max_timestamp: blk.max_timestamp,
            segment_id,
            position,
            stored_len: 0,
            raw_len: 0,
            codec: 0,
            crc: 0,
        };
        let (bytes, meta) = segment::encode_block(meta, &blk.raw, blk.compressible);
        position += bytes.len() as u64;
        out.bytes.extend_from_slice(&bytes);
        out.metas.push(meta);
        out.raws.push(Bytes::copy_from_slice(&blk.raw));
        out.high_watermarks
            .push((meta.topic_id, meta.partition, blk.next_offset));
    }
    out
}

fn size_of(req: &AppendRequest) -> usize {
    req.batches.iter().map(|b| b.data.len()).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(partition: i32, base: i64, raw: &[u8]) -> PartitionBlock {
        PartitionBlock {
            partition: Arc::new(Partition::new(Uuid::nil(), partition)),
            base_offset: base,
            next_offset: base + 5,
            max_timestamp: 7,
            compressible: true,
            raw: raw.to_vec(),
            aborted: Vec::new(),
        }
    }

    #[test]
    fn a_flush_is_encoded_back_to_back_with_its_index_rows_and_watermarks() {
        let blocks = [block(0, 10, &[1u8; 300]), block(1, 0, &[2u8; 50])];
        let enc = encode_flush(&blocks, 9, 32);
        assert_eq!(enc.metas.len(), 2);
        assert_eq!(enc.metas[0].position, 32);
        assert_eq!(enc.metas[1].position, 32 + enc.metas[0].total_len());
        assert_eq!(
            enc.bytes.len() as u64,
            enc.metas.iter().map(|m| m.total_len()).sum::<u64>()
        );
        assert_eq!(
            (
                enc.metas[0].base_offset,
                enc.metas[0].last_offset,
                enc.metas[0].segment_id
            ),
            (10, 14, 9)
        );
        assert_eq!(
            enc.high_watermarks,
            vec![(Uuid::nil(), 0, 15), (Uuid::nil(), 1, 5)]
        );
        assert_eq!(
            &enc.raws[1][..],
            &[2u8; 50][..],
            "the cache gets the raw batches"
        );
        // Each block decodes back to what was written.
        for (m, raw) in enc.metas.iter().zip(&enc.raws) {
            let at = (m.position - 32) as usize;
            let stored = &enc.bytes[at..at + m.total_len() as usize];
            assert_eq!(segment::decode_block(m, stored).unwrap(), raw);
        }
    }
}
