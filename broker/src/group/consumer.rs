//! KIP-848 consumer groups: the broker computes assignments (uniform or range) and hands them out
//! through ConsumerGroupHeartbeat, revoking before it reassigns: a partition is given to its new owner
//! only once its previous owner has reported, in a heartbeat, that it let it go.
//!
//! Cost: the target assignment is computed only when the group epoch moves (a member joined, left or
//! changed its subscription, or a subscribed topic's partitions changed, found by the timer), as
//! Kafka's GroupMetadataManager does; a heartbeat in between costs the size of its own member's
//! assignment, because who holds which partition is kept in `owners` rather than gathered from
//! every member. A member that does not revoke within its rebalance timeout is fenced (Kafka's
//! consumer-group rebalance timeout).

use serde::{Deserialize, Serialize};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, HashSet};
use std::time::{Duration, Instant};
use streamhouse_storage::Storage;
use uuid::Uuid;

use super::view::{AssignedTopic, ConsumerDescription, ConsumerMemberDescription};
use crate::error;

/// topic id -> partitions
pub type Assignment = BTreeMap<Uuid, BTreeSet<i32>>;

pub const ASSIGNORS: [&str; 2] = ["uniform", "range"];

/// Kafka's default server assignor (group.consumer.assignors lists uniform first).
pub const DEFAULT_ASSIGNOR: &str = "uniform";

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
            if !ASSIGNORS.contains(&a.as_str()) {
                return Err(HeartbeatResult::error(
                    error::UNSUPPORTED_ASSIGNOR,
                    "unsupported server assignor",
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

fn err(code: i16, msg: &str) -> HeartbeatResult {
    HeartbeatResult::error(code, msg)
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
            err(
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

    /// One heartbeat of a request that passed [`HeartbeatRequest::validate`].
    pub fn heartbeat(
        &mut self,
        req: HeartbeatRequest,
        storage: &Storage,
        now: Instant,
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
                self.reconcile(&id, req.owned.as_ref(), storage, now)
            }
            epoch => {
                let Some(m) = self.members.get(&req.member_id) else {
                    return err(error::UNKNOWN_MEMBER_ID, "unknown member");
                };
                // Kafka accepts the previous epoch when the member owns nothing it should not.
                let owned_ok = req.owned.as_ref().is_none_or(|o| subset(o, &m.assigned));
                if epoch > m.member_epoch
                    || (epoch < m.member_epoch && !(epoch == m.previous_epoch && owned_ok))
                {
                    return err(error::FENCED_MEMBER_EPOCH, "the member epoch is fenced");
                }
                let id = req.member_id.clone();
                if self.update_member(&id, &req, now) {
                    self.group_epoch += 1;
                }
                self.reconcile(&id, req.owned.as_ref(), storage, now)
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

    /// Subscribed topics that exist, per member: member id -> [(topic id, partitions)], and all of
    /// them together. One pass over the topics for each member (its pattern compiled once).
    #[allow(clippy::type_complexity)]
    fn subscriptions(
        &self,
        storage: &Storage,
    ) -> (HashMap<String, Vec<(Uuid, i32)>>, BTreeMap<Uuid, i32>) {
        let topics = storage.topics();
        let mut all = BTreeMap::new();
        let mut per_member = HashMap::with_capacity(self.members.len());
        for m in self.members.values() {
            let pattern = m
                .regex
                .as_deref()
                .and_then(|r| regex::Regex::new(&format!("^(?:{r})$")).ok());
            let mine: Vec<(Uuid, i32)> = topics
                .iter()
                .filter(|t| {
                    m.subscribed.binary_search(&t.name).is_ok()
                        || pattern.as_ref().is_some_and(|p| p.is_match(&t.name))
                })
                .map(|t| (t.id, t.partitions.len() as i32))
                .collect();
            for (id, n) in &mine {
                all.insert(*id, *n);
            }
            per_member.insert(m.id.clone(), mine);
        }
        (per_member, all)
    }

    /// Recomputes the target assignment for the current group epoch: O(partitions x log members)
    /// plus one pass over the topics per member.
    fn compute_target(&mut self, storage: &Storage) {
        self.computations += 1;
        let assignor = self
            .members
            .values()
            .filter_map(|m| m.server_assignor.clone())
            .max()
            .unwrap_or_else(|| DEFAULT_ASSIGNOR.to_string());
        let mut ids: Vec<String> = self.members.keys().cloned().collect();
        ids.sort();
        let (subs, topics) = self.subscriptions(storage);
        let prev_owner: HashMap<(Uuid, i32), &String> = self
            .target
            .iter()
            .flat_map(|(id, a)| keys(a).map(move |k| (k, id)))
            .collect();
        let mut target: HashMap<String, Assignment> = ids
            .iter()
            .map(|id| (id.clone(), Assignment::new()))
            .collect();
        let mut totals: HashMap<&String, usize> = ids.iter().map(|id| (id, 0)).collect();
        for (topic, partitions) in &topics {
            let (topic, partitions) = (*topic, *partitions);
            let candidates: Vec<&String> = ids
                .iter()
                .filter(|id| {
                    subs.get(*id)
                        .is_some_and(|l| l.iter().any(|(t, _)| *t == topic))
                })
                .collect();
            if candidates.is_empty() {
                continue;
            }
            if assignor == "range" {
                // Contiguous ranges per topic, the first members getting one extra.
                let n = candidates.len() as i32;
                let (per, extra) = (partitions / n, partitions % n);
                let mut next = 0;
                for (i, id) in candidates.iter().enumerate() {
                    let count = per + if (i as i32) < extra { 1 } else { 0 };
                    if let Some(a) = target.get_mut(*id) {
                        a.entry(topic).or_default().extend(next..next + count);
                    }
                    *totals.entry(id).or_default() += count as usize;
                    next += count;
                }
            } else {
                // Uniform: balanced counts, sticky where the previous target still fits.
                let quota = (partitions as usize).div_ceil(candidates.len());
                let eligible: HashSet<&String> = candidates.iter().copied().collect();
                let mut per_topic: HashMap<&String, usize> = HashMap::new();
                let mut unassigned = Vec::new();
                for p in 0..partitions {
                    match prev_owner
                        .get(&(topic, p))
                        .filter(|id| eligible.contains(**id))
                    {
                        Some(id) if per_topic.get(*id).copied().unwrap_or(0) < quota => {
                            if let Some(a) = target.get_mut(*id) {
                                a.entry(topic).or_default().insert(p);
                            }
                            *per_topic.entry(id).or_default() += 1;
                            *totals.entry(id).or_default() += 1;
                        }
                        _ => unassigned.push(p),
                    }
                }
                // The rest go one at a time to the candidate with the fewest of this topic, then
                // the fewest overall, then the smallest id.
                let mut heap: BinaryHeap<Reverse<(usize, usize, &String)>> = candidates
                    .iter()
                    .map(|id| {
                        Reverse((
                            per_topic.get(*id).copied().unwrap_or(0),
                            totals.get(*id).copied().unwrap_or(0),
                            *id,
                        ))
                    })
                    .collect();
                for p in unassigned {
                    let Some(Reverse((mine, total, id))) = heap.pop() else {
                        break;
                    };
                    if let Some(a) = target.get_mut(id) {
                        a.entry(topic).or_default().insert(p);
                    }
                    *totals.entry(id).or_default() += 1;
                    heap.push(Reverse((mine + 1, total + 1, id)));
                }
            }
        }
        for a in target.values_mut() {
            a.retain(|_, s| !s.is_empty());
        }
        self.target = target;
        self.assignor = assignor;
        self.subscribed_metadata = topics;
        self.assignment_epoch = self.group_epoch;
    }

    /// Moves a member toward its target: first revocations (confirmed by what it reports owning), then
    /// the new epoch with every target partition no other member still holds.
    fn reconcile(
        &mut self,
        id: &str,
        owned: Option<&Assignment>,
        storage: &Storage,
        now: Instant,
    ) -> HeartbeatResult {
        if self.group_epoch > self.assignment_epoch {
            self.compute_target(storage);
        }
        let assignment_epoch = self.assignment_epoch;
        let Some(m) = self.members.get_mut(id) else {
            return err(error::UNKNOWN_MEMBER_ID, "unknown member");
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
    /// their rebalance timeout, and moves the group epoch when a subscribed topic's partitions changed.
    /// True if the group changed.
    pub fn tick(
        &mut self,
        group_id: &str,
        now: Instant,
        session_timeout: Duration,
        storage: &Storage,
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
            let (_, topics) = self.subscriptions(storage);
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
                DEFAULT_ASSIGNOR.to_string()
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

    pub fn restore(p: PersistedConsumer) -> ConsumerGroup {
        let mut g = ConsumerGroup {
            group_epoch: p.group_epoch,
            assignment_epoch: p.assignment_epoch,
            members: p.members.into_iter().map(|m| (m.id.clone(), m)).collect(),
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
    use streamhouse_storage::StorageConfig;

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
    #[tokio::test]
    async fn revoke_before_reassign() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(StorageConfig::new(dir.path())).await.unwrap();
        storage
            .create_topic("t", 4, Default::default())
            .await
            .unwrap();
        let mut g = ConsumerGroup::default();
        let now = Instant::now();
        let a = g.heartbeat(hb("a", 0, Some(Assignment::new())), &storage, now);
        assert_eq!((a.error, a.member_epoch, count(&a.assignment)), (0, 1, 4));
        let b = g.heartbeat(hb("b", 0, Some(Assignment::new())), &storage, now);
        assert_eq!(
            count(&b.assignment),
            0,
            "nothing free yet: a still holds everything"
        );
        // a is told to keep only its target half.
        let a2 = g.heartbeat(hb("a", 1, a.assignment.clone()), &storage, now);
        assert_eq!(count(&a2.assignment), 2);
        assert_eq!(
            a2.member_epoch, 1,
            "epoch moves only once revocation is confirmed"
        );
        let b2 = g.heartbeat(
            hb("b", b.member_epoch, Some(Assignment::new())),
            &storage,
            now,
        );
        assert_eq!(count(&b2.assignment), 0, "a has not confirmed yet");
        let a3 = g.heartbeat(hb("a", 1, a2.assignment.clone()), &storage, now);
        assert_eq!((a3.member_epoch, count(&a3.assignment)), (2, 2));
        let b3 = g.heartbeat(
            hb("b", b2.member_epoch, Some(Assignment::new())),
            &storage,
            now,
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
            g.heartbeat(hb("b", 7, None), &storage, now).error,
            error::FENCED_MEMBER_EPOCH
        );
        g.heartbeat(hb("b", -1, None), &storage, now);
        let a4 = g.heartbeat(hb("a", 2, a3.assignment.clone()), &storage, now);
        assert_eq!(count(&a4.assignment), 4);
    }

    /// Issue 16.2: a commit from a KIP-848 member must carry its current epoch (Kafka's
    /// ConsumerGroup.validateOffsetCommit); the previous epoch is STALE_MEMBER_EPOCH, so a member that
    /// has moved on cannot overwrite what the partitions' new owner commits.
    #[tokio::test]
    async fn commits_need_the_current_member_epoch() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(StorageConfig::new(dir.path())).await.unwrap();
        storage
            .create_topic("t", 2, Default::default())
            .await
            .unwrap();
        let mut g = ConsumerGroup::default();
        let now = Instant::now();
        let a = g.heartbeat(hb("a", 0, Some(Assignment::new())), &storage, now);
        assert_eq!(a.member_epoch, 1);
        g.heartbeat(hb("b", 0, Some(Assignment::new())), &storage, now);
        let a2 = g.heartbeat(hb("a", 1, a.assignment.clone()), &storage, now);
        let a3 = g.heartbeat(hb("a", 1, a2.assignment.clone()), &storage, now);
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
    #[tokio::test]
    async fn target_is_computed_once_per_group_epoch() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(StorageConfig::new(dir.path())).await.unwrap();
        storage
            .create_topic("t", 6, Default::default())
            .await
            .unwrap();
        let mut g = ConsumerGroup::default();
        let now = Instant::now();
        let session = Duration::from_secs(45);
        let mut owned: HashMap<String, Option<Assignment>> = HashMap::new();
        for id in ["a", "b", "c"] {
            let r = g.heartbeat(hb(id, 0, Some(Assignment::new())), &storage, now);
            owned.insert(id.to_string(), r.assignment);
        }
        // Settle: each member heartbeats with what it was told to own until nothing moves.
        for _ in 0..4 {
            for id in ["a", "b", "c"] {
                let epoch = g.members[id].member_epoch;
                let r = g.heartbeat(hb(id, epoch, owned[id].clone()), &storage, now);
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
                g.heartbeat(hb(id, epoch, owned[id].clone()), &storage, now);
            }
        }
        assert!(!g.tick("g", now, session, &storage), "nothing changed");
        assert_eq!(
            g.computations, settled,
            "unchanged heartbeats compute nothing"
        );
        storage.create_partitions("t", 9).await.unwrap();
        let later = now + Duration::from_secs(2);
        assert!(
            g.tick("g", later, session, &storage),
            "new partitions move the epoch"
        );
        let epoch = g.members["a"].member_epoch;
        let r = g.heartbeat(hb("a", epoch, owned["a"].clone()), &storage, later);
        assert_eq!(g.computations, settled + 1);
        assert_eq!(count(&r.assignment), 3, "a gets one of the new partitions");
    }

    /// Issue 9.8: a member that does not confirm revoking within its rebalance timeout is fenced
    /// (Kafka's consumer-group rebalance timeout), and its partitions go to the others.
    #[tokio::test]
    async fn member_that_does_not_revoke_in_time_is_fenced() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(StorageConfig::new(dir.path())).await.unwrap();
        storage
            .create_topic("t", 4, Default::default())
            .await
            .unwrap();
        let mut g = ConsumerGroup::default();
        let t = Instant::now();
        let session = Duration::from_secs(45);
        let a = g.heartbeat(hb("a", 0, Some(Assignment::new())), &storage, t);
        assert_eq!(count(&a.assignment), 4);
        g.heartbeat(hb("b", 0, Some(Assignment::new())), &storage, t);
        let a2 = g.heartbeat(hb("a", 1, a.assignment.clone()), &storage, t);
        assert_eq!(count(&a2.assignment), 2, "a is told to give two up");
        // a keeps heartbeating (its session stays alive) but never lets the two go.
        for s in [10, 20, 29] {
            let at = t + Duration::from_secs(s);
            g.heartbeat(hb("a", 1, a.assignment.clone()), &storage, at);
            assert!(!g.tick("g", at, session, &storage));
        }
        let late = t + Duration::from_secs(31); // rebalance timeout 30 s (see hb)
        assert!(g.tick("g", late, session, &storage), "a is fenced");
        assert!(!g.members.contains_key("a"));
        let epoch = g.members["b"].member_epoch;
        let b = g.heartbeat(hb("b", epoch, Some(Assignment::new())), &storage, late);
        let b = g.heartbeat(
            hb("b", b.member_epoch, b.assignment.clone()),
            &storage,
            late,
        );
        assert_eq!(count(&b.assignment), 4, "b has everything a held");
        assert_eq!(
            g.heartbeat(hb("a", 1, a.assignment.clone()), &storage, late)
                .error,
            error::UNKNOWN_MEMBER_ID
        );
    }

    /// group.consumer.max.size: a new member past the limit gets GROUP_MAX_SIZE_REACHED; members
    /// already in keep heartbeating.
    #[tokio::test]
    async fn consumer_group_max_size() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(StorageConfig::new(dir.path())).await.unwrap();
        let mut g = ConsumerGroup::default();
        let now = Instant::now();
        assert!(g.refuse_if_full(&hb("a", 0, None), 1).is_none());
        g.heartbeat(hb("a", 0, None), &storage, now);
        let full = g.refuse_if_full(&hb("b", 0, None), 1).expect("refused");
        assert_eq!(full.error, error::GROUP_MAX_SIZE_REACHED);
        assert!(
            g.refuse_if_full(&hb("a", 0, None), 1).is_none(),
            "a rejoining"
        );
        assert!(g.refuse_if_full(&hb("a", 1, None), 1).is_none());
    }
}
