//! How a durable queue sits on the log engine: the byte layout of its two logs and the handle that opens them.
//!
//! A durable queue has two logs (design.md, "one storage engine"):
//! - the **message log** `__amqp.<id>.m`: one record per enqueued message, in queue order; a message's
//!   position in the queue is its offset. Policy `always` by default: a publisher confirm waits for it.
//! - the **journal** `__amqp.<id>.j`: small records of what happened to positions — settled (acknowledged,
//!   rejected, purged, dropped), held a transient message (dropped at restart), the highest position ever
//!   delivered (so unacknowledged messages come back marked redelivered), and the low watermark below which
//!   everything is settled. Every record is a union / maximum of facts, so replaying them in any order gives
//!   the same state, and a compaction is just one record holding everything, after which older ones go.
//!
//! Names start with `__amqp.` and have no `-`, so they can never be taken for a Kafka partition
//! (`<topic>-<n>`). Bytes read back are checked (the log's CRC first, then every length here) and a record
//! that does not decode is reported, never trusted.

use std::sync::Arc;

use bytes::{BufMut, Bytes};
use wharf_log::{Durability, Log, LogConfig, LogManager};

use crate::queues::Message;
use crate::range_set::RangeSet;

/// Format version of message records.
const MESSAGE_RECORD_VERSION: u8 = 1;
/// Format version of journal records.
const JOURNAL_RECORD_VERSION: u8 = 1;
/// Flag bit: delivery-mode 2.
const FLAG_PERSISTENT: u8 = 1;
/// `expires_at` of a message that never expires.
const NO_EXPIRY: i64 = i64::MAX;
/// Segment size of message logs: small enough that a consumed backlog gives its space back soon, large
/// enough that a queue of a few GiB has few files.
pub const MESSAGE_SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
/// Longest a message log keeps appended messages unsynced when no confirm waits for them (they were acked
/// first): 100 ms of traffic, so the next sync a confirm does wait for stays short.
const UNSYNCED_AGE_MAX_MS: u64 = 100;
/// Segment size of journals, which are compacted often.
const JOURNAL_SEGMENT_BYTES: u64 = 4 * 1024 * 1024;

/// A record that does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("queue record: {0}")]
pub struct RecordError(pub &'static str);

/// The log-name prefix of a vhost's durable queues: `__amqp.` for the default vhost `/`, `__amqp.<key>.` for
/// others, where `key` is [`vhost_key`] (names are free text; log names are not).
pub fn log_prefix(vhost: &str) -> String {
    match vhost_key(vhost) {
        None => "__amqp.".to_string(),
        Some(key) => format!("__amqp.{key}."),
    }
}

/// A short, file-name-safe key for a vhost other than `/`: `v` and the 64-bit FNV-1a hash of its name in hex.
/// `None` for `/`, whose files keep the plain names.
pub fn vhost_key(vhost: &str) -> Option<String> {
    if vhost == "/" {
        return None;
    }
    let hash = vhost.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    Some(format!("v{hash:016x}"))
}

/// Log name of a durable queue's message log.
pub fn message_log_name(prefix: &str, id: u64) -> String {
    format!("{prefix}{id}.m")
}

/// Log name of a durable queue's journal.
pub fn journal_log_name(prefix: &str, id: u64) -> String {
    format!("{prefix}{id}.j")
}

/// The queue id a log name belongs to, for log names of durable queues under `prefix`.
pub fn queue_id_of_log(prefix: &str, name: &str) -> Option<u64> {
    let rest = name.strip_prefix(prefix)?;
    let id = rest
        .strip_suffix(".m")
        .or_else(|| rest.strip_suffix(".j"))?;
    id.parse().ok()
}

/// Encodes a message record.
pub fn encode_message(message: &Message, expires_at: Option<i64>, out: &mut Vec<u8>) {
    out.clear();
    out.reserve(
        24 + message.exchange.len()
            + message.routing_key.len()
            + message.properties.len()
            + message.body.len(),
    );
    out.push(MESSAGE_RECORD_VERSION);
    out.push(if message.persistent {
        FLAG_PERSISTENT
    } else {
        0
    });
    out.push(message.priority);
    out.put_i64_le(expires_at.unwrap_or(NO_EXPIRY));
    out.put_u64_le(message.expiration_ms.unwrap_or(u64::MAX));
    // Both are AMQP short strings (at most 255 bytes); the protocol layer has checked that.
    let exchange = &message.exchange.as_bytes()[..message.exchange.len().min(255)];
    let key = &message.routing_key.as_bytes()[..message.routing_key.len().min(255)];
    out.push(exchange.len() as u8);
    out.extend_from_slice(exchange);
    out.push(key.len() as u8);
    out.extend_from_slice(key);
    out.put_u32_le(u32::try_from(message.properties.len()).unwrap_or(u32::MAX));
    out.extend_from_slice(&message.properties);
    out.extend_from_slice(&message.body);
}

/// Decodes a message record; properties and body share `payload`'s buffer.
pub fn decode_message(payload: &Bytes) -> Result<(Message, Option<i64>), RecordError> {
    let mut r = Reader::new(payload);
    if r.u8()? != MESSAGE_RECORD_VERSION {
        return Err(RecordError("unknown message record version"));
    }
    let flags = r.u8()?;
    let priority = r.u8()?;
    let expires_at = r.u64()? as i64;
    let expiration_ms = r.u64()?;
    let exchange_len = usize::from(r.u8()?);
    let exchange = r.string(exchange_len)?;
    let key_len = usize::from(r.u8()?);
    let routing_key = r.string(key_len)?;
    let props_len = r.u32()? as usize;
    let props_at = r.at;
    r.take(props_len)?;
    let properties = payload.slice(props_at..r.at);
    let body = payload.slice(r.at..);
    let message = Message {
        exchange,
        routing_key,
        properties,
        body,
        persistent: flags & FLAG_PERSISTENT != 0,
        priority,
        expiration_ms: (expiration_ms != u64::MAX).then_some(expiration_ms),
    };
    Ok((message, (expires_at != NO_EXPIRY).then_some(expires_at)))
}

/// One journal record: facts about positions of the message log.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct JournalRecord {
    /// Every position below is settled.
    pub low: u64,
    /// Every position below was delivered at least once.
    pub delivered_high: u64,
    /// Settled positions (at or above `low`).
    pub settled: RangeSet,
    /// Positions holding transient messages: dropped at restart.
    pub transient: RangeSet,
}

impl JournalRecord {
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.clear();
        out.push(JOURNAL_RECORD_VERSION);
        out.put_u64_le(self.low);
        out.put_u64_le(self.delivered_high);
        for set in [&self.settled, &self.transient] {
            out.put_u32_le(u32::try_from(set.range_count()).unwrap_or(u32::MAX));
            for (s, e) in set.iter() {
                out.put_u64_le(s);
                out.put_u64_le(e);
            }
        }
    }

    pub fn decode(payload: &[u8]) -> Result<Self, RecordError> {
        let mut r = Reader::new(payload);
        if r.u8()? != JOURNAL_RECORD_VERSION {
            return Err(RecordError("unknown journal record version"));
        }
        let low = r.u64()?;
        let delivered_high = r.u64()?;
        let mut sets = [RangeSet::new(), RangeSet::new()];
        for set in &mut sets {
            let n = r.u32()? as usize;
            // Checked against what is left before looping: a lying count cannot make us spin or allocate.
            if n > r.remaining() / 16 {
                return Err(RecordError("range count past the end of the record"));
            }
            for _ in 0..n {
                let (s, e) = (r.u64()?, r.u64()?);
                if s >= e {
                    return Err(RecordError("empty or inverted range"));
                }
                set.insert_range(s, e);
            }
        }
        let [settled, transient] = sets;
        Ok(Self {
            low,
            delivered_high,
            settled,
            transient,
        })
    }

    /// Folds `other` into this record (union of sets, maximum of watermarks).
    pub fn absorb(&mut self, other: &JournalRecord) {
        self.low = self.low.max(other.low);
        self.delivered_high = self.delivered_high.max(other.delivered_high);
        self.settled.union_with(&other.settled);
        self.transient.union_with(&other.transient);
    }
}

/// A bounds-checked little-endian reader over a record.
struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self { buf, at: 0 }
    }

    fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.at)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], RecordError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&end| end <= self.buf.len())
            .ok_or(RecordError("truncated record"))?;
        let out = self
            .buf
            .get(self.at..end)
            .ok_or(RecordError("truncated record"))?;
        self.at = end;
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, RecordError> {
        Ok(self.take(1)?.first().copied().unwrap_or(0))
    }

    fn u32(&mut self) -> Result<u32, RecordError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes(
            b.try_into().map_err(|_| RecordError("truncated record"))?,
        ))
    }

    fn u64(&mut self) -> Result<u64, RecordError> {
        let b = self.take(8)?;
        Ok(u64::from_le_bytes(
            b.try_into().map_err(|_| RecordError("truncated record"))?,
        ))
    }

    fn string(&mut self, n: usize) -> Result<String, RecordError> {
        let b = self.take(n)?;
        String::from_utf8(b.to_vec()).map_err(|_| RecordError("name is not UTF-8"))
    }
}

/// The log engine as one vhost's durable queues use it.
#[derive(Debug)]
pub struct QueueLogs {
    logs: Arc<LogManager>,
    /// Policy of message logs (the storage default, `always` unless configured otherwise).
    durability: Durability,
    /// [`log_prefix`] of the vhost.
    prefix: String,
}

impl QueueLogs {
    pub fn new(logs: Arc<LogManager>, durability: Durability, prefix: String) -> Self {
        Self {
            logs,
            durability,
            prefix,
        }
    }

    pub fn manager(&self) -> &Arc<LogManager> {
        &self.logs
    }

    /// Opens (creating if needed) the two logs of queue `id`.
    pub fn open(&self, id: u64) -> wharf_log::Result<(Arc<Log>, Arc<Log>)> {
        let messages = LogConfig {
            segment_bytes: MESSAGE_SEGMENT_BYTES,
            // A queue keeps a message until it is settled, however old: no time or size retention.
            retention_ms: None,
            retention_bytes: None,
            // No roll by age: a slow queue would otherwise leave a file per week for nothing.
            segment_ms: u64::MAX / 2,
            durability: self.durability,
            // Confirms of messages acked before their sync need none (see `PendingSync::wait`): keep what a
            // later sync has to write small.
            unsynced_age_max_ms: Some(UNSYNCED_AGE_MAX_MS),
            ..LogConfig::default()
        };
        let journal = LogConfig {
            segment_bytes: JOURNAL_SEGMENT_BYTES,
            retention_ms: None,
            retention_bytes: None,
            segment_ms: u64::MAX / 2,
            // Settlements are hints of work done, never acknowledged to anyone: they reach the page cache
            // within the tail flush interval, and a lost one only means a message is delivered again.
            durability: Durability::Os,
            ..LogConfig::default()
        };
        Ok((
            self.logs
                .open_log(&message_log_name(&self.prefix, id), messages)?,
            self.logs
                .open_log(&journal_log_name(&self.prefix, id), journal)?,
        ))
    }

    /// Deletes both logs of queue `id`.
    pub fn delete(&self, id: u64) -> wharf_log::Result<()> {
        self.logs.delete_log(&message_log_name(&self.prefix, id))?;
        self.logs.delete_log(&journal_log_name(&self.prefix, id))
    }

    /// Deletes the logs of queues not in `known` (left by a crash between a queue's removal from the
    /// definitions and the deletion of its logs, or between their creation and the definitions' write).
    pub fn delete_orphans(&self, known: &dyn Fn(u64) -> bool) -> wharf_log::Result<()> {
        for name in self.logs.existing()? {
            if let Some(id) = queue_id_of_log(&self.prefix, &name) {
                if !known(id) {
                    tracing::warn!(log = %name, "deleting the log of a queue that no longer exists");
                    self.logs.delete_log(&name)?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message() -> Message {
        Message {
            exchange: "ex".into(),
            routing_key: "rk".into(),
            properties: Bytes::from_static(b"\x00\x00"),
            body: Bytes::from_static(b"hello"),
            persistent: true,
            priority: 3,
            expiration_ms: Some(60_000),
        }
    }

    #[test]
    fn message_records_round_trip_and_truncation_is_refused() {
        let mut buf = Vec::new();
        encode_message(&message(), Some(1234), &mut buf);
        let bytes = Bytes::from(buf.clone());
        assert_eq!(decode_message(&bytes).unwrap(), (message(), Some(1234)));
        for cut in 0..buf.len() - 5 {
            // Anything shorter than the header + properties fails (the body may be any length).
            let short = Bytes::copy_from_slice(&buf[..cut]);
            assert!(decode_message(&short).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn journal_records_round_trip_and_lying_counts_are_refused() {
        let mut record = JournalRecord {
            low: 3,
            delivered_high: 9,
            ..Default::default()
        };
        record.settled.insert_range(4, 6);
        record.transient.insert(8);
        let mut buf = Vec::new();
        record.encode(&mut buf);
        assert_eq!(JournalRecord::decode(&buf).unwrap(), record);
        // A range count of 2^32-1 with no ranges behind it.
        buf[17..21].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(JournalRecord::decode(&buf).is_err());
        assert!(JournalRecord::decode(&[]).is_err());
    }

    #[test]
    fn log_names_map_back_to_ids_and_never_look_like_partitions() {
        let default = log_prefix("/");
        let other = log_prefix("staging");
        assert_eq!(
            queue_id_of_log(&default, &message_log_name(&default, 42)),
            Some(42)
        );
        assert_eq!(
            queue_id_of_log(&default, &journal_log_name(&default, 7)),
            Some(7)
        );
        assert_eq!(queue_id_of_log(&default, "orders-0"), None);
        // Vhosts never claim each other's logs.
        assert_eq!(
            queue_id_of_log(&default, &message_log_name(&other, 3)),
            None
        );
        assert_eq!(
            queue_id_of_log(&other, &message_log_name(&default, 3)),
            None
        );
        assert_eq!(
            queue_id_of_log(&other, &message_log_name(&other, 3)),
            Some(3)
        );
        assert!(!message_log_name(&other, 1).contains('-'));
        assert_ne!(vhost_key("a"), vhost_key("b"));
    }
}
