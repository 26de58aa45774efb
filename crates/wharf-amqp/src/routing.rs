//! The wire side of routing: turns field tables into the router's values (binding arguments, message
//! headers, `alternate-exchange`), reads the `CC` / `BCC` headers and removes `BCC` before delivery. The
//! routing rules themselves live in `wharf_core::exchanges`, which knows no field tables.

use amq_protocol::protocol::{basic::AMQPProperties, exchange};
use amq_protocol::types::{AMQPValue, FieldTable};
use bytes::Bytes;
use wharf_core::exchanges::headers::Headers;
use wharf_core::exchanges::{BindingArgs, ExchangeKind, ExchangeSpec, HeaderValue};

use crate::reply::{Fault, COMMAND_INVALID, PRECONDITION_FAILED};

/// A field value as the router compares it: strings readable, numbers and byte arrays as values (each with its
/// type octet), everything else rendered with its type (the `Debug` form names the variant).
pub fn header_value(value: &AMQPValue) -> HeaderValue {
    let int = |ty: u8, value: i64| HeaderValue::Int { ty, value };
    let float = |ty: u8, value: f64| HeaderValue::Float {
        ty,
        bits: value.to_bits(),
    };
    match value {
        AMQPValue::Void => HeaderValue::Void,
        // A longstr is a binary to RabbitMQ: one that is not UTF-8 is kept as its bytes (a lossy string
        // would make two different ones equal, and miss a byte array of the same bytes).
        AMQPValue::LongString(s) => match std::str::from_utf8(s.as_bytes()) {
            Ok(text) => HeaderValue::Str(text.to_owned()),
            Err(_) => HeaderValue::Bytes(s.as_bytes().to_vec()),
        },
        AMQPValue::ShortString(s) => HeaderValue::Str(s.as_str().to_string()),
        AMQPValue::ShortShortInt(v) => int(b'b', i64::from(*v)),
        AMQPValue::ShortShortUInt(v) => int(b'B', i64::from(*v)),
        AMQPValue::ShortInt(v) => int(b's', i64::from(*v)),
        AMQPValue::ShortUInt(v) => int(b'u', i64::from(*v)),
        AMQPValue::LongInt(v) => int(b'I', i64::from(*v)),
        AMQPValue::LongUInt(v) => int(b'i', i64::from(*v)),
        AMQPValue::LongLongInt(v) => int(b'l', *v),
        AMQPValue::Timestamp(v) => match i64::try_from(*v) {
            Ok(v) => int(b'T', v),
            Err(_) => HeaderValue::Other(format!("{value:?}")),
        },
        AMQPValue::Float(v) => float(b'f', f64::from(*v)),
        AMQPValue::Double(v) => float(b'd', *v),
        AMQPValue::ByteArray(b) => HeaderValue::Bytes(b.as_slice().to_vec()),
        other => HeaderValue::Other(format!("{other:?}")),
    }
}

fn entries(table: &FieldTable) -> Vec<(String, HeaderValue)> {
    table
        .inner()
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), header_value(v)))
        .collect()
}

/// Binding arguments (the pattern of a headers binding; for other types they only tell bindings apart).
pub fn binding_args(table: &FieldTable) -> BindingArgs {
    BindingArgs::new(entries(table))
}

/// The message's headers for a headers exchange; `None` when it has none.
pub fn message_headers(properties: &AMQPProperties) -> Option<Headers> {
    properties
        .headers()
        .as_ref()
        .map(|table| entries(table).into_iter().collect())
}

/// The spec of a non-passive exchange.declare in vhost `vhost`. An unknown type is a connection error (503),
/// and an `alternate-exchange` that is not a string a channel error (406), as in RabbitMQ 3.10.8.
pub fn exchange_spec(declare: &exchange::Declare, vhost: &str) -> Result<ExchangeSpec, Fault> {
    let kind = declare.kind.as_str();
    let kind = ExchangeKind::parse(kind).ok_or_else(|| {
        Fault::connection(COMMAND_INVALID, format!("unknown exchange type '{kind}'"))
    })?;
    let alternate_exchange = match declare.arguments.inner().get("alternate-exchange") {
        None => None,
        Some(AMQPValue::LongString(s)) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        Some(AMQPValue::ShortString(s)) => Some(s.as_str().to_string()),
        Some(other) => {
            return Err(Fault::invalid_arg_type(
                "alternate-exchange",
                crate::queue_args::type_name(other),
                &format!("exchange '{}'", declare.exchange),
                vhost,
            ))
        }
    };
    Ok(ExchangeSpec {
        kind,
        durable: declare.durable,
        auto_delete: declare.auto_delete,
        internal: declare.internal,
        alternate_exchange,
    })
}

/// The extra routing keys of a message: its `CC` and `BCC` headers, each an array of strings (other
/// entries are skipped); a `CC` or `BCC` that is not an array is refused (406), as RabbitMQ does.
pub fn sender_routes(properties: &AMQPProperties) -> Result<(Vec<String>, bool), Fault> {
    let Some(table) = properties.headers().as_ref() else {
        return Ok((Vec::new(), false));
    };
    let mut keys = Vec::new();
    let mut has_bcc = false;
    for header in ["CC", "BCC"] {
        match table.inner().get(header) {
            None => {}
            Some(AMQPValue::FieldArray(array)) => {
                has_bcc |= header == "BCC";
                keys.extend(array.as_slice().iter().filter_map(|v| match v {
                    AMQPValue::LongString(s) => {
                        Some(String::from_utf8_lossy(s.as_bytes()).into_owned())
                    }
                    _ => None,
                }));
            }
            Some(other) => {
                return Err(Fault::channel(
                    PRECONDITION_FAILED,
                    // RabbitMQ 3.10's words, an Erlang term naming the header and the field type.
                    format!(
                        "invalid message: {{unacceptable_type_in_header,\"{header}\",{}}}",
                        crate::queue_args::type_name(other)
                    ),
                ));
            }
        }
    }
    Ok((keys, has_bcc))
}

/// The properties re-encoded without the `BCC` header, which receivers must not see.
pub fn without_bcc(properties: AMQPProperties) -> Result<Bytes, Fault> {
    let mut table = properties
        .headers()
        .as_ref()
        .map(|t| t.inner().clone())
        .unwrap_or_default();
    table.remove("BCC");
    let properties = properties.with_headers(FieldTable::from(table));
    crate::frame::encode_properties(&properties)
        .map(Bytes::from)
        .map_err(|e| Fault::channel(PRECONDITION_FAILED, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::types::{FieldArray, LongString};

    fn long(s: &str) -> AMQPValue {
        AMQPValue::LongString(LongString::from(s))
    }

    #[test]
    fn cc_and_bcc_become_keys_and_bcc_is_removed() {
        let mut table = FieldTable::default();
        table.insert(
            "CC".into(),
            AMQPValue::FieldArray(FieldArray::from(vec![long("a")])),
        );
        table.insert(
            "BCC".into(),
            AMQPValue::FieldArray(FieldArray::from(vec![long("b"), AMQPValue::LongInt(1)])),
        );
        table.insert("keep".into(), long("v"));
        let properties = AMQPProperties::default().with_headers(table);
        assert_eq!(
            sender_routes(&properties).unwrap(),
            (vec!["a".to_string(), "b".to_string()], true)
        );
        let raw = without_bcc(properties).unwrap();
        let back = crate::frame::parse_properties(&raw);
        let headers = back.headers().as_ref().unwrap().inner();
        assert!(headers.contains_key("CC") && headers.contains_key("keep"));
        assert!(!headers.contains_key("BCC"));
    }

    #[test]
    fn cc_must_be_an_array() {
        let mut table = FieldTable::default();
        table.insert("CC".into(), long("a"));
        let properties = AMQPProperties::default().with_headers(table);
        assert_eq!(
            sender_routes(&properties).unwrap_err().code,
            PRECONDITION_FAILED
        );
    }

    #[test]
    fn values_keep_their_type() {
        assert_eq!(header_value(&long("1")), HeaderValue::Str("1".into()));
        assert_ne!(
            header_value(&AMQPValue::LongInt(1)),
            header_value(&AMQPValue::LongLongInt(1))
        );
        assert_eq!(header_value(&AMQPValue::Void), HeaderValue::Void);
    }

    #[test]
    fn strings_that_are_not_utf8_compare_by_their_bytes() {
        let raw = |b: &[u8]| AMQPValue::LongString(LongString::from(b.to_vec()));
        let ff = header_value(&raw(b"\xff"));
        let fe = header_value(&raw(b"\xfe"));
        assert!(
            !ff.matches(&fe),
            "two different invalid strings are different"
        );
        assert!(ff.matches(&header_value(&raw(b"\xff"))));
        let bytes = header_value(&AMQPValue::ByteArray(amq_protocol::types::ByteArray::from(
            vec![0xffu8],
        )));
        assert!(bytes.matches(&ff) && ff.matches(&bytes));
    }

    #[test]
    fn the_renderings_version_1_definitions_hold_are_what_the_codec_prints() {
        // wharf-core upgrades version-1 definitions files by parsing these renderings (the previous build stored
        // every non-string argument as `format!("{value:?}")`): they must stay what amq-protocol prints.
        use amq_protocol::types::ByteArray;
        for (value, rendered) in [
            (AMQPValue::LongInt(5), "LongInt(5)"),
            (AMQPValue::ShortShortUInt(5), "ShortShortUInt(5)"),
            (AMQPValue::LongLongInt(-7), "LongLongInt(-7)"),
            (AMQPValue::Timestamp(9), "Timestamp(9)"),
            (AMQPValue::Double(0.5), "Double(0.5)"),
            (AMQPValue::Float(2.0), "Float(2.0)"),
            (AMQPValue::Float(0.1), "Float(0.1)"),
            (
                AMQPValue::ByteArray(ByteArray::from(vec![104u8, 105])),
                "ByteArray(ByteArray([104, 105]))",
            ),
        ] {
            assert_eq!(format!("{value:?}"), rendered);
        }
    }
}
