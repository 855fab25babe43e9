//! OffsetDelete (key 47), version 0 (KIP-496). Committed offsets of a group are deleted per
//! partition, unless members are subscribed to the topic (GROUP_SUBSCRIBED_TO_TOPIC).

use kafka_protocol::messages::offset_delete_response::{
    OffsetDeleteResponsePartition, OffsetDeleteResponseTopic,
};
use kafka_protocol::messages::{
    ApiKey, OffsetDeleteRequest, OffsetDeleteResponse, RequestHeader, TopicName,
};
use std::sync::Arc;

use super::{str_bytes, ApiSpec, Reply};
use crate::group::TopicPartitions;
use crate::{error, Broker};

pub const API: ApiSpec = ApiSpec {
    key: ApiKey::OffsetDelete,
    min: 0,
    max: 0,
};

pub fn handle(
    broker: &Arc<Broker>,
    _header: &RequestHeader,
    req: OffsetDeleteRequest,
) -> Reply<OffsetDeleteResponse> {
    let topics = req
        .topics
        .iter()
        .map(|t| TopicPartitions {
            topic: t.name.to_string(),
            partitions: t.partitions.iter().map(|p| p.partition_index).collect(),
        })
        .collect();
    let deletion = match broker.groups.delete_offsets(&req.group_id, topics) {
        Err(code) => return Reply::Now(OffsetDeleteResponse::default().with_error_code(code)),
        Ok(d) => d,
    };
    Reply::Later(Box::pin(async move {
        if let Some(deleted) = deletion.written {
            if !matches!(deleted.await, Ok(true)) {
                return OffsetDeleteResponse::default()
                    .with_error_code(error::COORDINATOR_NOT_AVAILABLE);
            }
        }
        OffsetDeleteResponse::default().with_topics(
            deletion
                .topics
                .into_iter()
                .map(|t| {
                    OffsetDeleteResponseTopic::default()
                        .with_name(TopicName(str_bytes(&t.topic)))
                        .with_partitions(
                            t.partitions
                                .into_iter()
                                .map(|p| {
                                    OffsetDeleteResponsePartition::default()
                                        .with_partition_index(p.partition)
                                        .with_error_code(p.error)
                                })
                                .collect(),
                        )
                })
                .collect(),
        )
    }))
}
