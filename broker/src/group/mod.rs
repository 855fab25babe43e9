//! The group coordinator: classic consumer groups (JoinGroup/SyncGroup/Heartbeat/LeaveGroup, see
//! `classic.rs`), KIP-848 consumer groups (ConsumerGroupHeartbeat, see `consumer.rs`), and committed
//! offsets for both, with Kafka's offset expiry (`offsets.retention.minutes`) and group size limits
//! (`group.max.size`, `group.consumer.max.size`).
//!
//! # State, locks and blocking
//!
//! - The directory (`groups`) maps a group id to that group's own lock. It is held only to find,
//!   insert or remove an entry: never while a group's state machine runs, never across an await.
//!   Lock order is directory, then group; nothing takes the directory while holding a group.
//!   Removing a group takes both and marks it `removed`, so whoever still holds its `Arc` looks it
//!   up again ([`with_group`]).
//! - A group's lock guards its state machine and its committed offsets; it is held for one state
//!   machine step (no I/O, no await), so unrelated groups never wait for each other.
//! - Nothing here touches the metadata store on a runtime thread. Durable changes are ops for the
//!   writer thread (`writer.rs`), queued in request order; committed offsets change in memory only
//!   once the writer made them durable. Membership changes take effect in memory at once (as in
//!   Kafka, the state machine is the authority) and the writer saves a snapshot of the group.

pub mod classic;
pub mod consumer;
mod writer;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};
use streamhouse_storage::{OffsetRecord, Storage, StorageError};
use tokio::sync::oneshot;

use crate::error;
use classic::ClassicGroup;
use consumer::ConsumerGroup;
use writer::{Op, Writer};

/// Coordinator settings, named after Kafka's.
#[derive(Debug, Clone)]
pub struct GroupConfig {
    /// group.initial.rebalance.delay.ms: how long a new group waits for more members before its first
    /// rebalance completes.
    pub initial_rebalance_delay: Duration,
    /// group.min.session.timeout.ms / group.max.session.timeout.ms
    pub min_session_timeout: Duration,
    pub max_session_timeout: Duration,
    /// offset.metadata.max.bytes
    pub offset_metadata_max_bytes: usize,
    /// group.consumer.heartbeat.interval.ms / group.consumer.session.timeout.ms (KIP-848)
    pub consumer_heartbeat_interval: Duration,
    pub consumer_session_timeout: Duration,
    /// offsets.retention.minutes: how long the offsets of an empty group (or a standalone
    /// consumer's, by commit time) are kept.
    pub offsets_retention: Duration,
    /// offsets.retention.check.interval.ms
    pub offsets_retention_check_interval: Duration,
    /// group.max.size: members of a classic group.
    pub classic_max_size: usize,
    /// group.consumer.max.size: members of a KIP-848 group.
    pub consumer_max_size: usize,
}

impl Default for GroupConfig {
    fn default() -> Self {
        Self {
            initial_rebalance_delay: Duration::from_millis(3000),
            min_session_timeout: Duration::from_millis(6000),
            max_session_timeout: Duration::from_millis(1_800_000),
            offset_metadata_max_bytes: 4096,
            consumer_heartbeat_interval: Duration::from_millis(5000),
            consumer_session_timeout: Duration::from_millis(45_000),
            // Kafka's defaults: 10080 minutes (7 days), checked every 600000 ms.
            offsets_retention: Duration::from_secs(10_080 * 60),
            offsets_retention_check_interval: Duration::from_millis(600_000),
            // Kafka's defaults: Integer.MAX_VALUE, i.e. no limit unless configured.
            classic_max_size: i32::MAX as usize,
            consumer_max_size: i32::MAX as usize,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommittedOffset {
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: Option<String>,
    pub commit_ms: i64,
}

/// Committed offsets by topic: (topic, [(partition, offset if committed)]).
pub type TopicOffsets = Vec<(String, Vec<(i32, Option<CommittedOffset>)>)>;

/// Which protocol a group speaks; a group is one or the other (KIP-848 keeps them apart too).
pub enum GroupKind {
    Classic(ClassicGroup),
    Consumer(ConsumerGroup),
}

pub struct Group {
    pub id: String,
    pub kind: GroupKind,
    /// (topic, partition) -> committed offset.
    pub offsets: BTreeMap<(String, i32), CommittedOffset>,
    /// Taken out of the directory; the next lookup finds (or makes) its successor.
    removed: bool,
}

impl Group {
    fn new_classic(id: &str) -> Group {
        Group {
            id: id.to_string(),
            kind: GroupKind::Classic(ClassicGroup::default()),
            offsets: BTreeMap::new(),
            removed: false,
        }
    }

    /// Kafka's state name, as DescribeGroups and ListGroups report it.
    pub fn state_name(&self) -> &'static str {
        match &self.kind {
            GroupKind::Classic(g) => g.state.name(),
            GroupKind::Consumer(g) => g.state_name(),
        }
    }

    pub fn protocol_type(&self) -> String {
        match &self.kind {
            GroupKind::Classic(g) => g.protocol_type.clone().unwrap_or_default(),
            GroupKind::Consumer(_) => "consumer".to_string(),
        }
    }

    pub fn type_name(&self) -> &'static str {
        match &self.kind {
            GroupKind::Classic(_) => "classic",
            GroupKind::Consumer(_) => "consumer",
        }
    }

    pub fn is_empty(&self) -> bool {
        match &self.kind {
            GroupKind::Classic(g) => g.members.is_empty(),
            GroupKind::Consumer(g) => g.members.is_empty(),
        }
    }

    /// Topics the group's members are subscribed to (for OffsetDelete's GROUP_SUBSCRIBED_TO_TOPIC).
    pub fn subscribed_topics(&self) -> Vec<String> {
        match &self.kind {
            GroupKind::Classic(g) => g.subscribed_topics(),
            GroupKind::Consumer(g) => g.subscribed_topics(),
        }
    }

    /// Keeps the wall-clock time a classic group became Empty (Kafka's currentStateTimestamp, which
    /// offset expiry counts from).
    fn note_state(&mut self, now_ms: i64) {
        if let GroupKind::Classic(c) = &mut self.kind {
            c.note_state(now_ms);
        }
    }

    /// Kafka's OffsetMetadataManager.cleanupExpiredOffsets with the group's
    /// offsetExpirationCondition: offsets of topics the group is subscribed to never expire; a
    /// classic group with a protocol expires the rest while Empty, counting from when it became
    /// Empty (or from the commit, if that is unknown), and, if it is a Stable consumer-protocol group,
    /// by commit time; a standalone group (no protocol) and a KIP-848 group by commit time.
    /// Returns the expired (topic, partition, commit_ms) and whether every offset expired.
    fn expired_offsets(&self, now_ms: i64, retention_ms: i64) -> (Vec<(String, i32, i64)>, bool) {
        // What an offset's age counts from: its commit, or when the group became Empty.
        enum Since {
            Commit,
            Empty(Option<i64>),
        }
        let since = match &self.kind {
            GroupKind::Classic(c) => match (&c.protocol_type, c.state) {
                (None, _) => Since::Commit,
                (Some(_), classic::ClassicState::Empty) => Since::Empty(c.empty_since_ms),
                (Some(t), classic::ClassicState::Stable) if t == "consumer" => Since::Commit,
                _ => return (Vec::new(), false),
            },
            GroupKind::Consumer(_) => Since::Commit,
        };
        let base = |o: &CommittedOffset| match since {
            Since::Commit => o.commit_ms,
            Since::Empty(at) => at.unwrap_or(o.commit_ms),
        };
        let subscribed = self.subscribed_topics();
        let mut expired = Vec::new();
        let mut all = true;
        for ((t, p), o) in &self.offsets {
            if !subscribed.contains(t) && now_ms.saturating_sub(base(o)) >= retention_ms {
                expired.push((t.clone(), *p, o.commit_ms));
            } else {
                all = false;
            }
        }
        (expired, all)
    }
}

/// Group id -> that group's own lock (see the module notes for the locking rule).
pub(crate) type Directory = Mutex<HashMap<String, Arc<Mutex<Group>>>>;

/// Runs `f` on the group, or returns `None` if there is none.
pub(crate) fn with_group<T>(
    dir: &Directory,
    id: &str,
    f: impl FnOnce(&mut Group) -> T,
) -> Option<T> {
    loop {
        let arc = dir.lock().get(id).cloned()?;
        let mut g = arc.lock();
        if g.removed {
            continue; // removed between the lookup and the lock: look again
        }
        return Some(f(&mut g));
    }
}

/// Runs `f` on the group, making an empty classic group if there is none.
pub(crate) fn with_new_group<T>(dir: &Directory, id: &str, f: impl FnOnce(&mut Group) -> T) -> T {
    loop {
        let arc = dir
            .lock()
            .entry(id.to_string())
            .or_insert_with(|| Arc::new(Mutex::new(Group::new_classic(id))))
            .clone();
        let mut g = arc.lock();
        if g.removed {
            continue;
        }
        return f(&mut g);
    }
}

/// Removes the group if `pred` holds for it; true if removed.
pub(crate) fn remove_if(dir: &Directory, id: &str, pred: impl FnOnce(&Group) -> bool) -> bool {
    let mut d = dir.lock();
    let Some(arc) = d.get(id).cloned() else {
        return false;
    };
    let mut g = arc.lock();
    if !pred(&g) {
        return false;
    }
    g.removed = true;
    drop(g);
    d.remove(id);
    true
}

/// An OffsetCommit as the coordinator needs it.
pub struct CommitRequest {
    pub group_id: String,
    pub member_id: String,
    pub instance_id: Option<String>,
    pub generation_or_epoch: i32,
    pub api_version: i16,
    /// (topic, partition, offset, leader epoch, metadata)
    pub offsets: Vec<(String, i32, i64, i32, Option<String>)>,
}

/// The answer to an OffsetCommit: at once (refused, or nothing to write), or once written.
pub enum CommitReply {
    Done(Result<Vec<i16>, i16>),
    Written(Vec<i16>, oneshot::Receiver<bool>),
}

pub struct GroupCoordinator {
    pub config: GroupConfig,
    /// Lock rule (see the module notes): the directory only finds, inserts or removes a group; all
    /// work on a group holds that group's lock alone, never across an await and never around I/O.
    groups: Arc<Directory>,
    /// Every metadata-store write, in request order, on its own thread.
    writer: Writer,
    pub(crate) storage: Arc<Storage>,
}

pub fn now_ms() -> i64 {
    streamhouse_storage::engine::now_ms()
}

impl GroupCoordinator {
    /// Loads committed offsets and persisted groups, starts the writer thread and the timer that
    /// expires members, completes rebalances and expires offsets.
    pub fn open(
        storage: Arc<Storage>,
        config: GroupConfig,
    ) -> Result<Arc<GroupCoordinator>, StorageError> {
        let meta = storage.metadata();
        let mut groups: HashMap<String, Group> = HashMap::new();
        for (id, doc) in meta.load_groups()? {
            let kind = match serde_json::from_str::<PersistedGroup>(&doc) {
                Ok(PersistedGroup::Classic(p)) => GroupKind::Classic(ClassicGroup::restore(p)),
                Ok(PersistedGroup::Consumer(p)) => GroupKind::Consumer(ConsumerGroup::restore(p)),
                Err(e) => {
                    tracing::warn!(group = %id, error = %e, "ignoring unreadable group state");
                    continue;
                }
            };
            let mut g = Group::new_classic(&id);
            g.kind = kind;
            groups.insert(id, g);
        }
        for o in meta.load_offsets()? {
            let g = groups
                .entry(o.group_id.clone())
                .or_insert_with(|| Group::new_classic(&o.group_id));
            g.offsets.insert(
                (o.topic, o.partition),
                CommittedOffset {
                    offset: o.offset,
                    leader_epoch: o.leader_epoch,
                    metadata: o.metadata,
                    commit_ms: o.commit_ms,
                },
            );
        }
        tracing::info!(groups = groups.len(), "group coordinator loaded");
        let dir: Arc<Directory> = Arc::new(Mutex::new(
            groups
                .into_iter()
                .map(|(id, g)| (id, Arc::new(Mutex::new(g))))
                .collect(),
        ));
        let c = Arc::new(GroupCoordinator {
            config,
            writer: Writer::start(dir.clone(), meta),
            groups: dir,
            storage,
        });
        let weak = Arc::downgrade(&c);
        let check_every = c.config.offsets_retention_check_interval;
        tokio::spawn(async move {
            // 100 ms: session and rebalance deadlines are seconds; this keeps expiry within a tenth.
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            let mut next_expiry = Instant::now() + check_every;
            loop {
                tick.tick().await;
                let Some(c) = weak.upgrade() else { break };
                let now = Instant::now();
                c.on_tick(now);
                if now >= next_expiry {
                    next_expiry = now + check_every;
                    c.expire_offsets(now_ms());
                }
            }
        });
        Ok(c)
    }

    /// Every group, for work over all of them (each is then locked on its own).
    fn all_groups(&self) -> Vec<Arc<Mutex<Group>>> {
        self.groups.lock().values().cloned().collect()
    }

    fn on_tick(&self, now: Instant) {
        let wall = now_ms();
        for arc in self.all_groups() {
            let mut g = arc.lock();
            if g.removed {
                continue;
            }
            let id = g.id.clone();
            let changed = match &mut g.kind {
                GroupKind::Classic(c) => c.tick(&id, now),
                GroupKind::Consumer(c) => c.tick(
                    &id,
                    now,
                    self.config.consumer_session_timeout,
                    &self.storage,
                ),
            };
            g.note_state(wall);
            if changed {
                self.writer.submit_quiet(Op::SaveGroup { group: id });
            }
        }
    }

    /// Saves the group's current state (after a completed rebalance, a leave, an expiry); the
    /// writer takes the snapshot.
    pub(crate) fn persist(&self, id: &str) {
        self.writer.submit_quiet(Op::SaveGroup {
            group: id.to_string(),
        });
    }

    // ---- classic protocol ------------------------------------------------------------------------

    /// JoinGroup. An empty KIP-848 group becomes a classic one; a non-empty one refuses classic members.
    pub fn join(
        &self,
        group_id: &str,
        req: classic::JoinRequest,
    ) -> classic::Pending<classic::JoinResult> {
        let cfg = &self.config;
        with_new_group(&self.groups, group_id, |g| {
            if matches!(&g.kind, GroupKind::Consumer(c) if c.members.is_empty()) {
                g.kind = GroupKind::Classic(ClassicGroup::default());
            }
            let r = match &mut g.kind {
                GroupKind::Classic(c) => {
                    if c.accept_joining_member(&req.member_id, cfg.classic_max_size, Instant::now())
                    {
                        c.join(group_id, req, cfg.initial_rebalance_delay, Instant::now())
                    } else {
                        classic::Pending::Now(classic::JoinResult {
                            error: error::GROUP_MAX_SIZE_REACHED,
                            generation: -1,
                            ..Default::default()
                        })
                    }
                }
                GroupKind::Consumer(_) => classic::Pending::Now(classic::JoinResult {
                    error: error::INCONSISTENT_GROUP_PROTOCOL,
                    generation: -1,
                    member_id: req.member_id,
                    ..Default::default()
                }),
            };
            g.note_state(now_ms());
            r
        })
    }

    /// Runs `f` on the classic group, or answers `missing` when there is none (or it is a KIP-848 one).
    pub fn with_classic<T>(
        &self,
        group_id: &str,
        missing: T,
        f: impl FnOnce(&mut ClassicGroup) -> T,
    ) -> T {
        with_group(&self.groups, group_id, |g| {
            let r = match &mut g.kind {
                GroupKind::Classic(c) => Some(f(c)),
                GroupKind::Consumer(_) => None,
            };
            g.note_state(now_ms());
            r
        })
        .flatten()
        .unwrap_or(missing)
    }

    /// Reads a group (DescribeGroups, ConsumerGroupDescribe); `None` if there is none.
    pub fn with_existing<T>(&self, group_id: &str, f: impl FnOnce(&Group) -> T) -> Option<T> {
        with_group(&self.groups, group_id, |g| f(g))
    }

    // ---- KIP-848 --------------------------------------------------------------------------------

    /// ConsumerGroupHeartbeat. An empty classic group (say, one with only committed offsets) becomes a
    /// consumer group; one with classic members refuses (Kafka: GROUP_ID_NOT_FOUND, "not a consumer group").
    pub fn consumer_heartbeat(
        &self,
        group_id: &str,
        req: consumer::HeartbeatRequest,
    ) -> (consumer::HeartbeatResult, bool) {
        let max = self.config.consumer_max_size;
        with_new_group(&self.groups, group_id, |g| {
            if matches!(&g.kind, GroupKind::Classic(c) if c.members.is_empty()) {
                g.kind = GroupKind::Consumer(ConsumerGroup::default());
            }
            match &mut g.kind {
                GroupKind::Consumer(c) => {
                    if let Some(full) = c.refuse_if_full(&req, max) {
                        return (full, false);
                    }
                    let before = (c.group_epoch, c.assignment_epoch, c.members.len());
                    let r = c.heartbeat(req, &self.storage, Instant::now());
                    let changed = before != (c.group_epoch, c.assignment_epoch, c.members.len());
                    (r, changed)
                }
                GroupKind::Classic(_) => (
                    consumer::HeartbeatResult {
                        error: error::GROUP_ID_NOT_FOUND,
                        message: Some(format!("Group {group_id} is not a consumer group")),
                        member_epoch: -1,
                        ..Default::default()
                    },
                    false,
                ),
            }
        })
    }

    // ---- offsets ------------------------------------------------------------------------------

    /// OffsetCommit, in the request's in-order part: validated against the group as it is now
    /// (Kafka's OffsetMetadataManager.validateOffsetCommit, then the group's own rule), and queued
    /// for the writer, which applies commits in the order they were queued.
    pub fn commit_offsets(&self, req: CommitRequest) -> CommitReply {
        let now = now_ms();
        let mut codes = Vec::with_capacity(req.offsets.len());
        let mut records = Vec::new();
        for (topic, partition, offset, leader_epoch, metadata) in req.offsets {
            let known = self
                .storage
                .topic(&topic)
                .is_some_and(|t| partition >= 0 && (partition as usize) < t.partitions.len());
            let code = if !known {
                error::UNKNOWN_TOPIC_OR_PARTITION
            } else if metadata
                .as_ref()
                .is_some_and(|m| m.len() > self.config.offset_metadata_max_bytes)
            {
                error::OFFSET_METADATA_TOO_LARGE
            } else {
                records.push(OffsetRecord {
                    group_id: req.group_id.clone(),
                    topic,
                    partition,
                    offset,
                    leader_epoch,
                    metadata,
                    commit_ms: now,
                });
                error::NONE
            };
            codes.push(code);
        }
        let group_id = req.group_id.clone();
        let mut queue = |g: &mut Group| -> Result<Option<oneshot::Receiver<bool>>, i16> {
            match &g.kind {
                GroupKind::Classic(c) => c.validate_offset_commit(
                    &req.member_id,
                    req.instance_id.as_deref(),
                    req.generation_or_epoch,
                )?,
                GroupKind::Consumer(c) => c.validate_offset_commit(
                    &req.member_id,
                    req.generation_or_epoch,
                    req.api_version,
                )?,
            }
            if records.is_empty() {
                return Ok(None);
            }
            // Queued under the group's lock, so the order of commits is the order of validation.
            Ok(Some(self.writer.submit(Op::Commit {
                group: group_id.clone(),
                records: std::mem::take(&mut records),
            })))
        };
        let queued = match with_group(&self.groups, &req.group_id, |g| queue(g)) {
            Some(r) => r,
            None if req.generation_or_epoch < 0 => {
                // A so-called simple group, made by an admin or standalone consumer's commit.
                with_new_group(&self.groups, &req.group_id, |g| queue(g))
            }
            // Kafka: GROUP_ID_NOT_FOUND from OffsetCommit v9, ILLEGAL_GENERATION before it.
            None if req.api_version >= 9 => Err(error::GROUP_ID_NOT_FOUND),
            None => Err(error::ILLEGAL_GENERATION),
        };
        match queued {
            Err(code) => CommitReply::Done(Err(code)),
            Ok(None) => CommitReply::Done(Ok(codes)),
            Ok(Some(rx)) => CommitReply::Written(codes, rx),
        }
    }

    /// True when every queued write is applied: a read from memory sees all of them.
    pub fn writes_applied(&self) -> bool {
        self.writer.idle()
    }

    /// Answers once everything queued before it is applied (OffsetFetch behind pipelined commits).
    pub fn barrier(&self) -> oneshot::Receiver<bool> {
        self.writer.submit(Op::Barrier)
    }

    /// Committed offsets of a group: the given partitions (missing ones as `None`), or all with `None`.
    pub fn fetch_offsets(
        &self,
        group_id: &str,
        wanted: Option<Vec<(String, Vec<i32>)>>,
    ) -> TopicOffsets {
        let read = |offsets: Option<&BTreeMap<(String, i32), CommittedOffset>>| match wanted {
            Some(list) => list
                .into_iter()
                .map(|(topic, parts)| {
                    let found = parts
                        .into_iter()
                        .map(|p| (p, offsets.and_then(|o| o.get(&(topic.clone(), p))).cloned()))
                        .collect();
                    (topic, found)
                })
                .collect(),
            None => {
                let mut by_topic: BTreeMap<String, Vec<(i32, Option<CommittedOffset>)>> =
                    BTreeMap::new();
                for ((t, p), o) in offsets.into_iter().flatten() {
                    by_topic
                        .entry(t.clone())
                        .or_default()
                        .push((*p, Some(o.clone())));
                }
                by_topic.into_iter().collect()
            }
        };
        let mut read = Some(read);
        let found = with_group(&self.groups, group_id, |g| {
            read.take().map(|r| r(Some(&g.offsets)))
        })
        .flatten();
        match (found, read) {
            (Some(f), _) => f,
            (None, Some(r)) => r(None),
            (None, None) => Vec::new(),
        }
    }

    /// OffsetDelete: refused per partition while members are subscribed to the topic. The receiver
    /// answers once the deletion is applied (nothing to wait for when nothing is deleted).
    #[allow(clippy::type_complexity)]
    pub fn delete_offsets(
        &self,
        group_id: &str,
        topics: Vec<(String, Vec<i32>)>,
    ) -> Result<
        (
            Vec<(String, Vec<(i32, i16)>)>,
            Option<oneshot::Receiver<bool>>,
        ),
        i16,
    > {
        with_group(&self.groups, group_id, |g| {
            if let GroupKind::Classic(c) = &g.kind {
                // ClassicGroup.validateOffsetDelete: only a consumer-protocol group may have members.
                if !g.is_empty() && c.protocol_type.as_deref() != Some("consumer") {
                    return Err(error::NON_EMPTY_GROUP);
                }
            }
            let subscribed = g.subscribed_topics();
            let mut delete = Vec::new();
            let results: Vec<_> = topics
                .into_iter()
                .map(|(t, parts)| {
                    let codes = parts
                        .into_iter()
                        .map(|p| {
                            if subscribed.contains(&t) {
                                (p, error::GROUP_SUBSCRIBED_TO_TOPIC)
                            } else {
                                delete.push((t.clone(), p));
                                (p, error::NONE)
                            }
                        })
                        .collect();
                    (t, codes)
                })
                .collect();
            let rx = (!delete.is_empty()).then(|| {
                self.writer.submit(Op::DeleteOffsets {
                    group: g.id.clone(),
                    partitions: delete,
                })
            });
            Ok((results, rx))
        })
        .unwrap_or(Err(error::GROUP_ID_NOT_FOUND))
    }

    /// DeleteTopics: every group's committed offsets of the topic go with it (Kafka's
    /// OffsetMetadataManager.onPartitionsDeleted). Answers once applied.
    pub async fn on_topic_deleted(&self, topic: &str) {
        let rx = self.writer.submit(Op::DeleteTopic {
            topic: topic.to_string(),
        });
        if !matches!(rx.await, Ok(true)) {
            tracing::error!(%topic, "could not delete the committed offsets of a deleted topic");
        }
    }

    /// Offset expiry (Kafka's GroupCoordinatorShard.cleanupGroupMetadata): expired offsets are
    /// deleted, and a group left empty with no offsets is deleted too. Returns the number of
    /// offsets queued for expiry.
    pub fn expire_offsets(&self, now_ms: i64) -> usize {
        let retention_ms = self.config.offsets_retention.as_millis() as i64;
        let mut count = 0;
        for arc in self.all_groups() {
            let g = arc.lock();
            if g.removed {
                continue;
            }
            let (expired, all) = g.expired_offsets(now_ms, retention_ms);
            let drop_group = all && g.is_empty();
            if expired.is_empty() && !drop_group {
                continue;
            }
            count += expired.len();
            tracing::info!(group = %g.id, offsets = expired.len(), deleted = drop_group, "expiring offsets");
            self.writer.submit_quiet(Op::Expire {
                group: g.id.clone(),
                partitions: expired,
                drop_group,
            });
        }
        count
    }

    // ---- admin --------------------------------------------------------------------------------

    /// (group id, protocol type, state, type) of every group.
    pub fn list(&self) -> Vec<(String, String, &'static str, &'static str)> {
        let mut v: Vec<_> = self
            .all_groups()
            .into_iter()
            .filter_map(|arc| {
                let g = arc.lock();
                (!g.removed).then(|| {
                    (
                        g.id.clone(),
                        g.protocol_type(),
                        g.state_name(),
                        g.type_name(),
                    )
                })
            })
            .collect();
        v.sort();
        v
    }

    /// DeleteGroups for one group: only an empty one (Kafka's validateDeleteGroup); its offsets go
    /// too. The receiver answers once the deletion is applied.
    pub fn delete_group(&self, group_id: &str) -> Result<oneshot::Receiver<bool>, i16> {
        with_group(&self.groups, group_id, |g| {
            if !g.is_empty() {
                return Err(error::NON_EMPTY_GROUP);
            }
            Ok(self.writer.submit(Op::DeleteGroup {
                group: g.id.clone(),
            }))
        })
        .unwrap_or(Err(error::GROUP_ID_NOT_FOUND))
    }
}

/// What is kept in the metadata store per group.
#[derive(Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum PersistedGroup {
    Classic(classic::PersistedClassic),
    Consumer(consumer::PersistedConsumer),
}

/// The group's document for the metadata store; `None` when nothing but offsets is left to keep.
fn persisted(g: &Group) -> Option<String> {
    let doc = match &g.kind {
        GroupKind::Classic(c) => PersistedGroup::Classic(c.persist()),
        GroupKind::Consumer(c) => PersistedGroup::Consumer(c.persist()),
    };
    serde_json::to_string(&doc).ok()
}

/// Bytes as hex in persisted documents.
pub(crate) mod hex_bytes {
    use bytes::Bytes;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(b: &Bytes, s: S) -> Result<S::Ok, S::Error> {
        let mut out = String::with_capacity(b.len() * 2);
        for byte in b.iter() {
            out.push_str(&format!("{byte:02x}"));
        }
        s.serialize_str(&out)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
        let s = String::deserialize(d)?;
        let bytes: Result<Vec<u8>, _> = (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(s.get(i..i + 2).unwrap_or("zz"), 16))
            .collect();
        bytes.map(Bytes::from).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use streamhouse_storage::StorageConfig;

    async fn coordinator(config: GroupConfig) -> (tempfile::TempDir, Arc<GroupCoordinator>) {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(StorageConfig::new(dir.path())).await.unwrap();
        storage
            .create_topic("t", 2, Default::default())
            .await
            .unwrap();
        (dir, GroupCoordinator::open(storage, config).unwrap())
    }

    async fn commit(c: &GroupCoordinator, group: &str, member: &str, generation: i32) -> i16 {
        let req = CommitRequest {
            group_id: group.into(),
            member_id: member.into(),
            instance_id: None,
            generation_or_epoch: generation,
            api_version: 8,
            offsets: vec![("t".into(), 0, 7, -1, None)],
        };
        match c.commit_offsets(req) {
            CommitReply::Done(Ok(codes)) => codes[0],
            CommitReply::Done(Err(code)) => code,
            CommitReply::Written(codes, rx) => {
                assert!(rx.await.unwrap());
                codes[0]
            }
        }
    }

    fn committed(c: &GroupCoordinator, group: &str) -> Option<i64> {
        let found = c.fetch_offsets(group, Some(vec![("t".into(), vec![0])]));
        found[0].1[0].1.as_ref().map(|o| o.offset)
    }

    async fn settle(c: &GroupCoordinator) {
        assert!(c.barrier().await.unwrap());
    }

    /// Issue 9.11: a standalone consumer's offsets expire offsets.retention.minutes after their
    /// commit (Kafka's OffsetExpirationCondition by commit time), and the group, empty with nothing
    /// left, goes with them; a newer commit is kept.
    #[tokio::test]
    async fn standalone_offsets_expire_by_commit_time() {
        let retention = Duration::from_secs(60);
        let (_dir, c) = coordinator(GroupConfig {
            offsets_retention: retention,
            ..Default::default()
        })
        .await;
        let before = now_ms();
        assert_eq!(commit(&c, "simple", "", -1).await, error::NONE);
        let committed_at = c
            .fetch_offsets("simple", None)
            .first()
            .and_then(|(_, ps)| ps[0].1.as_ref().map(|o| o.commit_ms))
            .unwrap();
        assert!(committed_at >= before);
        assert_eq!(c.expire_offsets(committed_at + 59_999), 0, "not yet");
        assert_eq!(c.expire_offsets(committed_at + 60_000), 1);
        settle(&c).await;
        assert_eq!(committed(&c, "simple"), None);
        assert!(c.list().is_empty(), "the empty group went with its offsets");
    }

    /// A classic group's offsets expire only once the group is Empty, counting from when it became
    /// Empty (Kafka's currentStateTimestamp), not from the commit.
    #[tokio::test]
    async fn classic_group_offsets_expire_after_it_became_empty() {
        let (_dir, c) = coordinator(GroupConfig {
            offsets_retention: Duration::from_secs(60),
            initial_rebalance_delay: Duration::ZERO,
            ..Default::default()
        })
        .await;
        let join = classic::JoinRequest {
            member_id: String::new(),
            instance_id: Some("i".into()),
            client_id: "c".into(),
            client_host: "h".into(),
            session_timeout: Duration::from_secs(10),
            rebalance_timeout: Duration::from_secs(10),
            protocol_type: "consumer".into(),
            // ConsumerProtocolSubscription v0 for topic "t": subscribed offsets never expire.
            protocols: vec![(
                "range".into(),
                bytes::Bytes::from_static(&[0, 0, 0, 0, 0, 1, 0, 1, b't', 255, 255, 255, 255]),
            )],
            require_known_member_id: true,
        };
        let member = match c.join("g", join) {
            classic::Pending::Wait(mut rx) => rx.try_recv().unwrap().member_id,
            classic::Pending::Now(r) => panic!("{r:?}"),
        };
        let sync = classic::SyncRequest {
            member_id: member.clone(),
            instance_id: None,
            generation: 1,
            protocol_type: None,
            protocol_name: None,
            assignments: vec![],
        };
        let _ = c.with_classic("g", None, |g| Some(g.sync(sync, Instant::now())));
        assert_eq!(commit(&c, "g", &member, 1).await, error::NONE);
        let far = now_ms() + 3_600_000;
        assert_eq!(
            c.expire_offsets(far),
            0,
            "a group with members keeps its offsets"
        );
        let (code, _) = c.with_classic("g", (0, false), |g| {
            g.leave(&member, None, Duration::ZERO, Instant::now())
        });
        assert_eq!(code, error::NONE);
        let since = c
            .with_classic("g", None, |g| g.empty_since_ms)
            .expect("Empty since now");
        assert_eq!(c.expire_offsets(since + 59_999), 0);
        assert_eq!(c.expire_offsets(since + 60_000), 1);
        settle(&c).await;
        assert_eq!(committed(&c, "g"), None);
    }

    /// The timer does it on its own every offsets.retention.check.interval.ms.
    #[tokio::test]
    async fn the_timer_expires_offsets() {
        let (_dir, c) = coordinator(GroupConfig {
            offsets_retention: Duration::from_millis(200),
            offsets_retention_check_interval: Duration::from_millis(100),
            ..Default::default()
        })
        .await;
        assert_eq!(commit(&c, "simple", "", -1).await, error::NONE);
        assert_eq!(committed(&c, "simple"), Some(7));
        let deadline = Instant::now() + Duration::from_secs(10);
        while committed(&c, "simple").is_some() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(committed(&c, "simple"), None, "expired by the timer");
    }

    /// A commit from a member that is not in the group, or of a group that does not exist, is
    /// refused with Kafka's codes; an admin commit makes a simple group.
    #[tokio::test]
    async fn commit_validation_codes() {
        let (_dir, c) = coordinator(GroupConfig::default()).await;
        assert_eq!(commit(&c, "none", "m", 3).await, error::ILLEGAL_GENERATION);
        let v9 = CommitRequest {
            group_id: "none".into(),
            member_id: "m".into(),
            instance_id: None,
            generation_or_epoch: 3,
            api_version: 9,
            offsets: vec![("t".into(), 0, 7, -1, None)],
        };
        assert!(matches!(
            c.commit_offsets(v9),
            CommitReply::Done(Err(error::GROUP_ID_NOT_FOUND))
        ));
        assert_eq!(commit(&c, "simple", "", -1).await, error::NONE);
        assert_eq!(commit(&c, "simple", "m", 1).await, error::UNKNOWN_MEMBER_ID);
    }
}
