//! Produce (key 0), versions 3-13.
//! v3: transactional id, magic v2 record batches only. v5: log_start_offset in the response.
//! v8: per-record errors (record_errors, error_message). v9: flexible. v10: current leader and node
//! endpoints on NOT_LEADER. v11: no change (KIP-890 server side). v12: no change. v13: topics by id.
//! acks=0 gets no response at all, as in Kafka; acks=1 and acks=all are answered after the batches are
//! durable and committed (there are no followers, so both mean the same here).

use bytes::Bytes;
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{ApiKey, ProduceRequest, ProduceResponse, RequestHeader, TopicName};
use std::sync::Arc;
use streamhouse_protocol::batch;
use streamhouse_storage::AppendBatch;

use super::{str_bytes, ApiSpec, Reply};
use crate::{error, Broker};

pub const API: ApiSpec = ApiSpec {
    key: ApiKey::Produce,
    min: 3,
    max: 13,
};

/// A partition's answer: known now, or the index of its batch in the append.
enum Slot {
    Error(i16, Option<String>),
    Appended(usize),
}

pub async fn handle(
    broker: &Arc<Broker>,
    header: &RequestHeader,
    req: ProduceRequest,
) -> Reply<ProduceResponse> {
    let version = header.request_api_version;
    let storage = &broker.storage;
    let refuse_all = if req.transactional_id.is_some() {
        // No transaction coordinator yet: refuse clearly rather than write outside a transaction.
        Some(error::TRANSACTIONAL_ID_AUTHORIZATION_FAILED)
    } else if !matches!(req.acks, -1..=1) {
        Some(error::INVALID_REQUIRED_ACKS)
    } else {
        None
    };

    let mut batches = Vec::new();
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
        let max_bytes = topic
            .as_ref()
            .and_then(|t| t.configs.get("max.message.bytes"))
            .and_then(|v| v.parse::<i32>().ok())
            .unwrap_or(broker.config.message_max_bytes);
        let mut slots = Vec::with_capacity(td.partition_data.len());
        for pd in td.partition_data {
            let slot = match (&refuse_all, &topic) {
                (Some(code), _) => Slot::Error(*code, None),
                (None, None) => Slot::Error(unknown, None),
                (None, Some(t)) if pd.index < 0 || pd.index as usize >= t.partitions.len() => {
                    Slot::Error(error::UNKNOWN_TOPIC_OR_PARTITION, None)
                }
                (None, Some(t)) => match check_records(pd.records, max_bytes) {
                    Err((code, msg)) => Slot::Error(code, Some(msg)),
                    Ok((header, data)) => {
                        batches.push(AppendBatch {
                            topic: t.clone(),
                            partition: pd.index,
                            header,
                            data,
                        });
                        Slot::Appended(batches.len() - 1)
                    }
                },
            };
            slots.push((pd.index, slot));
        }
        let (name, id) = match &topic {
            Some(t) => (t.name.clone(), t.id),
            None => (td.name.0.to_string(), td.topic_id),
        };
        layout.push((name, id, slots));
    }

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
                            Slot::Appended(i) => match results.get(i) {
                                Some(Ok(o)) => r
                                    .with_base_offset(o.base_offset)
                                    .with_log_start_offset(o.log_start_offset),
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
}

/// The checks Kafka makes before appending: size (RecordTooLargeException), then the batch itself.
fn check_records(
    records: Option<Bytes>,
    max_bytes: i32,
) -> Result<(batch::BatchHeader, Bytes), (i16, String)> {
    let data = records.ok_or((error::CORRUPT_MESSAGE, "no records".to_string()))?;
    if data.len() > max_bytes as usize {
        return Err((
            error::MESSAGE_TOO_LARGE,
            format!(
                "The record batch is {} bytes, larger than max.message.bytes {max_bytes}",
                data.len()
            ),
        ));
    }
    match batch::validate_produce_batch(&data) {
        Ok(h) => Ok((h, data)),
        Err(e) => Err((e.kafka_error_code(), e.to_string())),
    }
}
