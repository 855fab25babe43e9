//! DescribeLogDirs (key 35), versions 1-4 (Kafka 4.x no longer serves v0; `kafka-log-dirs --describe`
//! and `kafka-reassign-partitions` use it).
//! v1: same as v0. v2: flexible. v3: top-level error_code. v4: total_bytes, usable_bytes of the volume.
//! One log directory, the data dir (what DescribeConfigs reports as `log.dirs`), holding every
//! partition. Sizes are what the index says each partition's log takes in the segment store, local
//! files or objects alike. The volume's sizes are -1, Kafka's "unknown" (UNKNOWN_VOLUME_BYTES): with
//! an object store there is no volume, and locally the broker does not ask the filesystem.

use kafka_protocol::messages::describe_log_dirs_response::{
    DescribeLogDirsPartition, DescribeLogDirsResult, DescribeLogDirsTopic,
};
use kafka_protocol::messages::{
    ApiKey, DescribeLogDirsRequest, DescribeLogDirsResponse, RequestHeader, TopicName,
};
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use streamhouse_storage::Topic;

use super::{str_bytes, ApiSpec, Reply};
use crate::{error, Broker};

pub const API: ApiSpec = ApiSpec {
    key: ApiKey::DescribeLogDirs,
    min: 1,
    max: 4,
};

/// Kafka's DescribeLogDirsResponse.UNKNOWN_VOLUME_BYTES.
const UNKNOWN_VOLUME_BYTES: i64 = -1;

pub fn handle(
    broker: &Arc<Broker>,
    _header: &RequestHeader,
    req: DescribeLogDirsRequest,
) -> Reply<DescribeLogDirsResponse> {
    let storage = &broker.storage;
    let topics: Vec<DescribeLogDirsTopic> = match req.topics {
        // Null: every partition this broker has.
        None => storage
            .topics()
            .iter()
            .map(|t| described(t, 0..t.partitions.len() as i32))
            .collect(),
        Some(asked) => {
            // As Kafka (ReplicaManager.describeLogDirs): the partitions asked for, each once, that
            // the directory holds; names it does not hold are left out, not errors.
            let mut wanted: HashMap<String, BTreeSet<i32>> = HashMap::new();
            let mut order = Vec::new();
            for t in asked {
                let name = t.topic.0.to_string();
                let set = wanted.entry(name.clone()).or_insert_with(|| {
                    order.push(name);
                    BTreeSet::new()
                });
                set.extend(t.partitions);
            }
            order
                .into_iter()
                .filter_map(|name| {
                    let t = storage.topic(&name)?;
                    let partitions = wanted.remove(&name).unwrap_or_default();
                    let d = described(&t, partitions.into_iter());
                    (!d.partitions.is_empty()).then_some(d)
                })
                .collect()
        }
    };
    let dir = std::path::absolute(&broker.config.data_dir)
        .unwrap_or_else(|_| broker.config.data_dir.clone());
    Reply::Now(
        DescribeLogDirsResponse::default()
            .with_error_code(error::NONE)
            .with_results(vec![DescribeLogDirsResult::default()
                .with_error_code(error::NONE)
                .with_log_dir(str_bytes(&dir.display().to_string()))
                .with_topics(topics)
                .with_total_bytes(UNKNOWN_VOLUME_BYTES)
                .with_usable_bytes(UNKNOWN_VOLUME_BYTES)]),
    )
}

/// The given partitions of `t` that exist, with their sizes.
fn described(t: &Topic, partitions: impl Iterator<Item = i32>) -> DescribeLogDirsTopic {
    DescribeLogDirsTopic::default()
        .with_name(TopicName(str_bytes(&t.name)))
        .with_partitions(
            partitions
                .filter_map(|i| t.partition(i))
                .map(|p| {
                    DescribeLogDirsPartition::default()
                        .with_partition_index(p.index)
                        .with_partition_size(p.size_bytes() as i64)
                        // The only replica: nothing to catch up with, never a future replica.
                        .with_offset_lag(0)
                        .with_is_future_key(false)
                })
                .collect(),
        )
}
