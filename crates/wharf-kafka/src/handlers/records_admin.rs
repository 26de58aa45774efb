//! DeleteRecords (advance the log start offset) and OffsetForLeaderEpoch (every partition has had one leader
//! epoch, 0, so its end is the log end).

use std::sync::Arc;

use kafka_protocol::messages::delete_records_response::{
    DeleteRecordsPartitionResult, DeleteRecordsTopicResult,
};
use kafka_protocol::messages::offset_for_leader_epoch_response::{
    EpochEndOffset, OffsetForLeaderTopicResult,
};
use kafka_protocol::messages::{
    DeleteRecordsRequest, DeleteRecordsResponse, OffsetForLeaderEpochRequest,
    OffsetForLeaderEpochResponse,
};
use kafka_protocol::protocol::VersionRange;
use kafka_protocol::ResponseError;

use super::{log_error, Broker, LEADER_EPOCH};

/// Served DeleteRecords versions.
pub const DELETE_RECORDS_VERSIONS: VersionRange = VersionRange { min: 0, max: 2 };
/// Served OffsetForLeaderEpoch versions.
pub const OFFSET_FOR_LEADER_EPOCH_VERSIONS: VersionRange = VersionRange { min: 2, max: 4 };

/// Answers DeleteRecords: `offset` -1 means the high watermark.
pub fn delete_records(
    broker: &Arc<Broker>,
    request: DeleteRecordsRequest,
    _version: i16,
) -> DeleteRecordsResponse {
    let topics = request
        .topics
        .into_iter()
        .map(|t| {
            let topic = broker.topics.get(&t.name);
            let partitions = t
                .partitions
                .into_iter()
                .map(|p| {
                    let base = DeleteRecordsPartitionResult::default()
                        .with_partition_index(p.partition_index);
                    let Some(partition) =
                        topic.as_ref().and_then(|t| t.partition(p.partition_index))
                    else {
                        return base
                            .with_error_code(ResponseError::UnknownTopicOrPartition.code())
                            .with_low_watermark(-1);
                    };
                    let log = partition.log();
                    let end = log.offsets().log_end;
                    let target = if p.offset == -1 { end as i64 } else { p.offset };
                    if target < 0 || target as u64 > end {
                        return base
                            .with_error_code(ResponseError::OffsetOutOfRange.code())
                            .with_low_watermark(-1);
                    }
                    match log.advance_log_start(target as u64) {
                        Ok(start) => base.with_low_watermark(start as i64),
                        Err(e) => base
                            .with_error_code(log_error(&e).code())
                            .with_low_watermark(-1),
                    }
                })
                .collect();
            DeleteRecordsTopicResult::default()
                .with_name(t.name)
                .with_partitions(partitions)
        })
        .collect();
    DeleteRecordsResponse::default().with_topics(topics)
}

/// Answers OffsetForLeaderEpoch.
pub fn offset_for_leader_epoch(
    broker: &Arc<Broker>,
    request: OffsetForLeaderEpochRequest,
    _version: i16,
) -> OffsetForLeaderEpochResponse {
    let topics = request
        .topics
        .into_iter()
        .map(|t| {
            let topic = broker.topics.get(&t.topic);
            let partitions = t
                .partitions
                .into_iter()
                .map(|p| {
                    let base = EpochEndOffset::default().with_partition(p.partition);
                    match topic.as_ref().and_then(|t| t.partition(p.partition)) {
                        None => base.with_error_code(ResponseError::UnknownTopicOrPartition.code()),
                        Some(_) if p.current_leader_epoch > LEADER_EPOCH => {
                            base.with_error_code(ResponseError::UnknownLeaderEpoch.code())
                        }
                        Some(partition) if p.leader_epoch >= LEADER_EPOCH => base
                            .with_leader_epoch(LEADER_EPOCH)
                            .with_end_offset(partition.log().offsets().log_end as i64),
                        // An epoch older than any this partition had: no offsets belong to it.
                        Some(_) => base.with_leader_epoch(-1).with_end_offset(-1),
                    }
                })
                .collect();
            OffsetForLeaderTopicResult::default()
                .with_topic(t.topic)
                .with_partitions(partitions)
        })
        .collect();
    OffsetForLeaderEpochResponse::default().with_topics(topics)
}
