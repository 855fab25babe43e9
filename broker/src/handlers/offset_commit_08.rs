//! OffsetCommit (key 8), versions 2-9.
//! v2: retention time. v3: throttle time. v5: no retention time. v6: committed leader epoch.
//! v7: group.instance.id. v8: flexible. v9: KIP-848 member epochs (generation_id_or_member_epoch).
//! Validation mirrors Kafka: an admin commit (generation -1, no member) only to a group without
//! members; otherwise the member must be known and its generation (or member epoch) current.

use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::{ApiKey, OffsetCommitRequest, OffsetCommitResponse, RequestHeader};
use std::sync::Arc;

use super::{ApiSpec, Reply};
use crate::group::classic::ClassicState;
use crate::group::{Group, GroupKind};
use crate::{error, Broker};

pub const API: ApiSpec = ApiSpec {
    key: ApiKey::OffsetCommit,
    min: 2,
    max: 9,
};

pub async fn handle(
    broker: &Arc<Broker>,
    _header: &RequestHeader,
    req: OffsetCommitRequest,
) -> Reply<OffsetCommitResponse> {
    let broker = broker.clone();
    Reply::Later(Box::pin(async move {
        let offsets: Vec<(String, i32, i64, i32, Option<String>)> = req
            .topics
            .iter()
            .flat_map(|t| {
                t.partitions.iter().map(move |p| {
                    (
                        t.name.to_string(),
                        p.partition_index,
                        p.committed_offset,
                        p.committed_leader_epoch,
                        p.committed_metadata.as_ref().map(|m| m.to_string()),
                    )
                })
            })
            .collect();
        let generation = req.generation_id_or_member_epoch;
        let member = req.member_id.to_string();
        let instance = req.group_instance_id.as_ref().map(|s| s.to_string());
        let codes = if req.group_id.is_empty() {
            Err(error::INVALID_GROUP_ID)
        } else {
            broker
                .groups
                .commit_offsets(
                    &req.group_id,
                    |g| validate(g, generation, &member, instance.as_deref()),
                    offsets,
                )
                .await
        };
        let mut codes_iter = match &codes {
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
                            Ok(_) => codes_iter.next().unwrap_or(error::UNKNOWN_SERVER_ERROR),
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
    }))
}

fn validate(
    group: Option<&mut Group>,
    generation: i32,
    member: &str,
    instance: Option<&str>,
) -> Result<(), i16> {
    let admin = generation < 0 && member.is_empty();
    let Some(group) = group else {
        // A group that does not exist yet can only take an admin (or standalone consumer) commit.
        return if admin {
            Ok(())
        } else {
            Err(error::ILLEGAL_GENERATION)
        };
    };
    match &group.kind {
        GroupKind::Classic(g) => {
            if admin {
                return if g.members.is_empty() {
                    Ok(())
                } else {
                    Err(error::UNKNOWN_MEMBER_ID)
                };
            }
            g.check_member(member, instance)?;
            if generation != g.generation {
                return Err(error::ILLEGAL_GENERATION);
            }
            if g.state == ClassicState::CompletingRebalance {
                return Err(error::REBALANCE_IN_PROGRESS);
            }
            Ok(())
        }
        GroupKind::Consumer(g) => {
            if admin {
                return if g.members.is_empty() {
                    Ok(())
                } else {
                    Err(error::UNKNOWN_MEMBER_ID)
                };
            }
            g.check_commit(member, generation)
        }
    }
}
