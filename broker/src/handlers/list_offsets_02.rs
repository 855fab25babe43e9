//! ListOffsets (key 2), versions 1-10.
//! v1: one offset per partition. v2: isolation level. v4: leader epoch. v6: flexible.
//! v7: MAX_TIMESTAMP (-3, KIP-734). v8: EARLIEST_LOCAL (-4, KIP-405). v9: LATEST_TIERED (-5, KIP-1005).
//! v10: timeout_ms. LATEST at READ_COMMITTED is the last stable offset (Kafka's
//! UnifiedLog.fetchOffsetByTimestamp with lastFetchableOffset), at READ_UNCOMMITTED the high
//! watermark.

use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{ApiKey, ListOffsetsRequest, ListOffsetsResponse, RequestHeader};
use std::sync::Arc;
use streamhouse_storage::engine::LEADER_EPOCH;

use super::{ApiSpec, Reply};
use crate::{error, Broker};

pub const API: ApiSpec = ApiSpec {
    key: ApiKey::ListOffsets,
    min: 1,
    max: 10,
};

const LATEST: i64 = -1;
const EARLIEST: i64 = -2;
const MAX_TIMESTAMP: i64 = -3;
const EARLIEST_LOCAL: i64 = -4;
const LATEST_TIERED: i64 = -5;

pub fn handle(
    broker: &Arc<Broker>,
    header: &RequestHeader,
    req: ListOffsetsRequest,
) -> Reply<ListOffsetsResponse> {
    // Lookups by timestamp read (and decompress) a batch: out of the connection's in-order part, so
    // pipelined requests behind this one are not held up; it changes nothing.
    let broker = broker.clone();
    let version = header.request_api_version;
    Reply::Later(Box::pin(async move { answer(&broker, version, req).await }))
}

async fn answer(broker: &Broker, version: i16, req: ListOffsetsRequest) -> ListOffsetsResponse {
    let storage = &broker.storage;
    // The leader epoch field exists from v4 on.
    let epoch = if version >= 4 { LEADER_EPOCH } else { -1 };
    let read_committed = req.isolation_level == 1;
    // Kafka (ListOffsetsRequest.duplicatePartitions, ReplicaManager.fetchOffset): a partition named
    // more than once is answered once, with INVALID_REQUEST.
    let mut count: std::collections::HashMap<(&str, i32), usize> = Default::default();
    for t in &req.topics {
        for p in &t.partitions {
            *count
                .entry((t.name.0.as_str(), p.partition_index))
                .or_default() += 1;
        }
    }
    let duplicated: std::collections::HashSet<(String, i32)> = count
        .into_iter()
        .filter(|(_, n)| *n > 1)
        .map(|((t, p), _)| (t.to_string(), p))
        .collect();
    let mut answered: std::collections::HashSet<(String, i32)> = Default::default();
    let mut topics = Vec::with_capacity(req.topics.len());
    for t in req.topics {
        let topic = storage.topic(&t.name);
        let mut partitions = Vec::with_capacity(t.partitions.len());
        for p in t.partitions {
            let r = ListOffsetsPartitionResponse::default()
                .with_partition_index(p.partition_index)
                .with_timestamp(-1)
                .with_offset(-1);
            let key = (t.name.0.to_string(), p.partition_index);
            if duplicated.contains(&key) {
                if answered.insert(key) {
                    partitions.push(r.with_error_code(error::INVALID_REQUEST));
                }
                continue;
            }
            let Some(part) = topic
                .as_ref()
                .and_then(|t| t.partitions.get(p.partition_index as usize))
                .filter(|_| p.partition_index >= 0)
            else {
                partitions.push(r.with_error_code(error::UNKNOWN_TOPIC_OR_PARTITION));
                continue;
            };
            let found = match p.timestamp {
                LATEST if read_committed => Ok(Some((part.last_stable_offset(), -1))),
                LATEST => Ok(Some((part.high_watermark(), -1))),
                EARLIEST | EARLIEST_LOCAL => Ok(Some((part.log_start_offset(), -1))),
                // Nothing is tiered: Kafka answers -1 when there is no remote log.
                LATEST_TIERED => Ok(Some((-1, -1))),
                // Both decompress at most one batch, bounded, on a blocking thread.
                MAX_TIMESTAMP => storage.max_timestamp_offset(part, &broker.inflater).await,
                ts if ts >= 0 => {
                    storage
                        .offset_for_timestamp(part, ts, &broker.inflater)
                        .await
                }
                _ => Ok(None),
            };
            partitions.push(match found {
                Ok(Some((offset, ts))) => r
                    .with_offset(offset)
                    .with_timestamp(ts)
                    .with_leader_epoch(epoch),
                Ok(None) => r.with_leader_epoch(-1),
                Err(e) => r.with_error_code(e.kafka_error_code()),
            });
        }
        topics.push(
            ListOffsetsTopicResponse::default()
                .with_name(t.name)
                .with_partitions(partitions),
        );
    }
    ListOffsetsResponse::default().with_topics(topics)
}
