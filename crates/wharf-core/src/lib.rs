//! The broker model: topics and partitions (today), then consumer groups and committed offsets,
//! idempotent-producer state, and for AMQP vhosts, exchanges, bindings and queues.
//!
//! It depends on `wharf-log` for storage and must not know about sockets or wire formats: protocol crates
//! translate their frames into calls on this model and its errors into their protocol's error codes.

pub mod backlog;
pub mod definitions;
pub mod definitions_log;
pub mod error;
pub mod exchanges;
pub mod flow;
pub mod groups;
pub mod offsets;
mod persist;
pub mod producers;
pub mod queue_args;
pub mod queue_log;
pub mod queues;
pub mod range_set;
pub mod topic_config;
pub mod topics;

pub use error::{CoreError, Result};

/// A map keyed by queue or exchange name, looked up on every publish. foldhash instead of std's SipHash: the
/// lookup of a 25-byte name cost ~210 instructions per message with SipHash (callgrind), several times
/// foldhash's. foldhash is seeded at random per process and per map, which keeps names chosen to collide out of
/// reach of clients that cannot read the broker's memory; only authenticated clients name queues anyway.
pub(crate) type NameMap<V> = std::collections::HashMap<String, V, foldhash::fast::RandomState>;
pub use groups::{GroupConfig, GroupCoordinator, GroupError, GroupState};
pub use offsets::{CommittedOffset, OffsetStore};
pub use producers::{BatchProducer, ProducerError, ProducerIds, ProducerTable, SequenceCheck};
pub use topic_config::{CleanupPolicy, TimestampType, TopicConfig, TopicDefaults};
pub use topics::{Partition, Topic, TopicRegistry, PARTITIONS_PER_TOPIC_MAX, TOPIC_NAME_MAX_LEN};

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
