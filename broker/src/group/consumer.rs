//! KIP-848 consumer groups: the broker computes assignments (uniform or range) and hands them out
//! through ConsumerGroupHeartbeat, revoking before it reassigns: a partition is given to its new owner
//! only once its previous owner has reported, in a heartbeat, that it let it go.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};
use streamhouse_storage::Storage;
use uuid::Uuid;

use crate::error;

/// topic id -> partitions
pub type Assignment = BTreeMap<Uuid, BTreeSet<i32>>;

pub const ASSIGNORS: [&str; 2] = ["uniform", "range"];

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
}

#[derive(Default)]
pub struct ConsumerGroup {
    pub group_epoch: i32,
    pub assignment_epoch: i32,
    pub members: HashMap<String, ConsumerMember>,
    /// member id -> target assignment of `assignment_epoch`.
    pub target: HashMap<String, Assignment>,
    pub assignor: String,
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

#[derive(Debug, Default)]
pub struct HeartbeatResult {
    pub error: i16,
    pub message: Option<String>,
    pub member_id: String,
    pub member_epoch: i32,
    pub assignment: Option<Assignment>,
}

fn err(code: i16, msg: &str) -> HeartbeatResult {
    HeartbeatResult {
        error: code,
        message: Some(msg.to_string()),
        member_epoch: -1,
        ..Default::default()
    }
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

    pub fn heartbeat(
        &mut self,
        req: HeartbeatRequest,
        storage: &Storage,
        now: Instant,
    ) -> HeartbeatResult {
        if let Some(a) = &req.server_assignor {
            if !ASSIGNORS.contains(&a.as_str()) {
                return err(error::UNSUPPORTED_ASSIGNOR, "unsupported server assignor");
            }
        }
        match req.member_epoch {
            -1 | -2 => {
                // Leaving (-2: a static member leaving temporarily; its partitions are reassigned all the same).
                if self.members.remove(&req.member_id).is_some() {
                    self.target.remove(&req.member_id);
                    self.group_epoch += 1;
                }
                HeartbeatResult {
                    member_id: req.member_id,
                    member_epoch: req.member_epoch,
                    ..Default::default()
                }
            }
            0 => {
                if req.subscribed.is_none() && req.regex.is_none() {
                    return err(
                        error::INVALID_REQUEST,
                        "SubscribedTopicNames or SubscribedTopicRegex must be set to join",
                    );
                }
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
                            self.members.insert(
                                id.clone(),
                                ConsumerMember {
                                    id: id.clone(),
                                    member_epoch: 0,
                                    revoking: Assignment::new(),
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
                    });
                if m.member_epoch != 0 {
                    // Rejoining after being fenced: starts over with nothing.
                    m.member_epoch = 0;
                    m.assigned.clear();
                    m.revoking.clear();
                }
                self.group_epoch += 1;
                self.update_member(&id, &req, now);
                self.reconcile(&id, req.owned.as_ref(), storage)
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
                self.reconcile(&id, req.owned.as_ref(), storage)
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

    /// Topics a member subscribes to, by name or pattern, that exist: (name, id, partitions).
    fn member_topics(m: &ConsumerMember, storage: &Storage) -> Vec<(String, Uuid, i32)> {
        let pattern = m
            .regex
            .as_deref()
            .and_then(|r| regex::Regex::new(&format!("^(?:{r})$")).ok());
        storage
            .topics()
            .into_iter()
            .filter(|t| {
                m.subscribed.contains(&t.name)
                    || pattern.as_ref().is_some_and(|p| p.is_match(&t.name))
            })
            .map(|t| (t.name.clone(), t.id, t.partitions.len() as i32))
            .collect()
    }

    /// Recomputes the target assignment for the current group epoch.
    fn compute_target(&mut self, storage: &Storage) {
        let assignor = self
            .members
            .values()
            .filter_map(|m| m.server_assignor.clone())
            .max()
            .unwrap_or_else(|| "uniform".to_string());
        let mut ids: Vec<String> = self.members.keys().cloned().collect();
        ids.sort();
        let subs: HashMap<String, Vec<(String, Uuid, i32)>> = ids
            .iter()
            .map(|id| (id.clone(), Self::member_topics(&self.members[id], storage)))
            .collect();
        let mut topics: BTreeMap<Uuid, i32> = BTreeMap::new();
        for list in subs.values() {
            for (_, id, n) in list {
                topics.insert(*id, *n);
            }
        }
        let mut target: HashMap<String, Assignment> = ids
            .iter()
            .map(|id| (id.clone(), Assignment::new()))
            .collect();
        for (topic, partitions) in topics {
            let candidates: Vec<&String> = ids
                .iter()
                .filter(|id| subs[*id].iter().any(|(_, t, _)| *t == topic))
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
                    let set = target.get_mut(*id).map(|a| a.entry(topic).or_default());
                    if let Some(set) = set {
                        set.extend(next..next + count);
                    }
                    next += count;
                }
            } else {
                // Uniform: balanced counts, sticky where the previous target still fits.
                let quota = (partitions as usize).div_ceil(candidates.len());
                let mut unassigned = Vec::new();
                for p in 0..partitions {
                    let prev = self
                        .target
                        .iter()
                        .find(|(_, a)| a.get(&topic).is_some_and(|s| s.contains(&p)))
                        .map(|(id, _)| id.clone());
                    match prev.filter(|id| candidates.contains(&id)) {
                        Some(id) if target[&id].get(&topic).map_or(0, |s| s.len()) < quota => {
                            target
                                .get_mut(&id)
                                .map(|a| a.entry(topic).or_default().insert(p));
                        }
                        _ => unassigned.push(p),
                    }
                }
                for p in unassigned {
                    let total = |id: &String| target[id].values().map(|s| s.len()).sum::<usize>();
                    let per_topic = |id: &String| target[id].get(&topic).map_or(0, |s| s.len());
                    if let Some(id) = candidates
                        .iter()
                        .min_by_key(|id| (per_topic(id), total(id), (**id).clone()))
                    {
                        target
                            .get_mut(*id)
                            .map(|a| a.entry(topic).or_default().insert(p));
                    }
                }
            }
        }
        for a in target.values_mut() {
            a.retain(|_, s| !s.is_empty());
        }
        self.target = target;
        self.assignor = assignor;
        self.assignment_epoch = self.group_epoch;
    }

    /// Moves a member toward its target: first revocations (confirmed by what it reports owning), then
    /// the new epoch with every target partition no other member still holds.
    fn reconcile(
        &mut self,
        id: &str,
        owned: Option<&Assignment>,
        storage: &Storage,
    ) -> HeartbeatResult {
        if self.group_epoch > self.assignment_epoch {
            self.compute_target(storage);
        }
        let target = self.target.get(id).cloned().unwrap_or_default();
        let held_by_others: Assignment = {
            let mut all = Assignment::new();
            for (mid, m) in &self.members {
                if mid != id {
                    for (t, ps) in m.assigned.iter().chain(m.revoking.iter()) {
                        all.entry(*t).or_default().extend(ps.iter().copied());
                    }
                }
            }
            all
        };
        let assignment_epoch = self.assignment_epoch;
        let Some(m) = self.members.get_mut(id) else {
            return err(error::UNKNOWN_MEMBER_ID, "unknown member");
        };
        // Revocations are done once the member reports owning none of them.
        if !m.revoking.is_empty() && owned.is_some_and(|o| intersect(o, &m.revoking).is_empty()) {
            m.revoking.clear();
        }
        if m.revoking.is_empty() {
            let revoke = minus(&m.assigned, &target);
            if !revoke.is_empty() {
                m.assigned = minus(&m.assigned, &revoke);
                m.revoking = revoke;
            } else {
                if m.member_epoch != assignment_epoch {
                    m.previous_epoch = m.member_epoch;
                    m.member_epoch = assignment_epoch;
                }
                // Everything in the target that nobody else still holds.
                let free = minus(&target, &held_by_others);
                for (t, ps) in free {
                    m.assigned.entry(t).or_default().extend(ps);
                }
            }
        }
        HeartbeatResult {
            error: error::NONE,
            message: None,
            member_id: m.id.clone(),
            member_epoch: m.member_epoch,
            assignment: Some(m.assigned.clone()),
        }
    }

    /// Expires members whose session ran out. True if the group changed.
    pub fn tick(&mut self, group_id: &str, now: Instant, session_timeout: Duration) -> bool {
        let expired: Vec<String> = self
            .members
            .values()
            .filter(|m| now > m.last_seen + session_timeout)
            .map(|m| m.id.clone())
            .collect();
        for id in &expired {
            tracing::info!(group = group_id, member = %id, "consumer group member session expired");
            self.members.remove(id);
            self.target.remove(id);
        }
        if !expired.is_empty() {
            self.group_epoch += 1;
        }
        !expired.is_empty()
    }

    /// OffsetCommit from a member: its epoch must be current (or the one before).
    pub fn check_commit(&self, member_id: &str, epoch: i32) -> Result<(), i16> {
        let m = self
            .members
            .get(member_id)
            .ok_or(error::UNKNOWN_MEMBER_ID)?;
        if epoch != m.member_epoch && epoch != m.previous_epoch {
            return Err(error::STALE_MEMBER_EPOCH);
        }
        Ok(())
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
        ConsumerGroup {
            group_epoch: p.group_epoch,
            assignment_epoch: p.assignment_epoch,
            members: p.members.into_iter().map(|m| (m.id.clone(), m)).collect(),
            target: p.target.into_iter().collect(),
            assignor: p.assignor,
        }
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
}
