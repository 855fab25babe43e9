//! ConsumerGroupHeartbeat (key 68), versions 0-1 (KIP-848).
//! v0: the broker-side rebalance protocol. v1: the client chooses its member id (a UUID) and may
//! subscribe by regular expression (SubscribedTopicRegex).
//! The answer carries the member's epoch and its current assignment; see `group/consumer.rs` for how
//! partitions are revoked before they are handed to another member.

use kafka_protocol::messages::consumer_group_heartbeat_response::{Assignment, TopicPartitions};
use kafka_protocol::messages::{
    ApiKey, ConsumerGroupHeartbeatRequest, ConsumerGroupHeartbeatResponse, RequestHeader,
};
use std::net::SocketAddr;
use std::sync::Arc;

use super::{str_bytes, ApiSpec, Reply};
use crate::group::{HeartbeatRequest, HeartbeatResult};
use crate::{error, Broker};

pub const API: ApiSpec = ApiSpec {
    key: ApiKey::ConsumerGroupHeartbeat,
    min: 0,
    max: 1,
};

pub fn handle(
    broker: &Arc<Broker>,
    header: &RequestHeader,
    req: ConsumerGroupHeartbeatRequest,
    peer: SocketAddr,
) -> Reply<ConsumerGroupHeartbeatResponse> {
    let owned = req.topic_partitions.as_ref().map(|tps| {
        tps.iter()
            .map(|tp| (tp.topic_id, tp.partitions.iter().copied().collect()))
            .collect()
    });
    let hb = HeartbeatRequest {
        member_id: req.member_id.to_string(),
        member_epoch: req.member_epoch,
        instance_id: req.instance_id.as_ref().map(|s| s.to_string()),
        rack_id: req.rack_id.as_ref().map(|s| s.to_string()),
        rebalance_timeout_ms: req.rebalance_timeout_ms,
        subscribed: req
            .subscribed_topic_names
            .as_ref()
            .map(|ts| ts.iter().map(|t| t.to_string()).collect()),
        regex: req.subscribed_topic_regex.as_ref().map(|s| s.to_string()),
        server_assignor: req.server_assignor.as_ref().map(|s| s.to_string()),
        owned,
        client_id: header
            .client_id
            .as_ref()
            .map(|s| s.to_string())
            .unwrap_or_default(),
        client_host: format!("/{}", peer.ip()),
    };
    // The group's step (a target computation over all its partitions when the epoch moved) runs on
    // a blocking thread: members of one big group queue for its lock there, not on the runtime
    // threads that serve everyone else. Awaited in request order, so its effect still comes before
    // the connection's next request.
    let groups = broker.groups.clone();
    let group_id = req.group_id.to_string();
    let version = header.request_api_version;
    Reply::in_order(async move {
        let stepped =
            tokio::task::spawn_blocking(move || groups.consumer_heartbeat(&group_id, version, hb))
                .await;
        answer(stepped.ok())
    })
}

/// The heartbeat's answer from the group's step (`None`: the step did not complete).
fn answer(stepped: Option<HeartbeatResult>) -> Reply<ConsumerGroupHeartbeatResponse> {
    let Some(r) = stepped else {
        return Reply::Now(
            ConsumerGroupHeartbeatResponse::default()
                .with_error_code(error::COORDINATOR_NOT_AVAILABLE)
                .with_error_message(Some(str_bytes("The coordinator is not available."))),
        );
    };
    let resp = ConsumerGroupHeartbeatResponse::default()
        .with_error_code(r.error)
        .with_error_message(r.message.map(|m| str_bytes(&m)))
        .with_member_id(if r.member_id.is_empty() {
            None
        } else {
            Some(str_bytes(&r.member_id))
        })
        .with_member_epoch(r.member_epoch)
        .with_heartbeat_interval_ms(r.heartbeat_interval_ms)
        .with_assignment(r.assignment.map(|a| {
            Assignment::default().with_topic_partitions(
                a.into_iter()
                    .map(|(t, ps)| {
                        TopicPartitions::default()
                            .with_topic_id(t)
                            .with_partitions(ps.into_iter().collect())
                    })
                    .collect(),
            )
        }));
    Reply::Now(resp)
}
