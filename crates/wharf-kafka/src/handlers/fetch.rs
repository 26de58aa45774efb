//! Fetch: stored batches go back as they were stored (one copy into the response, no re-encoding), with
//! Kafka's limits and long polling:
//! - `partition_max_bytes` and the response's `max_bytes` bound what is returned, except that the first batch
//!   of the first partition with data is returned whole even when it is larger (KIP-74), so a consumer always
//!   makes progress;
//! - when fewer than `min_bytes` are available the request waits — woken by every append to one of its
//!   partitions — and answers as soon as `min_bytes` are there, or at `max_wait_ms` with what there is;
//! - the high watermark is the log end: on one node an appended batch is fully replicated.
//!
//! Fetch sessions (KIP-227) are not kept: every response says session 0, which tells clients to send full
//! fetch requests.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::future::select_all;
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::{BrokerId, FetchRequest, FetchResponse, ResponseKind, TopicName};
use kafka_protocol::protocol::VersionRange;
use kafka_protocol::ResponseError;
use wharf_core::Partition;

use super::{log_error, Broker, Reply};

/// Served versions: v4 (record batches) up to v17; from v13 topics are named by id.
pub const VERSIONS: VersionRange = VersionRange { min: 4, max: 17 };

/// Longest a fetch waits, whatever `max_wait_ms` asks (it also bounds how long shutdown waits for one).
const MAX_WAIT_MS_CAP: i32 = 30_000;

struct Wanted {
    partition_index: i32,
    partition: Option<Arc<Partition>>,
    fetch_offset: i64,
    partition_max_bytes: i32,
}

struct Plan {
    /// Per topic: the name (v4–12) or id (v13+) to answer with, and the partitions wanted.
    topics: Vec<(TopicName, uuid::Uuid, Vec<Wanted>)>,
    min_bytes: usize,
    max_bytes: usize,
    version: i16,
}

/// Answers Fetch.
pub fn handle(broker: &Arc<Broker>, request: FetchRequest, version: i16) -> Reply {
    let topics = request
        .topics
        .into_iter()
        .map(|t| {
            let topic = if version >= 13 {
                broker.topics.get_by_id(t.topic_id.as_bytes())
            } else {
                broker.topics.get(&t.topic)
            };
            let wanted = t
                .partitions
                .into_iter()
                .map(|p| Wanted {
                    partition_index: p.partition,
                    partition: topic.as_ref().and_then(|t| t.partition(p.partition)),
                    fetch_offset: p.fetch_offset,
                    partition_max_bytes: p.partition_max_bytes,
                })
                .collect();
            (t.topic, t.topic_id, wanted)
        })
        .collect();
    let plan = Plan {
        topics,
        min_bytes: usize::try_from(request.min_bytes).unwrap_or(0),
        max_bytes: usize::try_from(request.max_bytes).unwrap_or(0),
        version,
    };
    let (response, bytes, errors) = read(&plan);
    let max_wait_ms = request.max_wait_ms.clamp(0, MAX_WAIT_MS_CAP);
    if bytes >= plan.min_bytes || max_wait_ms == 0 || errors {
        return Reply::Now(ResponseKind::Fetch(response));
    }
    Reply::Later(Box::pin(long_poll(plan, max_wait_ms)))
}

/// Waits for appends until `min_bytes` are available or `max_wait_ms` passes.
async fn long_poll(plan: Plan, max_wait_ms: i32) -> ResponseKind {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(max_wait_ms as u64);
    let partitions: Vec<Arc<Partition>> = plan
        .topics
        .iter()
        .flat_map(|(_, _, w)| w.iter().filter_map(|w| w.partition.clone()))
        .collect();
    loop {
        // Register for wake-ups before reading, so an append between the read and the wait is not missed.
        let mut wakers: Vec<_> = partitions.iter().map(|p| Box::pin(p.appended())).collect();
        for w in &mut wakers {
            w.as_mut().enable();
        }
        let (response, bytes, errors) = read(&plan);
        if bytes >= plan.min_bytes || errors || wakers.is_empty() {
            return ResponseKind::Fetch(response);
        }
        tokio::select! {
            _ = select_all(wakers) => {}
            _ = tokio::time::sleep_until(deadline) => {
                let (response, _, _) = read(&plan);
                return ResponseKind::Fetch(response);
            }
        }
    }
}

/// Reads every wanted partition once; returns the response, the record bytes in it, and whether any
/// partition had an error (which answers at once, as Kafka does).
fn read(plan: &Plan) -> (FetchResponse, usize, bool) {
    let mut remaining = plan.max_bytes;
    let mut total = 0usize;
    let mut errors = false;
    let mut responses = Vec::with_capacity(plan.topics.len());
    for (name, id, wanted) in &plan.topics {
        let mut partitions = Vec::with_capacity(wanted.len());
        for w in wanted {
            let mut data = read_partition(w, &mut remaining, total == 0);
            if plan.version >= 13 && w.partition.is_none() {
                // Topics named by id that do not exist (any more).
                data.error_code = ResponseError::UnknownTopicId.code();
            }
            if plan.version < 5 {
                // The log start offset field exists from v5.
                data.log_start_offset = -1;
            }
            if data.error_code != 0 {
                errors = true;
            }
            total += data.records.as_ref().map_or(0, Bytes::len);
            partitions.push(data);
        }
        let response = FetchableTopicResponse::default().with_partitions(partitions);
        responses.push(if plan.version >= 13 {
            response.with_topic_id(*id)
        } else {
            response.with_topic(name.clone())
        });
    }
    (
        FetchResponse::default()
            .with_session_id(0)
            .with_responses(responses),
        total,
        errors,
    )
}

fn read_partition(w: &Wanted, remaining: &mut usize, first_with_data: bool) -> PartitionData {
    let base = PartitionData::default()
        .with_partition_index(w.partition_index)
        .with_preferred_read_replica(BrokerId(-1))
        .with_aborted_transactions(None);
    let Some(partition) = &w.partition else {
        return base
            .with_error_code(ResponseError::UnknownTopicOrPartition.code())
            .with_high_watermark(-1)
            .with_last_stable_offset(-1)
            .with_log_start_offset(-1);
    };
    let log = partition.log();
    let offsets = log.offsets();
    let hw = offsets.log_end as i64;
    let base = base
        .with_high_watermark(hw)
        .with_last_stable_offset(hw)
        .with_log_start_offset(offsets.log_start as i64);
    if w.fetch_offset < offsets.log_start as i64 || w.fetch_offset > hw {
        return base.with_error_code(ResponseError::OffsetOutOfRange.code());
    }
    let budget = usize::try_from(w.partition_max_bytes)
        .unwrap_or(0)
        .min(*remaining);
    if w.fetch_offset == hw || (budget == 0 && !first_with_data) {
        return base.with_records(Some(Bytes::new()));
    }
    let batches = match log.read(w.fetch_offset as u64, budget.max(1), Some(offsets.log_end)) {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(log = log.name(), "fetch read failed: {e}");
            return base.with_error_code(log_error(&e).code());
        }
    };
    let mut size = 0usize;
    let mut take = 0usize;
    for b in &batches {
        let len = b.payload.len();
        if size + len > budget && !(take == 0 && first_with_data) {
            break;
        }
        size += len;
        take += 1;
    }
    let mut records = BytesMut::with_capacity(size);
    for b in &batches[..take] {
        records.extend_from_slice(&b.payload);
    }
    *remaining = remaining.saturating_sub(size);
    base.with_records(Some(records.freeze()))
}
