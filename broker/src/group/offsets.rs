//! Committed offsets (Kafka's OffsetMetadataManager): OffsetCommit validated against the group as
//! it is when the commit arrives, OffsetFetch from memory behind the queued writes, OffsetDelete,
//! offsets going with their topic, and expiry after offsets.retention.minutes. Every durable change
//! is an op for the writer thread (`writer.rs`); memory changes once it is durable.

use std::collections::BTreeMap;
use tokio::sync::oneshot;

use super::classic::ClassicState;
use super::view::*;
use super::writer::Op;
use super::{now_ms, with_group, with_new_group, Group, GroupCoordinator, GroupKind};
use crate::error;

/// Offsets found expired in one group, and whether that was all of them.
struct Expiry {
    offsets: Vec<ExpiredOffset>,
    all: bool,
}

/// An offset found expired: deleted only while it is still this commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ExpiredOffset {
    pub at: TopicPartition,
    pub commit_ms: i64,
}

impl Group {
    /// Kafka's OffsetMetadataManager.cleanupExpiredOffsets with the group's
    /// offsetExpirationCondition: offsets of topics the group is subscribed to never expire; a
    /// classic group with a protocol expires the rest while Empty, counting from when it became
    /// Empty (or from the commit, if that is unknown), and, if it is a Stable consumer-protocol group,
    /// by commit time; a standalone group (no protocol) and a KIP-848 group by commit time.
    fn expired_offsets(&self, now_ms: i64, retention_ms: i64) -> Expiry {
        // What an offset's age counts from: its commit, or when the group became Empty.
        enum Since {
            Commit,
            Empty(Option<i64>),
        }
        let since = match &self.kind {
            GroupKind::Classic(c) => match (&c.protocol_type, c.state) {
                (None, _) => Since::Commit,
                (Some(_), ClassicState::Empty) => Since::Empty(c.empty_since_ms),
                (Some(t), ClassicState::Stable) if t == "consumer" => Since::Commit,
                _ => {
                    return Expiry {
                        offsets: Vec::new(),
                        all: false,
                    }
                }
            },
            GroupKind::Consumer(_) => Since::Commit,
        };
        let base = |o: &CommittedOffset| match since {
            Since::Commit => o.commit_ms,
            Since::Empty(at) => at.unwrap_or(o.commit_ms),
        };
        let subscribed = self.subscribed_topics();
        let mut offsets = Vec::new();
        let mut all = true;
        for (at, o) in &self.offsets {
            if !subscribed.contains(&at.topic) && now_ms.saturating_sub(base(o)) >= retention_ms {
                offsets.push(ExpiredOffset {
                    at: at.clone(),
                    commit_ms: o.commit_ms,
                });
            } else {
                all = false;
            }
        }
        Expiry { offsets, all }
    }

    /// The group's own rule for a commit (Kafka's validateOffsetCommit of each group type).
    fn validate_offset_commit(&self, req: &CommitRequest) -> Result<(), i16> {
        match &self.kind {
            GroupKind::Classic(c) => c.validate_offset_commit(
                &req.member_id,
                req.instance_id.as_deref(),
                req.generation_or_epoch,
            ),
            GroupKind::Consumer(c) => {
                c.validate_offset_commit(&req.member_id, req.generation_or_epoch, req.api_version)
            }
        }
    }

    /// Committed offsets: the given partitions (missing ones as `None`), or all that are committed.
    fn offsets_of(&self, wanted: Option<Vec<TopicPartitions>>) -> Vec<TopicOffsets> {
        read_offsets(&self.offsets, wanted)
    }
}

fn read_offsets(
    offsets: &BTreeMap<TopicPartition, CommittedOffset>,
    wanted: Option<Vec<TopicPartitions>>,
) -> Vec<TopicOffsets> {
    match wanted {
        Some(list) => list
            .into_iter()
            .map(|t| {
                let partitions = t
                    .partitions
                    .into_iter()
                    .map(|partition| PartitionOffset {
                        partition,
                        committed: offsets
                            .get(&TopicPartition::new(t.topic.clone(), partition))
                            .cloned(),
                    })
                    .collect();
                TopicOffsets {
                    topic: t.topic,
                    partitions,
                }
            })
            .collect(),
        None => {
            // The map is ordered by topic, then partition: one run per topic.
            let mut out: Vec<TopicOffsets> = Vec::new();
            for (at, o) in offsets {
                let found = PartitionOffset {
                    partition: at.partition,
                    committed: Some(o.clone()),
                };
                match out.last_mut() {
                    Some(t) if t.topic == at.topic => t.partitions.push(found),
                    _ => out.push(TopicOffsets {
                        topic: at.topic.clone(),
                        partitions: vec![found],
                    }),
                }
            }
            out
        }
    }
}

impl GroupCoordinator {
    /// OffsetCommit, in the request's in-order part: validated against the group as it is now
    /// (Kafka's OffsetMetadataManager.validateOffsetCommit, then the group's own rule), and queued
    /// for the writer, which applies commits in the order they were queued.
    pub fn commit_offsets(&self, req: CommitRequest) -> CommitReply {
        if req.group_id.is_empty() {
            return CommitReply::Done(Err(error::INVALID_GROUP_ID));
        }
        let commit_ms = now_ms();
        let mut codes = Vec::with_capacity(req.offsets.len());
        let mut accepted = BTreeMap::new();
        for p in &req.offsets {
            let known = self
                .storage
                .topic(&p.topic)
                .is_some_and(|t| p.partition >= 0 && (p.partition as usize) < t.partitions.len());
            let code = if !known {
                error::UNKNOWN_TOPIC_OR_PARTITION
            } else if p
                .metadata
                .as_ref()
                .is_some_and(|m| m.len() > self.config.offset_metadata_max_bytes)
            {
                // offset.metadata.max.bytes (Kafka's OffsetMetadataManager.isMetadataInvalid).
                error::OFFSET_METADATA_TOO_LARGE
            } else {
                // A partition named twice: the later one wins, as in Kafka's log of commits.
                accepted.insert(
                    TopicPartition::new(p.topic.clone(), p.partition),
                    CommittedOffset {
                        offset: p.offset,
                        leader_epoch: p.leader_epoch,
                        metadata: p.metadata.clone(),
                        commit_ms,
                    },
                );
                error::NONE
            };
            codes.push(code);
        }
        let mut queue = |g: &mut Group| -> Result<Option<oneshot::Receiver<bool>>, i16> {
            g.validate_offset_commit(&req)?;
            if accepted.is_empty() {
                return Ok(None);
            }
            // Queued under the group's lock, so the order of commits is the order of validation.
            Ok(Some(self.writer.submit(Op::Commit {
                group: req.group_id.clone(),
                offsets: std::mem::take(&mut accepted),
            })))
        };
        let queued = match with_group(&self.groups, &req.group_id, &mut queue) {
            Some(r) => r,
            None if req.generation_or_epoch < 0 => {
                // A so-called simple group, made by an admin or standalone consumer's commit.
                with_new_group(&self.groups, &req.group_id, &mut queue)
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

    /// TxnOffsetCommit's check against the group (Kafka's validateOffsetCommit with isTransactional):
    /// a request naming no member (TxnOffsetCommit before v3, or generation -1 with no member) is
    /// taken whatever the group's state; one naming a member must be that member of the current
    /// generation (classic) or epoch (KIP-848).
    pub fn validate_txn_offset_commit(
        &self,
        group_id: &str,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
    ) -> Result<(), i16> {
        let anonymous = generation < 0 && member_id.is_empty() && instance_id.is_none();
        if anonymous {
            return Ok(());
        }
        let checked = with_group(&self.groups, group_id, |g| match &g.kind {
            GroupKind::Classic(c) => {
                c.check_member(member_id, instance_id)?;
                if generation != c.generation {
                    return Err(error::ILLEGAL_GENERATION);
                }
                if c.state == ClassicState::CompletingRebalance {
                    return Err(error::REBALANCE_IN_PROGRESS);
                }
                Ok(())
            }
            GroupKind::Consumer(c) => c.validate_txn_offset_commit(member_id, generation),
        });
        checked.unwrap_or(Err(error::ILLEGAL_GENERATION))
    }

    /// A committed transaction's offsets become the group's (Kafka: the COMMIT marker in
    /// __consumer_offsets makes the pending transactional offsets visible). Answers once durable.
    pub async fn commit_transactional_offsets(
        &self,
        group_id: &str,
        offsets: BTreeMap<(String, i32), crate::txn::PendingOffset>,
    ) -> Result<(), i16> {
        let commit_ms = now_ms();
        let offsets: BTreeMap<TopicPartition, CommittedOffset> = offsets
            .into_iter()
            .map(|((topic, partition), o)| {
                (
                    TopicPartition::new(topic, partition),
                    CommittedOffset {
                        offset: o.offset,
                        leader_epoch: o.leader_epoch,
                        metadata: o.metadata,
                        commit_ms,
                    },
                )
            })
            .collect();
        if offsets.is_empty() {
            return Ok(());
        }
        let written = with_new_group(&self.groups, group_id, |_| {
            self.writer.submit(Op::Commit {
                group: group_id.to_string(),
                offsets,
            })
        });
        match written.await {
            Ok(true) => Ok(()),
            _ => Err(error::COORDINATOR_NOT_AVAILABLE),
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

    /// OffsetFetch for one group: the given partitions (missing ones as `None`), or all committed
    /// ones. An empty group id is INVALID_GROUP_ID (what was asked for is still listed, uncommitted).
    pub fn fetch_offsets(
        &self,
        group_id: &str,
        wanted: Option<Vec<TopicPartitions>>,
    ) -> GroupOffsets {
        let error = if group_id.is_empty() {
            error::INVALID_GROUP_ID
        } else {
            error::NONE
        };
        let mut wanted = Some(wanted);
        let found = with_group(&self.groups, group_id, |g| {
            wanted.take().map(|w| g.offsets_of(w))
        })
        .flatten();
        let topics = match (found, wanted) {
            (Some(f), _) => f,
            (None, Some(w)) => read_offsets(&BTreeMap::new(), w),
            (None, None) => Vec::new(),
        };
        GroupOffsets { error, topics }
    }

    /// OffsetDelete: refused per partition while members are subscribed to the topic
    /// (GROUP_SUBSCRIBED_TO_TOPIC), and for the whole group while a classic group of another
    /// protocol than "consumer" has members (Kafka's ClassicGroup.validateOffsetDelete).
    pub fn delete_offsets(
        &self,
        group_id: &str,
        topics: Vec<TopicPartitions>,
    ) -> Result<OffsetDeletion, i16> {
        with_group(&self.groups, group_id, |g| {
            if let GroupKind::Classic(c) = &g.kind {
                if !g.is_empty() && c.protocol_type.as_deref() != Some("consumer") {
                    return Err(error::NON_EMPTY_GROUP);
                }
            }
            let subscribed = g.subscribed_topics();
            let mut delete = Vec::new();
            let topics: Vec<TopicErrors> = topics
                .into_iter()
                .map(|t| {
                    let refused = subscribed.contains(&t.topic);
                    let partitions = t
                        .partitions
                        .into_iter()
                        .map(|partition| {
                            if !refused {
                                delete.push(TopicPartition::new(t.topic.clone(), partition));
                            }
                            PartitionError {
                                partition,
                                error: if refused {
                                    error::GROUP_SUBSCRIBED_TO_TOPIC
                                } else {
                                    error::NONE
                                },
                            }
                        })
                        .collect();
                    TopicErrors {
                        topic: t.topic,
                        partitions,
                    }
                })
                .collect();
            let written = (!delete.is_empty()).then(|| {
                self.writer.submit(Op::DeleteOffsets {
                    group: g.id.clone(),
                    partitions: delete,
                })
            });
            Ok(OffsetDeletion { topics, written })
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
            let expiry = g.expired_offsets(now_ms, retention_ms);
            let drop_group = expiry.all && g.is_empty();
            if expiry.offsets.is_empty() && !drop_group {
                continue;
            }
            count += expiry.offsets.len();
            tracing::info!(group = %g.id, offsets = expiry.offsets.len(), deleted = drop_group, "expiring offsets");
            self.writer.submit_quiet(Op::Expire {
                group: g.id.clone(),
                offsets: expiry.offsets,
                drop_group,
            });
        }
        count
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::coordinator;
    use super::super::{GroupConfig, JoinRequest, Protocol, Reply, SyncRequest};
    use super::*;
    use std::time::{Duration, Instant};

    fn offset(partition: i32, offset: i64) -> PartitionCommit {
        PartitionCommit {
            topic: "t".into(),
            partition,
            offset,
            leader_epoch: -1,
            metadata: None,
        }
    }

    fn request(group: &str, member: &str, generation: i32, api_version: i16) -> CommitRequest {
        CommitRequest {
            group_id: group.into(),
            member_id: member.into(),
            instance_id: None,
            generation_or_epoch: generation,
            api_version,
            offsets: vec![offset(0, 7)],
        }
    }

    async fn written(reply: CommitReply) -> Result<Vec<i16>, i16> {
        match reply {
            CommitReply::Done(r) => r,
            CommitReply::Written(codes, rx) => {
                assert!(rx.await.unwrap());
                Ok(codes)
            }
        }
    }

    async fn commit(c: &GroupCoordinator, group: &str, member: &str, generation: i32) -> i16 {
        match written(c.commit_offsets(request(group, member, generation, 8))).await {
            Ok(codes) => codes[0],
            Err(code) => code,
        }
    }

    fn wanted(partitions: &[i32]) -> Option<Vec<TopicPartitions>> {
        Some(vec![TopicPartitions {
            topic: "t".into(),
            partitions: partitions.to_vec(),
        }])
    }

    fn committed(c: &GroupCoordinator, group: &str) -> Option<i64> {
        let found = c.fetch_offsets(group, wanted(&[0]));
        found.topics[0].partitions[0]
            .committed
            .as_ref()
            .map(|o| o.offset)
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
        let committed_at = c.fetch_offsets("simple", None).topics[0].partitions[0]
            .committed
            .as_ref()
            .map(|o| o.commit_ms)
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
        let join = JoinRequest {
            member_id: String::new(),
            instance_id: Some("i".into()),
            client_id: "c".into(),
            client_host: "h".into(),
            session_timeout: Duration::from_secs(10),
            rebalance_timeout: Duration::from_secs(10),
            protocol_type: "consumer".into(),
            // ConsumerProtocolSubscription v0 for topic "t": subscribed offsets never expire.
            protocols: vec![Protocol {
                name: "range".into(),
                metadata: bytes::Bytes::from_static(&[
                    0, 0, 0, 0, 0, 1, 0, 1, b't', 255, 255, 255, 255,
                ]),
            }],
            require_known_member_id: true,
        };
        let member = match c.join("g", join) {
            Reply::Later(mut rx) => rx.try_recv().unwrap().member_id,
            Reply::Now(r) => panic!("{r:?}"),
        };
        let sync = SyncRequest {
            member_id: member.clone(),
            instance_id: None,
            generation: 1,
            protocol_type: None,
            protocol_name: None,
            assignments: vec![],
        };
        let _ = c.sync("g", sync);
        assert_eq!(commit(&c, "g", &member, 1).await, error::NONE);
        let far = now_ms() + 3_600_000;
        assert_eq!(
            c.expire_offsets(far),
            0,
            "a group with members keeps its offsets"
        );
        let leaving = LeavingMember {
            member_id: member.clone(),
            instance_id: None,
        };
        assert_eq!(c.leave("g", &[leaving]), Ok(vec![error::NONE]));
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
        assert!(matches!(
            c.commit_offsets(request("none", "m", 3, 9)),
            CommitReply::Done(Err(error::GROUP_ID_NOT_FOUND))
        ));
        assert_eq!(commit(&c, "", "", -1).await, error::INVALID_GROUP_ID);
        assert_eq!(commit(&c, "simple", "", -1).await, error::NONE);
        assert_eq!(commit(&c, "simple", "m", 1).await, error::UNKNOWN_MEMBER_ID);
    }

    /// Per partition: an unknown partition and too-large metadata are refused, the rest written;
    /// a partition named twice keeps the later offset; OffsetFetch lists what was asked for, with
    /// nothing committed as `None`, or everything committed by topic and partition.
    #[tokio::test]
    async fn commit_and_fetch_per_partition() {
        let (_dir, c) = coordinator(GroupConfig {
            offset_metadata_max_bytes: 4,
            ..Default::default()
        })
        .await;
        let mut req = request("simple", "", -1, 8);
        req.offsets = vec![
            offset(0, 1),
            offset(5, 2),
            PartitionCommit {
                metadata: Some("12345".into()),
                ..offset(1, 3)
            },
            PartitionCommit {
                metadata: Some("meta".into()),
                ..offset(0, 4)
            },
        ];
        assert_eq!(
            written(c.commit_offsets(req)).await,
            Ok(vec![
                error::NONE,
                error::UNKNOWN_TOPIC_OR_PARTITION,
                error::OFFSET_METADATA_TOO_LARGE,
                error::NONE
            ])
        );
        let asked = c.fetch_offsets("simple", wanted(&[0, 1]));
        assert_eq!(asked.error, error::NONE);
        let parts = &asked.topics[0].partitions;
        assert_eq!(parts.len(), 2);
        let p0 = parts[0].committed.as_ref().unwrap();
        assert_eq!(
            (p0.offset, p0.metadata.as_deref()),
            (4, Some("meta")),
            "the later of the two"
        );
        assert_eq!(
            parts[1],
            PartitionOffset {
                partition: 1,
                committed: None
            }
        );
        let all = c.fetch_offsets("simple", None);
        assert_eq!(all.topics.len(), 1);
        assert_eq!(all.topics[0].topic, "t");
        assert_eq!(all.topics[0].partitions.len(), 1);
        let missing = c.fetch_offsets("nobody", wanted(&[1]));
        assert_eq!(missing.topics[0].partitions[0].committed, None);
        assert_eq!(c.fetch_offsets("", None).error, error::INVALID_GROUP_ID);
    }

    /// OffsetDelete deletes the named partitions once written, and refuses an unknown group.
    #[tokio::test]
    async fn delete_offsets_of_a_simple_group() {
        let (_dir, c) = coordinator(GroupConfig::default()).await;
        assert_eq!(commit(&c, "simple", "", -1).await, error::NONE);
        assert!(matches!(
            c.delete_offsets("nobody", vec![]),
            Err(error::GROUP_ID_NOT_FOUND)
        ));
        let topics = vec![TopicPartitions {
            topic: "t".into(),
            partitions: vec![0],
        }];
        let deletion = c.delete_offsets("simple", topics).unwrap();
        assert_eq!(
            deletion.topics[0].partitions,
            vec![PartitionError {
                partition: 0,
                error: error::NONE
            }]
        );
        assert!(deletion.written.unwrap().await.unwrap());
        assert_eq!(committed(&c, "simple"), None);
    }
}
