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
use crate::group::{AssignedTopic, Described};
use crate::{error, Broker};

pub const API: ApiSpec = ApiSpec {
    key: ApiKey::ConsumerGroupDescribe,
    min: 0,
    max: 1,
};

fn assignment(topics: Vec<AssignedTopic>) -> Assignment {
    Assignment::default().with_topic_partitions(
        topics
            .into_iter()
            .map(|t| {
                TopicPartitions::default()
                    .with_topic_id(t.topic_id)
                    .with_topic_name(TopicName(str_bytes(&t.topic_name)))
                    .with_partitions(t.partitions)
            })
            .collect(),
    )
}

pub fn handle(
    broker: &Arc<Broker>,
    header: &RequestHeader,
    req: ConsumerGroupDescribeRequest,
) -> Reply<ConsumerGroupDescribeResponse> {
    let ops = authorized_operations(
        req.include_authorized_operations,
        GROUP_AUTHORIZED_OPERATIONS,
    );
    // v1: members are of the consumer type (1); v0 has no member type.
    let member_type = if header.request_api_version >= 1 {
        1
    } else {
        -1
    };
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
            let not_found = |why: &str| {
                out.clone()
                    .with_error_code(error::GROUP_ID_NOT_FOUND)
                    .with_error_message(Some(str_bytes(&format!("Group {} {why}.", id.as_str()))))
            };
            match broker.groups.describe_consumer(id.as_str()) {
                Described::Missing => not_found("not found"),
                Described::OtherProtocol => not_found("is not a consumer group"),
                Described::Found(g) => out
                    .with_group_state(str_bytes(g.state))
                    .with_group_epoch(g.group_epoch)
                    .with_assignment_epoch(g.assignment_epoch)
                    .with_assignor_name(str_bytes(&g.assignor_name))
                    .with_members(
                        g.members
                            .into_iter()
                            .map(|m| {
                                Member::default()
                                    .with_member_id(str_bytes(&m.member_id))
                                    .with_instance_id(m.instance_id.as_deref().map(str_bytes))
                                    .with_rack_id(m.rack_id.as_deref().map(str_bytes))
                                    .with_member_epoch(m.member_epoch)
                                    .with_client_id(str_bytes(&m.client_id))
                                    .with_client_host(str_bytes(&m.client_host))
                                    .with_subscribed_topic_names(
                                        m.subscribed_topic_names
                                            .iter()
                                            .map(|t| TopicName(str_bytes(t)))
                                            .collect(),
                                    )
                                    .with_subscribed_topic_regex(
                                        m.subscribed_topic_regex.as_deref().map(str_bytes),
                                    )
                                    .with_assignment(assignment(m.assignment))
                                    .with_target_assignment(assignment(m.target_assignment))
                                    .with_member_type(member_type)
                            })
                            .collect(),
                    ),
            }
        })
        .collect();
    Reply::Now(ConsumerGroupDescribeResponse::default().with_groups(described))
}
