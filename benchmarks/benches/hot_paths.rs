//! Hot paths, measured alone: request decode, produce append (batch -> segment block), fetch (cached
//! block -> response), and block encode/decode with and without LZ4.
//! `cargo bench -p streamhouse-benchmarks`; the test command runs it once in `--test` mode.

use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use kafka_protocol::messages::{produce_request, ApiKey, FetchResponse, ProduceRequest, TopicName};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::Compression;
use streamhouse_protocol::{batch, codec};
use streamhouse_storage::segment::{decode_block, encode_block, BlockMeta};
use streamhouse_storage::{AppendBatch, Isolation, Storage, StorageConfig};
use streamhouse_test_support::batch::{BatchBuilder, Record};
use streamhouse_test_support::frame::request_bytes;

/// A producer's batch: `n` records of `size` bytes of text-like (compressible) payload.
fn record_batch(n: usize, size: usize, compression: Compression) -> Bytes {
    BatchBuilder::new()
        .compression(compression)
        .records((0..n).map(|i| {
            Record::at(1_700_000_000_000 + i as i64)
                .key(format!("key-{}", i % 100))
                .value(format!(
                    "{{\"order\":{i},\"payload\":\"{}\"}}",
                    "abcdefgh".repeat(size / 8)
                ))
        }))
        .build()
}

/// A Produce v9 request as the broker's decoder gets it (header and body, no size prefix).
fn produce_frame(batch: Bytes) -> Bytes {
    let req = ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(30_000)
        .with_topic_data(vec![produce_request::TopicProduceData::default()
            .with_name(TopicName(StrBytes::from_static_str("bench")))
            .with_partition_data(vec![
                produce_request::PartitionProduceData::default()
                    .with_index(0)
                    .with_records(Some(batch)),
            ])]);
    request_bytes(Some("bench"), ApiKey::Produce, 9, 1, &req).freeze()
}

fn request_decode(c: &mut Criterion) {
    let frame = produce_frame(record_batch(160, 100, Compression::None));
    let mut g = c.benchmark_group("request_decode");
    g.throughput(Throughput::Bytes(frame.len() as u64));
    g.bench_function("produce_v9_16KiB", |b| {
        b.iter(|| {
            let raw = codec::decode_request_header(black_box(frame.clone())).expect("header");
            let req: ProduceRequest = codec::decode_body(raw.body, 9, "Produce").expect("body");
            black_box(req)
        })
    });
    g.finish();
}

fn meta() -> BlockMeta {
    BlockMeta {
        topic_id: Default::default(),
        partition: 0,
        base_offset: 0,
        last_offset: 0,
        max_timestamp: 0,
        segment_id: 1,
        position: 32,
        stored_len: 0,
        raw_len: 0,
        codec: 0,
        crc: 0,
    }
}

fn produce_append(c: &mut Criterion) {
    let mut g = c.benchmark_group("produce_append");
    for (name, compression) in [
        ("uncompressed", Compression::None),
        ("zstd", Compression::Zstd),
    ] {
        let data = record_batch(160, 100, compression);
        g.throughput(Throughput::Bytes(data.len() as u64));
        // What the writer does per batch: validate, copy into the partition's block, patch offsets,
        // then encode the block (LZ4 when the producer sent it uncompressed).
        g.bench_function(BenchmarkId::new("validate_patch_encode", name), |b| {
            b.iter(|| {
                let h = batch::validate_produce_batch(black_box(&data)).expect("valid");
                let mut raw = data.to_vec();
                batch::patch_offsets(&mut raw, 1000, 0);
                black_box(encode_block(meta(), &raw, h.compression() == 0))
            })
        });
    }
    g.finish();
}

fn segment_blocks(c: &mut Criterion) {
    let mut g = c.benchmark_group("segment_block");
    let mut raw = Vec::new();
    while raw.len() < 256 * 1024 {
        raw.extend_from_slice(&record_batch(160, 100, Compression::None));
    }
    g.throughput(Throughput::Bytes(raw.len() as u64));
    for (name, lz4) in [("lz4", true), ("plain", false)] {
        g.bench_function(BenchmarkId::new("encode", name), |b| {
            b.iter(|| black_box(encode_block(meta(), black_box(&raw), lz4)))
        });
        let (bytes, m) = encode_block(meta(), &raw, lz4);
        g.bench_function(BenchmarkId::new("decode", name), |b| {
            b.iter(|| black_box(decode_block(&m, black_box(&bytes)).expect("decode")))
        });
    }
    g.finish();
}

fn fetch(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let storage = rt.block_on(async {
        let s = Storage::open(StorageConfig::new(dir.path()))
            .await
            .expect("open");
        s.create_topic("bench", 1, Default::default())
            .await
            .expect("topic");
        let topic = s.topic("bench").expect("topic");
        for _ in 0..64 {
            let data = record_batch(160, 100, Compression::None);
            let header = batch::validate_produce_batch(&data).expect("valid");
            s.append(vec![AppendBatch {
                topic: topic.clone(),
                partition: 0,
                header,
                data,
            }])
            .await;
        }
        s
    });
    let topic = storage.topic("bench").expect("topic");
    let partition = topic.partitions[0].clone();
    let mut g = c.benchmark_group("fetch");
    g.throughput(Throughput::Bytes(1 << 20));
    // Cached blocks -> whole batches from the middle of the log -> encoded FetchResponse v12.
    g.bench_function("cached_1MiB_to_response", |b| {
        b.iter(|| {
            rt.block_on(async {
                let r = storage
                    .read(&partition, 1_000, 1 << 20, true, Isolation::ReadUncommitted)
                    .await
                    .expect("read");
                let resp = FetchResponse::default().with_responses(vec![
                    kafka_protocol::messages::fetch_response::FetchableTopicResponse::default()
                        .with_topic(TopicName(StrBytes::from_static_str("bench")))
                        .with_partitions(vec![
                            kafka_protocol::messages::fetch_response::PartitionData::default()
                                .with_records(Some(r.records)),
                        ]),
                ]);
                black_box(codec::encode_response(1, 12, &resp).expect("encode"))
            })
        })
    });
    g.finish();
}

criterion_group!(
    benches,
    request_decode,
    produce_append,
    segment_blocks,
    fetch
);
criterion_main!(benches);
