//! Produce: check each record batch's header and CRC, store it as received (stamping only the base offset,
//! the leader epoch, and the timestamp under `LogAppendTime`), and answer by `acks`:
//! - `acks=0`: no response at all;
//! - `acks=1`: once the batches are appended (in the page cache);
//! - `acks=-1` (`all`): once they are durable under the log's durability policy — with the default `always`,
//!   after a group-committed fdatasync. On one node the in-sync replica set is this node, so `all` means
//!   "durable here".
//!
//! The append happens in request order when the request is dispatched; only the durability wait is deferred,
//! so a connection can pipeline produce requests without reordering a partition.

use std::sync::Arc;

use bytes::BytesMut;
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse, ResponseKind};
use kafka_protocol::protocol::VersionRange;
use kafka_protocol::ResponseError;
use wharf_core::{Partition, ProducerError, SequenceCheck, TimestampType, Topic};
use wharf_log::frame::KnownCrc;
use wharf_log::Log;

use super::{core_error, log_error, message, now_ms, Broker, Reply, LEADER_EPOCH};
use crate::batch;

/// Served versions: v3 (record batches) up to v13, which names topics by id.
pub const VERSIONS: VersionRange = VersionRange { min: 3, max: 13 };

fn failed(index: i32, error: ResponseError, text: Option<String>) -> PartitionProduceResponse {
    PartitionProduceResponse::default()
        .with_index(index)
        .with_error_code(error.code())
        .with_base_offset(-1)
        .with_error_message(text.and_then(message))
}

/// Answers Produce.
pub fn handle(broker: &Arc<Broker>, request: ProduceRequest, version: i16) -> Reply {
    let acks = request.acks;
    let mut waits: Vec<(usize, usize, Arc<Log>, u64)> = Vec::new();
    let mut responses = Vec::with_capacity(request.topic_data.len());
    for topic_data in request.topic_data {
        let name = topic_data.name.clone();
        let topic_id = topic_data.topic_id;
        let topic = if !(-1..=1).contains(&acks) {
            Err(ResponseError::InvalidRequiredAcks)
        } else if request.transactional_id.is_some() {
            Err(ResponseError::TransactionalIdAuthorizationFailed)
        } else if version >= 13 {
            broker
                .topics
                .get_by_id(topic_id.as_bytes())
                .ok_or(ResponseError::UnknownTopicId)
        } else {
            match broker.topics.get(&name) {
                Some(t) => Ok(t),
                None if broker.config.auto_create_topics => broker
                    .topics
                    .get_or_create(&name)
                    .map_err(|e| core_error(&e)),
                None => Err(ResponseError::UnknownTopicOrPartition),
            }
        };
        let mut partitions = Vec::with_capacity(topic_data.partition_data.len());
        for data in topic_data.partition_data {
            let result = match &topic {
                Err(e) => failed(data.index, *e, None),
                Ok(topic) => match topic.partition(data.index) {
                    None => failed(data.index, ResponseError::UnknownTopicOrPartition, None),
                    Some(partition) => {
                        let records = data.records.unwrap_or_default();
                        match append(broker, topic, &partition, data.index, &records) {
                            Ok((response, next)) => {
                                if acks == -1 {
                                    waits.push((
                                        responses.len(),
                                        partitions.len(),
                                        Arc::clone(partition.log()),
                                        next,
                                    ));
                                }
                                response
                            }
                            Err((error, text)) => failed(data.index, error, text),
                        }
                    }
                },
            };
            partitions.push(result);
        }
        let response = TopicProduceResponse::default().with_partition_responses(partitions);
        responses.push(if version >= 13 {
            response.with_topic_id(topic_id)
        } else {
            response.with_name(name)
        });
    }
    for t in &mut responses {
        for p in &mut t.partition_responses {
            fit_version(p, version);
        }
    }
    let response = ProduceResponse::default().with_responses(responses);
    match acks {
        0 => Reply::None,
        -1 if !waits.is_empty() => Reply::Later(Box::pin(async move {
            let mut response = response;
            for (t, p, log, next) in waits {
                if let Err(e) = log.wait_for_policy_async(next).await {
                    tracing::error!(log = log.name(), "produce durability wait failed: {e}");
                    if let Some(part) = response
                        .responses
                        .get_mut(t)
                        .and_then(|t| t.partition_responses.get_mut(p))
                    {
                        part.error_code = log_error(&e).code();
                        part.error_message = message(e.to_string());
                        fit_version(part, version);
                    }
                }
            }
            ResponseKind::Produce(response)
        })),
        _ => Reply::Now(ResponseKind::Produce(response)),
    }
}

/// Checks and appends the batches of one partition; returns the response and the log end after them.
fn append(
    broker: &Broker,
    topic: &Topic,
    partition: &Partition,
    index: i32,
    records: &[u8],
) -> Result<(PartitionProduceResponse, u64), (ResponseError, Option<String>)> {
    let (max_message_bytes, timestamp_type) = topic.produce_settings(broker.topics.defaults());
    let max_batch_bytes = usize::try_from(max_message_bytes).unwrap_or(0);
    let batches = batch::split(records, max_batch_bytes).map_err(|e| (e.error, Some(e.message)))?;
    if batches.iter().any(|(_, h)| h.is_transactional()) {
        return Err((
            ResponseError::InvalidTxnState,
            Some("transactions are not supported yet".into()),
        ));
    }
    let log_append_time = (timestamp_type == TimestampType::LogAppendTime).then(now_ms);
    let log = partition.log();
    let mut first_base = None;
    let mut next = 0;
    // One reusable buffer: the batch is stamped in place, so it must be writable.
    let mut buf = BytesMut::new();
    for (at, header) in &batches {
        let Some(bytes) = records.get(*at..*at + header.size) else {
            return Err((ResponseError::CorruptMessage, None));
        };
        buf.clear();
        buf.extend_from_slice(bytes);
        let max_ts = log_append_time.unwrap_or(header.max_timestamp);
        let append = |buf: &mut BytesMut| {
            let stamp = |base, b: &mut [u8]| batch::stamp(b, base, LEADER_EPOCH, log_append_time);
            let count = header.record_count as u32;
            match log_append_time {
                // The batch CRC was checked and stamping leaves its coverage alone: the log reuses it for its
                // frame instead of running CRC32C over the batch a second time.
                None => {
                    let known = KnownCrc {
                        from: batch::CRC_FROM,
                        crc32c: header.crc,
                    };
                    log.append_with_known_crc(buf, count, max_ts, known, stamp)
                }
                // LogAppendTime rewrites covered bytes (and the batch CRC): the log computes its own.
                Some(_) => log.append_with(buf, count, max_ts, stamp),
            }
            .map_err(|e| {
                tracing::error!(log = log.name(), "append failed: {e}");
                (log_error(&e), Some(e.to_string()))
            })
        };
        let appended = match header.producer() {
            None => append(&mut buf)?,
            Some(producer) => {
                // Check, append and record under the partition's producer lock, so two copies of one retried
                // batch cannot both be appended.
                let mut table = partition.producers();
                match table.check(&producer) {
                    Ok(SequenceCheck::Duplicate { base_offset }) => {
                        // Answer with the first copy's offsets; wait for its durability like an append.
                        first_base.get_or_insert(base_offset);
                        next = next.max(base_offset + header.record_count as u64);
                        continue;
                    }
                    Ok(SequenceCheck::Append) => {
                        let appended = append(&mut buf)?;
                        table.record(&producer, appended.base_offset);
                        appended
                    }
                    Err(e @ ProducerError::OutOfOrder { .. }) => {
                        return Err((ResponseError::OutOfOrderSequenceNumber, Some(e.to_string())))
                    }
                    Err(e @ ProducerError::InvalidEpoch { .. }) => {
                        return Err((ResponseError::InvalidProducerEpoch, Some(e.to_string())))
                    }
                }
            }
        };
        first_base.get_or_insert(appended.base_offset);
        next = appended.next_offset;
    }
    partition.notify_appended();
    let base = first_base.unwrap_or(0);
    Ok((
        PartitionProduceResponse::default()
            .with_index(index)
            .with_base_offset(base as i64)
            .with_log_append_time_ms(log_append_time.unwrap_or(-1))
            .with_log_start_offset(log.offsets().log_start as i64),
        next,
    ))
}

/// Clears fields the response version does not have (the codec refuses to encode them).
fn fit_version(p: &mut PartitionProduceResponse, version: i16) {
    if version < 5 {
        p.log_start_offset = -1;
    }
    if version < 8 {
        p.error_message = None;
    }
}
