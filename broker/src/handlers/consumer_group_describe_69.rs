//! ConsumerGroupDescribe (key 69), versions 0-1 (KIP-848).
//! v1: member type (classic or consumer members). A classic group is reported as GROUP_ID_NOT_FOUND
//! ("not a consumer group"), which is how Kafka's admin client knows to fall back to DescribeGroups.

use kafka_protocol::messages::consumer_group_describe_response::{
    Assignment, DescribedGroup, Member, TopicPartitions,
};
use kafka_protocol::messages::{
    ApiKey, ConsumerGroupDescribeRequest, ConsumerGroupDescribeResponse, RequestHeader, TopicName,
};
use std::sync::Arc;

use super::{authorized_operations, str_bytes, ApiSpec, Reply, GROUP_AUTHORIZED_OPERATIONS};
use crate::group::consumer::Assignment as Parts;
use crate::group::GroupKind;
use crate::{error, Broker};

pub const API: ApiSpec = ApiSpec {
    key: ApiKey::ConsumerGroupDescribe,
    min: 0,
    max: 1,
};

pub async fn handle(
    broker: &Arc<Broker>,
    header: &RequestHeader,
    req: ConsumerGroupDescribeRequest,
) -> Reply<ConsumerGroupDescribeResponse> {
    let storage = &broker.storage;
    let to_assignment = |a: &Parts| {
        Assignment::default().with_topic_partitions(
            a.iter()
                .map(|(id, ps)| {
                    let name = storage
                        .topic_by_id(*id)
                        .map(|t| t.name.clone())
                        .unwrap_or_default();
                    TopicPartitions::default()
                        .with_topic_id(*id)
                        .with_topic_name(TopicName(str_bytes(&name)))
                        .with_partitions(ps.iter().copied().collect())
                })
                .collect(),
        )
    };
    let ops = authorized_operations(
        req.include_authorized_operations,
        GROUP_AUTHORIZED_OPERATIONS,
    );
    // A group named twice is described once: each description can be large (members'
    // metadata and assignments), so repeats must not multiply the response. (Kafka answers every
    // repeat; its clients never send one.)
    let mut seen = std::collections::HashSet::new();
    let described = req
        .group_ids
        .iter()
        .filter(|id| seen.insert(id.as_str()))
        .map(|id| {
            let out = DescribedGroup::default()
                .with_group_id(id.clone())
                .with_authorized_operations(ops);
            let not_found = out.clone();
            let described = broker.groups.with_existing(id.as_str(), |g| match &g.kind {
                GroupKind::Consumer(g) => {
                    let mut members: Vec<_> = g.members.values().collect();
                    members.sort_by(|a, b| a.id.cmp(&b.id));
                    out.with_group_state(str_bytes(g.state_name()))
                        .with_group_epoch(g.group_epoch)
                        .with_assignment_epoch(g.assignment_epoch)
                        .with_assignor_name(str_bytes(if g.assignor.is_empty() {
                            "uniform"
                        } else {
                            &g.assignor
                        }))
                        .with_members(
                            members
                                .into_iter()
                                .map(|m| {
                                    Member::default()
                                        .with_member_id(str_bytes(&m.id))
                                        .with_instance_id(m.instance_id.as_deref().map(str_bytes))
                                        .with_rack_id(m.rack_id.as_deref().map(str_bytes))
                                        .with_member_epoch(m.member_epoch)
                                        .with_client_id(str_bytes(&m.client_id))
                                        .with_client_host(str_bytes(&m.client_host))
                                        .with_subscribed_topic_names(
                                            m.subscribed
                                                .iter()
                                                .map(|t| TopicName(str_bytes(t)))
                                                .collect(),
                                        )
                                        .with_subscribed_topic_regex(
                                            m.regex.as_deref().map(str_bytes),
                                        )
                                        .with_assignment(to_assignment(&m.assigned))
                                        .with_target_assignment(to_assignment(
                                            &g.target.get(&m.id).cloned().unwrap_or_default(),
                                        ))
                                        .with_member_type(if header.request_api_version >= 1 {
                                            1
                                        } else {
                                            -1
                                        })
                                })
                                .collect(),
                        )
                }
                GroupKind::Classic(_) => out
                    .with_error_code(error::GROUP_ID_NOT_FOUND)
                    .with_error_message(Some(str_bytes(&format!(
                        "Group {} is not a consumer group.",
                        id.as_str()
                    )))),
            });
            described.unwrap_or_else(|| {
                not_found
                    .with_error_code(error::GROUP_ID_NOT_FOUND)
                    .with_error_message(Some(str_bytes(&format!(
                        "Group {} not found.",
                        id.as_str()
                    ))))
            })
        })
        .collect();
    Reply::Now(ConsumerGroupDescribeResponse::default().with_groups(described))
}
