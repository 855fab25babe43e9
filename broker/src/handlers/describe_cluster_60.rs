//! DescribeCluster (key 60), versions 0-2.
//! v0: brokers, cluster id, controller id. v1: endpoint_type (KIP-919). v2: include_fenced_brokers.
//! Cluster authorized operations, when asked for, are what Kafka answers without an authorizer.

use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::{
    ApiKey, BrokerId, DescribeClusterRequest, DescribeClusterResponse, RequestHeader,
};
use std::sync::Arc;

use super::{authorized_operations, str_bytes, ApiSpec, Reply, CLUSTER_AUTHORIZED_OPERATIONS};
use crate::Broker;

pub const API: ApiSpec = ApiSpec {
    key: ApiKey::DescribeCluster,
    min: 0,
    max: 2,
};

pub fn handle(
    broker: &Arc<Broker>,
    _header: &RequestHeader,
    req: DescribeClusterRequest,
) -> Reply<DescribeClusterResponse> {
    let c = &broker.config;
    Reply::Now(
        DescribeClusterResponse::default()
            .with_endpoint_type(1)
            .with_cluster_id(str_bytes(&broker.cluster_id))
            .with_controller_id(BrokerId(c.node_id))
            .with_brokers(vec![DescribeClusterBroker::default()
                .with_broker_id(BrokerId(c.node_id))
                .with_host(str_bytes(&c.advertised_host))
                .with_port(c.advertised_port)])
            .with_cluster_authorized_operations(authorized_operations(
                req.include_cluster_authorized_operations,
                CLUSTER_AUTHORIZED_OPERATIONS,
            )),
    )
}
