//! Shared by the record-validation tests: an in-process broker over real sockets (its `Broker` kept,
//! so a test can plant batches in storage past produce validation), a minimal client, and batches made
//! by hand (compression bombs, forged counts, garbage flagged as compressed).
#![allow(dead_code)]

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use streamhouse_broker::config::BrokerConfig;
use streamhouse_broker::server::Server;
use streamhouse_broker::Broker;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub struct TestBroker {
    pub addr: SocketAddr,
    pub broker: Arc<Broker>,
    _dir: tempfile::TempDir,
    _stop: tokio::sync::oneshot::Sender<()>,
}

pub async fn start_with(tweak: impl FnOnce(&mut BrokerConfig)) -> TestBroker {
    let dir = tempfile::tempdir().unwrap();
    let mut config = BrokerConfig::for_tests(dir.path().to_path_buf());
    tweak(&mut config);
    let listener = streamhouse_broker::server::listen(&mut config)
        .await
        .unwrap();
    let broker = Broker::open(config).await.unwrap();
    let server = Server::new(listener, broker.clone());
    let addr = server.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.run(async move {
        let _ = rx.await;
    }));
    TestBroker {
        addr,
        broker,
        _dir: dir,
        _stop: tx,
    }
}

pub struct Client {
    stream: TcpStream,
    next_id: i32,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        Client {
            stream: TcpStream::connect(addr).await.unwrap(),
            next_id: 1,
        }
    }

    /// Sends a request and returns the response body, or None if the broker closed the connection.
    pub async fn call<Req: Encodable, Resp: Decodable>(
        &mut self,
        key: ApiKey,
        version: i16,
        req: &Req,
    ) -> Option<Resp> {
        let id = self.next_id;
        self.next_id += 1;
        let header = RequestHeader::default()
            .with_request_api_key(key as i16)
            .with_request_api_version(version)
            .with_correlation_id(id)
            .with_client_id(Some(StrBytes::from_static_str("records-test")));
        let mut body = BytesMut::new();
        header
            .encode(&mut body, key.request_header_version(version))
            .unwrap();
        req.encode(&mut body, version).unwrap();
        let mut frame = BytesMut::new();
        frame.put_i32(body.len() as i32);
        frame.put_slice(&body);
        self.stream.write_all(&frame).await.ok()?;
        let mut len = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(30), self.stream.read_exact(&mut len))
            .await
            .ok()?
            .ok()?;
        let mut buf = vec![0u8; i32::from_be_bytes(len) as usize];
        self.stream.read_exact(&mut buf).await.ok()?;
        let mut resp = Bytes::from(buf);
        assert_eq!(resp.get_i32(), id, "correlation id");
        if key.response_header_version(version) >= 1 {
            resp.get_u8();
        }
        Some(Resp::decode(&mut resp, version).unwrap())
    }
}

pub fn topic(name: &str) -> TopicName {
    TopicName(StrBytes::from_string(name.to_string()))
}

/// Creates a topic with one partition and the given configs; returns its id.
pub async fn create(c: &mut Client, name: &str, configs: &[(&str, &str)]) -> uuid::Uuid {
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

/// A batch of records with the given keys (`None`: no key), record i stamped `base_ts + deltas[i]`.
pub fn batch_of(keys: &[Option<&str>], base_ts: i64, deltas: &[i64], c: Compression) -> Bytes {
    let recs: Vec<Record> = keys
        .iter()
        .zip(deltas)
        .enumerate()
        .map(|(i, (k, d))| Record {
            transactional: false,
            control: false,
            partition_leader_epoch: -1,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            sequence: i as i32,
            timestamp: base_ts + d,
            key: k.map(|k| Bytes::from(k.to_string())),
            value: Some(Bytes::from(format!("value-{i}"))),
            headers: [(
                StrBytes::from_static_str("h"),
                Some(Bytes::from(format!("{i}"))),
            )]
            .into_iter()
            .collect(),
            delete_horizon: false,
        })
        .collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        &recs,
        &RecordEncodeOptions {
            version: 2,
            compression: c,
        },
    )
    .unwrap();
    buf.freeze()
}

pub fn batch(n: usize, c: Compression) -> Bytes {
    let keys: Vec<String> = (0..n).map(|i| format!("key-{i}")).collect();
    let keys: Vec<Option<&str>> = keys.iter().map(|k| Some(k.as_str())).collect();
    batch_of(&keys, now_ms(), &vec![0; n], c)
}

/// Re-signs a batch after its header or payload was changed.
pub fn refresh_crc(b: &mut [u8]) {
    let crc = crc32c::crc32c(&b[21..]);
    b[17..21].copy_from_slice(&crc.to_be_bytes());
}

/// A batch with the header of `like` (its count, timestamps, producer fields), codec `codec` and
/// `payload` as its records, signed.
pub fn with_payload(like: &[u8], codec: i16, payload: &[u8]) -> Bytes {
    let mut b = like[..61].to_vec();
    b.extend_from_slice(payload);
    let len = (b.len() - 12) as i32;
    b[8..12].copy_from_slice(&len.to_be_bytes());
    let a = (i16::from_be_bytes([b[21], b[22]]) & !7) | codec;
    b[21..23].copy_from_slice(&a.to_be_bytes());
    refresh_crc(&mut b);
    Bytes::from(b)
}

/// A zstd frame inflating to `zeros` zero bytes after `prefix`, made of RLE blocks (4 bytes per
/// 128 KiB): 32 GiB costs 1 MiB and no CPU to make.
pub fn zstd_rle_bomb(prefix: &[u8], zeros: u64) -> Vec<u8> {
    const BLOCK: u64 = 128 << 10;
    // Magic, then a frame header descriptor without content size, checksum or dictionary, and a
    // window descriptor for 2^17 bytes (exponent 7).
    let mut f = vec![0x28, 0xB5, 0x2F, 0xFD, 0x00, 0x38];
    let block = |f: &mut Vec<u8>, kind: u32, size: u64, last: bool| {
        let h = (last as u32) | (kind << 1) | ((size as u32) << 3);
        f.extend_from_slice(&h.to_le_bytes()[..3]);
    };
    block(&mut f, 0, prefix.len() as u64, zeros == 0);
    f.extend_from_slice(prefix);
    let mut left = zeros;
    while left > 0 {
        let n = left.min(BLOCK);
        left -= n;
        block(&mut f, 1, n, left == 0);
        f.push(0);
    }
    f
}

/// A zstd batch of one record that claims 2^31-1 bytes and inflates to `inflated` bytes (zeros after
/// the record's length): the reader must give up at the bound, whatever the header says.
pub fn zstd_bomb_batch(inflated: u64) -> Bytes {
    // Stamped ahead of anything produced just before (within the one-hour after.max.ms).
    let like = batch_of(&[Some("k")], now_ms() + 10_000, &[0], Compression::None);
    // Zig-zag varint of i32::MAX.
    let prefix = [0xfe, 0xff, 0xff, 0xff, 0x0f];
    with_payload(
        &like,
        4,
        &zstd_rle_bomb(&prefix, inflated - prefix.len() as u64),
    )
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
