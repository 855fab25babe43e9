//! Heartbeat (key 12), versions 0-4.
//! v1: throttle time. v3: group.instance.id. v4: flexible.
//! REBALANCE_IN_PROGRESS tells a member to rejoin; the heartbeat still counts for its session.

use kafka_protocol::messages::{ApiKey, HeartbeatRequest, HeartbeatResponse, RequestHeader};
use std::sync::Arc;

use super::{ApiSpec, Reply};
use crate::Broker;

pub const API: ApiSpec = ApiSpec {
    key: ApiKey::Heartbeat,
    min: 0,
    max: 4,
};

pub fn handle(
    broker: &Arc<Broker>,
    _header: &RequestHeader,
    req: HeartbeatRequest,
) -> Reply<HeartbeatResponse> {
    let code = broker.groups.heartbeat(
        &req.group_id,
        &req.member_id,
        req.group_instance_id.as_deref(),
        req.generation_id,
    );
    Reply::Now(HeartbeatResponse::default().with_error_code(code))
}
