//! FindCoordinator (key 10), versions 0-6.
//! v1: key type (group or transaction), throttle time, error message. v3: flexible.
//! v4: batched coordinator keys (KIP-699). v5/v6: no change for groups (new error codes, share groups).
//! Every group and transactional id is coordinated by this broker. The first lookup of a key type
//! creates its internal topic (`__consumer_offsets`, `__transaction_state`) before answering, as
//! Kafka does.

use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::{
    ApiKey, BrokerId, FindCoordinatorRequest, FindCoordinatorResponse, RequestHeader,
};
use std::sync::Arc;

use super::{str_bytes, ApiSpec, Reply};
use crate::{error, internal_topics, Broker};

pub const API: ApiSpec = ApiSpec {
    key: ApiKey::FindCoordinator,
    min: 0,
    max: 6,
};

pub fn handle(
    broker: &Arc<Broker>,
    header: &RequestHeader,
    req: FindCoordinatorRequest,
) -> Reply<FindCoordinatorResponse> {
    let c = &broker.config;
    let (node, host, port) = (
        BrokerId(c.node_id),
        str_bytes(&c.advertised_host),
        c.advertised_port,
    );
    // Keys must be non-empty (Kafka answers INVALID_REQUEST for an empty group or transactional
    // id); key types are 0 (group) and 1 (transaction).
    let code_for = |key: &str| {
        if !(0..=1).contains(&req.key_type) || key.is_empty() {
            error::INVALID_REQUEST
        } else {
            error::NONE
        }
    };
    let internal = match req.key_type {
        0 => internal_topics::CONSUMER_OFFSETS,
        _ => internal_topics::TRANSACTION_STATE,
    };
    let reply = |resp: FindCoordinatorResponse| -> Reply<FindCoordinatorResponse> {
        if broker.storage.topic(internal).is_some() || !(0..=1).contains(&req.key_type) {
            return Reply::Now(resp);
        }
        let broker = broker.clone();
        Reply::later(async move {
            internal_topics::ensure(&broker, internal).await;
            resp
        })
    };
    if header.request_api_version >= 4 {
        let coordinators = req
            .coordinator_keys
            .iter()
            .map(|k| {
                let code = code_for(k);
                let c = Coordinator::default()
                    .with_key(k.clone())
                    .with_error_code(code);
                if code == error::NONE {
                    c.with_node_id(node).with_host(host.clone()).with_port(port)
                } else {
                    c.with_node_id(BrokerId(-1)).with_port(-1)
                }
            })
            .collect();
        return reply(FindCoordinatorResponse::default().with_coordinators(coordinators));
    }
    let code = code_for(&req.key);
    let resp = FindCoordinatorResponse::default().with_error_code(code);
    reply(if code == error::NONE {
        resp.with_node_id(node).with_host(host).with_port(port)
    } else {
        resp.with_node_id(BrokerId(-1)).with_port(-1)
    })
}
