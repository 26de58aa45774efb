//! InitProducerId (idempotent producers; transactions are not built yet) and DescribeProducers.

use std::sync::Arc;

use kafka_protocol::messages::describe_producers_response::{
    PartitionResponse, ProducerState, TopicResponse,
};
use kafka_protocol::messages::{
    DescribeProducersRequest, DescribeProducersResponse, InitProducerIdRequest,
    InitProducerIdResponse, ProducerId,
};
use kafka_protocol::protocol::VersionRange;
use kafka_protocol::ResponseError;

use super::{message, Broker};

/// Served InitProducerId versions (v6 reports ongoing transactions, which do not exist yet).
pub const INIT_PRODUCER_ID_VERSIONS: VersionRange = VersionRange { min: 0, max: 5 };
/// Served DescribeProducers versions.
pub const DESCRIBE_PRODUCERS_VERSIONS: VersionRange = VersionRange { min: 0, max: 0 };

/// Answers InitProducerId: a fresh producer id with epoch 0; a client that re-initialises its own id
/// (KIP-360, v3+) gets the next epoch, which fences its older self.
pub fn init_producer_id(
    broker: &Arc<Broker>,
    request: InitProducerIdRequest,
    _version: i16,
) -> InitProducerIdResponse {
    if let Some(id) = &request.transactional_id {
        // An empty transactional id is malformed (as in Kafka); a real one needs transactions, not built yet.
        let error = if id.is_empty() {
            ResponseError::InvalidRequest
        } else {
            ResponseError::TransactionalIdAuthorizationFailed
        };
        return InitProducerIdResponse::default()
            .with_error_code(error.code())
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1);
    }
    if request.producer_id.0 >= 0
        && request.producer_epoch >= 0
        && request.producer_epoch < i16::MAX - 1
    {
        return InitProducerIdResponse::default()
            .with_producer_id(request.producer_id)
            .with_producer_epoch(request.producer_epoch + 1);
    }
    match broker.producer_ids.next() {
        Ok(id) => InitProducerIdResponse::default()
            .with_producer_id(ProducerId(id))
            .with_producer_epoch(0),
        Err(e) => {
            tracing::error!("cannot reserve producer ids: {e}");
            InitProducerIdResponse::default()
                .with_error_code(ResponseError::KafkaStorageError.code())
                .with_producer_id(ProducerId(-1))
                .with_producer_epoch(-1)
        }
    }
}

/// Answers DescribeProducers.
pub fn describe_producers(
    broker: &Arc<Broker>,
    request: DescribeProducersRequest,
    _version: i16,
) -> DescribeProducersResponse {
    let topics = request
        .topics
        .into_iter()
        .map(|t| {
            let topic = broker.topics.get(&t.name);
            let partitions = t
                .partition_indexes
                .into_iter()
                .map(|index| {
                    let base = PartitionResponse::default().with_partition_index(index);
                    match topic.as_ref().and_then(|t| t.partition(index)) {
                        None => base
                            .with_error_code(ResponseError::UnknownTopicOrPartition.code())
                            .with_error_message(message("unknown topic or partition")),
                        Some(p) => base.with_active_producers(
                            p.producers()
                                .active()
                                .into_iter()
                                .map(|a| {
                                    ProducerState::default()
                                        .with_producer_id(ProducerId(a.producer_id))
                                        .with_producer_epoch(i32::from(a.epoch))
                                        .with_last_sequence(a.last_sequence)
                                        .with_last_timestamp(a.last_timestamp)
                                        .with_coordinator_epoch(-1)
                                        .with_current_txn_start_offset(-1)
                                })
                                .collect(),
                        ),
                    }
                })
                .collect();
            TopicResponse::default()
                .with_name(t.name)
                .with_partitions(partitions)
        })
        .collect();
    DescribeProducersResponse::default().with_topics(topics)
}
