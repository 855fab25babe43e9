//! Group coordinator end-to-end over real sockets against an in-process broker: requests that change
//! group or offset state take effect in the order they arrive on a connection (Kafka reads one
//! request of a connection at a time), and committed offsets go away with their topic.

mod support;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::*;
use support::*;

/// A broker whose groups rebalance without the initial delay.
async fn start() -> TestBroker {
    start_with_settings(|a| a.set("group_initial_rebalance_delay_ms", 0)).await
}

fn commit_req(
    g: &str,
    member: &str,
    generation: i32,
    t: &str,
    offset: i64,
    meta: &str,
) -> OffsetCommitRequest {
    OffsetCommitRequest::default()
        .with_group_id(GroupId(s(g)))
        .with_generation_id_or_member_epoch(generation)
        .with_member_id(s(member))
        .with_topics(vec![
            offset_commit_request::OffsetCommitRequestTopic::default()
                .with_name(TopicName(s(t)))
                .with_partitions(vec![
                    offset_commit_request::OffsetCommitRequestPartition::default()
                        .with_partition_index(0)
                        .with_committed_offset(offset)
                        .with_committed_metadata(Some(s(meta))),
                ]),
        ])
}

async fn committed(c: &mut Client, g: &str, t: &str) -> i64 {
    let req = OffsetFetchRequest::default()
        .with_group_id(GroupId(s(g)))
        .with_topics(Some(vec![
            offset_fetch_request::OffsetFetchRequestTopic::default()
                .with_name(TopicName(s(t)))
                .with_partition_indexes(vec![0]),
        ]));
    let r: OffsetFetchResponse = c.must(ApiKey::OffsetFetch, 7, &req).await;
    r.topics[0].partitions[0].committed_offset
}

/// Issue 16.1: many OffsetCommits of increasing offsets pipelined on one connection (as librdkafka's
/// asynchronous commits are) end with the last one committed. Commits of different sizes (1 to 64
/// partitions, metadata up to 4000 bytes) make the metadata writes take different times, which is
/// what let them overtake each other.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pipelined_commits_take_effect_in_request_order() {
    let b = start().await;
    let mut c = Client::connect(b.addr).await;
    let parts = 64;
    create(&mut c, "t", parts).await;
    let n = 1000;
    let mut frames = BytesMut::new();
    for i in 1..=n {
        let meta = "m".repeat((i as usize * 397) % 4000);
        let width = if i % 3 == 0 {
            parts
        } else {
            1 + (i as i32 * 7) % parts
        };
        let partitions = (0..width)
            .map(|p| {
                offset_commit_request::OffsetCommitRequestPartition::default()
                    .with_partition_index(p)
                    .with_committed_offset(i)
                    .with_committed_metadata(Some(s(&meta)))
            })
            .collect();
        let req = OffsetCommitRequest::default()
            .with_group_id(GroupId(s("g")))
            .with_generation_id_or_member_epoch(-1)
            .with_topics(vec![
                offset_commit_request::OffsetCommitRequestTopic::default()
                    .with_name(TopicName(s("t")))
                    .with_partitions(partitions),
            ]);
        frames.extend_from_slice(&c.frame(ApiKey::OffsetCommit, 8, &req));
    }
    // The OffsetFetch right behind them (librdkafka's committed()) sees all of them applied.
    let req = OffsetFetchRequest::default()
        .with_group_id(GroupId(s("g")))
        .with_topics(Some(vec![
            offset_fetch_request::OffsetFetchRequestTopic::default()
                .with_name(TopicName(s("t")))
                .with_partition_indexes((0..parts).collect()),
        ]));
    frames.extend_from_slice(&c.frame(ApiKey::OffsetFetch, 7, &req));
    c.send(&frames).await;
    for _ in 1..=n {
        let r: OffsetCommitResponse = c.recv(ApiKey::OffsetCommit, 8).await;
        assert!(r.topics[0].partitions.iter().all(|p| p.error_code == 0));
    }
    let r: OffsetFetchResponse = c.recv(ApiKey::OffsetFetch, 7).await;
    // Every third commit covers all partitions; later ones cover the first partitions only.
    let last_full = n - n % 3;
    for p in &r.topics[0].partitions {
        let expected = (last_full..=n)
            .rev()
            .find(|i| i % 3 == 0 || p.partition_index < 1 + (*i as i32 * 7) % parts)
            .unwrap();
        assert_eq!(
            p.committed_offset, expected,
            "partition {}: the last commit that named it wins",
            p.partition_index
        );
    }
}

/// OffsetCommit then OffsetDelete then OffsetCommit, pipelined: each applies after the one before.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pipelined_commit_delete_commit_apply_in_order() {
    let b = start().await;
    let mut c = Client::connect(b.addr).await;
    create(&mut c, "t", 1).await;
    let delete = OffsetDeleteRequest::default()
        .with_group_id(GroupId(s("g")))
        .with_topics(vec![
            offset_delete_request::OffsetDeleteRequestTopic::default()
                .with_name(TopicName(s("t")))
                .with_partitions(vec![
                    offset_delete_request::OffsetDeleteRequestPartition::default()
                        .with_partition_index(0),
                ]),
        ]);
    for round in 0..20 {
        let mut frames = BytesMut::new();
        frames.extend_from_slice(&c.frame(
            ApiKey::OffsetCommit,
            8,
            &commit_req("g", "", -1, "t", 10 + round, &"x".repeat(3000)),
        ));
        frames.extend_from_slice(&c.frame(ApiKey::OffsetDelete, 0, &delete));
        frames.extend_from_slice(&c.frame(
            ApiKey::OffsetCommit,
            8,
            &commit_req("g", "", -1, "t", 100 + round, ""),
        ));
        c.send(&frames).await;
        let r: OffsetCommitResponse = c.recv(ApiKey::OffsetCommit, 8).await;
        assert_eq!(r.topics[0].partitions[0].error_code, 0);
        let r: OffsetDeleteResponse = c.recv(ApiKey::OffsetDelete, 0).await;
        assert_eq!(r.error_code, 0);
        assert_eq!(r.topics[0].partitions[0].error_code, 0);
        let r: OffsetCommitResponse = c.recv(ApiKey::OffsetCommit, 8).await;
        assert_eq!(r.topics[0].partitions[0].error_code, 0);
        assert_eq!(
            committed(&mut c, "g", "t").await,
            100 + round,
            "round {round}"
        );
    }
}

async fn join(c: &mut Client, g: &str, member: &str) -> JoinGroupResponse {
    let req = JoinGroupRequest::default()
        .with_group_id(GroupId(s(g)))
        .with_session_timeout_ms(10_000)
        .with_rebalance_timeout_ms(10_000)
        .with_member_id(s(member))
        .with_protocol_type(s("consumer"))
        .with_protocols(vec![join_group_request::JoinGroupRequestProtocol::default(
        )
        .with_name(s("range"))
        .with_metadata(Bytes::from_static(&[0, 0, 0, 0, 0, 0]))]);
    c.must(ApiKey::JoinGroup, 5, &req).await
}

/// A member's commit sent just before its LeaveGroup, pipelined (as a consumer closing does) is
/// judged against the group as it was when the commit arrived: it is accepted, then the member leaves.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn commit_then_leave_pipelined_commits_first() {
    let b = start().await;
    let mut c = Client::connect(b.addr).await;
    create(&mut c, "t", 1).await;
    let first = join(&mut c, "g", "").await;
    assert_eq!(first.error_code, 79, "MEMBER_ID_REQUIRED");
    let j = join(&mut c, "g", first.member_id.as_str()).await;
    assert_eq!((j.error_code, j.generation_id), (0, 1));
    let sync = SyncGroupRequest::default()
        .with_group_id(GroupId(s("g")))
        .with_generation_id(1)
        .with_member_id(j.member_id.clone())
        .with_assignments(vec![
            sync_group_request::SyncGroupRequestAssignment::default()
                .with_member_id(j.member_id.clone())
                .with_assignment(Bytes::new()),
        ]);
    let r: SyncGroupResponse = c.must(ApiKey::SyncGroup, 3, &sync).await;
    assert_eq!(r.error_code, 0);
    let leave = LeaveGroupRequest::default()
        .with_group_id(GroupId(s("g")))
        .with_members(vec![
            leave_group_request::MemberIdentity::default().with_member_id(j.member_id.clone())
        ]);
    let mut frames = BytesMut::new();
    frames.extend_from_slice(&c.frame(
        ApiKey::OffsetCommit,
        7,
        &commit_req("g", j.member_id.as_str(), 1, "t", 33, ""),
    ));
    frames.extend_from_slice(&c.frame(ApiKey::LeaveGroup, 3, &leave));
    c.send(&frames).await;
    let r: OffsetCommitResponse = c.recv(ApiKey::OffsetCommit, 7).await;
    assert_eq!(
        r.topics[0].partitions[0].error_code, 0,
        "the commit arrived while the member was in the group"
    );
    let r: LeaveGroupResponse = c.recv(ApiKey::LeaveGroup, 3).await;
    assert_eq!(r.members[0].error_code, 0);
    assert_eq!(committed(&mut c, "g", "t").await, 33);
}

/// Issue 9.9: deleting a topic deletes the groups' committed offsets for it, so a topic created again
/// under the same name starts with none.
#[tokio::test]
async fn deleted_topic_takes_its_committed_offsets() {
    let b = start().await;
    let mut c = Client::connect(b.addr).await;
    create(&mut c, "t", 1).await;
    create(&mut c, "other", 1).await;
    for t in ["t", "other"] {
        let r: OffsetCommitResponse = c
            .must(ApiKey::OffsetCommit, 8, &commit_req("g", "", -1, t, 42, ""))
            .await;
        assert_eq!(r.topics[0].partitions[0].error_code, 0);
    }
    let del = DeleteTopicsRequest::default()
        .with_timeout_ms(5000)
        .with_topic_names(vec![TopicName(s("t"))]);
    let r: DeleteTopicsResponse = c.must(ApiKey::DeleteTopics, 5, &del).await;
    assert_eq!(r.responses[0].error_code, 0);
    create(&mut c, "t", 1).await;
    assert_eq!(committed(&mut c, "g", "t").await, -1, "gone with the topic");
    assert_eq!(committed(&mut c, "g", "other").await, 42, "others kept");
}
