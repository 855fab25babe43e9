//! Segment I/O behind one interface, [`SegmentStore`], with two implementations: [`LocalSegments`]
//! (files under `<data dir>/segments`, one active segment appended to and fsync'd) and
//! [`ObjectStoreSegments`] (one object per flush, PUT after its upload intent is recorded). The choice
//! is made once, in `Storage::open`; the rest of the engine, and every Kafka handler, calls the store
//! and never asks which one it is. What differs is stated as one capability, [`SegmentStore::remote`]:
//! a request costs a round trip, so reads coalesce following blocks, fetches prefetch and read ahead,
//! and small flush segments are compacted.

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::now_ms;
use super::writer::{encode_flush, EncodedFlush, PartitionBlock};
use crate::metadata::{Commit, MetadataStore, SegmentRecord, Snapshot};
use crate::object::{ObjectCounters, ObjectSegments};
use crate::segment::{self, ActiveSegment};
use crate::StorageError;

/// Segment ids: handed out in increasing order from 1, never reused (not even those of uploads never
/// committed).
pub(super) struct SegmentIds(AtomicU64);

impl SegmentIds {
    pub(super) fn new() -> Self {
        Self(AtomicU64::new(1))
    }
    pub(super) fn next(&self) -> u64 {
        self.0.fetch_add(1, Ordering::Relaxed)
    }
    pub(super) fn reserve_above(&self, id: u64) {
        self.0.fetch_max(id + 1, Ordering::Relaxed);
    }
}

/// How a flush is being made durable.
pub(super) enum Durable {
    /// Already durable (or failed) when handed over: local appends, flushes without blocks.
    Done(Result<(), StorageError>),
    /// An object PUT in progress.
    Upload {
        segment_id: u64,
        task: tokio::task::JoinHandle<Result<(), StorageError>>,
    },
}

pub(super) trait SegmentStore: Send + Sync {
    /// Whether a request costs a round trip (an object store): reads then fetch a partition's following
    /// blocks too, fetches prefetch and read ahead, and small flush segments are compacted.
    fn remote(&self) -> bool;

    /// `len` stored bytes of segment `id` from `position`.
    fn read(&self, id: u64, position: u64, len: u64) -> BoxFuture<'_, Result<Bytes, StorageError>>;

    /// Deletes segments (one already gone is fine).
    fn delete(&self, ids: Vec<u64>) -> BoxFuture<'_, Result<(), StorageError>>;

    /// Starts making a flush's blocks durable: encodes them for their segment, records the segment rows
    /// in `commit`, and writes them (local: appended and fsync'd before this returns; object store:
    /// one PUT, in flight).
    fn write_flush<'a>(
        &'a self,
        blocks: &'a [PartitionBlock],
        commit: &'a mut Commit,
    ) -> BoxFuture<'a, (Durable, EncodedFlush)>;

    /// Writes whole segments (compaction's output); their upload intents first.
    fn write_segments(
        &self,
        segments: Vec<(u64, Vec<u8>)>,
    ) -> BoxFuture<'_, Result<(), StorageError>>;

    /// Brings what is stored in line with the metadata snapshot, as at a restart (also after a failed
    /// flush): local files never committed are removed and the active segment is cut back to its last
    /// committed block. Returns the highest segment id it saw. Runs on a blocking thread.
    fn recover(&self, snap: &Snapshot) -> Result<u64, StorageError>;

    /// Object-store request counters (none for local files).
    fn counters(&self) -> Option<ObjectCounters>;
}

// ---- local files --------------------------------------------------------------------------------

/// Segments as files under one folder, with one active segment that flushes append to.
pub(super) struct LocalSegments {
    dir: PathBuf,
    ids: Arc<SegmentIds>,
    segment_bytes: u64,
    segment_ms: i64,
    /// The segment flushes append to. Only the writer's sequencer appends, one flush at a time; the
    /// lock is held by the blocking task doing the append (never across an await).
    active: Arc<Mutex<Option<ActiveSegment>>>,
}

impl LocalSegments {
    pub(super) fn new(
        dir: PathBuf,
        ids: Arc<SegmentIds>,
        segment_bytes: u64,
        segment_ms: i64,
    ) -> Self {
        Self {
            dir,
            ids,
            segment_bytes,
            segment_ms,
            active: Arc::new(Mutex::new(None)),
        }
    }
}

impl SegmentStore for LocalSegments {
    fn remote(&self) -> bool {
        false
    }

    fn read(&self, id: u64, position: u64, len: u64) -> BoxFuture<'_, Result<Bytes, StorageError>> {
        let dir = self.dir.clone();
        Box::pin(async move {
            let bytes = tokio::task::spawn_blocking(move || {
                segment::read_range(&dir, id, position, len as usize)
            })
            .await
            .map_err(|_| StorageError::TaskFailed("a segment read"))??;
            Ok(Bytes::from(bytes))
        })
    }

    fn delete(&self, ids: Vec<u64>) -> BoxFuture<'_, Result<(), StorageError>> {
        let dir = self.dir.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                for id in ids {
                    match std::fs::remove_file(segment::segment_path(&dir, id)) {
                        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                        _ => {}
                    }
                }
                Ok(())
            })
            .await
            .map_err(|_| StorageError::TaskFailed("a segment deletion"))??;
            Ok(())
        })
    }

    /// Rolls the active segment if due (segment.bytes, segment.ms), then appends the flush's blocks
    /// with one write and fdatasync.
    fn write_flush<'a>(
        &'a self,
        blocks: &'a [PartitionBlock],
        commit: &'a mut Commit,
    ) -> BoxFuture<'a, (Durable, EncodedFlush)> {
        Box::pin(async move {
            let now = now_ms();
            let (segment_id, position, roll) = {
                let active = self.active.lock();
                let due = active.as_ref().is_none_or(|a| {
                    !a.is_empty()
                        && (a.len() >= self.segment_bytes || now - a.created_ms >= self.segment_ms)
                });
                if due {
                    let new = SegmentRecord {
                        id: self.ids.next(),
                        created_ms: now,
                        sealed: false,
                        level: 0,
                    };
                    commit.sealed_segment = active.as_ref().map(|s| s.id);
                    commit.new_segment = Some(new);
                    (new.id, segment::FILE_HEADER_LEN, Some(new))
                } else {
                    let a = active.as_ref();
                    (a.map_or(0, |a| a.id), a.map_or(0, |a| a.len()), None)
                }
            };
            let mut encoded = encode_flush(blocks, segment_id, position);
            let bytes = std::mem::take(&mut encoded.bytes);
            let metas = encoded.metas.clone();
            let (dir, active) = (self.dir.clone(), self.active.clone());
            let result = tokio::task::spawn_blocking(move || {
                let mut active = active.lock();
                if let Some(new) = roll {
                    if let Some(old) = active.take() {
                        old.seal()?;
                    }
                    *active = Some(ActiveSegment::create(&dir, new.id, new.created_ms)?);
                }
                let seg = active
                    .as_mut()
                    .ok_or(StorageError::Io(std::io::Error::other(
                        "no active segment to append to",
                    )))?;
                seg.append_durable(&bytes, &metas)
            })
            .await
            .unwrap_or(Err(StorageError::TaskFailed("a segment append")));
            (Durable::Done(result), encoded)
        })
    }

    fn write_segments(
        &self,
        segments: Vec<(u64, Vec<u8>)>,
    ) -> BoxFuture<'_, Result<(), StorageError>> {
        // Sealed files written whole, each durable with its directory entry before this returns. A
        // crash before the metadata commit that refers to them leaves files no segment row names,
        // which `recover` removes at the next start (the file names are ids never handed out twice).
        let dir = self.dir.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                for (id, bytes) in segments {
                    segment::write_sealed(&dir, id, &bytes)?;
                }
                Ok(())
            })
            .await
            .unwrap_or(Err(StorageError::TaskFailed("a segment write")))
        })
    }

    fn recover(&self, snap: &Snapshot) -> Result<u64, StorageError> {
        let known: HashMap<u64, SegmentRecord> = snap.segments.iter().map(|s| (s.id, *s)).collect();
        let mut max_id = 0;
        std::fs::create_dir_all(&self.dir)?;
        for entry in std::fs::read_dir(&self.dir)? {
            let path = entry?.path();
            match segment::segment_id_of(&path) {
                Some(id) if known.contains_key(&id) => {}
                // A segment file of ours (this broker's private segments folder, named as it names
                // them) written but never committed, or retired before the restart.
                Some(id) => {
                    tracing::info!(
                        ?path,
                        "removing segment file the metadata store does not reference"
                    );
                    max_id = max_id.max(id);
                    std::fs::remove_file(&path)?;
                }
                None => tracing::warn!(?path, "leaving alone a file that is not a segment"),
            }
        }
        let mut reopened = None;
        if let Some(s) = snap
            .segments
            .iter()
            .find(|s| !s.sealed && segment::segment_path(&self.dir, s.id).exists())
        {
            let blocks = snap
                .blocks
                .iter()
                .filter(|b| b.segment_id == s.id)
                .copied()
                .collect();
            reopened = Some(ActiveSegment::reopen(
                &self.dir,
                s.id,
                s.created_ms,
                blocks,
            )?);
        }
        *self.active.lock() = reopened;
        Ok(max_id)
    }

    fn counters(&self) -> Option<ObjectCounters> {
        None
    }
}

// ---- object store -------------------------------------------------------------------------------

/// Segments as objects: one per flush (sealed at once), PUT after its upload intent is recorded in the
/// metadata store, so a crash before the commit leaves the trace that proves the object ours to delete.
pub(super) struct ObjectStoreSegments {
    objects: Arc<ObjectSegments>,
    meta: Arc<dyn MetadataStore>,
    ids: Arc<SegmentIds>,
}

impl ObjectStoreSegments {
    pub(super) fn new(
        objects: Arc<ObjectSegments>,
        meta: Arc<dyn MetadataStore>,
        ids: Arc<SegmentIds>,
    ) -> Self {
        Self { objects, meta, ids }
    }
}

/// Records the intents, then PUTs the objects, up to 8 at once.
async fn upload(
    objects: Arc<ObjectSegments>,
    meta: Arc<dyn MetadataStore>,
    segments: Vec<(u64, Vec<u8>)>,
) -> Result<(), StorageError> {
    let ids: Vec<u64> = segments.iter().map(|(id, _)| *id).collect();
    tokio::task::spawn_blocking(move || meta.record_uploads(&ids))
        .await
        .map_err(|_| StorageError::TaskFailed("recording upload intents"))??;
    futures_util::stream::iter(segments.into_iter().map(|(id, object)| {
        let objects = objects.clone();
        async move { objects.put(id, object).await }
    }))
    .buffer_unordered(8)
    .collect::<Vec<_>>()
    .await
    .into_iter()
    .collect()
}

impl SegmentStore for ObjectStoreSegments {
    fn remote(&self) -> bool {
        true
    }

    fn read(&self, id: u64, position: u64, len: u64) -> BoxFuture<'_, Result<Bytes, StorageError>> {
        Box::pin(self.objects.read_range(id, position, len))
    }

    fn delete(&self, ids: Vec<u64>) -> BoxFuture<'_, Result<(), StorageError>> {
        Box::pin(async move {
            futures_util::stream::iter(ids.into_iter().map(|id| self.objects.delete(id)))
                .buffer_unordered(16)
                .collect::<Vec<_>>()
                .await
                .into_iter()
                .collect()
        })
    }

    fn write_flush<'a>(
        &'a self,
        blocks: &'a [PartitionBlock],
        commit: &'a mut Commit,
    ) -> BoxFuture<'a, (Durable, EncodedFlush)> {
        Box::pin(async move {
            let id = self.ids.next();
            let now = now_ms();
            let encoded = encode_flush(blocks, id, segment::FILE_HEADER_LEN);
            commit.new_segment = Some(SegmentRecord {
                id,
                created_ms: now,
                sealed: true,
                level: 0,
            });
            let object = segment::encode_object(id, now, &encoded.bytes, &encoded.metas);
            let (objects, meta) = (self.objects.clone(), self.meta.clone());
            let task = tokio::spawn(upload(objects, meta, vec![(id, object)]));
            (
                Durable::Upload {
                    segment_id: id,
                    task,
                },
                encoded,
            )
        })
    }

    fn write_segments(
        &self,
        segments: Vec<(u64, Vec<u8>)>,
    ) -> BoxFuture<'_, Result<(), StorageError>> {
        Box::pin(upload(self.objects.clone(), self.meta.clone(), segments))
    }

    fn recover(&self, _snap: &Snapshot) -> Result<u64, StorageError> {
        // Objects are never listed to decide anything: uploads left as intents are handled by the
        // engine at start (see `Storage::discard_uploads`).
        Ok(0)
    }

    fn counters(&self) -> Option<ObjectCounters> {
        Some(self.objects.counters())
    }
}
