//! The group coordinator: classic consumer groups (JoinGroup/SyncGroup/Heartbeat/LeaveGroup, see
//! `classic.rs`), KIP-848 consumer groups (ConsumerGroupHeartbeat, see `consumer.rs`), and committed
//! offsets for both. State lives in memory behind one lock that is never held across an await; every
//! change that must survive a restart (offsets, a group's membership after a rebalance) is written to the
//! metadata store first, so a later multi-broker setup can move a group to another broker.

pub mod classic;
pub mod consumer;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};
use streamhouse_storage::{MetadataStore, OffsetRecord, Storage, StorageError};

use crate::error;
use classic::ClassicGroup;
use consumer::ConsumerGroup;

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
}

impl Group {
    fn new_classic(id: &str) -> Group {
        Group {
            id: id.to_string(),
            kind: GroupKind::Classic(ClassicGroup::default()),
            offsets: BTreeMap::new(),
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
}

pub struct GroupCoordinator {
    pub config: GroupConfig,
    pub(crate) state: Mutex<HashMap<String, Group>>,
    meta: Arc<dyn MetadataStore>,
    pub(crate) storage: Arc<Storage>,
}

pub fn now_ms() -> i64 {
    streamhouse_storage::engine::now_ms()
}

impl GroupCoordinator {
    /// Loads committed offsets and persisted groups, and starts the timer that expires members and
    /// completes rebalances.
    pub fn open(
        storage: Arc<Storage>,
        config: GroupConfig,
    ) -> Result<Arc<GroupCoordinator>, StorageError> {
        let meta = storage.metadata();
        let mut groups: HashMap<String, Group> = HashMap::new();
        for (id, doc) in meta.load_groups()? {
            match serde_json::from_str::<PersistedGroup>(&doc) {
                Ok(PersistedGroup::Classic(p)) => {
                    groups.insert(
                        id.clone(),
                        Group {
                            id,
                            kind: GroupKind::Classic(ClassicGroup::restore(p)),
                            offsets: BTreeMap::new(),
                        },
                    );
                }
                Ok(PersistedGroup::Consumer(p)) => {
                    groups.insert(
                        id.clone(),
                        Group {
                            id,
                            kind: GroupKind::Consumer(ConsumerGroup::restore(p)),
                            offsets: BTreeMap::new(),
                        },
                    );
                }
                Err(e) => {
                    tracing::warn!(group = %id, error = %e, "ignoring unreadable group state")
                }
            }
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
        let c = Arc::new(GroupCoordinator {
            config,
            state: Mutex::new(groups),
            meta,
            storage,
        });
        let weak = Arc::downgrade(&c);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tick.tick().await;
                let Some(c) = weak.upgrade() else { break };
                c.on_tick(Instant::now());
            }
        });
        Ok(c)
    }

    fn on_tick(&self, now: Instant) {
        let mut persist = Vec::new();
        {
            let mut groups = self.state.lock();
            for g in groups.values_mut() {
                let changed = match &mut g.kind {
                    GroupKind::Classic(c) => c.tick(&g.id, now),
                    GroupKind::Consumer(c) => {
                        c.tick(&g.id, now, self.config.consumer_session_timeout)
                    }
                };
                if changed {
                    persist.push((g.id.clone(), persisted(g)));
                }
            }
        }
        for (id, doc) in persist {
            self.save_group(&id, doc.as_deref());
        }
    }

    /// Writes a group's state; failures are logged (the in-memory state stays authoritative until the
    /// next save) rather than failing the heartbeat that caused them.
    pub(crate) fn save_group(&self, id: &str, doc: Option<&str>) {
        if let Err(e) = self.meta.save_group(id, doc) {
            tracing::error!(group = %id, error = %e, "could not persist group state");
        }
    }

    /// Persists the group's current state (after a completed rebalance, a leave, an expiry).
    pub(crate) fn persist(&self, id: &str) {
        let doc = self.state.lock().get(id).map(persisted);
        self.save_group(id, doc.flatten().as_deref());
    }

    // ---- classic protocol ------------------------------------------------------------------------

    /// JoinGroup. An empty KIP-848 group becomes a classic one; a non-empty one refuses classic members.
    pub fn join(
        &self,
        group_id: &str,
        req: classic::JoinRequest,
    ) -> classic::Pending<classic::JoinResult> {
        let mut groups = self.state.lock();
        let g = groups
            .entry(group_id.to_string())
            .or_insert_with(|| Group::new_classic(group_id));
        if matches!(&g.kind, GroupKind::Consumer(c) if c.members.is_empty()) {
            g.kind = GroupKind::Classic(ClassicGroup::default());
        }
        match &mut g.kind {
            GroupKind::Classic(c) => c.join(
                group_id,
                req,
                self.config.initial_rebalance_delay,
                Instant::now(),
            ),
            GroupKind::Consumer(_) => classic::Pending::Now(classic::JoinResult {
                error: error::INCONSISTENT_GROUP_PROTOCOL,
                generation: -1,
                member_id: req.member_id,
                ..Default::default()
            }),
        }
    }

    /// Runs `f` on the classic group, or answers `missing` when there is none (or it is a KIP-848 one).
    pub fn with_classic<T>(
        &self,
        group_id: &str,
        missing: T,
        f: impl FnOnce(&mut ClassicGroup) -> T,
    ) -> T {
        let mut groups = self.state.lock();
        match groups.get_mut(group_id).map(|g| &mut g.kind) {
            Some(GroupKind::Classic(c)) => f(c),
            _ => missing,
        }
    }

    // ---- KIP-848 --------------------------------------------------------------------------------

    /// ConsumerGroupHeartbeat. An empty classic group (say, one with only committed offsets) becomes a
    /// consumer group; one with classic members refuses (Kafka: GROUP_ID_NOT_FOUND, "not a consumer group").
    pub fn consumer_heartbeat(
        &self,
        group_id: &str,
        req: consumer::HeartbeatRequest,
    ) -> (consumer::HeartbeatResult, bool) {
        let mut groups = self.state.lock();
        let g = groups
            .entry(group_id.to_string())
            .or_insert_with(|| Group::new_classic(group_id));
        if matches!(&g.kind, GroupKind::Classic(c) if c.members.is_empty()) {
            g.kind = GroupKind::Consumer(ConsumerGroup::default());
        }
        match &mut g.kind {
            GroupKind::Consumer(c) => {
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
    }

    // ---- offsets ------------------------------------------------------------------------------

    /// Stores offsets for a group after `validate` (which sees the group, if any) accepted the commit.
    /// Returns one error code per (topic, partition) in the order given.
    pub async fn commit_offsets(
        &self,
        group_id: &str,
        validate: impl FnOnce(Option<&mut Group>) -> Result<(), i16>,
        offsets: Vec<(String, i32, i64, i32, Option<String>)>,
    ) -> Result<Vec<i16>, i16> {
        {
            let mut groups = self.state.lock();
            validate(groups.get_mut(group_id))?;
        }
        let now = now_ms();
        let mut codes = Vec::with_capacity(offsets.len());
        let mut records = Vec::new();
        for (topic, partition, offset, leader_epoch, metadata) in &offsets {
            let known = self
                .storage
                .topic(topic)
                .is_some_and(|t| *partition >= 0 && (*partition as usize) < t.partitions.len());
            let code = if !known {
                error::UNKNOWN_TOPIC_OR_PARTITION
            } else if metadata
                .as_ref()
                .is_some_and(|m| m.len() > self.config.offset_metadata_max_bytes)
            {
                error::OFFSET_METADATA_TOO_LARGE
            } else {
                records.push(OffsetRecord {
                    group_id: group_id.to_string(),
                    topic: topic.clone(),
                    partition: *partition,
                    offset: *offset,
                    leader_epoch: *leader_epoch,
                    metadata: metadata.clone(),
                    commit_ms: now,
                });
                error::NONE
            };
            codes.push(code);
        }
        if !records.is_empty() {
            let meta = self.meta.clone();
            let rs = records.clone();
            let stored = tokio::task::spawn_blocking(move || meta.commit_offsets(&rs)).await;
            if !matches!(stored, Ok(Ok(()))) {
                tracing::error!(group = %group_id, "could not store committed offsets");
                return Err(error::COORDINATOR_NOT_AVAILABLE);
            }
            let mut groups = self.state.lock();
            let g = groups
                .entry(group_id.to_string())
                .or_insert_with(|| Group::new_classic(group_id));
            for r in records {
                g.offsets.insert(
                    (r.topic, r.partition),
                    CommittedOffset {
                        offset: r.offset,
                        leader_epoch: r.leader_epoch,
                        metadata: r.metadata,
                        commit_ms: r.commit_ms,
                    },
                );
            }
        }
        Ok(codes)
    }

    /// Committed offsets of a group: the given partitions (missing ones as `None`), or all with `None`.
    pub fn fetch_offsets(
        &self,
        group_id: &str,
        wanted: Option<Vec<(String, Vec<i32>)>>,
    ) -> TopicOffsets {
        let groups = self.state.lock();
        let offsets = groups.get(group_id).map(|g| &g.offsets);
        match wanted {
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
        }
    }

    /// OffsetDelete: refused per partition while members are subscribed to the topic.
    pub async fn delete_offsets(
        &self,
        group_id: &str,
        topics: Vec<(String, Vec<i32>)>,
    ) -> Result<Vec<(String, Vec<(i32, i16)>)>, i16> {
        let (results, delete) = {
            let groups = self.state.lock();
            let g = groups.get(group_id).ok_or(error::GROUP_ID_NOT_FOUND)?;
            if let GroupKind::Classic(c) = &g.kind {
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
            (results, delete)
        };
        let meta = self.meta.clone();
        let gid = group_id.to_string();
        let d = delete.clone();
        match tokio::task::spawn_blocking(move || meta.delete_offsets(&gid, Some(&d))).await {
            Ok(Ok(())) => {}
            _ => return Err(error::COORDINATOR_NOT_AVAILABLE),
        }
        if let Some(g) = self.state.lock().get_mut(group_id) {
            for k in delete {
                g.offsets.remove(&k);
            }
        }
        Ok(results)
    }

    // ---- admin --------------------------------------------------------------------------------

    /// (group id, protocol type, state, type) of every group.
    pub fn list(&self) -> Vec<(String, String, &'static str, &'static str)> {
        let groups = self.state.lock();
        let mut v: Vec<_> = groups
            .values()
            .map(|g| {
                (
                    g.id.clone(),
                    g.protocol_type(),
                    g.state_name(),
                    g.type_name(),
                )
            })
            .collect();
        v.sort();
        v
    }

    /// DeleteGroups: only empty groups; their offsets go too.
    pub async fn delete_group(&self, group_id: &str) -> i16 {
        {
            let groups = self.state.lock();
            match groups.get(group_id) {
                None => return error::GROUP_ID_NOT_FOUND,
                Some(g) if !g.is_empty() => return error::NON_EMPTY_GROUP,
                Some(_) => {}
            }
        }
        let meta = self.meta.clone();
        let gid = group_id.to_string();
        let done = tokio::task::spawn_blocking(move || {
            meta.delete_offsets(&gid, None)?;
            meta.save_group(&gid, None)
        })
        .await;
        if !matches!(done, Ok(Ok(()))) {
            return error::COORDINATOR_NOT_AVAILABLE;
        }
        let mut groups = self.state.lock();
        if groups.get(group_id).is_some_and(|g| g.is_empty()) {
            groups.remove(group_id);
        }
        error::NONE
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
