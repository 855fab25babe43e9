//! DescribeGroups (key 15), versions 0-6.
//! v1: throttle time. v3: authorized operations. v4: group.instance.id of members. v5: flexible.
//! v6: GROUP_ID_NOT_FOUND for unknown groups, error message (KIP-1043); before it, an unknown group is
//! described as Dead with no error. Member metadata and assignments are included only when the group
//! is Stable, as in Kafka.

use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::{
    ApiKey, DescribeGroupsRequest, DescribeGroupsResponse, RequestHeader,
};
use std::sync::Arc;

use super::{authorized_operations, str_bytes, ApiSpec, Reply, GROUP_AUTHORIZED_OPERATIONS};
use crate::group::classic::ClassicState;
use crate::group::GroupKind;
use crate::{error, Broker};

pub const API: ApiSpec = ApiSpec {
    key: ApiKey::DescribeGroups,
    min: 0,
    max: 6,
};

pub async fn handle(
    broker: &Arc<Broker>,
    header: &RequestHeader,
    req: DescribeGroupsRequest,
) -> Reply<DescribeGroupsResponse> {
    let version = header.request_api_version;
    let ops = authorized_operations(
        req.include_authorized_operations,
        GROUP_AUTHORIZED_OPERATIONS,
    );
    // A group named twice is described once: each description can be large (members'
    // metadata and assignments), so repeats must not multiply the response. (Kafka answers every
    // repeat; its clients never send one.)
    let mut seen = std::collections::HashSet::new();
    let described = req
        .groups
        .iter()
        .filter(|id| seen.insert(id.as_str()))
        .map(|id| {
            let out = DescribedGroup::default()
                .with_group_id(id.clone())
                .with_authorized_operations(ops);
            let base = out.clone();
            let dead = move || {
                let d = base.with_group_state(str_bytes("Dead"));
                if version >= 6 {
                    d.with_error_code(error::GROUP_ID_NOT_FOUND)
                        .with_error_message(Some(str_bytes(&format!(
                            "Group {} not found.",
                            id.as_str()
                        ))))
                } else {
                    d
                }
            };
            let described = broker.groups.with_existing(id.as_str(), |g| match &g.kind {
                GroupKind::Consumer(_) => {
                    // A KIP-848 group is described by ConsumerGroupDescribe; Kafka says so here.
                    out.with_group_state(str_bytes("Dead"))
                        .with_error_code(if version >= 6 {
                            error::GROUP_ID_NOT_FOUND
                        } else {
                            error::NONE
                        })
                        .with_error_message(if version >= 6 {
                            Some(str_bytes(&format!(
                                "Group {} is not a classic group.",
                                id.as_str()
                            )))
                        } else {
                            None
                        })
                }
                GroupKind::Classic(g) => {
                    let stable = g.state == ClassicState::Stable;
                    let protocol = g.protocol_name.clone().unwrap_or_default();
                    let mut members: Vec<_> = g.members.values().collect();
                    members.sort_by(|a, b| a.id.cmp(&b.id));
                    let members = members
                        .into_iter()
                        .map(|m| {
                            let d = DescribedGroupMember::default()
                                .with_member_id(str_bytes(&m.id))
                                .with_group_instance_id(if version >= 4 {
                                    m.instance_id.as_deref().map(str_bytes)
                                } else {
                                    None
                                })
                                .with_client_id(str_bytes(&m.client_id))
                                .with_client_host(str_bytes(&m.client_host));
                            if stable {
                                let meta = m
                                    .protocols
                                    .iter()
                                    .find(|(n, _)| *n == protocol)
                                    .map(|(_, b)| b.clone())
                                    .unwrap_or_default();
                                d.with_member_metadata(meta)
                                    .with_member_assignment(m.assignment.clone())
                            } else {
                                d
                            }
                        })
                        .collect();
                    out.with_group_state(str_bytes(g.state.name()))
                        .with_protocol_type(str_bytes(g.protocol_type.as_deref().unwrap_or("")))
                        .with_protocol_data(str_bytes(if stable { &protocol } else { "" }))
                        .with_members(members)
                }
            });
            described.unwrap_or_else(dead)
        })
        .collect();
    Reply::Now(DescribeGroupsResponse::default().with_groups(described))
}
