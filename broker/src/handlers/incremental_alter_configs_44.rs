//! IncrementalAlterConfigs (key 44), versions 0-1 (KIP-339).
//! v1: flexible. Topic configs can be SET (0), DELETE'd (1), APPENDed to (2) or SUBTRACTed from (3)
//! (the last two for list configs such as cleanup.policy), validated like CreateTopics. Broker configs
//! are static here (set at start), so altering them is refused with INVALID_REQUEST.

use kafka_protocol::messages::incremental_alter_configs_response::AlterConfigsResourceResponse;
use kafka_protocol::messages::{
    ApiKey, IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse, RequestHeader,
};
use std::sync::Arc;

use super::{str_bytes, ApiSpec, Reply};
use crate::topic_config::{self, TYPE_LIST};
use crate::{error, Broker};

pub const API: ApiSpec = ApiSpec {
    key: ApiKey::IncrementalAlterConfigs,
    min: 0,
    max: 1,
};

const RESOURCE_TOPIC: i8 = 2;
const RESOURCE_BROKER: i8 = 4;

/// In request order: the client's next request sees the new configs (Kafka handles one request of a
/// connection at a time).
pub fn handle(
    broker: &Arc<Broker>,
    _header: &RequestHeader,
    req: IncrementalAlterConfigsRequest,
) -> Reply<IncrementalAlterConfigsResponse> {
    let broker = broker.clone();
    Reply::in_order(async move { Reply::Now(run(&broker, req).await) })
}

async fn run(
    broker: &Arc<Broker>,
    req: IncrementalAlterConfigsRequest,
) -> IncrementalAlterConfigsResponse {
    let mut responses = Vec::with_capacity(req.resources.len());
    for res in req.resources {
        let out = AlterConfigsResourceResponse::default()
            .with_resource_type(res.resource_type)
            .with_resource_name(res.resource_name.clone());
        let fail = |code: i16, msg: String| {
            out.clone()
                .with_error_code(code)
                .with_error_message(Some(str_bytes(&msg)))
        };
        let r = match res.resource_type {
            RESOURCE_BROKER => fail(
                error::INVALID_REQUEST,
                "StreamHouse broker configs are static: set them at start".into(),
            ),
            RESOURCE_TOPIC => match broker.storage.topic(&res.resource_name) {
                None => fail(
                    error::UNKNOWN_TOPIC_OR_PARTITION,
                    format!("Topic {} does not exist.", res.resource_name.as_str()),
                ),
                Some(topic) => {
                    let mut configs = topic.configs.clone();
                    let mut problem = None;
                    for c in &res.configs {
                        let name = c.name.to_string();
                        let value = c.value.as_ref().map(|v| v.to_string());
                        let list_default = || {
                            topic_config::topic_config(&name)
                                .map(|d| d.default.to_string())
                                .unwrap_or_default()
                        };
                        let outcome = match c.config_operation {
                            0 => topic_config::validate(&name, value.as_deref()).map(|_| {
                                configs.insert(name.clone(), value.clone().unwrap_or_default());
                            }),
                            1 => topic_config::topic_config(&name)
                                .map(|_| {
                                    configs.remove(&name);
                                })
                                .ok_or_else(|| format!("Unknown topic config name: {name}")),
                            op @ (2 | 3) => match topic_config::topic_config(&name) {
                                Some(d) if d.config_type == TYPE_LIST => {
                                    let current =
                                        configs.get(&name).cloned().unwrap_or_else(list_default);
                                    let mut items: Vec<String> = current
                                        .split(',')
                                        .map(|s| s.trim().to_string())
                                        .filter(|s| !s.is_empty())
                                        .collect();
                                    for v in value
                                        .as_deref()
                                        .unwrap_or_default()
                                        .split(',')
                                        .map(str::trim)
                                        .filter(|s| !s.is_empty())
                                    {
                                        if op == 2 && !items.iter().any(|i| i == v) {
                                            items.push(v.to_string());
                                        } else if op == 3 {
                                            items.retain(|i| i != v);
                                        }
                                    }
                                    let joined = items.join(",");
                                    topic_config::validate(&name, Some(&joined)).map(|_| {
                                        configs.insert(name.clone(), joined);
                                    })
                                }
                                _ => Err(format!(
                                    "Config {name} is not a list: APPEND/SUBTRACT do not apply"
                                )),
                            },
                            other => Err(format!("Unknown config operation {other}")),
                        };
                        if let Err(msg) = outcome {
                            problem = Some(msg);
                            break;
                        }
                    }
                    match problem {
                        Some(msg) => fail(error::INVALID_CONFIG, msg),
                        None if req.validate_only => out,
                        None => {
                            match broker.storage.set_topic_configs(&topic.name, configs).await {
                                Ok(_) => out,
                                Err(e) => fail(e.kafka_error_code(), e.to_string()),
                            }
                        }
                    }
                }
            },
            other => fail(
                error::INVALID_REQUEST,
                format!("Unsupported resource type {other}"),
            ),
        };
        responses.push(r);
    }
    IncrementalAlterConfigsResponse::default().with_responses(responses)
}
