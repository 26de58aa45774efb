//! CreateTopics, DeleteTopics, CreatePartitions. A single node holds one replica of everything, so a
//! replication factor other than 1 (or -1, "the default") is refused with INVALID_REPLICATION_FACTOR.

use std::sync::Arc;

use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::create_topics_response::{
    CreatableTopicConfigs, CreatableTopicResult,
};
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::{
    CreatePartitionsRequest, CreatePartitionsResponse, CreateTopicsRequest, CreateTopicsResponse,
    DeleteTopicsRequest, DeleteTopicsResponse, TopicName,
};
use kafka_protocol::protocol::{StrBytes, VersionRange};
use kafka_protocol::ResponseError;
use wharf_core::topics::validate_topic_name;
use wharf_core::{CoreError, TopicConfig};

use super::{core_error, message, topic_name, Broker, NODE_ID};
use crate::handlers::configs::CONFIG_SOURCE_DEFAULT;
use crate::handlers::configs::CONFIG_SOURCE_TOPIC;

/// Served CreateTopics versions.
pub const CREATE_TOPICS_VERSIONS: VersionRange = VersionRange { min: 2, max: 7 };
/// Served DeleteTopics versions.
pub const DELETE_TOPICS_VERSIONS: VersionRange = VersionRange { min: 1, max: 6 };
/// Served CreatePartitions versions.
pub const CREATE_PARTITIONS_VERSIONS: VersionRange = VersionRange { min: 0, max: 3 };

/// Answers CreateTopics.
pub fn create_topics(
    broker: &Arc<Broker>,
    request: CreateTopicsRequest,
    version: i16,
) -> CreateTopicsResponse {
    let mut results = Vec::with_capacity(request.topics.len());
    for t in request.topics {
        let name = t.name.clone();
        let outcome = (|| -> Result<CreatableTopicResult, (ResponseError, String)> {
            validate_topic_name(&name).map_err(|e| (core_error(&e), e.to_string()))?;
            if !matches!(t.replication_factor, -1 | 1) {
                return Err((
                    ResponseError::InvalidReplicationFactor,
                    format!(
                        "replication factor {} is larger than the 1 available broker",
                        t.replication_factor
                    ),
                ));
            }
            let partitions = if t.assignments.is_empty() {
                (t.num_partitions != -1).then_some(t.num_partitions)
            } else if t.num_partitions != -1 || t.replication_factor != -1 {
                return Err((
                    ResponseError::InvalidRequest,
                    "assignments and partition count / replication factor are exclusive".into(),
                ));
            } else if t
                .assignments
                .iter()
                .all(|a| a.broker_ids.iter().all(|b| b.0 == NODE_ID) && a.broker_ids.len() == 1)
            {
                Some(t.assignments.len() as i32)
            } else {
                return Err((
                    ResponseError::InvalidReplicaAssignment,
                    format!("replicas can only be assigned to broker {NODE_ID}"),
                ));
            };
            let config = TopicConfig::from_pairs(
                t.configs
                    .iter()
                    .map(|c| (c.name.as_str(), c.value.as_ref().map(|v| v.as_str()))),
            )
            .map_err(|e| (core_error(&e), e.to_string()))?;
            if broker.topics.get(&name).is_some() {
                return Err((
                    ResponseError::TopicAlreadyExists,
                    format!("topic '{}' already exists", name.as_str()),
                ));
            }
            let count = partitions.unwrap_or(broker.topics.defaults().partitions);
            let id = if request.validate_only {
                [0u8; 16]
            } else {
                broker
                    .topics
                    .create(&name, Some(count), config.clone())
                    .map_err(|e| (core_error(&e), e.to_string()))?
                    .id()
            };
            let described = config
                .describe(broker.topics.defaults())
                .into_iter()
                .map(|e| {
                    CreatableTopicConfigs::default()
                        .with_name(StrBytes::from_static_str(e.name))
                        .with_value(Some(StrBytes::from_string(e.value)))
                        .with_config_source(if e.is_default {
                            CONFIG_SOURCE_DEFAULT
                        } else {
                            CONFIG_SOURCE_TOPIC
                        })
                })
                .collect();
            Ok(CreatableTopicResult::default()
                .with_name(name.clone())
                .with_topic_id(uuid::Uuid::from_bytes(id))
                .with_num_partitions(count)
                .with_replication_factor(1)
                .with_configs(Some(described)))
        })();
        let mut result = match outcome {
            Ok(r) => r,
            Err((error, text)) => CreatableTopicResult::default()
                .with_name(name)
                .with_error_code(error.code())
                .with_error_message(message(text))
                .with_num_partitions(-1)
                .with_replication_factor(-1),
        };
        // Fields that only exist from some version on must keep their defaults below it.
        if version < 7 {
            result.topic_id = uuid::Uuid::nil();
        }
        if version < 5 {
            result.num_partitions = -1;
            result.replication_factor = -1;
            result.configs = None;
        }
        results.push(result);
    }
    CreateTopicsResponse::default().with_topics(results)
}

/// Answers DeleteTopics (by name, or by topic id from v6).
pub fn delete_topics(
    broker: &Arc<Broker>,
    request: DeleteTopicsRequest,
    version: i16,
) -> DeleteTopicsResponse {
    let mut wanted: Vec<(Option<TopicName>, uuid::Uuid)> = request
        .topic_names
        .into_iter()
        .map(|n| (Some(n), uuid::Uuid::nil()))
        .collect();
    wanted.extend(request.topics.into_iter().map(|t| (t.name, t.topic_id)));
    let responses = wanted
        .into_iter()
        .map(|(name, id)| {
            let resolved = match &name {
                Some(n) => broker
                    .topics
                    .get(n)
                    .ok_or(ResponseError::UnknownTopicOrPartition),
                None => broker
                    .topics
                    .list()
                    .into_iter()
                    .find(|t| t.id() == *id.as_bytes())
                    .ok_or(ResponseError::UnknownTopicId),
            };
            let result = resolved.and_then(|topic| {
                broker
                    .topics
                    .delete(topic.name())
                    .map_err(|e| core_error(&e))?;
                Ok(topic)
            });
            let result = match result {
                Ok(topic) => DeletableTopicResult::default()
                    .with_name(Some(topic_name(topic.name())))
                    .with_topic_id(uuid::Uuid::from_bytes(topic.id())),
                Err(error) => DeletableTopicResult::default()
                    .with_name(name)
                    .with_topic_id(id)
                    .with_error_code(error.code()),
            };
            if version < 6 {
                result.with_topic_id(uuid::Uuid::nil())
            } else {
                result
            }
        })
        .collect();
    DeleteTopicsResponse::default().with_responses(responses)
}

/// Answers CreatePartitions.
pub fn create_partitions(
    broker: &Arc<Broker>,
    request: CreatePartitionsRequest,
    _version: i16,
) -> CreatePartitionsResponse {
    let results = request
        .topics
        .into_iter()
        .map(|t| {
            let outcome = match broker.topics.get(&t.name) {
                None => Err(CoreError::UnknownTopic(t.name.to_string())),
                Some(topic) if request.validate_only => {
                    if t.count > topic.partitions().len() as i32
                        && t.count <= wharf_core::PARTITIONS_PER_TOPIC_MAX
                    {
                        Ok(())
                    } else {
                        Err(CoreError::InvalidPartitions {
                            count: i64::from(t.count),
                            reason: format!(
                                "topic has {} partitions; the count can only grow",
                                topic.partitions().len()
                            ),
                        })
                    }
                }
                Some(_) => broker.topics.grow(&t.name, t.count),
            };
            let result = CreatePartitionsTopicResult::default().with_name(t.name);
            match outcome {
                Ok(()) => result,
                Err(e) => result
                    .with_error_code(core_error(&e).code())
                    .with_error_message(message(e.to_string())),
            }
        })
        .collect();
    CreatePartitionsResponse::default().with_results(results)
}
