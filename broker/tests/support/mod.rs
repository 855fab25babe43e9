//! Shared by the broker's end-to-end tests (`mod support;`): streamhouse-test-support's in-process
//! broker, client and batch builder re-exported, plus the broker tests' own vocabulary on top of them:
//! topic helpers, produce / list-offsets / fetch calls, and the batches they send (ordinary ones,
//! compression bombs; forged counts and garbage flagged as compressed are made from these).
#![allow(dead_code, unused_imports)]

use bytes::Bytes;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
pub use streamhouse_test_support::batch::{
    sign, with_payload, zstd_rle, BatchBuilder, Compression, Record, HEADER_LEN,
};
pub use streamhouse_test_support::broker::{start, start_with, start_with_settings, TestBroker};
pub use streamhouse_test_support::frame::{frame, frame_as, Client};

pub fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}

pub fn group(name: &str) -> GroupId {
    GroupId(s(name))
}

/// Creates a topic of `partitions` partitions; returns its id.
pub async fn create(c: &mut Client, name: &str, partitions: i32) -> uuid::Uuid {
    let req = CreateTopicsRequest::default()
        .with_timeout_ms(60_000)
        .with_topics(vec![create_topics_request::CreatableTopic::default()
            .with_name(topic(name))
            .with_num_partitions(partitions)
            .with_replication_factor(1)]);
    let r: CreateTopicsResponse = c.must(ApiKey::CreateTopics, 7, &req).await;
    assert_eq!(r.topics[0].error_code, 0, "{:?}", r.topics[0].error_message);
    r.topics[0].topic_id
}

pub fn topic(name: &str) -> TopicName {
    TopicName(StrBytes::from_string(name.to_string()))
}

/// Creates a topic with one partition and the given configs; returns its id.
pub async fn create_with_configs(
    c: &mut Client,
    name: &str,
    configs: &[(&str, &str)],
) -> uuid::Uuid {
    let configs = configs
        .iter()
        .map(|(k, v)| {
            create_topics_request::CreatableTopicConfig::default()
                .with_name(StrBytes::from_string(k.to_string()))
                .with_value(Some(StrBytes::from_string(v.to_string())))
        })
        .collect();
    let req = CreateTopicsRequest::default()
        .with_timeout_ms(5000)
        .with_topics(vec![create_topics_request::CreatableTopic::default()
            .with_name(topic(name))
            .with_num_partitions(1)
            .with_replication_factor(1)
            .with_configs(configs)]);
    let r: CreateTopicsResponse = c.call(ApiKey::CreateTopics, 7, &req).await.unwrap();
    assert_eq!(r.topics[0].error_code, 0, "{:?}", r.topics[0].error_message);
    r.topics[0].topic_id
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// A batch of records with the given keys (`None`: no key), record i stamped `base_ts + deltas[i]`,
/// valued `value-<i>`, with header `h` = `<i>`.
pub fn batch_of(keys: &[Option<&str>], base_ts: i64, deltas: &[i64], c: Compression) -> Bytes {
    BatchBuilder::new()
        .compression(c)
        .records(keys.iter().zip(deltas).enumerate().map(|(i, (k, d))| {
            let r = Record::at(base_ts + d)
                .value(format!("value-{i}"))
                .header("h", format!("{i}"));
            match k {
                Some(k) => r.key(k.to_string()),
                None => r,
            }
        }))
        .build()
}

/// `n` records keyed `key-<i>`, stamped now.
pub fn batch(n: usize, c: Compression) -> Bytes {
    let keys: Vec<String> = (0..n).map(|i| format!("key-{i}")).collect();
    let keys: Vec<Option<&str>> = keys.iter().map(|k| Some(k.as_str())).collect();
    batch_of(&keys, now_ms(), &vec![0; n], c)
}

/// A zstd batch of one record that claims 2^31-1 bytes and inflates to `inflated` bytes (zeros after
/// the record's length): the reader must give up at the bound, whatever the header says.
pub fn zstd_bomb_batch(inflated: u64) -> Bytes {
    // Stamped ahead of anything produced just before (within the one-hour after.max.ms).
    let like = batch_of(&[Some("k")], now_ms() + 10_000, &[0], Compression::None);
    // Zig-zag varint of i32::MAX.
    let prefix = [0xfe, 0xff, 0xff, 0xff, 0x0f];
    with_payload(&like, 4, &zstd_rle(&prefix, inflated - prefix.len() as u64))
}

pub fn produce_request(t: &str, data: Bytes) -> ProduceRequest {
    ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(5000)
        .with_topic_data(vec![produce_request::TopicProduceData::default()
            .with_name(topic(t))
            .with_partition_data(vec![
                produce_request::PartitionProduceData::default()
                    .with_index(0)
                    .with_records(Some(data)),
            ])])
}

/// Produces one batch at `version`; returns the partition's answer.
pub async fn produce(
    c: &mut Client,
    version: i16,
    t: &str,
    data: Bytes,
) -> produce_response::PartitionProduceResponse {
    let r: ProduceResponse = c
        .call(ApiKey::Produce, version, &produce_request(t, data))
        .await
        .expect("broker answers");
    r.responses[0].partition_responses[0].clone()
}

/// ListOffsets (v8) for one timestamp query; returns (error, offset, timestamp).
pub async fn list_offset(c: &mut Client, t: &str, timestamp: i64) -> (i16, i64, i64) {
    let r: ListOffsetsResponse = c
        .call(
            ApiKey::ListOffsets,
            8,
            &ListOffsetsRequest::default().with_topics(vec![
                list_offsets_request::ListOffsetsTopic::default()
                    .with_name(topic(t))
                    .with_partitions(vec![list_offsets_request::ListOffsetsPartition::default()
                        .with_timestamp(timestamp)]),
            ]),
        )
        .await
        .expect("broker answers");
    let p = &r.topics[0].partitions[0];
    (p.error_code, p.offset, p.timestamp)
}

/// The raw record batches of partition 0 from `offset` (Fetch v12).
pub async fn fetch_raw(c: &mut Client, t: &str, offset: i64) -> Bytes {
    let req = FetchRequest::default()
        .with_max_wait_ms(0)
        .with_min_bytes(1)
        .with_max_bytes(1 << 20)
        .with_topics(vec![fetch_request::FetchTopic::default()
            .with_topic(topic(t))
            .with_partitions(vec![fetch_request::FetchPartition::default()
                .with_partition(0)
                .with_fetch_offset(offset)
                .with_partition_max_bytes(1 << 20)])]);
    let r: FetchResponse = c.call(ApiKey::Fetch, 12, &req).await.unwrap();
    let p = &r.responses[0].partitions[0];
    assert_eq!(p.error_code, 0);
    p.records.clone().unwrap_or_default()
}
