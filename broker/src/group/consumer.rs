//! KIP-848 consumer groups: the broker computes assignments (with a server assignor, see
//! `assignor/`) and hands them out through ConsumerGroupHeartbeat, revoking before it reassigns: a
//! partition is given to its new owner only once its previous owner has reported, in a heartbeat,
//! that it let it go.
//!
//! Sans-IO, like `classic.rs`: every step takes `now`, and the topics it assigns from come as a
//! [`TopicSnapshot`] the caller hands in (kfake's topicMetaSnap), asked for only by the steps that
//! need one (a target computation, the timer's metadata check), so a heartbeat between epoch moves
//! costs no pass over the topics.
//!
//! Cost: the target assignment is computed only when the group epoch moves (a member joined, left or
//! changed its subscription, or a subscribed topic's partitions changed, found by the timer), as
//! Kafka's GroupMetadataManager does; a heartbeat in between costs the size of its own member's
//! assignment, because who holds which partition is kept in `owners` rather than gathered from
//! every member. A member that does not revoke within its rebalance timeout is fenced (Kafka's
//! consumer-group rebalance timeout).

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};
use uuid::Uuid;

use super::assignor::{self, GroupSpec, MemberSpec};
use super::view::{AssignedTopic, ConsumerDescription, ConsumerMemberDescription};
use crate::error;

/// topic id -> partitions
pub type Assignment = BTreeMap<Uuid, BTreeSet<i32>>;

/// The topics a group can be assigned (kfake's topicMetaSnap): name -> id and partition count,
/// as they were when the coordinator took it from storage.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TopicSnapshot {
    topics: BTreeMap<String, TopicMeta>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicMeta {
    pub id: Uuid,
    pub partitions: i32,
}

impl TopicSnapshot {
    pub fn insert(&mut self, name: impl Into<String>, id: Uuid, partitions: i32) {
        self.topics
            .insert(name.into(), TopicMeta { id, partitions });
    }

    /// Topics in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, TopicMeta)> {
        self.topics.iter().map(|(n, m)| (n.as_str(), *m))
    }
}

/// How often the timer looks for changed partitions of subscribed topics (Kafka reacts to each new
/// metadata image; one second bounds both the delay and the cost of looking).
const METADATA_CHECK_EVERY: Duration = Duration::from_secs(1);

#[derive(Clone, Serialize, Deserialize)]
pub struct ConsumerMember {
    pub id: String,
    pub instance_id: Option<String>,
    pub rack_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub rebalance_timeout_ms: i32,
    pub server_assignor: Option<String>,
    pub subscribed: Vec<String>,
    pub regex: Option<String>,
    pub member_epoch: i32,
    pub previous_epoch: i32,
    /// What the member currently holds (as far as the coordinator has told it).
    pub assigned: Assignment,
    /// Partitions it was told to give up and has not yet confirmed giving up.
    pub revoking: Assignment,
    #[serde(skip, default = "Instant::now")]
    pub last_seen: Instant,
    /// When `revoking` must be confirmed by: the rebalance timeout from when it was asked.
    #[serde(skip)]
    pub revoke_deadline: Option<Instant>,
}

#[derive(Default)]
pub struct ConsumerGroup {
    pub group_epoch: i32,
    pub assignment_epoch: i32,
    pub members: HashMap<String, ConsumerMember>,
    /// member id -> target assignment of `assignment_epoch`.
    pub target: HashMap<String, Assignment>,
    pub assignor: String,
    /// (topic id, partition) -> the member holding it (assigned or still revoking).
    owners: HashMap<(Uuid, i32), String>,
    /// (topic id, partitions) of the subscribed topics when the target was computed.
    subscribed_metadata: BTreeMap<Uuid, i32>,
    next_metadata_check: Option<Instant>,
    /// Target computations so far (each is a pass over all members and subscribed partitions).
    pub computations: u64,
}

/// A ConsumerGroupHeartbeat, as the coordinator needs it.
pub struct HeartbeatRequest {
    pub member_id: String,
    pub member_epoch: i32,
    pub instance_id: Option<String>,
    pub rack_id: Option<String>,
    pub rebalance_timeout_ms: i32,
    pub subscribed: Option<Vec<String>>,
    pub regex: Option<String>,
    pub server_assignor: Option<String>,
    pub owned: Option<Assignment>,
    pub client_id: String,
    pub client_host: String,
}

impl HeartbeatRequest {
    /// Kafka's throwIfConsumerGroupHeartbeatRequestIsInvalid, as far as this broker serves it: the
    /// checks that need no group, made before one is looked up (or made).
    pub fn validate(&self, group_id: &str, api_version: i16) -> Result<(), HeartbeatResult> {
        let invalid = |msg: &str| Err(HeartbeatResult::error(error::INVALID_REQUEST, msg));
        if group_id.is_empty() {
            return invalid("GroupId can't be empty.");
        }
        // v1: the client chooses its member id (KIP-1082).
        if api_version >= 1 && self.member_id.is_empty() {
            return invalid("MemberId can't be empty.");
        }
        if self.member_epoch == 0 && self.rebalance_timeout_ms < 0 {
            return invalid("RebalanceTimeoutMs must be provided in first request.");
        }
        if self.member_epoch == 0 && self.subscribed.is_none() && self.regex.is_none() {
            return invalid("SubscribedTopicNames or SubscribedTopicRegex must be set to join");
        }
        if let Some(a) = &self.server_assignor {
            if assignor::by_name(a).is_none() {
                return Err(HeartbeatResult::error(
                    error::UNSUPPORTED_ASSIGNOR,
                    &format!(
                        "ServerAssignor {a} is not supported. Supported assignors: {}.",
                        assignor::names().join(", ")
                    ),
                ));
            }
        }
        Ok(())
    }
}

#[derive(Debug, Default)]
pub struct HeartbeatResult {
    pub error: i16,
    pub message: Option<String>,
    pub member_id: String,
    pub member_epoch: i32,
    pub assignment: Option<Assignment>,
    /// group.consumer.heartbeat.interval.ms when the heartbeat succeeded (set by the coordinator).
    pub heartbeat_interval_ms: i32,
}

impl HeartbeatResult {
    pub(super) fn error(code: i16, msg: &str) -> HeartbeatResult {
        HeartbeatResult {
            error: code,
            message: Some(msg.to_string()),
            member_epoch: -1,
            ..Default::default()
        }
    }
}

/// Partitions of `a` as (topic, partition) keys.
fn keys(a: &Assignment) -> impl Iterator<Item = (Uuid, i32)> + '_ {
    a.iter()
        .flat_map(|(t, ps)| ps.iter().map(move |p| (*t, *p)))
}

impl ConsumerGroup {
    pub fn state_name(&self) -> &'static str {
        if self.members.is_empty() {
            "Empty"
        } else if self.group_epoch > self.assignment_epoch {
            "Assigning"
        } else if self
            .members
            .values()
            .any(|m| m.member_epoch != self.assignment_epoch || !m.revoking.is_empty())
        {
            "Reconciling"
        } else {
            "Stable"
        }
    }

    pub fn subscribed_topics(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .members
            .values()
            .flat_map(|m| m.subscribed.iter().cloned())
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// Kafka's throwIfConsumerGroupIsFull (group.consumer.max.size): a new member is refused with
    /// GROUP_MAX_SIZE_REACHED once the group has `max` members.
    pub fn refuse_if_full(&self, req: &HeartbeatRequest, max: usize) -> Option<HeartbeatResult> {
        let new = req.member_epoch == 0
            && (req.member_id.is_empty() || !self.members.contains_key(&req.member_id));
        (new && self.members.len() >= max).then(|| {
            HeartbeatResult::error(
                error::GROUP_MAX_SIZE_REACHED,
                &format!("The consumer group has reached its maximum capacity of {max} members."),
            )
        })
    }

    /// Takes a member out, freeing what it held; the group epoch moves.
    fn remove_member(&mut self, id: &str) -> bool {
        let Some(m) = self.members.remove(id) else {
            return false;
        };
        for k in keys(&m.assigned).chain(keys(&m.revoking)) {
            if self.owners.get(&k).is_some_and(|o| o == id) {
                self.owners.remove(&k);
            }
        }
        self.target.remove(id);
        self.group_epoch += 1;
        true
    }

    /// One heartbeat of a request that passed [`HeartbeatRequest::validate`]. `topics` is called
    /// (once) only if the step computes a new target.
    pub fn heartbeat<'t>(
        &mut self,
        req: HeartbeatRequest,
        now: Instant,
        topics: impl FnOnce() -> &'t TopicSnapshot,
    ) -> HeartbeatResult {
        match req.member_epoch {
            -1 | -2 => {
                // Leaving (-2: a static member leaving temporarily; its partitions are reassigned all the same).
                self.remove_member(&req.member_id);
                HeartbeatResult {
                    member_id: req.member_id,
                    member_epoch: req.member_epoch,
                    ..Default::default()
                }
            }
            0 => {
                let id = if req.member_id.is_empty() {
                    Uuid::new_v4().to_string()
                } else {
                    req.member_id.clone()
                };
                // A static member that rejoins takes over its instance's previous incarnation.
                if let Some(instance) = &req.instance_id {
                    let old: Vec<String> = self
                        .members
                        .values()
                        .filter(|m| m.instance_id.as_ref() == Some(instance) && m.id != id)
                        .map(|m| m.id.clone())
                        .collect();
                    for o in old {
                        if let Some(prev) = self.members.remove(&o) {
                            if let Some(t) = self.target.remove(&o) {
                                self.target.insert(id.clone(), t);
                            }
                            for k in keys(&prev.revoking) {
                                self.owners.remove(&k);
                            }
                            for k in keys(&prev.assigned) {
                                self.owners.insert(k, id.clone());
                            }
                            self.members.insert(
                                id.clone(),
                                ConsumerMember {
                                    id: id.clone(),
                                    member_epoch: 0,
                                    revoking: Assignment::new(),
                                    revoke_deadline: None,
                                    ..prev
                                },
                            );
                        }
                    }
                }
                let m = self
                    .members
                    .entry(id.clone())
                    .or_insert_with(|| ConsumerMember {
                        id: id.clone(),
                        instance_id: req.instance_id.clone(),
                        rack_id: None,
                        client_id: req.client_id.clone(),
                        client_host: req.client_host.clone(),
                        rebalance_timeout_ms: req.rebalance_timeout_ms,
                        server_assignor: None,
                        subscribed: Vec::new(),
                        regex: None,
                        member_epoch: 0,
                        previous_epoch: -1,
                        assigned: Assignment::new(),
                        revoking: Assignment::new(),
                        last_seen: now,
                        revoke_deadline: None,
                    });
                if m.member_epoch != 0 {
                    // Rejoining after being fenced: starts over with nothing.
                    m.member_epoch = 0;
                    let held: Vec<_> = keys(&m.assigned).chain(keys(&m.revoking)).collect();
                    m.assigned.clear();
                    m.revoking.clear();
                    m.revoke_deadline = None;
                    for k in held {
                        if self.owners.get(&k).is_some_and(|o| *o == id) {
                            self.owners.remove(&k);
                        }
                    }
                }
                self.group_epoch += 1;
                self.update_member(&id, &req, now);
                self.reconcile(&id, req.owned.as_ref(), now, topics)
            }
            epoch => {
                let Some(m) = self.members.get(&req.member_id) else {
                    return HeartbeatResult::error(error::UNKNOWN_MEMBER_ID, "unknown member");
                };
                // Kafka accepts the previous epoch when the member owns nothing it should not.
                let owned_ok = req.owned.as_ref().is_none_or(|o| subset(o, &m.assigned));
                if epoch > m.member_epoch
                    || (epoch < m.member_epoch && !(epoch == m.previous_epoch && owned_ok))
                {
                    return HeartbeatResult::error(
                        error::FENCED_MEMBER_EPOCH,
                        "the member epoch is fenced",
                    );
                }
                let id = req.member_id.clone();
                if self.update_member(&id, &req, now) {
                    self.group_epoch += 1;
                }
                self.reconcile(&id, req.owned.as_ref(), now, topics)
            }
        }
    }

    /// Applies changed subscriptions and liveness; true if the subscription changed.
    fn update_member(&mut self, id: &str, req: &HeartbeatRequest, now: Instant) -> bool {
        let Some(m) = self.members.get_mut(id) else {
            return false;
        };
        m.last_seen = now;
        if req.rebalance_timeout_ms > 0 {
            m.rebalance_timeout_ms = req.rebalance_timeout_ms;
        }
        let mut changed = false;
        if let Some(s) = &req.subscribed {
            let mut s = s.clone();
            s.sort();
            s.dedup();
            if s != m.subscribed {
                m.subscribed = s;
                changed = true;
            }
        }
        if req.regex.is_some() && req.regex != m.regex {
            m.regex = req.regex.clone().filter(|r| !r.is_empty());
            changed = true;
        }
        if req.server_assignor.is_some() && req.server_assignor != m.server_assignor {
            m.server_assignor = req.server_assignor.clone();
            changed = true;
        }
        if req.rack_id.is_some() {
            m.rack_id = req.rack_id.clone();
        }
        changed
    }

    /// Subscribed topics that exist, per member (sorted by member id), and all of them together
    /// with their partition counts. One pass over the topics for each member (its pattern compiled
    /// once).
    fn subscriptions(&self, topics: &TopicSnapshot) -> (Vec<MemberSpec>, BTreeMap<Uuid, i32>) {
        let mut all = BTreeMap::new();
        let mut members = Vec::with_capacity(self.members.len());
        for m in self.members.values() {
            let pattern = m
                .regex
                .as_deref()
                .and_then(|r| regex::Regex::new(&format!("^(?:{r})$")).ok());
            let mut mine = std::collections::HashSet::new();
            for (name, t) in topics.iter() {
                let wanted = m
                    .subscribed
                    .binary_search_by(|s| s.as_str().cmp(name))
                    .is_ok()
                    // Internal topics included, as Kafka 4.4's coordinator does (seen with a real
                    // broker: a regex matching __consumer_offsets gets it assigned).
                    || pattern.as_ref().is_some_and(|p| p.is_match(name));
                if wanted {
                    all.insert(t.id, t.partitions);
                    mine.insert(t.id);
                }
            }
            members.push(MemberSpec {
                id: m.id.clone(),
                topics: mine,
            });
        }
        members.sort_by(|a, b| a.id.cmp(&b.id));
        (members, all)
    }

    /// Recomputes the target assignment for the current group epoch with the assignor the members
    /// ask for (the greatest name any member gives, else Kafka's default): one pass over the
    /// topics per member, plus the assignor's own cost.
    fn compute_target(&mut self, topics: &TopicSnapshot) {
        self.computations += 1;
        let chosen = self
            .members
            .values()
            .filter_map(|m| m.server_assignor.as_deref())
            .max()
            .and_then(assignor::by_name)
            .unwrap_or_else(assignor::default_assignor);
        let (members, topics) = self.subscriptions(topics);
        let spec = GroupSpec {
            members,
            topics: &topics,
            previous: &self.target,
        };
        let mut target = chosen.assign(&spec);
        for a in target.values_mut() {
            a.retain(|_, s| !s.is_empty());
        }
        self.target = target;
        self.assignor = chosen.name().to_string();
        self.subscribed_metadata = topics;
        self.assignment_epoch = self.group_epoch;
    }

    /// Moves a member toward its target: first revocations (confirmed by what it reports owning), then
    /// the new epoch with every target partition no other member still holds.
    fn reconcile<'t>(
        &mut self,
        id: &str,
        owned: Option<&Assignment>,
        now: Instant,
        topics: impl FnOnce() -> &'t TopicSnapshot,
    ) -> HeartbeatResult {
        if self.group_epoch > self.assignment_epoch {
            self.compute_target(topics());
        }
        let assignment_epoch = self.assignment_epoch;
        let Some(m) = self.members.get_mut(id) else {
            return HeartbeatResult::error(error::UNKNOWN_MEMBER_ID, "unknown member");
        };
        let target = self.target.get(id);
        let empty = Assignment::new();
        let target = target.unwrap_or(&empty);
        // Revocations are done once the member reports owning none of them.
        if !m.revoking.is_empty() && owned.is_some_and(|o| intersect(o, &m.revoking).is_empty()) {
            for k in keys(&m.revoking) {
                if self.owners.get(&k).is_some_and(|o| o == id) {
                    self.owners.remove(&k);
                }
            }
            m.revoking.clear();
            m.revoke_deadline = None;
        }
        if m.revoking.is_empty() {
            let revoke = minus(&m.assigned, target);
            if !revoke.is_empty() {
                m.assigned = minus(&m.assigned, &revoke);
                m.revoking = revoke;
                let timeout = Duration::from_millis(m.rebalance_timeout_ms.max(0) as u64);
                m.revoke_deadline = Some(now + timeout);
            } else {
                if m.member_epoch != assignment_epoch {
                    m.previous_epoch = m.member_epoch;
                    m.member_epoch = assignment_epoch;
                }
                // Everything in the target that nobody else still holds.
                for (t, p) in keys(target) {
                    match self.owners.get(&(t, p)) {
                        Some(o) if o != id => continue,
                        _ => {}
                    }
                    if m.assigned.entry(t).or_default().insert(p) {
                        self.owners.insert((t, p), id.to_string());
                    }
                }
                m.assigned.retain(|_, s| !s.is_empty());
            }
        }
        HeartbeatResult {
            error: error::NONE,
            message: None,
            member_id: m.id.clone(),
            member_epoch: m.member_epoch,
            assignment: Some(m.assigned.clone()),
            ..Default::default()
        }
    }

    /// Timer work: expires members whose session ran out, fences members that did not revoke within
    /// their rebalance timeout, and moves the group epoch when a subscribed topic's partitions changed
    /// (`topics` is called only for that check, at most every METADATA_CHECK_EVERY). True if the
    /// group changed.
    pub fn tick<'t>(
        &mut self,
        group_id: &str,
        now: Instant,
        session_timeout: Duration,
        topics: impl FnOnce() -> &'t TopicSnapshot,
    ) -> bool {
        let expired: Vec<String> = self
            .members
            .values()
            .filter(|m| now > m.last_seen + session_timeout)
            .map(|m| m.id.clone())
            .collect();
        for id in &expired {
            tracing::info!(group = group_id, member = %id, "consumer group member session expired");
            self.remove_member(id);
        }
        let fenced: Vec<String> = self
            .members
            .values()
            .filter(|m| m.revoke_deadline.is_some_and(|d| now >= d))
            .map(|m| m.id.clone())
            .collect();
        for id in &fenced {
            tracing::info!(group = group_id, member = %id,
                "consumer group member fenced: it did not revoke partitions within its rebalance timeout");
            self.remove_member(id);
        }
        let mut changed = !expired.is_empty() || !fenced.is_empty();
        if !self.members.is_empty() && self.next_metadata_check.is_none_or(|t| now >= t) {
            self.next_metadata_check = Some(now + METADATA_CHECK_EVERY);
            let (_, topics) = self.subscriptions(topics());
            if topics != self.subscribed_metadata && self.group_epoch == self.assignment_epoch {
                self.group_epoch += 1;
                changed = true;
            }
        }
        changed
    }

    /// Kafka's ConsumerGroup.validateOffsetCommit: a commit without an epoch (-1) only while the
    /// group has no members; otherwise the member must be known, must commit with OffsetCommit v9+
    /// (it speaks the new protocol), and exactly its current epoch: anything else is
    /// STALE_MEMBER_EPOCH, so a member that moved on cannot overwrite what a partition's new owner
    /// commits.
    pub fn validate_offset_commit(
        &self,
        member_id: &str,
        epoch: i32,
        api_version: i16,
    ) -> Result<(), i16> {
        if epoch < 0 && self.members.is_empty() {
            return Ok(());
        }
        let m = self
            .members
            .get(member_id)
            .ok_or(error::UNKNOWN_MEMBER_ID)?;
        if api_version < 9 {
            return Err(error::UNSUPPORTED_VERSION);
        }
        if epoch != m.member_epoch {
            return Err(error::STALE_MEMBER_EPOCH);
        }
        Ok(())
    }

    /// Kafka's ConsumerGroup.validateOffsetCommit for a TxnOffsetCommit naming a member: the member
    /// must be known and at its current epoch (ILLEGAL_GENERATION otherwise, as transactional
    /// commits report it).
    pub fn validate_txn_offset_commit(&self, member_id: &str, epoch: i32) -> Result<(), i16> {
        if epoch < 0 && self.members.is_empty() {
            return Ok(());
        }
        let m = self
            .members
            .get(member_id)
            .ok_or(error::UNKNOWN_MEMBER_ID)?;
        if epoch != m.member_epoch {
            return Err(error::ILLEGAL_GENERATION);
        }
        Ok(())
    }

    /// ConsumerGroupDescribe's view: members sorted by id, assignments with their topics' names
    /// (`topic_name` of a topic id, empty if it is gone); an assignor not chosen yet is reported as
    /// the default (Kafka's asDescribedGroup with defaultConsumerGroupAssignor).
    pub fn describe(&self, topic_name: impl Fn(Uuid) -> String) -> ConsumerDescription {
        let topics = |a: &Assignment| -> Vec<AssignedTopic> {
            a.iter()
                .map(|(id, ps)| AssignedTopic {
                    topic_id: *id,
                    topic_name: topic_name(*id),
                    partitions: ps.iter().copied().collect(),
                })
                .collect()
        };
        let mut members: Vec<&ConsumerMember> = self.members.values().collect();
        members.sort_by(|a, b| a.id.cmp(&b.id));
        let none = Assignment::new();
        ConsumerDescription {
            state: self.state_name(),
            group_epoch: self.group_epoch,
            assignment_epoch: self.assignment_epoch,
            assignor_name: if self.assignor.is_empty() {
                assignor::default_assignor().name().to_string()
            } else {
                self.assignor.clone()
            },
            members: members
                .into_iter()
                .map(|m| ConsumerMemberDescription {
                    member_id: m.id.clone(),
                    instance_id: m.instance_id.clone(),
                    rack_id: m.rack_id.clone(),
                    member_epoch: m.member_epoch,
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    subscribed_topic_names: m.subscribed.clone(),
                    subscribed_topic_regex: m.regex.clone(),
                    assignment: topics(&m.assigned),
                    target_assignment: topics(self.target.get(&m.id).unwrap_or(&none)),
                })
                .collect(),
        }
    }

    pub fn persist(&self) -> PersistedConsumer {
        PersistedConsumer {
            group_epoch: self.group_epoch,
            assignment_epoch: self.assignment_epoch,
            members: self.members.values().cloned().collect(),
            target: self.target.clone().into_iter().collect(),
            assignor: self.assignor.clone(),
        }
    }

    /// Back from the metadata store: members get a fresh session (from `now`) to come back.
    pub fn restore(p: PersistedConsumer, now: Instant) -> ConsumerGroup {
        let mut g = ConsumerGroup {
            group_epoch: p.group_epoch,
            assignment_epoch: p.assignment_epoch,
            members: p
                .members
                .into_iter()
                .map(|m| {
                    let m = ConsumerMember {
                        last_seen: now,
                        revoke_deadline: None,
                        ..m
                    };
                    (m.id.clone(), m)
                })
                .collect(),
            target: p.target.into_iter().collect(),
            assignor: p.assignor,
            ..Default::default()
        };
        for m in g.members.values() {
            for k in keys(&m.assigned).chain(keys(&m.revoking)) {
                g.owners.insert(k, m.id.clone());
            }
        }
        g
    }
}

#[derive(Serialize, Deserialize)]
pub struct PersistedConsumer {
    group_epoch: i32,
    assignment_epoch: i32,
    members: Vec<ConsumerMember>,
    target: Vec<(String, Assignment)>,
    assignor: String,
}

fn minus(a: &Assignment, b: &Assignment) -> Assignment {
    let mut out = Assignment::new();
    for (t, ps) in a {
        let rest: BTreeSet<i32> = ps
            .iter()
            .copied()
            .filter(|p| !b.get(t).is_some_and(|s| s.contains(p)))
            .collect();
        if !rest.is_empty() {
            out.insert(*t, rest);
        }
    }
    out
}

fn intersect(a: &Assignment, b: &Assignment) -> Assignment {
    let mut out = Assignment::new();
    for (t, ps) in a {
        if let Some(other) = b.get(t) {
            let both: BTreeSet<i32> = ps.intersection(other).copied().collect();
            if !both.is_empty() {
                out.insert(*t, both);
            }
        }
    }
    out
}

fn subset(a: &Assignment, b: &Assignment) -> bool {
    minus(a, b).is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A snapshot of topics (name, partitions); a topic's id follows from its name, so a later
    /// snapshot of the same topic with more partitions is that topic grown.
    pub(in crate::group) fn snapshot(list: &[(&str, i32)]) -> TopicSnapshot {
        let mut s = TopicSnapshot::default();
        for (name, partitions) in list {
            let id = name.bytes().fold(1u128, |h, b| h * 257 + u128::from(b));
            s.insert(*name, Uuid::from_u128(id), *partitions);
        }
        s
    }

    fn hb(id: &str, epoch: i32, owned: Option<Assignment>) -> HeartbeatRequest {
        HeartbeatRequest {
            member_id: id.into(),
            member_epoch: epoch,
            instance_id: None,
            rack_id: None,
            rebalance_timeout_ms: 30_000,
            subscribed: if epoch == 0 {
                Some(vec!["t".into()])
            } else {
                None
            },
            regex: None,
            server_assignor: None,
            owned,
            client_id: "c".into(),
            client_host: "h".into(),
        }
    }

    fn count(a: &Option<Assignment>) -> usize {
        a.as_ref()
            .map(|a| a.values().map(|s| s.len()).sum())
            .unwrap_or(0)
    }

    /// A second member joining: the first must give partitions up (and say so) before the second
    /// gets them; no partition is ever held by two members.
    #[test]
    fn revoke_before_reassign() {
        let topics = snapshot(&[("t", 4)]);
        let mut g = ConsumerGroup::default();
        let now = Instant::now();
        let a = g.heartbeat(hb("a", 0, Some(Assignment::new())), now, || &topics);
        assert_eq!((a.error, a.member_epoch, count(&a.assignment)), (0, 1, 4));
        let b = g.heartbeat(hb("b", 0, Some(Assignment::new())), now, || &topics);
        assert_eq!(
            count(&b.assignment),
            0,
            "nothing free yet: a still holds everything"
        );
        // a is told to keep only its target half.
        let a2 = g.heartbeat(hb("a", 1, a.assignment.clone()), now, || &topics);
        assert_eq!(count(&a2.assignment), 2);
        assert_eq!(
            a2.member_epoch, 1,
            "epoch moves only once revocation is confirmed"
        );
        let b2 = g.heartbeat(
            hb("b", b.member_epoch, Some(Assignment::new())),
            now,
            || &topics,
        );
        assert_eq!(count(&b2.assignment), 0, "a has not confirmed yet");
        let a3 = g.heartbeat(hb("a", 1, a2.assignment.clone()), now, || &topics);
        assert_eq!((a3.member_epoch, count(&a3.assignment)), (2, 2));
        let b3 = g.heartbeat(
            hb("b", b2.member_epoch, Some(Assignment::new())),
            now,
            || &topics,
        );
        assert_eq!((b3.member_epoch, count(&b3.assignment)), (2, 2));
        assert!(intersect(
            a3.assignment.as_ref().unwrap(),
            b3.assignment.as_ref().unwrap()
        )
        .is_empty());
        assert_eq!(g.state_name(), "Stable");
        // A stale epoch is fenced; leaving frees the partitions for the other member.
        assert_eq!(
            g.heartbeat(hb("b", 7, None), now, || &topics,).error,
            error::FENCED_MEMBER_EPOCH
        );
        g.heartbeat(hb("b", -1, None), now, || &topics);
        let a4 = g.heartbeat(hb("a", 2, a3.assignment.clone()), now, || &topics);
        assert_eq!(count(&a4.assignment), 4);
    }

    /// Issue 16.2: a commit from a KIP-848 member must carry its current epoch (Kafka's
    /// ConsumerGroup.validateOffsetCommit); the previous epoch is STALE_MEMBER_EPOCH, so a member that
    /// has moved on cannot overwrite what the partitions' new owner commits.
    #[test]
    fn commits_need_the_current_member_epoch() {
        let topics = snapshot(&[("t", 2)]);
        let mut g = ConsumerGroup::default();
        let now = Instant::now();
        let a = g.heartbeat(hb("a", 0, Some(Assignment::new())), now, || &topics);
        assert_eq!(a.member_epoch, 1);
        g.heartbeat(hb("b", 0, Some(Assignment::new())), now, || &topics);
        let a2 = g.heartbeat(hb("a", 1, a.assignment.clone()), now, || &topics);
        let a3 = g.heartbeat(hb("a", 1, a2.assignment.clone()), now, || &topics);
        assert_eq!(a3.member_epoch, 2);
        assert_eq!(g.validate_offset_commit("a", 2, 9), Ok(()));
        assert_eq!(
            g.validate_offset_commit("a", 1, 9),
            Err(error::STALE_MEMBER_EPOCH)
        );
        assert_eq!(
            g.validate_offset_commit("a", 2, 8),
            Err(error::UNSUPPORTED_VERSION),
            "KIP-848 members commit with OffsetCommit v9+"
        );
        assert_eq!(
            g.validate_offset_commit("zed", 2, 9),
            Err(error::UNKNOWN_MEMBER_ID)
        );
    }

    /// Issue 9.8: the target is computed once per group epoch, not per heartbeat; heartbeats in
    /// between cost only their own member's assignment. A subscribed topic growing partitions moves
    /// the epoch (found by the timer), which recomputes once.
    #[test]
    fn target_is_computed_once_per_group_epoch() {
        let topics = snapshot(&[("t", 6)]);
        let mut g = ConsumerGroup::default();
        let now = Instant::now();
        let session = Duration::from_secs(45);
        let mut owned: HashMap<String, Option<Assignment>> = HashMap::new();
        for id in ["a", "b", "c"] {
            let r = g.heartbeat(hb(id, 0, Some(Assignment::new())), now, || &topics);
            owned.insert(id.to_string(), r.assignment);
        }
        // Settle: each member heartbeats with what it was told to own until nothing moves.
        for _ in 0..4 {
            for id in ["a", "b", "c"] {
                let epoch = g.members[id].member_epoch;
                let r = g.heartbeat(hb(id, epoch, owned[id].clone()), now, || &topics);
                owned.insert(id.to_string(), r.assignment);
            }
        }
        assert_eq!(g.state_name(), "Stable");
        assert!(owned.values().all(|a| count(a) == 2));
        let settled = g.computations;
        assert_eq!(
            settled, 3,
            "once per join, at the heartbeat after the epoch moved"
        );
        for _ in 0..50 {
            for id in ["a", "b", "c"] {
                let epoch = g.members[id].member_epoch;
                g.heartbeat(hb(id, epoch, owned[id].clone()), now, || &topics);
            }
        }
        assert!(!g.tick("g", now, session, || &topics), "nothing changed");
        assert_eq!(
            g.computations, settled,
            "unchanged heartbeats compute nothing"
        );
        let topics = snapshot(&[("t", 9)]);
        let later = now + Duration::from_secs(2);
        assert!(
            g.tick("g", later, session, || &topics),
            "new partitions move the epoch"
        );
        let epoch = g.members["a"].member_epoch;
        let r = g.heartbeat(hb("a", epoch, owned["a"].clone()), later, || &topics);
        assert_eq!(g.computations, settled + 1);
        assert_eq!(count(&r.assignment), 3, "a gets one of the new partitions");
    }

    /// Issue 9.8: a member that does not confirm revoking within its rebalance timeout is fenced
    /// (Kafka's consumer-group rebalance timeout), and its partitions go to the others.
    #[test]
    fn member_that_does_not_revoke_in_time_is_fenced() {
        let topics = snapshot(&[("t", 4)]);
        let mut g = ConsumerGroup::default();
        let t = Instant::now();
        let session = Duration::from_secs(45);
        let a = g.heartbeat(hb("a", 0, Some(Assignment::new())), t, || &topics);
        assert_eq!(count(&a.assignment), 4);
        g.heartbeat(hb("b", 0, Some(Assignment::new())), t, || &topics);
        let a2 = g.heartbeat(hb("a", 1, a.assignment.clone()), t, || &topics);
        assert_eq!(count(&a2.assignment), 2, "a is told to give two up");
        // a keeps heartbeating (its session stays alive) but never lets the two go.
        for s in [10, 20, 29] {
            let at = t + Duration::from_secs(s);
            g.heartbeat(hb("a", 1, a.assignment.clone()), at, || &topics);
            assert!(!g.tick("g", at, session, || &topics));
        }
        let late = t + Duration::from_secs(31); // rebalance timeout 30 s (see hb)
        assert!(g.tick("g", late, session, || &topics), "a is fenced");
        assert!(!g.members.contains_key("a"));
        let epoch = g.members["b"].member_epoch;
        let b = g.heartbeat(hb("b", epoch, Some(Assignment::new())), late, || &topics);
        let b = g.heartbeat(hb("b", b.member_epoch, b.assignment.clone()), late, || {
            &topics
        });
        assert_eq!(count(&b.assignment), 4, "b has everything a held");
        assert_eq!(
            g.heartbeat(hb("a", 1, a.assignment.clone()), late, || &topics,)
                .error,
            error::UNKNOWN_MEMBER_ID
        );
    }

    /// group.consumer.max.size: a new member past the limit gets GROUP_MAX_SIZE_REACHED; members
    /// already in keep heartbeating.
    #[test]
    fn consumer_group_max_size() {
        let topics = TopicSnapshot::default();
        let mut g = ConsumerGroup::default();
        let now = Instant::now();
        assert!(g.refuse_if_full(&hb("a", 0, None), 1).is_none());
        g.heartbeat(hb("a", 0, None), now, || &topics);
        let full = g.refuse_if_full(&hb("b", 0, None), 1).expect("refused");
        assert_eq!(full.error, error::GROUP_MAX_SIZE_REACHED);
        assert!(
            g.refuse_if_full(&hb("a", 0, None), 1).is_none(),
            "a rejoining"
        );
        assert!(g.refuse_if_full(&hb("a", 1, None), 1).is_none());
    }

    /// Heartbeats until every member holds its target (each reports what it was told to own).
    fn settle(g: &mut ConsumerGroup, ids: &[&str], topics: &TopicSnapshot, now: Instant) {
        let mut owned: HashMap<String, Option<Assignment>> = HashMap::new();
        for _ in 0..6 {
            for id in ids {
                let epoch = g.members[*id].member_epoch;
                let held = owned.get(*id).cloned().flatten().unwrap_or_default();
                let r = g.heartbeat(hb(id, epoch, Some(held)), now, || topics);
                owned.insert(id.to_string(), r.assignment);
            }
        }
        assert_eq!(g.state_name(), "Stable");
    }

    /// Sans-IO: the topics are asked for only when the target is computed (a join here) or the
    /// timer checks metadata, never by a heartbeat in between.
    #[test]
    fn topics_are_taken_only_when_needed() {
        let topics = snapshot(&[("t", 4)]);
        let mut g = ConsumerGroup::default();
        let now = Instant::now();
        let taken = std::cell::Cell::new(0);
        let counted = || {
            taken.set(taken.get() + 1);
            &topics
        };
        let a = g.heartbeat(hb("a", 0, Some(Assignment::new())), now, counted);
        assert_eq!((a.member_epoch, taken.get()), (1, 1));
        for _ in 0..10 {
            let r = g.heartbeat(
                hb("a", 1, a.assignment.clone()),
                now,
                || -> &TopicSnapshot { panic!("a steady heartbeat needs no topics") },
            );
            assert_eq!(r.error, error::NONE);
        }
        let session = Duration::from_secs(45);
        assert!(
            !g.tick("g", now, session, counted),
            "first check: unchanged"
        );
        assert_eq!(taken.get(), 2);
        assert!(!g.tick(
            "g",
            now + Duration::from_millis(500),
            session,
            || -> &TopicSnapshot { panic!("checked at most every METADATA_CHECK_EVERY") }
        ));
    }

    /// A member asking for `range` gets it (the assignor ConsumerGroupDescribe reports), and
    /// subscribing by regex takes the topics whose whole name matches.
    #[test]
    fn range_by_request_and_regex_subscriptions() {
        let topics = snapshot(&[("orders", 3), ("orders-dlq", 1), ("payments", 2)]);
        let mut g = ConsumerGroup::default();
        let now = Instant::now();
        let mut a = hb("a", 0, Some(Assignment::new()));
        a.server_assignor = Some("range".into());
        g.heartbeat(a, now, || &topics);
        let mut b = hb("b", 0, Some(Assignment::new()));
        b.subscribed = None;
        b.regex = Some("orders|pay.*".into());
        g.heartbeat(b, now, || &topics);
        settle(
            &mut g,
            &["a", "b"],
            &snapshot(&[("orders", 3), ("orders-dlq", 1), ("payments", 2)]),
            now,
        );
        let d = g.describe(|id| {
            topics
                .iter()
                .find(|(_, t)| t.id == id)
                .map(|(n, _)| n.to_string())
                .unwrap_or_default()
        });
        assert_eq!(d.assignor_name, "range");
        let names = |m: &ConsumerMemberDescription| -> Vec<(String, Vec<i32>)> {
            m.assignment
                .iter()
                .map(|t| (t.topic_name.clone(), t.partitions.clone()))
                .collect()
        };
        assert_eq!(d.members[0].member_id, "a");
        assert!(d.members[0].subscribed_topic_names == vec!["t".to_string()]);
        assert!(
            names(&d.members[0]).is_empty(),
            "a wants t, which does not exist"
        );
        assert_eq!(
            d.members[1].subscribed_topic_regex.as_deref(),
            Some("orders|pay.*")
        );
        let mut b_topics = names(&d.members[1]);
        b_topics.sort();
        assert_eq!(
            b_topics,
            vec![
                ("orders".to_string(), vec![0, 1, 2]),
                ("payments".to_string(), vec![0, 1])
            ],
            "not orders-dlq: the pattern must match the whole name"
        );
    }

    /// Restored from its document, a group keeps epochs, members and what they hold, and gives its
    /// members a new session from `now`.
    #[test]
    fn restored_group_keeps_its_members() {
        let topics = snapshot(&[("t", 4)]);
        let mut g = ConsumerGroup::default();
        let t = Instant::now();
        g.heartbeat(hb("a", 0, Some(Assignment::new())), t, || &topics);
        g.heartbeat(hb("b", 0, Some(Assignment::new())), t, || &topics);
        settle(&mut g, &["a", "b"], &topics, t);
        let doc = serde_json::to_string(&g.persist()).unwrap();
        let later = t + Duration::from_secs(40);
        let mut r = ConsumerGroup::restore(serde_json::from_str(&doc).unwrap(), later);
        assert_eq!(
            (r.group_epoch, r.assignment_epoch),
            (g.group_epoch, g.assignment_epoch)
        );
        assert_eq!(r.members["a"].assigned, g.members["a"].assigned);
        assert_eq!(r.state_name(), "Stable");
        // Owners came back too: what a holds is not handed to b, b keeps its own.
        let epoch = r.members["b"].member_epoch;
        let held = r.members["b"].assigned.clone();
        let b = r.heartbeat(hb("b", epoch, Some(held.clone())), later, || &topics);
        assert_eq!(b.assignment, Some(held));
        let session = Duration::from_secs(45);
        r.tick("g", later + Duration::from_secs(44), session, || &topics);
        assert!(
            r.members.contains_key("a"),
            "a's session counts from the restore"
        );
        r.tick("g", later + Duration::from_secs(46), session, || &topics);
        assert!(!r.members.contains_key("a"), "and ends 45 s after it");
    }
}
