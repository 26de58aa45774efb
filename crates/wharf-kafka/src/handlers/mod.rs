//! One module per API (or per small family of admin APIs). Each declares the versions it serves and turns a
//! decoded request into a [`Reply`]. Handlers never touch sockets or files: they call the broker model
//! (`wharf-core`) and the log engine through it.

pub mod api_versions;
pub mod cluster;
pub mod configs;
pub mod fetch;
pub mod groups;
pub mod list_offsets;
pub mod metadata;
pub mod offsets;
pub mod produce;
pub mod producers;
pub mod records_admin;
pub mod topics_admin;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use kafka_protocol::messages::{ApiKey, ResponseKind, TopicName};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use wharf_core::{CoreError, GroupCoordinator, OffsetStore, ProducerIds, TopicRegistry};

use crate::codec::{decode_body, Request, RequestError};
use crate::config::KafkaConfig;

/// The only node of a single-node cluster.
pub const NODE_ID: i32 = 0;
/// Error code 0: no error.
pub const NO_ERROR: i16 = 0;
/// The leader epoch of every partition until replication exists.
pub const LEADER_EPOCH: i32 = 0;

/// How this node presents itself in Metadata and DescribeCluster.
#[derive(Clone, Debug)]
pub struct NodeInfo {
    /// Host clients connect to.
    pub host: String,
    /// Port clients connect to.
    pub port: u16,
    /// The cluster id, fixed for the life of the data directory.
    pub cluster_id: String,
}

/// What handlers share: the topic registry, the settings and the node's identity.
#[derive(Debug)]
pub struct Broker {
    /// Topics and partitions.
    pub topics: Arc<TopicRegistry>,
    /// Consumer-group membership.
    pub groups: Arc<GroupCoordinator>,
    /// Committed offsets.
    pub offsets: Arc<OffsetStore>,
    /// Producer ids for InitProducerId.
    pub producer_ids: Arc<ProducerIds>,
    /// Kafka front-end settings.
    pub config: KafkaConfig,
    /// This node.
    pub node: NodeInfo,
}

/// Who sent a request: the header's client id and the peer's address (for group member descriptions).
#[derive(Clone, Debug, Default)]
pub struct ClientInfo {
    /// `client.id` from the request header.
    pub client_id: String,
    /// The peer's host, as Kafka shows it (`/127.0.0.1`).
    pub host: String,
}

/// A response that is ready later (produce waiting for durability, fetch long polling).
pub type Deferred = Pin<Box<dyn Future<Output = ResponseKind> + Send>>;

/// What a handler answers.
// Built once per request and moved once into the connection's queue; boxing `Now` would add an allocation to
// every response for nothing.
#[allow(clippy::large_enum_variant)]
pub enum Reply {
    /// Ready now.
    Now(ResponseKind),
    /// Ready when the future completes; responses still leave in request order.
    Later(Deferred),
    /// No response at all (Produce with `acks=0`).
    None,
}

/// Decodes the body of `request` and runs its handler.
pub fn dispatch(
    broker: &Arc<Broker>,
    request: &mut Request,
    peer_host: &str,
) -> Result<Reply, RequestError> {
    let v = request.version;
    Ok(match request.api_key {
        ApiKey::ApiVersions => Reply::Now(ResponseKind::ApiVersions(api_versions::handle(
            decode_body(request)?,
            v,
        ))),
        ApiKey::Metadata => Reply::Now(ResponseKind::Metadata(metadata::handle(
            broker,
            decode_body(request)?,
            v,
        ))),
        ApiKey::Produce => produce::handle(broker, decode_body(request)?, v),
        ApiKey::Fetch => fetch::handle(broker, decode_body(request)?, v),
        ApiKey::ListOffsets => Reply::Now(ResponseKind::ListOffsets(list_offsets::handle(
            broker,
            decode_body(request)?,
            v,
        ))),
        ApiKey::CreateTopics => Reply::Now(ResponseKind::CreateTopics(
            topics_admin::create_topics(broker, decode_body(request)?, v),
        )),
        ApiKey::DeleteTopics => Reply::Now(ResponseKind::DeleteTopics(
            topics_admin::delete_topics(broker, decode_body(request)?, v),
        )),
        ApiKey::CreatePartitions => Reply::Now(ResponseKind::CreatePartitions(
            topics_admin::create_partitions(broker, decode_body(request)?, v),
        )),
        ApiKey::DeleteRecords => Reply::Now(ResponseKind::DeleteRecords(
            records_admin::delete_records(broker, decode_body(request)?, v),
        )),
        ApiKey::OffsetForLeaderEpoch => Reply::Now(ResponseKind::OffsetForLeaderEpoch(
            records_admin::offset_for_leader_epoch(broker, decode_body(request)?, v),
        )),
        ApiKey::DescribeConfigs => Reply::Now(ResponseKind::DescribeConfigs(
            configs::describe_configs(broker, decode_body(request)?, v),
        )),
        ApiKey::AlterConfigs => Reply::Now(ResponseKind::AlterConfigs(configs::alter_configs(
            broker,
            decode_body(request)?,
            v,
        ))),
        ApiKey::IncrementalAlterConfigs => Reply::Now(ResponseKind::IncrementalAlterConfigs(
            configs::incremental_alter_configs(broker, decode_body(request)?, v),
        )),
        ApiKey::DescribeCluster => Reply::Now(ResponseKind::DescribeCluster(
            cluster::describe_cluster(broker, decode_body(request)?, v),
        )),
        ApiKey::FindCoordinator => Reply::Now(ResponseKind::FindCoordinator(
            groups::find_coordinator(broker, decode_body(request)?, v),
        )),
        ApiKey::JoinGroup => {
            // Only group members are described with their client id and host: build them only here.
            let client = ClientInfo {
                client_id: request
                    .header
                    .client_id
                    .as_ref()
                    .map(|c| c.to_string())
                    .unwrap_or_default(),
                host: peer_host.to_string(),
            };
            groups::join_group(broker, decode_body(request)?, v, &client)
        }
        ApiKey::SyncGroup => groups::sync_group(broker, decode_body(request)?, v),
        ApiKey::Heartbeat => Reply::Now(ResponseKind::Heartbeat(groups::heartbeat(
            broker,
            decode_body(request)?,
            v,
        ))),
        ApiKey::LeaveGroup => Reply::Now(ResponseKind::LeaveGroup(groups::leave_group(
            broker,
            decode_body(request)?,
            v,
        ))),
        ApiKey::DescribeGroups => Reply::Now(ResponseKind::DescribeGroups(
            groups::describe_groups(broker, decode_body(request)?, v),
        )),
        ApiKey::ListGroups => Reply::Now(ResponseKind::ListGroups(groups::list_groups(
            broker,
            decode_body(request)?,
            v,
        ))),
        ApiKey::DeleteGroups => groups::delete_groups(broker, decode_body(request)?, v),
        ApiKey::OffsetCommit => offsets::offset_commit(broker, decode_body(request)?, v),
        ApiKey::OffsetFetch => Reply::Now(ResponseKind::OffsetFetch(offsets::offset_fetch(
            broker,
            decode_body(request)?,
            v,
        ))),
        ApiKey::OffsetDelete => offsets::offset_delete(broker, decode_body(request)?, v),
        ApiKey::InitProducerId => Reply::Now(ResponseKind::InitProducerId(
            producers::init_producer_id(broker, decode_body(request)?, v),
        )),
        ApiKey::DescribeProducers => Reply::Now(ResponseKind::DescribeProducers(
            producers::describe_producers(broker, decode_body(request)?, v),
        )),
        other => return Err(RequestError::UnknownApi(other as i16)),
    })
}

/// The Kafka error for a broker-model error, with a message for the client.
pub fn core_error(err: &CoreError) -> ResponseError {
    match err {
        CoreError::InvalidTopicName { .. } => ResponseError::InvalidTopicException,
        CoreError::UnknownTopic(_) => ResponseError::UnknownTopicOrPartition,
        CoreError::TopicExists(_) => ResponseError::TopicAlreadyExists,
        CoreError::InvalidPartitions { .. } => ResponseError::InvalidPartitions,
        CoreError::UnknownConfig(_) | CoreError::InvalidConfig { .. } => {
            ResponseError::InvalidConfig
        }
        CoreError::Log(wharf_log::LogError::OffsetOutOfRange { .. }) => {
            ResponseError::OffsetOutOfRange
        }
        CoreError::Log(wharf_log::LogError::BatchTooLarge { .. }) => ResponseError::MessageTooLarge,
        CoreError::Log(_) | CoreError::Meta { .. } | CoreError::CorruptMeta { .. } => {
            ResponseError::KafkaStorageError
        }
    }
}

/// The Kafka error for a log-engine error.
pub fn log_error(err: &wharf_log::LogError) -> ResponseError {
    match err {
        wharf_log::LogError::OffsetOutOfRange { .. } => ResponseError::OffsetOutOfRange,
        wharf_log::LogError::BatchTooLarge { .. } => ResponseError::MessageTooLarge,
        _ => ResponseError::KafkaStorageError,
    }
}

/// A topic name for a response.
pub fn topic_name(name: &str) -> TopicName {
    TopicName(StrBytes::from_string(name.to_string()))
}

/// A message string for a response.
pub fn message(text: impl Into<String>) -> Option<StrBytes> {
    Some(StrBytes::from_string(text.into()))
}

pub use wharf_core::now_ms;
