//! The coordinator's one writer: the only thread that calls the metadata store. It first restores
//! the groups and committed offsets into the directory, then every durable change to committed
//! offsets and group documents goes through its queue (SQLite and its fsync never run on a
//! runtime thread).
//!
//! Ops are applied in the order they were queued, and handlers queue them in their in-order part
//! (`handle`, which a connection awaits in read order), so a connection's commits, offset deletions
//! and group deletions take effect in request order — Kafka reads a connection's requests one at a
//! time, so the last of several asynchronous commits wins there too. A batch of queued ops is one
//! SQLite transaction (one fsync for many commits); only after it is durable are the in-memory
//! offsets updated and the requests answered, so OffsetFetch never shows a commit that a crash could
//! still lose, and a failed write changes nothing. Then the batch's offset changes are appended to
//! `__consumer_offsets` (`offsets_log`), in the same order.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use streamhouse_storage::{GroupWrite, MetadataStore, Storage, StorageError};
use tokio::sync::oneshot;

use super::offsets::ExpiredOffset;
use super::offsets_log::{self, LogRecord};
use super::{
    persisted, remove_if, restore, with_group, with_new_group, CommittedOffset, Directory, Group,
    GroupKind, TopicPartition,
};
use parking_lot::Mutex;

/// Ops taken into one transaction at most. Large enough that a burst of commits from many
/// consumers shares one fsync, small enough that a batch's transaction stays short.
const MAX_BATCH: usize = 1024;

pub(crate) enum Op {
    /// OffsetCommit: the offsets are written, then become visible.
    Commit {
        group: String,
        offsets: BTreeMap<TopicPartition, CommittedOffset>,
    },
    /// OffsetDelete of the listed partitions.
    DeleteOffsets {
        group: String,
        partitions: Vec<TopicPartition>,
    },
    /// Offset expiry: each offset removed only while it is still that commit. With `drop_group`,
    /// the group goes too if it is still empty and has no offsets left.
    Expire {
        group: String,
        offsets: Vec<ExpiredOffset>,
        drop_group: bool,
    },
    /// DeleteGroups: the group's offsets and document.
    DeleteGroup { group: String },
    /// DeleteTopics: every group's offsets of the topic.
    DeleteTopic { topic: String },
    /// Saves the group's membership document as it is when written (a snapshot, so only the last
    /// one of a group in a batch is written).
    SaveGroup { group: String },
    /// Writes nothing; answered once everything queued before it is applied.
    Barrier,
}

struct Queued {
    op: Op,
    done: Option<oneshot::Sender<bool>>,
}

pub(crate) struct Writer {
    tx: mpsc::Sender<Queued>,
    /// Ops queued and not yet applied (readers that must see them wait for a barrier).
    queued: Arc<AtomicUsize>,
}

/// What the writer's restore answers: the number of groups loaded, or why it could not load.
pub(crate) type Restored = oneshot::Receiver<Result<usize, StorageError>>;

impl Writer {
    /// Starts the writer thread, which restores `dir` from the metadata store (answered on the
    /// receiver) and then applies queued ops. Ops queued before the restore is answered wait for it.
    pub(crate) fn start(
        dir: Arc<Directory>,
        storage: Arc<Storage>,
    ) -> Result<(Writer, Restored), StorageError> {
        let meta = storage.metadata();
        let (tx, rx) = mpsc::channel::<Queued>();
        let (restored_tx, restored) = oneshot::channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let q = queued.clone();
        std::thread::Builder::new()
            .name("group-writer".into())
            .spawn(move || {
                let r = restore(&dir, meta.as_ref());
                let ok = r.is_ok();
                let _ = restored_tx.send(r);
                if ok {
                    run(rx, &dir, meta.as_ref(), &storage, &q);
                }
            })?;
        Ok((Writer { tx, queued }, restored))
    }

    /// Queues an op; the receiver says whether it was made durable and applied.
    pub(crate) fn submit(&self, op: Op) -> oneshot::Receiver<bool> {
        let (done, rx) = oneshot::channel();
        self.queue(op, Some(done));
        rx
    }

    /// Queues an op whose outcome nobody waits for (failures are logged).
    pub(crate) fn submit_quiet(&self, op: Op) {
        self.queue(op, None);
    }

    fn queue(&self, op: Op, done: Option<oneshot::Sender<bool>>) {
        self.queued.fetch_add(1, Ordering::SeqCst);
        if self.tx.send(Queued { op, done }).is_err() {
            self.queued.fetch_sub(1, Ordering::SeqCst);
            tracing::error!("group writer is gone; a group change was not stored");
        }
    }

    /// True when nothing is queued: a reader can answer from memory at once.
    pub(crate) fn idle(&self) -> bool {
        self.queued.load(Ordering::SeqCst) == 0
    }
}

fn run(
    rx: mpsc::Receiver<Queued>,
    dir: &Directory,
    meta: &dyn MetadataStore,
    storage: &Arc<Storage>,
    queued: &AtomicUsize,
) {
    debug_assert!(
        tokio::runtime::Handle::try_current().is_err(),
        "the metadata store is written on the writer thread, not a runtime thread"
    );
    // Re-saves of groups that a DeleteGroups found with members again by the time it was applied.
    let mut carry: Vec<Queued> = Vec::new();
    loop {
        let mut batch = std::mem::take(&mut carry);
        if batch.is_empty() {
            match rx.recv() {
                Ok(q) => batch.push(q),
                Err(_) => return, // the coordinator is gone
            }
        }
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(q) => batch.push(q),
                Err(_) => break,
            }
        }
        let writes = durable_writes(&batch, dir);
        let ok = match meta.group_writes(&writes) {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(error = %e, ops = batch.len(), "could not store group changes");
                false
            }
        };
        if ok {
            // Before `apply`: deletions list the offsets the group still has.
            offsets_log::append(storage, log_records(&batch, dir), super::now_ms());
        }
        for q in batch {
            if ok {
                if let Some(resave) = apply(&q.op, dir) {
                    queued.fetch_add(1, Ordering::SeqCst);
                    carry.push(Queued {
                        op: resave,
                        done: None,
                    });
                }
            }
            queued.fetch_sub(1, Ordering::SeqCst);
            if let Some(done) = q.done {
                let _ = done.send(ok);
            }
        }
    }
}

/// What a batch writes, in queue order.
fn durable_writes(batch: &[Queued], dir: &Directory) -> Vec<GroupWrite> {
    let mut last_save: HashMap<&str, usize> = HashMap::new();
    for (i, q) in batch.iter().enumerate() {
        if let Op::SaveGroup { group } = &q.op {
            last_save.insert(group, i);
        }
    }
    let mut writes = Vec::with_capacity(batch.len());
    for (i, q) in batch.iter().enumerate() {
        match &q.op {
            Op::Commit { group, offsets } => writes.push(GroupWrite::Offsets(
                offsets
                    .iter()
                    .map(|(at, o)| o.to_record(group, at))
                    .collect(),
            )),
            Op::DeleteOffsets { group, partitions } => writes.push(GroupWrite::DeleteOffsets {
                group_id: group.clone(),
                partitions: Some(
                    partitions
                        .iter()
                        .map(|at| (at.topic.clone(), at.partition))
                        .collect(),
                ),
            }),
            Op::Expire {
                group,
                offsets,
                drop_group,
            } => {
                if !offsets.is_empty() {
                    writes.push(GroupWrite::ExpireOffsets {
                        group_id: group.clone(),
                        partitions: offsets
                            .iter()
                            .map(|e| (e.at.topic.clone(), e.at.partition, e.commit_ms))
                            .collect(),
                    });
                }
                let still_empty = with_group(dir, group, |g| g.is_empty()).unwrap_or(true);
                if *drop_group && still_empty {
                    writes.push(GroupWrite::SaveGroup {
                        group_id: group.clone(),
                        state: None,
                    });
                }
            }
            Op::DeleteGroup { group } => {
                writes.push(GroupWrite::DeleteOffsets {
                    group_id: group.clone(),
                    partitions: None,
                });
                writes.push(GroupWrite::SaveGroup {
                    group_id: group.clone(),
                    state: None,
                });
            }
            Op::DeleteTopic { topic } => writes.push(GroupWrite::DeleteTopicOffsets {
                topic: topic.clone(),
            }),
            Op::SaveGroup { group } if last_save.get(group.as_str()) == Some(&i) => {
                // Serialized here, off the runtime threads, under the group's lock only.
                let state = with_group(dir, group, |g| persisted(g)).flatten();
                writes.push(GroupWrite::SaveGroup {
                    group_id: group.clone(),
                    state,
                });
            }
            Op::SaveGroup { .. } | Op::Barrier => {}
        }
    }
    writes
}

/// The `__consumer_offsets` records of a durable batch, in queue order: each commit, and a tombstone
/// for each offset an op removes (as it is in memory before the batch is applied).
fn log_records(batch: &[Queued], dir: &Directory) -> Vec<LogRecord> {
    let tombstone = |group: &str, at: &TopicPartition| {
        (group.to_string(), offsets_log::commit_key(group, at), None)
    };
    let mut out = Vec::new();
    for q in batch {
        match &q.op {
            Op::Commit { group, offsets } => out.extend(offsets.iter().map(|(at, o)| {
                (
                    group.clone(),
                    offsets_log::commit_key(group, at),
                    Some(offsets_log::commit_value(o)),
                )
            })),
            Op::DeleteOffsets { group, partitions } => {
                out.extend(partitions.iter().map(|at| tombstone(group, at)))
            }
            Op::Expire { group, offsets, .. } => {
                let current = with_group(dir, group, |g| {
                    offsets
                        .iter()
                        .filter(|e| {
                            g.offsets
                                .get(&e.at)
                                .is_some_and(|o| o.commit_ms == e.commit_ms)
                        })
                        .map(|e| e.at.clone())
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default();
                out.extend(current.iter().map(|at| tombstone(group, at)));
            }
            Op::DeleteGroup { group } => {
                let all = with_group(dir, group, |g| {
                    g.offsets.keys().cloned().collect::<Vec<_>>()
                })
                .unwrap_or_default();
                out.extend(all.iter().map(|at| tombstone(group, at)));
                out.push((group.clone(), offsets_log::group_key(group), None));
            }
            Op::DeleteTopic { topic } => {
                let groups: Vec<(String, Arc<Mutex<Group>>)> = dir
                    .lock()
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                for (name, g) in groups {
                    let g = g.lock();
                    out.extend(
                        g.offsets
                            .keys()
                            .filter(|at| at.topic == *topic)
                            .map(|at| tombstone(&name, at)),
                    );
                }
            }
            // A classic group with a protocol type, as Kafka stores it after a rebalance; a group
            // gone meanwhile leaves a tombstone.
            Op::SaveGroup { group } => {
                let value = with_group(dir, group, |g| match &g.kind {
                    GroupKind::Classic(c) if c.protocol_type.is_some() => {
                        Some(offsets_log::group_value(c, super::now_ms()))
                    }
                    _ => None,
                });
                match value {
                    Some(Some(v)) => {
                        out.push((group.clone(), offsets_log::group_key(group), Some(v)))
                    }
                    Some(None) => {}
                    None => out.push((group.clone(), offsets_log::group_key(group), None)),
                }
            }
            Op::Barrier => {}
        }
    }
    out
}

/// Makes a durable op visible in memory. Returns an op to queue next, if any.
fn apply(op: &Op, dir: &Directory) -> Option<Op> {
    match op {
        Op::Commit { group, offsets } => with_new_group(dir, group, |g| {
            g.offsets
                .extend(offsets.iter().map(|(at, o)| (at.clone(), o.clone())));
        }),
        Op::DeleteOffsets { group, partitions } => {
            with_group(dir, group, |g| {
                for at in partitions {
                    g.offsets.remove(at);
                }
            });
        }
        Op::Expire {
            group,
            offsets,
            drop_group,
        } => {
            with_group(dir, group, |g| {
                for e in offsets {
                    if g.offsets
                        .get(&e.at)
                        .is_some_and(|o| o.commit_ms == e.commit_ms)
                    {
                        g.offsets.remove(&e.at);
                    }
                }
            });
            if *drop_group {
                remove_if(dir, group, |g| g.is_empty() && g.offsets.is_empty());
            }
        }
        Op::DeleteGroup { group } => {
            with_group(dir, group, |g| g.offsets.clear());
            let removed = remove_if(dir, group, |g| g.is_empty());
            // Members joined after the delete was accepted: their group's document is written again.
            if !removed && with_group(dir, group, |_| ()).is_some() {
                return Some(Op::SaveGroup {
                    group: group.clone(),
                });
            }
        }
        Op::DeleteTopic { topic } => {
            let all: Vec<_> = dir.lock().values().cloned().collect();
            for g in all {
                g.lock().offsets.retain(|at, _| at.topic != *topic);
            }
        }
        Op::SaveGroup { .. } | Op::Barrier => {}
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use parking_lot::Mutex;
    use streamhouse_storage::{Storage, StorageConfig};

    struct Fixture {
        _dir: tempfile::TempDir,
        meta: Arc<dyn MetadataStore>,
        groups: Arc<Directory>,
        writer: Writer,
    }

    async fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(StorageConfig::new(dir.path())).await.unwrap();
        let meta = storage.metadata();
        let groups: Arc<Directory> = Arc::new(Mutex::new(HashMap::new()));
        let (writer, restored) = Writer::start(groups.clone(), storage.clone()).unwrap();
        assert_eq!(restored.await.unwrap().unwrap(), 0, "nothing stored yet");
        Fixture {
            _dir: dir,
            meta,
            groups,
            writer,
        }
    }

    fn at(partition: i32) -> TopicPartition {
        TopicPartition::new("t", partition)
    }

    fn commit(group: &str, partition: i32, offset: i64, commit_ms: i64) -> Op {
        let o = CommittedOffset {
            offset,
            leader_epoch: -1,
            metadata: None,
            commit_ms,
        };
        Op::Commit {
            group: group.into(),
            offsets: BTreeMap::from([(at(partition), o)]),
        }
    }

    /// (partition, offset) pairs of topic "t".
    type Offsets = Vec<(i32, i64)>;

    /// A group's offsets in memory and in the store.
    fn offsets(f: &Fixture, group: &str) -> (Offsets, Offsets) {
        let memory = with_group(&f.groups, group, |g| {
            g.offsets
                .iter()
                .map(|(at, o)| (at.partition, o.offset))
                .collect()
        })
        .unwrap_or_default();
        let mut stored: Vec<(i32, i64)> = f
            .meta
            .load_offsets()
            .unwrap()
            .into_iter()
            .filter(|r| r.group_id == group)
            .map(|r| (r.partition, r.offset))
            .collect();
        stored.sort();
        (memory, stored)
    }

    /// Ops take effect in the order they were queued (one transaction for the batch), the same in
    /// memory as in the store: commit, delete, commit again leaves the last commit.
    #[tokio::test]
    async fn ops_apply_in_queue_order() {
        let f = fixture().await;
        f.writer.submit_quiet(commit("g", 0, 1, 10));
        f.writer.submit_quiet(commit("g", 1, 5, 10));
        f.writer.submit_quiet(Op::DeleteOffsets {
            group: "g".into(),
            partitions: vec![at(0)],
        });
        let last = f.writer.submit(commit("g", 0, 3, 11));
        assert!(last.await.unwrap());
        assert!(f.writer.idle());
        let want = vec![(0, 3), (1, 5)];
        assert_eq!(offsets(&f, "g"), (want.clone(), want));
    }

    /// Expiry removes an offset only while it is still the commit found expired: one committed
    /// again in between stays, in memory and in the store; a group left empty with nothing goes.
    #[tokio::test]
    async fn expiry_spares_a_newer_commit() {
        let f = fixture().await;
        f.writer.submit_quiet(commit("g", 0, 1, 100));
        f.writer.submit_quiet(commit("g", 1, 2, 100));
        f.writer.submit_quiet(commit("g", 1, 9, 200));
        let expired = |partition| ExpiredOffset {
            at: at(partition),
            commit_ms: 100,
        };
        let done = f.writer.submit(Op::Expire {
            group: "g".into(),
            offsets: vec![expired(0), expired(1)],
            drop_group: true,
        });
        assert!(done.await.unwrap());
        assert_eq!(offsets(&f, "g"), (vec![(1, 9)], vec![(1, 9)]));
        assert!(
            with_group(&f.groups, "g", |_| ()).is_some(),
            "not empty yet"
        );
        let done = f.writer.submit(Op::Expire {
            group: "g".into(),
            offsets: vec![ExpiredOffset {
                at: at(1),
                commit_ms: 200,
            }],
            drop_group: true,
        });
        assert!(done.await.unwrap());
        assert!(
            with_group(&f.groups, "g", |_| ()).is_none(),
            "the group went"
        );
        assert_eq!(offsets(&f, "g"), (vec![], vec![]));
    }

    /// DeleteTopics takes every group's offsets of the topic; DeleteGroups the group's own.
    #[tokio::test]
    async fn topic_and_group_deletion() {
        let f = fixture().await;
        f.writer.submit_quiet(commit("a", 0, 1, 10));
        f.writer.submit_quiet(commit("b", 1, 2, 10));
        f.writer.submit_quiet(commit("c", 1, 3, 10));
        f.writer.submit_quiet(Op::DeleteTopic { topic: "t".into() });
        f.writer.submit_quiet(commit("c", 0, 4, 11));
        let done = f.writer.submit(Op::DeleteGroup { group: "c".into() });
        assert!(done.await.unwrap());
        assert_eq!(offsets(&f, "a"), (vec![], vec![]));
        assert_eq!(offsets(&f, "b"), (vec![], vec![]));
        assert_eq!(offsets(&f, "c"), (vec![], vec![]));
        assert!(with_group(&f.groups, "c", |_| ()).is_none());
        assert!(f.meta.load_groups().unwrap().is_empty());
    }
}
