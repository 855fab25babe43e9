//! DescribeProducers (key 61), version 0.
//! Each asked partition's active producers as its committed producer state holds them (Kafka's
//! ReplicaManager.activeProducerState): id, epoch, last sequence, last timestamp, coordinator epoch
//! and the first offset of its open transaction (-1: none). Serves `kafka-transactions
//! describe-producers` and, with ListTransactions and DescribeTransactions, `find-hanging`.
//! Differences from Kafka: the last timestamp is when this broker appended the producer's last batch
//! (Kafka: the batch's max timestamp), and the coordinator epoch of the last marker is not kept, so
//! it is -1 (Kafka's value before any marker). A partition named twice is answered once per mention.

use kafka_protocol::messages::describe_producers_response::{
    PartitionResponse, ProducerState, TopicResponse,
};
use kafka_protocol::messages::{
    ApiKey, DescribeProducersRequest, DescribeProducersResponse, ProducerId, RequestHeader,
};
use std::sync::Arc;

use super::{str_bytes, ApiSpec, Reply};
use crate::{error, Broker};

pub const API: ApiSpec = ApiSpec {
    key: ApiKey::DescribeProducers,
    min: 0,
    max: 0,
};

pub fn handle(
    broker: &Arc<Broker>,
    _header: &RequestHeader,
    req: DescribeProducersRequest,
) -> Reply<DescribeProducersResponse> {
    let broker = broker.clone();
    Reply::later(async move {
        let mut topics = Vec::with_capacity(req.topics.len());
        for t in &req.topics {
            let topic = broker.storage.topic(&t.name);
            let mut partitions = Vec::with_capacity(t.partition_indexes.len());
            for &index in &t.partition_indexes {
                let r = PartitionResponse::default().with_partition_index(index);
                let Some(p) = topic.as_ref().and_then(|tp| tp.partition(index)) else {
                    partitions.push(r.with_error_code(error::UNKNOWN_TOPIC_OR_PARTITION));
                    continue;
                };
                match broker.storage.producers_of(p).await {
                    Ok(list) => {
                        let active = list
                            .into_iter()
                            .map(|(id, e)| {
                                ProducerState::default()
                                    .with_producer_id(ProducerId(id))
                                    .with_producer_epoch(e.epoch as i32)
                                    .with_last_sequence(e.recent.back().map_or(-1, |b| b.last_seq))
                                    .with_last_timestamp(e.last_append_ms)
                                    .with_coordinator_epoch(-1)
                                    .with_current_txn_start_offset(e.txn_first_offset.unwrap_or(-1))
                            })
                            .collect();
                        partitions.push(r.with_active_producers(active));
                    }
                    Err(e) => partitions.push(
                        r.with_error_code(e.kafka_error_code())
                            .with_error_message(Some(str_bytes(&e.to_string()))),
                    ),
                }
            }
            topics.push(
                TopicResponse::default()
                    .with_name(t.name.clone())
                    .with_partitions(partitions),
            );
        }
        DescribeProducersResponse::default().with_topics(topics)
    })
}
