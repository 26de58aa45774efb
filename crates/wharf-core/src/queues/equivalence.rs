//! What makes a redeclare "inequivalent" (406), in RabbitMQ's words.

use super::*;

/// The first property in which a redeclare differs from the queue, worded as RabbitMQ words it:
/// `'x-message-ttl' for queue 'q' in vhost '/': received '2000' but current is '1000'` (an argument given
/// on one side only is `none` on the other).
pub(super) fn inequivalent(
    new: &QueueSpec,
    old: &QueueSpec,
    queue: &str,
    vhost: &str,
) -> Option<String> {
    fn show<T: ToString>(v: &Option<T>) -> Option<String> {
        v.as_ref().map(T::to_string)
    }
    let flag = |b: bool| Some(b.to_string());
    let (a, b) = (&new.arguments, &old.arguments);
    // (`exclusive` is not here: a mismatch there is 405, checked before.)
    let diffs: [(&str, Option<String>, Option<String>); 13] = [
        ("durable", flag(new.durable), flag(old.durable)),
        ("auto_delete", flag(new.auto_delete), flag(old.auto_delete)),
        (
            "x-message-ttl",
            show(&a.message_ttl_ms),
            show(&b.message_ttl_ms),
        ),
        ("x-expires", show(&a.expires_ms), show(&b.expires_ms)),
        ("x-max-length", show(&a.max_length), show(&b.max_length)),
        (
            "x-max-length-bytes",
            show(&a.max_length_bytes),
            show(&b.max_length_bytes),
        ),
        (
            "x-overflow",
            Some(a.overflow.as_str().to_string()),
            Some(b.overflow.as_str().to_string()),
        ),
        (
            "x-dead-letter-exchange",
            show(&a.dead_letter_exchange),
            show(&b.dead_letter_exchange),
        ),
        (
            "x-dead-letter-routing-key",
            show(&a.dead_letter_routing_key),
            show(&b.dead_letter_routing_key),
        ),
        (
            "x-max-priority",
            show(&a.max_priority),
            show(&b.max_priority),
        ),
        (
            "x-single-active-consumer",
            flag(a.single_active_consumer),
            flag(b.single_active_consumer),
        ),
        ("x-queue-mode", show(&a.queue_mode), show(&b.queue_mode)),
        (
            "x-queue-version",
            show(&a.queue_version),
            show(&b.queue_version),
        ),
    ];
    let (name, received, current) = diffs.into_iter().find(|(_, n, o)| n != o)?;
    // Both given: the two values; one missing: RabbitMQ says "none" and "the value '…' of type '…'" (the type
    // the client sent it as, when known).
    let both = received.is_some() && current.is_some();
    let value = |v: Option<String>, args: &QueueArgs| match (v, args.wire_types.get(name)) {
        (None, _) => "none".to_string(),
        (Some(v), _) if both => format!("'{v}'"),
        (Some(v), Some(ty)) => format!("the value '{v}' of type '{ty}'"),
        (Some(v), None) => format!("the value '{v}'"),
    };
    Some(format!(
        "'{name}' for queue '{queue}' in vhost '{vhost}': received {} but current is {}",
        value(received, a),
        value(current, b)
    ))
}
