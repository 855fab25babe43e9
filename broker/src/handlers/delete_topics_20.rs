//! DeleteTopics (key 20), versions 1-6.
//! v1: throttle time. v4: flexible. v5: error messages. v6: topics by name or id (KIP-516).

use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::{
    ApiKey, DeleteTopicsRequest, DeleteTopicsResponse, RequestHeader, TopicName,
};
use std::sync::Arc;
use uuid::Uuid;

use super::{str_bytes, ApiSpec, Reply};
use crate::{error, Broker};

pub const API: ApiSpec = ApiSpec {
    key: ApiKey::DeleteTopics,
    min: 1,
    max: 6,
};

/// In request order: the topics are gone for the client's next request (Kafka handles one request
/// of a connection at a time).
pub fn handle(
    broker: &Arc<Broker>,
    header: &RequestHeader,
    req: DeleteTopicsRequest,
) -> Reply<DeleteTopicsResponse> {
    let (broker, header) = (broker.clone(), header.clone());
    Reply::in_order(async move { Reply::Now(run(&broker, &header, req).await) })
}

async fn run(
    broker: &Arc<Broker>,
    header: &RequestHeader,
    req: DeleteTopicsRequest,
) -> DeleteTopicsResponse {
    let storage = &broker.storage;
    // (name, id) pairs as the client named them.
    let wanted: Vec<(Option<String>, Uuid)> = if header.request_api_version >= 6 {
        req.topics
            .iter()
            .map(|t| (t.name.as_ref().map(|n| n.0.to_string()), t.topic_id))
            .collect()
    } else {
        req.topic_names
            .iter()
            .map(|n| (Some(n.0.to_string()), Uuid::nil()))
            .collect()
    };
    // Kafka (ControllerApis.deleteTopics): a topic named twice (by name or by id) is not deleted; it is
    // answered once with INVALID_REQUEST "Duplicate topic name." (or id).
    let mut counts: std::collections::HashMap<(Option<String>, Uuid), usize> = Default::default();
    for (name, id) in &wanted {
        let key = match name {
            Some(n) => (Some(n.clone()), Uuid::nil()),
            None => (None, *id),
        };
        *counts.entry(key).or_default() += 1;
    }
    let mut answered = std::collections::HashSet::new();
    let mut responses = Vec::with_capacity(wanted.len());
    for (name, id) in wanted {
        let key = match &name {
            Some(n) => (Some(n.clone()), Uuid::nil()),
            None => (None, id),
        };
        if counts.get(&key).copied().unwrap_or(0) > 1 {
            if answered.insert(key) {
                let what = if name.is_some() { "name" } else { "id" };
                responses.push(
                    DeletableTopicResult::default()
                        .with_name(name.clone().map(|n| TopicName(str_bytes(&n))))
                        .with_topic_id(id)
                        .with_error_code(error::INVALID_REQUEST)
                        .with_error_message(Some(str_bytes(&format!("Duplicate topic {what}.")))),
                );
            }
            continue;
        }
        let topic = match &name {
            Some(n) => storage.topic(n),
            None => storage.topic_by_id(id),
        };
        let r = DeletableTopicResult::default()
            .with_name(name.clone().map(|n| TopicName(str_bytes(&n))))
            .with_topic_id(id);
        let Some(topic) = topic else {
            let code = if name.is_none() {
                error::UNKNOWN_TOPIC_ID
            } else {
                error::UNKNOWN_TOPIC_OR_PARTITION
            };
            responses.push(
                r.with_error_code(code)
                    .with_error_message(Some(str_bytes("This server does not host this topic."))),
            );
            continue;
        };
        let r = r
            .with_name(Some(TopicName(str_bytes(&topic.name))))
            .with_topic_id(topic.id);
        responses.push(match storage.delete_topic(&topic.name).await {
            Ok(_) => {
                tracing::info!(topic = %topic.name, "deleted topic");
                // Kafka deletes the groups' committed offsets of a deleted topic.
                broker.groups.on_topic_deleted(&topic.name).await;
                r
            }
            Err(e) => r
                .with_error_code(e.kafka_error_code())
                .with_error_message(Some(str_bytes(&e.to_string()))),
        });
    }
    DeleteTopicsResponse::default().with_responses(responses)
}
