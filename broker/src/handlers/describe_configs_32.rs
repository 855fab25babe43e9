//! DescribeConfigs (key 32), versions 1-4.
//! v1: synonyms. v2: same as v1. v3: config type and documentation (KIP-569). v4: flexible.
//! Topics (resource type 2) list every topic config with its value and source (an override is
//! DYNAMIC_TOPIC_CONFIG, otherwise the broker or Kafka default); the broker (type 4) lists its settings.

use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult, DescribeConfigsSynonym,
};
use kafka_protocol::messages::{
    ApiKey, DescribeConfigsRequest, DescribeConfigsResponse, RequestHeader,
};
use std::sync::Arc;

use super::{str_bytes, ApiSpec, Reply};
use crate::topic_config::{self, SOURCE_DYNAMIC_TOPIC, SOURCE_STATIC_BROKER};
use crate::{error, Broker};

pub const API: ApiSpec = ApiSpec {
    key: ApiKey::DescribeConfigs,
    min: 1,
    max: 4,
};

const RESOURCE_TOPIC: i8 = 2;
const RESOURCE_BROKER: i8 = 4;

pub fn handle(
    broker: &Arc<Broker>,
    _header: &RequestHeader,
    req: DescribeConfigsRequest,
) -> Reply<DescribeConfigsResponse> {
    let results = req
        .resources
        .iter()
        .map(|res| {
            let out = DescribeConfigsResult::default()
                .with_resource_type(res.resource_type)
                .with_resource_name(res.resource_name.clone());
            let wanted = |name: &str| {
                res.configuration_keys
                    .as_ref()
                    .is_none_or(|keys| keys.iter().any(|k| k.as_str() == name))
            };
            match res.resource_type {
                RESOURCE_TOPIC => {
                    let Some(topic) = broker.storage.topic(&res.resource_name) else {
                        return out
                            .with_error_code(error::UNKNOWN_TOPIC_OR_PARTITION)
                            .with_error_message(Some(str_bytes(&format!(
                                "Topic {} does not exist.",
                                res.resource_name
                            ))));
                    };
                    let configs = topic_config::TOPIC_CONFIGS
                        .iter()
                        .filter(|d| wanted(d.name))
                        .map(|def| {
                            let (default, default_source) =
                                topic_config::topic_default(def, &broker.config);
                            let (value, source) = match topic.configs.get(def.name) {
                                Some(v) => (v.clone(), SOURCE_DYNAMIC_TOPIC),
                                None => (default.clone(), default_source),
                            };
                            let mut synonyms = Vec::new();
                            if req.include_synonyms {
                                if source == SOURCE_DYNAMIC_TOPIC {
                                    synonyms.push(synonym(def.name, &value, SOURCE_DYNAMIC_TOPIC));
                                }
                                if let Some(b) = def.broker_synonym {
                                    synonyms.push(synonym(b, &default, default_source));
                                }
                            }
                            let e = entry(def.name, &value, source, def.config_type, synonyms);
                            match topic_config::not_applied(def.name) {
                                Some(why) => e.with_documentation(Some(str_bytes(&format!(
                                    "Accepted, not applied by StreamHouse: {why}."
                                )))),
                                None => e,
                            }
                        })
                        .collect();
                    out.with_configs(configs)
                }
                RESOURCE_BROKER => {
                    let me = broker.config.node_id.to_string();
                    if !res.resource_name.is_empty() && res.resource_name.as_str() != me {
                        return out
                            .with_error_code(error::INVALID_REQUEST)
                            .with_error_message(Some(str_bytes(&format!(
                                "Unexpected broker id, expected {me}"
                            ))));
                    }
                    let configs = topic_config::broker_configs(&broker.config)
                        .into_iter()
                        .filter(|(n, _, _)| wanted(n))
                        .map(|(n, v, t)| {
                            let synonyms = if req.include_synonyms {
                                vec![synonym(n, &v, SOURCE_STATIC_BROKER)]
                            } else {
                                vec![]
                            };
                            entry(n, &v, SOURCE_STATIC_BROKER, t, synonyms).with_read_only(true)
                        })
                        .collect();
                    out.with_configs(configs)
                }
                _ => out
                    .with_error_code(error::INVALID_REQUEST)
                    .with_error_message(Some(str_bytes("Unsupported resource type"))),
            }
        })
        .collect();
    Reply::Now(DescribeConfigsResponse::default().with_results(results))
}

fn entry(
    name: &str,
    value: &str,
    source: i8,
    config_type: i8,
    synonyms: Vec<DescribeConfigsSynonym>,
) -> DescribeConfigsResourceResult {
    DescribeConfigsResourceResult::default()
        .with_name(str_bytes(name))
        .with_value(Some(str_bytes(value)))
        .with_config_source(source)
        .with_config_type(config_type)
        .with_is_sensitive(false)
        .with_read_only(false)
        .with_synonyms(synonyms)
}

fn synonym(name: &str, value: &str, source: i8) -> DescribeConfigsSynonym {
    DescribeConfigsSynonym::default()
        .with_name(str_bytes(name))
        .with_value(Some(str_bytes(value)))
        .with_source(source)
}
