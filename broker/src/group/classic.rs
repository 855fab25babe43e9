//! The classic rebalance protocol, following Kafka's ClassicGroup state machine:
//! Empty -> PreparingRebalance -> CompletingRebalance -> Stable, with generations, MEMBER_ID_REQUIRED
//! (KIP-394), static membership (KIP-345), rebalance and session timeouts. The broker picks the
//! protocol all members support with the most first-choice votes and passes the leader's assignment
//! through untouched; assignors (range, roundrobin, cooperative-sticky) run in the clients.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

use super::view::{ClassicDescription, ClassicMemberDescription};
use crate::error;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClassicState {
    #[default]
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
}

impl ClassicState {
    pub fn name(self) -> &'static str {
        match self {
            ClassicState::Empty => "Empty",
            ClassicState::PreparingRebalance => "PreparingRebalance",
            ClassicState::CompletingRebalance => "CompletingRebalance",
            ClassicState::Stable => "Stable",
        }
    }
}

/// What a JoinGroup caller gets back.
#[derive(Debug, Clone, Default)]
pub struct JoinResult {
    pub error: i16,
    pub generation: i32,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub leader: String,
    pub member_id: String,
    pub skip_assignment: bool,
    /// The members and their metadata for the chosen protocol: for the leader only.
    pub members: Vec<JoinMember>,
}

/// A member as the leader learns it from JoinGroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinMember {
    pub member_id: String,
    pub instance_id: Option<String>,
    /// Its metadata for the chosen protocol.
    pub metadata: Bytes,
}

/// A protocol a member supports (its name, say an assignor, and the member's metadata for it);
/// persisted as it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Protocol {
    pub name: String,
    #[serde(with = "super::hex_bytes")]
    pub metadata: Bytes,
}

/// The leader's assignment for one member (SyncGroup).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberAssignment {
    pub member_id: String,
    pub assignment: Bytes,
}

impl JoinResult {
    pub(super) fn error(code: i16, member_id: &str) -> JoinResult {
        JoinResult {
            error: code,
            generation: -1,
            member_id: member_id.to_string(),
            ..Default::default()
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct SyncResult {
    pub error: i16,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub assignment: Bytes,
}

pub struct Member {
    pub id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout: Duration,
    pub rebalance_timeout: Duration,
    pub protocol_type: String,
    pub protocols: Vec<Protocol>,
    pub assignment: Bytes,
    join_waiter: Option<oneshot::Sender<JoinResult>>,
    sync_waiter: Option<oneshot::Sender<SyncResult>>,
    last_seen: Instant,
    join_seq: u64,
}

impl Member {
    pub(super) fn metadata_for(&self, protocol: &str) -> Bytes {
        self.protocols
            .iter()
            .find(|p| p.name == protocol)
            .map(|p| p.metadata.clone())
            .unwrap_or_default()
    }
}

/// A JoinGroup request, as the coordinator needs it.
pub struct JoinRequest {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout: Duration,
    pub rebalance_timeout: Duration,
    pub protocol_type: String,
    pub protocols: Vec<Protocol>,
    /// v4+: a new dynamic member first gets MEMBER_ID_REQUIRED with its id (KIP-394).
    pub require_known_member_id: bool,
}

/// A SyncGroup request, as the coordinator needs it.
pub struct SyncRequest {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub generation: i32,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    /// The leader's assignment per member id (empty from followers).
    pub assignments: Vec<MemberAssignment>,
}

/// An answer now, or one that comes when the rebalance completes (the group's side of the handlers'
/// `Reply`, with the same names).
pub enum Reply<T> {
    Now(T),
    Later(oneshot::Receiver<T>),
}

#[derive(Default)]
pub struct ClassicGroup {
    pub state: ClassicState,
    pub generation: i32,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub leader: Option<String>,
    pub members: HashMap<String, Member>,
    /// Member ids handed out with MEMBER_ID_REQUIRED, until they join or their session times out.
    pending: HashMap<String, Instant>,
    /// group.instance.id -> current member id.
    static_members: HashMap<String, String>,
    rebalance_deadline: Option<Instant>,
    initial_delay_until: Option<Instant>,
    sync_deadline: Option<Instant>,
    next_seq: u64,
    /// Wall-clock ms since when the group is Empty (Kafka's currentStateTimestamp while Empty), which
    /// offset expiry counts from; `None` when not Empty or not known.
    pub empty_since_ms: Option<i64>,
}

impl ClassicGroup {
    /// Records when the group became Empty (the caller passes the wall clock; the state machine
    /// itself only knows `Instant`s).
    pub fn note_state(&mut self, now_ms: i64) {
        if self.state != ClassicState::Empty {
            self.empty_since_ms = None;
        } else if self.empty_since_ms.is_none() {
            self.empty_since_ms = Some(now_ms);
        }
    }

    /// Kafka's acceptJoiningMember (group.max.size): always while Empty; while PreparingRebalance a
    /// member already waiting in JoinGroup, or anyone while fewer than the limit wait; otherwise a
    /// known member, or anyone while the group is below the limit. A known member refused is
    /// removed from the group (Kafka: the last members to rejoin are the ones kicked out).
    pub fn accept_joining_member(&mut self, member_id: &str, max: usize, now: Instant) -> bool {
        let known = self.members.get(member_id);
        let accepted = match self.state {
            ClassicState::Empty => true,
            ClassicState::PreparingRebalance => {
                known.is_some_and(|m| m.join_waiter.is_some())
                    || self
                        .members
                        .values()
                        .filter(|m| m.join_waiter.is_some())
                        .count()
                        < max
            }
            ClassicState::CompletingRebalance | ClassicState::Stable => {
                known.is_some() || self.members.len() < max
            }
        };
        if !accepted && known.is_some() {
            self.remove_member(member_id);
            self.after_removal(Duration::ZERO, now);
        }
        accepted
    }

    /// Kafka's ClassicGroup.validateOffsetCommit: a commit without a generation (-1) is taken only
    /// while the group is Empty; otherwise the member must be known (static members by instance id
    /// first) and its generation the current one; while the group waits for the leader's assignment
    /// (CompletingRebalance) the member is told to finish the rebalance. PreparingRebalance accepts
    /// the current generation: its members still own their partitions until they rejoin.
    pub fn validate_offset_commit(
        &self,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
    ) -> Result<(), i16> {
        if generation < 0 && self.state == ClassicState::Empty {
            return Ok(());
        }
        if generation >= 0 || !member_id.is_empty() || instance_id.is_some() {
            self.check_member(member_id, instance_id)?;
            if generation != self.generation {
                return Err(error::ILLEGAL_GENERATION);
            }
        } else if self.state != ClassicState::Empty {
            return Err(error::UNKNOWN_MEMBER_ID);
        }
        if self.state == ClassicState::CompletingRebalance {
            return Err(error::REBALANCE_IN_PROGRESS);
        }
        Ok(())
    }

    pub fn join(
        &mut self,
        group_id: &str,
        req: JoinRequest,
        initial_delay: Duration,
        now: Instant,
    ) -> Reply<JoinResult> {
        if !self.members.is_empty() || self.state != ClassicState::Empty {
            // A group's protocol type is fixed while it has members; at least one protocol must be common.
            let same_type = self
                .protocol_type
                .as_deref()
                .is_none_or(|t| t == req.protocol_type);
            let common = self
                .members
                .values()
                .filter(|m| m.id != req.member_id)
                .all(|m| {
                    m.protocols
                        .iter()
                        .any(|p| req.protocols.iter().any(|r| r.name == p.name))
                });
            if !same_type || (!self.members.is_empty() && !common) {
                return Reply::Now(JoinResult::error(
                    error::INCONSISTENT_GROUP_PROTOCOL,
                    &req.member_id,
                ));
            }
        }
        if req.member_id.is_empty() {
            self.join_unknown_member(group_id, req, initial_delay, now)
        } else {
            self.join_known_member(req, initial_delay, now)
        }
    }

    fn join_unknown_member(
        &mut self,
        group_id: &str,
        req: JoinRequest,
        initial_delay: Duration,
        now: Instant,
    ) -> Reply<JoinResult> {
        let new_id = format!(
            "{}-{}",
            if req.client_id.is_empty() {
                "member"
            } else {
                &req.client_id
            },
            uuid::Uuid::new_v4()
        );
        if let Some(instance) = req.instance_id.clone() {
            if let Some(old_id) = self.static_members.get(&instance).cloned() {
                return self.replace_static_member(&old_id, new_id, req, initial_delay, now);
            }
            // A new static member joins at once, without MEMBER_ID_REQUIRED.
            self.static_members.insert(instance, new_id.clone());
            return self.add_member_and_rebalance(new_id, req, initial_delay, now);
        }
        if req.require_known_member_id {
            self.pending
                .insert(new_id.clone(), now + req.session_timeout);
            tracing::debug!(group = group_id, member = %new_id, "member id required");
            return Reply::Now(JoinResult::error(error::MEMBER_ID_REQUIRED, &new_id));
        }
        self.add_member_and_rebalance(new_id, req, initial_delay, now)
    }

    /// KIP-345: a static member rejoining with a new member id takes over the old one's place and
    /// assignment; in a Stable group with unchanged protocols, the others are not rebalanced.
    fn replace_static_member(
        &mut self,
        old_id: &str,
        new_id: String,
        req: JoinRequest,
        initial_delay: Duration,
        now: Instant,
    ) -> Reply<JoinResult> {
        let Some(mut member) = self.members.remove(old_id) else {
            self.static_members
                .remove(req.instance_id.as_deref().unwrap_or_default());
            return self.add_member_and_rebalance(new_id, req, initial_delay, now);
        };
        // The old incarnation, if still waiting, is fenced.
        if let Some(w) = member.join_waiter.take() {
            let _ = w.send(JoinResult::error(error::FENCED_INSTANCE_ID, old_id));
        }
        if let Some(w) = member.sync_waiter.take() {
            let _ = w.send(SyncResult {
                error: error::FENCED_INSTANCE_ID,
                ..Default::default()
            });
        }
        let protocols_unchanged = member.protocols == req.protocols;
        member.id = new_id.clone();
        member.client_id = req.client_id.clone();
        member.client_host = req.client_host.clone();
        member.session_timeout = req.session_timeout;
        member.rebalance_timeout = req.rebalance_timeout;
        member.last_seen = now;
        if let Some(instance) = &req.instance_id {
            self.static_members.insert(instance.clone(), new_id.clone());
        }
        let was_leader = self.leader.as_deref() == Some(old_id);
        if was_leader {
            self.leader = Some(new_id.clone());
        }
        if self.state == ClassicState::Stable && protocols_unchanged {
            let mut result = self.current_result(&new_id);
            // The leader learns the members but must not reassign (KIP-345 / JoinGroup v9 skip_assignment).
            if was_leader {
                result.members = self.member_list();
                result.skip_assignment = true;
            }
            self.members.insert(new_id, member);
            return Reply::Now(result);
        }
        member.protocols = req.protocols;
        let (tx, rx) = oneshot::channel();
        member.join_waiter = Some(tx);
        self.members.insert(new_id, member);
        self.wait_for_rebalance(rx, initial_delay, now)
    }

    fn add_member_and_rebalance(
        &mut self,
        id: String,
        req: JoinRequest,
        initial_delay: Duration,
        now: Instant,
    ) -> Reply<JoinResult> {
        let (tx, rx) = oneshot::channel();
        self.next_seq += 1;
        self.members.insert(
            id.clone(),
            Member {
                id,
                instance_id: req.instance_id,
                client_id: req.client_id,
                client_host: req.client_host,
                session_timeout: req.session_timeout,
                rebalance_timeout: req.rebalance_timeout,
                protocol_type: req.protocol_type.clone(),
                protocols: req.protocols,
                assignment: Bytes::new(),
                join_waiter: Some(tx),
                sync_waiter: None,
                last_seen: now,
                join_seq: self.next_seq,
            },
        );
        if self.protocol_type.is_none() {
            self.protocol_type = Some(req.protocol_type);
        }
        self.wait_for_rebalance(rx, initial_delay, now)
    }

    /// The joining member waits for the rebalance, which starts now unless one is already under way.
    fn wait_for_rebalance(
        &mut self,
        rx: oneshot::Receiver<JoinResult>,
        initial_delay: Duration,
        now: Instant,
    ) -> Reply<JoinResult> {
        if self.state != ClassicState::PreparingRebalance {
            self.prepare_rebalance(initial_delay, now);
        }
        self.maybe_complete_join(now);
        Reply::Later(rx)
    }

    fn join_known_member(
        &mut self,
        req: JoinRequest,
        initial_delay: Duration,
        now: Instant,
    ) -> Reply<JoinResult> {
        let id = req.member_id.clone();
        if self.pending.remove(&id).is_some() {
            return self.add_member_and_rebalance(id, req, initial_delay, now);
        }
        if let Some(instance) = &req.instance_id {
            if self
                .static_members
                .get(instance)
                .is_some_and(|current| *current != id)
            {
                return Reply::Now(JoinResult::error(error::FENCED_INSTANCE_ID, &id));
            }
        }
        let Some(member) = self.members.get_mut(&id) else {
            return Reply::Now(JoinResult::error(error::UNKNOWN_MEMBER_ID, &id));
        };
        member.last_seen = now;
        let changed = member.protocols != req.protocols;
        member.session_timeout = req.session_timeout;
        member.rebalance_timeout = req.rebalance_timeout;
        match self.state {
            ClassicState::PreparingRebalance => {
                member.protocols = req.protocols;
                let (tx, rx) = oneshot::channel();
                if let Some(old) = member.join_waiter.replace(tx) {
                    let _ = old.send(JoinResult::error(error::UNKNOWN_MEMBER_ID, &id));
                }
                self.maybe_complete_join(now);
                Reply::Later(rx)
            }
            ClassicState::CompletingRebalance | ClassicState::Stable
                if !changed && self.leader.as_deref() != Some(&id) =>
            {
                // A follower with nothing new gets the current generation back (Kafka does the same).
                Reply::Now(self.current_result(&id))
            }
            ClassicState::CompletingRebalance if !changed => {
                let mut r = self.current_result(&id);
                r.members = self.member_list();
                Reply::Now(r)
            }
            _ => {
                member.protocols = req.protocols;
                let (tx, rx) = oneshot::channel();
                member.join_waiter = Some(tx);
                self.wait_for_rebalance(rx, initial_delay, now)
            }
        }
    }

    fn current_result(&self, member_id: &str) -> JoinResult {
        JoinResult {
            error: error::NONE,
            generation: self.generation,
            protocol_type: self.protocol_type.clone(),
            protocol_name: self.protocol_name.clone(),
            leader: self.leader.clone().unwrap_or_default(),
            member_id: member_id.to_string(),
            skip_assignment: false,
            members: Vec::new(),
        }
    }

    fn member_list(&self) -> Vec<JoinMember> {
        let protocol = self.protocol_name.clone().unwrap_or_default();
        let mut v: Vec<&Member> = self.members.values().collect();
        v.sort_by_key(|m| m.join_seq);
        v.iter()
            .map(|m| JoinMember {
                member_id: m.id.clone(),
                instance_id: m.instance_id.clone(),
                metadata: m.metadata_for(&protocol),
            })
            .collect()
    }

    /// Starts (or restarts) a rebalance: everyone must rejoin before the deadline.
    fn prepare_rebalance(&mut self, initial_delay: Duration, now: Instant) {
        // Members still waiting for SyncGroup learn that the generation they joined is over.
        for m in self.members.values_mut() {
            if let Some(w) = m.sync_waiter.take() {
                let _ = w.send(SyncResult {
                    error: error::REBALANCE_IN_PROGRESS,
                    ..Default::default()
                });
            }
        }
        let timeout = self
            .members
            .values()
            .map(|m| m.rebalance_timeout)
            .max()
            .unwrap_or(Duration::from_secs(60));
        let first = self.state == ClassicState::Empty;
        self.state = ClassicState::PreparingRebalance;
        self.rebalance_deadline = Some(now + timeout);
        // group.initial.rebalance.delay.ms: a new group waits a moment for the rest of its members.
        self.initial_delay_until = Some(if first {
            now + initial_delay.min(timeout)
        } else {
            now
        });
        self.sync_deadline = None;
    }

    fn maybe_complete_join(&mut self, now: Instant) -> bool {
        if self.state != ClassicState::PreparingRebalance {
            return false;
        }
        let all_joined = self.members.values().all(|m| m.join_waiter.is_some());
        let delay_over = self.initial_delay_until.is_none_or(|t| now >= t);
        let deadline = self.rebalance_deadline.is_some_and(|t| now >= t);
        // Kafka's hasAllMembersJoined: every member rejoined and no MEMBER_ID_REQUIRED member is out.
        if (all_joined && delay_over && self.pending.is_empty()) || deadline {
            self.complete_join(now);
            return true;
        }
        // Pending members (MEMBER_ID_REQUIRED) are given until the delay ends to come back.
        if all_joined
            && delay_over
            && !self.pending.is_empty()
            && self.pending.values().all(|t| *t <= now)
        {
            self.pending.clear();
            self.complete_join(now);
            return true;
        }
        false
    }

    fn complete_join(&mut self, now: Instant) {
        // Members that did not rejoin in time are out.
        self.remove_members_where(|m| m.join_waiter.is_none());
        self.generation += 1;
        self.rebalance_deadline = None;
        self.initial_delay_until = None;
        if self.members.is_empty() {
            self.state = ClassicState::Empty;
            self.protocol_name = None;
            self.leader = None;
            return;
        }
        self.protocol_name = Some(self.select_protocol());
        if !self
            .leader
            .as_ref()
            .is_some_and(|l| self.members.contains_key(l))
        {
            self.leader = self
                .members
                .values()
                .min_by_key(|m| m.join_seq)
                .map(|m| m.id.clone());
        }
        self.state = ClassicState::CompletingRebalance;
        let timeout = self
            .members
            .values()
            .map(|m| m.rebalance_timeout)
            .max()
            .unwrap_or(Duration::from_secs(60));
        self.sync_deadline = Some(now + timeout);
        let members = self.member_list();
        let leader = self.leader.clone().unwrap_or_default();
        for m in self.members.values_mut() {
            m.last_seen = now;
            m.assignment = Bytes::new();
            if let Some(w) = m.join_waiter.take() {
                let _ = w.send(JoinResult {
                    error: error::NONE,
                    generation: self.generation,
                    protocol_type: self.protocol_type.clone(),
                    protocol_name: self.protocol_name.clone(),
                    leader: leader.clone(),
                    member_id: m.id.clone(),
                    skip_assignment: false,
                    members: if m.id == leader {
                        members.clone()
                    } else {
                        Vec::new()
                    },
                });
            }
        }
    }

    /// Kafka's selectProtocol: among protocols every member supports, each member votes for the first
    /// of them in its own preference order; the most votes wins.
    fn select_protocol(&self) -> String {
        let mut members: Vec<&Member> = self.members.values().collect();
        members.sort_by_key(|m| m.join_seq);
        let candidates: Vec<&String> = members
            .first()
            .map(|m| {
                m.protocols
                    .iter()
                    .map(|p| &p.name)
                    .filter(|n| {
                        members
                            .iter()
                            .all(|o| o.protocols.iter().any(|op| op.name == **n))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let mut votes: Vec<(usize, &String)> = candidates.iter().map(|c| (0usize, *c)).collect();
        for m in &members {
            if let Some(choice) = m
                .protocols
                .iter()
                .map(|p| &p.name)
                .find(|n| candidates.contains(n))
            {
                if let Some(v) = votes.iter_mut().find(|(_, c)| *c == choice) {
                    v.0 += 1;
                }
            }
        }
        // Ties go to the earliest candidate in the first member's order.
        let best = votes.iter().map(|(v, _)| *v).max().unwrap_or(0);
        votes
            .into_iter()
            .find(|(v, _)| *v == best)
            .map(|(_, c)| c.clone())
            .unwrap_or_default()
    }

    /// Removes every member matching `pred`; returns their ids.
    fn remove_members_where(&mut self, pred: impl Fn(&Member) -> bool) -> Vec<String> {
        let ids: Vec<String> = self
            .members
            .values()
            .filter(|m| pred(m))
            .map(|m| m.id.clone())
            .collect();
        for id in &ids {
            self.remove_member(id);
        }
        ids
    }

    fn remove_member(&mut self, id: &str) {
        if let Some(m) = self.members.remove(id) {
            if let Some(instance) = &m.instance_id {
                if self
                    .static_members
                    .get(instance)
                    .is_some_and(|cur| cur == id)
                {
                    self.static_members.remove(instance);
                }
            }
            if let Some(w) = m.join_waiter {
                let _ = w.send(JoinResult::error(error::UNKNOWN_MEMBER_ID, id));
            }
            if let Some(w) = m.sync_waiter {
                let _ = w.send(SyncResult {
                    error: error::UNKNOWN_MEMBER_ID,
                    ..Default::default()
                });
            }
        }
        if self.leader.as_deref() == Some(id) {
            self.leader = None;
        }
    }

    /// Checks a member's identity for Sync/Heartbeat/OffsetCommit, as Kafka's ClassicGroup.validateMember:
    /// with an instance id, its static member must exist (UNKNOWN_MEMBER_ID) and be this member id
    /// (FENCED_INSTANCE_ID); without one, the member id must be known.
    pub fn check_member(&self, member_id: &str, instance_id: Option<&str>) -> Result<(), i16> {
        match instance_id {
            Some(instance) => match self.static_members.get(instance) {
                None => Err(error::UNKNOWN_MEMBER_ID),
                Some(current) if current != member_id => Err(error::FENCED_INSTANCE_ID),
                Some(_) => Ok(()),
            },
            None if self.members.contains_key(member_id) => Ok(()),
            None => Err(error::UNKNOWN_MEMBER_ID),
        }
    }

    pub fn sync(&mut self, req: SyncRequest, now: Instant) -> (Reply<SyncResult>, bool) {
        let SyncRequest {
            member_id,
            instance_id,
            generation,
            protocol_type,
            protocol_name,
            assignments,
        } = req;
        let (member_id, instance_id) = (member_id.as_str(), instance_id.as_deref());
        let (protocol_type, protocol_name) = (protocol_type.as_deref(), protocol_name.as_deref());
        let err = |code| {
            (
                Reply::Now(SyncResult {
                    error: code,
                    ..Default::default()
                }),
                false,
            )
        };
        if let Err(code) = self.check_member(member_id, instance_id) {
            return err(code);
        }
        if generation != self.generation {
            return err(error::ILLEGAL_GENERATION);
        }
        if protocol_type.is_some_and(|t| Some(t) != self.protocol_type.as_deref())
            || protocol_name.is_some_and(|n| Some(n) != self.protocol_name.as_deref())
        {
            return err(error::INCONSISTENT_GROUP_PROTOCOL);
        }
        let ok = |a: Bytes, g: &ClassicGroup| SyncResult {
            error: error::NONE,
            protocol_type: g.protocol_type.clone(),
            protocol_name: g.protocol_name.clone(),
            assignment: a,
        };
        match self.state {
            ClassicState::Empty => err(error::UNKNOWN_MEMBER_ID),
            ClassicState::PreparingRebalance => err(error::REBALANCE_IN_PROGRESS),
            ClassicState::Stable => {
                let a = self
                    .members
                    .get(member_id)
                    .map(|m| m.assignment.clone())
                    .unwrap_or_default();
                if let Some(m) = self.members.get_mut(member_id) {
                    m.last_seen = now;
                }
                (Reply::Now(ok(a, self)), false)
            }
            ClassicState::CompletingRebalance => {
                let (tx, rx) = oneshot::channel();
                if let Some(m) = self.members.get_mut(member_id) {
                    m.last_seen = now;
                    m.sync_waiter = Some(tx);
                }
                if self.leader.as_deref() != Some(member_id) {
                    return (Reply::Later(rx), false);
                }
                // The leader's assignment, passed through untouched; members it left out get nothing.
                let mut by_member: HashMap<String, Bytes> = assignments
                    .into_iter()
                    .map(|a| (a.member_id, a.assignment))
                    .collect();
                self.state = ClassicState::Stable;
                self.sync_deadline = None;
                let (pt, pn) = (self.protocol_type.clone(), self.protocol_name.clone());
                for m in self.members.values_mut() {
                    m.assignment = by_member.remove(&m.id).unwrap_or_default();
                    if let Some(w) = m.sync_waiter.take() {
                        let _ = w.send(SyncResult {
                            error: error::NONE,
                            protocol_type: pt.clone(),
                            protocol_name: pn.clone(),
                            assignment: m.assignment.clone(),
                        });
                    }
                }
                (Reply::Later(rx), true)
            }
        }
    }

    pub fn heartbeat(
        &mut self,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        now: Instant,
    ) -> i16 {
        if let Err(code) = self.check_member(member_id, instance_id) {
            return code;
        }
        if let Some(m) = self.members.get_mut(member_id) {
            m.last_seen = now;
        }
        match self.state {
            ClassicState::Empty => error::UNKNOWN_MEMBER_ID,
            ClassicState::PreparingRebalance => error::REBALANCE_IN_PROGRESS,
            _ if generation != self.generation => error::ILLEGAL_GENERATION,
            _ => error::NONE,
        }
    }

    /// LeaveGroup for one member (by member id, or by instance id for static members).
    /// Returns the error code and whether the group changed.
    pub fn leave(
        &mut self,
        member_id: &str,
        instance_id: Option<&str>,
        initial_delay: Duration,
        now: Instant,
    ) -> (i16, bool) {
        let id = match instance_id {
            Some(instance) => match self.static_members.get(instance) {
                Some(current) if member_id.is_empty() || current == member_id => current.clone(),
                Some(_) => return (error::FENCED_INSTANCE_ID, false),
                None => return (error::UNKNOWN_MEMBER_ID, false),
            },
            None => member_id.to_string(),
        };
        if self.pending.remove(&id).is_some() {
            return (error::NONE, false);
        }
        if !self.members.contains_key(&id) {
            return (error::UNKNOWN_MEMBER_ID, false);
        }
        self.remove_member(&id);
        self.after_removal(initial_delay, now);
        (error::NONE, true)
    }

    fn after_removal(&mut self, initial_delay: Duration, now: Instant) {
        match self.state {
            ClassicState::Stable | ClassicState::CompletingRebalance => {
                if self.members.is_empty() {
                    self.generation += 1;
                    self.state = ClassicState::Empty;
                    self.protocol_name = None;
                    self.leader = None;
                } else {
                    self.prepare_rebalance(initial_delay, now);
                }
            }
            ClassicState::PreparingRebalance => {
                if self.members.is_empty() {
                    self.complete_join(now);
                } else {
                    self.maybe_complete_join(now);
                }
            }
            ClassicState::Empty => {}
        }
    }

    /// Timer work: expired sessions, rebalance and sync deadlines. Returns true if the group changed in
    /// a way worth persisting.
    pub fn tick(&mut self, group_id: &str, now: Instant) -> bool {
        self.pending.retain(|_, deadline| *deadline > now);
        let mut changed = false;
        // Kafka's heartbeat purgatory runs in every state: a member waiting in JoinGroup or SyncGroup
        // has a satisfied heartbeat (the rebalance and sync deadlines govern it); any other member
        // whose session ran out is removed, also while a rebalance waits for it to rejoin
        // (ClassicGroupMember.hasSatisfiedHeartbeat).
        let expired = self.remove_members_where(|m| {
            m.join_waiter.is_none()
                && m.sync_waiter.is_none()
                && now > m.last_seen + m.session_timeout
        });
        for id in &expired {
            tracing::info!(group = group_id, member = %id, "member session expired");
        }
        changed |= !expired.is_empty();
        if changed {
            self.after_removal(Duration::ZERO, now);
        }
        match self.state {
            ClassicState::PreparingRebalance => changed |= self.maybe_complete_join(now),
            ClassicState::CompletingRebalance if self.sync_deadline.is_some_and(|t| now >= t) => {
                // The leader never sent the assignment: drop those who have not synced, start over.
                tracing::info!(group = group_id, "sync timed out; rebalancing");
                self.remove_members_where(|m| m.sync_waiter.is_none());
                self.after_removal(Duration::ZERO, now);
                changed = true;
            }
            _ => {}
        }
        changed && matches!(self.state, ClassicState::Stable | ClassicState::Empty)
    }

    /// Topics in the members' consumer-protocol subscriptions.
    pub fn subscribed_topics(&self) -> Vec<String> {
        use kafka_protocol::messages::ConsumerProtocolSubscription;
        use kafka_protocol::protocol::Decodable;
        let Some(protocol) = &self.protocol_name else {
            return Vec::new();
        };
        let mut topics = Vec::new();
        for m in self.members.values() {
            let mut meta = m.metadata_for(protocol);
            if meta.len() < 2 {
                continue;
            }
            let version = i16::from_be_bytes([meta[0], meta[1]]);
            bytes::Buf::advance(&mut meta, 2);
            if let Ok(sub) = ConsumerProtocolSubscription::decode(&mut meta, version.clamp(0, 3)) {
                topics.extend(sub.topics.iter().map(|t| t.to_string()));
            }
        }
        topics.sort();
        topics.dedup();
        topics
    }

    /// DescribeGroups' view of the group, as Kafka's GroupMetadataManager.describeGroups: the chosen
    /// protocol and each member's metadata and assignment only while Stable (members are otherwise
    /// described without metadata); members sorted by id.
    pub fn describe(&self) -> ClassicDescription {
        let stable = self.state == ClassicState::Stable;
        let protocol = self.protocol_name.clone().unwrap_or_default();
        let mut members: Vec<&Member> = self.members.values().collect();
        members.sort_by(|a, b| a.id.cmp(&b.id));
        ClassicDescription {
            state: self.state.name(),
            protocol_type: self.protocol_type.clone().unwrap_or_default(),
            protocol_data: if stable {
                protocol.clone()
            } else {
                String::new()
            },
            members: members
                .into_iter()
                .map(|m| ClassicMemberDescription {
                    member_id: m.id.clone(),
                    instance_id: m.instance_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    metadata: if stable {
                        m.metadata_for(&protocol)
                    } else {
                        Bytes::new()
                    },
                    assignment: if stable {
                        m.assignment.clone()
                    } else {
                        Bytes::new()
                    },
                })
                .collect(),
        }
    }

    // ---- persistence ----------------------------------------------------------------------------

    pub fn persist(&self) -> PersistedClassic {
        let mut members: Vec<&Member> = self.members.values().collect();
        members.sort_by_key(|m| m.join_seq);
        PersistedClassic {
            // A group caught mid-rebalance is saved as of its last completed generation's members.
            generation: self.generation,
            protocol_type: self.protocol_type.clone(),
            protocol_name: self.protocol_name.clone(),
            leader: self.leader.clone(),
            stable: self.state == ClassicState::Stable,
            empty_since_ms: self.empty_since_ms,
            members: members
                .into_iter()
                .map(|m| PersistedMember {
                    id: m.id.clone(),
                    instance_id: m.instance_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    session_timeout_ms: m.session_timeout.as_millis() as u64,
                    rebalance_timeout_ms: m.rebalance_timeout.as_millis() as u64,
                    protocol_type: m.protocol_type.clone(),
                    protocols: m.protocols.clone(),
                    assignment: m.assignment.clone(),
                })
                .collect(),
        }
    }

    /// Back from the metadata store: members get a fresh session (from `now`) to come back and
    /// heartbeat.
    pub fn restore(p: PersistedClassic, now: Instant) -> ClassicGroup {
        let mut g = ClassicGroup {
            generation: p.generation,
            protocol_type: p.protocol_type,
            protocol_name: p.protocol_name,
            leader: p.leader,
            empty_since_ms: p.empty_since_ms,
            ..Default::default()
        };
        for (seq, m) in p.members.into_iter().enumerate() {
            if let Some(instance) = &m.instance_id {
                g.static_members.insert(instance.clone(), m.id.clone());
            }
            g.members.insert(
                m.id.clone(),
                Member {
                    id: m.id,
                    instance_id: m.instance_id,
                    client_id: m.client_id,
                    client_host: m.client_host,
                    session_timeout: Duration::from_millis(m.session_timeout_ms),
                    rebalance_timeout: Duration::from_millis(m.rebalance_timeout_ms),
                    protocol_type: m.protocol_type,
                    protocols: m.protocols,
                    assignment: m.assignment,
                    join_waiter: None,
                    sync_waiter: None,
                    last_seen: now,
                    join_seq: seq as u64,
                },
            );
        }
        g.next_seq = g.members.len() as u64;
        g.state = if g.members.is_empty() {
            ClassicState::Empty
        } else if p.stable {
            ClassicState::Stable
        } else {
            // Restored mid-rebalance: everyone rejoins.
            g.prepare_rebalance(Duration::ZERO, now);
            ClassicState::PreparingRebalance
        };
        g
    }
}

#[derive(Serialize, Deserialize)]
pub struct PersistedClassic {
    generation: i32,
    protocol_type: Option<String>,
    protocol_name: Option<String>,
    leader: Option<String>,
    stable: bool,
    #[serde(default)]
    empty_since_ms: Option<i64>,
    members: Vec<PersistedMember>,
}

#[derive(Serialize, Deserialize)]
struct PersistedMember {
    id: String,
    instance_id: Option<String>,
    client_id: String,
    client_host: String,
    session_timeout_ms: u64,
    rebalance_timeout_ms: u64,
    protocol_type: String,
    protocols: Vec<Protocol>,
    #[serde(with = "super::hex_bytes")]
    assignment: Bytes,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(member: &str, instance: Option<&str>, protocols: &[&str]) -> JoinRequest {
        JoinRequest {
            member_id: member.to_string(),
            instance_id: instance.map(String::from),
            client_id: "c".into(),
            client_host: "/127.0.0.1".into(),
            session_timeout: Duration::from_secs(10),
            rebalance_timeout: Duration::from_secs(30),
            protocol_type: "consumer".into(),
            protocols: protocols
                .iter()
                .map(|p| Protocol {
                    name: p.to_string(),
                    metadata: Bytes::from(p.to_string()),
                })
                .collect(),
            require_known_member_id: true,
        }
    }

    fn sync(
        g: &mut ClassicGroup,
        member: &str,
        instance: Option<&str>,
        generation: i32,
        protocol: Option<(&str, &str)>,
        assignments: Vec<(String, Bytes)>,
        now: Instant,
    ) -> (Reply<SyncResult>, bool) {
        let req = SyncRequest {
            member_id: member.into(),
            instance_id: instance.map(String::from),
            generation,
            protocol_type: protocol.map(|p| p.0.into()),
            protocol_name: protocol.map(|p| p.1.into()),
            assignments: assignments
                .into_iter()
                .map(|(member_id, assignment)| MemberAssignment {
                    member_id,
                    assignment,
                })
                .collect(),
        };
        g.sync(req, now)
    }

    fn now_result<T>(p: Reply<T>) -> T {
        match p {
            Reply::Now(t) => t,
            Reply::Later(_) => panic!("expected an immediate answer"),
        }
    }

    fn waited<T>(p: Reply<T>) -> oneshot::Receiver<T> {
        match p {
            Reply::Later(rx) => rx,
            Reply::Now(_) => panic!("expected to wait"),
        }
    }

    /// Two dynamic members: MEMBER_ID_REQUIRED, one generation, the protocol both support with the
    /// most votes, the leader's assignment passed through, then a leave rebalancing the other.
    #[test]
    fn two_members_rebalance_and_leave() {
        let mut g = ClassicGroup::default();
        let t = Instant::now();
        let d = Duration::ZERO;
        let a = now_result(g.join("g", req("", None, &["range", "roundrobin"]), d, t));
        assert_eq!(a.error, error::MEMBER_ID_REQUIRED);
        let b = now_result(g.join("g", req("", None, &["roundrobin", "range"]), d, t));
        let mut ra = waited(g.join("g", req(&a.member_id, None, &["range", "roundrobin"]), d, t));
        // b is still pending (it got its id but has not come back): the join waits for it.
        assert!(ra.try_recv().is_err());
        let mut rb = waited(g.join("g", req(&b.member_id, None, &["roundrobin", "range"]), d, t));
        let (ja, jb) = (ra.try_recv().unwrap(), rb.try_recv().unwrap());
        assert_eq!((ja.generation, jb.generation), (1, 1));
        assert_eq!(
            ja.protocol_name.as_deref(),
            Some("range"),
            "tie goes to the first member's first choice"
        );
        assert_eq!(ja.leader, a.member_id);
        assert_eq!(ja.members.len(), 2);
        assert!(jb.members.is_empty());
        let (pb, _) = sync(&mut g, &b.member_id, None, 1, None, vec![], t);
        let mut sb = waited(pb);
        let assignments = vec![
            (a.member_id.clone(), Bytes::from_static(b"A")),
            (b.member_id.clone(), Bytes::from_static(b"B")),
        ];
        let (pa, completed) = sync(
            &mut g,
            &a.member_id,
            None,
            1,
            Some(("consumer", "range")),
            assignments,
            t,
        );
        assert!(completed);
        assert_eq!(
            waited(pa).try_recv().unwrap().assignment,
            Bytes::from_static(b"A")
        );
        assert_eq!(sb.try_recv().unwrap().assignment, Bytes::from_static(b"B"));
        assert_eq!(g.state, ClassicState::Stable);
        assert_eq!(g.heartbeat(&b.member_id, None, 1, t), error::NONE);
        assert_eq!(
            g.heartbeat(&b.member_id, None, 0, t),
            error::ILLEGAL_GENERATION
        );
        assert_eq!(g.heartbeat("nobody", None, 1, t), error::UNKNOWN_MEMBER_ID);
        assert_eq!(g.leave(&a.member_id, None, d, t), (error::NONE, true));
        assert_eq!(g.state, ClassicState::PreparingRebalance);
        assert_eq!(
            g.heartbeat(&b.member_id, None, 1, t),
            error::REBALANCE_IN_PROGRESS
        );
        let mut rb = waited(g.join("g", req(&b.member_id, None, &["roundrobin", "range"]), d, t));
        let jb = rb.try_recv().unwrap();
        assert_eq!(
            (jb.generation, jb.leader.as_str()),
            (2, b.member_id.as_str())
        );
    }

    /// KIP-345: a static member restarting (new member id, same instance id) gets its assignment back
    /// without a rebalance; the old member id is fenced.
    #[test]
    fn static_member_rejoins_without_rebalance() {
        let mut g = ClassicGroup::default();
        let t = Instant::now();
        let d = Duration::ZERO;
        // i1 joins alone (static members skip MEMBER_ID_REQUIRED) and settles generation 1.
        let j1 = waited(g.join("g", req("", Some("i1"), &["range"]), d, t))
            .try_recv()
            .unwrap();
        let _ = sync(&mut g, &j1.member_id, Some("i1"), 1, None, vec![], t);
        assert_eq!(g.state, ClassicState::Stable);
        // i2 joins: i1 must rejoin, generation 2, leader i1 assigns.
        let mut r2 = waited(g.join("g", req("", Some("i2"), &["range"]), d, t));
        let mut r1 = waited(g.join("g", req(&j1.member_id, Some("i1"), &["range"]), d, t));
        let (j1, j2) = (r1.try_recv().unwrap(), r2.try_recv().unwrap());
        assert_eq!(
            (j1.generation, j2.generation, j1.leader.as_str()),
            (2, 2, j1.member_id.as_str())
        );
        let assignments = vec![
            (j1.member_id.clone(), Bytes::from_static(b"one")),
            (j2.member_id.clone(), Bytes::from_static(b"two")),
        ];
        let (_, completed) = sync(&mut g, &j1.member_id, Some("i1"), 2, None, assignments, t);
        assert!(completed && g.state == ClassicState::Stable);
        // i2 restarts: unknown member id, same instance id.
        let j = now_result(g.join("g", req("", Some("i2"), &["range"]), d, t));
        assert_eq!(
            (j.error, j.generation),
            (error::NONE, 2),
            "no new generation"
        );
        assert_eq!(g.state, ClassicState::Stable);
        assert_ne!(j.member_id, j2.member_id);
        assert_eq!(
            g.members[&j.member_id].assignment,
            Bytes::from_static(b"two"),
            "assignment kept"
        );
        assert_eq!(
            g.heartbeat(&j2.member_id, Some("i2"), 2, t),
            error::FENCED_INSTANCE_ID
        );
        assert_eq!(g.heartbeat(&j.member_id, Some("i2"), 2, t), error::NONE);
        assert_eq!(
            g.heartbeat(&j1.member_id, Some("i1"), 2, t),
            error::NONE,
            "the others were not disturbed"
        );
    }

    /// Issue 16.3: a member that stops heartbeating (no LeaveGroup) while another one joins is removed
    /// when its session expires, not at the rebalance deadline: Kafka's heartbeat purgatory keeps
    /// running during PreparingRebalance, and a member not waiting in JoinGroup has no satisfied
    /// heartbeat there.
    #[test]
    fn a_vanished_member_expires_during_a_pending_rebalance() {
        let mut g = ClassicGroup::default();
        let t = Instant::now();
        let d = Duration::ZERO;
        let j = waited(g.join("g", req("", Some("a"), &["range"]), d, t))
            .try_recv()
            .unwrap();
        let _ = sync(&mut g, &j.member_id, None, 1, None, vec![], t);
        assert_eq!(g.state, ClassicState::Stable);
        // b joins (session 10 s, rebalance 30 s): the group waits for a to rejoin; a never does.
        let mut rb = waited(g.join("g", req("", Some("b"), &["range"]), d, t));
        assert_eq!(g.state, ClassicState::PreparingRebalance);
        let soon = t + Duration::from_secs(5);
        assert_eq!(
            g.heartbeat(&j.member_id, None, 1, soon),
            error::REBALANCE_IN_PROGRESS
        );
        assert!(
            !g.tick("g", t + Duration::from_secs(14)),
            "a's session still runs"
        );
        assert!(g.members.contains_key(&j.member_id));
        g.tick("g", t + Duration::from_secs(16));
        assert!(
            !g.members.contains_key(&j.member_id),
            "a expired with its session"
        );
        let jb = rb.try_recv().expect("b's join completed without a");
        assert_eq!(
            (jb.error, jb.generation, g.members.len()),
            (error::NONE, 2, 1)
        );
        assert_eq!(g.state, ClassicState::CompletingRebalance);
        // b, waiting in JoinGroup all along, was never at risk of expiring.
    }

    #[test]
    fn expired_sessions_trigger_a_rebalance() {
        let mut g = ClassicGroup::default();
        let t = Instant::now();
        let mut r = waited(g.join("g", req("", Some("only"), &["range"]), Duration::ZERO, t));
        let j = r.try_recv().unwrap();
        let mine = vec![(j.member_id.clone(), Bytes::from_static(b"x"))];
        let _ = sync(&mut g, &j.member_id, None, j.generation, None, mine, t);
        assert_eq!(g.state, ClassicState::Stable);
        assert!(!g.tick("g", t + Duration::from_secs(5)));
        assert!(
            g.tick("g", t + Duration::from_secs(11)),
            "expiry is worth persisting"
        );
        assert_eq!(g.state, ClassicState::Empty);
        assert!(g.members.is_empty());
    }

    /// group.max.size (Kafka's acceptJoiningMember): past the limit a new member is refused, a
    /// member already in is not.
    #[test]
    fn classic_group_max_size() {
        let mut g = ClassicGroup::default();
        let t = Instant::now();
        assert!(
            g.accept_joining_member("", 1, t),
            "an Empty group takes anyone"
        );
        let j = waited(g.join("g", req("", Some("a"), &["range"]), Duration::ZERO, t))
            .try_recv()
            .unwrap();
        let _ = sync(&mut g, &j.member_id, None, 1, None, vec![], t);
        assert_eq!(g.state, ClassicState::Stable);
        assert!(!g.accept_joining_member("", 1, t), "full");
        assert!(
            g.accept_joining_member(&j.member_id, 1, t),
            "a member already in"
        );
        assert!(g.accept_joining_member("", 2, t));
    }

    /// DescribeGroups (Kafka's GroupMetadataManager.describeGroups): the protocol, the members'
    /// metadata for it and their assignments only once the group is Stable.
    #[test]
    fn described_with_metadata_only_when_stable() {
        let mut g = ClassicGroup::default();
        let t = Instant::now();
        let j = waited(g.join(
            "g",
            req("", Some("a"), &["range", "roundrobin"]),
            Duration::ZERO,
            t,
        ))
        .try_recv()
        .unwrap();
        let d = g.describe();
        assert_eq!(
            (d.state, d.protocol_type.as_str()),
            ("CompletingRebalance", "consumer")
        );
        assert_eq!(d.protocol_data, "", "not Stable yet");
        assert_eq!(d.members.len(), 1);
        assert_eq!(
            (d.members[0].metadata.len(), d.members[0].assignment.len()),
            (0, 0)
        );
        let mine = vec![(j.member_id.clone(), Bytes::from_static(b"x"))];
        let _ = sync(&mut g, &j.member_id, None, 1, None, mine, t);
        let d = g.describe();
        assert_eq!((d.state, d.protocol_data.as_str()), ("Stable", "range"));
        let m = &d.members[0];
        assert_eq!(m.member_id, j.member_id);
        assert_eq!(m.instance_id.as_deref(), Some("a"));
        assert_eq!(
            m.metadata,
            Bytes::from_static(b"range"),
            "the chosen protocol's"
        );
        assert_eq!(m.assignment, Bytes::from_static(b"x"));
    }

    /// Kafka's ClassicGroup.validateOffsetCommit, state by state.
    #[test]
    fn offset_commit_validation() {
        let mut g = ClassicGroup::default();
        let t = Instant::now();
        assert_eq!(
            g.validate_offset_commit("", None, -1),
            Ok(()),
            "admin, Empty"
        );
        assert_eq!(
            g.validate_offset_commit("x", None, 0),
            Err(error::UNKNOWN_MEMBER_ID)
        );
        let j = waited(g.join("g", req("", Some("a"), &["range"]), Duration::ZERO, t))
            .try_recv()
            .unwrap();
        assert_eq!(g.state, ClassicState::CompletingRebalance);
        assert_eq!(
            g.validate_offset_commit(&j.member_id, None, 1),
            Err(error::REBALANCE_IN_PROGRESS)
        );
        let _ = sync(&mut g, &j.member_id, None, 1, None, vec![], t);
        assert_eq!(g.validate_offset_commit(&j.member_id, None, 1), Ok(()));
        assert_eq!(
            g.validate_offset_commit("", None, -1),
            Err(error::UNKNOWN_MEMBER_ID),
            "admin commits only to an Empty group"
        );
        // b joins: PreparingRebalance still takes a's current generation.
        let _rb = waited(g.join("g", req("", Some("b"), &["range"]), Duration::ZERO, t));
        assert_eq!(g.state, ClassicState::PreparingRebalance);
        assert_eq!(g.validate_offset_commit(&j.member_id, None, 1), Ok(()));
        assert_eq!(
            g.validate_offset_commit(&j.member_id, None, 0),
            Err(error::ILLEGAL_GENERATION)
        );
        assert_eq!(
            g.validate_offset_commit(&j.member_id, Some("other"), 1),
            Err(error::UNKNOWN_MEMBER_ID)
        );
    }
}
