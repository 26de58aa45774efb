//! The `x-*` arguments of queue.declare and the message properties the queue model acts on
//! (`priority`, `expiration`), read from field tables and checked as RabbitMQ checks them: a wrong type or
//! value is 406 PRECONDITION_FAILED on the channel, and queue types this broker has not got yet are refused
//! by name.

use amq_protocol::protocol::basic::AMQPProperties;
use amq_protocol::types::{AMQPValue, FieldTable};
use wharf_core::queues::{Overflow, QueueArgs};

use crate::reply::{Fault, PRECONDITION_FAILED};

/// An integer argument of any integer type (clients pick different ones for the same value).
fn integer(value: &AMQPValue) -> Option<i128> {
    Some(match value {
        AMQPValue::ShortShortInt(v) => i128::from(*v),
        AMQPValue::ShortShortUInt(v) => i128::from(*v),
        AMQPValue::ShortInt(v) => i128::from(*v),
        AMQPValue::ShortUInt(v) => i128::from(*v),
        AMQPValue::LongInt(v) => i128::from(*v),
        AMQPValue::LongUInt(v) => i128::from(*v),
        AMQPValue::LongLongInt(v) => i128::from(*v),
        _ => return None,
    })
}

fn string(value: &AMQPValue) -> Option<String> {
    match value {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
        _ => None,
    }
}

/// The name RabbitMQ gives a field value's type in its error texts (`{unacceptable_type,longstr}`).
pub(crate) fn type_name(value: &AMQPValue) -> &'static str {
    match value {
        AMQPValue::Boolean(_) => "bool",
        AMQPValue::ShortShortInt(_) => "byte",
        AMQPValue::ShortShortUInt(_) => "unsignedbyte",
        AMQPValue::ShortInt(_) => "short",
        AMQPValue::ShortUInt(_) => "unsignedshort",
        AMQPValue::LongInt(_) => "signedint",
        AMQPValue::LongUInt(_) => "unsignedint",
        AMQPValue::LongLongInt(_) => "long",
        AMQPValue::Float(_) => "float",
        AMQPValue::Double(_) => "double",
        AMQPValue::DecimalValue(_) => "decimal",
        AMQPValue::ShortString(_) => "shortstr",
        AMQPValue::LongString(_) => "longstr",
        AMQPValue::FieldArray(_) => "array",
        AMQPValue::Timestamp(_) => "timestamp",
        AMQPValue::FieldTable(_) => "table",
        AMQPValue::ByteArray(_) => "binary",
        AMQPValue::Void => "void",
    }
}

/// The arguments Wharf acts on (and compares on redeclare); only these are kept, with the wire type each
/// came as (a 406 names it). Others are accepted and dropped.
const RECOGNISED: &[&str] = &[
    "x-message-ttl",
    "x-expires",
    "x-max-length",
    "x-max-length-bytes",
    "x-overflow",
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-max-priority",
    "x-single-active-consumer",
    "x-queue-type",
    "x-queue-mode",
    "x-queue-version",
];

/// Arguments RabbitMQ 3.10.8 knows for its other queue types (quorum, stream) and refuses on a classic queue,
/// "invalid arg 'x-delivery-limit' for queue 'q' in vhost '/' of queue type rabbit_classic_queue" (each seen on
/// the reference node); arguments nobody knows are accepted and dropped.
const OTHER_QUEUE_TYPES_ONLY: &[&str] = &[
    "x-delivery-limit",
    "x-dead-letter-strategy",
    "x-initial-cluster-size",
    "x-max-age",
    "x-max-in-memory-bytes",
    "x-max-in-memory-length",
    "x-queue-leader-locator",
    "x-quorum-initial-group-size",
    "x-stream-max-segment-size-bytes",
];

/// Largest TTL or expiry RabbitMQ accepts (its `MAX_EXPIRY_TIMER`, ms).
const EXPIRY_MS_MAX: i128 = 4_294_967_295;

/// Parses queue.declare's arguments for queue `queue` in vhost `vhost`. Errors are worded as RabbitMQ's
/// (`{value_negative,-1}`, `{unacceptable_type,longstr}`, …).
pub fn queue_args(vhost: &str, queue: &str, table: &FieldTable) -> Result<QueueArgs, Fault> {
    let invalid = |name: &str, why: String| {
        Fault::channel(
            PRECONDITION_FAILED,
            format!("invalid arg '{name}' for queue '{queue}' in vhost '{vhost}': {why}"),
        )
    };
    let int = |name: &str, value: &AMQPValue| -> Result<i128, Fault> {
        integer(value).ok_or_else(|| {
            invalid(
                name,
                format!("\"expected integer, got {}\"", type_name(value)),
            )
        })
    };
    let non_negative = |name: &str, value: &AMQPValue| -> Result<u64, Fault> {
        let v = int(name, value)?;
        u64::try_from(v).map_err(|_| invalid(name, format!("{{value_negative,{v}}}")))
    };
    let expiry = |name: &str, value: &AMQPValue, zero_allowed: bool| -> Result<u64, Fault> {
        let v = int(name, value)?;
        if v == 0 && !zero_allowed {
            return Err(invalid(name, "{value_zero,0}".to_string()));
        }
        if v > EXPIRY_MS_MAX {
            return Err(invalid(
                name,
                format!("{{value_too_large,{v},{EXPIRY_MS_MAX}}}"),
            ));
        }
        u64::try_from(v).map_err(|_| invalid(name, format!("{{value_negative,{v}}}")))
    };
    let text = |name: &str, value: &AMQPValue| -> Result<String, Fault> {
        string(value)
            .ok_or_else(|| invalid(name, format!("{{unacceptable_type,{}}}", type_name(value))))
    };
    let mut args = QueueArgs::default();
    for (key, value) in table.inner() {
        if RECOGNISED.contains(&key.as_str()) {
            args.wire_types
                .insert(key.as_str().to_string(), type_name(value).to_string());
        }
        match key.as_str() {
            "x-message-ttl" => args.message_ttl_ms = Some(expiry(key.as_str(), value, true)?),
            "x-expires" => args.expires_ms = Some(expiry(key.as_str(), value, false)?),
            "x-max-length" => args.max_length = Some(non_negative(key.as_str(), value)?),
            "x-max-length-bytes" => {
                args.max_length_bytes = Some(non_negative(key.as_str(), value)?)
            }
            "x-overflow" => {
                let s = text(key.as_str(), value)?;
                args.overflow = Overflow::parse(&s)
                    .ok_or_else(|| invalid(key.as_str(), "invalid_overflow".to_string()))?;
            }
            "x-dead-letter-exchange" => {
                // RabbitMQ words this one type error differently from the others.
                args.dead_letter_exchange = Some(string(value).ok_or_else(|| {
                    Fault::invalid_arg_type(
                        key.as_str(),
                        type_name(value),
                        &format!("queue '{queue}'"),
                        vhost,
                    )
                })?)
            }
            "x-dead-letter-routing-key" => {
                args.dead_letter_routing_key = Some(text(key.as_str(), value)?)
            }
            "x-max-priority" => {
                let max = non_negative(key.as_str(), value)?;
                args.max_priority = Some(u8::try_from(max).map_err(|_| {
                    invalid(key.as_str(), format!("{{max_value_exceeded,{max}}}"))
                })?)
            }
            "x-single-active-consumer" => match value {
                AMQPValue::Boolean(b) => args.single_active_consumer = *b,
                other => {
                    return Err(invalid(
                        key.as_str(),
                        format!("{{unacceptable_type,{}}}", type_name(other)),
                    ))
                }
            },
            "x-queue-type" => match text(key.as_str(), value)?.as_str() {
                "classic" => {}
                kind @ ("quorum" | "stream") => {
                    return Err(Fault::channel(
                        PRECONDITION_FAILED,
                        format!(
                            "queue type '{kind}' is not supported by this broker yet (queue '{queue}' in vhost '{vhost}'); declare a classic queue"
                        ),
                    ))
                }
                other => {
                    return Err(invalid(
                        key.as_str(),
                        format!("\"unsupported queue type '{other}'\""),
                    ))
                }
            },
            "x-queue-mode" => match text(key.as_str(), value)?.as_str() {
                mode @ ("default" | "lazy") => args.queue_mode = Some(mode.to_string()),
                other => {
                    return Err(invalid(
                        key.as_str(),
                        format!("\"unsupported queue mode '{other}'\""),
                    ))
                }
            },
            "x-queue-version" => match int(key.as_str(), value)? {
                v @ (1 | 2) => args.queue_version = u8::try_from(v).ok(),
                other => {
                    return Err(invalid(
                        key.as_str(),
                        format!("\"unsupported queue version '{other}'\""),
                    ))
                }
            },
            // Other arguments (x-queue-master-locator, …) are accepted and ignored, as RabbitMQ ignores those
            // it does not act on.
            _ => {}
        }
    }
    // After the loop, so that a quorum or stream queue is refused as such whatever its other arguments.
    if let Some(key) = table
        .inner()
        .keys()
        .find(|k| OTHER_QUEUE_TYPES_ONLY.contains(&k.as_str()))
    {
        return Err(Fault::channel(
            PRECONDITION_FAILED,
            format!(
                "invalid arg '{}' for queue '{queue}' in vhost '{vhost}' of queue type rabbit_classic_queue",
                key.as_str()
            ),
        ));
    }
    if args.dead_letter_routing_key.is_some() && args.dead_letter_exchange.is_none() {
        return Err(Fault::channel(
            PRECONDITION_FAILED,
            format!(
                "invalid arg 'x-dead-letter-routing-key' for queue '{queue}' in vhost '{vhost}': \
                 routing_key_but_no_dlx_defined"
            ),
        ));
    }
    Ok(args)
}

/// The `expiration` property in ms: an integer from 0 to 2^32 - 1 written in decimal, as RabbitMQ requires
/// (anything else is 406 on publish, with RabbitMQ's reason).
pub fn expiration_ms(properties: &AMQPProperties) -> Result<Option<u64>, Fault> {
    let Some(raw) = properties.expiration().as_ref() else {
        return Ok(None);
    };
    let s = raw.as_str();
    let invalid = |why: String| {
        Fault::channel(
            PRECONDITION_FAILED,
            format!("invalid expiration '{s}': {why}"),
        )
    };
    // RabbitMQ reads it with Erlang's `string:to_integer`: an optional sign, then digits; text after them is
    // refused as a leftover, a negative value or one past 2^32 - 1 ms separately.
    let (negative, unsigned) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let digit_count = unsigned.bytes().take_while(u8::is_ascii_digit).count();
    if digit_count == 0 {
        return Err(invalid("no_integer".to_string()));
    }
    let (digits, leftover) = unsigned.split_at(digit_count);
    if !leftover.is_empty() {
        return Err(invalid(format!("{{leftover_string,\"{leftover}\"}}")));
    }
    // The value as Erlang prints an integer: no leading zeros, no plus sign, "-" only when not zero.
    let magnitude = match digits.trim_start_matches('0') {
        "" => "0",
        m => m,
    };
    let value = if negative && magnitude != "0" {
        format!("-{magnitude}")
    } else {
        magnitude.to_string()
    };
    if value.starts_with('-') {
        return Err(invalid(format!("{{value_negative,{value}}}")));
    }
    match magnitude.parse::<u64>() {
        Ok(ms) if i128::from(ms) <= EXPIRY_MS_MAX => Ok(Some(ms)),
        _ => Err(invalid(format!("{{value_too_large,{value}}}"))),
    }
}

/// The `x-priority` argument of basic.consume on `queue` (0 when absent); not an integer is 406, as in
/// RabbitMQ.
pub fn consumer_priority(vhost: &str, queue: &str, table: &FieldTable) -> Result<i32, Fault> {
    let Some(value) = table.inner().get("x-priority") else {
        return Ok(0);
    };
    let invalid = |why: String| {
        Fault::channel(
            PRECONDITION_FAILED,
            format!("invalid arg 'x-priority' for queue '{queue}' in vhost '{vhost}': {why}"),
        )
    };
    let v = integer(value)
        .ok_or_else(|| invalid(format!("\"expected integer, got {}\"", type_name(value))))?;
    i32::try_from(v).map_err(|_| invalid(format!("{{value_out_of_range,{v}}}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::types::{LongString, ShortString};

    fn table(entries: &[(&str, AMQPValue)]) -> FieldTable {
        let mut t = FieldTable::default();
        for (k, v) in entries {
            t.insert(ShortString::from(*k), v.clone());
        }
        t
    }

    #[test]
    fn parses_what_rabbitmq_accepts() {
        let args = queue_args(
            "/",
            "q",
            &table(&[
                ("x-message-ttl", AMQPValue::LongInt(500)),
                ("x-max-length", AMQPValue::ShortShortUInt(3)),
                (
                    "x-overflow",
                    AMQPValue::LongString(LongString::from("reject-publish")),
                ),
                (
                    "x-dead-letter-exchange",
                    AMQPValue::LongString(LongString::from("dlx")),
                ),
                ("x-max-priority", AMQPValue::LongLongInt(10)),
                ("x-single-active-consumer", AMQPValue::Boolean(true)),
                (
                    "x-queue-type",
                    AMQPValue::LongString(LongString::from("classic")),
                ),
                (
                    "x-queue-mode",
                    AMQPValue::LongString(LongString::from("lazy")),
                ),
                ("x-queue-version", AMQPValue::ShortShortInt(2)),
                (
                    "x-queue-master-locator",
                    AMQPValue::LongString(LongString::from("min-masters")),
                ),
            ]),
        )
        .unwrap();
        assert_eq!(args.message_ttl_ms, Some(500));
        assert_eq!(args.max_length, Some(3));
        assert_eq!(args.overflow, Overflow::RejectPublish);
        assert_eq!(args.dead_letter_exchange.as_deref(), Some("dlx"));
        assert_eq!(args.max_priority, Some(10));
        assert!(args.single_active_consumer);
        assert_eq!(args.queue_mode.as_deref(), Some("lazy"));
        assert_eq!(args.queue_version, Some(2));
        // Wire types are kept for the arguments checked on redeclare, not for ignored ones
        // (x-queue-master-locator).
        assert_eq!(
            args.wire_types.get("x-max-length").map(String::as_str),
            Some("unsignedbyte")
        );
        assert!(args.wire_types.contains_key("x-queue-mode"));
        assert!(!args.wire_types.contains_key("x-queue-master-locator"));
    }

    #[test]
    fn refuses_bad_values_and_missing_queue_types() {
        for bad in [
            ("x-message-ttl", AMQPValue::LongInt(-1)),
            ("x-expires", AMQPValue::LongInt(0)),
            ("x-max-priority", AMQPValue::LongInt(256)),
            (
                "x-message-ttl",
                AMQPValue::LongString(LongString::from("1")),
            ),
            (
                "x-overflow",
                AMQPValue::LongString(LongString::from("sideways")),
            ),
            (
                "x-queue-type",
                AMQPValue::LongString(LongString::from("quorum")),
            ),
            (
                "x-queue-type",
                AMQPValue::LongString(LongString::from("stream")),
            ),
            (
                "x-dead-letter-routing-key",
                AMQPValue::LongString(LongString::from("k")),
            ),
            (
                "x-queue-mode",
                AMQPValue::LongString(LongString::from("bogus")),
            ),
            ("x-queue-version", AMQPValue::LongInt(3)),
            ("x-delivery-limit", AMQPValue::LongInt(5)),
            ("x-max-age", AMQPValue::LongString(LongString::from("1D"))),
        ] {
            let err = queue_args("/", "q", &table(std::slice::from_ref(&bad))).unwrap_err();
            assert_eq!(err.code, PRECONDITION_FAILED, "{bad:?}");
            assert!(!err.hard, "a channel error: {bad:?}");
        }
        let quorum = queue_args(
            "app",
            "q",
            &table(&[(
                "x-queue-type",
                AMQPValue::LongString(LongString::from("quorum")),
            )]),
        )
        .unwrap_err();
        assert!(quorum.text.contains("not supported"), "{}", quorum.text);
        assert!(quorum.text.contains("in vhost 'app'"), "{}", quorum.text);
        // A quorum queue's own arguments do not hide that quorum queues are not built yet.
        let quorum_with_limit = queue_args(
            "/",
            "q",
            &table(&[
                ("x-delivery-limit", AMQPValue::LongInt(5)),
                (
                    "x-queue-type",
                    AMQPValue::LongString(LongString::from("quorum")),
                ),
            ]),
        )
        .unwrap_err();
        assert!(
            quorum_with_limit.text.contains("not supported"),
            "{}",
            quorum_with_limit.text
        );
        let classic_with_limit = queue_args(
            "/",
            "q",
            &table(&[("x-delivery-limit", AMQPValue::LongInt(5))]),
        )
        .unwrap_err();
        assert_eq!(
            classic_with_limit.text,
            "invalid arg 'x-delivery-limit' for queue 'q' in vhost '/' of queue type rabbit_classic_queue"
        );
    }

    #[test]
    fn expiration_is_a_string_of_digits() {
        let with = |s: &str| AMQPProperties::default().with_expiration(ShortString::from(s));
        assert_eq!(expiration_ms(&with("1500")).unwrap(), Some(1500));
        assert_eq!(expiration_ms(&AMQPProperties::default()).unwrap(), None);
        let text = |s: &str| expiration_ms(&with(s)).unwrap_err().text;
        assert_eq!(text("-1"), "invalid expiration '-1': {value_negative,-1}");
        assert_eq!(
            text("1.5"),
            "invalid expiration '1.5': {leftover_string,\".5\"}"
        );
        assert_eq!(text(" 5"), "invalid expiration ' 5': no_integer");
        assert_eq!(expiration_ms(&with("+5")).unwrap(), Some(5));
        assert_eq!(expiration_ms(&with("-0")).unwrap(), Some(0));
        assert_eq!(expiration_ms(&with("007")).unwrap(), Some(7));
        assert_eq!(
            expiration_ms(&with("4294967295")).unwrap(),
            Some(4294967295)
        );
        assert_eq!(
            text("4294967296"),
            "invalid expiration '4294967296': {value_too_large,4294967296}"
        );
        assert_eq!(
            text("0099999999999999999999999"),
            "invalid expiration '0099999999999999999999999': {value_too_large,99999999999999999999999}"
        );
        assert_eq!(
            text("-007"),
            "invalid expiration '-007': {value_negative,-7}"
        );
        assert_eq!(text("abc"), "invalid expiration 'abc': no_integer");
        assert_eq!(text(""), "invalid expiration '': no_integer");
        assert_eq!(text("-"), "invalid expiration '-': no_integer");
    }
}
