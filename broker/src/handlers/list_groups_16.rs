//! ListGroups (key 16), versions 0-5.
//! v1: throttle time. v3: flexible. v4: state filter and group state (KIP-518). v5: type filter and
//! group type (KIP-848). The coordinator applies the filters (case-insensitively, as Kafka does).

use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::{
    ApiKey, GroupId, ListGroupsRequest, ListGroupsResponse, RequestHeader,
};
use std::sync::Arc;

use super::{str_bytes, ApiSpec, Reply};
use crate::Broker;

pub const API: ApiSpec = ApiSpec {
    key: ApiKey::ListGroups,
    min: 0,
    max: 5,
};

pub fn handle(
    broker: &Arc<Broker>,
    header: &RequestHeader,
    req: ListGroupsRequest,
) -> Reply<ListGroupsResponse> {
    let version = header.request_api_version;
    let states: Vec<String> = req.states_filter.iter().map(|s| s.to_string()).collect();
    let types: Vec<String> = req.types_filter.iter().map(|s| s.to_string()).collect();
    let groups = broker
        .groups
        .list_filtered(&states, &types)
        .into_iter()
        .map(|g| {
            ListedGroup::default()
                .with_group_id(GroupId(str_bytes(&g.group_id)))
                .with_protocol_type(str_bytes(&g.protocol_type))
                .with_group_state(str_bytes(if version >= 4 { g.state } else { "" }))
                .with_group_type(str_bytes(if version >= 5 { g.group_type } else { "" }))
        })
        .collect();
    Reply::Now(ListGroupsResponse::default().with_groups(groups))
}
