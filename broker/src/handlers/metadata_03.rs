//! Metadata (key 3), versions 0-12.
//! v1: controller id, is_internal, null = all topics. v2: cluster id. v3: throttle time.
//! v4: allow_auto_topic_creation. v5: offline replicas. v7: leader epoch. v8: authorized operations.
//! v9: flexible. v10: topic ids. v11: cluster authorized operations removed. v12: topics by id
//! with a null name.
//! This broker is the leader (epoch 0) and only replica of every partition.

use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{
    ApiKey, BrokerId, MetadataRequest, MetadataResponse, RequestHeader, TopicName,
};
use std::sync::Arc;
use streamhouse_storage::{StorageError, Topic};
use uuid::Uuid;

use super::{
    authorized_operations, str_bytes, valid_topic_name, ApiSpec, Reply,
    AUTHORIZED_OPERATIONS_OMITTED, CLUSTER_AUTHORIZED_OPERATIONS, TOPIC_AUTHORIZED_OPERATIONS,
};
use crate::{error, internal_topics, Broker};

pub const API: ApiSpec = ApiSpec {
    key: ApiKey::Metadata,
    min: 0,
    max: 12,
};

pub fn handle(
    broker: &Arc<Broker>,
    header: &RequestHeader,
    req: MetadataRequest,
) -> Reply<MetadataResponse> {
    let version = header.request_api_version;
    let storage = &broker.storage;
    // v0: an empty list means all topics; v1+: null means all, empty means none.
    let requested = match req.topics {
        None => None,
        Some(t) if t.is_empty() && version == 0 => None,
        Some(t) => Some(t),
    };
    // Before v4 clients cannot say, and Kafka auto-creates for them.
    let allow_auto_create =
        (version < 4 || req.allow_auto_topic_creation) && broker.config.auto_create_topics_enable;
    let mut topics = Vec::new();
    let mut to_create = Vec::new();
    match requested {
        None => topics.extend(
            storage
                .topics()
                .iter()
                .map(|t| topic_metadata(broker, t, req.include_topic_authorized_operations)),
        ),
        Some(list) => {
            // A topic named twice is answered once: Kafka makes the requested names a set
            // (KafkaApis.handleTopicMetadataRequest), so repeats cannot multiply the response.
            let mut seen_names = std::collections::HashSet::new();
            let mut seen_ids = std::collections::HashSet::new();
            let list = list.into_iter().filter(|rt| match &rt.name {
                Some(n) => seen_names.insert(n.0.clone()),
                None => seen_ids.insert(rt.topic_id),
            });
            for rt in list {
                let name = rt.name.as_ref().map(|n| n.0.to_string());
                let found = match &name {
                    Some(n) => storage.topic(n),
                    None => storage.topic_by_id(rt.topic_id),
                };
                if let Some(t) = found {
                    topics.push(topic_metadata(
                        broker,
                        &t,
                        req.include_topic_authorized_operations,
                    ));
                    continue;
                }
                let Some(name) = name else {
                    topics.push(error_topic(None, rt.topic_id, error::UNKNOWN_TOPIC_ID));
                    continue;
                };
                if !valid_topic_name(&name) {
                    topics.push(error_topic(
                        Some(&name),
                        Uuid::nil(),
                        error::INVALID_TOPIC_EXCEPTION,
                    ));
                } else if allow_auto_create {
                    // Created after the in-order part, with a placeholder until then.
                    to_create.push((topics.len(), name));
                    topics.push(MetadataResponseTopic::default());
                } else {
                    topics.push(error_topic(
                        Some(&name),
                        Uuid::nil(),
                        error::UNKNOWN_TOPIC_OR_PARTITION,
                    ));
                }
            }
        }
    }
    let include_cluster_ops = req.include_cluster_authorized_operations;
    if to_create.is_empty() {
        return Reply::Now(response(broker, topics, include_cluster_ops));
    }
    // Auto-creation is not in request order: it writes to the metadata store, and the requests
    // pipelined behind this one need not wait for that.
    let broker = broker.clone();
    let include_ops = req.include_topic_authorized_operations;
    Reply::later(async move {
        for (i, name) in to_create {
            topics[i] = auto_create(&broker, &name, include_ops).await;
        }
        response(&broker, topics, include_cluster_ops)
    })
}

fn response(
    broker: &Broker,
    topics: Vec<MetadataResponseTopic>,
    include_cluster_ops: bool,
) -> MetadataResponse {
    let c = &broker.config;
    MetadataResponse::default()
        .with_brokers(vec![MetadataResponseBroker::default()
            .with_node_id(BrokerId(c.node_id))
            .with_host(str_bytes(&c.advertised_host))
            .with_port(c.advertised_port)])
        .with_cluster_id(Some(str_bytes(&broker.cluster_id)))
        .with_controller_id(BrokerId(c.node_id))
        .with_topics(topics)
        // v8-10 only; the field is not encoded in other versions.
        .with_cluster_authorized_operations(authorized_operations(
            include_cluster_ops,
            CLUSTER_AUTHORIZED_OPERATIONS,
        ))
}

/// A topic named in a Metadata request that may auto-create it, created with the broker's
/// num.partitions (unless that would pass a partition limit: then answered as if auto-creation were
/// off).
async fn auto_create(broker: &Arc<Broker>, name: &str, include_ops: bool) -> MetadataResponseTopic {
    // An internal topic is created as its coordinator creates it (Kafka's AutoTopicCreationManager).
    if internal_topics::is_internal(name) {
        internal_topics::ensure(broker, name).await;
        return match broker.storage.topic(name) {
            Some(t) => topic_metadata(broker, &t, include_ops),
            None => error_topic(Some(name), Uuid::nil(), error::LEADER_NOT_AVAILABLE),
        };
    }
    let partitions = broker.config.num_partitions;
    if super::check_new_partitions(broker, 0, partitions as i64).is_err() {
        return error_topic(Some(name), Uuid::nil(), error::UNKNOWN_TOPIC_OR_PARTITION);
    }
    match broker
        .storage
        .create_topic(name, partitions, Default::default())
        .await
    {
        Ok(t) => {
            tracing::info!(topic = %name, partitions, "auto-created topic");
            topic_metadata(broker, &t, include_ops)
        }
        // Created meanwhile by another request.
        Err(StorageError::TopicExists(_)) => match broker.storage.topic(name) {
            Some(t) => topic_metadata(broker, &t, include_ops),
            None => error_topic(Some(name), Uuid::nil(), error::LEADER_NOT_AVAILABLE),
        },
        Err(e) => error_topic(Some(name), Uuid::nil(), e.kafka_error_code()),
    }
}

fn topic_metadata(broker: &Broker, t: &Topic, include_ops: bool) -> MetadataResponseTopic {
    let node = BrokerId(broker.config.node_id);
    let partitions = t
        .partitions
        .iter()
        .map(|p| {
            MetadataResponsePartition::default()
                .with_partition_index(p.index)
                .with_leader_id(node)
                .with_leader_epoch(streamhouse_storage::engine::LEADER_EPOCH)
                .with_replica_nodes(vec![node])
                .with_isr_nodes(vec![node])
        })
        .collect();
    MetadataResponseTopic::default()
        .with_name(Some(TopicName(str_bytes(&t.name))))
        .with_topic_id(t.id)
        .with_is_internal(internal_topics::is_internal(&t.name))
        .with_partitions(partitions)
        // No authorizer: what Kafka answers without one.
        .with_topic_authorized_operations(authorized_operations(
            include_ops,
            TOPIC_AUTHORIZED_OPERATIONS,
        ))
}

fn error_topic(name: Option<&str>, id: Uuid, code: i16) -> MetadataResponseTopic {
    MetadataResponseTopic::default()
        .with_error_code(code)
        .with_name(name.map(|n| TopicName(str_bytes(n))))
        .with_topic_id(id)
        .with_topic_authorized_operations(AUTHORIZED_OPERATIONS_OMITTED)
}
