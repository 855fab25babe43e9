//! SyncGroup (key 14), versions 0-5.
//! v1: throttle time. v3: group.instance.id. v4: flexible. v5: protocol type and name in both
//! request and response (KIP-559). The leader's assignment is passed through untouched; followers
//! wait for it.

use kafka_protocol::messages::{ApiKey, RequestHeader, SyncGroupRequest, SyncGroupResponse};
use std::sync::Arc;

use super::{str_bytes, ApiSpec, Reply};
use crate::group::{self, MemberAssignment, SyncRequest, SyncResult};
use crate::{error, Broker};

pub const API: ApiSpec = ApiSpec {
    key: ApiKey::SyncGroup,
    min: 0,
    max: 5,
};

pub fn handle(
    broker: &Arc<Broker>,
    header: &RequestHeader,
    req: SyncGroupRequest,
) -> Reply<SyncGroupResponse> {
    let version = header.request_api_version;
    let assignments = req
        .assignments
        .iter()
        .map(|a| MemberAssignment {
            member_id: a.member_id.to_string(),
            assignment: a.assignment.clone(),
        })
        .collect();
    let sync = SyncRequest {
        member_id: req.member_id.to_string(),
        instance_id: req.group_instance_id.as_ref().map(|s| s.to_string()),
        generation: req.generation_id,
        protocol_type: req.protocol_type.as_ref().map(|s| s.to_string()),
        protocol_name: req.protocol_name.as_ref().map(|s| s.to_string()),
        assignments,
    };
    match broker.groups.sync(&req.group_id, sync) {
        group::Reply::Now(r) => Reply::Now(response(version, r)),
        group::Reply::Later(rx) => Reply::Later(Box::pin(async move {
            response(
                version,
                rx.await.unwrap_or(SyncResult {
                    error: error::REBALANCE_IN_PROGRESS,
                    ..Default::default()
                }),
            )
        })),
    }
}

fn response(version: i16, r: SyncResult) -> SyncGroupResponse {
    let v5 = version >= 5 && r.error == error::NONE;
    SyncGroupResponse::default()
        .with_error_code(r.error)
        .with_protocol_type(if v5 {
            r.protocol_type.map(|s| str_bytes(&s))
        } else {
            None
        })
        .with_protocol_name(if v5 {
            r.protocol_name.map(|s| str_bytes(&s))
        } else {
            None
        })
        .with_assignment(r.assignment)
}
