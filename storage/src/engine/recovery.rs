//! Recovery at start (and the writer's reset after a failed flush): the catalog and block index from
//! the metadata store, the segment store brought in line with it (local files never committed removed,
//! the active segment cut back to its last committed block), and every segment id handed out before
//! reserved.

use std::sync::Arc;

use super::catalog::{Catalog, Partition, Topic};
use super::writer::Writer;
use super::Storage;
use crate::metadata::Snapshot;
use crate::StorageError;

impl Storage {
    /// Loads the catalog and index, removes segment files the metadata does not know (written but never
    /// committed), and cuts the active segment back to its last committed block.
    pub(super) fn recover(self: &Arc<Self>) -> Result<Writer, StorageError> {
        let snap = self.meta.load()?;
        let mut catalog = Catalog::default();
        for t in &snap.topics {
            let partitions = (0..t.partitions)
                .map(|p| Arc::new(Partition::new(t.id, p)))
                .collect();
            let topic = Arc::new(Topic {
                id: t.id,
                name: t.name.clone(),
                configs: t.configs.clone(),
                created_ms: t.created_ms,
                partitions,
            });
            catalog.insert(topic);
        }
        for p in &snap.partitions {
            if let Some(part) = catalog.partition(&p.topic_id, p.partition) {
                part.restore(p.high_watermark, p.log_start_offset);
            }
        }
        for b in &snap.blocks {
            if let Some(part) = catalog.partition(&b.topic_id, b.partition) {
                part.restore_block(*b);
            }
        }
        for ((_, topic_id, partition), e) in &snap.producers {
            if let (Some(part), Some(first)) =
                (catalog.partition(topic_id, *partition), e.txn_first_offset)
            {
                part.restore_open_transaction(first);
            }
        }
        for (topic_id, partition, aborted) in &snap.aborted {
            if let Some(part) = catalog.partition(topic_id, *partition) {
                part.restore_aborted(*aborted);
            }
        }
        self.reconcile_segments(&snap)?;
        *self.catalog.write() = catalog;
        tracing::info!(
            topics = snap.topics.len(),
            blocks = snap.blocks.len(),
            segments = snap.segments.len(),
            "storage recovered"
        );
        Ok(Writer::new(
            self.clone(),
            snap.producers.into_iter().collect(),
        ))
    }

    /// Brings the segment store in line with the metadata snapshot (see [`SegmentStore::recover`]) and
    /// reserves every id handed out before (segments, retired ones, upload intents, the counter).
    /// Returns the highest id.
    pub(super) fn reconcile_segments(&self, snap: &Snapshot) -> Result<u64, StorageError> {
        let seen = self.segments.recover(snap)?;
        let max_id = snap
            .segments
            .iter()
            .map(|s| s.id)
            .chain(snap.retired.iter().map(|r| r.0))
            .chain(snap.intents.iter().copied())
            .chain([snap.max_segment_id, seen])
            .max()
            .unwrap_or(0);
        self.ids.reserve_above(max_id);
        Ok(max_id)
    }
}
