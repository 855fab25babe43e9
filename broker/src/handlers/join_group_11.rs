//! JoinGroup (key 11), versions 0-9.
//! v1: rebalance timeout. v2: throttle time. v4: MEMBER_ID_REQUIRED for new members (KIP-394).
//! v5: group.instance.id (static membership, KIP-345). v6: flexible. v7: protocol type in the
//! response. v8: reason. v9: skip_assignment for a static leader rejoining (KIP-814).
//! The answer comes when the rebalance completes, so the handler returns a future.

use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::{ApiKey, JoinGroupRequest, JoinGroupResponse, RequestHeader};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::{str_bytes, ApiSpec, Reply};
use crate::group::{self, JoinRequest, JoinResult, Protocol};
use crate::{error, Broker};

pub const API: ApiSpec = ApiSpec {
    key: ApiKey::JoinGroup,
    min: 0,
    max: 9,
};

pub fn handle(
    broker: &Arc<Broker>,
    header: &RequestHeader,
    req: JoinGroupRequest,
    peer: SocketAddr,
) -> Reply<JoinGroupResponse> {
    let version = header.request_api_version;
    // v0 has no rebalance timeout: Kafka uses the session timeout.
    let rebalance = if version >= 1 {
        req.rebalance_timeout_ms
    } else {
        req.session_timeout_ms
    };
    let join = JoinRequest {
        member_id: req.member_id.to_string(),
        instance_id: req.group_instance_id.as_ref().map(|s| s.to_string()),
        client_id: header
            .client_id
            .as_ref()
            .map(|s| s.to_string())
            .unwrap_or_default(),
        client_host: format!("/{}", peer.ip()),
        session_timeout: Duration::from_millis(req.session_timeout_ms.max(0) as u64),
        rebalance_timeout: Duration::from_millis(rebalance.max(0) as u64),
        protocol_type: req.protocol_type.to_string(),
        protocols: req
            .protocols
            .iter()
            .map(|p| Protocol {
                name: p.name.to_string(),
                metadata: p.metadata.clone(),
            })
            .collect(),
        require_known_member_id: version >= 4,
    };
    match broker.groups.join(&req.group_id, join) {
        group::Reply::Now(r) => Reply::Now(response(version, r)),
        group::Reply::Later(rx) => {
            let member_id = req.member_id.to_string();
            Reply::Later(Box::pin(async move {
                let r = rx.await.unwrap_or(JoinResult {
                    error: error::UNKNOWN_MEMBER_ID,
                    generation: -1,
                    member_id,
                    ..Default::default()
                });
                response(version, r)
            }))
        }
    }
}

fn response(version: i16, r: JoinResult) -> JoinGroupResponse {
    JoinGroupResponse::default()
        .with_error_code(r.error)
        .with_generation_id(r.generation)
        .with_protocol_type(if version >= 7 {
            r.protocol_type.map(|s| str_bytes(&s))
        } else {
            None
        })
        .with_protocol_name(r.protocol_name.map(|s| str_bytes(&s)))
        .with_leader(str_bytes(&r.leader))
        .with_skip_assignment(version >= 9 && r.skip_assignment)
        .with_member_id(str_bytes(&r.member_id))
        .with_members(
            r.members
                .into_iter()
                .map(|m| {
                    JoinGroupResponseMember::default()
                        .with_member_id(str_bytes(&m.member_id))
                        .with_group_instance_id(if version >= 5 {
                            m.instance_id.map(|s| str_bytes(&s))
                        } else {
                            None
                        })
                        .with_metadata(m.metadata)
                })
                .collect(),
        )
}
