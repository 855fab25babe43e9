//! Transactions on the wire, as a client sees them: InitProducerId with a transactional id,
//! AddPartitionsToTxn, a transactional produce, Fetch at read_committed (last stable offset, aborted
//! transactions), EndTxn, fencing by a second InitProducerId, and the version-dependent error codes
//! (INVALID_PRODUCER_EPOCH before PRODUCER_FENCED existed, KIP-588).

mod support;

use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::*;
use streamhouse_test_support::batch::{BatchBuilder, Record};
use support::*;

fn txn_id() -> TransactionalId {
    TransactionalId(s("wire-tx"))
}

async fn init(c: &mut Client, version: i16) -> InitProducerIdResponse {
    c.call(
        ApiKey::InitProducerId,
        version,
        &InitProducerIdRequest::default()
            .with_transactional_id(Some(txn_id()))
            .with_transaction_timeout_ms(60_000)
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1),
    )
    .await
    .unwrap()
}

async fn add_partition(c: &mut Client, version: i16, pid: i64, epoch: i16, t: &str) -> i16 {
    let r: AddPartitionsToTxnResponse = c
        .call(
            ApiKey::AddPartitionsToTxn,
            version,
            &AddPartitionsToTxnRequest::default()
                .with_v3_and_below_transactional_id(txn_id())
                .with_v3_and_below_producer_id(ProducerId(pid))
                .with_v3_and_below_producer_epoch(epoch)
                .with_v3_and_below_topics(vec![
                    add_partitions_to_txn_request::AddPartitionsToTxnTopic::default()
                        .with_name(topic(t))
                        .with_partitions(vec![0]),
                ]),
        )
        .await
        .unwrap();
    r.results_by_topic_v3_and_below[0].results_by_partition[0].partition_error_code
}

async fn end(c: &mut Client, version: i16, pid: i64, epoch: i16, commit: bool) -> i16 {
    let r: EndTxnResponse = c
        .call(
            ApiKey::EndTxn,
            version,
            &EndTxnRequest::default()
                .with_transactional_id(txn_id())
                .with_producer_id(ProducerId(pid))
                .with_producer_epoch(epoch)
                .with_committed(commit),
        )
        .await
        .unwrap();
    r.error_code
}

fn txn_batch(pid: i64, epoch: i16, seq: i32, value: &str) -> Bytes {
    BatchBuilder::new()
        .transactional(true)
        .producer(pid, epoch, seq)
        .record(Record::at(now_ms()).value(value.to_string()))
        .build()
}

/// Fetch v12 of partition 0 at read_committed: (last stable offset, high watermark, aborted
/// (producer id, first offset), record bytes).
async fn fetch_committed(c: &mut Client, t: &str) -> (i64, i64, Vec<(i64, i64)>, usize) {
    let req = FetchRequest::default()
        .with_max_wait_ms(0)
        .with_min_bytes(1)
        .with_max_bytes(1 << 20)
        .with_isolation_level(1)
        .with_topics(vec![fetch_request::FetchTopic::default()
            .with_topic(topic(t))
            .with_partitions(vec![fetch_request::FetchPartition::default()
                .with_partition(0)
                .with_fetch_offset(0)
                .with_partition_max_bytes(1 << 20)])]);
    let r: FetchResponse = c.call(ApiKey::Fetch, 12, &req).await.unwrap();
    let p = &r.responses[0].partitions[0];
    assert_eq!(p.error_code, 0);
    let aborted = p
        .aborted_transactions
        .iter()
        .flatten()
        .map(|a| (a.producer_id.0, a.first_offset))
        .collect();
    (
        p.last_stable_offset,
        p.high_watermark,
        aborted,
        p.records.as_ref().map_or(0, |r| r.len()),
    )
}

/// DescribeProducers of tw-0 and of a partition that does not exist.
async fn describe(c: &mut Client) -> Vec<describe_producers_response::PartitionResponse> {
    let req = DescribeProducersRequest::default().with_topics(vec![
        describe_producers_request::TopicRequest::default()
            .with_name(topic("tw"))
            .with_partition_indexes(vec![0, 7]),
    ]);
    let r: DescribeProducersResponse = c.call(ApiKey::DescribeProducers, 0, &req).await.unwrap();
    r.topics[0].partitions.clone()
}

#[tokio::test]
async fn a_transaction_on_the_wire_aborts_commits_and_fences() {
    let b = start().await;
    let mut c = Client::connect(b.addr).await;
    create(&mut c, "tw", 1).await;
    let r = init(&mut c, 4).await;
    assert_eq!(r.error_code, 0);
    let (pid, epoch) = (r.producer_id.0, r.producer_epoch);

    // A transactional batch before its partition was added is refused.
    let p = produce(&mut c, 9, "tw", txn_batch(pid, epoch, 0, "early")).await;
    assert_eq!(p.error_code, ResponseError::InvalidTxnState.code());

    assert_eq!(add_partition(&mut c, 3, pid, epoch, "tw").await, 0);
    let p = produce(&mut c, 9, "tw", txn_batch(pid, epoch, 0, "a")).await;
    assert_eq!((p.error_code, p.base_offset), (0, 0));
    let (lso, hwm, aborted, bytes) = fetch_committed(&mut c, "tw").await;
    assert_eq!((lso, hwm, bytes), (0, 1, 0), "nothing stable while open");
    assert!(aborted.is_empty());

    assert_eq!(end(&mut c, 3, pid, epoch, false).await, 0);
    let (lso, hwm, aborted, bytes) = fetch_committed(&mut c, "tw").await;
    assert_eq!((lso, hwm), (2, 2), "the ABORT marker at 1");
    assert_eq!(aborted, vec![(pid, 0)]);
    assert!(
        bytes > 0,
        "the aborted batch and the marker are returned; clients drop them"
    );
    // Ending it again the same way is a retry (NONE); the other way is INVALID_TXN_STATE.
    assert_eq!(end(&mut c, 3, pid, epoch, false).await, 0);
    assert_eq!(
        end(&mut c, 3, pid, epoch, true).await,
        ResponseError::InvalidTxnState.code()
    );

    // The next transaction commits.
    assert_eq!(add_partition(&mut c, 3, pid, epoch, "tw").await, 0);
    let p = produce(&mut c, 9, "tw", txn_batch(pid, epoch, 1, "b")).await;
    assert_eq!((p.error_code, p.base_offset), (0, 2));
    assert_eq!(end(&mut c, 3, pid, epoch, true).await, 0);
    let (lso, hwm, aborted, _) = fetch_committed(&mut c, "tw").await;
    assert_eq!((lso, hwm), (4, 4));
    assert_eq!(aborted, vec![(pid, 0)], "the committed one is not listed");

    // The tools' view (kafka-transactions list / describe).
    let r: ListTransactionsResponse = c
        .call(
            ApiKey::ListTransactions,
            2,
            &ListTransactionsRequest::default()
                .with_state_filters(vec![s("CompleteCommit"), s("Nonsense")])
                .with_duration_filter(-1)
                .with_transactional_id_pattern(Some(s("wire-.*"))),
        )
        .await
        .unwrap();
    assert_eq!(r.unknown_state_filters, vec![s("Nonsense")]);
    let listed: Vec<_> = r
        .transaction_states
        .iter()
        .map(|t| (t.transactional_id.0.to_string(), t.producer_id.0))
        .collect();
    assert_eq!(listed, vec![("wire-tx".to_string(), pid)]);
    assert_eq!(add_partition(&mut c, 3, pid, epoch, "tw").await, 0);
    let r: DescribeTransactionsResponse = c
        .call(
            ApiKey::DescribeTransactions,
            0,
            &DescribeTransactionsRequest::default()
                .with_transactional_ids(vec![txn_id(), TransactionalId(s("unknown"))]),
        )
        .await
        .unwrap();
    let d = &r.transaction_states[0];
    assert_eq!(d.transaction_state.as_str(), "Ongoing");
    assert_eq!(
        (d.producer_id.0, d.producer_epoch, d.transaction_timeout_ms),
        (pid, epoch, 60_000)
    );
    assert_eq!(d.topics[0].topic.as_str(), "tw");
    assert_eq!(d.topics[0].partitions, vec![0]);
    assert_eq!(
        r.transaction_states[1].error_code,
        ResponseError::TransactionalIdNotFound.code()
    );

    // kafka-transactions describe-producers and abort: the partition's producer shows its open
    // transaction; an ABORT marker written by WriteTxnMarkers ends it there.
    let p = produce(&mut c, 9, "tw", txn_batch(pid, epoch, 2, "c")).await;
    assert_eq!((p.error_code, p.base_offset), (0, 4));
    let parts = describe(&mut c).await;
    let ps = &parts[0].active_producers;
    assert_eq!(ps.len(), 1);
    assert_eq!(
        (
            ps[0].producer_id.0,
            ps[0].producer_epoch,
            ps[0].last_sequence
        ),
        (pid, epoch as i32, 2)
    );
    assert_eq!(ps[0].current_txn_start_offset, 4);
    assert_eq!(
        parts[1].error_code,
        ResponseError::UnknownTopicOrPartition.code()
    );
    let r: WriteTxnMarkersResponse = c
        .call(
            ApiKey::WriteTxnMarkers,
            1,
            &WriteTxnMarkersRequest::default().with_markers(vec![
                write_txn_markers_request::WritableTxnMarker::default()
                    .with_producer_id(ProducerId(pid))
                    .with_producer_epoch(epoch)
                    .with_transaction_result(false)
                    .with_topics(vec![
                        write_txn_markers_request::WritableTxnMarkerTopic::default()
                            .with_name(topic("tw"))
                            .with_partition_indexes(vec![0]),
                    ]),
            ]),
        )
        .await
        .unwrap();
    assert_eq!(r.markers[0].topics[0].partitions[0].error_code, 0);
    let (lso, hwm, aborted, _) = fetch_committed(&mut c, "tw").await;
    assert_eq!((lso, hwm), (6, 6), "the marker at 5");
    assert_eq!(aborted, vec![(pid, 0), (pid, 4)]);
    assert_eq!(
        describe(&mut c).await[0].active_producers[0].current_txn_start_offset,
        -1
    );

    // A second InitProducerId fences the first producer: PRODUCER_FENCED from EndTxn v2 on,
    // INVALID_PRODUCER_EPOCH before.
    // The transaction it left open is aborted with the epoch bumped (Kafka's PrepareEpochFence),
    // then the new producer gets the next epoch.
    let r = init(&mut c, 4).await;
    assert_eq!(
        (r.error_code, r.producer_id.0, r.producer_epoch),
        (0, pid, epoch + 2)
    );
    let new_epoch = r.producer_epoch;
    let (lso, hwm, _, _) = fetch_committed(&mut c, "tw").await;
    assert_eq!((lso, hwm), (7, 7), "its ABORT marker at 6");
    assert_eq!(
        add_partition(&mut c, 3, pid, epoch, "tw").await,
        ResponseError::ProducerFenced.code()
    );
    assert_eq!(
        add_partition(&mut c, 1, pid, epoch, "tw").await,
        ResponseError::InvalidProducerEpoch.code()
    );
    assert_eq!(
        end(&mut c, 1, pid, epoch, true).await,
        ResponseError::InvalidProducerEpoch.code()
    );
    // An unknown topic in AddPartitionsToTxn, and a transaction timeout past the maximum.
    assert_eq!(
        add_partition(&mut c, 3, pid, new_epoch, "nope").await,
        ResponseError::UnknownTopicOrPartition.code()
    );
    let r: InitProducerIdResponse = c
        .call(
            ApiKey::InitProducerId,
            4,
            &InitProducerIdRequest::default()
                .with_transactional_id(Some(txn_id()))
                .with_transaction_timeout_ms(i32::MAX)
                .with_producer_id(ProducerId(-1))
                .with_producer_epoch(-1),
        )
        .await
        .unwrap();
    assert_eq!(
        r.error_code,
        ResponseError::InvalidTransactionTimeout.code()
    );
    // TxnOffsetCommit for a group not added with AddOffsetsToTxn: INVALID_TXN_STATE.
    let r: TxnOffsetCommitResponse = c
        .call(
            ApiKey::TxnOffsetCommit,
            3,
            &TxnOffsetCommitRequest::default()
                .with_transactional_id(txn_id())
                .with_group_id(group("wire-g"))
                .with_producer_id(ProducerId(pid))
                .with_producer_epoch(new_epoch)
                .with_generation_id(-1)
                .with_topics(vec![
                    txn_offset_commit_request::TxnOffsetCommitRequestTopic::default()
                        .with_name(topic("tw"))
                        .with_partitions(vec![
                            txn_offset_commit_request::TxnOffsetCommitRequestPartition::default()
                                .with_committed_offset(1),
                        ]),
                ]),
        )
        .await
        .unwrap();
    assert_eq!(
        r.topics[0].partitions[0].error_code,
        ResponseError::InvalidTxnState.code()
    );
}

/// transaction.version 2 (KIP-890 part 2), as Java 4.x producers speak it when ApiVersions finalizes
/// it: Produce v12+ adds its partition to the transaction (no AddPartitionsToTxn), TxnOffsetCommit v5
/// adds the group, EndTxn v5 bumps the epoch (its markers carry the new one, so a late batch of the
/// ended transaction is refused) and a retried EndTxn with the old epoch gets the same answer.
#[tokio::test]
async fn transaction_version_2_adds_implicitly_and_bumps_the_epoch() {
    let b = start().await;
    let mut c = Client::connect(b.addr).await;
    let r: ApiVersionsResponse = c
        .call(ApiKey::ApiVersions, 3, &ApiVersionsRequest::default())
        .await
        .unwrap();
    let f = r
        .finalized_features
        .iter()
        .find(|f| f.name.as_str() == "transaction.version")
        .expect("transaction.version is finalized");
    assert_eq!(f.max_version_level, 2);

    create(&mut c, "tv2", 1).await;
    let r = init(&mut c, 5).await;
    let (pid, epoch) = (r.producer_id.0, r.producer_epoch);
    let mut req = produce_request("tv2", txn_batch(pid, epoch, 0, "a"));
    req.transactional_id = Some(txn_id());
    let resp: ProduceResponse = c.call(ApiKey::Produce, 12, &req).await.unwrap();
    let p = &resp.responses[0].partition_responses[0];
    assert_eq!(
        (p.error_code, p.base_offset),
        (0, 0),
        "added by the produce itself"
    );
    // The same batch at v11 without AddPartitionsToTxn would have been refused.
    let r: TxnOffsetCommitResponse = c
        .call(
            ApiKey::TxnOffsetCommit,
            5,
            &TxnOffsetCommitRequest::default()
                .with_transactional_id(txn_id())
                .with_group_id(group("tv2-g"))
                .with_producer_id(ProducerId(pid))
                .with_producer_epoch(epoch)
                .with_generation_id(-1)
                .with_topics(vec![
                    txn_offset_commit_request::TxnOffsetCommitRequestTopic::default()
                        .with_name(topic("tv2"))
                        .with_partitions(vec![
                            txn_offset_commit_request::TxnOffsetCommitRequestPartition::default()
                                .with_committed_offset(7),
                        ]),
                ]),
        )
        .await
        .unwrap();
    assert_eq!(
        r.topics[0].partitions[0].error_code, 0,
        "the group is added by the commit"
    );

    let end_v5 = |epoch: i16| {
        EndTxnRequest::default()
            .with_transactional_id(txn_id())
            .with_producer_id(ProducerId(pid))
            .with_producer_epoch(epoch)
            .with_committed(true)
    };
    let r: EndTxnResponse = c.call(ApiKey::EndTxn, 5, &end_v5(epoch)).await.unwrap();
    assert_eq!(
        (r.error_code, r.producer_id.0, r.producer_epoch),
        (0, pid, epoch + 1),
        "the epoch moves on with the end"
    );
    // A retry carrying the old epoch: the same answer.
    let r: EndTxnResponse = c.call(ApiKey::EndTxn, 5, &end_v5(epoch)).await.unwrap();
    assert_eq!((r.error_code, r.producer_epoch), (0, epoch + 1));
    let (lso, hwm, aborted, _) = fetch_committed(&mut c, "tv2").await;
    assert_eq!((lso, hwm), (2, 2));
    assert!(aborted.is_empty());
    // A late batch of the ended transaction (old epoch): fenced by its partition.
    let mut late = produce_request("tv2", txn_batch(pid, epoch, 1, "late"));
    late.transactional_id = Some(txn_id());
    let resp: ProduceResponse = c.call(ApiKey::Produce, 12, &late).await.unwrap();
    assert_eq!(
        resp.responses[0].partition_responses[0].error_code,
        ResponseError::InvalidProducerEpoch.code()
    );
    // The next transaction at the new epoch starts its sequences again.
    let mut next = produce_request("tv2", txn_batch(pid, epoch + 1, 0, "b"));
    next.transactional_id = Some(txn_id());
    let resp: ProduceResponse = c.call(ApiKey::Produce, 12, &next).await.unwrap();
    let p = &resp.responses[0].partition_responses[0];
    assert_eq!((p.error_code, p.base_offset), (0, 2));
    let abort = end_v5(epoch + 1).with_committed(false);
    let r: EndTxnResponse = c.call(ApiKey::EndTxn, 5, &abort).await.unwrap();
    assert_eq!((r.error_code, r.producer_epoch), (0, epoch + 2));
    let (lso, hwm, aborted, _) = fetch_committed(&mut c, "tv2").await;
    assert_eq!((lso, hwm), (4, 4));
    assert_eq!(aborted, vec![(pid, 2)]);
    // The committed offset became the group's.
    let r: OffsetFetchResponse = c
        .call(
            ApiKey::OffsetFetch,
            7,
            &OffsetFetchRequest::default()
                .with_group_id(group("tv2-g"))
                .with_require_stable(true)
                .with_topics(None),
        )
        .await
        .unwrap();
    assert_eq!(r.topics[0].partitions[0].committed_offset, 7);
}
