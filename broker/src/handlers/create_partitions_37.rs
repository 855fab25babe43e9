//! CreatePartitions (key 37), versions 0-3.
//! v1: same as v0. v2: flexible. v3: same as v2. Partitions can only be added (INVALID_PARTITIONS
//! otherwise, with Kafka's message); this broker is the only replica, so assignments may name only it.

use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::{
    ApiKey, CreatePartitionsRequest, CreatePartitionsResponse, RequestHeader,
};
use std::sync::Arc;

use super::{str_bytes, ApiSpec, Reply};
use crate::{error, Broker};

pub const API: ApiSpec = ApiSpec {
    key: ApiKey::CreatePartitions,
    min: 0,
    max: 3,
};

/// In request order: the partitions exist for the client's next request (Kafka handles one request
/// of a connection at a time).
pub fn handle(
    broker: &Arc<Broker>,
    _header: &RequestHeader,
    req: CreatePartitionsRequest,
) -> Reply<CreatePartitionsResponse> {
    let broker = broker.clone();
    Reply::in_order(async move { Reply::Now(run(&broker, req).await) })
}

async fn run(broker: &Arc<Broker>, req: CreatePartitionsRequest) -> CreatePartitionsResponse {
    let mut results = Vec::with_capacity(req.topics.len());
    let mut added = 0i64;
    for t in req.topics {
        let r = CreatePartitionsTopicResult::default().with_name(t.name.clone());
        let fail = |code: i16, msg: String| {
            r.clone()
                .with_error_code(code)
                .with_error_message(Some(str_bytes(&msg)))
        };
        let node = broker.config.node_id;
        let result = match broker.storage.topic(&t.name) {
            None => fail(
                error::UNKNOWN_TOPIC_OR_PARTITION,
                format!("The topic '{}' does not exist.", t.name.as_str()),
            ),
            Some(topic) if t.count <= topic.partitions.len() as i32 => {
                let current = topic.partitions.len();
                // Kafka's messages (ReplicationControlManager.createPartitions).
                let msg = if t.count == current as i32 {
                    format!("Topic already has {current} partition(s).")
                } else {
                    format!(
                        "The topic {} currently has {current} partition(s); {} would not be an increase.",
                        t.name.as_str(),
                        t.count
                    )
                };
                fail(error::INVALID_PARTITIONS, msg)
            }
            Some(topic)
                if super::check_new_partitions(
                    broker,
                    added,
                    t.count as i64 - topic.partitions.len() as i64,
                )
                .is_err() =>
            {
                let more = t.count as i64 - topic.partitions.len() as i64;
                let msg = super::check_new_partitions(broker, added, more).err();
                fail(error::INVALID_PARTITIONS, msg.unwrap_or_default())
            }
            Some(topic)
                if t.assignments.as_ref().is_some_and(|a| {
                    a.len() as i32 != t.count - topic.partitions.len() as i32
                        || a.iter().any(|x| x.broker_ids.iter().any(|b| b.0 != node))
                }) =>
            {
                fail(
                    error::INVALID_REPLICA_ASSIGNMENT,
                    "Invalid replica assignment.".to_string(),
                )
            }
            Some(_) if req.validate_only => r,
            Some(topic) => match broker
                .storage
                .create_partitions(&t.name, t.count)
                .await
                .map(|_| topic.partitions.len())
            {
                Ok(before) => {
                    added += t.count as i64 - before as i64;
                    tracing::info!(topic = %t.name.as_str(), partitions = t.count, "added partitions");
                    r
                }
                Err(e) => fail(e.kafka_error_code(), e.to_string()),
            },
        };
        results.push(result);
    }
    CreatePartitionsResponse::default().with_results(results)
}
