//! Committed offsets: OffsetCommit (durable before it answers), OffsetFetch and OffsetDelete over
//! [`wharf_core::OffsetStore`], with membership checks by [`wharf_core::GroupCoordinator`].

use std::sync::Arc;

use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_delete_response::{
    OffsetDeleteResponsePartition, OffsetDeleteResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
    OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::{
    ConsumerProtocolSubscription, OffsetCommitRequest, OffsetCommitResponse, OffsetDeleteRequest,
    OffsetDeleteResponse, OffsetFetchRequest, OffsetFetchResponse, ResponseKind, TopicName,
};
use kafka_protocol::protocol::{Decodable, StrBytes, VersionRange};
use kafka_protocol::ResponseError;
use wharf_core::offsets::OFFSET_METADATA_MAX_BYTES;
use wharf_core::CommittedOffset;

use super::groups::group_error;
use super::{now_ms, topic_name, Broker, Reply, NO_ERROR};

/// Served OffsetCommit versions (v10 names topics by id).
pub const OFFSET_COMMIT_VERSIONS: VersionRange = VersionRange { min: 2, max: 9 };
/// Served OffsetFetch versions (v10 names topics by id).
pub const OFFSET_FETCH_VERSIONS: VersionRange = VersionRange { min: 1, max: 9 };
/// Served OffsetDelete versions.
pub const OFFSET_DELETE_VERSIONS: VersionRange = VersionRange { min: 0, max: 0 };

/// Answers OffsetCommit once the offsets are durable.
pub fn offset_commit(broker: &Arc<Broker>, request: OffsetCommitRequest, version: i16) -> Reply {
    let group = request.group_id.to_string();
    let membership = broker
        .groups
        .check_commit(
            &group,
            request.generation_id_or_member_epoch,
            &request.member_id,
        )
        .map_err(|e| group_error(&e));
    let now = now_ms();
    let mut to_store = Vec::new();
    let mut topics = Vec::with_capacity(request.topics.len());
    for t in request.topics {
        let topic = broker.topics.get(&t.name);
        let partitions = t
            .partitions
            .into_iter()
            .map(|p| {
                let error = match (&membership, &topic) {
                    (Err(e), _) => e.code(),
                    (Ok(()), None) => ResponseError::UnknownTopicOrPartition.code(),
                    (Ok(()), Some(topic)) if topic.partition(p.partition_index).is_none() => {
                        ResponseError::UnknownTopicOrPartition.code()
                    }
                    (Ok(()), Some(_))
                        if p.committed_metadata.as_ref().map_or(0, |m| m.len())
                            > OFFSET_METADATA_MAX_BYTES =>
                    {
                        ResponseError::OffsetMetadataTooLarge.code()
                    }
                    (Ok(()), Some(_)) => {
                        to_store.push((
                            t.name.to_string(),
                            p.partition_index,
                            CommittedOffset {
                                offset: p.committed_offset,
                                leader_epoch: if version >= 6 {
                                    p.committed_leader_epoch
                                } else {
                                    -1
                                },
                                metadata: p
                                    .committed_metadata
                                    .as_ref()
                                    .map(|m| m.to_string())
                                    .unwrap_or_default(),
                                commit_ms: now,
                            },
                        ));
                        NO_ERROR
                    }
                };
                OffsetCommitResponsePartition::default()
                    .with_partition_index(p.partition_index)
                    .with_error_code(error)
            })
            .collect();
        topics.push(
            OffsetCommitResponseTopic::default()
                .with_name(t.name)
                .with_partitions(partitions),
        );
    }
    let response = OffsetCommitResponse::default().with_topics(topics);
    if to_store.is_empty() {
        return Reply::Now(ResponseKind::OffsetCommit(response));
    }
    let offsets = Arc::clone(&broker.offsets);
    Reply::Later(Box::pin(async move {
        let mut response = response;
        if let Err(e) = offsets.commit(&group, to_store).await {
            tracing::error!(group = %group, "offset commit failed: {e}");
            for t in &mut response.topics {
                for p in &mut t.partitions {
                    if p.error_code == 0 {
                        p.error_code = ResponseError::KafkaStorageError.code();
                    }
                }
            }
        }
        ResponseKind::OffsetCommit(response)
    }))
}

/// One topic's partitions with their committed offsets (`None`: nothing committed).
type TopicOffsets = (TopicName, Vec<(i32, Option<CommittedOffset>)>);

/// The committed offsets of `group` for the given topics (all committed ones when `None`).
fn lookup(
    broker: &Broker,
    group: &str,
    topics: Option<Vec<(TopicName, Vec<i32>)>>,
) -> Vec<TopicOffsets> {
    match topics {
        Some(topics) => topics
            .into_iter()
            .map(|(name, partitions)| {
                let found = partitions
                    .into_iter()
                    .map(|p| (p, broker.offsets.fetch(group, &name, p)))
                    .collect();
                (name, found)
            })
            .collect(),
        None => {
            let mut by_topic: std::collections::BTreeMap<
                String,
                Vec<(i32, Option<CommittedOffset>)>,
            > = Default::default();
            for (t, p, c) in broker.offsets.group_offsets(group) {
                by_topic.entry(t).or_default().push((p, Some(c)));
            }
            by_topic
                .into_iter()
                .map(|(t, ps)| (topic_name(&t), ps))
                .collect()
        }
    }
}

/// Answers OffsetFetch: -1 for partitions without a committed offset.
pub fn offset_fetch(
    broker: &Arc<Broker>,
    request: OffsetFetchRequest,
    version: i16,
) -> OffsetFetchResponse {
    let metadata = |c: &Option<CommittedOffset>| {
        Some(StrBytes::from_string(
            c.as_ref().map(|c| c.metadata.clone()).unwrap_or_default(),
        ))
    };
    if version >= 8 {
        let groups = request
            .groups
            .into_iter()
            .map(|g| {
                let topics = g.topics.map(|ts| {
                    ts.into_iter()
                        .map(|t| (t.name, t.partition_indexes))
                        .collect()
                });
                let topics = lookup(broker, &g.group_id, topics)
                    .into_iter()
                    .map(|(name, parts)| {
                        OffsetFetchResponseTopics::default()
                            .with_name(name)
                            .with_partitions(
                                parts
                                    .into_iter()
                                    .map(|(p, c)| {
                                        OffsetFetchResponsePartitions::default()
                                            .with_partition_index(p)
                                            .with_committed_offset(
                                                c.as_ref().map_or(-1, |c| c.offset),
                                            )
                                            .with_committed_leader_epoch(
                                                c.as_ref().map_or(-1, |c| c.leader_epoch),
                                            )
                                            .with_metadata(metadata(&c))
                                    })
                                    .collect(),
                            )
                    })
                    .collect();
                OffsetFetchResponseGroup::default()
                    .with_group_id(g.group_id)
                    .with_topics(topics)
            })
            .collect();
        return OffsetFetchResponse::default().with_groups(groups);
    }
    let topics = request.topics.map(|ts| {
        ts.into_iter()
            .map(|t| (t.name, t.partition_indexes))
            .collect()
    });
    let topics = lookup(broker, &request.group_id, topics)
        .into_iter()
        .map(|(name, parts)| {
            OffsetFetchResponseTopic::default()
                .with_name(name)
                .with_partitions(
                    parts
                        .into_iter()
                        .map(|(p, c)| {
                            OffsetFetchResponsePartition::default()
                                .with_partition_index(p)
                                .with_committed_offset(c.as_ref().map_or(-1, |c| c.offset))
                                .with_committed_leader_epoch(if version >= 5 {
                                    c.as_ref().map_or(-1, |c| c.leader_epoch)
                                } else {
                                    -1
                                })
                                .with_metadata(metadata(&c))
                        })
                        .collect(),
                )
        })
        .collect();
    OffsetFetchResponse::default().with_topics(topics)
}

/// Topics the group's consumer-protocol members subscribe to (unknown protocol metadata counts as none).
fn subscribed_topics(broker: &Broker, group: &str) -> Vec<String> {
    let Some(d) = broker.groups.describe(group) else {
        return Vec::new();
    };
    if d.protocol_type != "consumer" {
        return Vec::new();
    }
    d.members
        .iter()
        .filter_map(|m| {
            let mut bytes = m.metadata.clone();
            if bytes.len() < 2 {
                return None;
            }
            let version = i16::from_be_bytes([bytes[0], bytes[1]]);
            bytes = bytes.slice(2..);
            ConsumerProtocolSubscription::decode(&mut bytes, version).ok()
        })
        .flat_map(|s| s.topics.into_iter().map(|t| t.to_string()))
        .collect()
}

/// Answers OffsetDelete: refused per partition while group members subscribe to its topic.
pub fn offset_delete(broker: &Arc<Broker>, request: OffsetDeleteRequest, _version: i16) -> Reply {
    let group = request.group_id.to_string();
    if broker.groups.describe(&group).is_none() && !broker.offsets.has_group(&group) {
        return Reply::Now(ResponseKind::OffsetDelete(
            OffsetDeleteResponse::default().with_error_code(ResponseError::GroupIdNotFound.code()),
        ));
    }
    let subscribed = subscribed_topics(broker, &group);
    let mut to_delete = Vec::new();
    let topics = request
        .topics
        .into_iter()
        .map(|t| {
            let busy = subscribed.iter().any(|s| s.as_str() == t.name.as_str());
            let partitions = t
                .partitions
                .into_iter()
                .map(|p| {
                    let error = if busy {
                        ResponseError::GroupSubscribedToTopic.code()
                    } else {
                        to_delete.push((t.name.to_string(), p.partition_index));
                        NO_ERROR
                    };
                    OffsetDeleteResponsePartition::default()
                        .with_partition_index(p.partition_index)
                        .with_error_code(error)
                })
                .collect();
            OffsetDeleteResponseTopic::default()
                .with_name(t.name)
                .with_partitions(partitions)
        })
        .collect();
    let response = OffsetDeleteResponse::default().with_topics(topics);
    let offsets = Arc::clone(&broker.offsets);
    Reply::Later(Box::pin(async move {
        let mut response = response;
        if let Err(e) = offsets.delete_offsets(&group, to_delete).await {
            tracing::error!(group = %group, "offset delete failed: {e}");
            response.error_code = ResponseError::KafkaStorageError.code();
        }
        ResponseKind::OffsetDelete(response)
    }))
}
