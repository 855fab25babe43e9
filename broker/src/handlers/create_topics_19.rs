//! CreateTopics (key 19), versions 2-7.
//! v2: same as v1 (validate_only, error messages). v4: -1 partitions/replication factor for the
//! broker defaults (KIP-464). v5: flexible; the response carries partitions, replication factor and
//! configs (KIP-525). v7: topic ids.
//! Validation follows Kafka's order: duplicate names in one request, name, partitions, replication
//! factor (one broker: only 1), assignments, configs.

use kafka_protocol::messages::create_topics_response::{
    CreatableTopicConfigs, CreatableTopicResult,
};
use kafka_protocol::messages::{ApiKey, CreateTopicsRequest, CreateTopicsResponse, RequestHeader};
use std::collections::HashMap;
use std::sync::Arc;
use streamhouse_storage::TopicConfigs;

use super::{str_bytes, valid_topic_name, ApiSpec, Reply};
use crate::topic_config;
use crate::{error, Broker};

pub const API: ApiSpec = ApiSpec {
    key: ApiKey::CreateTopics,
    min: 2,
    max: 7,
};

/// In request order: the topics exist for the client's next request (Kafka handles one request of a
/// connection at a time).
pub fn handle(
    broker: &Arc<Broker>,
    header: &RequestHeader,
    req: CreateTopicsRequest,
) -> Reply<CreateTopicsResponse> {
    let (broker, header) = (broker.clone(), header.clone());
    Reply::in_order(async move { Reply::Now(run(&broker, &header, req).await) })
}

async fn run(
    broker: &Arc<Broker>,
    header: &RequestHeader,
    req: CreateTopicsRequest,
) -> CreateTopicsResponse {
    let mut seen: HashMap<String, usize> = HashMap::new();
    for t in &req.topics {
        *seen.entry(t.name.0.to_string()).or_default() += 1;
    }
    let mut results = Vec::with_capacity(req.topics.len());
    let mut added = 0i64;
    for t in req.topics {
        let name = t.name.0.to_string();
        let result = CreatableTopicResult::default()
            .with_name(t.name.clone())
            .with_num_partitions(-1)
            .with_replication_factor(-1);
        let fail = |code: i16, msg: String| {
            result
                .clone()
                .with_error_code(code)
                .with_error_message(Some(str_bytes(&msg)))
        };
        let node = broker.config.node_id;
        let partitions = if t.num_partitions == -1 && t.assignments.is_empty() {
            broker.config.num_partitions
        } else if !t.assignments.is_empty() {
            t.assignments.len() as i32
        } else {
            t.num_partitions
        };
        let r = if seen.get(&name).copied().unwrap_or(0) > 1 {
            fail(
                error::INVALID_REQUEST,
                format!("Create topics request from client contains a duplicate topic: {name}"),
            )
        } else if !valid_topic_name(&name) {
            fail(
                error::INVALID_TOPIC_EXCEPTION,
                format!("Topic name \"{name}\" is illegal"),
            )
        } else if broker.storage.topic(&name).is_some() {
            fail(
                error::TOPIC_ALREADY_EXISTS,
                format!("Topic '{name}' already exists."),
            )
        } else if !t.assignments.is_empty()
            && (t.num_partitions != -1 || t.replication_factor != -1)
        {
            fail(
                error::INVALID_REQUEST,
                "Both numPartitions or replicationFactor and replicasAssignments were set.".into(),
            )
        } else if partitions < 1 {
            fail(
                error::INVALID_PARTITIONS,
                format!(
                    "Number of partitions was set to an invalid non-positive value: {partitions}"
                ),
            )
        } else if let Err(msg) = super::check_new_partitions(broker, added, partitions as i64) {
            fail(error::INVALID_PARTITIONS, msg)
        } else if t.replication_factor == 0 || t.replication_factor < -1 {
            fail(
                error::INVALID_REPLICATION_FACTOR,
                "Replication factor must be larger than 0, or -1 to use the default value.".into(),
            )
        } else if t.replication_factor > 1 {
            fail(
                error::INVALID_REPLICATION_FACTOR,
                format!("Unable to replicate the partition {} time(s): The target replication factor of {} cannot be reached because only 1 broker(s) are registered.", t.replication_factor, t.replication_factor),
            )
        } else if let Some(a) = t
            .assignments
            .iter()
            .find(|a| a.broker_ids.iter().any(|b| b.0 != node) || a.broker_ids.is_empty())
        {
            fail(
                error::INVALID_REPLICA_ASSIGNMENT,
                format!(
                    "Invalid replica assignment for partition {}",
                    a.partition_index
                ),
            )
        } else {
            let mut configs = TopicConfigs::new();
            let mut bad = None;
            for c in &t.configs {
                let value = c.value.as_ref().map(|v| v.to_string());
                match topic_config::validate(&c.name, value.as_deref()) {
                    Ok(()) => {
                        configs.insert(c.name.to_string(), value.unwrap_or_default());
                    }
                    Err(msg) => {
                        bad = Some(msg);
                        break;
                    }
                }
            }
            if let Some(msg) = bad {
                fail(error::INVALID_CONFIG, msg)
            } else if req.validate_only {
                described(
                    broker,
                    header.request_api_version,
                    result,
                    partitions,
                    &configs,
                )
            } else {
                match broker
                    .storage
                    .create_topic(&name, partitions, configs.clone())
                    .await
                {
                    Ok(topic) => {
                        added += partitions as i64;
                        tracing::info!(topic = %name, partitions, "created topic");
                        described(
                            broker,
                            header.request_api_version,
                            result.with_topic_id(topic.id),
                            partitions,
                            &configs,
                        )
                    }
                    Err(e) => fail(e.kafka_error_code(), e.to_string()),
                }
            }
        };
        results.push(r);
    }
    CreateTopicsResponse::default().with_topics(results)
}

/// A successful result with the topic's partitions, replication factor and configs (v5+).
fn described(
    broker: &Broker,
    version: i16,
    r: CreatableTopicResult,
    partitions: i32,
    overrides: &TopicConfigs,
) -> CreatableTopicResult {
    if version < 5 {
        return r;
    }
    let configs = topic_config::TOPIC_CONFIGS
        .iter()
        .map(|def| {
            let (value, source) = match overrides.get(def.name) {
                Some(v) => (v.clone(), topic_config::SOURCE_DYNAMIC_TOPIC),
                None => topic_config::topic_default(def, &broker.config),
            };
            CreatableTopicConfigs::default()
                .with_name(str_bytes(def.name))
                .with_value(Some(str_bytes(&value)))
                .with_config_source(source)
        })
        .collect();
    r.with_num_partitions(partitions)
        .with_replication_factor(1)
        .with_configs(Some(configs))
}
