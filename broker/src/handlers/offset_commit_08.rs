//! OffsetCommit (key 8), versions 2-9.
//! v2: retention time. v3: throttle time. v5: no retention time. v6: committed leader epoch.
//! v7: group.instance.id. v8: flexible. v9: KIP-848 member epochs (generation_id_or_member_epoch).
//! Validation follows Kafka's OffsetMetadataManager and the group's own rule, next to its state
//! machine (`ClassicGroup::validate_offset_commit`, `ConsumerGroup::validate_offset_commit`).
//!
//! Order: the commit is validated and queued for the coordinator's writer here, in the in-order
//! part that the connection awaits in read order, and only the wait for it to be durable is left to
//! the future. So pipelined commits (librdkafka's asynchronous ones) take effect in request order
//! and the last one wins, as in Kafka, and a commit is judged against the group as it was when the
//! commit arrived, not as it is after the requests behind it (a LeaveGroup, a JoinGroup) ran.

use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::{ApiKey, OffsetCommitRequest, OffsetCommitResponse, RequestHeader};
use std::sync::Arc;

use super::{ApiSpec, Reply};
use crate::group::{CommitReply, CommitRequest, PartitionCommit};
use crate::{error, Broker};

pub const API: ApiSpec = ApiSpec {
    key: ApiKey::OffsetCommit,
    min: 2,
    max: 9,
};

pub fn handle(
    broker: &Arc<Broker>,
    header: &RequestHeader,
    req: OffsetCommitRequest,
) -> Reply<OffsetCommitResponse> {
    let offsets = req
        .topics
        .iter()
        .flat_map(|t| {
            t.partitions.iter().map(move |p| PartitionCommit {
                topic: t.name.to_string(),
                partition: p.partition_index,
                offset: p.committed_offset,
                leader_epoch: p.committed_leader_epoch,
                metadata: p.committed_metadata.as_ref().map(|m| m.to_string()),
            })
        })
        .collect();
    let commit = CommitRequest {
        group_id: req.group_id.to_string(),
        member_id: req.member_id.to_string(),
        instance_id: req.group_instance_id.as_ref().map(|s| s.to_string()),
        generation_or_epoch: req.generation_id_or_member_epoch,
        api_version: header.request_api_version,
        offsets,
    };
    match broker.groups.commit_offsets(commit) {
        CommitReply::Done(codes) => Reply::Now(response(&req, codes)),
        CommitReply::Written(codes, written) => Reply::Later(Box::pin(async move {
            let codes = match written.await {
                Ok(true) => Ok(codes),
                _ => Err(error::COORDINATOR_NOT_AVAILABLE),
            };
            response(&req, codes)
        })),
    }
}

/// One code per partition in request order, or the same code for all.
fn response(req: &OffsetCommitRequest, codes: Result<Vec<i16>, i16>) -> OffsetCommitResponse {
    let mut each = match &codes {
        Ok(c) => c.clone().into_iter(),
        Err(_) => Vec::new().into_iter(),
    };
    let topics = req
        .topics
        .iter()
        .map(|t| {
            let partitions = t
                .partitions
                .iter()
                .map(|p| {
                    let code = match codes {
                        Ok(_) => each.next().unwrap_or(error::UNKNOWN_SERVER_ERROR),
                        Err(code) => code,
                    };
                    OffsetCommitResponsePartition::default()
                        .with_partition_index(p.partition_index)
                        .with_error_code(code)
                })
                .collect();
            OffsetCommitResponseTopic::default()
                .with_name(t.name.clone())
                .with_partitions(partitions)
        })
        .collect();
    OffsetCommitResponse::default().with_topics(topics)
}
