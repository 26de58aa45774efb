//! AMQP-style queues: declare / delete / purge, consumers with prefetch credit, fair (round-robin) dispatch,
//! acknowledgement and requeue at the original position, TTL, length limits and dead-lettering; and the vhost
//! that ties them to its exchanges and bindings ([`crate::exchanges`]): publish routes through the exchange
//! table, bind checks the queue exists, and a deleted queue takes its bindings along.
//!
//! - `mod.rs` (here): what the protocol front end sees — messages, deliveries, events, outcomes, errors, and
//!   [`MessageCodec`], through which the front end rewrites what it encoded (`x-death`);
//! - `queue.rs`: one [`Queue`] — its backlog, consumers and dispatch, settlement, expiry, length limits;
//! - `vhost.rs`: the [`VHost`] — the queue and exchange tables, publish, topology operations, timers, and the
//!   store that brings durable queues back;
//! - `equivalence.rs`: when a redeclare is 406, in RabbitMQ's words.
//!
//! A non-durable (or exclusive) queue keeps its messages in memory; a durable one keeps them in its log and
//! journal ([`crate::backlog`], [`crate::queue_log`]), and the durable topology is saved in
//! [`crate::definitions`], so that [`VHost::open`] brings both back after a restart. It knows no wire format:
//! message properties are kept as the opaque bytes the protocol crate gave us and stored as received.
//!
//! Concurrency: the exchange table and the queue table are read-mostly `RwLock`s, taken in that order
//! (exchanges, then queues) whenever both are needed, so a bind cannot slip in between a queue's removal
//! and the removal of its bindings; a publish holds each only to read. Each queue has its own mutex, so publishers and
//! consumers of different queues never contend (design.md: no hot global lock). Deliveries leave a queue
//! through each consumer's [`DeliverySink`], an unbounded channel to the consumer's connection: what a
//! consumer can have outstanding is bounded by its prefetch; no-ack consumers are bounded only by the
//! connection draining its channel (a per-connection bound is a later increment).

mod equivalence;
mod queue;
#[cfg(test)]
mod tests;
mod vhost;

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};
use wharf_log::{Durability, LogManager};

pub use crate::backlog::PendingSync;
use crate::backlog::{Backlog, LogBacklog, Maintenance, OpenOptions, Ready};
use crate::definitions::{BindingDef, Definitions, DefinitionsFile, ExchangeDef, QueueDef};
use crate::definitions_log::{DefinitionsLog, Delta};
use crate::exchanges::headers::Headers;
use crate::exchanges::{Binding, BindingArgs, Destination, ExchangeError, ExchangeSpec, Exchanges};
use crate::flow::{ConsumerGate, MemoryGauge};
pub use crate::queue_args::{DeathReason, Overflow, QueueArgs};
use crate::queue_log::QueueLogs;

pub use queue::Queue;
use queue::{Consumer, QueueState};
pub use vhost::{VHost, REPLY_TO, TIMER_INTERVAL};

/// Longest queue name (AMQP short strings are at most 255 bytes).
pub const QUEUE_NAME_MAX_LEN: usize = 255;

/// Identifies a client connection to the model (exclusive queues belong to one).
pub type ConnectionId = u64;
/// Identifies one consumer, unique for the life of the process (consumer tags are only unique per
/// channel, and a channel number can be reused after a close).
pub type ConsumerId = u64;

/// Errors of the queue model; the AMQP front end maps each to its reply code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    /// 404: the queue does not exist.
    #[error("no queue '{name}' in vhost '{vhost}'")]
    NotFound { name: String, vhost: String },
    /// 406: a redeclare with different properties, or another precondition.
    #[error("{0}")]
    PreconditionFailed(String),
    /// 405: the queue is exclusive to another connection.
    #[error(
        "cannot obtain exclusive access to locked queue '{name}' in vhost '{vhost}'. It could be originally \
         declared on another connection or the exclusive property value does not match that of the original \
         declaration."
    )]
    ResourceLocked { name: String, vhost: String },
    /// 403: e.g. a consumer wants exclusive use of a queue that already has consumers.
    #[error("{0}")]
    AccessRefused(String),
    /// An exchange or binding operation failed (403, 404, 406 by its own kind).
    #[error(transparent)]
    Exchange(#[from] ExchangeError),
    /// 541: storage failed (the log engine or the definitions log).
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<crate::CoreError> for QueueError {
    fn from(e: crate::CoreError) -> Self {
        QueueError::Internal(e.to_string())
    }
}

/// A published message. `properties` are the content-header properties as the protocol encoded them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub exchange: String,
    pub routing_key: String,
    pub properties: Bytes,
    pub body: Bytes,
    /// delivery-mode 2: survives a restart when it sits in a durable queue.
    pub persistent: bool,
    /// The priority property (0 when absent); matters in queues with `x-max-priority`.
    pub priority: u8,
    /// The expiration property, in ms: the message expires this long after it enters a queue.
    pub expiration_ms: Option<u64>,
}

/// What a consumer's connection receives from a queue.
#[derive(Debug)]
pub enum QueueEvent {
    /// A message for consumer `consumer`.
    Deliver(Delivery),
    /// The queue was deleted: the consumer is gone (a server-initiated basic.cancel).
    Cancelled {
        consumer: ConsumerId,
        consumer_tag: String,
    },
}

/// One message handed to a consumer or to basic.get.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub queue: Arc<Queue>,
    /// `None` for basic.get.
    pub consumer: Option<ConsumerId>,
    /// Shared with the consumer: cloning it per delivery costs no allocation.
    pub consumer_tag: Arc<str>,
    pub message: Arc<Message>,
    pub redelivered: bool,
    /// Position in the queue, so a requeue puts the message back where it was.
    pub position: u64,
    /// When it expires in this queue, kept through a requeue.
    pub expires_at: Option<i64>,
    /// Messages left ready in the queue (basic.get-ok's message-count).
    pub remaining: u32,
}

/// Where a consumer's deliveries go: its connection's event channel.
pub type DeliverySink = mpsc::UnboundedSender<(u16, QueueEvent)>;

/// The properties a queue is declared with; a redeclare must match them (else 406).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueSpec {
    pub durable: bool,
    pub exclusive: bool,
    pub auto_delete: bool,
    /// The `x-*` arguments, compared on redeclare.
    pub arguments: QueueArgs,
}

impl QueueSpec {
    /// Whether the queue sits on the log engine and survives restarts: durable and not exclusive (an
    /// exclusive queue dies with its connection, so at the latest with the process, as in RabbitMQ).
    pub fn on_log(&self) -> bool {
        self.durable && !self.exclusive
    }
}

/// A message leaving a queue for its dead-letter exchange.
#[derive(Debug)]
pub struct DeadLetter {
    pub message: Arc<Message>,
    pub reason: DeathReason,
}

/// How a settled delivery ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settle {
    /// basic.ack: done with.
    Ack,
    /// basic.reject / basic.nack without requeue: dead-lettered (reason `rejected`) if the queue says so.
    Reject,
}

/// Options of basic.consume.
#[derive(Debug, Clone)]
pub struct ConsumeOptions {
    pub consumer_tag: String,
    pub channel: u16,
    pub no_ack: bool,
    pub exclusive: bool,
    pub prefetch: u16,
    /// `x-priority` (0 by default).
    pub priority: i32,
    /// The channel's and connection's flow control.
    pub gate: ConsumerGate,
}

/// The outcome of a declare.
#[derive(Debug, Clone)]
pub struct DeclareOk {
    pub queue: Arc<Queue>,
    pub message_count: u32,
    pub consumer_count: u32,
}

/// The outcome of enqueueing one message on the queues it was routed to.
#[derive(Debug, Default)]
pub struct Delivered {
    /// How many queues took it (0: a mandatory message is returned).
    pub queues: usize,
    /// What to wait for before confirming it (the logs of the durable queues that took a persistent copy).
    pub sync: PendingSync,
    /// A durable queue could not store it: the publisher gets a basic.nack, not an ack.
    pub failed: bool,
}

/// What a dead-lettered message is, seen by the protocol that encoded it: the queue model keeps
/// properties as opaque bytes, so the protocol layer rewrites them (RabbitMQ's `x-death` header) and renders
/// what routing needs.
pub trait MessageCodec: Send + Sync + std::fmt::Debug {
    /// `message` as it leaves `queue` for its dead-letter exchange: `x-death` updated, `expiration` removed,
    /// routed by `routing_key` if set. `None` drops it (a dead-letter cycle with no rejection in it).
    fn dead_letter(
        &self,
        message: &Message,
        reason: DeathReason,
        queue: &str,
        routing_key: Option<&str>,
        now_ms: i64,
    ) -> Option<Message>;
    /// The routing keys of `message`: its routing key and its `CC` keys.
    fn routing_keys(&self, message: &Message) -> Vec<String>;
    /// Its headers, for headers exchanges.
    fn headers(&self, message: &Message) -> Option<Headers>;
}
