//! OffsetFetch (key 9), versions 1-9.
//! v2: all partitions of the group with null topics; top-level error code. v3: throttle time.
//! v5: committed leader epoch. v6: flexible. v7: require_stable. v8: several groups in one request
//! (KIP-709). v9: member id and epoch for KIP-848 groups.
//! With require_stable (KIP-447), a partition with offsets committed in a transaction not ended yet
//! answers UNSTABLE_OFFSET_COMMIT (retriable), as Kafka's fetchOffsets(requireStable).
//! The committed metadata string comes back exactly as committed; an uncommitted partition is -1.
//! While commits are queued for the coordinator's writer, the answer waits until they are applied,
//! so a fetch pipelined behind commits on the same connection sees them (Kafka reads a connection's
//! requests one at a time).

use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
    OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::{
    ApiKey, OffsetFetchRequest, OffsetFetchResponse, RequestHeader, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use std::sync::Arc;

use super::{str_bytes, ApiSpec, Reply};
use crate::group::{CommittedOffset, TopicPartitions};
use crate::{error, Broker};

pub const API: ApiSpec = ApiSpec {
    key: ApiKey::OffsetFetch,
    min: 1,
    max: 9,
};

/// (offset, leader epoch, metadata) on the wire; an uncommitted partition is -1 with "".
fn value(o: &Option<CommittedOffset>) -> (i64, i32, Option<StrBytes>) {
    match o {
        Some(o) => (
            o.offset,
            o.leader_epoch,
            Some(str_bytes(o.metadata.as_deref().unwrap_or(""))),
        ),
        None => (-1, -1, Some(StrBytes::from_static_str(""))),
    }
}

pub fn handle(
    broker: &Arc<Broker>,
    header: &RequestHeader,
    req: OffsetFetchRequest,
) -> Reply<OffsetFetchResponse> {
    let version = header.request_api_version;
    if broker.groups.writes_applied() {
        return Reply::Now(answer(broker, version, req));
    }
    let applied = broker.groups.barrier();
    let broker = broker.clone();
    Reply::Later(Box::pin(async move {
        let _ = applied.await;
        answer(&broker, version, req)
    }))
}

/// The group's partitions with transactional offsets pending, when the request asks for stable ones.
fn unstable(
    broker: &Broker,
    require_stable: bool,
    group: &str,
) -> std::collections::HashSet<(String, i32)> {
    if require_stable {
        broker.txns.unstable_offsets(group)
    } else {
        Default::default()
    }
}

fn wanted<'a>(topics: impl Iterator<Item = (&'a TopicName, &'a Vec<i32>)>) -> Vec<TopicPartitions> {
    topics
        .map(|(name, partitions)| TopicPartitions {
            topic: name.to_string(),
            partitions: partitions.clone(),
        })
        .collect()
}

fn answer(broker: &Broker, version: i16, req: OffsetFetchRequest) -> OffsetFetchResponse {
    let groups = &broker.groups;
    if version >= 8 {
        let out = req
            .groups
            .iter()
            .map(|g| {
                let asked = g
                    .topics
                    .as_ref()
                    .map(|ts| wanted(ts.iter().map(|t| (&t.name, &t.partition_indexes))));
                let found = groups.fetch_offsets(&g.group_id, asked);
                let unstable = unstable(broker, req.require_stable, &g.group_id);
                let topics = found
                    .topics
                    .into_iter()
                    .map(|t| {
                        let partitions = t
                            .partitions
                            .iter()
                            .map(|p| {
                                let r = OffsetFetchResponsePartitions::default()
                                    .with_partition_index(p.partition);
                                if unstable.contains(&(t.topic.clone(), p.partition)) {
                                    return r
                                        .with_committed_offset(-1)
                                        .with_committed_leader_epoch(-1)
                                        .with_error_code(error::UNSTABLE_OFFSET_COMMIT);
                                }
                                let (offset, epoch, meta) = value(&p.committed);
                                r.with_committed_offset(offset)
                                    .with_committed_leader_epoch(epoch)
                                    .with_metadata(meta)
                            })
                            .collect();
                        OffsetFetchResponseTopics::default()
                            .with_name(TopicName(str_bytes(&t.topic)))
                            .with_partitions(partitions)
                    })
                    .collect();
                OffsetFetchResponseGroup::default()
                    .with_group_id(g.group_id.clone())
                    .with_topics(topics)
                    .with_error_code(found.error)
            })
            .collect();
        return OffsetFetchResponse::default().with_groups(out);
    }
    // v1 has no way to ask for "all": topics are always listed.
    let asked = req
        .topics
        .as_ref()
        .map(|ts| wanted(ts.iter().map(|t| (&t.name, &t.partition_indexes))));
    let found = groups.fetch_offsets(&req.group_id, asked);
    let unstable = unstable(broker, version >= 7 && req.require_stable, &req.group_id);
    let topics = found
        .topics
        .into_iter()
        .map(|t| {
            let partitions = t
                .partitions
                .iter()
                .map(|p| {
                    let r =
                        OffsetFetchResponsePartition::default().with_partition_index(p.partition);
                    if unstable.contains(&(t.topic.clone(), p.partition)) {
                        return r
                            .with_committed_offset(-1)
                            .with_committed_leader_epoch(-1)
                            .with_error_code(error::UNSTABLE_OFFSET_COMMIT);
                    }
                    let (offset, epoch, meta) = value(&p.committed);
                    r.with_committed_offset(offset)
                        .with_committed_leader_epoch(epoch)
                        .with_metadata(meta)
                })
                .collect();
            OffsetFetchResponseTopic::default()
                .with_name(TopicName(str_bytes(&t.topic)))
                .with_partitions(partitions)
        })
        .collect();
    // The top-level error code came with v2.
    OffsetFetchResponse::default()
        .with_topics(topics)
        .with_error_code(if version >= 2 {
            found.error
        } else {
            error::NONE
        })
}
