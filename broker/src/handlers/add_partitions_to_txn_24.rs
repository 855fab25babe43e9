//! AddPartitionsToTxn (key 24), versions 0-5.
//! v1: same as v0. v2: PRODUCER_FENCED (KIP-588; older versions get INVALID_PRODUCER_EPOCH). v3:
//! flexible. v4: several transactions per request and verify_only (KIP-890, meant for brokers);
//! v5: TRANSACTION_ABORTABLE may be answered.
//! Kafka's rule (KafkaApis.handleAddPartitionsToTxnRequest): a partition of an unknown topic is
//! UNKNOWN_TOPIC_OR_PARTITION and then every other partition of the transaction is
//! OPERATION_NOT_ATTEMPTED, nothing added; otherwise every partition gets the coordinator's answer.
//! Answered in request order: the client's next produce must find its partitions added.

use kafka_protocol::messages::add_partitions_to_txn_request::AddPartitionsToTxnTopic;
use kafka_protocol::messages::add_partitions_to_txn_response::{
    AddPartitionsToTxnPartitionResult, AddPartitionsToTxnResult, AddPartitionsToTxnTopicResult,
};
use kafka_protocol::messages::{
    AddPartitionsToTxnRequest, AddPartitionsToTxnResponse, ApiKey, RequestHeader,
};
use std::sync::Arc;

use super::{ApiSpec, Reply};
use crate::txn::TxnPartition;
use crate::{error, Broker};

pub const API: ApiSpec = ApiSpec {
    key: ApiKey::AddPartitionsToTxn,
    min: 0,
    max: 5,
};

pub fn handle(
    broker: &Arc<Broker>,
    header: &RequestHeader,
    req: AddPartitionsToTxnRequest,
) -> Reply<AddPartitionsToTxnResponse> {
    let version = header.request_api_version;
    let broker = broker.clone();
    Reply::in_order(async move {
        if version <= 3 {
            let results = one(
                &broker,
                version,
                &req.v3_and_below_transactional_id,
                req.v3_and_below_producer_id.0,
                req.v3_and_below_producer_epoch,
                false,
                &req.v3_and_below_topics,
            )
            .await;
            return Reply::Now(
                AddPartitionsToTxnResponse::default().with_results_by_topic_v3_and_below(results),
            );
        }
        let mut out = Vec::with_capacity(req.transactions.len());
        for t in &req.transactions {
            let results = one(
                &broker,
                version,
                &t.transactional_id,
                t.producer_id.0,
                t.producer_epoch,
                t.verify_only,
                &t.topics,
            )
            .await;
            out.push(
                AddPartitionsToTxnResult::default()
                    .with_transactional_id(t.transactional_id.clone())
                    .with_topic_results(results),
            );
        }
        Reply::Now(AddPartitionsToTxnResponse::default().with_results_by_transaction(out))
    })
}

/// One transaction's partitions, answered per partition in request order.
async fn one(
    broker: &Broker,
    version: i16,
    id: &str,
    producer_id: i64,
    epoch: i16,
    verify_only: bool,
    topics: &[AddPartitionsToTxnTopic],
) -> Vec<AddPartitionsToTxnTopicResult> {
    let mut partitions = Vec::new();
    let mut unknown = std::collections::HashSet::new();
    for t in topics {
        let topic = broker.storage.topic(&t.name);
        for &p in &t.partitions {
            match topic.as_ref().filter(|tp| tp.partition(p).is_some()) {
                Some(tp) => partitions.push(TxnPartition {
                    topic: tp.name.clone(),
                    partition: p,
                    topic_id: tp.id,
                }),
                None => {
                    unknown.insert((t.name.to_string(), p));
                }
            }
        }
    }
    let codes: Result<Vec<i16>, i16> = if !unknown.is_empty() {
        Err(error::OPERATION_NOT_ATTEMPTED)
    } else if verify_only {
        broker
            .txns
            .verify_partitions(id, producer_id, epoch, &partitions)
    } else {
        broker
            .txns
            .add(id, producer_id, epoch, partitions, None)
            .await
            .map(|()| Vec::new())
    };
    let code_of = |i: usize, topic: &str, p: i32| -> i16 {
        if unknown.contains(&(topic.to_string(), p)) {
            return error::UNKNOWN_TOPIC_OR_PARTITION;
        }
        match &codes {
            Ok(per) => per.get(i).copied().unwrap_or(error::NONE),
            Err(error::PRODUCER_FENCED) if version < 2 => error::INVALID_PRODUCER_EPOCH,
            Err(code) => *code,
        }
    };
    // Known partitions are numbered in the order they were collected above.
    let mut i = 0;
    topics
        .iter()
        .map(|t| {
            let results = t
                .partitions
                .iter()
                .map(|&p| {
                    let code = code_of(i, &t.name, p);
                    if !unknown.contains(&(t.name.to_string(), p)) {
                        i += 1;
                    }
                    AddPartitionsToTxnPartitionResult::default()
                        .with_partition_index(p)
                        .with_partition_error_code(code)
                })
                .collect();
            AddPartitionsToTxnTopicResult::default()
                .with_name(t.name.clone())
                .with_results_by_partition(results)
        })
        .collect()
}
