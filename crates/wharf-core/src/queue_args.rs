//! The `x-*` arguments a queue is declared with, as the queue model acts on them. The protocol layer parses
//! and validates the wire values (and answers 406 as RabbitMQ does); this is the typed result, compared on
//! redeclare and saved with durable queues.

use serde::{Deserialize, Serialize};

/// What happens to a publish that would take a queue past `x-max-length` / `x-max-length-bytes`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Overflow {
    /// The oldest ready messages are dropped (dead-lettered with reason `maxlen`) to make room.
    #[default]
    DropHead,
    /// The new message is refused: a confirm-mode publisher gets basic.nack.
    RejectPublish,
    /// As `RejectPublish`, and the refused message is dead-lettered.
    RejectPublishDlx,
}

impl Overflow {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "drop-head" => Some(Self::DropHead),
            "reject-publish" => Some(Self::RejectPublish),
            "reject-publish-dlx" => Some(Self::RejectPublishDlx),
            _ => None,
        }
    }

    /// The argument's value as clients write it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::DropHead => "drop-head",
            Self::RejectPublish => "reject-publish",
            Self::RejectPublishDlx => "reject-publish-dlx",
        }
    }
}

/// Why a message was dead-lettered (the `reason` of its `x-death` entry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeathReason {
    /// basic.reject / basic.nack with requeue=false.
    Rejected,
    /// Its TTL passed.
    Expired,
    /// Dropped or refused by a length limit.
    MaxLen,
}

impl DeathReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rejected => "rejected",
            Self::Expired => "expired",
            Self::MaxLen => "maxlen",
        }
    }
}

/// A queue's arguments, typed. Unknown `x-` arguments are not kept (RabbitMQ ignores them too).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueArgs {
    /// `x-message-ttl`: messages expire this many ms after they were enqueued.
    #[serde(default)]
    pub message_ttl_ms: Option<u64>,
    /// `x-expires`: the queue is deleted after this many ms without consumers, basic.get or redeclare.
    #[serde(default)]
    pub expires_ms: Option<u64>,
    /// `x-max-length`: most ready messages.
    #[serde(default)]
    pub max_length: Option<u64>,
    /// `x-max-length-bytes`: most bytes of ready message bodies.
    #[serde(default)]
    pub max_length_bytes: Option<u64>,
    /// `x-overflow`.
    #[serde(default)]
    pub overflow: Overflow,
    /// `x-dead-letter-exchange` (`""` is the default exchange).
    #[serde(default)]
    pub dead_letter_exchange: Option<String>,
    /// `x-dead-letter-routing-key`: replaces the message's routing keys when dead-lettered.
    #[serde(default)]
    pub dead_letter_routing_key: Option<String>,
    /// `x-max-priority`: priorities 0..=this (messages above count as this).
    #[serde(default)]
    pub max_priority: Option<u8>,
    /// `x-single-active-consumer`: one consumer gets everything; the next takes over when it goes.
    #[serde(default)]
    pub single_active_consumer: bool,
    /// `x-queue-mode` (`default` or `lazy`): changes nothing here (messages of durable queues wait in the log
    /// either way), but is checked and compared on redeclare as RabbitMQ does.
    #[serde(default)]
    pub queue_mode: Option<String>,
    /// `x-queue-version` (1 or 2, RabbitMQ's classic queue storage formats): likewise checked and compared only.
    #[serde(default)]
    pub queue_version: Option<u8>,
    /// The wire type each argument above came as (`signedint`, `long`, `longstr`, …): only for error texts, which
    /// name it as RabbitMQ's do (`current is the value '100' of type 'signedint'`).
    #[serde(default)]
    pub wire_types: std::collections::BTreeMap<String, String>,
}
