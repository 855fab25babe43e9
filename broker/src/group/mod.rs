//! The group coordinator: classic consumer groups (JoinGroup/SyncGroup/Heartbeat/LeaveGroup, see
//! `classic.rs`), KIP-848 consumer groups (ConsumerGroupHeartbeat, see `consumer.rs`), and committed
//! offsets for both (`offsets.rs`), with Kafka's offset expiry (`offsets.retention.minutes`) and
//! group size limits (`group.max.size`, `group.consumer.max.size`).
//!
//! Handlers see the coordinator's methods and the plain structs of `view.rs` only: a group's state
//! machine and its lock stay in here. The rules of the protocol (what a request may do to a group)
//! sit next to the state machines; the checks Kafka's GroupCoordinatorService makes before it reaches
//! a group (empty group id, session timeout bounds) are made by the methods below.
//!
//! # State, locks and blocking
//!
//! - The directory (`groups`) maps a group id to that group's own lock. It is held only to find,
//!   insert or remove an entry: never while a group's state machine runs, never across an await.
//!   Lock order is directory, then group (then, briefly, storage's topic catalog for a snapshot or
//!   a topic name); nothing takes the directory while holding a group. Removing a group takes both
//!   and marks it `removed`, so whoever still holds its `Arc` looks it up again ([`with_group`]).
//! - A group's lock guards its state machine and its committed offsets; it is held for one state
//!   machine step (no I/O, no await), so unrelated groups never wait for each other.
//!
//! The rule for blocking work: no coordinator call blocks a runtime thread on I/O, and what runs on
//! a runtime thread is bounded by one group (or, for ListGroups, one short entry per group). Each
//! kind of work has one home:
//!
//! - Runtime threads (handlers' in-order parts) run one in-memory step of one group under its
//!   lock: classic Join/Sync/Heartbeat/Leave, commit validation, a group's view or offsets.
//! - The writer thread (`writer.rs`) is the only caller of the metadata store: it restores the
//!   groups at open, then applies every durable change in request order. Committed offsets change
//!   in memory only once it made them durable; membership changes take effect in memory at once
//!   (as in Kafka, the state machine is the authority) and it saves a snapshot of the group.
//! - The timer thread (`group-timer`) makes the passes over every group: expiring sessions,
//!   completing rebalances, checking subscribed topics, expiring offsets.
//! - A blocking-pool thread runs a KIP-848 heartbeat ([`GroupCoordinator::consumer_heartbeat`]),
//!   whose step may compute a target over all the group's partitions; its handler puts it there.

mod assignor;
mod classic;
mod consumer;
mod offsets;
pub mod offsets_log;
mod view;
mod writer;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};
use streamhouse_storage::{MetadataStore, Storage, StorageError};

use crate::error;
use classic::ClassicGroup;
use consumer::{ConsumerGroup, TopicSnapshot};
use writer::{Op, Writer};

pub use classic::{
    JoinMember, JoinRequest, JoinResult, MemberAssignment, Protocol, Reply, SyncRequest, SyncResult,
};
pub use consumer::{Assignment, HeartbeatRequest, HeartbeatResult};
pub use view::*;

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

/// Which protocol a group speaks; a group is one or the other (KIP-848 keeps them apart too).
enum GroupKind {
    Classic(ClassicGroup),
    Consumer(ConsumerGroup),
}

struct Group {
    id: String,
    kind: GroupKind,
    /// Committed offsets.
    offsets: BTreeMap<TopicPartition, CommittedOffset>,
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

    fn listing(&self) -> GroupListing {
        let (protocol_type, state, group_type) = match &self.kind {
            GroupKind::Classic(g) => (
                g.protocol_type.clone().unwrap_or_default(),
                g.state.name(),
                "classic",
            ),
            GroupKind::Consumer(g) => ("consumer".to_string(), g.state_name(), "consumer"),
        };
        GroupListing {
            group_id: self.id.clone(),
            protocol_type,
            state,
            group_type,
        }
    }

    fn is_empty(&self) -> bool {
        match &self.kind {
            GroupKind::Classic(g) => g.members.is_empty(),
            GroupKind::Consumer(g) => g.members.is_empty(),
        }
    }

    /// Topics the group's members are subscribed to (for OffsetDelete's GROUP_SUBSCRIBED_TO_TOPIC).
    fn subscribed_topics(&self) -> Vec<String> {
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
}

/// Group id -> that group's own lock (see the module notes for the locking rule).
type Directory = Mutex<HashMap<String, Arc<Mutex<Group>>>>;

/// Runs `f` on the group, or returns `None` if there is none.
fn with_group<T>(dir: &Directory, id: &str, f: impl FnOnce(&mut Group) -> T) -> Option<T> {
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
fn with_new_group<T>(dir: &Directory, id: &str, f: impl FnOnce(&mut Group) -> T) -> T {
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
fn remove_if(dir: &Directory, id: &str, pred: impl FnOnce(&Group) -> bool) -> bool {
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

pub struct GroupCoordinator {
    config: GroupConfig,
    /// Lock rule (see the module notes): the directory only finds, inserts or removes a group; all
    /// work on a group holds that group's lock alone, never across an await and never around I/O.
    groups: Arc<Directory>,
    /// Every metadata-store write, in request order, on its own thread.
    writer: Writer,
    storage: Arc<Storage>,
}

pub fn now_ms() -> i64 {
    streamhouse_storage::engine::now_ms()
}

impl GroupCoordinator {
    /// Starts the writer thread, which loads committed offsets and persisted groups (so the
    /// metadata store is not read on a runtime thread), then the timer thread that expires members,
    /// completes rebalances and expires offsets.
    pub async fn open(
        storage: Arc<Storage>,
        config: GroupConfig,
    ) -> Result<Arc<GroupCoordinator>, StorageError> {
        let dir: Arc<Directory> = Arc::new(Mutex::new(HashMap::new()));
        let (writer, restored) = Writer::start(dir.clone(), storage.clone())?;
        let groups = restored.await.map_err(|_| {
            StorageError::Io(std::io::Error::other(
                "the group writer thread ended before restoring the groups",
            ))
        })??;
        tracing::info!(groups, "group coordinator loaded");
        let c = Arc::new(GroupCoordinator {
            config,
            writer,
            groups: dir,
            storage,
        });
        let weak = Arc::downgrade(&c);
        let check_every = c.config.offsets_retention_check_interval;
        std::thread::Builder::new()
            .name("group-timer".into())
            .spawn(move || {
                // 100 ms: session and rebalance deadlines are seconds; this keeps expiry within a
                // tenth of one.
                let every = Duration::from_millis(100);
                let mut next_expiry = Instant::now() + check_every;
                loop {
                    std::thread::sleep(every);
                    let Some(c) = weak.upgrade() else { break };
                    let now = Instant::now();
                    c.on_tick(now);
                    if now >= next_expiry {
                        next_expiry = now + check_every;
                        c.expire_offsets(now_ms());
                    }
                }
            })?;
        Ok(c)
    }

    /// Every group, for work over all of them (each is then locked on its own).
    fn all_groups(&self) -> Vec<Arc<Mutex<Group>>> {
        self.groups.lock().values().cloned().collect()
    }

    /// The topics a KIP-848 step assigns from, as storage has them now.
    fn topic_snapshot(&self) -> TopicSnapshot {
        let mut snap = TopicSnapshot::default();
        for t in self.storage.topics() {
            snap.insert(t.name.clone(), t.id, t.partitions.len() as i32);
        }
        snap
    }

    fn on_tick(&self, now: Instant) {
        let wall = now_ms();
        // Taken once per pass, by the first group that checks its topics.
        let topics = std::cell::OnceCell::new();
        for arc in self.all_groups() {
            let mut g = arc.lock();
            if g.removed {
                continue;
            }
            let id = g.id.clone();
            let changed = match &mut g.kind {
                GroupKind::Classic(c) => c.tick(&id, now),
                GroupKind::Consumer(c) => {
                    c.tick(&id, now, self.config.consumer_session_timeout, || {
                        topics.get_or_init(|| self.topic_snapshot())
                    })
                }
            };
            g.note_state(wall);
            if changed {
                self.writer.submit_quiet(Op::SaveGroup { group: id });
            }
        }
    }

    /// Saves the group's current state (after a completed rebalance, a leave, an expiry); the
    /// writer takes the snapshot.
    fn persist(&self, id: &str) {
        self.writer.submit_quiet(Op::SaveGroup {
            group: id.to_string(),
        });
    }

    // ---- classic protocol ------------------------------------------------------------------------

    /// JoinGroup, after Kafka's GroupCoordinatorService.joinGroup checks (group id, session timeout
    /// within group.min/max.session.timeout.ms, a protocol type and at least one protocol). An
    /// empty KIP-848 group becomes a classic one; a non-empty one refuses classic members.
    pub fn join(&self, group_id: &str, req: JoinRequest) -> Reply<JoinResult> {
        let cfg = &self.config;
        let refused = if group_id.is_empty() {
            Some(error::INVALID_GROUP_ID)
        } else if req.session_timeout < cfg.min_session_timeout
            || req.session_timeout > cfg.max_session_timeout
        {
            Some(error::INVALID_SESSION_TIMEOUT)
        } else if req.protocol_type.is_empty() || req.protocols.is_empty() {
            Some(error::INCONSISTENT_GROUP_PROTOCOL)
        } else {
            None
        };
        if let Some(code) = refused {
            return Reply::Now(JoinResult::error(code, &req.member_id));
        }
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
                        Reply::Now(JoinResult {
                            error: error::GROUP_MAX_SIZE_REACHED,
                            generation: -1,
                            ..Default::default()
                        })
                    }
                }
                GroupKind::Consumer(_) => Reply::Now(JoinResult {
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

    /// SyncGroup. A completed rebalance is saved, so a restarted broker knows the members and
    /// their assignment.
    pub fn sync(&self, group_id: &str, req: SyncRequest) -> Reply<SyncResult> {
        let refuse = |code| {
            Reply::Now(SyncResult {
                error: code,
                ..Default::default()
            })
        };
        if group_id.is_empty() {
            return refuse(error::INVALID_GROUP_ID);
        }
        let stepped = self.with_classic(group_id, None, |g| Some(g.sync(req, Instant::now())));
        let Some((pending, completed)) = stepped else {
            return refuse(error::UNKNOWN_MEMBER_ID);
        };
        if completed {
            self.persist(group_id);
        }
        pending
    }

    /// Heartbeat of a classic member: its error code.
    pub fn heartbeat(
        &self,
        group_id: &str,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
    ) -> i16 {
        if group_id.is_empty() {
            return error::INVALID_GROUP_ID;
        }
        self.with_classic(group_id, error::UNKNOWN_MEMBER_ID, |g| {
            g.heartbeat(member_id, instance_id, generation, Instant::now())
        })
    }

    /// LeaveGroup: a code per member, in order, or one for the whole request.
    pub fn leave(&self, group_id: &str, members: &[LeavingMember]) -> Result<Vec<i16>, i16> {
        if group_id.is_empty() {
            return Err(error::INVALID_GROUP_ID);
        }
        let delay = self.config.initial_rebalance_delay;
        let mut changed = false;
        let codes = members
            .iter()
            .map(|m| {
                self.with_classic(group_id, error::UNKNOWN_MEMBER_ID, |g| {
                    let (code, c) = g.leave(
                        &m.member_id,
                        m.instance_id.as_deref(),
                        delay,
                        Instant::now(),
                    );
                    changed |= c;
                    code
                })
            })
            .collect();
        if changed {
            self.persist(group_id);
        }
        Ok(codes)
    }

    /// Runs `f` on the classic group, or answers `missing` when there is none (or it is a KIP-848 one).
    fn with_classic<T>(
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

    // ---- KIP-848 --------------------------------------------------------------------------------

    /// ConsumerGroupHeartbeat (the request validated first, as Kafka's
    /// throwIfConsumerGroupHeartbeatRequestIsInvalid, so a refused request makes no group). An empty
    /// classic group (say, one with only committed offsets) becomes a consumer group; one with
    /// classic members refuses (Kafka: GROUP_ID_NOT_FOUND, "not a consumer group"). Its step can
    /// cost a target computation over all the group's partitions: call it from a blocking thread.
    pub fn consumer_heartbeat(
        &self,
        group_id: &str,
        api_version: i16,
        req: HeartbeatRequest,
    ) -> HeartbeatResult {
        if let Err(refused) = req.validate(group_id, api_version) {
            return refused;
        }
        let max = self.config.consumer_max_size;
        let (mut r, changed) = with_new_group(&self.groups, group_id, |g| {
            if matches!(&g.kind, GroupKind::Classic(c) if c.members.is_empty()) {
                g.kind = GroupKind::Consumer(ConsumerGroup::default());
            }
            match &mut g.kind {
                GroupKind::Consumer(c) => {
                    if let Some(full) = c.refuse_if_full(&req, max) {
                        return (full, false);
                    }
                    let before = (c.group_epoch, c.assignment_epoch, c.members.len());
                    let topics = std::cell::OnceCell::new();
                    let r = c.heartbeat(req, Instant::now(), || {
                        topics.get_or_init(|| self.topic_snapshot())
                    });
                    let changed = before != (c.group_epoch, c.assignment_epoch, c.members.len());
                    (r, changed)
                }
                GroupKind::Classic(_) => (
                    HeartbeatResult::error(
                        error::GROUP_ID_NOT_FOUND,
                        &format!("Group {group_id} is not a consumer group"),
                    ),
                    false,
                ),
            }
        });
        if changed {
            self.persist(group_id);
        }
        if r.error == error::NONE {
            // group.consumer.heartbeat.interval.ms, told to members in every answer.
            r.heartbeat_interval_ms = self.config.consumer_heartbeat_interval.as_millis() as i32;
        }
        r
    }

    // ---- admin --------------------------------------------------------------------------------

    /// Every group, sorted by id.
    pub fn list(&self) -> Vec<GroupListing> {
        self.list_filtered(&[], &[])
    }

    /// ListGroups: the groups in one of `states` and of one of `types` (an empty filter takes
    /// all), compared case-insensitively as Kafka's GroupMetadataManager.listGroups does; sorted
    /// by id.
    pub fn list_filtered(&self, states: &[String], types: &[String]) -> Vec<GroupListing> {
        let states: Vec<String> = states.iter().map(|s| s.to_lowercase()).collect();
        let types: Vec<String> = types.iter().map(|s| s.to_lowercase()).collect();
        let mut v: Vec<GroupListing> = self
            .all_groups()
            .into_iter()
            .filter_map(|arc| {
                let g = arc.lock();
                (!g.removed).then(|| g.listing())
            })
            .filter(|g| states.is_empty() || states.contains(&g.state.to_lowercase()))
            .filter(|g| types.is_empty() || types.iter().any(|t| t == g.group_type))
            .collect();
        v.sort();
        v
    }

    /// A classic group, for DescribeGroups.
    pub fn describe_classic(&self, group_id: &str) -> Described<ClassicDescription> {
        with_group(&self.groups, group_id, |g| match &g.kind {
            GroupKind::Classic(c) => Described::Found(c.describe()),
            GroupKind::Consumer(_) => Described::OtherProtocol,
        })
        .unwrap_or(Described::Missing)
    }

    /// A KIP-848 group, for ConsumerGroupDescribe; assigned topics by id and name.
    pub fn describe_consumer(&self, group_id: &str) -> Described<ConsumerDescription> {
        let name = |id| {
            self.storage
                .topic_by_id(id)
                .map(|t| t.name.clone())
                .unwrap_or_default()
        };
        with_group(&self.groups, group_id, |g| match &g.kind {
            GroupKind::Consumer(c) => Described::Found(c.describe(name)),
            GroupKind::Classic(_) => Described::OtherProtocol,
        })
        .unwrap_or(Described::Missing)
    }

    /// DeleteGroups for one group: only an empty one (Kafka's validateDeleteGroup); its offsets go
    /// too. The receiver answers once the deletion is applied.
    pub fn delete_group(
        &self,
        group_id: &str,
    ) -> Result<tokio::sync::oneshot::Receiver<bool>, i16> {
        if group_id.is_empty() {
            return Err(error::INVALID_GROUP_ID);
        }
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
enum PersistedGroup {
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

/// Fills the (empty) directory from the metadata store: persisted groups, then committed offsets
/// (a group with offsets and no document is a simple group). Runs on the writer thread.
fn restore(dir: &Directory, meta: &dyn MetadataStore) -> Result<usize, StorageError> {
    debug_assert!(
        tokio::runtime::Handle::try_current().is_err(),
        "the metadata store is read on the writer thread, not a runtime thread"
    );
    let now = Instant::now();
    let mut groups: HashMap<String, Group> = HashMap::new();
    for (id, doc) in meta.load_groups()? {
        let kind = match serde_json::from_str::<PersistedGroup>(&doc) {
            Ok(PersistedGroup::Classic(p)) => GroupKind::Classic(ClassicGroup::restore(p, now)),
            Ok(PersistedGroup::Consumer(p)) => GroupKind::Consumer(ConsumerGroup::restore(p, now)),
            Err(e) => {
                tracing::warn!(group = %id, error = %e, "ignoring unreadable group state");
                continue;
            }
        };
        let mut g = Group::new_classic(&id);
        g.kind = kind;
        groups.insert(id, g);
    }
    for r in meta.load_offsets()? {
        let group_id = r.group_id.clone();
        let (at, offset) = CommittedOffset::from_record(r);
        groups
            .entry(group_id)
            .or_insert_with_key(|id| Group::new_classic(id))
            .offsets
            .insert(at, offset);
    }
    let n = groups.len();
    dir.lock().extend(
        groups
            .into_iter()
            .map(|(id, g)| (id, Arc::new(Mutex::new(g)))),
    );
    Ok(n)
}

/// Bytes as hex in persisted documents.
mod hex_bytes {
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
pub(super) mod tests {
    use super::*;
    use bytes::Bytes;
    use streamhouse_storage::StorageConfig;

    /// A coordinator over fresh storage with topic "t" of 2 partitions.
    pub(in crate::group) async fn coordinator(
        config: GroupConfig,
    ) -> (tempfile::TempDir, Arc<GroupCoordinator>) {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(StorageConfig::new(dir.path())).await.unwrap();
        storage
            .create_topic("t", 2, Default::default())
            .await
            .unwrap();
        (dir, GroupCoordinator::open(storage, config).await.unwrap())
    }

    fn join_request(session_timeout: Duration, protocol_type: &str) -> JoinRequest {
        JoinRequest {
            member_id: String::new(),
            instance_id: Some("i".into()),
            client_id: "c".into(),
            client_host: "/127.0.0.1".into(),
            session_timeout,
            rebalance_timeout: Duration::from_secs(10),
            protocol_type: protocol_type.into(),
            protocols: vec![Protocol {
                name: "range".into(),
                metadata: Bytes::from_static(b"m"),
            }],
            require_known_member_id: true,
        }
    }

    fn now<T>(p: Reply<T>) -> T {
        match p {
            Reply::Now(t) => t,
            Reply::Later(mut rx) => rx.try_recv().expect("answered"),
        }
    }

    fn heartbeat(member_epoch: i32, server_assignor: Option<&str>) -> HeartbeatRequest {
        HeartbeatRequest {
            member_id: "m".into(),
            member_epoch,
            instance_id: None,
            rack_id: None,
            rebalance_timeout_ms: 30_000,
            subscribed: Some(vec!["t".into()]),
            regex: None,
            server_assignor: server_assignor.map(String::from),
            owned: Some(Assignment::new()),
            client_id: "c".into(),
            client_host: "/127.0.0.1".into(),
        }
    }

    /// The checks Kafka's GroupCoordinatorService makes before a group is touched: a JoinGroup with
    /// an empty group id, a session timeout outside group.min/max.session.timeout.ms, or no
    /// protocol type is refused, and makes no group.
    #[tokio::test]
    async fn join_refuses_bad_requests_without_making_a_group() {
        let (_dir, c) = coordinator(GroupConfig::default()).await;
        let ok = Duration::from_secs(10);
        let cases = [
            ("", join_request(ok, "consumer"), error::INVALID_GROUP_ID),
            (
                "g",
                join_request(Duration::from_secs(5), "consumer"),
                error::INVALID_SESSION_TIMEOUT,
            ),
            (
                "g",
                join_request(Duration::from_secs(1801), "consumer"),
                error::INVALID_SESSION_TIMEOUT,
            ),
            (
                "g",
                join_request(ok, ""),
                error::INCONSISTENT_GROUP_PROTOCOL,
            ),
        ];
        for (group, req, code) in cases {
            let r = now(c.join(group, req));
            assert_eq!((r.error, r.generation), (code, -1));
        }
        assert!(c.list().is_empty(), "nothing was made");
        let mut no_protocols = join_request(ok, "consumer");
        no_protocols.protocols.clear();
        assert_eq!(
            now(c.join("g", no_protocols)).error,
            error::INCONSISTENT_GROUP_PROTOCOL
        );
        assert!(c.list().is_empty());
    }

    /// A ConsumerGroupHeartbeat refused for what it asks (here an unknown server assignor) is
    /// refused before the group is looked up, as Kafka's throwIfConsumerGroupHeartbeatRequestIsInvalid,
    /// so it leaves no empty group behind for ListGroups to show.
    #[tokio::test]
    async fn a_refused_consumer_heartbeat_makes_no_group() {
        let (_dir, c) = coordinator(GroupConfig::default()).await;
        let r = c.consumer_heartbeat("g", 1, heartbeat(0, Some("sticky")));
        assert_eq!(r.error, error::UNSUPPORTED_ASSIGNOR);
        assert_eq!(r.heartbeat_interval_ms, 0, "no interval on an error");
        let mut no_member = heartbeat(0, None);
        no_member.member_id.clear();
        assert_eq!(
            c.consumer_heartbeat("g", 1, no_member).error,
            error::INVALID_REQUEST,
            "v1: the client picks its member id"
        );
        assert!(c.list().is_empty(), "{:?}", c.list());
        let r = c.consumer_heartbeat("g", 1, heartbeat(0, Some("range")));
        assert_eq!((r.error, r.member_epoch), (error::NONE, 1));
        assert_eq!(
            r.heartbeat_interval_ms, 5000,
            "group.consumer.heartbeat.interval.ms"
        );
        assert_eq!(
            c.list(),
            vec![GroupListing {
                group_id: "g".into(),
                protocol_type: "consumer".into(),
                state: "Stable",
                group_type: "consumer",
            }]
        );
    }

    /// Restore runs on the writer thread: called on a runtime thread, it refuses (the rule for
    /// blocking work in the module notes).
    #[cfg(debug_assertions)]
    #[tokio::test]
    #[should_panic(expected = "writer thread")]
    async fn restore_refuses_a_runtime_thread() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(StorageConfig::new(dir.path())).await.unwrap();
        let _ = restore(&Mutex::new(HashMap::new()), storage.metadata().as_ref());
    }

    /// What the writer stored comes back at open (restored on the writer thread): committed
    /// offsets, a Stable classic group with its member and assignment, a KIP-848 group.
    #[tokio::test]
    async fn groups_and_offsets_come_back_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(StorageConfig::new(dir.path())).await.unwrap();
        storage
            .create_topic("t", 2, Default::default())
            .await
            .unwrap();
        let config = GroupConfig {
            initial_rebalance_delay: Duration::ZERO,
            ..Default::default()
        };
        let c = GroupCoordinator::open(storage.clone(), config.clone())
            .await
            .unwrap();
        let joined = now(c.join("classic", join_request(Duration::from_secs(10), "consumer")));
        let sync = SyncRequest {
            member_id: joined.member_id.clone(),
            instance_id: Some("i".into()),
            generation: joined.generation,
            protocol_type: None,
            protocol_name: None,
            assignments: vec![MemberAssignment {
                member_id: joined.member_id.clone(),
                assignment: Bytes::from_static(b"mine"),
            }],
        };
        assert_eq!(now(c.sync("classic", sync)).error, error::NONE);
        let commit = CommitRequest {
            group_id: "classic".into(),
            member_id: joined.member_id.clone(),
            instance_id: Some("i".into()),
            generation_or_epoch: joined.generation,
            api_version: 8,
            offsets: vec![PartitionCommit {
                topic: "t".into(),
                partition: 1,
                offset: 42,
                leader_epoch: 3,
                metadata: Some("m".into()),
            }],
        };
        let CommitReply::Written(_, written) = c.commit_offsets(commit) else {
            panic!("a commit to write");
        };
        assert!(written.await.unwrap());
        assert_eq!(
            c.consumer_heartbeat("kip848", 1, heartbeat(0, None)).error,
            0
        );
        assert!(c.barrier().await.unwrap());
        let before = (c.describe_classic("classic"), c.describe_consumer("kip848"));
        drop(c);

        let c = GroupCoordinator::open(storage, config).await.unwrap();
        let Described::Found(classic) = c.describe_classic("classic") else {
            panic!("the classic group is back");
        };
        assert_eq!(classic.state, "Stable");
        assert_eq!(classic.members[0].assignment, Bytes::from_static(b"mine"));
        assert_eq!(Described::Found(classic), before.0);
        assert_eq!(c.describe_consumer("kip848"), before.1);
        let offsets = c.fetch_offsets("classic", None);
        let restored = offsets.topics[0].partitions[0].committed.clone().unwrap();
        assert_eq!(
            (offsets.topics[0].partitions[0].partition, restored.offset),
            (1, 42)
        );
        assert_eq!(
            (restored.leader_epoch, restored.metadata.as_deref()),
            (3, Some("m"))
        );
    }

    /// ListGroups' filters: by state and by type, either case, empty taking all.
    #[tokio::test]
    async fn list_filters_by_state_and_type() {
        let (_dir, c) = coordinator(GroupConfig::default()).await;
        assert_eq!(
            c.consumer_heartbeat("kip848", 1, heartbeat(0, None)).error,
            0
        );
        let commit = CommitRequest {
            group_id: "simple".into(),
            member_id: String::new(),
            instance_id: None,
            generation_or_epoch: -1,
            api_version: 8,
            offsets: vec![PartitionCommit {
                topic: "t".into(),
                partition: 0,
                offset: 1,
                leader_epoch: -1,
                metadata: None,
            }],
        };
        let CommitReply::Written(_, written) = c.commit_offsets(commit) else {
            panic!("a commit to write");
        };
        assert!(written.await.unwrap());
        let ids = |states: &[&str], types: &[&str]| -> Vec<String> {
            let owned = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
            c.list_filtered(&owned(states), &owned(types))
                .into_iter()
                .map(|g| g.group_id)
                .collect()
        };
        assert_eq!(ids(&[], &[]), vec!["kip848", "simple"]);
        assert_eq!(ids(&["STABLE"], &[]), vec!["kip848"]);
        assert_eq!(ids(&["empty", "dead"], &[]), vec!["simple"]);
        assert_eq!(ids(&[], &["Classic"]), vec!["simple"]);
        assert_eq!(ids(&["stable"], &["classic"]), Vec::<String>::new());
    }

    /// Views: a group is described by its own protocol's describe, and is the other protocol's
    /// `OtherProtocol`; assigned topics come with their names.
    #[tokio::test]
    async fn groups_are_described_by_their_own_protocol() {
        let (_dir, c) = coordinator(GroupConfig {
            initial_rebalance_delay: Duration::ZERO,
            ..Default::default()
        })
        .await;
        assert_eq!(c.describe_classic("none"), Described::Missing);
        assert_eq!(c.describe_consumer("none"), Described::Missing);
        let joined = now(c.join("classic", join_request(Duration::from_secs(10), "consumer")));
        assert_eq!(joined.error, error::NONE);
        let Described::Found(d) = c.describe_classic("classic") else {
            panic!("a classic group");
        };
        assert_eq!(d.state, "CompletingRebalance");
        assert_eq!(d.members[0].member_id, joined.member_id);
        assert_eq!(c.describe_consumer("classic"), Described::OtherProtocol);

        assert_eq!(
            c.consumer_heartbeat("kip848", 1, heartbeat(0, None)).error,
            0
        );
        assert_eq!(c.describe_classic("kip848"), Described::OtherProtocol);
        let Described::Found(d) = c.describe_consumer("kip848") else {
            panic!("a consumer group");
        };
        assert_eq!((d.state, d.assignor_name.as_str()), ("Stable", "uniform"));
        let m = &d.members[0];
        assert_eq!(m.member_id, "m");
        assert_eq!(m.assignment, m.target_assignment);
        assert_eq!(m.assignment[0].topic_name, "t");
        assert_eq!(m.assignment[0].partitions, vec![0, 1]);
    }
}
