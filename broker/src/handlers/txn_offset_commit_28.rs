//! TxnOffsetCommit (key 28), versions 0-5.
//! v1: same as v0. v2: committed leader epoch. v3: flexible; group generation, member id and
//! instance id (KIP-447), checked against the group. v4: same as v3. v5: a transaction.version 2
//! producer's (KIP-890): the group is added to the transaction by the commit itself (no
//! AddOffsetsToTxn); TRANSACTION_ABORTABLE may be answered.
//! The offsets stay with the transaction (persisted with its state) and become the group's only when
//! it commits; an abort drops them. Kafka's errors: INVALID_TXN_STATE unless the group was added
//! with AddOffsetsToTxn to the producer's ongoing transaction, INVALID_PRODUCER_EPOCH for a stale
//! epoch, the group's own errors for a stale member, per-partition UNKNOWN_TOPIC_OR_PARTITION and
//! OFFSET_METADATA_TOO_LARGE.

use kafka_protocol::messages::txn_offset_commit_response::{
    TxnOffsetCommitResponsePartition, TxnOffsetCommitResponseTopic,
};
use kafka_protocol::messages::{
    ApiKey, RequestHeader, TxnOffsetCommitRequest, TxnOffsetCommitResponse,
};
use std::sync::Arc;

use super::{ApiSpec, Reply};
use crate::txn::{PendingOffset, TxnOffset};
use crate::{error, Broker};

pub const API: ApiSpec = ApiSpec {
    key: ApiKey::TxnOffsetCommit,
    min: 0,
    max: 5,
};

pub fn handle(
    broker: &Arc<Broker>,
    header: &RequestHeader,
    req: TxnOffsetCommitRequest,
) -> Reply<TxnOffsetCommitResponse> {
    let version = header.request_api_version;
    let broker = broker.clone();
    Reply::in_order(async move {
        let offsets = req
            .topics
            .iter()
            .flat_map(|t| {
                t.partitions.iter().map(move |p| TxnOffset {
                    topic: t.name.to_string(),
                    partition: p.partition_index,
                    offset: PendingOffset {
                        offset: p.committed_offset,
                        leader_epoch: if version >= 2 {
                            p.committed_leader_epoch
                        } else {
                            -1
                        },
                        metadata: p.committed_metadata.as_ref().map(|m| m.to_string()),
                    },
                })
            })
            .collect();
        let member = if version >= 3 {
            (
                req.member_id.to_string(),
                req.group_instance_id.as_ref().map(|s| s.to_string()),
                req.generation_id,
            )
        } else {
            (String::new(), None, -1)
        };
        let implicit = if version >= 5 && !req.group_id.is_empty() {
            broker
                .txns
                .add(
                    &req.transactional_id,
                    req.producer_id.0,
                    req.producer_epoch,
                    Vec::new(),
                    Some(req.group_id.to_string()),
                )
                .await
                .map_err(|code| match code {
                    // The group coordinator's answer for a stale epoch.
                    error::PRODUCER_FENCED => error::INVALID_PRODUCER_EPOCH,
                    c => c,
                })
        } else {
            Ok(())
        };
        let codes = match implicit {
            Err(code) => Err(code),
            Ok(()) => {
                broker
                    .txns
                    .commit_offsets(
                        &req.transactional_id,
                        &req.group_id,
                        req.producer_id.0,
                        req.producer_epoch,
                        (&member.0, member.1.as_deref(), member.2),
                        offsets,
                        broker.config.groups().offset_metadata_max_bytes,
                    )
                    .await
            }
        };
        let mut each = codes.as_ref().ok().map(|c| c.iter().copied());
        let topics = req
            .topics
            .iter()
            .map(|t| {
                let partitions = t
                    .partitions
                    .iter()
                    .map(|p| {
                        let code = match (&codes, each.as_mut()) {
                            (Ok(_), Some(it)) => it.next().unwrap_or(error::UNKNOWN_SERVER_ERROR),
                            (Err(code), _) => *code,
                            _ => error::UNKNOWN_SERVER_ERROR,
                        };
                        TxnOffsetCommitResponsePartition::default()
                            .with_partition_index(p.partition_index)
                            .with_error_code(code)
                    })
                    .collect();
                TxnOffsetCommitResponseTopic::default()
                    .with_name(t.name.clone())
                    .with_partitions(partitions)
            })
            .collect();
        Reply::Now(TxnOffsetCommitResponse::default().with_topics(topics))
    })
}
