//! DeleteRecords (key 21), versions 0-2.
//! v1: same as v0. v2: flexible. Moves each partition's log start offset (low watermark) to the given
//! offset, or to the high watermark for -1; past the high watermark is OFFSET_OUT_OF_RANGE, as in Kafka.
//! ListOffsets earliest and Fetch follow the new log start offset.

use kafka_protocol::messages::delete_records_response::{
    DeleteRecordsPartitionResult, DeleteRecordsTopicResult,
};
use kafka_protocol::messages::{
    ApiKey, DeleteRecordsRequest, DeleteRecordsResponse, RequestHeader,
};
use std::sync::Arc;

use super::{ApiSpec, Reply};
use crate::{error, Broker};

pub const API: ApiSpec = ApiSpec {
    key: ApiKey::DeleteRecords,
    min: 0,
    max: 2,
};

/// In request order: the next request from the client sees the new log start offsets (Kafka handles
/// one request of a connection at a time).
pub fn handle(
    broker: &Arc<Broker>,
    _header: &RequestHeader,
    req: DeleteRecordsRequest,
) -> Reply<DeleteRecordsResponse> {
    let broker = broker.clone();
    Reply::in_order(async move { Reply::Now(run(&broker, req).await) })
}

async fn run(broker: &Arc<Broker>, req: DeleteRecordsRequest) -> DeleteRecordsResponse {
    // A partition named twice is deleted up to its last offset, answered once (Kafka keys the request's
    // partitions in a map). Done in the in-order part: the log start moves before later requests of the
    // connection are handled, as in Kafka.
    let mut wanted: Vec<(String, Vec<(i32, i64)>)> = Vec::new();
    for t in req.topics {
        let i = match wanted.iter().position(|(n, _)| *n == t.name.0.as_str()) {
            Some(i) => i,
            None => {
                wanted.push((t.name.0.to_string(), Vec::new()));
                wanted.len() - 1
            }
        };
        for p in t.partitions {
            let parts = &mut wanted[i].1;
            match parts
                .iter_mut()
                .find(|(index, _)| *index == p.partition_index)
            {
                Some(existing) => existing.1 = p.offset,
                None => parts.push((p.partition_index, p.offset)),
            }
        }
    }
    let mut topics = Vec::with_capacity(wanted.len());
    for (name, parts) in wanted {
        let topic = broker.storage.topic(&name);
        let mut partitions = Vec::with_capacity(parts.len());
        for (index, offset) in parts {
            let r = DeleteRecordsPartitionResult::default()
                .with_partition_index(index)
                .with_low_watermark(-1);
            let part = topic
                .as_ref()
                .and_then(|t| t.partitions.get(index as usize))
                .filter(|_| index >= 0);
            partitions.push(match part {
                // Kafka's ReplicaManager.deleteRecordsOnLocalLog: not on an internal topic.
                _ if crate::internal_topics::is_internal(&name) => {
                    r.with_error_code(error::INVALID_TOPIC_EXCEPTION)
                }
                None => r.with_error_code(error::UNKNOWN_TOPIC_OR_PARTITION),
                Some(part) => match broker.storage.delete_records(part, offset).await {
                    Ok(low) => r.with_low_watermark(low),
                    Err(e) => r.with_error_code(e.kafka_error_code()),
                },
            });
        }
        topics.push(
            DeleteRecordsTopicResult::default()
                .with_name(kafka_protocol::messages::TopicName(super::str_bytes(&name)))
                .with_partitions(partitions),
        );
    }
    DeleteRecordsResponse::default().with_topics(topics)
}
