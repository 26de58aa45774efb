//! RabbitMQ behaviours that other clients rely on, found by running the Java client, amqplib, py-amqp,
//! aio-pika, php-amqplib and Bunny against Wharf and RabbitMQ 3.10 side by side (each test names what the
//! reference broker did): `user_id` must be the login, headers-exchange numbers match by value whatever their
//! type, the predeclared exchanges can be redeclared, unbinding is idempotent, a dead-lettered message names
//! its dead-letter exchange, what RabbitMQ does not implement is a 540, a failed login waits for close-ok,
//! the texts of the common errors, connection.update-secret answered as RabbitMQ's internal users have it, and
//! 0-8's access.request answered with ticket 1.

mod support;

use std::io::{Read, Write};
use std::time::Duration;

use amq_protocol::protocol::{connection as conn_methods, AMQPClass};
use lapin::options::{
    BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, BasicRecoverOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ExchangeKind};
use support::{field_table, RawClient};

const WAIT: Duration = Duration::from_secs(10);

async fn open() -> (support::BrokerProcess, Connection, Channel) {
    let broker = support::start_amqp();
    let (conn, channel) = support::amqp_connect(&broker).await;
    (broker, conn, channel)
}

fn long(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

/// The reply code and text of the error that closed a channel or connection.
fn refusal(err: lapin::Error) -> (u16, String) {
    let text = err.to_string();
    // By the reply name first (a text may hold other numbers), then by the code.
    for (code, name) in [
        (403u16, "ACCESS_REFUSED"),
        (404, "NOT_FOUND"),
        (405, "RESOURCE_LOCKED"),
        (406, "PRECONDITION_FAILED"),
        (530, "NOT_ALLOWED"),
        (540, "NOT_IMPLEMENTED"),
    ] {
        if text.contains(name) {
            return (code, text);
        }
    }
    for code in [403u16, 404, 405, 406, 530, 540] {
        if text.contains(&code.to_string()) {
            return (code, text);
        }
    }
    (0, text)
}

/// The connection.close the server sent next, as "CODE TEXT"; anything else fails the test.
fn connection_close(client: &mut RawClient) -> String {
    match client.method() {
        Some(AMQPClass::Connection(conn_methods::AMQPMethod::Close(close))) => {
            format!("{} {}", close.reply_code, close.reply_text)
        }
        other => panic!("expected connection.close, got {other:?}"),
    }
}

/// basic.publish to the default exchange on channel 1 with its content, as bytes for a raw client.
fn raw_publish(routing_key: &str, properties: &BasicProperties, body: &[u8]) -> Vec<u8> {
    use amq_protocol::protocol::basic;
    let mut out = Vec::new();
    wharf_amqp::frame::write_method(
        &mut out,
        1,
        AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
            exchange: "".into(),
            routing_key: routing_key.into(),
            mandatory: false,
            immediate: false,
        })),
    )
    .unwrap();
    let properties = wharf_amqp::frame::encode_properties(properties).unwrap();
    wharf_amqp::frame::write_content(&mut out, 1, &properties, body, 131_072);
    out
}

/// Answers the server's channel.close on channel 1 and opens it again.
fn reopen_channel_1(client: &mut RawClient) {
    use amq_protocol::protocol::channel as ch;
    client.send_on(
        1,
        AMQPClass::Channel(ch::AMQPMethod::CloseOk(ch::CloseOk {})),
    );
    client.send_on(1, AMQPClass::Channel(ch::AMQPMethod::Open(ch::Open {})));
    assert!(matches!(
        client.method(),
        Some(AMQPClass::Channel(ch::AMQPMethod::OpenOk(_)))
    ));
}

async fn declare(channel: &Channel, name: &str, arguments: FieldTable) {
    channel
        .queue_declare(name.into(), QueueDeclareOptions::default(), arguments)
        .await
        .expect("queue.declare");
}

async fn get_body(channel: &Channel, queue: &str) -> Option<lapin::message::BasicGetMessage> {
    tokio::time::timeout(
        WAIT,
        channel.basic_get(queue.into(), BasicGetOptions { no_ack: true }),
    )
    .await
    .expect("basic.get in time")
    .expect("basic.get")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_id_other_than_the_login_is_refused() {
    // RabbitMQ: 406 "user_id property set to 'mallory' but authenticated user was 'guest'", closing the channel;
    // the login's own name is accepted. (A raw client reads the channel.close itself: lapin may report only
    // that the channel is closing.)
    use amq_protocol::protocol::channel as ch;
    let (broker, _conn, channel) = open().await;
    declare(&channel, "uid", FieldTable::default()).await;
    let publish_as = |user: &str| {
        raw_publish(
            "uid",
            &BasicProperties::default().with_user_id(ShortString::from(user)),
            user.as_bytes(),
        )
    };
    let mut client = RawClient::open(broker_stream(&broker));
    client.s.write_all(&publish_as("mallory")).unwrap();
    match client.method() {
        Some(AMQPClass::Channel(ch::AMQPMethod::Close(close))) => {
            assert_eq!(close.reply_code, 406, "{close:?}");
            assert!(
                close.reply_text.as_str().contains(
                    "user_id property set to 'mallory' but authenticated user was 'guest'"
                ),
                "{close:?}"
            );
            assert_eq!((close.class_id, close.method_id), (60, 40));
        }
        other => panic!("expected channel.close 406, got {other:?}"),
    }
    // The connection goes on: channel 1 again, publishing under the login's own name.
    reopen_channel_1(&mut client);
    client.s.write_all(&publish_as("guest")).unwrap();
    let got = tokio::time::timeout(WAIT, async {
        loop {
            if let Some(got) = get_body(&channel, "uid").await {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("guest's message is queued");
    assert_eq!(got.delivery.data, b"guest");
    assert!(
        get_body(&channel, "uid").await.is_none(),
        "mallory's was not"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_exchange_numbers_match_by_value_whatever_their_type() {
    // RabbitMQ compares header values with Erlang's `==`: a binding on int 5 takes a byte 5, a long 5 and a
    // double 5.0, not a string "5" nor a boolean.
    let (_broker, _conn, channel) = open().await;
    declare(&channel, "numbers", FieldTable::default()).await;
    channel
        .queue_bind(
            "numbers".into(),
            "amq.headers".into(),
            "".into(),
            QueueBindOptions::default(),
            field_table(&[("x-match", long("all")), ("n", AMQPValue::LongInt(5))]),
        )
        .await
        .expect("queue.bind");
    let values = [
        ("byte", AMQPValue::ShortShortUInt(5), true),
        ("long", AMQPValue::LongLongInt(5), true),
        ("double", AMQPValue::Double(5.0), true),
        ("timestamp", AMQPValue::Timestamp(5), true),
        ("string", long("5"), false),
        ("bool", AMQPValue::Boolean(true), false),
        ("other", AMQPValue::LongLongInt(6), false),
    ];
    for (name, value, _) in &values {
        channel
            .basic_publish(
                "amq.headers".into(),
                "".into(),
                BasicPublishOptions::default(),
                name.as_bytes(),
                BasicProperties::default().with_headers(field_table(&[("n", value.clone())])),
            )
            .await
            .expect("publish")
            .await
            .expect("written");
    }
    let mut routed = Vec::new();
    while let Some(got) = get_body(&channel, "numbers").await {
        routed.push(String::from_utf8(got.delivery.data).unwrap());
    }
    let expected: Vec<&str> = values
        .iter()
        .filter(|(_, _, matches)| *matches)
        .map(|(name, _, _)| *name)
        .collect();
    assert_eq!(routed, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn predeclared_exchanges_redeclare_and_the_default_exchange_is_refused() {
    let (_broker, conn, channel) = open().await;
    let declare = |channel: Channel, name: &'static str, kind: ExchangeKind, durable: bool| async move {
        channel
            .exchange_declare(
                name.into(),
                kind,
                ExchangeDeclareOptions {
                    durable,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
    };
    // RabbitMQ: amq.topic as a durable topic exchange is declare-ok (it exists, and is equivalent) ...
    declare(channel.clone(), "amq.topic", ExchangeKind::Topic, true)
        .await
        .expect("equivalent redeclare of amq.topic");
    declare(channel.clone(), "amq.direct", ExchangeKind::Direct, true)
        .await
        .expect("equivalent redeclare of amq.direct");
    // ... as a transient one, 406 naming the flag; a new amq.* name, 403.
    let (code, text) = refusal(
        declare(channel, "amq.topic", ExchangeKind::Topic, false)
            .await
            .expect_err("406"),
    );
    assert_eq!(code, 406, "{text}");
    assert!(
        text.contains(
            "inequivalent arg 'durable' for exchange 'amq.topic' in vhost '/': received 'false' but current is 'true'"
        ),
        "{text}"
    );
    let channel = conn.create_channel().await.unwrap();
    let (code, text) = refusal(
        declare(channel, "amq.mine", ExchangeKind::Direct, false)
            .await
            .expect_err("403"),
    );
    assert_eq!(code, 403, "{text}");
    // A passive declare of the default exchange: 403, as RabbitMQ.
    let channel = conn.create_channel().await.unwrap();
    let (code, text) = refusal(
        channel
            .exchange_declare(
                "".into(),
                ExchangeKind::Direct,
                ExchangeDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect_err("403"),
    );
    assert_eq!(code, 403, "{text}");
    // amq.rabbitmq.trace exists (RabbitMQ's tracing exchange): a passive declare finds it.
    let channel = conn.create_channel().await.unwrap();
    channel
        .exchange_declare(
            "amq.rabbitmq.trace".into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("amq.rabbitmq.trace exists");
    // The direct reply-to pseudo-queue reports one consumer to a passive declare, as in RabbitMQ.
    let ok = channel
        .queue_declare(
            "amq.rabbitmq.reply-to".into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("passive declare of the pseudo-queue");
    assert_eq!((ok.message_count(), ok.consumer_count()), (0, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unbinding_what_is_not_there_succeeds() {
    // RabbitMQ: queue.unbind and exchange.unbind naming a missing exchange, a missing queue or a binding that
    // does not exist are unbind-ok; the channel stays open.
    let (_broker, _conn, channel) = open().await;
    declare(&channel, "unbound", FieldTable::default()).await;
    for (queue, exchange) in [
        ("unbound", "no-such-exchange"),
        ("no-such-queue", "amq.direct"),
        ("unbound", "amq.direct"),
    ] {
        channel
            .queue_unbind(
                queue.into(),
                exchange.into(),
                "k".into(),
                FieldTable::default(),
            )
            .await
            .unwrap_or_else(|e| panic!("unbind {queue} from {exchange}: {e}"));
    }
    channel
        .exchange_unbind(
            "no-such-destination".into(),
            "no-such-source".into(),
            "k".into(),
            lapin::options::ExchangeUnbindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("exchange.unbind of nothing");
    assert!(channel.status().connected());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_lettered_message_names_its_dead_letter_exchange() {
    // RabbitMQ republishes a dead letter through the dead-letter exchange: deliveries name that exchange,
    // and x-death keeps the exchange of the original publish.
    let (_broker, _conn, channel) = open().await;
    channel
        .exchange_declare(
            "dlx".into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    declare(&channel, "dead", FieldTable::default()).await;
    channel
        .queue_bind(
            "dead".into(),
            "dlx".into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    declare(
        &channel,
        "short-lived",
        field_table(&[
            ("x-message-ttl", AMQPValue::LongInt(0)),
            ("x-dead-letter-exchange", long("dlx")),
        ]),
    )
    .await;
    channel
        .queue_bind(
            "short-lived".into(),
            "amq.direct".into(),
            "short-lived".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    channel
        .basic_publish(
            "amq.direct".into(),
            "short-lived".into(),
            BasicPublishOptions::default(),
            b"expired",
            BasicProperties::default(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    let got = loop {
        if let Some(got) = get_body(&channel, "dead").await {
            break got;
        }
        assert!(tokio::time::Instant::now() < deadline, "no dead letter");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(got.delivery.exchange.as_str(), "dlx");
    assert_eq!(got.delivery.routing_key.as_str(), "short-lived");
    let headers = got.delivery.properties.headers().clone().expect("headers");
    let Some(AMQPValue::FieldArray(deaths)) = headers.inner().get("x-death") else {
        panic!("no x-death in {headers:?}");
    };
    let Some(AMQPValue::FieldTable(death)) = deaths.as_slice().first() else {
        panic!("empty x-death");
    };
    assert_eq!(death.inner().get("exchange"), Some(&long("amq.direct")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_rabbitmq_does_not_implement_is_refused_as_it_refuses_it() {
    // basic.recover with requeue=false: 540 NOT_IMPLEMENTED, closing the connection.
    let (broker, conn, channel) = open().await;
    let (code, text) = refusal(
        channel
            .basic_recover(BasicRecoverOptions { requeue: false })
            .await
            .expect_err("540"),
    );
    assert_eq!(code, 540, "{text}");
    assert!(text.contains("requeue=false"), "{text}");
    drop(conn);
    // basic.consume with a non-integer x-priority: 406 naming the argument.
    let (conn, channel) = support::amqp_connect(&broker).await;
    declare(&channel, "prio", FieldTable::default()).await;
    let (code, text) = refusal(
        channel
            .basic_consume(
                "prio".into(),
                "c".into(),
                BasicConsumeOptions::default(),
                field_table(&[("x-priority", long("high"))]),
            )
            .await
            .expect_err("406"),
    );
    assert_eq!(code, 406, "{text}");
    assert!(
        text.contains("invalid arg 'x-priority' for queue 'prio' in vhost '/'"),
        "{text}"
    );
    assert!(conn.status().connected(), "a channel error only");
    // basic.qos with a prefetch_size (which lapin cannot send): 540 "prefetch_size!=0 (1000)".
    let qos = |channel: u16| {
        let mut qos = vec![1u8];
        qos.extend_from_slice(&channel.to_be_bytes());
        qos.extend_from_slice(&11u32.to_be_bytes());
        qos.extend_from_slice(&60u16.to_be_bytes());
        qos.extend_from_slice(&10u16.to_be_bytes());
        qos.extend_from_slice(&1000u32.to_be_bytes());
        qos.extend_from_slice(&10u16.to_be_bytes());
        qos.push(0);
        qos.push(0xCE);
        qos
    };
    // On a channel that is not open it is the channel error first, 504, as for any method.
    let mut client = RawClient::open(broker_stream(&broker));
    client.s.write_all(&qos(5)).unwrap();
    match client.method() {
        Some(AMQPClass::Connection(conn_methods::AMQPMethod::Close(close))) => {
            assert_eq!(close.reply_code, 504, "{close:?}");
        }
        other => panic!("expected connection.close 504, got {other:?}"),
    }
    let mut client = RawClient::open(broker_stream(&broker));
    client.s.write_all(&qos(1)).unwrap();
    match client.method() {
        Some(AMQPClass::Connection(conn_methods::AMQPMethod::Close(close))) => {
            assert_eq!(close.reply_code, 540, "{close:?}");
            assert!(
                close
                    .reply_text
                    .as_str()
                    .contains("prefetch_size!=0 (1000)"),
                "{close:?}"
            );
            assert_eq!((close.class_id, close.method_id), (60, 10));
        }
        other => panic!("expected connection.close 540, got {other:?}"),
    }
}

fn broker_stream(broker: &support::BrokerProcess) -> std::net::TcpStream {
    let s = std::net::TcpStream::connect(broker.addr("amqp")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

#[test]
fn a_failed_login_gets_its_403_and_the_server_waits_for_close_ok() {
    // A client that declared authentication_failure_close gets connection.close 403 and the socket stays
    // open for its close-ok (php-amqplib read a broken pipe instead of the reason before this was so).
    let broker = support::start_amqp();
    let mut client = RawClient::connect(broker_stream(&broker));
    let mut capabilities = FieldTable::default();
    capabilities.insert(
        "authentication_failure_close".into(),
        AMQPValue::Boolean(true),
    );
    let mut properties = FieldTable::default();
    properties.insert("capabilities".into(), AMQPValue::FieldTable(capabilities));
    client.send(AMQPClass::Connection(conn_methods::AMQPMethod::StartOk(
        conn_methods::StartOk {
            client_properties: properties,
            mechanism: "PLAIN".into(),
            response: "\0guest\0wrong".into(),
            locale: "en_US".into(),
        },
    )));
    match client.method() {
        Some(AMQPClass::Connection(conn_methods::AMQPMethod::Close(close))) => {
            assert_eq!(close.reply_code, 403, "{close:?}");
            assert!(
                close.reply_text.as_str().starts_with("ACCESS_REFUSED"),
                "{close:?}"
            );
        }
        other => panic!("expected connection.close 403, got {other:?}"),
    }
    // Still open: a read times out rather than seeing the end of the stream.
    client.assert_silent_for(
        Duration::from_millis(300),
        "the server should wait for close-ok",
    );
    client.send(AMQPClass::Connection(conn_methods::AMQPMethod::CloseOk(
        conn_methods::CloseOk {},
    )));
    client.s.set_read_timeout(Some(WAIT)).unwrap();
    assert!(client.frame().is_none(), "closed after close-ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn common_errors_are_worded_as_rabbitmq_words_them() {
    let (broker, conn, channel) = open().await;
    let ttl = |ms: i32| field_table(&[("x-message-ttl", AMQPValue::LongInt(ms))]);
    declare(&channel, "worded", ttl(100)).await;
    let redeclare = |channel: Channel, arguments: FieldTable| async move {
        channel
            .queue_declare("worded".into(), QueueDeclareOptions::default(), arguments)
            .await
    };
    let (_, text) = refusal(redeclare(channel, ttl(200)).await.expect_err("406"));
    assert!(
        text.contains(
            "inequivalent arg 'x-message-ttl' for queue 'worded' in vhost '/': received '200' but current is '100'"
        ),
        "{text}"
    );
    let channel = conn.create_channel().await.unwrap();
    let (_, text) = refusal(
        redeclare(channel, FieldTable::default())
            .await
            .expect_err("406"),
    );
    assert!(
        text.contains("received none but current is the value '100' of type 'signedint'"),
        "{text}"
    );
    let channel = conn.create_channel().await.unwrap();
    let (code, text) = refusal(
        channel
            .queue_declare(
                "bad-overflow".into(),
                QueueDeclareOptions::default(),
                field_table(&[("x-overflow", long("sideways"))]),
            )
            .await
            .expect_err("406"),
    );
    assert_eq!(code, 406);
    assert!(text.ends_with("in vhost '/': invalid_overflow"), "{text}");
    // Another connection's exclusive queue: 405 with RabbitMQ's explanation.
    let channel = conn.create_channel().await.unwrap();
    channel
        .queue_declare(
            "mine".into(),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let (_other, other) = support::amqp_connect(&broker).await;
    let (code, text) = refusal(
        other
            .queue_declare(
                "mine".into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect_err("405"),
    );
    assert_eq!(code, 405, "{text}");
    assert!(
        text.contains("It could be originally declared on another connection"),
        "{text}"
    );
}

#[test]
fn the_amqp_0_9_header_is_served_as_0_9_1() {
    // Perl's Net::AMQP (AnyEvent::RabbitMQ) sends `AMQP 1 1 0 9`; RabbitMQ serves it as 0-9-1. The 0-8 headers stay
    // refused with the header the broker speaks.
    let broker = support::start_amqp();
    let mut s = broker_stream(&broker);
    s.write_all(b"AMQP\x01\x01\x00\x09").unwrap();
    let mut client = RawClient::attach(s);
    match client.method() {
        Some(AMQPClass::Connection(conn_methods::AMQPMethod::Start(start))) => {
            assert_eq!((start.version_major, start.version_minor), (0, 9));
            assert_eq!(start.mechanisms.to_string(), "PLAIN AMQPLAIN");
        }
        other => panic!("expected connection.start, got {other:?}"),
    }
    let mut s = broker_stream(&broker);
    s.write_all(b"AMQP\x01\x01\x08\x00").unwrap();
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    assert_eq!(answer, b"AMQP\x00\x00\x09\x01");
}

#[test]
fn after_its_close_ok_the_server_leaves_the_socket_for_the_client_to_close() {
    // RabbitMQ does not close the socket under a client that is reading its close-ok (amqp091-go reported
    // "EOF" errors on ~3 graceful closes in 4 when Wharf did).
    let broker = support::start_amqp();
    let mut client = RawClient::open(broker_stream(&broker));
    client.send(AMQPClass::Connection(conn_methods::AMQPMethod::Close(
        conn_methods::Close {
            reply_code: 200,
            reply_text: "bye".into(),
            class_id: 0,
            method_id: 0,
        },
    )));
    assert!(matches!(
        client.method(),
        Some(AMQPClass::Connection(conn_methods::AMQPMethod::CloseOk(_)))
    ));
    client.assert_silent_for(
        Duration::from_millis(500),
        "the server closed the socket first",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_in_flight_go_back_before_the_wait_for_the_client_to_close() {
    // A consumer that closes its connection but leaves the socket open after close-ok must not hold its
    // messages for the length of that wait: everything it had, delivered or still on its way to its
    // connection (here: more than the socket buffers take, as it does not read), is back in the queue at once.
    use amq_protocol::protocol::basic as b;
    const MESSAGES: u32 = 5_000;
    let (broker, _conn, channel) = open().await;
    declare(&channel, "held", FieldTable::default()).await;
    let stream = broker_stream(&broker);
    let mut client = tokio::task::spawn_blocking(move || {
        let mut client = RawClient::open(stream);
        // No prefetch limit: every message published is pushed to this connection.
        client.send_on(
            1,
            AMQPClass::Basic(b::AMQPMethod::Consume(b::Consume {
                queue: "held".into(),
                consumer_tag: "c".into(),
                no_local: false,
                no_ack: false,
                exclusive: false,
                nowait: false,
                arguments: FieldTable::default(),
            })),
        );
        assert!(matches!(
            client.method(),
            Some(AMQPClass::Basic(b::AMQPMethod::ConsumeOk(_)))
        ));
        client
    })
    .await
    .unwrap();
    for i in 0..MESSAGES {
        channel
            .basic_publish(
                "".into(),
                "held".into(),
                BasicPublishOptions::default(),
                &[i as u8; 1024],
                BasicProperties::default(),
            )
            .await
            .unwrap();
    }
    // Let the broker push them (the client reads nothing, so most wait in the broker).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut client = tokio::task::spawn_blocking(move || {
        client.send(AMQPClass::Connection(conn_methods::AMQPMethod::Close(
            conn_methods::Close {
                reply_code: 200,
                reply_text: "bye".into(),
                class_id: 0,
                method_id: 0,
            },
        )));
        // Read through the deliveries to close-ok; the socket stays open.
        loop {
            match client.frame() {
                Some(wharf_amqp::frame::Frame::Method(
                    0,
                    AMQPClass::Connection(conn_methods::AMQPMethod::CloseOk(_)),
                )) => return client,
                Some(_) => {}
                None => panic!("closed before close-ok"),
            }
        }
    })
    .await
    .unwrap();
    let ready = |channel: Channel| async move {
        channel
            .queue_declare(
                "held".into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap()
            .message_count()
    };
    let back = tokio::time::timeout(Duration::from_secs(2), async {
        while ready(channel.clone()).await < MESSAGES {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(
        back.is_ok(),
        "only {} of {MESSAGES} messages back 2 s after close-ok",
        ready(channel.clone()).await
    );
    // …while the socket is still the client's to close.
    client.assert_silent_for(
        Duration::from_millis(200),
        "the socket should still be the client's to close",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exclusive_flag_mismatch_is_405_and_argument_errors_read_as_rabbitmq_s() {
    let (_broker, conn, channel) = open().await;
    let declare_with =
        |channel: Channel, name: &'static str, exclusive: bool, arguments: FieldTable| async move {
            channel
                .queue_declare(
                    name.into(),
                    QueueDeclareOptions {
                        exclusive,
                        ..Default::default()
                    },
                    arguments,
                )
                .await
        };
    declare_with(
        channel.clone(),
        "own-exclusive",
        true,
        FieldTable::default(),
    )
    .await
    .unwrap();
    declare_with(channel.clone(), "own-plain", false, FieldTable::default())
        .await
        .unwrap();
    // The same connection redeclaring with the other exclusive flag, either way: 405, as RabbitMQ.
    for (name, exclusive) in [("own-exclusive", false), ("own-plain", true)] {
        let channel = conn.create_channel().await.unwrap();
        let (code, text) = refusal(
            declare_with(channel, name, exclusive, FieldTable::default())
                .await
                .expect_err("405"),
        );
        assert_eq!(code, 405, "{name}: {text}");
    }
    for (arguments, expected) in [
        (
            field_table(&[("x-message-ttl", long("1000"))]),
            "invalid arg 'x-message-ttl' for queue 'args' in vhost '/': \"expected integer, got longstr\"",
        ),
        (
            field_table(&[("x-queue-type", long("bogus"))]),
            "invalid arg 'x-queue-type' for queue 'args' in vhost '/': \"unsupported queue type 'bogus'\"",
        ),
    ] {
        let channel = conn.create_channel().await.unwrap();
        let (code, text) = refusal(
            declare_with(channel, "args", false, arguments)
                .await
                .expect_err("406"),
        );
        assert_eq!(code, 406, "{text}");
        assert!(text.contains(expected), "{text}");
    }
}

/// connection.update-secret (clients refreshing credentials: lapin's `update_secret`, the Java client's
/// `updateSecret`): RabbitMQ 3.10.8 with its internal users answered update-secret-ok even to a secret that is
/// not the password (raw socket against the reference node), and the connection went on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_secret_is_answered_and_the_connection_goes_on() {
    let (broker, conn, channel) = open().await;
    tokio::time::timeout(
        WAIT,
        conn.update_secret("not-the-password".into(), "token refresh".into()),
    )
    .await
    .expect("update-secret-ok in time")
    .expect("update-secret accepted");
    declare(&channel, "after-update-secret", FieldTable::default()).await;
    assert!(conn.status().connected());
    // The same through a raw socket: update-secret-ok is the very next frame.
    let mut client = RawClient::open(broker_stream(&broker));
    client.send(AMQPClass::Connection(
        conn_methods::AMQPMethod::UpdateSecret(conn_methods::UpdateSecret {
            new_secret: "secret".into(),
            reason: "refresh".into(),
        }),
    ));
    assert!(matches!(
        client.method(),
        Some(AMQPClass::Connection(
            conn_methods::AMQPMethod::UpdateSecretOk(_)
        ))
    ));
}

/// access.request (0-8's, still sent by some old clients): RabbitMQ 3.10.8 answered access.request-ok with
/// ticket 1 on an open channel (raw socket against the reference node), and the channel went on.
#[test]
fn access_request_gets_ticket_one() {
    use amq_protocol::protocol::access;
    let broker = support::start_amqp();
    // Connection open, channel 1 open.
    let mut client = RawClient::open(broker_stream(&broker));
    client.send_on(
        1,
        AMQPClass::Access(access::AMQPMethod::Request(access::Request {
            realm: "/data".into(),
            exclusive: false,
            passive: false,
            active: true,
            write: true,
            read: true,
        })),
    );
    // Class 30, method 11 (amq-protocol writes the ticket as 1, as RabbitMQ sent it).
    match client.method() {
        Some(AMQPClass::Access(access::AMQPMethod::RequestOk(_))) => {}
        other => panic!("expected access.request-ok, got {other:?}"),
    }
    // The channel still works.
    client.send_on(
        1,
        AMQPClass::Queue(amq_protocol::protocol::queue::AMQPMethod::Declare(
            amq_protocol::protocol::queue::Declare {
                queue: "after-access-request".into(),
                ..Default::default()
            },
        )),
    );
    assert!(matches!(
        client.method(),
        Some(AMQPClass::Queue(
            amq_protocol::protocol::queue::AMQPMethod::DeclareOk(_)
        ))
    ));
}

/// Queue arguments RabbitMQ 3.10.8 checks on a classic queue beyond those Wharf acts on, each reply text as the
/// reference node gave it (raw-socket probes): `x-queue-mode` and `x-queue-version` take only RabbitMQ's values and
/// are compared on redeclare; the quorum and stream queues' own arguments are refused on a classic queue; a
/// dead-letter exchange that is not a string has its own wording; an unknown argument is accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classic_queue_arguments_are_checked_as_rabbitmq_checks_them() {
    let (_broker, conn, channel) = open().await;
    let conn = std::sync::Arc::new(conn);
    let refused = |name: &'static str, arguments: FieldTable| {
        let conn = std::sync::Arc::clone(&conn);
        async move {
            let channel = conn.create_channel().await.unwrap();
            let err = channel
                .queue_declare(name.into(), QueueDeclareOptions::default(), arguments)
                .await
                .expect_err("406");
            let (code, text) = refusal(err);
            assert_eq!(code, 406, "{text}");
            text
        }
    };
    let int = |key: &str, v: i32| field_table(&[(key, AMQPValue::LongInt(v))]);
    let text = refused("v3", int("x-queue-version", 3)).await;
    assert!(
        text.contains("invalid arg 'x-queue-version' for queue 'v3' in vhost '/': \"unsupported queue version '3'\""),
        "{text}"
    );
    let text = refused("bogus", field_table(&[("x-queue-mode", long("bogus"))])).await;
    assert!(
        text.contains("invalid arg 'x-queue-mode' for queue 'bogus' in vhost '/': \"unsupported queue mode 'bogus'\""),
        "{text}"
    );
    declare(
        &channel,
        "lazy",
        field_table(&[("x-queue-mode", long("lazy"))]),
    )
    .await;
    let text = refused("lazy", field_table(&[("x-queue-mode", long("default"))])).await;
    assert!(
        text.contains("inequivalent arg 'x-queue-mode' for queue 'lazy' in vhost '/': received 'default' but current is 'lazy'"),
        "{text}"
    );
    declare(&channel, "v1", int("x-queue-version", 1)).await;
    let text = refused("v1", int("x-queue-version", 2)).await;
    assert!(
        text.contains("inequivalent arg 'x-queue-version' for queue 'v1' in vhost '/': received '2' but current is '1'"),
        "{text}"
    );
    for key in [
        "x-delivery-limit",
        "x-max-in-memory-length",
        "x-quorum-initial-group-size",
    ] {
        let text = refused("classic", int(key, 5)).await;
        assert!(
            text.contains(&format!(
                "invalid arg '{key}' for queue 'classic' in vhost '/' of queue type rabbit_classic_queue"
            )),
            "{text}"
        );
    }
    let text = refused("dlx-int", int("x-dead-letter-exchange", 5)).await;
    assert!(
        text.contains("invalid type 'signedint' for arg 'x-dead-letter-exchange' in queue 'dlx-int' in vhost '/'"),
        "{text}"
    );
    let text = refused(
        "dlrk-alone",
        field_table(&[("x-dead-letter-routing-key", long("k"))]),
    )
    .await;
    assert!(
        text.contains("invalid arg 'x-dead-letter-routing-key' for queue 'dlrk-alone' in vhost '/': routing_key_but_no_dlx_defined"),
        "{text}"
    );
    declare(
        &channel,
        "unknown-arg",
        field_table(&[("x-foo", long("bar"))]),
    )
    .await;
    assert!(conn.status().connected());
}

/// `CC` / `BCC` headers must be arrays: RabbitMQ 3.10.8 closes the channel of a publish whose `CC` is a
/// string with 406 "invalid message: {unacceptable_type_in_header,"CC",longstr}" (pika against the reference
/// node, scripts/amqp-semantics.py). Raw socket: lapin may report only that the channel is closing.
#[test]
fn a_cc_header_that_is_not_an_array_is_406_in_rabbitmq_s_words() {
    use amq_protocol::protocol::channel as ch;
    let broker = support::start_amqp();
    let mut client = RawClient::open(broker_stream(&broker));
    for (header, value, type_name) in [
        ("CC", long("other"), "longstr"),
        ("BCC", AMQPValue::LongInt(5), "signedint"),
    ] {
        let headers = BasicProperties::default().with_headers(field_table(&[(header, value)]));
        client
            .s
            .write_all(&raw_publish("anywhere", &headers, b"m"))
            .unwrap();
        match client.method() {
            Some(AMQPClass::Channel(ch::AMQPMethod::Close(close))) => {
                assert_eq!(
                    (close.reply_code, close.reply_text.as_str()),
                    (
                        406,
                        format!(
                            "PRECONDITION_FAILED - invalid message: {{unacceptable_type_in_header,\"{header}\",{type_name}}}"
                        )
                        .as_str()
                    ),
                );
            }
            other => panic!("expected channel.close 406, got {other:?}"),
        }
        reopen_channel_1(&mut client);
    }
}

/// A method of another class on channel 0 of an open connection: RabbitMQ 3.10.8 closes the connection with 504
/// CHANNEL_ERROR "unexpected method in connection state running" (raw socket against the reference node).
#[test]
fn a_queue_method_on_channel_zero_is_504() {
    let broker = support::start_amqp();
    let mut client = RawClient::open(broker_stream(&broker));
    client.send_on(
        0,
        AMQPClass::Queue(amq_protocol::protocol::queue::AMQPMethod::Declare(
            amq_protocol::protocol::queue::Declare {
                queue: "on-channel-zero".into(),
                ..Default::default()
            },
        )),
    );
    assert_eq!(
        connection_close(&mut client),
        "504 CHANNEL_ERROR - unexpected method in connection state running"
    );
}

/// Texts RabbitMQ 3.10.8 gave in raw-socket probes: a second channel.open, a method on a channel never opened
/// (both 504, closing the connection), and an `alternate-exchange` that is not a string (406 on the channel).
#[test]
fn channel_state_and_exchange_argument_errors_are_worded_as_rabbitmq_words_them() {
    use amq_protocol::protocol::{channel as ch, exchange};
    let broker = support::start_amqp();
    let close_text = |client: &mut RawClient| match client.method() {
        Some(AMQPClass::Connection(conn_methods::AMQPMethod::Close(close))) => {
            format!("{} {}", close.reply_code, close.reply_text)
        }
        Some(AMQPClass::Channel(ch::AMQPMethod::Close(close))) => {
            format!("{} {}", close.reply_code, close.reply_text)
        }
        other => panic!("expected a close, got {other:?}"),
    };
    let mut client = RawClient::open(broker_stream(&broker));
    client.send_on(1, AMQPClass::Channel(ch::AMQPMethod::Open(ch::Open {})));
    assert_eq!(
        close_text(&mut client),
        "504 CHANNEL_ERROR - second 'channel.open' seen"
    );
    let mut client = RawClient::open(broker_stream(&broker));
    client.send_on(
        2,
        AMQPClass::Queue(amq_protocol::protocol::queue::AMQPMethod::Declare(
            amq_protocol::protocol::queue::Declare::default(),
        )),
    );
    assert_eq!(
        close_text(&mut client),
        "504 CHANNEL_ERROR - expected 'channel.open'"
    );
    let mut client = RawClient::open(broker_stream(&broker));
    client.send_on(
        1,
        AMQPClass::Exchange(exchange::AMQPMethod::Declare(exchange::Declare {
            exchange: "ae-int".into(),
            kind: "direct".into(),
            arguments: field_table(&[("alternate-exchange", AMQPValue::LongInt(5))]),
            ..Default::default()
        })),
    );
    assert_eq!(
        close_text(&mut client),
        "406 PRECONDITION_FAILED - invalid type 'signedint' for arg 'alternate-exchange' in exchange 'ae-int' in vhost '/'"
    );
}

/// One channel more than the negotiated channel_max: RabbitMQ 3.10.8 closes the connection with 530 NOT_ALLOWED
/// "number of channels opened (2) has reached the negotiated channel_max (2)" (raw socket against the reference
/// node, tune-ok channel_max 2, channels 1 and 2 open, then channel.open 3).
#[test]
fn one_channel_over_channel_max_is_530_in_rabbitmq_s_words() {
    use amq_protocol::protocol::channel as ch;
    let broker = support::start_amqp();
    let mut client = RawClient::open_connection(broker_stream(&broker), Some(2), None);
    for id in 1..=2 {
        client.send_on(id, AMQPClass::Channel(ch::AMQPMethod::Open(ch::Open {})));
        assert!(matches!(
            client.method(),
            Some(AMQPClass::Channel(ch::AMQPMethod::OpenOk(_)))
        ));
    }
    client.send_on(3, AMQPClass::Channel(ch::AMQPMethod::Open(ch::Open {})));
    assert_eq!(
        connection_close(&mut client),
        "530 NOT_ALLOWED - number of channels opened (2) has reached the negotiated channel_max (2)"
    );
}

/// Frames out of place, each closing the connection with 505 UNEXPECTED_FRAME in RabbitMQ 3.10.8's words (raw
/// sockets against the reference node): a content frame without basic.publish, a method where the content
/// header or body belongs, a content header of another class, a heartbeat on a channel other than 0.
#[test]
fn frames_out_of_place_are_505_in_rabbitmq_s_words() {
    use std::io::Write as _;
    fn raw(kind: u8, channel: u16, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![kind];
        f.extend_from_slice(&channel.to_be_bytes());
        f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        f.extend_from_slice(payload);
        f.push(0xCE);
        f
    }
    let publish = {
        let mut out = Vec::new();
        wharf_amqp::frame::write_method(
            &mut out,
            1,
            AMQPClass::Basic(amq_protocol::protocol::basic::AMQPMethod::Publish(
                amq_protocol::protocol::basic::Publish {
                    routing_key: "nowhere".into(),
                    ..Default::default()
                },
            )),
        )
        .unwrap();
        out
    };
    let declare = {
        let mut out = Vec::new();
        wharf_amqp::frame::write_method(
            &mut out,
            1,
            AMQPClass::Queue(amq_protocol::protocol::queue::AMQPMethod::Declare(
                amq_protocol::protocol::queue::Declare::default(),
            )),
        )
        .unwrap();
        out
    };
    let header = |class: u16| {
        let mut p = class.to_be_bytes().to_vec();
        p.extend_from_slice(&[0, 0]);
        p.extend_from_slice(&2u64.to_be_bytes());
        p.extend_from_slice(&[0, 0]);
        raw(2, 1, &p)
    };
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            raw(3, 1, b"x"),
            "expected method frame, got non method frame instead",
        ),
        (
            [publish.clone(), declare.clone()].concat(),
            "expected content header for class 60, got non content header frame instead",
        ),
        (
            [publish.clone(), header(60), declare].concat(),
            "expected content body, got non content body frame instead",
        ),
        (
            [publish, header(50)].concat(),
            "expected content header for class 60, got one for class 50 instead",
        ),
        (raw(8, 1, b""), "type 8, all octets = <<>>"),
    ];
    let broker = support::start_amqp();
    for (bytes, text) in cases {
        let mut client = RawClient::open(broker_stream(&broker));
        client.s.write_all(&bytes).unwrap();
        assert_eq!(
            connection_close(&mut client),
            format!("505 UNEXPECTED_FRAME - {text}")
        );
    }
}

/// Methods only the server sends, sent by a client (a declare-ok, channel.flow-ok, a close-ok nobody asked
/// for, basic.consume-ok): RabbitMQ 3.10.8 closes the connection with 503 "unimplemented method" (raw sockets
/// against the reference node).
#[test]
fn methods_only_the_server_sends_are_503_unimplemented() {
    use amq_protocol::protocol::{basic, channel as ch, queue};
    let broker = support::start_amqp();
    let methods = [
        AMQPClass::Queue(queue::AMQPMethod::DeclareOk(queue::DeclareOk {
            queue: "q".into(),
            message_count: 0,
            consumer_count: 0,
        })),
        AMQPClass::Channel(ch::AMQPMethod::FlowOk(ch::FlowOk { active: true })),
        AMQPClass::Channel(ch::AMQPMethod::CloseOk(ch::CloseOk {})),
        AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(basic::ConsumeOk {
            consumer_tag: "t".into(),
        })),
    ];
    for method in methods {
        let what = format!("{method:?}");
        let mut client = RawClient::open(broker_stream(&broker));
        client.send_on(1, method);
        assert_eq!(
            connection_close(&mut client),
            "503 COMMAND_INVALID - unimplemented method",
            "{what}"
        );
    }
}
