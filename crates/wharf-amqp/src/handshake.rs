//! The connection handshake's content: what connection.start offers and how start-ok's credentials and
//! client capabilities are read.

use amq_protocol::protocol::{connection, AMQPClass};
use amq_protocol::types::{AMQPValue, FieldTable, LongString};

use crate::config::User;
use crate::reply::{Fault, ACCESS_REFUSED};

/// The default user, allowed only from loopback addresses, as in RabbitMQ (`loopback_users`).
pub const DEFAULT_USER: &str = "guest";
const DEFAULT_PASSWORD: &str = "guest";

/// What RabbitMQ advertises; clients read it to decide which features they may use (pika refuses
/// publisher confirms unless `publisher_confirms` and `basic.nack` are there). Capabilities not built yet
/// in Wharf (confirms, exchange-to-exchange bindings, priorities, direct reply-to) are advertised anyway so
/// clients negotiate as they would with RabbitMQ; using them gets a clear error until they land.
const CAPABILITIES: [&str; 9] = [
    "publisher_confirms",
    "exchange_exchange_bindings",
    "basic.nack",
    "consumer_cancel_notify",
    "connection.blocked",
    "consumer_priorities",
    "authentication_failure_close",
    "per_consumer_qos",
    "direct_reply_to",
];

/// connection.start with RabbitMQ-like server properties.
pub fn start() -> AMQPClass {
    let mut capabilities = FieldTable::default();
    for name in CAPABILITIES {
        capabilities.insert(name.into(), AMQPValue::Boolean(true));
    }
    let mut props = FieldTable::default();
    props.insert("capabilities".into(), AMQPValue::FieldTable(capabilities));
    let text = |s: &str| AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()));
    props.insert("product".into(), text("Wharf"));
    props.insert("version".into(), text(env!("CARGO_PKG_VERSION")));
    props.insert("platform".into(), text("Rust"));
    props.insert("copyright".into(), text("The Wharf authors"));
    props.insert(
        "information".into(),
        text("Licensed under the Apache License 2.0"),
    );
    props.insert("cluster_name".into(), text("wharf"));
    AMQPClass::Connection(connection::AMQPMethod::Start(connection::Start {
        version_major: 0,
        version_minor: 9,
        server_properties: props,
        // RabbitMQ's order.
        mechanisms: LongString::from(b"PLAIN AMQPLAIN".to_vec()),
        locales: LongString::from(b"en_US".to_vec()),
    }))
}

/// The client capabilities the server must honour (what it may send).
#[derive(Debug, Clone, Copy, Default)]
pub struct ClientCapabilities {
    /// Server-initiated basic.cancel (e.g. when a queue is deleted).
    pub consumer_cancel_notify: bool,
    /// A 403 connection.close on failed authentication, instead of just closing the socket.
    pub authentication_failure_close: bool,
    /// connection.blocked / unblocked notifications.
    pub connection_blocked: bool,
}

impl ClientCapabilities {
    pub fn from_client_properties(props: &FieldTable) -> Self {
        let Some(AMQPValue::FieldTable(caps)) = props.inner().get("capabilities") else {
            return Self::default();
        };
        let flag = |name: &str| matches!(caps.inner().get(name), Some(AMQPValue::Boolean(true)));
        Self {
            consumer_cancel_notify: flag("consumer_cancel_notify"),
            authentication_failure_close: flag("authentication_failure_close"),
            connection_blocked: flag("connection.blocked"),
        }
    }
}

/// Checks start-ok's credentials against `guest` (loopback only) and the configured `users`; returns the
/// user name.
pub fn authenticate(
    start_ok: &connection::StartOk,
    peer_loopback: bool,
    users: &[User],
) -> Result<String, Fault> {
    let mechanism = start_ok.mechanism.as_str();
    let (user, password) = match mechanism {
        "PLAIN" => plain(start_ok.response.as_bytes()),
        "AMQPLAIN" => amqplain(start_ok.response.as_bytes()),
        other => {
            return Err(Fault::connection(
                ACCESS_REFUSED,
                format!("unsupported authentication mechanism '{other}'"),
            ))
        }
    }
    .ok_or_else(|| Fault::connection(ACCESS_REFUSED, format!("malformed {mechanism} response")))?;
    let refused = || {
        Fault::connection(
            ACCESS_REFUSED,
            format!(
                "Login was refused using authentication mechanism {mechanism}. For details see the \
                 broker logfile."
            ),
        )
    };
    if users
        .iter()
        .any(|u| u.name == user && constant_time_eq(u.password.as_bytes(), password.as_bytes()))
    {
        return Ok(user);
    }
    if user != DEFAULT_USER || password != DEFAULT_PASSWORD {
        return Err(refused());
    }
    if !peer_loopback {
        // RabbitMQ's loopback_users: guest may log in from localhost only.
        return Err(refused());
    }
    Ok(user)
}

/// Compares without stopping at the first difference, so timing tells nothing about a password.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether `user` may open `vhost`: guest may open any, a configured user those listed (all if none are).
pub fn may_open(user: &str, vhost: &str, users: &[User]) -> bool {
    match users.iter().find(|u| u.name == user) {
        Some(u) => u.vhosts.is_empty() || u.vhosts.iter().any(|v| v == vhost),
        None => user == DEFAULT_USER,
    }
}

/// PLAIN (RFC 4616): `[authzid] NUL authcid NUL passwd`.
fn plain(response: &[u8]) -> Option<(String, String)> {
    let mut parts = response.split(|&b| b == 0);
    let _authzid = parts.next()?;
    let user = parts.next()?;
    let password = parts.next()?;
    if parts.next().is_some() {
        return None;
    }
    Some((
        String::from_utf8(user.to_vec()).ok()?,
        String::from_utf8(password.to_vec()).ok()?,
    ))
}

/// AMQPLAIN: a field table without its 4-byte length, holding LOGIN and PASSWORD.
fn amqplain(response: &[u8]) -> Option<(String, String)> {
    let len = u32::try_from(response.len()).ok()?;
    let mut framed = Vec::with_capacity(response.len() + 4);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(response);
    let (rest, table) = amq_protocol::types::parsing::parse_field_table(&framed[..]).ok()?;
    if !rest.is_empty() {
        return None;
    }
    let text = |key: &str| match table.inner().get(key)? {
        AMQPValue::LongString(s) => String::from_utf8(s.as_bytes().to_vec()).ok(),
        AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
        _ => None,
    };
    Some((text("LOGIN")?, text("PASSWORD")?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::auth::{Credentials, SASLMechanism};

    fn start_ok(mechanism: SASLMechanism, user: &str, password: &str) -> connection::StartOk {
        let credentials = Credentials::new(user.into(), password.into());
        connection::StartOk {
            client_properties: FieldTable::default(),
            mechanism: mechanism.to_string().into(),
            response: credentials.sasl_auth_string(mechanism),
            locale: "en_US".into(),
        }
    }

    #[test]
    fn guest_from_loopback_only_with_both_mechanisms() {
        for mechanism in [SASLMechanism::Plain, SASLMechanism::AMQPlain] {
            assert_eq!(
                authenticate(&start_ok(mechanism, "guest", "guest"), true, &[]).unwrap(),
                "guest"
            );
            assert!(authenticate(&start_ok(mechanism, "guest", "guest"), false, &[]).is_err());
            assert!(authenticate(&start_ok(mechanism, "guest", "nope"), true, &[]).is_err());
            let app = [User {
                name: "app".into(),
                password: "s3cret".into(),
                vhosts: vec!["staging".into()],
            }];
            assert_eq!(
                authenticate(&start_ok(mechanism, "app", "s3cret"), false, &app).unwrap(),
                "app",
                "configured users log in from anywhere"
            );
            assert!(authenticate(&start_ok(mechanism, "app", "s3cre"), false, &app).is_err());
            assert!(may_open("app", "staging", &app) && !may_open("app", "/", &app));
            assert!(may_open("guest", "staging", &app));
        }
        assert!(plain(b"\0a").is_none());
        assert!(amqplain(b"\xff\xff").is_none());
    }
}
