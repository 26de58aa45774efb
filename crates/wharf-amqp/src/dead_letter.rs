//! Dead-lettering as RabbitMQ writes it, on the wire side: the queue model decides *when* a message is
//! dead-lettered; this rewrites its properties — the `x-death` history, `x-first-death-*`, `expiration`
//! moved into the history — and tells the model the message's routing keys and headers.
//!
//! `x-death` is an array of tables, newest first, one per (queue, reason) pair, each with `count`, `reason`,
//! `queue`, `time`, `exchange`, `routing-keys` and, if the message had one, `original-expiration`. A pair seen
//! again has its count raised and moves to the front.

use amq_protocol::protocol::basic::AMQPProperties;
use amq_protocol::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};
use bytes::Bytes;
use tracing::debug;
use wharf_core::exchanges::headers::Headers;
use wharf_core::queues::{DeathReason, Message, MessageCodec};

use crate::frame::{encode_properties, parse_properties};
use crate::routing::{message_headers, sender_routes};

/// The AMQP [`MessageCodec`].
#[derive(Debug, Default)]
pub struct AmqpCodec;

fn long(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

fn text_of(value: Option<&AMQPValue>) -> Option<String> {
    match value? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
        _ => None,
    }
}

impl AmqpCodec {
    /// The message's routing key followed by its `CC` keys (`BCC` was removed at publish).
    fn keys(message: &Message, properties: &AMQPProperties) -> Vec<String> {
        let mut keys = vec![message.routing_key.clone()];
        if let Ok((extra, _)) = sender_routes(properties) {
            keys.extend(extra);
        }
        keys
    }
}

impl MessageCodec for AmqpCodec {
    fn dead_letter(
        &self,
        message: &Message,
        reason: DeathReason,
        queue: &str,
        routing_key: Option<&str>,
        now_ms: i64,
    ) -> Option<Message> {
        let properties = parse_properties(&message.properties);
        let mut headers = properties
            .headers()
            .as_ref()
            .map(|t| t.inner().clone())
            .unwrap_or_default();
        let mut deaths: Vec<AMQPValue> = match headers.get("x-death") {
            Some(AMQPValue::FieldArray(a)) => a.as_slice().to_vec(),
            _ => Vec::new(),
        };
        let same = |v: &AMQPValue| match v {
            AMQPValue::FieldTable(t) => {
                text_of(t.inner().get("queue")).as_deref() == Some(queue)
                    && text_of(t.inner().get("reason")).as_deref() == Some(reason.as_str())
            }
            _ => false,
        };
        let previous = deaths.iter().position(same);
        // A message that comes back to a queue for the same reason, with no rejection on the way, is in a
        // cycle (e.g. two queues expiring into each other): RabbitMQ drops it.
        if previous.is_some() && reason != DeathReason::Rejected {
            let rejected_before = deaths.iter().any(|v| match v {
                AMQPValue::FieldTable(t) => {
                    text_of(t.inner().get("reason")).as_deref() == Some("rejected")
                }
                _ => false,
            });
            if !rejected_before {
                debug!(queue, "dead-letter cycle: message dropped");
                return None;
            }
        }
        let entry = match previous {
            Some(i) => {
                let mut old = match deaths.remove(i) {
                    AMQPValue::FieldTable(t) => t,
                    _ => FieldTable::default(),
                };
                let count = match old.inner().get("count") {
                    Some(AMQPValue::LongLongInt(n)) => *n,
                    _ => 1,
                };
                old.insert(
                    "count".into(),
                    AMQPValue::LongLongInt(count.saturating_add(1)),
                );
                old
            }
            None => {
                let mut t = FieldTable::default();
                t.insert("count".into(), AMQPValue::LongLongInt(1));
                t.insert("reason".into(), long(reason.as_str()));
                t.insert("queue".into(), long(queue));
                t.insert(
                    "time".into(),
                    AMQPValue::Timestamp(u64::try_from(now_ms / 1000).unwrap_or(0)),
                );
                t.insert("exchange".into(), long(&message.exchange));
                let keys: Vec<AMQPValue> = Self::keys(message, &properties)
                    .iter()
                    .map(|k| long(k))
                    .collect();
                t.insert(
                    "routing-keys".into(),
                    AMQPValue::FieldArray(FieldArray::from(keys)),
                );
                if let Some(expiration) = properties.expiration() {
                    t.insert("original-expiration".into(), long(expiration.as_str()));
                }
                t
            }
        };
        deaths.insert(0, AMQPValue::FieldTable(entry));
        headers.insert(
            "x-death".into(),
            AMQPValue::FieldArray(FieldArray::from(deaths)),
        );
        for (key, value) in [
            ("x-first-death-reason", reason.as_str()),
            ("x-first-death-queue", queue),
            ("x-first-death-exchange", message.exchange.as_str()),
        ] {
            if !headers.contains_key(key) {
                headers.insert(ShortString::from(key), long(value));
            }
        }
        // The expiration went into the history: a dead-lettered message does not expire again by it.
        let mut rewritten = AMQPProperties::default();
        if let Some(v) = properties.content_type() {
            rewritten = rewritten.with_content_type(v.clone());
        }
        if let Some(v) = properties.content_encoding() {
            rewritten = rewritten.with_content_encoding(v.clone());
        }
        rewritten = rewritten.with_headers(FieldTable::from(headers));
        if let Some(v) = properties.delivery_mode() {
            rewritten = rewritten.with_delivery_mode(*v);
        }
        if let Some(v) = properties.priority() {
            rewritten = rewritten.with_priority(*v);
        }
        if let Some(v) = properties.correlation_id() {
            rewritten = rewritten.with_correlation_id(v.clone());
        }
        if let Some(v) = properties.reply_to() {
            rewritten = rewritten.with_reply_to(v.clone());
        }
        if let Some(v) = properties.message_id() {
            rewritten = rewritten.with_message_id(v.clone());
        }
        if let Some(v) = properties.timestamp() {
            rewritten = rewritten.with_timestamp(*v);
        }
        if let Some(v) = properties.kind() {
            rewritten = rewritten.with_type(v.clone());
        }
        if let Some(v) = properties.user_id() {
            rewritten = rewritten.with_user_id(v.clone());
        }
        if let Some(v) = properties.app_id() {
            rewritten = rewritten.with_app_id(v.clone());
        }
        if let Some(v) = properties.cluster_id() {
            rewritten = rewritten.with_cluster_id(v.clone());
        }
        let encoded = encode_properties(&rewritten).ok()?;
        Some(Message {
            exchange: message.exchange.clone(),
            routing_key: routing_key.unwrap_or(&message.routing_key).to_string(),
            properties: Bytes::from(encoded),
            body: message.body.clone(),
            persistent: message.persistent,
            priority: message.priority,
            expiration_ms: None,
        })
    }

    fn routing_keys(&self, message: &Message) -> Vec<String> {
        Self::keys(message, &parse_properties(&message.properties))
    }

    fn headers(&self, message: &Message) -> Option<Headers> {
        message_headers(&parse_properties(&message.properties))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(properties: AMQPProperties) -> Message {
        Message {
            exchange: "orders".into(),
            routing_key: "new".into(),
            properties: Bytes::from(encode_properties(&properties).unwrap()),
            body: Bytes::from_static(b"x"),
            persistent: false,
            priority: 0,
            expiration_ms: Some(100),
        }
    }

    fn deaths(m: &Message) -> Vec<FieldTable> {
        let p = parse_properties(&m.properties);
        match p.headers().as_ref().unwrap().inner().get("x-death") {
            Some(AMQPValue::FieldArray(a)) => a
                .as_slice()
                .iter()
                .map(|v| match v {
                    AMQPValue::FieldTable(t) => t.clone(),
                    _ => panic!("not a table"),
                })
                .collect(),
            _ => panic!("no x-death"),
        }
    }

    #[test]
    fn writes_x_death_like_rabbitmq_and_counts_repeats() {
        let props = AMQPProperties::default()
            .with_expiration("100".into())
            .with_correlation_id("c1".into());
        let first = AmqpCodec
            .dead_letter(&message(props), DeathReason::Expired, "q1", None, 5_000)
            .unwrap();
        let p = parse_properties(&first.properties);
        assert!(p.expiration().is_none(), "expiration moves into x-death");
        assert_eq!(p.correlation_id().as_ref().unwrap().as_str(), "c1");
        let d = deaths(&first);
        assert_eq!(d.len(), 1);
        let e = d[0].inner();
        assert_eq!(text_of(e.get("reason")).as_deref(), Some("expired"));
        assert_eq!(text_of(e.get("queue")).as_deref(), Some("q1"));
        assert_eq!(text_of(e.get("exchange")).as_deref(), Some("orders"));
        assert_eq!(
            text_of(e.get("original-expiration")).as_deref(),
            Some("100")
        );
        assert_eq!(e.get("count"), Some(&AMQPValue::LongLongInt(1)));
        assert_eq!(e.get("time"), Some(&AMQPValue::Timestamp(5)));
        let headers = p.headers().as_ref().unwrap().inner().clone();
        assert_eq!(
            text_of(headers.get("x-first-death-reason")).as_deref(),
            Some("expired")
        );
        // Rejected from q2, then rejected from q1 twice: q1/rejected is counted, newest first.
        let second = AmqpCodec
            .dead_letter(&first, DeathReason::Rejected, "q2", Some("rk"), 6_000)
            .unwrap();
        assert_eq!(second.routing_key, "rk");
        let third = AmqpCodec
            .dead_letter(&second, DeathReason::Rejected, "q2", None, 7_000)
            .unwrap();
        let d = deaths(&third);
        assert_eq!(d.len(), 2);
        assert_eq!(text_of(d[0].inner().get("queue")).as_deref(), Some("q2"));
        assert_eq!(d[0].inner().get("count"), Some(&AMQPValue::LongLongInt(2)));
        assert_eq!(
            text_of(
                parse_properties(&third.properties)
                    .headers()
                    .as_ref()
                    .unwrap()
                    .inner()
                    .get("x-first-death-queue")
            )
            .as_deref(),
            Some("q1")
        );
    }

    #[test]
    fn an_expiry_cycle_without_rejections_is_dropped() {
        let m = message(AMQPProperties::default());
        let once = AmqpCodec
            .dead_letter(&m, DeathReason::Expired, "a", None, 0)
            .unwrap();
        let twice = AmqpCodec
            .dead_letter(&once, DeathReason::Expired, "b", None, 0)
            .unwrap();
        assert!(AmqpCodec
            .dead_letter(&twice, DeathReason::Expired, "a", None, 0)
            .is_none());
    }
}
