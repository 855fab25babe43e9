//! What the coordinator hands out and takes in: plain structs describing a group, its members and
//! its committed offsets. A handler sees only these (never a group's state machine or a lock);
//! each is a copy taken under the group's lock, so it stays true to one moment of the group.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use streamhouse_storage::OffsetRecord;
use tokio::sync::oneshot;
use uuid::Uuid;

// ---- committed offsets ----------------------------------------------------------------------

/// A partition of a topic, as committed offsets are keyed (ordered by topic, then partition).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TopicPartition {
    pub topic: String,
    pub partition: i32,
}

impl TopicPartition {
    pub fn new(topic: impl Into<String>, partition: i32) -> TopicPartition {
        TopicPartition {
            topic: topic.into(),
            partition,
        }
    }
}

/// A committed offset: the one shape it has from the commit to the metadata store and back (the
/// store's row is `OffsetRecord`; `to_record` and `from_record` are the only conversions).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommittedOffset {
    pub offset: i64,
    pub leader_epoch: i32,
    /// The client's metadata string, returned by OffsetFetch exactly as committed (null stays null).
    pub metadata: Option<String>,
    /// Wall-clock ms of the commit (offset expiry may count from it).
    pub commit_ms: i64,
}

impl CommittedOffset {
    /// The metadata store's row for this offset of `group_id` at `at`.
    pub fn to_record(&self, group_id: &str, at: &TopicPartition) -> OffsetRecord {
        OffsetRecord {
            group_id: group_id.to_string(),
            topic: at.topic.clone(),
            partition: at.partition,
            offset: self.offset,
            leader_epoch: self.leader_epoch,
            metadata: self.metadata.clone(),
            commit_ms: self.commit_ms,
        }
    }

    /// A row of the metadata store: where the offset is, and what it is.
    pub fn from_record(r: OffsetRecord) -> (TopicPartition, CommittedOffset) {
        (
            TopicPartition::new(r.topic, r.partition),
            CommittedOffset {
                offset: r.offset,
                leader_epoch: r.leader_epoch,
                metadata: r.metadata,
                commit_ms: r.commit_ms,
            },
        )
    }
}

/// Partitions of one topic, as OffsetFetch and OffsetDelete name them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicPartitions {
    pub topic: String,
    pub partitions: Vec<i32>,
}

/// One partition of an OffsetCommit, as the client sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionCommit {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: Option<String>,
}

/// An OffsetCommit as the coordinator needs it.
#[derive(Debug, Clone)]
pub struct CommitRequest {
    pub group_id: String,
    pub member_id: String,
    pub instance_id: Option<String>,
    pub generation_or_epoch: i32,
    pub api_version: i16,
    pub offsets: Vec<PartitionCommit>,
}

/// The answer to an OffsetCommit: at once (refused, or nothing to write), or once written. The
/// codes are one per partition, in request order.
pub enum CommitReply {
    Done(Result<Vec<i16>, i16>),
    Written(Vec<i16>, oneshot::Receiver<bool>),
}

/// OffsetFetch's answer for one group: its error code and its offsets by topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupOffsets {
    pub error: i16,
    pub topics: Vec<TopicOffsets>,
}

/// A group's committed offsets of one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicOffsets {
    pub topic: String,
    pub partitions: Vec<PartitionOffset>,
}

/// A partition and its committed offset (`None`: nothing committed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionOffset {
    pub partition: i32,
    pub committed: Option<CommittedOffset>,
}

/// Per-partition error codes of one topic (OffsetDelete).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicErrors {
    pub topic: String,
    pub partitions: Vec<PartitionError>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionError {
    pub partition: i32,
    pub error: i16,
}

/// An accepted OffsetDelete: each partition's code, and, when something is deleted, the receiver
/// that answers once the deletion is applied.
pub struct OffsetDeletion {
    pub topics: Vec<TopicErrors>,
    pub written: Option<oneshot::Receiver<bool>>,
}

// ---- groups ---------------------------------------------------------------------------------

/// A group as ListGroups shows it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct GroupListing {
    pub group_id: String,
    pub protocol_type: String,
    /// Kafka's state name (`Empty`, `Stable`, ...).
    pub state: &'static str,
    /// `classic` or `consumer` (KIP-848).
    pub group_type: &'static str,
}

/// A lookup of one kind of group: found, there but of the other protocol, or not there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Described<T> {
    Found(T),
    OtherProtocol,
    Missing,
}

/// A classic group as DescribeGroups shows it (Kafka's ClassicGroup.asDescribedGroup).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassicDescription {
    pub state: &'static str,
    pub protocol_type: String,
    /// The chosen protocol; empty unless the group is Stable.
    pub protocol_data: String,
    /// Sorted by member id.
    pub members: Vec<ClassicMemberDescription>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassicMemberDescription {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    /// The member's metadata for the chosen protocol; empty unless the group is Stable.
    pub metadata: Bytes,
    /// Empty unless the group is Stable.
    pub assignment: Bytes,
}

/// A KIP-848 group as ConsumerGroupDescribe shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerDescription {
    pub state: &'static str,
    pub group_epoch: i32,
    pub assignment_epoch: i32,
    pub assignor_name: String,
    /// Sorted by member id.
    pub members: Vec<ConsumerMemberDescription>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerMemberDescription {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub rack_id: Option<String>,
    pub member_epoch: i32,
    pub client_id: String,
    pub client_host: String,
    pub subscribed_topic_names: Vec<String>,
    pub subscribed_topic_regex: Option<String>,
    /// What the member holds now.
    pub assignment: Vec<AssignedTopic>,
    /// What it is headed for (the target of the group's assignment epoch).
    pub target_assignment: Vec<AssignedTopic>,
}

/// Partitions of one topic in an assignment; the name is empty if the topic is gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssignedTopic {
    pub topic_id: Uuid,
    pub topic_name: String,
    pub partitions: Vec<i32>,
}

/// A member leaving a classic group (LeaveGroup), by member id or by instance id (KIP-345).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeavingMember {
    pub member_id: String,
    pub instance_id: Option<String>,
}
