//! DescribeCluster: one broker, which is also the controller.

use std::sync::Arc;

use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::{BrokerId, DescribeClusterRequest, DescribeClusterResponse};
use kafka_protocol::protocol::{StrBytes, VersionRange};

use super::{Broker, NODE_ID};

/// Served DescribeCluster versions (v1 adds the endpoint type, v2 fenced brokers).
pub const DESCRIBE_CLUSTER_VERSIONS: VersionRange = VersionRange { min: 0, max: 1 };

/// Answers DescribeCluster.
pub fn describe_cluster(
    broker: &Arc<Broker>,
    request: DescribeClusterRequest,
    _version: i16,
) -> DescribeClusterResponse {
    DescribeClusterResponse::default()
        .with_endpoint_type(request.endpoint_type)
        .with_cluster_id(StrBytes::from_string(broker.node.cluster_id.clone()))
        .with_controller_id(BrokerId(NODE_ID))
        .with_brokers(vec![DescribeClusterBroker::default()
            .with_broker_id(BrokerId(NODE_ID))
            .with_host(StrBytes::from_string(broker.node.host.clone()))
            .with_port(i32::from(broker.node.port))])
        .with_cluster_authorized_operations(i32::MIN)
}
