//! End-to-end over real sockets against an in-process broker: every served API at every served
//! version gets an answer, hostile input gets an error or a closed connection and never takes the
//! broker down, and the produce/fetch basics hold.

mod support;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use std::net::SocketAddr;
use std::time::Duration;
use streamhouse_broker::handlers::SUPPORTED;
use streamhouse_test_support::frame::decode_response;
use support::*;

async fn api_versions_ok(addr: SocketAddr) {
    let mut c = Client::connect(addr).await;
    let r: ApiVersionsResponse = c
        .call(ApiKey::ApiVersions, 3, &ApiVersionsRequest::default())
        .await
        .expect("broker answers");
    assert_eq!(r.error_code, 0);
}

/// A produce request for partition 0 of `t` with `acks`.
fn produce_with_acks(t: &str, data: Bytes, acks: i16) -> ProduceRequest {
    produce_request(t, data).with_acks(acks)
}

fn fetch_request(t: &str, id: uuid::Uuid, offset: i64, max_wait_ms: i32) -> FetchRequest {
    FetchRequest::default()
        .with_max_wait_ms(max_wait_ms)
        .with_min_bytes(1)
        .with_max_bytes(1 << 20)
        .with_topics(vec![fetch_request::FetchTopic::default()
            .with_topic(topic(t))
            .with_topic_id(id)
            .with_partitions(vec![fetch_request::FetchPartition::default()
                .with_partition(0)
                .with_fetch_offset(offset)
                .with_partition_max_bytes(1 << 20)])])
}

#[tokio::test]
async fn every_served_version_is_answered() {
    let b = start().await;
    let mut c = Client::connect(b.addr).await;
    let id = create(&mut c, "sweep", 1).await;
    for spec in SUPPORTED {
        for v in spec.min..=spec.max {
            macro_rules! call {
                ($resp:ty, $req:expr) => {{
                    let r: Option<$resp> = c.call(spec.key, v, &$req).await;
                    assert!(r.is_some(), "{:?} v{v} got no answer", spec.key);
                }};
            }
            match spec.key {
                ApiKey::Produce => call!(ProduceResponse, {
                    let mut r = produce_with_acks("sweep", batch(2, Compression::None), 1);
                    r.topic_data[0].topic_id = id;
                    r
                }),
                ApiKey::Fetch => call!(FetchResponse, fetch_request("sweep", id, 0, 0)),
                ApiKey::ListOffsets => call!(
                    ListOffsetsResponse,
                    ListOffsetsRequest::default().with_topics(vec![
                        list_offsets_request::ListOffsetsTopic::default()
                            .with_name(topic("sweep"))
                            .with_partitions(vec![
                                list_offsets_request::ListOffsetsPartition::default()
                                    .with_timestamp(-1)
                            ])
                    ])
                ),
                ApiKey::Metadata => call!(
                    MetadataResponse,
                    MetadataRequest::default().with_topics(if v == 0 {
                        Some(vec![])
                    } else {
                        None
                    })
                ),
                ApiKey::ApiVersions => call!(ApiVersionsResponse, ApiVersionsRequest::default()),
                ApiKey::CreateTopics => call!(
                    CreateTopicsResponse,
                    CreateTopicsRequest::default().with_topics(vec![
                        create_topics_request::CreatableTopic::default()
                            .with_name(topic(&format!("sweep-{v}")))
                            .with_num_partitions(1)
                            .with_replication_factor(1)
                    ])
                ),
                ApiKey::DeleteTopics => call!(
                    DeleteTopicsResponse,
                    DeleteTopicsRequest::default()
                        .with_topic_names(if v < 6 { vec![topic("none")] } else { vec![] })
                        .with_topics(if v >= 6 {
                            vec![delete_topics_request::DeleteTopicState::default()
                                .with_name(Some(topic("none")))]
                        } else {
                            vec![]
                        })
                ),
                ApiKey::InitProducerId => call!(
                    InitProducerIdResponse,
                    InitProducerIdRequest::default().with_transaction_timeout_ms(1000)
                ),
                ApiKey::DescribeConfigs => call!(
                    DescribeConfigsResponse,
                    DescribeConfigsRequest::default()
                        .with_include_synonyms(v >= 1)
                        .with_resources(vec![
                            describe_configs_request::DescribeConfigsResource::default()
                                .with_resource_type(2)
                                .with_resource_name(StrBytes::from_static_str("sweep")),
                            describe_configs_request::DescribeConfigsResource::default()
                                .with_resource_type(4)
                                .with_resource_name(StrBytes::from_static_str("1")),
                        ])
                ),
                ApiKey::DescribeCluster => {
                    call!(DescribeClusterResponse, DescribeClusterRequest::default())
                }
                ApiKey::OffsetCommit => call!(
                    OffsetCommitResponse,
                    OffsetCommitRequest::default()
                        .with_group_id(group("sweep-g"))
                        .with_generation_id_or_member_epoch(-1)
                        .with_topics(vec![
                            offset_commit_request::OffsetCommitRequestTopic::default()
                                .with_name(topic("sweep"))
                                .with_partitions(vec![
                                    offset_commit_request::OffsetCommitRequestPartition::default()
                                        .with_committed_offset(1)
                                        .with_committed_metadata(Some(StrBytes::from_static_str(
                                            "m"
                                        )))
                                ])
                        ])
                ),
                ApiKey::OffsetFetch => call!(
                    OffsetFetchResponse,
                    if v >= 8 {
                        OffsetFetchRequest::default().with_groups(vec![
                            offset_fetch_request::OffsetFetchRequestGroup::default()
                                .with_group_id(group("sweep-g"))
                                .with_member_epoch(-1),
                        ])
                    } else {
                        OffsetFetchRequest::default()
                            .with_group_id(group("sweep-g"))
                            .with_topics(Some(vec![
                                offset_fetch_request::OffsetFetchRequestTopic::default()
                                    .with_name(topic("sweep"))
                                    .with_partition_indexes(vec![0]),
                            ]))
                    }
                ),
                ApiKey::FindCoordinator => call!(
                    FindCoordinatorResponse,
                    if v >= 4 {
                        FindCoordinatorRequest::default()
                            .with_coordinator_keys(vec![StrBytes::from_static_str("g")])
                    } else {
                        FindCoordinatorRequest::default().with_key(StrBytes::from_static_str("g"))
                    }
                ),
                ApiKey::JoinGroup => call!(
                    JoinGroupResponse,
                    JoinGroupRequest::default()
                        .with_group_id(group("sweep-j"))
                        .with_session_timeout_ms(0)
                        .with_protocol_type(StrBytes::from_static_str("consumer"))
                ),
                ApiKey::Heartbeat => call!(
                    HeartbeatResponse,
                    HeartbeatRequest::default()
                        .with_group_id(group("sweep-j"))
                        .with_member_id(StrBytes::from_static_str("x"))
                ),
                ApiKey::LeaveGroup => call!(
                    LeaveGroupResponse,
                    if v >= 3 {
                        LeaveGroupRequest::default()
                            .with_group_id(group("sweep-j"))
                            .with_members(vec![leave_group_request::MemberIdentity::default()
                                .with_member_id(StrBytes::from_static_str("x"))])
                    } else {
                        LeaveGroupRequest::default()
                            .with_group_id(group("sweep-j"))
                            .with_member_id(StrBytes::from_static_str("x"))
                    }
                ),
                ApiKey::SyncGroup => call!(
                    SyncGroupResponse,
                    SyncGroupRequest::default()
                        .with_group_id(group("sweep-j"))
                        .with_member_id(StrBytes::from_static_str("x"))
                ),
                ApiKey::DescribeGroups => call!(
                    DescribeGroupsResponse,
                    DescribeGroupsRequest::default()
                        .with_groups(vec![group("sweep-g"), group("nope")])
                ),
                ApiKey::ListGroups => call!(ListGroupsResponse, ListGroupsRequest::default()),
                ApiKey::DeleteGroups => call!(
                    DeleteGroupsResponse,
                    DeleteGroupsRequest::default().with_groups_names(vec![group("nope")])
                ),
                ApiKey::OffsetDelete => call!(
                    OffsetDeleteResponse,
                    OffsetDeleteRequest::default()
                        .with_group_id(group("sweep-g"))
                        .with_topics(vec![
                            offset_delete_request::OffsetDeleteRequestTopic::default()
                                .with_name(topic("other"))
                                .with_partitions(vec![
                                    offset_delete_request::OffsetDeleteRequestPartition::default()
                                ])
                        ])
                ),
                ApiKey::ConsumerGroupHeartbeat => call!(
                    ConsumerGroupHeartbeatResponse,
                    ConsumerGroupHeartbeatRequest::default()
                        .with_group_id(group(&format!("sweep-c{v}")))
                        .with_member_id(StrBytes::from_string(uuid::Uuid::new_v4().to_string()))
                        .with_rebalance_timeout_ms(1000)
                        .with_subscribed_topic_names(Some(vec![topic("sweep")]))
                        .with_topic_partitions(Some(vec![]))
                ),
                ApiKey::CreatePartitions => call!(
                    CreatePartitionsResponse,
                    CreatePartitionsRequest::default().with_topics(vec![
                        create_partitions_request::CreatePartitionsTopic::default()
                            .with_name(topic("sweep"))
                            .with_count(1 + v as i32)
                    ])
                ),
                ApiKey::IncrementalAlterConfigs => call!(
                    IncrementalAlterConfigsResponse,
                    IncrementalAlterConfigsRequest::default().with_resources(vec![
                        incremental_alter_configs_request::AlterConfigsResource::default()
                            .with_resource_type(2)
                            .with_resource_name(StrBytes::from_static_str("sweep"))
                            .with_configs(vec![
                                incremental_alter_configs_request::AlterableConfig::default()
                                    .with_name(StrBytes::from_static_str("retention.ms"))
                                    .with_value(Some(StrBytes::from_static_str("1000")))
                            ])
                    ])
                ),
                ApiKey::DeleteRecords => call!(
                    DeleteRecordsResponse,
                    DeleteRecordsRequest::default().with_topics(vec![
                        delete_records_request::DeleteRecordsTopic::default()
                            .with_name(topic("sweep"))
                            .with_partitions(vec![
                                delete_records_request::DeleteRecordsPartition::default()
                                    .with_offset(1)
                            ])
                    ])
                ),
                ApiKey::DescribeLogDirs => call!(
                    DescribeLogDirsResponse,
                    DescribeLogDirsRequest::default().with_topics(None)
                ),
                ApiKey::ConsumerGroupDescribe => call!(
                    ConsumerGroupDescribeResponse,
                    ConsumerGroupDescribeRequest::default()
                        .with_group_ids(vec![group("sweep-c1"), group("sweep-g")])
                ),
                // An unknown transactional id: answered (INVALID_PRODUCER_ID_MAPPING) at every version.
                ApiKey::AddPartitionsToTxn => call!(AddPartitionsToTxnResponse, {
                    let id = TransactionalId(StrBytes::from_static_str("sweep-tx"));
                    let topics = vec![
                        add_partitions_to_txn_request::AddPartitionsToTxnTopic::default()
                            .with_name(topic("sweep"))
                            .with_partitions(vec![0]),
                    ];
                    let r = AddPartitionsToTxnRequest::default();
                    if v <= 3 {
                        r.with_v3_and_below_transactional_id(id)
                            .with_v3_and_below_topics(topics)
                    } else {
                        r.with_transactions(vec![
                            add_partitions_to_txn_request::AddPartitionsToTxnTransaction::default()
                                .with_transactional_id(id)
                                .with_topics(topics),
                        ])
                    }
                }),
                ApiKey::AddOffsetsToTxn => call!(
                    AddOffsetsToTxnResponse,
                    AddOffsetsToTxnRequest::default()
                        .with_transactional_id(TransactionalId(StrBytes::from_static_str(
                            "sweep-tx"
                        )))
                        .with_group_id(group("sweep-g"))
                ),
                ApiKey::EndTxn => call!(
                    EndTxnResponse,
                    EndTxnRequest::default().with_transactional_id(TransactionalId(
                        StrBytes::from_static_str("sweep-tx")
                    ))
                ),
                ApiKey::TxnOffsetCommit => call!(
                    TxnOffsetCommitResponse,
                    TxnOffsetCommitRequest::default()
                        .with_transactional_id(TransactionalId(StrBytes::from_static_str(
                            "sweep-tx"
                        )))
                        .with_group_id(group("sweep-g"))
                ),
                ApiKey::DescribeTransactions => call!(
                    DescribeTransactionsResponse,
                    DescribeTransactionsRequest::default().with_transactional_ids(vec![
                        TransactionalId(StrBytes::from_static_str("sweep-tx"))
                    ])
                ),
                ApiKey::ListTransactions => call!(
                    ListTransactionsResponse,
                    ListTransactionsRequest::default().with_duration_filter(if v >= 1 {
                        0
                    } else {
                        -1
                    })
                ),
                ApiKey::DescribeProducers => call!(
                    DescribeProducersResponse,
                    DescribeProducersRequest::default().with_topics(vec![
                        describe_producers_request::TopicRequest::default()
                            .with_name(topic("sweep"))
                            .with_partition_indexes(vec![0])
                    ])
                ),
                ApiKey::WriteTxnMarkers => call!(
                    WriteTxnMarkersResponse,
                    WriteTxnMarkersRequest::default().with_markers(vec![
                        write_txn_markers_request::WritableTxnMarker::default()
                            .with_producer_id(ProducerId(424242))
                            .with_topics(vec![
                                write_txn_markers_request::WritableTxnMarkerTopic::default()
                                    .with_name(topic("none"))
                                    .with_partition_indexes(vec![0])
                            ])
                    ])
                ),
                other => panic!("no sweep case for {other:?}"),
            }
        }
    }
}

#[tokio::test]
async fn produce_fetch_from_the_middle_of_a_batch_and_long_poll() {
    let b = start().await;
    let mut c = Client::connect(b.addr).await;
    let id = create(&mut c, "mid", 1).await;
    for compression in [Compression::None, Compression::Zstd] {
        let r: ProduceResponse = c
            .call(
                ApiKey::Produce,
                9,
                &produce_with_acks("mid", batch(10, compression), -1),
            )
            .await
            .unwrap();
        let p = &r.responses[0].partition_responses[0];
        assert_eq!(p.error_code, 0, "{compression:?}: {:?}", p.error_message);
    }
    // Offset 5 lies inside the first batch: the whole batch comes back, as in Kafka.
    let r: FetchResponse = c
        .call(ApiKey::Fetch, 12, &fetch_request("mid", id, 5, 0))
        .await
        .unwrap();
    let p = &r.responses[0].partitions[0];
    assert_eq!((p.error_code, p.high_watermark), (0, 20));
    let mut records = p.records.clone().unwrap();
    let sets = kafka_protocol::records::RecordBatchDecoder::decode_all(&mut records).unwrap();
    let offsets: Vec<i64> = sets
        .iter()
        .flat_map(|s| s.records.iter().map(|r| r.offset))
        .collect();
    assert_eq!(offsets, (0..20).collect::<Vec<_>>());
    assert_eq!(sets[1].records[3].value.as_deref(), Some(&b"value-3"[..]));

    // Past the end: OFFSET_OUT_OF_RANGE.
    let r: FetchResponse = c
        .call(ApiKey::Fetch, 12, &fetch_request("mid", id, 21, 0))
        .await
        .unwrap();
    assert_eq!(r.responses[0].partitions[0].error_code, 1);

    // A long-poll at the end is woken by a produce on another connection.
    let addr = b.addr;
    let producer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut p = Client::connect(addr).await;
        let _: Option<ProduceResponse> = p
            .call(
                ApiKey::Produce,
                9,
                &produce_with_acks("mid", batch(1, Compression::None), 1),
            )
            .await;
    });
    let started = std::time::Instant::now();
    let r: FetchResponse = c
        .call(ApiKey::Fetch, 12, &fetch_request("mid", id, 20, 10_000))
        .await
        .unwrap();
    assert!(
        r.responses[0].partitions[0]
            .records
            .as_ref()
            .is_some_and(|r| !r.is_empty()),
        "woken with data"
    );
    assert!(
        started.elapsed() < Duration::from_secs(9),
        "woken by the commit, not the timeout"
    );
    producer.await.unwrap();
}

#[tokio::test]
async fn hostile_input_never_takes_the_broker_down() {
    let b = start().await;

    // Garbage bytes.
    let mut c = Client::connect(b.addr).await;
    c.send_raw(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert!(c.closed().await, "garbage closes the connection");
    api_versions_ok(b.addr).await;

    // A length prefix of 0x7fffffff.
    let mut c = Client::connect(b.addr).await;
    c.send_raw(&[0x7f, 0xff, 0xff, 0xff, 0, 18, 0, 0])
        .await
        .unwrap();
    assert!(c.closed().await, "oversized frame closes the connection");
    api_versions_ok(b.addr).await;

    // A truncated frame, then the client goes away.
    let mut c = Client::connect(b.addr).await;
    c.send_raw(&[0, 0, 0, 100, 0, 18, 0, 3]).await.unwrap();
    drop(c);
    api_versions_ok(b.addr).await;

    // An unknown api key.
    let mut c = Client::connect(b.addr).await;
    c.send_raw(&[0, 0, 0, 10, 0x7f, 0x00, 0, 0, 0, 0, 0, 1, 0xff, 0xff])
        .await
        .unwrap();
    assert!(c.closed().await, "unknown api key closes the connection");
    api_versions_ok(b.addr).await;

    // A Metadata request claiming 2^31-1 topics.
    let mut c = Client::connect(b.addr).await;
    let mut f = BytesMut::new();
    f.put_i32(14);
    f.put_i16(3);
    f.put_i16(4);
    f.put_i32(9);
    f.put_i16(-1);
    f.put_i32(i32::MAX);
    c.send_raw(&f).await.unwrap();
    assert!(
        c.closed().await,
        "impossible array count closes the connection"
    );
    api_versions_ok(b.addr).await;

    // A record batch whose record count is forged under a valid CRC: INVALID_RECORD, nothing stored.
    let mut c = Client::connect(b.addr).await;
    create(&mut c, "forged", 1).await;
    let mut forged = BytesMut::from(&batch(3, Compression::None)[..]);
    forged[57..61].copy_from_slice(&1_000_000i32.to_be_bytes());
    forged[23..27].copy_from_slice(&999_999i32.to_be_bytes());
    sign(&mut forged);
    let r: ProduceResponse = c
        .call(
            ApiKey::Produce,
            9,
            &produce_with_acks("forged", forged.freeze(), -1),
        )
        .await
        .unwrap();
    assert_eq!(r.responses[0].partition_responses[0].error_code, 87);
    // A flipped byte under the old CRC: CORRUPT_MESSAGE.
    let mut bad = BytesMut::from(&batch(3, Compression::None)[..]);
    let last = bad.len() - 1;
    bad[last] ^= 0x55;
    let r: ProduceResponse = c
        .call(
            ApiKey::Produce,
            9,
            &produce_with_acks("forged", bad.freeze(), -1),
        )
        .await
        .unwrap();
    assert_eq!(r.responses[0].partition_responses[0].error_code, 2);
    let r: ListOffsetsResponse = c
        .call(
            ApiKey::ListOffsets,
            7,
            &ListOffsetsRequest::default().with_topics(vec![
                list_offsets_request::ListOffsetsTopic::default()
                    .with_name(topic("forged"))
                    .with_partitions(vec![
                        list_offsets_request::ListOffsetsPartition::default().with_timestamp(-1)
                    ]),
            ]),
        )
        .await
        .unwrap();
    assert_eq!(r.topics[0].partitions[0].offset, 0, "nothing was written");
}

#[tokio::test]
async fn message_too_large_and_unknown_topics() {
    let b = start().await;
    let mut c = Client::connect(b.addr).await;
    create(&mut c, "big", 1).await;
    let big = BatchBuilder::new()
        .record(Record::at(0).value(vec![b'x'; 2 << 20]))
        .build();
    let r: ProduceResponse = c
        .call(ApiKey::Produce, 9, &produce_with_acks("big", big, -1))
        .await
        .unwrap();
    assert_eq!(r.responses[0].partition_responses[0].error_code, 10);
    let r: ProduceResponse = c
        .call(
            ApiKey::Produce,
            9,
            &produce_with_acks("nope", batch(1, Compression::None), -1),
        )
        .await
        .unwrap();
    assert_eq!(r.responses[0].partition_responses[0].error_code, 3);
    let req = MetadataRequest::default()
        .with_allow_auto_topic_creation(false)
        .with_topics(Some(vec![metadata_request::MetadataRequestTopic::default(
        )
        .with_name(Some(topic("nope")))]));
    let r: MetadataResponse = c.call(ApiKey::Metadata, 12, &req).await.unwrap();
    assert_eq!(r.topics[0].error_code, 3);
    let req = req.with_allow_auto_topic_creation(true);
    let r: MetadataResponse = c.call(ApiKey::Metadata, 12, &req).await.unwrap();
    assert_eq!(
        (r.topics[0].error_code, r.topics[0].partitions.len()),
        (0, 1)
    );
}

#[tokio::test]
async fn acks_zero_is_silent_and_pipelined_requests_answer_in_order() {
    let b = start().await;
    let mut c = Client::connect(b.addr).await;
    create(&mut c, "quiet", 1).await;
    // acks=0: no response; the next request's answer is the next frame.
    let mut frames = BytesMut::new();
    for (i, acks) in [(100, 0i16), (101, 1)] {
        let req = produce_with_acks("quiet", batch(1, Compression::None), acks);
        frames.extend_from_slice(&frame_as(None, ApiKey::Produce, 9, i, &req));
    }
    c.send_raw(&frames).await.unwrap();
    let (id, r): (i32, ProduceResponse) =
        decode_response(ApiKey::Produce, 9, c.read_frame().await.unwrap());
    assert_eq!(id, 101);
    assert_eq!(r.responses[0].partition_responses[0].base_offset, 1);
}

// ---- issue 9: bounds on what one client can make the broker hold ---------------------------------

/// Item 3: a topic named 5,000 times in one Metadata request is answered once (it used to be answered
/// once per repetition: a 30 KB request made a multi-GB response).
#[tokio::test]
async fn metadata_with_a_repeated_topic_answers_it_once() {
    let b = start().await;
    let mut c = Client::connect(b.addr).await;
    create(&mut c, "rep", 3).await;
    let one = metadata_request::MetadataRequestTopic::default().with_name(Some(topic("rep")));
    let req = MetadataRequest::default().with_topics(Some(vec![one; 5000]));
    let r: MetadataResponse = c.call(ApiKey::Metadata, 12, &req).await.unwrap();
    assert_eq!(r.topics.len(), 1);
    assert_eq!(r.topics[0].partitions.len(), 3);
}

/// Item 3: ListOffsets answers a repeated partition once with INVALID_REQUEST, as Kafka; DeleteTopics
/// refuses a repeated name; DeleteRecords answers a repeated partition once.
#[tokio::test]
async fn list_offsets_delete_records_and_delete_topics_collapse_repeats() {
    let b = start().await;
    let mut c = Client::connect(b.addr).await;
    create(&mut c, "lo", 2).await;
    let part = |p| {
        list_offsets_request::ListOffsetsPartition::default()
            .with_partition_index(p)
            .with_timestamp(-1)
    };
    let req = ListOffsetsRequest::default().with_topics(vec![
        list_offsets_request::ListOffsetsTopic::default()
            .with_name(topic("lo"))
            .with_partitions(vec![part(0); 1000].into_iter().chain([part(1)]).collect()),
    ]);
    let r: ListOffsetsResponse = c.call(ApiKey::ListOffsets, 7, &req).await.unwrap();
    let got: Vec<(i32, i16)> = r.topics[0]
        .partitions
        .iter()
        .map(|p| (p.partition_index, p.error_code))
        .collect();
    assert_eq!(got, vec![(0, 42), (1, 0)]);

    let dp = |o| {
        delete_records_request::DeleteRecordsPartition::default()
            .with_partition_index(0)
            .with_offset(o)
    };
    let req = DeleteRecordsRequest::default().with_topics(vec![
        delete_records_request::DeleteRecordsTopic::default()
            .with_name(topic("lo"))
            .with_partitions(vec![dp(0); 500]),
    ]);
    let r: DeleteRecordsResponse = c.call(ApiKey::DeleteRecords, 2, &req).await.unwrap();
    assert_eq!(r.topics.len(), 1);
    assert_eq!(r.topics[0].partitions.len(), 1);

    let req = DeleteTopicsRequest::default()
        .with_topic_names(vec![topic("lo"), topic("lo")])
        .with_timeout_ms(5000);
    let r: DeleteTopicsResponse = c.call(ApiKey::DeleteTopics, 5, &req).await.unwrap();
    assert_eq!(r.responses.len(), 1);
    assert_eq!(r.responses[0].error_code, 42);
    let meta: MetadataResponse = c
        .call(
            ApiKey::Metadata,
            12,
            &MetadataRequest::default().with_topics(None),
        )
        .await
        .unwrap();
    assert_eq!(meta.topics.len(), 1, "a repeated name is not deleted");
}

/// Item 5: a fetch is capped by fetch.max.bytes (max_bytes <= 0 is not "unlimited") and a partition
/// named many times is read once.
#[tokio::test]
async fn fetch_is_capped_by_fetch_max_bytes_and_repeats_are_read_once() {
    let b = start_with_settings(|a| a.set("fetch_max_bytes", 20_000)).await;
    let mut c = Client::connect(b.addr).await;
    let id = create(&mut c, "big", 1).await;
    for _ in 0..20 {
        let r: ProduceResponse = c
            .call(
                ApiKey::Produce,
                9,
                &produce_with_acks("big", batch(200, Compression::None), -1),
            )
            .await
            .unwrap();
        assert_eq!(r.responses[0].partition_responses[0].error_code, 0);
    }
    let one = fetch_request::FetchPartition::default()
        .with_partition(0)
        .with_fetch_offset(0)
        .with_partition_max_bytes(i32::MAX);
    for max_bytes in [0, -1, i32::MAX] {
        let req = FetchRequest::default()
            .with_max_wait_ms(0)
            .with_max_bytes(max_bytes)
            .with_topics(vec![fetch_request::FetchTopic::default()
                .with_topic(topic("big"))
                .with_topic_id(id)
                .with_partitions(vec![one.clone(); 200])]);
        let r: FetchResponse = c.call(ApiKey::Fetch, 12, &req).await.unwrap();
        assert_eq!(r.responses.len(), 1);
        assert_eq!(r.responses[0].partitions.len(), 1, "read once");
        let records = r.responses[0].partitions[0].records.as_ref().unwrap().len();
        let one_batch = batch(200, Compression::None).len();
        assert!(records > 0, "at least one batch (KIP-74)");
        assert!(
            records <= 20_000.max(one_batch),
            "{records} bytes for max_bytes {max_bytes}"
        );
    }
}

/// Item 7: silent connections are closed after connections.max.idle.ms, and a request whose size
/// arrived but whose body does not is closed after request.read.timeout.ms, freeing their slots.
#[tokio::test]
async fn idle_and_half_sent_connections_are_closed_and_per_ip_limits_hold() {
    let b = start_with_settings(|a| {
        a.set("connections_max_idle_ms", 300)
            .set("request_read_timeout_ms", 300)
            .set("max_connections", 2)
    })
    .await;
    let mut silent = Client::connect(b.addr).await;
    let mut half = Client::connect(b.addr).await;
    half.send_raw(&[0, 0, 0x10, 0, 0, 18, 0, 3, 0, 0])
        .await
        .unwrap();
    assert!(silent.closed().await, "idle connection closed");
    assert!(half.closed().await, "half-sent request closed");
    // Slots freed: a new client is served.
    api_versions_ok(b.addr).await;
}

/// Item 7: with max.connections per-IP at 2, a fifth connection from the same address is closed at
/// once while the others stay open.
#[tokio::test]
async fn past_max_connections_per_ip_a_connection_is_closed_at_once() {
    let b = start_with_settings(|a| a.set("max_connections_per_ip", 2)).await;
    let mut first = Client::connect(b.addr).await;
    let mut second = Client::connect(b.addr).await;
    let mut third = Client::connect(b.addr).await;
    assert!(third.closed().await, "third connection from one address");
    for c in [&mut first, &mut second] {
        let r: Option<ApiVersionsResponse> = c
            .call(ApiKey::ApiVersions, 3, &ApiVersionsRequest::default())
            .await;
        assert!(r.is_some());
    }
}

/// Item 6: an acks=0 produce keeps its place in the connection's window until it is committed, so a
/// flood of them cannot queue unbounded data in front of the writer: the request after 200 acks=0
/// produces is answered only once all 200 are in the log.
#[tokio::test]
async fn acks_zero_holds_its_window_until_committed() {
    let b = start().await;
    let mut c = Client::connect(b.addr).await;
    create(&mut c, "flood", 1).await;
    let mut frames = BytesMut::new();
    for i in 0..200 {
        frames.extend_from_slice(&frame_as(
            None,
            ApiKey::Produce,
            9,
            1000 + i,
            &produce_with_acks("flood", batch(50, Compression::None), 0),
        ));
    }
    let list = ListOffsetsRequest::default().with_topics(vec![
        list_offsets_request::ListOffsetsTopic::default()
            .with_name(topic("flood"))
            .with_partitions(vec![
                list_offsets_request::ListOffsetsPartition::default().with_timestamp(-1)
            ]),
    ]);
    frames.extend_from_slice(&frame_as(None, ApiKey::ListOffsets, 7, 5000, &list));
    c.send_raw(&frames).await.unwrap();
    let mut resp = c.read_frame().await.unwrap();
    assert_eq!(resp.get_i32(), 5000);
    // Answered in order, after the 200 silent requests were done: all of them are committed now, as
    // another connection sees.
    let mut other = Client::connect(b.addr).await;
    let r: ListOffsetsResponse = other.call(ApiKey::ListOffsets, 7, &list).await.unwrap();
    assert_eq!(r.topics[0].partitions[0].offset, 200 * 50);
}

/// Item 5: responses finished behind a waiting long-poll are bounded per connection: past its share
/// the connection stops reading, so a request sent after them waits for the long-poll to end.
#[tokio::test]
async fn finished_responses_behind_a_long_poll_stop_the_connection_reading() {
    // A share of about 70 KB (fetch.max.bytes + message.max.bytes + 64 KiB).
    let b = start_with_settings(|a| {
        a.set("fetch_max_bytes", 1000)
            .set("message_max_bytes", 1000)
    })
    .await;
    let mut c = Client::connect(b.addr).await;
    let id = create(&mut c, "poll", 1).await;
    let mut frames = frame_as(
        None,
        ApiKey::Fetch,
        12,
        1,
        &fetch_request("poll", id, 0, 2500),
    );
    // ~1,000 Metadata responses of ~150 bytes each: more than the share.
    for i in 0..1000 {
        frames.extend_from_slice(&frame_as(
            None,
            ApiKey::Metadata,
            12,
            10 + i,
            &MetadataRequest::default().with_topics(None),
        ));
    }
    let create_late = CreateTopicsRequest::default()
        .with_timeout_ms(5000)
        .with_topics(vec![create_topics_request::CreatableTopic::default()
            .with_name(topic("late"))
            .with_num_partitions(1)
            .with_replication_factor(1)]);
    frames.extend_from_slice(&frame_as(None, ApiKey::CreateTopics, 7, 9999, &create_late));
    c.send_raw(&frames).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let mut other = Client::connect(b.addr).await;
    let meta: MetadataResponse = other
        .call(
            ApiKey::Metadata,
            12,
            &MetadataRequest::default().with_topics(None),
        )
        .await
        .unwrap();
    assert_eq!(meta.topics.len(), 1, "the late request was not read yet");
    // After the long-poll, everything is answered in order.
    let mut last = 0;
    for _ in 0..1002 {
        let mut resp = c.read_frame().await.expect("all answered");
        last = resp.get_i32();
    }
    assert_eq!(last, 9999);
}

/// Item 11: partitions are capped per request (max.partitions.per.request) and per broker
/// (max.broker.partitions), with INVALID_PARTITIONS and a message; one CreateTopics used to make a
/// million partitions in 3 s.
#[tokio::test]
async fn partitions_are_capped_per_request_and_per_broker() {
    let b = start_with_settings(|a| {
        a.set("max_partitions_per_request", 100)
            .set("max_broker_partitions", 150)
    })
    .await;
    let mut c = Client::connect(b.addr).await;
    let try_create = |names: Vec<(&str, i32)>| {
        CreateTopicsRequest::default()
            .with_timeout_ms(5000)
            .with_topics(
                names
                    .into_iter()
                    .map(|(n, p)| {
                        create_topics_request::CreatableTopic::default()
                            .with_name(topic(n))
                            .with_num_partitions(p)
                            .with_replication_factor(1)
                    })
                    .collect(),
            )
    };
    let r: CreateTopicsResponse = c
        .call(ApiKey::CreateTopics, 7, &try_create(vec![("a", 101)]))
        .await
        .unwrap();
    assert_eq!(
        r.topics[0].error_code, 37,
        "{:?}",
        r.topics[0].error_message
    );
    // Two topics of 60 in one request: the second passes the per-request limit.
    let r: CreateTopicsResponse = c
        .call(
            ApiKey::CreateTopics,
            7,
            &try_create(vec![("a", 60), ("b", 60)]),
        )
        .await
        .unwrap();
    let codes: Vec<i16> = r.topics.iter().map(|t| t.error_code).collect();
    assert_eq!(codes, vec![0, 37]);
    let r: CreateTopicsResponse = c
        .call(ApiKey::CreateTopics, 7, &try_create(vec![("b", 60)]))
        .await
        .unwrap();
    assert_eq!(r.topics[0].error_code, 0);
    // 120 on the broker: 31 more would pass max.broker.partitions.
    let r: CreateTopicsResponse = c
        .call(ApiKey::CreateTopics, 7, &try_create(vec![("c", 31)]))
        .await
        .unwrap();
    assert_eq!(r.topics[0].error_code, 37);
    let req = CreatePartitionsRequest::default()
        .with_timeout_ms(5000)
        .with_topics(vec![
            create_partitions_request::CreatePartitionsTopic::default()
                .with_name(topic("a"))
                .with_count(91)
                .with_assignments(None),
        ]);
    let r: CreatePartitionsResponse = c.call(ApiKey::CreatePartitions, 3, &req).await.unwrap();
    assert_eq!(r.results[0].error_code, 37);
    let req = req.with_topics(vec![
        create_partitions_request::CreatePartitionsTopic::default()
            .with_name(topic("a"))
            .with_count(90)
            .with_assignments(None),
    ]);
    let r: CreatePartitionsResponse = c.call(ApiKey::CreatePartitions, 3, &req).await.unwrap();
    assert_eq!(r.results[0].error_code, 0);
}

/// Item 3: DescribeGroups and ConsumerGroupDescribe describe a repeated group once.
#[tokio::test]
async fn describe_groups_with_a_repeated_group_describes_it_once() {
    let b = start().await;
    let mut c = Client::connect(b.addr).await;
    let req = DescribeGroupsRequest::default().with_groups(vec![group("g"); 1000]);
    let r: DescribeGroupsResponse = c.call(ApiKey::DescribeGroups, 5, &req).await.unwrap();
    assert_eq!(r.groups.len(), 1);
    let req = ConsumerGroupDescribeRequest::default().with_group_ids(vec![group("g"); 1000]);
    let r: ConsumerGroupDescribeResponse = c
        .call(ApiKey::ConsumerGroupDescribe, 0, &req)
        .await
        .unwrap();
    assert_eq!(r.groups.len(), 1);
}

/// Topic admin runs in request order (`Reply::InOrder`): requests pipelined behind CreateTopics,
/// CreatePartitions and DeleteTopics on one connection see their effects, as on Kafka, which handles
/// one request of a connection at a time. Metadata's auto-creation is not in request order (Kafka's is
/// asynchronous too), but its answer waits for it.
#[tokio::test]
async fn pipelined_requests_see_the_topic_admin_before_them() {
    let b = start().await;
    let mut c = Client::connect(b.addr).await;
    let metadata = |names: &[&str], auto: bool| {
        MetadataRequest::default()
            .with_topics(Some(
                names
                    .iter()
                    .map(|n| {
                        metadata_request::MetadataRequestTopic::default().with_name(Some(topic(n)))
                    })
                    .collect(),
            ))
            .with_allow_auto_topic_creation(auto)
    };
    let create = CreateTopicsRequest::default()
        .with_timeout_ms(5000)
        .with_topics(vec![create_topics_request::CreatableTopic::default()
            .with_name(topic("ordered"))
            .with_num_partitions(2)
            .with_replication_factor(1)]);
    let grow = CreatePartitionsRequest::default()
        .with_timeout_ms(5000)
        .with_topics(vec![
            create_partitions_request::CreatePartitionsTopic::default()
                .with_name(topic("ordered"))
                .with_count(4)
                .with_assignments(None),
        ]);
    let delete = DeleteTopicsRequest::default()
        .with_topic_names(vec![topic("ordered")])
        .with_timeout_ms(5000);
    let mut frames = BytesMut::new();
    frames.extend_from_slice(&c.frame(ApiKey::CreateTopics, 7, &create));
    frames.extend_from_slice(&c.frame(ApiKey::Metadata, 12, &metadata(&["ordered"], false)));
    frames.extend_from_slice(&c.frame(ApiKey::CreatePartitions, 3, &grow));
    frames.extend_from_slice(&c.frame(ApiKey::Metadata, 12, &metadata(&["ordered"], false)));
    frames.extend_from_slice(&c.frame(ApiKey::DeleteTopics, 5, &delete));
    frames.extend_from_slice(&c.frame(ApiKey::Metadata, 12, &metadata(&["ordered"], false)));
    frames.extend_from_slice(&c.frame(ApiKey::Metadata, 12, &metadata(&["auto", "ordered"], true)));
    c.send(&frames).await;

    let r: CreateTopicsResponse = c.recv(ApiKey::CreateTopics, 7).await;
    assert_eq!(r.topics[0].error_code, 0, "{:?}", r.topics[0].error_message);
    let m: MetadataResponse = c.recv(ApiKey::Metadata, 12).await;
    assert_eq!(
        (m.topics[0].error_code, m.topics[0].partitions.len()),
        (0, 2)
    );
    let r: CreatePartitionsResponse = c.recv(ApiKey::CreatePartitions, 3).await;
    assert_eq!(
        r.results[0].error_code, 0,
        "{:?}",
        r.results[0].error_message
    );
    let m: MetadataResponse = c.recv(ApiKey::Metadata, 12).await;
    assert_eq!(
        (m.topics[0].error_code, m.topics[0].partitions.len()),
        (0, 4)
    );
    let r: DeleteTopicsResponse = c.recv(ApiKey::DeleteTopics, 5).await;
    assert_eq!(r.responses[0].error_code, 0);
    let m: MetadataResponse = c.recv(ApiKey::Metadata, 12).await;
    assert_eq!(m.topics[0].error_code, 3, "deleted before this request");
    // Auto-creation: "auto" created with num.partitions (1), the deleted topic created again, both
    // answered in the order asked.
    let m: MetadataResponse = c.recv(ApiKey::Metadata, 12).await;
    let names: Vec<_> = m
        .topics
        .iter()
        .map(|t| {
            (
                t.name.as_ref().unwrap().to_string(),
                t.error_code,
                t.partitions.len(),
            )
        })
        .collect();
    assert_eq!(
        names,
        vec![("auto".to_string(), 0, 1), ("ordered".to_string(), 0, 1)]
    );
    // Created before that answer was sent. (Not necessarily before a request pipelined behind it:
    // Kafka too creates auto-created topics asynchronously, answering LEADER_NOT_AVAILABLE meanwhile.)
    let m: MetadataResponse = c
        .call(ApiKey::Metadata, 12, &metadata(&["auto"], false))
        .await
        .unwrap();
    assert_eq!(
        (m.topics[0].error_code, m.topics[0].partitions.len()),
        (0, 1)
    );
}

/// DescribeLogDirs: one directory, every partition's size as the index has it; the partitions asked
/// for, each once, the unknown ones left out (Kafka's ReplicaManager.describeLogDirs).
#[tokio::test]
async fn describe_log_dirs_reports_partition_sizes() {
    let b = start().await;
    let mut c = Client::connect(b.addr).await;
    create(&mut c, "sized", 2).await;
    let data = batch(10, Compression::None);
    let p = produce(&mut c, 9, "sized", data.clone()).await;
    assert_eq!(p.error_code, 0);
    let asked = |name: &str, partitions: Vec<i32>| {
        describe_log_dirs_request::DescribableLogDirTopic::default()
            .with_topic(topic(name))
            .with_partitions(partitions)
    };
    let req = DescribeLogDirsRequest::default().with_topics(Some(vec![
        asked("sized", vec![1, 0, 7, 0]),
        asked("missing", vec![0]),
        asked("sized", vec![1]),
    ]));
    let mut sizes = Vec::new();
    for v in [1, 4] {
        let r: DescribeLogDirsResponse = c.must(ApiKey::DescribeLogDirs, v, &req).await;
        assert_eq!(r.results.len(), 1);
        let dir = &r.results[0];
        assert_eq!(dir.error_code, 0);
        assert!(std::path::Path::new(dir.log_dir.as_str()).is_absolute());
        let got: Vec<(String, i32)> = dir
            .topics
            .iter()
            .flat_map(|t| {
                t.partitions
                    .iter()
                    .map(|p| (t.name.to_string(), p.partition_index))
            })
            .collect();
        assert_eq!(
            got,
            vec![("sized".to_string(), 0), ("sized".to_string(), 1)]
        );
        let p = &dir.topics[0].partitions;
        // Bytes in the segment store (blocks may be stored compressed): some for partition 0, none
        // for the empty one.
        assert!(p[0].partition_size > 0 && p[0].partition_size <= data.len() as i64 + 64);
        assert_eq!(p[1].partition_size, 0);
        assert!(p.iter().all(|p| p.offset_lag == 0 && !p.is_future_key));
        if v >= 4 {
            assert_eq!((dir.total_bytes, dir.usable_bytes), (-1, -1));
        }
        sizes.push(p[0].partition_size);
    }
    assert_eq!(sizes[0], sizes[1]);
    // Another batch: the partition grows.
    assert_eq!(
        produce(&mut c, 9, "sized", data.clone()).await.error_code,
        0
    );
    let r: DescribeLogDirsResponse = c.must(ApiKey::DescribeLogDirs, 4, &req).await;
    assert!(r.results[0].topics[0].partitions[0].partition_size > sizes[0]);
    // Null: every topic.
    let all: DescribeLogDirsResponse = c
        .must(
            ApiKey::DescribeLogDirs,
            4,
            &DescribeLogDirsRequest::default().with_topics(None),
        )
        .await;
    assert_eq!(all.results[0].topics.len(), 1);
    assert_eq!(all.results[0].topics[0].partitions.len(), 2);
}
