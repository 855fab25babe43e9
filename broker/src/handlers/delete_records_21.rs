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

pub async fn handle(
    broker: &Arc<Broker>,
    _header: &RequestHeader,
    req: DeleteRecordsRequest,
) -> Reply<DeleteRecordsResponse> {
    let broker = broker.clone();
    Reply::Later(Box::pin(async move {
        let mut topics = Vec::with_capacity(req.topics.len());
        for t in req.topics {
            let topic = broker.storage.topic(&t.name);
            let mut partitions = Vec::with_capacity(t.partitions.len());
            for p in t.partitions {
                let r = DeleteRecordsPartitionResult::default()
                    .with_partition_index(p.partition_index)
                    .with_low_watermark(-1);
                let part = topic
                    .as_ref()
                    .and_then(|t| t.partitions.get(p.partition_index as usize))
                    .filter(|_| p.partition_index >= 0);
                partitions.push(match part {
                    None => r.with_error_code(error::UNKNOWN_TOPIC_OR_PARTITION),
                    Some(part) => match broker.storage.delete_records(part, p.offset).await {
                        Ok(low) => r.with_low_watermark(low),
                        Err(e) => r.with_error_code(e.kafka_error_code()),
                    },
                });
            }
            topics.push(
                DeleteRecordsTopicResult::default()
                    .with_name(t.name)
                    .with_partitions(partitions),
            );
        }
        DeleteRecordsResponse::default().with_topics(topics)
    }))
}
