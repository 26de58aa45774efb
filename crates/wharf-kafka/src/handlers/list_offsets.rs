//! ListOffsets: earliest (-2), latest (-1, the high watermark) and by timestamp — the time index finds the
//! batch, and the batch's records give the exact first offset whose timestamp is `>= T`.

use std::sync::Arc;

use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse};
use kafka_protocol::protocol::VersionRange;
use kafka_protocol::ResponseError;
use wharf_core::Partition;

use super::{log_error, Broker, LEADER_EPOCH};
use crate::batch;

/// Served versions: v7 adds the max-timestamp query (-3, refused per partition: no index keeps it yet), v8 the
/// earliest-local query (-4, the log start: all data is local).
pub const VERSIONS: VersionRange = VersionRange { min: 1, max: 8 };

const LATEST: i64 = -1;
const EARLIEST: i64 = -2;
const MAX_TIMESTAMP: i64 = -3;
const EARLIEST_LOCAL: i64 = -4;

/// Answers ListOffsets.
pub fn handle(
    broker: &Arc<Broker>,
    request: ListOffsetsRequest,
    version: i16,
) -> ListOffsetsResponse {
    let topics = request
        .topics
        .into_iter()
        .map(|t| {
            let topic = broker.topics.get(&t.name);
            let partitions = t
                .partitions
                .into_iter()
                .map(|p| {
                    let base = ListOffsetsPartitionResponse::default()
                        .with_partition_index(p.partition_index);
                    match topic.as_ref().and_then(|t| t.partition(p.partition_index)) {
                        None => base
                            .with_error_code(ResponseError::UnknownTopicOrPartition.code())
                            .with_timestamp(-1)
                            .with_offset(-1),
                        Some(partition) => lookup(&partition, p.timestamp, base, version),
                    }
                })
                .collect();
            ListOffsetsTopicResponse::default()
                .with_name(t.name)
                .with_partitions(partitions)
        })
        .collect();
    ListOffsetsResponse::default().with_topics(topics)
}

fn lookup(
    partition: &Partition,
    timestamp: i64,
    base: ListOffsetsPartitionResponse,
    version: i16,
) -> ListOffsetsPartitionResponse {
    let log = partition.log();
    let offsets = log.offsets();
    // The leader epoch field exists from v4.
    let epoch = if version >= 4 { LEADER_EPOCH } else { -1 };
    let base = base.with_leader_epoch(epoch).with_timestamp(-1);
    match timestamp {
        LATEST => base.with_offset(offsets.log_end as i64),
        EARLIEST | EARLIEST_LOCAL => base.with_offset(offsets.log_start as i64),
        MAX_TIMESTAMP => base
            .with_error_code(ResponseError::UnsupportedVersion.code())
            .with_offset(-1),
        t if t < 0 => base
            .with_error_code(ResponseError::UnsupportedVersion.code())
            .with_offset(-1),
        t => match find(log, t) {
            Ok(Some((offset, ts))) => base.with_offset(offset).with_timestamp(ts),
            Ok(None) => base.with_offset(-1),
            Err(e) => {
                tracing::error!(log = log.name(), "timestamp lookup failed: {e}");
                base.with_error_code(log_error(&e).code()).with_offset(-1)
            }
        },
    }
}

/// The first record with timestamp `>= t`: the time index gives the batch, its records the exact offset.
fn find(log: &wharf_log::Log, t: i64) -> wharf_log::Result<Option<(i64, i64)>> {
    let mut from = match log.find_offset_by_timestamp(t)? {
        Some((offset, _)) => offset,
        None => return Ok(None),
    };
    // The indexed batch's max timestamp is >= t, so a record inside qualifies; walk forward in case the
    // batch cannot be read record by record.
    let end = log.offsets().log_end;
    while from < end {
        let batches = log.read(from, 1, None)?;
        let Some(b) = batches.first() else { break };
        if let Some(found) = batch::first_record_at_or_after(&b.payload, t) {
            return Ok(Some(found));
        }
        from = b.next_offset();
    }
    Ok(None)
}
