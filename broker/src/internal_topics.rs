//! Kafka's internal topics, as clients and tools see them on a Kafka 4.4 broker:
//! - `__consumer_offsets`, the group coordinator's: the committed offsets as records of Kafka's
//!   schemas (`group::offsets_log`), compacted;
//! - `__transaction_state`, the transaction coordinator's: the state itself lives in the metadata
//!   store (`txn`), so the topic stays empty.
//!
//! Each is created when its coordinator is first looked up (FindCoordinator; InitProducerId with a
//! transactional id), as Kafka creates them, with Kafka's partition count
//! (`offsets.topic.num.partitions`, `transaction.state.log.num.partitions`: 50) and topic configs.
//! Metadata lists them with is_internal = true, so clients leave them out of pattern subscriptions
//! unless asked (a KIP-848 server-side regex does match them, as on Kafka 4.4). They read
//! like any topic (Fetch, ListOffsets, DescribeConfigs). Produce and DeleteRecords are refused with
//! INVALID_TOPIC_EXCEPTION, as Kafka's ReplicaManager refuses them for clients. DeleteTopics and
//! CreateTopics are allowed, as on Kafka 4.4 (checked against a real broker); a deleted one comes back
//! at the next lookup.

use std::sync::Arc;
use streamhouse_storage::{StorageError, TopicConfigs};

use crate::group::offsets_log;
use crate::Broker;

pub const CONSUMER_OFFSETS: &str = offsets_log::TOPIC;
pub const TRANSACTION_STATE: &str = "__transaction_state";

/// Kafka's Topic.isInternal.
pub fn is_internal(name: &str) -> bool {
    name == CONSUMER_OFFSETS || name == TRANSACTION_STATE
}

/// The partition count and configs Kafka creates the topic with (GroupCoordinator.groupMetadataTopicConfigs,
/// TransactionLog's topic configs).
fn definition(broker: &Broker, name: &str) -> Option<(i32, TopicConfigs)> {
    let c = &broker.config;
    let configs = |pairs: &[(&str, String)]| -> TopicConfigs {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    };
    match name {
        CONSUMER_OFFSETS => Some((
            c.offsets_topic_num_partitions,
            configs(&[
                ("cleanup.policy", "compact".into()),
                ("compression.type", "producer".into()),
                ("segment.bytes", c.offsets_topic_segment_bytes.to_string()),
            ]),
        )),
        TRANSACTION_STATE => Some((
            c.transaction_state_log_num_partitions,
            configs(&[
                ("cleanup.policy", "compact".into()),
                ("compression.type", "uncompressed".into()),
                ("min.insync.replicas", "1".into()),
                (
                    "segment.bytes",
                    c.transaction_state_log_segment_bytes.to_string(),
                ),
                ("unclean.leader.election.enable", "false".into()),
            ]),
        )),
        _ => None,
    }
}

/// Creates the internal topic `name` if it does not exist (a concurrent creation is fine).
pub async fn ensure(broker: &Arc<Broker>, name: &str) {
    if broker.storage.topic(name).is_some() {
        return;
    }
    let Some((partitions, configs)) = definition(broker, name) else {
        return;
    };
    match broker.storage.create_topic(name, partitions, configs).await {
        Ok(_) => tracing::info!(topic = name, partitions, "created internal topic"),
        Err(StorageError::TopicExists(_)) => {}
        Err(e) => tracing::warn!(topic = name, error = %e, "could not create internal topic"),
    }
}
