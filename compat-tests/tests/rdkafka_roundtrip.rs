//! The `rdkafka` crate (librdkafka built from source) against an in-process StreamHouse:
//! 10,000 keyed records with headers to a 3-partition topic come back exactly.

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::HashMap;
use std::time::{Duration, Instant};

const RECORDS: usize = 10_000;
const PARTITIONS: i32 = 3;

#[derive(Debug, Clone, PartialEq)]
struct Sent {
    partition: i32,
    offset: i64,
    key: Vec<u8>,
    value: Vec<u8>,
    headers: Vec<(String, Vec<u8>)>,
    timestamp: i64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_keyed_records_with_headers_round_trip() {
    let broker = streamhouse_test_support::broker::start().await;
    let bootstrap = broker.addr.to_string();

    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .unwrap();
    let created = admin
        .create_topics(
            &[NewTopic::new("rd", PARTITIONS, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await
        .unwrap();
    assert!(created.iter().all(|r| r.is_ok()), "{created:?}");

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .create()
        .unwrap();
    let base_ts = 1_700_000_000_000i64;
    let mut futures = Vec::with_capacity(RECORDS);
    for i in 0..RECORDS {
        let key = format!("key-{}", i % 97);
        let value = format!("value-{i}-{}", "x".repeat(i % 50));
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "seq",
                value: Some(i.to_string().as_bytes()),
            })
            .insert(Header {
                key: "empty",
                value: Some(&b""[..]),
            });
        let record = FutureRecord::to("rd")
            .key(&key)
            .payload(&value)
            .headers(headers)
            .timestamp(base_ts + i as i64);
        let fut = producer.send_result(record).map_err(|(e, _)| e).unwrap();
        futures.push((i, key, value, fut));
    }
    let mut sent: HashMap<(i32, i64), Sent> = HashMap::new();
    for (i, key, value, fut) in futures {
        let delivery = fut.await.unwrap().map_err(|(e, _)| e).unwrap();
        sent.insert(
            (delivery.partition, delivery.offset),
            Sent {
                partition: delivery.partition,
                offset: delivery.offset,
                key: key.into_bytes(),
                value: value.into_bytes(),
                headers: vec![
                    ("seq".into(), i.to_string().into_bytes()),
                    ("empty".into(), vec![]),
                ],
                timestamp: base_ts + i as i64,
            },
        );
    }
    assert_eq!(
        sent.len(),
        RECORDS,
        "every record acknowledged at a distinct offset"
    );
    // Offsets per partition are contiguous from 0.
    for p in 0..PARTITIONS {
        let mut offsets: Vec<i64> = sent
            .keys()
            .filter(|(pp, _)| *pp == p)
            .map(|(_, o)| *o)
            .collect();
        offsets.sort();
        assert_eq!(
            offsets,
            (0..offsets.len() as i64).collect::<Vec<_>>(),
            "partition {p}"
        );
    }

    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", "unused-no-subscribe")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset("rd", p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut got: HashMap<(i32, i64), Sent> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while got.len() < RECORDS && Instant::now() < deadline {
        let Some(msg) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let msg = msg.unwrap();
        let headers = msg
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
                    .collect()
            })
            .unwrap_or_default();
        let r = Sent {
            partition: msg.partition(),
            offset: msg.offset(),
            key: msg.key().unwrap_or_default().to_vec(),
            value: msg.payload().unwrap_or_default().to_vec(),
            headers,
            timestamp: msg.timestamp().to_millis().unwrap_or(-1),
        };
        assert!(
            got.insert((r.partition, r.offset), r).is_none(),
            "no record twice"
        );
    }
    assert_eq!(got.len(), RECORDS);
    for (k, s) in &sent {
        assert_eq!(got.get(k), Some(s), "record at {k:?}");
    }
    drop(broker);
}
