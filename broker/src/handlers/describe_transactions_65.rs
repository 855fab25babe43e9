//! DescribeTransactions (key 65), version 0.
//! Each asked id once per mention, with its state, timeout, start time, producer id and epoch and
//! its partitions by topic; an id this coordinator does not know is TRANSACTIONAL_ID_NOT_FOUND
//! (Kafka's TransactionCoordinator.handleDescribeTransactions). Serves `kafka-transactions describe`.

use kafka_protocol::messages::describe_transactions_response::{TopicData, TransactionState};
use kafka_protocol::messages::{
    ApiKey, DescribeTransactionsRequest, DescribeTransactionsResponse, ProducerId, RequestHeader,
    TopicName,
};
use std::sync::Arc;

use super::{str_bytes, ApiSpec, Reply};
use crate::txn::TxnState;
use crate::{error, Broker};

pub const API: ApiSpec = ApiSpec {
    key: ApiKey::DescribeTransactions,
    min: 0,
    max: 0,
};

pub fn handle(
    broker: &Arc<Broker>,
    _header: &RequestHeader,
    req: DescribeTransactionsRequest,
) -> Reply<DescribeTransactionsResponse> {
    let states = req
        .transactional_ids
        .iter()
        .map(|id| {
            let r = TransactionState::default()
                .with_transactional_id(id.clone())
                .with_transaction_state(str_bytes(""))
                .with_transaction_start_time_ms(-1)
                .with_producer_id(ProducerId(-1))
                .with_producer_epoch(-1);
            let Some(m) = broker
                .txns
                .describe(id)
                .filter(|m| m.state != TxnState::Dead)
            else {
                return r.with_error_code(error::TRANSACTIONAL_ID_NOT_FOUND);
            };
            // Partitions are kept ordered by topic, then partition: one entry per topic.
            let mut topics: Vec<TopicData> = Vec::new();
            for p in &m.partitions {
                match topics.last_mut() {
                    Some(t) if t.topic.as_str() == p.topic => t.partitions.push(p.partition),
                    _ => topics.push(
                        TopicData::default()
                            .with_topic(TopicName(str_bytes(&p.topic)))
                            .with_partitions(vec![p.partition]),
                    ),
                }
            }
            r.with_transaction_state(str_bytes(m.state.name()))
                .with_transaction_timeout_ms(m.timeout_ms)
                .with_transaction_start_time_ms(m.start_ms)
                .with_producer_id(ProducerId(m.producer_id))
                .with_producer_epoch(m.epoch)
                .with_topics(topics)
        })
        .collect();
    Reply::Now(DescribeTransactionsResponse::default().with_transaction_states(states))
}
