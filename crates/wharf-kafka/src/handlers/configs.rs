//! DescribeConfigs, AlterConfigs and IncrementalAlterConfigs for topics (the keys of
//! [`wharf_core::topic_config::TOPIC_CONFIG_KEYS`]); the broker resource is described read-only, since broker
//! settings come from Wharf's own configuration file.

use std::sync::Arc;

use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult,
};
use kafka_protocol::messages::{
    AlterConfigsRequest, AlterConfigsResponse, DescribeConfigsRequest, DescribeConfigsResponse,
    IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse,
};
use kafka_protocol::protocol::{StrBytes, VersionRange};
use kafka_protocol::ResponseError;
use wharf_core::{CoreError, TopicConfig};

use super::{core_error, message, Broker, NODE_ID};

/// Served DescribeConfigs versions.
pub const DESCRIBE_CONFIGS_VERSIONS: VersionRange = VersionRange { min: 1, max: 4 };
/// Served AlterConfigs versions.
pub const ALTER_CONFIGS_VERSIONS: VersionRange = VersionRange { min: 0, max: 2 };
/// Served IncrementalAlterConfigs versions.
pub const INCREMENTAL_ALTER_CONFIGS_VERSIONS: VersionRange = VersionRange { min: 0, max: 1 };

/// Resource type of a topic.
const RESOURCE_TOPIC: i8 = 2;
/// Resource type of a broker.
const RESOURCE_BROKER: i8 = 4;
/// Config source: set on the topic.
pub const CONFIG_SOURCE_TOPIC: i8 = 1;
/// Config source: the broker's static configuration.
const CONFIG_SOURCE_STATIC_BROKER: i8 = 4;
/// Config source: built-in default.
pub const CONFIG_SOURCE_DEFAULT: i8 = 5;
/// Config types (DescribeConfigs v3+).
const TYPE_BOOLEAN: i8 = 1;
const TYPE_STRING: i8 = 2;
const TYPE_INT: i8 = 3;
const TYPE_LONG: i8 = 5;
const TYPE_LIST: i8 = 7;

fn config_type(name: &str) -> i8 {
    match name {
        "cleanup.policy" => TYPE_LIST,
        "message.timestamp.type" => TYPE_STRING,
        "max.message.bytes" | "segment.bytes" | "num.partitions" | "message.max.bytes" => TYPE_INT,
        "auto.create.topics.enable" => TYPE_BOOLEAN,
        _ => TYPE_LONG,
    }
}

fn entry(name: &str, value: String, read_only: bool, source: i8) -> DescribeConfigsResourceResult {
    DescribeConfigsResourceResult::default()
        .with_name(StrBytes::from_string(name.to_string()))
        .with_value(Some(StrBytes::from_string(value)))
        .with_read_only(read_only)
        .with_config_source(source)
        .with_config_type(config_type(name))
}

/// Answers DescribeConfigs.
pub fn describe_configs(
    broker: &Arc<Broker>,
    request: DescribeConfigsRequest,
    version: i16,
) -> DescribeConfigsResponse {
    let results = request
        .resources
        .into_iter()
        .map(|r| {
            let wanted = |name: &str| {
                r.configuration_keys
                    .as_ref()
                    .is_none_or(|keys| keys.iter().any(|k| k.as_str() == name))
            };
            let base = DescribeConfigsResult::default()
                .with_resource_type(r.resource_type)
                .with_resource_name(r.resource_name.clone());
            match r.resource_type {
                RESOURCE_TOPIC => match broker.topics.get(r.resource_name.as_str()) {
                    None => base
                        .with_error_code(ResponseError::UnknownTopicOrPartition.code())
                        .with_error_message(message(format!(
                            "unknown topic '{}'",
                            r.resource_name.as_str()
                        ))),
                    Some(topic) => base.with_configs(
                        topic
                            .config()
                            .describe(broker.topics.defaults())
                            .into_iter()
                            .filter(|e| wanted(e.name))
                            .map(|e| {
                                let source = if e.is_default {
                                    CONFIG_SOURCE_DEFAULT
                                } else {
                                    CONFIG_SOURCE_TOPIC
                                };
                                entry(e.name, e.value, false, source)
                            })
                            .collect(),
                    ),
                },
                RESOURCE_BROKER
                    if r.resource_name.as_str() == NODE_ID.to_string()
                        || r.resource_name.is_empty() =>
                {
                    let d = broker.topics.defaults();
                    let configs = [
                        (
                            "auto.create.topics.enable",
                            broker.config.auto_create_topics.to_string(),
                        ),
                        ("num.partitions", d.partitions.to_string()),
                        ("message.max.bytes", d.max_message_bytes.to_string()),
                        ("log.retention.ms", d.retention_ms.to_string()),
                        ("log.retention.bytes", d.retention_bytes.to_string()),
                        ("log.segment.bytes", d.segment_bytes.to_string()),
                        ("log.roll.ms", d.segment_ms.to_string()),
                        (
                            "socket.request.max.bytes",
                            broker.config.request_max_bytes.to_string(),
                        ),
                        (
                            "connections.max.idle.ms",
                            broker.config.connections_max_idle_ms.to_string(),
                        ),
                    ];
                    base.with_configs(
                        configs
                            .into_iter()
                            .filter(|(n, _)| wanted(n))
                            .map(|(n, v)| entry(n, v, true, CONFIG_SOURCE_STATIC_BROKER))
                            .collect(),
                    )
                }
                RESOURCE_BROKER => base
                    .with_error_code(ResponseError::InvalidRequest.code())
                    .with_error_message(message(format!("this node is broker {NODE_ID}"))),
                other => base
                    .with_error_code(ResponseError::InvalidRequest.code())
                    .with_error_message(message(format!(
                        "resource type {other} has no configs here"
                    ))),
            }
        })
        .map(|mut r: DescribeConfigsResult| {
            if version < 3 {
                // The config type field exists from v3.
                for c in &mut r.configs {
                    c.config_type = 0;
                }
            }
            r
        })
        .collect();
    DescribeConfigsResponse::default().with_results(results)
}

/// Applies `change` to the topic named `name` (or only validates it), mapping errors to Kafka codes.
fn alter_topic(
    broker: &Broker,
    resource_type: i8,
    name: &str,
    validate_only: bool,
    change: impl FnOnce(&mut TopicConfig) -> wharf_core::Result<()>,
) -> Result<(), (ResponseError, String)> {
    if resource_type != RESOURCE_TOPIC {
        return Err((
            ResponseError::InvalidRequest,
            "only topic configs can be altered; broker settings come from Wharf's configuration file".into(),
        ));
    }
    let result = if validate_only {
        match broker.topics.get(name) {
            None => Err(CoreError::UnknownTopic(name.to_string())),
            Some(topic) => {
                let mut config = topic.config();
                change(&mut config)
            }
        }
    } else {
        broker.topics.alter_config(name, change)
    };
    result.map_err(|e| (core_error(&e), e.to_string()))
}

/// Answers AlterConfigs: the given set *replaces* the topic's overrides (Kafka's legacy semantics).
pub fn alter_configs(
    broker: &Arc<Broker>,
    request: AlterConfigsRequest,
    _version: i16,
) -> AlterConfigsResponse {
    use kafka_protocol::messages::alter_configs_response::AlterConfigsResourceResponse;
    let responses = request
        .resources
        .into_iter()
        .map(|r| {
            let outcome = alter_topic(
                broker,
                r.resource_type,
                r.resource_name.as_str(),
                request.validate_only,
                |config| {
                    let fresh = TopicConfig::from_pairs(
                        r.configs
                            .iter()
                            .map(|c| (c.name.as_str(), c.value.as_ref().map(|v| v.as_str()))),
                    )?;
                    *config = fresh;
                    Ok(())
                },
            );
            let base = AlterConfigsResourceResponse::default()
                .with_resource_type(r.resource_type)
                .with_resource_name(r.resource_name);
            match outcome {
                Ok(()) => base,
                Err((e, text)) => base
                    .with_error_code(e.code())
                    .with_error_message(message(text)),
            }
        })
        .collect();
    AlterConfigsResponse::default().with_responses(responses)
}

/// Answers IncrementalAlterConfigs: SET (0) and DELETE (1); APPEND and SUBTRACT apply to list configs, and the
/// only list config, `cleanup.policy`, has one legal value, so they are refused.
pub fn incremental_alter_configs(
    broker: &Arc<Broker>,
    request: IncrementalAlterConfigsRequest,
    _version: i16,
) -> IncrementalAlterConfigsResponse {
    use kafka_protocol::messages::incremental_alter_configs_response::AlterConfigsResourceResponse;
    let responses = request
        .resources
        .into_iter()
        .map(|r| {
            let outcome = alter_topic(
                broker,
                r.resource_type,
                r.resource_name.as_str(),
                request.validate_only,
                |config| {
                    for c in &r.configs {
                        match (c.config_operation, &c.value) {
                            (0, Some(v)) => config.set(c.name.as_str(), v.as_str())?,
                            (1, _) => config.delete(c.name.as_str())?,
                            (op, value) => {
                                return Err(CoreError::InvalidConfig {
                                    key: c.name.to_string(),
                                    value: value
                                        .as_ref()
                                        .map(|v| v.to_string())
                                        .unwrap_or_default(),
                                    reason: format!("operation {op} is not supported for this key"),
                                })
                            }
                        }
                    }
                    Ok(())
                },
            );
            let base = AlterConfigsResourceResponse::default()
                .with_resource_type(r.resource_type)
                .with_resource_name(r.resource_name);
            match outcome {
                Ok(()) => base,
                Err((e, text)) => base
                    .with_error_code(e.code())
                    .with_error_message(message(text)),
            }
        })
        .collect();
    IncrementalAlterConfigsResponse::default().with_responses(responses)
}
