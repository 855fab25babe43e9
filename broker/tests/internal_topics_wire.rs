//! The internal topics over real sockets: created by the first coordinator lookup with Kafka's 50
//! partitions, listed as internal, `__consumer_offsets` holding each commit (and a tombstone for each
//! deleted offset) in Kafka's schemas in the group's partition, compacted; clients may not produce to
//! them nor delete their records (INVALID_TOPIC_EXCEPTION, as Kafka).

mod support;

use bytes::Bytes;
use kafka_protocol::messages::*;
use kafka_protocol::records::RecordBatchDecoder;
use std::time::Duration;
use support::*;

async fn metadata(c: &mut Client) -> MetadataResponse {
    c.must(
        ApiKey::Metadata,
        12,
        &MetadataRequest::default().with_topics(None),
    )
    .await
}

fn internal(m: &MetadataResponse) -> Vec<(String, bool, usize)> {
    let mut v: Vec<_> = m
        .topics
        .iter()
        .filter(|t| t.name.as_ref().is_some_and(|n| n.0.starts_with("__")))
        .map(|t| {
            (
                t.name.as_ref().unwrap().0.to_string(),
                t.is_internal,
                t.partitions.len(),
            )
        })
        .collect();
    v.sort();
    v
}

async fn find(c: &mut Client, key_type: i8, key: &str) {
    let r: FindCoordinatorResponse = c
        .must(
            ApiKey::FindCoordinator,
            3,
            &FindCoordinatorRequest::default()
                .with_key(s(key))
                .with_key_type(key_type),
        )
        .await;
    assert_eq!(r.error_code, 0);
}

/// (key, value) of the records of `__consumer_offsets` partition `p`, waiting for at least `n`.
async fn offsets_log(c: &mut Client, p: i32, n: usize) -> Vec<(Bytes, Option<Bytes>)> {
    for _ in 0..100 {
        let req = FetchRequest::default()
            .with_max_wait_ms(0)
            .with_min_bytes(1)
            .with_max_bytes(1 << 20)
            .with_topics(vec![fetch_request::FetchTopic::default()
                .with_topic(topic("__consumer_offsets"))
                .with_partitions(vec![fetch_request::FetchPartition::default()
                    .with_partition(p)
                    .with_fetch_offset(0)
                    .with_partition_max_bytes(1 << 20)])]);
        let r: FetchResponse = c.must(ApiKey::Fetch, 12, &req).await;
        let part = &r.responses[0].partitions[0];
        assert_eq!(part.error_code, 0);
        let mut records = part.records.clone().unwrap_or_default();
        let got: Vec<_> = RecordBatchDecoder::decode_all(&mut records)
            .unwrap()
            .into_iter()
            .flat_map(|s| s.records)
            .map(|r| (r.key.unwrap_or_default(), r.value))
            .collect();
        if got.len() >= n {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("fewer than {n} records in __consumer_offsets/{p}");
}

fn commit_key(group: &str, t: &str, p: i32) -> Vec<u8> {
    let mut k = vec![0, 1];
    for x in [group, t] {
        k.extend_from_slice(&(x.len() as i16).to_be_bytes());
        k.extend_from_slice(x.as_bytes());
    }
    k.extend_from_slice(&p.to_be_bytes());
    k
}

#[tokio::test]
async fn internal_topics_are_created_listed_written_and_guarded() {
    let b = start_with_settings(|a| a).await;
    let mut c = Client::connect(b.addr).await;
    assert!(
        internal(&metadata(&mut c).await).is_empty(),
        "none before a lookup"
    );

    find(&mut c, 0, "probe").await;
    find(&mut c, 1, "probe-tx").await;
    assert_eq!(
        internal(&metadata(&mut c).await),
        vec![
            ("__consumer_offsets".to_string(), true, 50),
            ("__transaction_state".to_string(), true, 50),
        ]
    );

    // A standalone commit of group "probe" (Kafka 4.4 puts it in partition 36), then its deletion.
    create(&mut c, "probe-t", 1).await;
    let commit = OffsetCommitRequest::default()
        .with_group_id(group("probe"))
        .with_generation_id_or_member_epoch(-1)
        .with_topics(vec![
            offset_commit_request::OffsetCommitRequestTopic::default()
                .with_name(topic("probe-t"))
                .with_partitions(vec![
                    offset_commit_request::OffsetCommitRequestPartition::default()
                        .with_partition_index(0)
                        .with_committed_offset(7)
                        .with_committed_leader_epoch(0)
                        .with_committed_metadata(Some(s("m"))),
                ]),
        ]);
    let r: OffsetCommitResponse = c.must(ApiKey::OffsetCommit, 8, &commit).await;
    assert_eq!(r.topics[0].partitions[0].error_code, 0);
    let log = offsets_log(&mut c, 36, 1).await;
    assert_eq!(log[0].0.as_ref(), &commit_key("probe", "probe-t", 0)[..]);
    let v = log[0].1.clone().expect("a value");
    assert_eq!(&v[..2], &[0, 3], "OffsetCommitValue version 3");
    assert_eq!(i64::from_be_bytes(v[2..10].try_into().unwrap()), 7);
    assert_eq!(i32::from_be_bytes(v[10..14].try_into().unwrap()), 0);
    assert_eq!(&v[14..17], &[0, 1, b'm']);

    let delete = OffsetDeleteRequest::default()
        .with_group_id(group("probe"))
        .with_topics(vec![
            offset_delete_request::OffsetDeleteRequestTopic::default()
                .with_name(topic("probe-t"))
                .with_partitions(vec![
                    offset_delete_request::OffsetDeleteRequestPartition::default()
                        .with_partition_index(0),
                ]),
        ]);
    let r: OffsetDeleteResponse = c.must(ApiKey::OffsetDelete, 0, &delete).await;
    assert_eq!(r.error_code, 0);
    let log = offsets_log(&mut c, 36, 2).await;
    assert_eq!(log[1].0.as_ref(), &commit_key("probe", "probe-t", 0)[..]);
    assert!(log[1].1.is_none(), "a tombstone");

    // Clients cannot write to them nor delete their records.
    let data = batch_of(
        &[Some("k")],
        now_ms(),
        &[0],
        kafka_protocol::records::Compression::None,
    );
    for t in ["__consumer_offsets", "__transaction_state"] {
        let p = produce(&mut c, 9, t, data.clone()).await;
        assert_eq!(p.error_code, 17, "{t}: INVALID_TOPIC_EXCEPTION");
        let r: DeleteRecordsResponse = c
            .must(
                ApiKey::DeleteRecords,
                2,
                &DeleteRecordsRequest::default().with_topics(vec![
                    delete_records_request::DeleteRecordsTopic::default()
                        .with_name(topic(t))
                        .with_partitions(vec![
                            delete_records_request::DeleteRecordsPartition::default()
                                .with_partition_index(0)
                                .with_offset(-1),
                        ]),
                ]),
            )
            .await;
        assert_eq!(r.topics[0].partitions[0].error_code, 17, "{t}");
    }

    // Their configs are Kafka's.
    let r: DescribeConfigsResponse = c
        .must(
            ApiKey::DescribeConfigs,
            4,
            &DescribeConfigsRequest::default().with_resources(vec![
                describe_configs_request::DescribeConfigsResource::default()
                    .with_resource_type(2)
                    .with_resource_name(s("__consumer_offsets"))
                    .with_configuration_keys(None),
            ]),
        )
        .await;
    let get = |name: &str| {
        r.results[0]
            .configs
            .iter()
            .find(|c| c.name.as_str() == name)
            .and_then(|c| c.value.as_ref().map(|v| v.to_string()))
    };
    assert_eq!(get("cleanup.policy").as_deref(), Some("compact"));
    assert_eq!(get("segment.bytes").as_deref(), Some("104857600"));
}

/// A classic group's membership after its rebalance is in its partition of `__consumer_offsets` as
/// Kafka writes it: GroupMetadataKey version 2, GroupMetadataValue version 3.
#[tokio::test]
async fn a_classic_group_is_written_as_group_metadata() {
    let b = start_with_settings(|a| a.set("group_initial_rebalance_delay_ms", 0)).await;
    let mut c = Client::connect(b.addr).await;
    find(&mut c, 0, "probe").await;
    let join = |member: String| {
        JoinGroupRequest::default()
            .with_group_id(group("probe"))
            .with_session_timeout_ms(10_000)
            .with_rebalance_timeout_ms(20_000)
            .with_member_id(s(&member))
            .with_protocol_type(s("consumer"))
            .with_protocols(vec![join_group_request::JoinGroupRequestProtocol::default(
            )
            .with_name(s("range"))
            .with_metadata(Bytes::from_static(&[9, 9]))])
    };
    let first: JoinGroupResponse = c.must(ApiKey::JoinGroup, 5, &join(String::new())).await;
    let j: JoinGroupResponse = c
        .must(ApiKey::JoinGroup, 5, &join(first.member_id.to_string()))
        .await;
    assert_eq!(j.error_code, 0);
    let sync = SyncGroupRequest::default()
        .with_group_id(group("probe"))
        .with_generation_id(j.generation_id)
        .with_member_id(j.member_id.clone())
        .with_assignments(vec![
            sync_group_request::SyncGroupRequestAssignment::default()
                .with_member_id(j.member_id.clone())
                .with_assignment(Bytes::from_static(&[7, 7, 7])),
        ]);
    let r: SyncGroupResponse = c.must(ApiKey::SyncGroup, 3, &sync).await;
    assert_eq!(r.error_code, 0);

    let mut key = vec![0u8, 2, 0, 5];
    key.extend_from_slice(b"probe");
    let mut found = None;
    for _ in 0..100 {
        let log = offsets_log(&mut c, 36, 1).await;
        found = log
            .into_iter()
            .rev()
            .find(|(k, v)| k.as_ref() == key.as_slice() && v.is_some());
        if found.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let v = found.expect("a GroupMetadata record").1.unwrap();
    let mut at = 0;
    let mut take = |n: usize| {
        let s = &v[at..at + n];
        at += n;
        s.to_vec()
    };
    assert_eq!(take(2), [0, 3], "version 3");
    let str_at = |b: &[u8]| i16::from_be_bytes([b[0], b[1]]) as usize;
    let n = str_at(&take(2));
    assert_eq!(take(n), b"consumer");
    assert_eq!(
        i32::from_be_bytes(take(4).try_into().unwrap()),
        j.generation_id
    );
    let n = str_at(&take(2));
    assert_eq!(take(n), b"range");
    let n = str_at(&take(2));
    assert_eq!(take(n), j.member_id.as_bytes(), "leader");
    take(8); // current state timestamp
    assert_eq!(
        i32::from_be_bytes(take(4).try_into().unwrap()),
        1,
        "one member"
    );
    let n = str_at(&take(2));
    assert_eq!(take(n), j.member_id.as_bytes());
    assert_eq!(take(2), [0xff, 0xff], "no group.instance.id");
    let n = str_at(&take(2));
    take(n); // client id
    let n = str_at(&take(2));
    take(n); // client host
    assert_eq!(i32::from_be_bytes(take(4).try_into().unwrap()), 20_000);
    assert_eq!(i32::from_be_bytes(take(4).try_into().unwrap()), 10_000);
    assert_eq!(take(4), [0, 0, 0, 2]);
    assert_eq!(take(2), [9, 9], "subscription");
    assert_eq!(take(4), [0, 0, 0, 3]);
    assert_eq!(take(3), [7, 7, 7], "assignment");
    assert_eq!(at, v.len());
}
