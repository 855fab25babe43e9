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
use crate::group::Described;
use crate::{error, Broker};

pub const API: ApiSpec = ApiSpec {
    key: ApiKey::DescribeGroups,
    min: 0,
    max: 6,
};

pub fn handle(
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
            // v6 says why a group is not described (KIP-1043); before it, the group is just Dead.
            let dead = |why: &str| {
                let d = out.clone().with_group_state(str_bytes("Dead"));
                if version >= 6 {
                    d.with_error_code(error::GROUP_ID_NOT_FOUND)
                        .with_error_message(Some(str_bytes(&format!(
                            "Group {} {why}.",
                            id.as_str()
                        ))))
                } else {
                    d
                }
            };
            match broker.groups.describe_classic(id.as_str()) {
                Described::Missing => dead("not found"),
                // A KIP-848 group is described by ConsumerGroupDescribe; Kafka says so here.
                Described::OtherProtocol => dead("is not a classic group"),
                Described::Found(g) => {
                    let members = g
                        .members
                        .into_iter()
                        .map(|m| {
                            DescribedGroupMember::default()
                                .with_member_id(str_bytes(&m.member_id))
                                .with_group_instance_id(if version >= 4 {
                                    m.instance_id.as_deref().map(str_bytes)
                                } else {
                                    None
                                })
                                .with_client_id(str_bytes(&m.client_id))
                                .with_client_host(str_bytes(&m.client_host))
                                .with_member_metadata(m.metadata)
                                .with_member_assignment(m.assignment)
                        })
                        .collect();
                    out.with_group_state(str_bytes(g.state))
                        .with_protocol_type(str_bytes(&g.protocol_type))
                        .with_protocol_data(str_bytes(&g.protocol_data))
                        .with_members(members)
                }
            }
        })
        .collect();
    Reply::Now(DescribeGroupsResponse::default().with_groups(described))
}
