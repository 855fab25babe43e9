//! LeaveGroup (key 13), versions 0-5.
//! v1: throttle time. v3: a batch of members, by member id or group.instance.id (KIP-345).
//! v4: flexible. v5: reason.

use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::{ApiKey, LeaveGroupRequest, LeaveGroupResponse, RequestHeader};
use std::sync::Arc;

use super::{ApiSpec, Reply};
use crate::group::LeavingMember;
use crate::Broker;

pub const API: ApiSpec = ApiSpec {
    key: ApiKey::LeaveGroup,
    min: 0,
    max: 5,
};

pub fn handle(
    broker: &Arc<Broker>,
    header: &RequestHeader,
    req: LeaveGroupRequest,
) -> Reply<LeaveGroupResponse> {
    let version = header.request_api_version;
    let leaving: Vec<LeavingMember> = if version >= 3 {
        req.members
            .iter()
            .map(|m| LeavingMember {
                member_id: m.member_id.to_string(),
                instance_id: m.group_instance_id.as_ref().map(|s| s.to_string()),
            })
            .collect()
    } else {
        vec![LeavingMember {
            member_id: req.member_id.to_string(),
            instance_id: None,
        }]
    };
    let results = match broker.groups.leave(&req.group_id, &leaving) {
        Ok(codes) => codes,
        Err(code) => return Reply::Now(LeaveGroupResponse::default().with_error_code(code)),
    };
    if version < 3 {
        let code = results.first().copied().unwrap_or_default();
        return Reply::Now(LeaveGroupResponse::default().with_error_code(code));
    }
    let members = leaving
        .into_iter()
        .zip(&results)
        .map(|(m, code)| {
            MemberResponse::default()
                .with_member_id(super::str_bytes(&m.member_id))
                .with_group_instance_id(m.instance_id.map(|s| super::str_bytes(&s)))
                .with_error_code(*code)
        })
        .collect();
    Reply::Now(LeaveGroupResponse::default().with_members(members))
}
