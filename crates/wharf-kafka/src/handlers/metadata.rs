//! Metadata: this node as the only broker, leader of every partition; unknown topics are auto-created when
//! both the broker (`auto.create.topics.enable`) and the request (`allow_auto_topic_creation`, v4+) allow it.

use std::sync::Arc;

use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{BrokerId, MetadataRequest, MetadataResponse};
use kafka_protocol::protocol::{StrBytes, VersionRange};
use kafka_protocol::ResponseError;
use wharf_core::{CoreError, Topic};

use super::{core_error, topic_name, Broker, LEADER_EPOCH, NODE_ID};

/// Served versions (topic ids from v10; v13 adds a top-level error code, always 0 here).
pub const VERSIONS: VersionRange = VersionRange { min: 0, max: 13 };

/// "Not requested" value of the authorized-operations fields.
const OPERATIONS_NOT_REQUESTED: i32 = i32::MIN;

/// Answers Metadata.
pub fn handle(broker: &Arc<Broker>, request: MetadataRequest, version: i16) -> MetadataResponse {
    let mut topics = Vec::new();
    match request.topics {
        // v0: an empty list means all topics; v1+: null means all topics.
        None => topics.extend(broker.topics.list().iter().map(|t| describe(t, version))),
        Some(list) if list.is_empty() && version == 0 => {
            topics.extend(broker.topics.list().iter().map(|t| describe(t, version)))
        }
        Some(list) => {
            let auto_create = broker.config.auto_create_topics
                && (version < 4 || request.allow_auto_topic_creation);
            for requested in list {
                let Some(name) = requested.name else {
                    // Lookup by topic id (v10+).
                    let id = *requested.topic_id.as_bytes();
                    match broker.topics.list().into_iter().find(|t| t.id() == id) {
                        Some(t) => topics.push(describe(&t, version)),
                        None => topics.push(
                            MetadataResponseTopic::default()
                                .with_error_code(ResponseError::UnknownTopicId.code())
                                .with_topic_id(requested.topic_id),
                        ),
                    }
                    continue;
                };
                let found = match broker.topics.get(&name) {
                    Some(t) => Ok(t),
                    None if auto_create => broker.topics.get_or_create(&name),
                    None => Err(CoreError::UnknownTopic(name.to_string())),
                };
                match found {
                    Ok(t) => topics.push(describe(&t, version)),
                    Err(e) => {
                        if !matches!(
                            e,
                            CoreError::UnknownTopic(_) | CoreError::InvalidTopicName { .. }
                        ) {
                            tracing::warn!(topic = %name.as_str(), "auto-creation failed: {e}");
                        }
                        topics.push(
                            MetadataResponseTopic::default()
                                .with_error_code(core_error(&e).code())
                                .with_name(Some(name)),
                        )
                    }
                }
            }
        }
    }
    let response = MetadataResponse::default()
        .with_brokers(vec![MetadataResponseBroker::default()
            .with_node_id(BrokerId(NODE_ID))
            .with_host(StrBytes::from_string(broker.node.host.clone()))
            .with_port(i32::from(broker.node.port))])
        .with_topics(topics)
        .with_cluster_authorized_operations(OPERATIONS_NOT_REQUESTED);
    // Fields that only exist from some version on must keep their defaults below it.
    let response = if version >= 1 {
        response.with_controller_id(BrokerId(NODE_ID))
    } else {
        response
    };
    if version >= 2 {
        response.with_cluster_id(Some(StrBytes::from_string(broker.node.cluster_id.clone())))
    } else {
        response
    }
}

/// One topic as Metadata describes it.
pub fn describe(topic: &Arc<Topic>, version: i16) -> MetadataResponseTopic {
    let partitions = topic
        .partitions()
        .iter()
        .map(|p| {
            MetadataResponsePartition::default()
                .with_partition_index(p.index())
                .with_leader_id(BrokerId(NODE_ID))
                .with_leader_epoch(if version >= 7 { LEADER_EPOCH } else { -1 })
                .with_replica_nodes(vec![BrokerId(NODE_ID)])
                .with_isr_nodes(vec![BrokerId(NODE_ID)])
        })
        .collect();
    MetadataResponseTopic::default()
        .with_name(Some(topic_name(topic.name())))
        .with_topic_id(if version >= 10 {
            uuid::Uuid::from_bytes(topic.id())
        } else {
            uuid::Uuid::nil()
        })
        .with_is_internal(version >= 1 && topic.is_internal())
        .with_partitions(partitions)
        .with_topic_authorized_operations(OPERATIONS_NOT_REQUESTED)
}
