//! LeaveGroup (key 13), versions 0-5.
//! v1: throttle time. v3: a batch of members, by member id or group.instance.id (KIP-345).
//! v4: flexible. v5: reason.

use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::{ApiKey, LeaveGroupRequest, LeaveGroupResponse, RequestHeader};
use std::sync::Arc;
use std::time::Instant;

use super::{ApiSpec, Reply};
use crate::{error, Broker};

pub const API: ApiSpec = ApiSpec {
    key: ApiKey::LeaveGroup,
    min: 0,
    max: 5,
};

pub async fn handle(
    broker: &Arc<Broker>,
    header: &RequestHeader,
    req: LeaveGroupRequest,
) -> Reply<LeaveGroupResponse> {
    let version = header.request_api_version;
    if req.group_id.is_empty() {
        return Reply::Now(LeaveGroupResponse::default().with_error_code(error::INVALID_GROUP_ID));
    }
    let leaving: Vec<(String, Option<String>)> = if version >= 3 {
        req.members
            .iter()
            .map(|m| {
                (
                    m.member_id.to_string(),
                    m.group_instance_id.as_ref().map(|s| s.to_string()),
                )
            })
            .collect()
    } else {
        vec![(req.member_id.to_string(), None)]
    };
    let delay = broker.groups.config.initial_rebalance_delay;
    let mut changed = false;
    let results: Vec<i16> = leaving
        .iter()
        .map(|(member, instance)| {
            broker
                .groups
                .with_classic(&req.group_id, error::UNKNOWN_MEMBER_ID, |g| {
                    let (code, c) = g.leave(member, instance.as_deref(), delay, Instant::now());
                    changed |= c;
                    code
                })
        })
        .collect();
    if changed {
        broker.groups.persist(&req.group_id);
    }
    if version < 3 {
        return Reply::Now(LeaveGroupResponse::default().with_error_code(results[0]));
    }
    let members = leaving
        .into_iter()
        .zip(&results)
        .map(|((m, i), code)| {
            MemberResponse::default()
                .with_member_id(super::str_bytes(&m))
                .with_group_instance_id(i.map(|s| super::str_bytes(&s)))
                .with_error_code(*code)
        })
        .collect();
    Reply::Now(LeaveGroupResponse::default().with_members(members))
}
