//! Produce (key 0), versions 3-13.
//! v3: transactional id, magic v2 record batches only. v5: log_start_offset in the response.
//! v8: per-record errors (record_errors, error_message). v9: flexible. v10: current leader and node
//! endpoints on NOT_LEADER. v11: no change (KIP-890 server side). v12: a transactional producer's
//! batches add their partitions to its transaction (KIP-890 part 2). v13: topics by id.
//! Transactional producers' batches are stored verbatim like any other; see the writer for how they
//! open a transaction on a partition.
//! acks=0 gets no response at all, as in Kafka; acks=1 and acks=all are answered after the batches are
//! durable and committed (there are no followers, so both mean the same here).
//!
//! Every batch is validated as Kafka's LogValidator does (streamhouse_protocol::validator) against its
//! topic's settings (topic_config accessors): structure and count of its records, compressed ones
//! decompressed within message.max.decompressed.bytes on the broker's blocking pool (never on the
//! runtime threads); keys on compacted topics and the KIP-937 timestamp range, with each bad record's
//! index in record_errors (KIP-467); LogAppendTime and recompression rewrite the batch (its header
//! only, unless the codec changes). A rejected partition's error_message explains it.

use bytes::Bytes;
use kafka_protocol::messages::produce_response::{
    BatchIndexAndErrorMessage, PartitionProduceResponse, TopicProduceResponse,
};
use kafka_protocol::messages::{ApiKey, ProduceRequest, ProduceResponse, RequestHeader, TopicName};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
use streamhouse_protocol::batch::{BatchError, BatchHeader};
use streamhouse_protocol::validator::{self, Rules, Validated};
use streamhouse_storage::engine::Topic;
use streamhouse_storage::AppendBatch;

use super::{str_bytes, ApiSpec, Reply};
use crate::txn::TxnPartition;
use crate::{error, topic_config, Broker};

pub const API: ApiSpec = ApiSpec {
    key: ApiKey::Produce,
    min: 3,
    max: 13,
};

/// A partition's answer: known now, rejected by validation, or the index of its batch in the append.
enum Slot {
    Error(i16, Option<String>),
    /// Refused by validation; with the partition's log start offset where Kafka reports it.
    Rejected(BatchError, i64),
    Appended(usize, i64),
}

/// A partition waiting for validation (the index of its check).
enum Validation {
    Done(Slot),
    Queued(usize),
}

type Checked = (Arc<Topic>, i32, Result<(Validated, Bytes), BatchError>);

pub fn handle(
    broker: &Arc<Broker>,
    header: &RequestHeader,
    req: ProduceRequest,
) -> Reply<ProduceResponse> {
    let version = header.request_api_version;
    let storage = &broker.storage;
    // Transactional batches are checked by the writer, at sequencing, against the transaction
    // coordinator (KIP-890's verification: the producer's ongoing transaction must hold the
    // partition), so a batch cannot join a transaction that ended while it was queued.
    let refuse_all = if !matches!(req.acks, -1..=1) {
        Some(error::INVALID_REQUIRED_ACKS)
    } else {
        None
    };
    // One "now" for the request: the append time of LogAppendTime topics and the reference of the
    // timestamp range (Kafka takes it at validation too).
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);

    let mut checks = Vec::new();
    let mut layout = Vec::with_capacity(req.topic_data.len());
    for td in req.topic_data {
        let topic = if version >= 13 {
            storage.topic_by_id(td.topic_id)
        } else {
            storage.topic(&td.name)
        };
        let unknown = if version >= 13 {
            error::UNKNOWN_TOPIC_ID
        } else {
            error::UNKNOWN_TOPIC_OR_PARTITION
        };
        let mut slots = Vec::with_capacity(td.partition_data.len());
        for pd in td.partition_data {
            let slot = match (&refuse_all, &topic) {
                (Some(code), _) => Validation::Done(Slot::Error(*code, None)),
                (None, None) => Validation::Done(Slot::Error(unknown, None)),
                // Kafka's ReplicaManager.appendToLocalLog: clients never append to an internal
                // topic, whatever the partition.
                (None, Some(t)) if crate::internal_topics::is_internal(&t.name) => {
                    Validation::Done(Slot::Error(error::INVALID_TOPIC_EXCEPTION, None))
                }
                (None, Some(t)) if pd.index < 0 || pd.index as usize >= t.partitions.len() => {
                    Validation::Done(Slot::Error(error::UNKNOWN_TOPIC_OR_PARTITION, None))
                }
                (None, Some(t)) => {
                    let rules = rules(broker, t, pd.index, now_ms);
                    checks.push(check(
                        broker.clone(),
                        t.clone(),
                        pd.index,
                        pd.records,
                        rules,
                    ));
                    Validation::Queued(checks.len() - 1)
                }
            };
            slots.push((pd.index, slot));
        }
        let (name, id) = match &topic {
            Some(t) => (t.name.clone(), t.id),
            None => (td.name.0.to_string(), td.topic_id),
        };
        layout.push((name, id, slots));
    }

    // Validation and the submit to the writer run in request order: a producer's pipelined batches
    // must reach the writer in the order sent (their sequence numbers), and the heavy checks run on
    // the blocking pool meanwhile, not on this thread.
    let broker = broker.clone();
    Reply::in_order(async move {
        let storage = &broker.storage;
        // Validations run concurrently (the heavy ones on the blocking pool), answers keep request order.
        let mut checked: Vec<Option<Checked>> = futures_util::future::join_all(checks)
            .await
            .into_iter()
            .map(Some)
            .collect();
        // Produce v12+ is a transaction.version 2 producer's (KIP-890): its transactional batches
        // add their partitions to the transaction themselves (no AddPartitionsToTxn), before they
        // reach the writer. A producer whose transaction refuses them gets the error instead.
        let refused = match (&req.transactional_id, version >= 12) {
            (Some(txn), true) => add_implicitly(&broker, txn, &checked).await,
            _ => HashMap::new(),
        };
        let mut batches = Vec::new();
        let layout: Vec<_> = layout
            .into_iter()
            .map(|(name, id, slots)| {
                let slots: Vec<(i32, Slot)> = slots
                    .into_iter()
                    .map(|(index, p)| {
                        let slot = match p {
                            Validation::Done(s) => s,
                            Validation::Queued(i) => {
                                match checked.get_mut(i).and_then(Option::take) {
                                    Some((_, _, Ok((v, _))))
                                        if refused.contains_key(&(
                                            v.header.producer_id,
                                            v.header.producer_epoch,
                                        )) =>
                                    {
                                        let key = (v.header.producer_id, v.header.producer_epoch);
                                        Slot::Error(refused[&key], None)
                                    }
                                    Some((topic, partition, Ok((v, data)))) => {
                                        batches.push(AppendBatch {
                                            topic,
                                            partition,
                                            header: v.header,
                                            data,
                                        });
                                        Slot::Appended(batches.len() - 1, v.log_append_time_ms)
                                    }
                                    Some((topic, partition, Err(e))) => {
                                        let log_start = log_start_reported(&e, &topic, partition);
                                        Slot::Rejected(e, log_start)
                                    }
                                    None => Slot::Error(error::UNKNOWN_SERVER_ERROR, None),
                                }
                            }
                        };
                        (index, slot)
                    })
                    .collect();
                (name, id, slots)
            })
            .collect();

        let ticket = if batches.is_empty() {
            None
        } else {
            Some(storage.submit(batches).await)
        };
        if req.acks == 0 {
            // No answer, but the request is not done before its batches are committed: until then its
            // bytes count against queued.max.request.bytes and the connection's window, so acks=0 cannot
            // queue unbounded data in front of the writer.
            return Reply::SilentAfter(Box::pin(async move {
                if let Some(t) = ticket {
                    t.wait().await;
                }
            }));
        }
        Reply::Later(Box::pin(async move {
            let results = match ticket {
                Some(t) => t.wait().await,
                None => Vec::new(),
            };
            let responses = layout
                .into_iter()
                .map(|(name, id, slots)| {
                    let partition_responses = slots
                        .into_iter()
                        .map(|(index, slot)| {
                            let r = PartitionProduceResponse::default()
                                .with_index(index)
                                .with_log_append_time_ms(-1)
                                .with_log_start_offset(-1)
                                .with_base_offset(-1);
                            match slot {
                                Slot::Error(code, msg) => r
                                    .with_error_code(code)
                                    .with_error_message(msg.map(|m| str_bytes(&m))),
                                Slot::Rejected(e, log_start) => rejected(r, &e, log_start),
                                Slot::Appended(i, log_append_time) => match results.get(i) {
                                    Some(Ok(o)) => r
                                        .with_base_offset(o.base_offset)
                                        .with_log_start_offset(o.log_start_offset)
                                        .with_log_append_time_ms(log_append_time),
                                    Some(Err(e)) => r
                                        .with_error_code(e.kafka_error_code())
                                        .with_error_message(Some(str_bytes(&e.to_string()))),
                                    None => r.with_error_code(error::KAFKA_STORAGE_ERROR),
                                },
                            }
                        })
                        .collect();
                    TopicProduceResponse::default()
                        .with_name(TopicName(str_bytes(&name)))
                        .with_topic_id(id)
                        .with_partition_responses(partition_responses)
                })
                .collect();
            ProduceResponse::default().with_responses(responses)
        }))
    })
}

/// KIP-890's implicit AddPartitionsToTxn for Produce v12+: the partitions of the request's
/// transactional batches are added to their producer's transaction (one call per producer id and
/// epoch, normally one). Returns the code each refused (producer id, epoch) gets, as Kafka's produce
/// path answers them: PRODUCER_FENCED as INVALID_PRODUCER_EPOCH, CONCURRENT_TRANSACTIONS as the
/// retriable NOT_ENOUGH_REPLICAS (AddPartitionsToTxnManager's mapping for produce).
async fn add_implicitly(
    broker: &Broker,
    txn: &str,
    checked: &[Option<Checked>],
) -> HashMap<(i64, i16), i16> {
    let mut by_producer: HashMap<(i64, i16), Vec<TxnPartition>> = HashMap::new();
    for (topic, partition, result) in checked.iter().flatten() {
        if let Ok((v, _)) = result {
            if v.header.is_transactional() {
                by_producer
                    .entry((v.header.producer_id, v.header.producer_epoch))
                    .or_default()
                    .push(TxnPartition {
                        topic: topic.name.clone(),
                        partition: *partition,
                        topic_id: topic.id,
                    });
            }
        }
    }
    let mut refused = HashMap::new();
    for ((pid, epoch), partitions) in by_producer {
        if let Err(code) = broker.txns.add(txn, pid, epoch, partitions, None).await {
            let code = match code {
                error::PRODUCER_FENCED => error::INVALID_PRODUCER_EPOCH,
                error::CONCURRENT_TRANSACTIONS => error::NOT_ENOUGH_REPLICAS,
                c => c,
            };
            refused.insert((pid, epoch), code);
        }
    }
    refused
}

/// The topic's rules for one partition's batch (topic setting, else broker setting, else Kafka's).
fn rules(broker: &Broker, topic: &Topic, partition: i32, now_ms: i64) -> Rules {
    let (c, b) = (&topic.configs, &broker.config);
    Rules {
        topic_partition: format!("{}-{partition}", topic.name),
        now_ms,
        timestamp_type: topic_config::message_timestamp_type(c, b),
        timestamp_before_max_ms: topic_config::message_timestamp_before_max_ms(c, b),
        timestamp_after_max_ms: topic_config::message_timestamp_after_max_ms(c, b),
        compacted: topic_config::is_compacted(c, b),
        target: topic_config::compression_type(c, b),
        max_message_bytes: topic_config::max_message_bytes(c, b),
        max_decompressed_bytes: broker.inflater.max_bytes(),
    }
}

/// The checks Kafka makes before appending: size (RecordTooLargeException), the header, then the
/// records, on the blocking pool when that decompresses or compresses.
async fn check(
    broker: Arc<Broker>,
    topic: Arc<Topic>,
    partition: i32,
    records: Option<Bytes>,
    rules: Rules,
) -> Checked {
    let result = match records {
        None => Err(BatchError::Corrupt("no records")),
        Some(data) if data.len() > rules.max_message_bytes.max(0) as usize => {
            Err(BatchError::TooLarge {
                size: data.len(),
                max: rules.max_message_bytes,
            })
        }
        // The header decides where validation runs; validation itself checks it (CRC included).
        Some(data) => match BatchHeader::parse(&data) {
            Some(h) if validator::is_heavy(&h, &rules) => broker
                .inflater
                .run(move |_| validated(data, &rules))
                .await
                .unwrap_or(Err(BatchError::Corrupt("validation did not finish"))),
            _ => validated(data, &rules),
        },
    };
    (topic, partition, result)
}

fn validated(data: Bytes, rules: &Rules) -> Result<(Validated, Bytes), BatchError> {
    let mut v = validator::validate(&data, rules)?;
    let data = v.rewritten.take().map_or(data, Bytes::from);
    Ok((v, data))
}

/// Kafka reports the log start offset with a validation failure, but not with the errors it answers
/// without touching the log (CORRUPT_MESSAGE, MESSAGE_TOO_LARGE: ReplicaManager.appendToLocalLog).
fn log_start_reported(e: &BatchError, topic: &Topic, partition: i32) -> i64 {
    match e {
        BatchError::Corrupt(_)
        | BatchError::TooLarge { .. }
        | BatchError::DecompressedTooLarge(_) => -1,
        _ => topic
            .partitions
            .get(partition as usize)
            .map_or(-1, |p| p.log_start_offset()),
    }
}

/// A validation failure: the error, its message, and (KIP-467, Produce v8+) the bad records.
fn rejected(
    r: PartitionProduceResponse,
    e: &BatchError,
    log_start: i64,
) -> PartitionProduceResponse {
    let record_errors = e
        .record_errors()
        .iter()
        .map(|re| {
            BatchIndexAndErrorMessage::default()
                .with_batch_index(re.batch_index)
                .with_batch_index_error_message(Some(str_bytes(&re.message)))
        })
        .collect();
    r.with_error_code(e.kafka_error_code())
        .with_error_message(Some(str_bytes(&e.to_string())))
        .with_record_errors(record_errors)
        .with_log_start_offset(log_start)
}
