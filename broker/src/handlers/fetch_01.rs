//! Fetch (key 1), versions 4-17.
//! v4: isolation level, last stable offset, aborted transactions. v5: log start offset. v7: fetch
//! sessions (KIP-227). v9: current leader epoch. v11: rack id. v12: flexible, diverging epoch.
//! v13: topic ids instead of names. v15: replica state. v16/v17: node endpoints, replica directory id.
//! At READ_COMMITTED a partition is read up to its last stable offset, with the aborted
//! transactions overlapping the returned batches (Kafka's FetchIsolation.TXN_COMMITTED); the last
//! stable offset is reported at both levels, as Kafka does.
//! Fetch sessions are declined by answering session id 0, which makes clients send full requests.
//! A fetch waits up to max_wait_ms for min_bytes, woken by commits rather than by polling storage;
//! the first partition with data returns at least one whole batch even past the byte limits (KIP-74).

use kafka_protocol::messages::fetch_response::{
    AbortedTransaction, FetchableTopicResponse, PartitionData,
};
use kafka_protocol::messages::{
    ApiKey, FetchRequest, FetchResponse, ProducerId, RequestHeader, TopicName,
};
use std::sync::Arc;
use std::time::Duration;
use streamhouse_storage::{Isolation, StorageError};

use super::{str_bytes, ApiSpec, Reply};
use crate::{error, Broker};

pub const API: ApiSpec = ApiSpec {
    key: ApiKey::Fetch,
    min: 4,
    max: 17,
};

/// Upper bound on how long one fetch may wait, whatever the client asks.
const MAX_WAIT_CAP: Duration = Duration::from_secs(30);

pub fn handle(
    broker: &Arc<Broker>,
    header: &RequestHeader,
    mut req: FetchRequest,
) -> Reply<FetchResponse> {
    let broker = broker.clone();
    let version = header.request_api_version;
    collapse_repeated_partitions(&mut req, version);
    // Kafka (KafkaApis.handleFetchRequest): fetchMaxBytes = min(request max_bytes, fetch.max.bytes),
    // fetchMinBytes = min(request min_bytes, fetchMaxBytes).
    let max_bytes = (req.max_bytes.max(0) as usize).min(broker.config.fetch_max_bytes as usize);
    req.max_bytes = max_bytes as i32;
    let min_bytes = (req.min_bytes.max(0) as usize).min(max_bytes);
    Reply::LaterHeld(Box::pin(async move {
        let mut commits = broker.storage.subscribe_commits();
        let wait = Duration::from_millis(req.max_wait_ms.max(0) as u64).min(MAX_WAIT_CAP);
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            commits.borrow_and_update();
            // Bytes for what this read can return are held (queued.max.response.bytes) before it
            // reads, and until the answer is written; waiting while nothing is there holds none.
            let mut held = broker
                .limits
                .reserve_response(bound(&broker, version, &req))
                .await;
            let (resp, bytes, errors) = read_all(&broker, version, &req).await;
            let satisfied = bytes >= min_bytes || errors;
            if satisfied || tokio::time::Instant::now() >= deadline {
                held.shrink_to(bytes + overhead(&req));
                return (resp, held);
            }
            drop((resp, held));
            // Woken by the next commit (or the deadline), then read again.
            if tokio::time::timeout_at(deadline, commits.changed())
                .await
                .is_err()
            {
                let mut held = broker
                    .limits
                    .reserve_response(bound(&broker, version, &req))
                    .await;
                let (resp, bytes, _) = read_all(&broker, version, &req).await;
                held.shrink_to(bytes + overhead(&req));
                return (resp, held);
            }
        }
    }))
}

/// Bytes of a response to `req` beside its records: per topic and partition fields.
fn overhead(req: &FetchRequest) -> usize {
    req.topics
        .iter()
        .map(|t| 64 + t.topic.len() + 96 * t.partitions.len())
        .sum()
}

/// An upper bound of the response to `req` if read now, from the block index: what [`read_all`] can
/// take from each partition (at most its limit, the first one at least one block), within max_bytes
/// plus the one block KIP-74 may let past it.
fn bound(broker: &Broker, version: i16, req: &FetchRequest) -> usize {
    let storage = &broker.storage;
    let max_bytes = req.max_bytes.max(0) as usize;
    let (mut sum, mut largest) = (0usize, 0usize);
    for ft in &req.topics {
        let topic = if version >= 13 {
            storage.topic_by_id(ft.topic_id)
        } else {
            storage.topic(&ft.topic)
        };
        let Some(topic) = topic else { continue };
        for fp in &ft.partitions {
            let index = usize::try_from(fp.partition).ok();
            let Some(partition) = index.and_then(|i| topic.partitions.get(i)) else {
                continue;
            };
            let limit = (fp.partition_max_bytes.max(0) as usize).min(max_bytes);
            let b = storage.read_bound(partition, fp.fetch_offset, limit, true);
            sum += b;
            largest = largest.max(b.saturating_sub(limit));
        }
    }
    sum.min(max_bytes + largest) + overhead(req)
}

/// One pass over every requested partition: the response, the record bytes in it, and whether any
/// partition had an error (which answers the fetch at once, as Kafka does).
async fn read_all(
    broker: &Broker,
    version: i16,
    req: &FetchRequest,
) -> (FetchResponse, usize, bool) {
    let storage = &broker.storage;
    let max_bytes = req.max_bytes.max(0) as usize;
    let mut remaining = max_bytes;
    let mut total = 0usize;
    let mut errors = false;
    let isolation = Isolation::from_wire(req.isolation_level);
    let read_committed = isolation == Isolation::ReadCommitted;
    // Partitions whose data is not cached start loading together (as far as the response can hold),
    // rather than one GET after another in the loop below (storage does nothing where reads are local).
    let mut budget = max_bytes;
    for ft in &req.topics {
        let topic = if version >= 13 {
            storage.topic_by_id(ft.topic_id)
        } else {
            storage.topic(&ft.topic)
        };
        let Some(topic) = topic else { continue };
        for fp in &ft.partitions {
            let index = usize::try_from(fp.partition).ok();
            let Some(partition) = index.and_then(|i| topic.partitions.get(i)) else {
                continue;
            };
            let limit = (fp.partition_max_bytes.max(0) as usize).min(budget);
            storage.prefetch(partition, fp.fetch_offset, limit);
            budget = budget.saturating_sub(limit);
        }
    }
    let mut responses = Vec::with_capacity(req.topics.len());
    for ft in &req.topics {
        let topic = if version >= 13 {
            storage.topic_by_id(ft.topic_id)
        } else {
            storage.topic(&ft.topic)
        };
        let mut partitions = Vec::with_capacity(ft.partitions.len());
        for fp in &ft.partitions {
            let mut pd = PartitionData::default()
                .with_partition_index(fp.partition)
                .with_high_watermark(-1)
                .with_last_stable_offset(-1)
                .with_log_start_offset(-1)
                .with_preferred_read_replica(kafka_protocol::messages::BrokerId(-1))
                .with_aborted_transactions(if read_committed { Some(vec![]) } else { None });
            let partition = topic.as_ref().and_then(|t| {
                t.partitions
                    .get(fp.partition.max(0) as usize)
                    .filter(|_| fp.partition >= 0)
            });
            let Some(partition) = partition else {
                errors = true;
                let code = if version >= 13 && topic.is_none() {
                    error::UNKNOWN_TOPIC_ID
                } else {
                    error::UNKNOWN_TOPIC_OR_PARTITION
                };
                partitions.push(
                    pd.with_error_code(code)
                        .with_records(Some(Default::default())),
                );
                continue;
            };
            let limit = (fp.partition_max_bytes.max(0) as usize).min(remaining);
            match storage
                .read(partition, fp.fetch_offset, limit, total == 0, isolation)
                .await
            {
                Ok(r) => {
                    total += r.records.len();
                    remaining = remaining.saturating_sub(r.records.len());
                    pd = pd
                        .with_high_watermark(r.high_watermark)
                        .with_last_stable_offset(r.last_stable_offset)
                        .with_log_start_offset(r.log_start_offset)
                        .with_records(Some(r.records));
                    if read_committed {
                        pd = pd.with_aborted_transactions(Some(
                            r.aborted
                                .iter()
                                .map(|a| {
                                    AbortedTransaction::default()
                                        .with_producer_id(ProducerId(a.producer_id))
                                        .with_first_offset(a.first_offset)
                                })
                                .collect(),
                        ));
                    }
                }
                Err(e) => {
                    errors = true;
                    if let StorageError::OffsetOutOfRange {
                        log_start,
                        high_watermark,
                        ..
                    } = e
                    {
                        pd = pd
                            .with_high_watermark(high_watermark)
                            .with_last_stable_offset(partition.last_stable_offset())
                            .with_log_start_offset(log_start);
                    }
                    pd = pd
                        .with_error_code(e.kafka_error_code())
                        .with_records(Some(Default::default()));
                }
            }
            partitions.push(pd);
        }
        let name = topic
            .as_ref()
            .map(|t| t.name.clone())
            .unwrap_or_else(|| ft.topic.0.to_string());
        responses.push(
            FetchableTopicResponse::default()
                .with_topic(TopicName(str_bytes(&name)))
                .with_topic_id(ft.topic_id)
                .with_partitions(partitions),
        );
    }
    (
        FetchResponse::default()
            .with_session_id(0)
            .with_responses(responses),
        total,
        errors,
    )
}

/// A partition named twice is read once: Kafka keys a full fetch request's partitions by topic and
/// partition (FetchRequest.fetchData, a LinkedHashMap), so a repeat takes the first one's place with
/// the last one's parameters, and adjacent partitions of one topic share a topic entry in the response.
fn collapse_repeated_partitions(req: &mut FetchRequest, version: i16) {
    use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
    use std::collections::HashMap;
    let mut flat: Vec<(FetchTopic, FetchPartition)> = Vec::new();
    let mut at: HashMap<(String, uuid::Uuid, i32), usize> = HashMap::new();
    for mut t in std::mem::take(&mut req.topics) {
        let partitions = std::mem::take(&mut t.partitions);
        for p in partitions {
            // v13+ names topics by id only; before, by name only.
            let key = if version >= 13 {
                (String::new(), t.topic_id, p.partition)
            } else {
                (t.topic.0.to_string(), uuid::Uuid::nil(), p.partition)
            };
            match at.get(&key) {
                Some(&i) => {
                    flat[i].1 = p;
                }
                None => {
                    at.insert(key, flat.len());
                    flat.push((t.clone(), p));
                }
            }
        }
    }
    for (t, p) in flat {
        let same_topic = req
            .topics
            .last()
            .is_some_and(|last: &FetchTopic| last.topic == t.topic && last.topic_id == t.topic_id);
        if same_topic {
            if let Some(last) = req.topics.last_mut() {
                last.partitions.push(p);
            }
        } else {
            req.topics.push(t.with_partitions(vec![p]));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};

    fn topic(name: &str, parts: &[(i32, i64)]) -> FetchTopic {
        FetchTopic::default()
            .with_topic(TopicName(str_bytes(name)))
            .with_partitions(
                parts
                    .iter()
                    .map(|(p, o)| {
                        FetchPartition::default()
                            .with_partition(*p)
                            .with_fetch_offset(*o)
                    })
                    .collect(),
            )
    }

    #[test]
    fn repeated_partitions_collapse_in_first_place_with_last_values() {
        let mut req = FetchRequest::default().with_topics(vec![
            topic("a", &[(0, 1), (1, 1), (0, 2)]),
            topic("b", &[(0, 5)]),
            topic("a", &[(1, 9), (2, 3)]),
        ]);
        collapse_repeated_partitions(&mut req, 12);
        let got: Vec<(String, Vec<(i32, i64)>)> = req
            .topics
            .iter()
            .map(|t| {
                (
                    t.topic.0.to_string(),
                    t.partitions
                        .iter()
                        .map(|p| (p.partition, p.fetch_offset))
                        .collect(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("a".to_string(), vec![(0, 2), (1, 9)]),
                ("b".to_string(), vec![(0, 5)]),
                ("a".to_string(), vec![(2, 3)]),
            ]
        );
    }
}
